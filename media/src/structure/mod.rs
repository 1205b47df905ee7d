//! Walks over each format's container structure, done before anything else reads the file.
//!
//! They refuse a truncated file, or text behind an image signature, as invalid: JPEG decoders
//! show a file cut off in its data as if grey-filled, a GIF signature followed by a script would
//! otherwise have four bytes of the script read as its dimensions, and an animated WebP cut off
//! after its first frame would pass the first-frame decode. Each walk reads the bytes once and
//! allocates nothing; bytes after the end of the image are left alone (the re-encode drops them).

mod gif;
mod jpeg;
mod png;
mod webp;

use crate::format::ImageFormat;

pub(crate) use gif::{GifSummary, summary as gif_summary};

/// Checks that the file's structure is whole, up to the end of its (main) image.
pub(super) fn check(bytes: &[u8], format: ImageFormat) -> Result<(), String> {
    match format {
        ImageFormat::Png => png::check(bytes),
        ImageFormat::Jpeg => jpeg::end_of_image(bytes).map(|_| ()),
        ImageFormat::Gif => gif::summary(bytes).map(|_| ()),
        ImageFormat::Webp => webp::check(bytes),
    }
}
