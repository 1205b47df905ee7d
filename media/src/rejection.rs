//! What `process` accepts ([`Limits`]) and why it refuses an upload ([`Rejection`]).

/// Bounds on what an upload may declare, checked against the header before anything is decoded.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    /// Width × height of one frame.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_width: 8192,
            max_height: 8192,
            max_pixels: 40_000_000,
        }
    }
}

/// Bytes a decoded pixel may take at most: 16-bit RGBA, the widest type our decoders produce.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Room for a decoder's own buffers (Huffman tables, row buffers, one GIF frame's scratch copy)
/// on top of the decoded image itself.
const DECODER_WORKING_MEMORY: u64 = 64 * 1024 * 1024;

/// An animation may hold this many times `max_pixels` across all its frames.
pub(crate) const ANIMATION_PIXEL_FACTOR: u64 = 4;

/// An animation may hold at most this many frames, however small.
pub(crate) const MAX_ANIMATION_FRAMES: u64 = 1000;

impl Limits {
    /// The allocation budget handed to the `image` decoders: the largest image we accept at the
    /// widest pixel type, plus the decoders' working memory.
    pub(crate) fn max_decoder_allocation(&self) -> u64 {
        self.max_pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(DECODER_WORKING_MEMORY)
    }

    /// Whether declared dimensions fit; checked before any decoding.
    pub(crate) fn admits(&self, width: u32, height: u32) -> bool {
        width <= self.max_width
            && height <= self.max_height
            && u64::from(width) * u64::from(height) <= self.max_pixels
    }

    /// The `image` crate's limits for a full decode.
    pub(crate) fn for_decoder(&self) -> image::Limits {
        let mut limits = image::Limits::no_limits();
        limits.max_image_width = Some(self.max_width);
        limits.max_image_height = Some(self.max_height);
        limits.max_alloc = Some(self.max_decoder_allocation());
        limits
    }

    /// The `image` crate's limits for reading a header: no dimension limit, so that the
    /// dimensions come back and we can compare them ourselves, but the same allocation budget,
    /// which bounds what a header may make a decoder hold (a compressed PNG colour profile,
    /// GIF application extensions).
    pub(crate) fn for_header(&self) -> image::Limits {
        let mut limits = image::Limits::no_limits();
        limits.max_alloc = Some(self.max_decoder_allocation());
        limits
    }
}

/// Why an upload was refused. Knows nothing of HTTP; the statuses below are what callers use.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Not PNG, JPEG, GIF or WebP by its bytes, or empty (HTTP 415).
    #[error("not a PNG, JPEG, GIF or WebP image")]
    Unsupported,
    /// Says it is an image but does not decode: truncated, corrupt, a script after a GIF header
    /// (HTTP 415).
    #[error("invalid image: {0}")]
    Invalid(String),
    /// Declared dimensions above the limits, or an animation whose frames together exceed its
    /// budget; `width` and `height` are the declared (canvas) dimensions (HTTP 422).
    #[error("image too large: {width}x{height} is beyond the limits")]
    TooLarge { width: u32, height: u32 },
}

impl Rejection {
    /// A stable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Unsupported => "unsupported_media_type",
            Rejection::Invalid(_) => "invalid_image",
            Rejection::TooLarge { .. } => "image_too_large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(Rejection::Unsupported.code(), "unsupported_media_type");
        assert_eq!(Rejection::Invalid("x".into()).code(), "invalid_image");
        let too_large = Rejection::TooLarge {
            width: 1,
            height: 2,
        };
        assert_eq!(too_large.code(), "image_too_large");
    }

    #[test]
    fn default_limits_admit_a_large_photo_and_refuse_beyond_each_bound() {
        let limits = Limits::default();
        assert!(limits.admits(6000, 4000));
        assert!(!limits.admits(8193, 10));
        assert!(!limits.admits(10, 8193));
        assert!(!limits.admits(8192, 8192), "67 Mpx is over 40 Mpx");
    }
}
