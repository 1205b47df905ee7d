//! A walk over a GIF's block structure, so that text behind a GIF signature is refused as
//! invalid before its "dimensions" (four bytes of that text) are even compared to the limits,
//! and so that an animation's size is known before any frame is decoded.

/// What the walk learns about the frames, from their image descriptors alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GifSummary {
    pub(crate) frames: u64,
    /// The frames' own areas (width × height of each image descriptor) added up: what decoding
    /// their data costs, whatever the canvas.
    pub(crate) frame_pixels: u64,
}

/// Checks that the bytes are a complete GIF: header, logical screen descriptor, optional
/// global colour table, then extensions and images (each a chain of sub-blocks ending in an
/// empty one) up to the trailer. Bytes after the trailer are not looked at; the re-encode drops
/// them. Reads only; allocates nothing.
pub(crate) fn summary(bytes: &[u8]) -> Result<GifSummary, String> {
    const HEADER_AND_SCREEN_DESCRIPTOR: usize = 13;
    let flags = *bytes.get(10).ok_or(TRUNCATED)?;
    let mut position = HEADER_AND_SCREEN_DESCRIPTOR + colour_table_size(flags);
    let mut summary = GifSummary {
        frames: 0,
        frame_pixels: 0,
    };
    loop {
        match bytes.get(position) {
            None => return Err(TRUNCATED.into()),
            Some(&TRAILER) => return Ok(summary),
            Some(&EXTENSION_INTRODUCER) => {
                // Introducer and label, then the sub-blocks.
                position = after_sub_blocks(bytes, position + 2)?;
            }
            Some(&IMAGE_SEPARATOR) => {
                const IMAGE_DESCRIPTOR: usize = 10;
                let descriptor = bytes
                    .get(position..position + IMAGE_DESCRIPTOR)
                    .ok_or(TRUNCATED)?;
                let width = u16::from_le_bytes([descriptor[5], descriptor[6]]);
                let height = u16::from_le_bytes([descriptor[7], descriptor[8]]);
                summary.frames += 1;
                summary.frame_pixels += u64::from(width) * u64::from(height);
                // The descriptor, the local colour table, the LZW minimum code size byte, then
                // the sub-blocks of image data.
                position += IMAGE_DESCRIPTOR + colour_table_size(descriptor[9]) + 1;
                position = after_sub_blocks(bytes, position)?;
            }
            Some(other) => {
                return Err(format!(
                    "not a GIF block at byte {position}: found {other:#04x}"
                ));
            }
        }
    }
}

const EXTENSION_INTRODUCER: u8 = 0x21;
const IMAGE_SEPARATOR: u8 = 0x2C;
const TRAILER: u8 = 0x3B;

const TRUNCATED: &str = "GIF is truncated: no trailer";

/// Bytes of the colour table that `flags` (of the screen or an image descriptor) announce.
fn colour_table_size(flags: u8) -> usize {
    if flags & 0x80 == 0 {
        0
    } else {
        3 << ((flags & 0x07) + 1)
    }
}

/// The position after a chain of sub-blocks (a length byte, that many bytes, repeated, ending
/// with a zero length) starting at `position`.
fn after_sub_blocks(bytes: &[u8], mut position: usize) -> Result<usize, String> {
    loop {
        let length = usize::from(*bytes.get(position).ok_or(TRUNCATED)?);
        position += 1;
        if length == 0 {
            return Ok(position);
        }
        position += length;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 × 1 GIF89a with a two-colour global table, a graphic control extension and one image.
    fn tiny_gif() -> Vec<u8> {
        let mut bytes = b"GIF89a\x01\x00\x01\x00\x80\x00\x00".to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
        bytes.extend_from_slice(&[0x21, 0xF9, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]);
        bytes.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0x00]);
        bytes.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
        bytes.push(0x3B);
        bytes
    }

    #[test]
    fn accepts_a_complete_gif_with_trailing_bytes() {
        let one_pixel = Ok(GifSummary {
            frames: 1,
            frame_pixels: 1,
        });
        assert_eq!(summary(&tiny_gif()), one_pixel);
        let mut with_tail = tiny_gif();
        with_tail.extend_from_slice(b"<script>");
        assert_eq!(summary(&with_tail), one_pixel);
    }

    #[test]
    fn counts_frames_and_their_own_areas() {
        let mut bytes = tiny_gif();
        bytes.pop();
        // A second image, 300 × 200 in its descriptor, with no colour table and one data byte.
        bytes.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0x2C, 0x01, 0xC8, 0x00, 0x00]);
        bytes.extend_from_slice(&[0x02, 0x01, 0x44, 0x00, 0x3B]);
        let expected = GifSummary {
            frames: 2,
            frame_pixels: 1 + 300 * 200,
        };
        assert_eq!(summary(&bytes), Ok(expected));
    }

    #[test]
    fn refuses_every_truncation() {
        let bytes = tiny_gif();
        for cut in 0..bytes.len() {
            assert!(summary(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn refuses_text_after_the_signature() {
        assert!(summary(b"GIF89a<script>alert(1)</script>").is_err());
    }
}
