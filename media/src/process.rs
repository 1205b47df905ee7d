//! The path every upload takes: sniff, check the header, decode, re-encode, thumbnail.

use std::borrow::Cow;
use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageError, ImageReader};

use crate::format::{ImageFormat, sniff};
use crate::rejection::{Limits, Rejection};
use crate::{animation, structure};

/// The longest side of a thumbnail, in pixels. Smaller images keep their size.
pub const THUMBNAIL_LONGEST_SIDE: u32 = 320;

/// An accepted upload, ready to store.
#[derive(Clone)]
pub struct Processed {
    pub format: ImageFormat,
    /// The re-encoded image, same format as uploaded: no EXIF, GPS, comments, text chunks or
    /// appended bytes; a colour profile is kept. JPEG at quality 85, WebP lossless (a lossy WebP
    /// upload gets larger), GIF with all its frames, animated WebP as its first frame.
    pub original: Vec<u8>,
    /// As displayed: after the EXIF orientation has been applied.
    pub width: u32,
    pub height: u32,
    /// Longest side [`THUMBNAIL_LONGEST_SIDE`] (never upscaled), same format; for a GIF its
    /// first frame, still.
    pub thumbnail: Vec<u8>,
    pub thumbnail_width: u32,
    pub thumbnail_height: u32,
}

/// Sniffs; walks the format's structure (a truncated file, or text behind an image signature, is
/// `Invalid`); reads the dimensions from the header BEFORE decoding (refusing `TooLarge` without
/// any large allocation); decodes with `image::Limits` set (max_image_width/height, and max_alloc
/// derived from max_pixels); applies the EXIF orientation so photos stay upright; re-encodes in
/// the same format, which drops EXIF, GPS, XMP, comments, text chunks and anything appended after
/// the image (a colour profile that fits the pixels is kept, so colours stay right); and makes
/// the thumbnail. Synchronous and CPU-heavy: the caller runs it on a blocking thread.
pub fn process(bytes: &[u8], limits: &Limits) -> Result<Processed, Rejection> {
    let format = sniff(bytes).ok_or(Rejection::Unsupported)?;
    structure::check(bytes, format).map_err(Rejection::Invalid)?;
    let (width, height) = declared_dimensions(bytes, format, limits)?;
    if !limits.admits(width, height) {
        return Err(Rejection::TooLarge { width, height });
    }
    match format {
        ImageFormat::Gif => animation::process_gif(bytes, limits, width, height),
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Webp => {
            process_still(bytes, format, limits, width, height)
        }
    }
}

/// The width and height an image's header declares, without decoding it (for checking stored
/// images; uploads go through [`process`]).
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), Rejection> {
    let format = sniff(bytes).ok_or(Rejection::Unsupported)?;
    declared_dimensions(bytes, format, &Limits::default())
}

/// Shows sizes rather than the bytes, which may be megabytes.
impl std::fmt::Debug for Processed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Processed")
            .field("format", &self.format)
            .field("original_bytes", &self.original.len())
            .field("width", &self.width)
            .field("height", &self.height)
            .field("thumbnail_bytes", &self.thumbnail.len())
            .field("thumbnail_width", &self.thumbnail_width)
            .field("thumbnail_height", &self.thumbnail_height)
            .finish()
    }
}

/// Reads only as far as the decoder needs for the dimensions (PNG: up to the first IDAT chunk,
/// whose data is not touched; JPEG: the headers before the first scan; GIF: the logical screen
/// and global palette; WebP: the chunk headers).
fn declared_dimensions(
    bytes: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<(u32, u32), Rejection> {
    let mut reader =
        ImageReader::with_format(Cursor::new(bytes), crate::format::decoder_format(format));
    reader.limits(limits.for_header());
    let (width, height) = reader
        .into_dimensions()
        .map_err(|error| header_rejection(format, error))?;
    if width == 0 || height == 0 {
        return Err(Rejection::Invalid(format!(
            "{} header declares an empty image",
            format.extension()
        )));
    }
    Ok((width, height))
}

fn process_still(
    bytes: &[u8],
    format: ImageFormat,
    limits: &Limits,
    width: u32,
    height: u32,
) -> Result<Processed, Rejection> {
    let too_large = || Rejection::TooLarge { width, height };
    let decode_rejection = |error| decode_rejection(format, error, too_large);

    let mut reader =
        ImageReader::with_format(Cursor::new(bytes), crate::format::decoder_format(format));
    reader.limits(limits.for_decoder());
    let mut decoder = reader.into_decoder().map_err(decode_rejection)?;
    let orientation = decoder.orientation().map_err(decode_rejection)?;
    // A profile that cannot be read is dropped, as a broken one would be: colours may shift, but
    // the pixels are still there.
    let icc_profile = decoder.icc_profile().ok().flatten();

    // `DynamicImage::from_decoder` allocates the output without consulting the limits (only
    // `ImageReader::decode`, which cannot report the orientation, does), so reserve it here.
    let mut decoder_limits = limits.for_decoder();
    decoder_limits
        .reserve(decoder.total_bytes())
        .map_err(|_| too_large())?;
    decoder
        .set_limits(decoder_limits)
        .map_err(decode_rejection)?;

    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_rejection)?;
    image.apply_orientation(orientation);
    let image = encodable(image, format);
    let icc_profile = icc_profile.filter(|profile| icc_profile_fits(profile, &image));

    let thumbnail = thumbnail(&image);
    Ok(Processed {
        format,
        original: encode_still(&image, format, icc_profile.as_deref())?,
        width: image.width(),
        height: image.height(),
        thumbnail: encode_still(&thumbnail, format, icc_profile.as_deref())?,
        thumbnail_width: thumbnail.width(),
        thumbnail_height: thumbnail.height(),
    })
}

/// Converts colour types the format's encoder cannot write. JPEG holds only grey or RGB, 8 bits
/// (our JPEG decoder never produces anything else, CMYK included, but this keeps the encoder's
/// input explicit); PNG takes every type our decoders produce, 16-bit included; WebP gets 8-bit
/// grey or RGB(A) from its decoder.
fn encodable(image: DynamicImage, format: ImageFormat) -> DynamicImage {
    use image::ColorType;
    match (format, image.color()) {
        (ImageFormat::Jpeg, ColorType::L8 | ColorType::Rgb8) => image,
        (ImageFormat::Jpeg, ColorType::La8 | ColorType::L16 | ColorType::La16) => {
            DynamicImage::ImageLuma8(image.to_luma8())
        }
        (ImageFormat::Jpeg, _) => DynamicImage::ImageRgb8(image.to_rgb8()),
        (
            ImageFormat::Webp,
            ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8,
        ) => image,
        (ImageFormat::Webp, _) => DynamicImage::ImageRgba8(image.to_rgba8()),
        (ImageFormat::Png | ImageFormat::Gif, _) => image,
    }
}

/// Keeps a colour profile only if it looks like one (an ICC header whose declared size matches)
/// and describes the pixels we write: an RGB profile for colour, a grey one for grey. A CMYK
/// JPEG's profile, for one, no longer applies once its pixels are RGB.
fn icc_profile_fits(profile: &[u8], image: &DynamicImage) -> bool {
    const MAX_PROFILE_BYTES: usize = 1024 * 1024;
    if profile.len() < 128 || profile.len() > MAX_PROFILE_BYTES || &profile[36..40] != b"acsp" {
        return false;
    }
    let declared_size = u32::from_be_bytes([profile[0], profile[1], profile[2], profile[3]]);
    if usize::try_from(declared_size) != Ok(profile.len()) {
        return false;
    }
    let expected_space: &[u8] = if image.color().has_color() {
        b"RGB "
    } else {
        b"GRAY"
    };
    &profile[16..20] == expected_space
}

fn thumbnail_dimensions(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= THUMBNAIL_LONGEST_SIDE {
        return (width, height);
    }
    let scale = |side: u32| {
        let scaled = (u64::from(side) * u64::from(THUMBNAIL_LONGEST_SIDE) + u64::from(longest) / 2)
            / u64::from(longest);
        // `scaled` is at most THUMBNAIL_LONGEST_SIDE, so the conversion cannot fail.
        u32::try_from(scaled)
            .unwrap_or(THUMBNAIL_LONGEST_SIDE)
            .max(1)
    };
    (scale(width), scale(height))
}

pub(crate) fn thumbnail(image: &DynamicImage) -> Cow<'_, DynamicImage> {
    let (width, height) = thumbnail_dimensions(image.width(), image.height());
    if (width, height) == (image.width(), image.height()) {
        Cow::Borrowed(image)
    } else {
        Cow::Owned(image.thumbnail_exact(width, height))
    }
}

/// JPEG quality for re-encoded photos and thumbnails.
const JPEG_QUALITY: u8 = 85;

fn encode_still(
    image: &DynamicImage,
    format: ImageFormat,
    icc_profile: Option<&[u8]>,
) -> Result<Vec<u8>, Rejection> {
    let mut bytes = Vec::new();
    let result = match format {
        ImageFormat::Jpeg => write(
            image,
            JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY),
            icc_profile,
        ),
        ImageFormat::Png => write(image, PngEncoder::new(&mut bytes), icc_profile),
        ImageFormat::Webp => write(image, WebPEncoder::new_lossless(&mut bytes), icc_profile),
        ImageFormat::Gif => return animation::encode_still_gif(image),
    };
    result.map_err(|error| encode_rejection(format, error))?;
    Ok(bytes)
}

fn write(
    image: &DynamicImage,
    mut encoder: impl ImageEncoder,
    icc_profile: Option<&[u8]>,
) -> Result<(), ImageError> {
    if let Some(profile) = icc_profile {
        // An encoder that cannot carry a profile writes the pixels without one.
        let _unsupported = encoder.set_icc_profile(profile.to_vec());
    }
    image.write_with_encoder(encoder)
}

/// Errors while reading a header: the file says it is an image but is not a readable one. A
/// header that needs more memory than the decoder budget (a compressed PNG colour profile that
/// inflates beyond it, a PNG row wider than it) is invalid too: its dimensions were never read.
pub(crate) fn header_rejection(format: ImageFormat, error: ImageError) -> Rejection {
    match error {
        ImageError::Unsupported(_) => Rejection::Unsupported,
        other => Rejection::Invalid(format!(
            "{} header does not decode: {other}",
            format.extension()
        )),
    }
}

/// Errors while decoding pixels. An allocation limit hit here means the image needs more memory
/// than its admitted dimensions allow for, which we report as too large.
pub(crate) fn decode_rejection(
    format: ImageFormat,
    error: ImageError,
    too_large: impl FnOnce() -> Rejection,
) -> Rejection {
    match error {
        ImageError::Limits(_) => too_large(),
        ImageError::Unsupported(_) => Rejection::Unsupported,
        other => Rejection::Invalid(format!(
            "{} image does not decode: {other}",
            format.extension()
        )),
    }
}

/// Encoding a decoded image should not fail; if it does, the upload cannot be stored as it is.
pub(crate) fn encode_rejection(format: ImageFormat, error: ImageError) -> Rejection {
    Rejection::Invalid(format!(
        "{} image could not be re-encoded: {error}",
        format.extension()
    ))
}
