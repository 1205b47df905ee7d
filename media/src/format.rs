//! The four accepted formats and how an upload's bytes are recognised as one of them.

/// An image format that uploads may use: the domain's `ImageType` (content type, extension).
pub use domain::media::ImageType as ImageFormat;

/// The `image` crate's name for one of our formats.
pub(crate) fn decoder_format(format: ImageFormat) -> image::ImageFormat {
    match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Webp => image::ImageFormat::WebP,
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SIGNATURE: &[u8] = b"\xff\xd8\xff";
const GIF87_SIGNATURE: &[u8] = b"GIF87a";
const GIF89_SIGNATURE: &[u8] = b"GIF89a";

/// Decided from the magic bytes only (never a name or declared type).
///
/// A match says only that the bytes claim to be that format; [`crate::process`] decides whether
/// they really are one.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(PNG_SIGNATURE) {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(JPEG_SIGNATURE) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(GIF87_SIGNATURE) || bytes.starts_with(GIF89_SIGNATURE) {
        Some(ImageFormat::Gif)
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::Webp)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ImageFormat; 4] = [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::Webp,
    ];

    #[test]
    fn extensions_round_trip_and_content_types_are_image_types() {
        for format in ALL {
            assert_eq!(
                ImageFormat::from_extension(format.extension()),
                Some(format)
            );
            assert!(format.content_type().starts_with("image/"));
        }
        assert_eq!(ImageFormat::from_extension("svg"), None);
        assert_eq!(ImageFormat::from_extension(""), None);
    }

    #[test]
    fn sniff_reads_magic_bytes_only() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some(ImageFormat::Png));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"GIF87a"), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"GIF89a<script>"), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8L"), Some(ImageFormat::Webp));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"RIFF\0\0\0\0WEB"), None);
        assert_eq!(sniff(b"\x89PNG"), None);
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), None);
        assert_eq!(sniff(b""), None);
    }
}
