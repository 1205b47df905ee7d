//! GIFs: every frame is decoded and re-encoded, so an animation stays animated, under a budget
//! on the frames' total pixels and on their number, checked from the frame descriptors before
//! any frame is decoded.

use std::io::Cursor;

use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::metadata::LoopCount;
use image::{AnimationDecoder, DynamicImage, ImageDecoder, RgbaImage};

use crate::format::ImageFormat;
use crate::process::{Processed, decode_rejection, encode_rejection, header_rejection, thumbnail};
use crate::rejection::{ANIMATION_PIXEL_FACTOR, Limits, MAX_ANIMATION_FRAMES, Rejection};
use crate::structure::{self, GifSummary};

/// Quantisation speed for frames with more than 256 colours (1 is best and slowest, 30 fastest).
/// Frames decoded from a GIF have at most 256 colours each, which the encoder keeps exactly, so
/// this matters only for frames whose disposal composed more colours than one palette holds.
const GIF_QUANTISATION_SPEED: i32 = 10;

/// Decodes the GIF frame by frame (each frame composed onto the full canvas, as displayed) and
/// encodes each one as soon as it is decoded, so memory holds one frame and the first, not the
/// whole animation. The loop count is kept; a GIF with none, which browsers play once, comes
/// out looping forever, because the `image` decoder reports it as infinite.
pub(crate) fn process_gif(
    bytes: &[u8],
    limits: &Limits,
    width: u32,
    height: u32,
) -> Result<Processed, Rejection> {
    let too_large = || Rejection::TooLarge { width, height };
    let decode_rejection = |error| decode_rejection(ImageFormat::Gif, error, too_large);
    let encode_rejection = |error| encode_rejection(ImageFormat::Gif, error);

    // Refused from the image descriptors alone, before any frame is decoded.
    let summary = structure::gif_summary(bytes).map_err(Rejection::Invalid)?;
    if !animation_fits(limits, width, height, summary) {
        return Err(too_large());
    }

    let mut decoder = GifDecoder::new(Cursor::new(bytes))
        .map_err(|error| header_rejection(ImageFormat::Gif, error))?;
    decoder
        .set_limits(limits.for_decoder())
        .map_err(decode_rejection)?;
    let repeat = repeat(decoder.loop_count());
    let max_frames = max_frames(limits, width, height);

    let mut original = Vec::new();
    let mut first_frame: Option<RgbaImage> = None;
    {
        let mut encoder = GifEncoder::new_with_speed(&mut original, GIF_QUANTISATION_SPEED);
        encoder.set_repeat(repeat).map_err(encode_rejection)?;
        let mut frame_count: u64 = 0;
        for frame in decoder.into_frames() {
            let frame = frame.map_err(decode_rejection)?;
            frame_count += 1;
            // The walk counted the frames already; this holds the decoder to that count.
            if frame_count > max_frames {
                return Err(too_large());
            }
            if first_frame.is_none() {
                first_frame = Some(frame.buffer().clone());
            }
            encoder.encode_frame(frame).map_err(encode_rejection)?;
        }
        // The encoder writes the GIF trailer when it is dropped, here.
    }
    let first_frame = first_frame.ok_or_else(|| Rejection::Invalid("GIF has no frames".into()))?;

    let first_frame = DynamicImage::ImageRgba8(first_frame);
    let thumbnail = thumbnail(&first_frame);
    Ok(Processed {
        format: ImageFormat::Gif,
        original,
        width,
        height,
        thumbnail: encode_still_gif(&thumbnail)?,
        thumbnail_width: thumbnail.width(),
        thumbnail_height: thumbnail.height(),
    })
}

fn repeat(loop_count: LoopCount) -> Repeat {
    match loop_count {
        LoopCount::Infinite => Repeat::Infinite,
        LoopCount::Finite(count) => Repeat::Finite(u16::try_from(count.get()).unwrap_or(u16::MAX)),
    }
}

/// A single-frame GIF (used for thumbnails).
pub(crate) fn encode_still_gif(image: &DynamicImage) -> Result<Vec<u8>, Rejection> {
    let rgba = image.to_rgba8();
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, GIF_QUANTISATION_SPEED);
        encoder
            .encode(
                rgba.as_raw(),
                rgba.width(),
                rgba.height(),
                image::ExtendedColorType::Rgba8,
            )
            .map_err(|error| encode_rejection(ImageFormat::Gif, error))?;
    }
    Ok(bytes)
}

/// Every frame is composed at canvas size, so the animation's pixels are frames × canvas; they
/// may add up to `ANIMATION_PIXEL_FACTOR` still images at the limit, and never more than
/// `MAX_ANIMATION_FRAMES` frames.
fn max_frames(limits: &Limits, width: u32, height: u32) -> u64 {
    let canvas_pixels = (u64::from(width) * u64::from(height)).max(1);
    let by_pixels = animation_pixel_budget(limits) / canvas_pixels;
    by_pixels.min(MAX_ANIMATION_FRAMES)
}

/// Within [`max_frames`], and the frames' own areas (which a frame descriptor may declare larger
/// than the canvas, each costing its area to decode) within the same pixel budget.
fn animation_fits(limits: &Limits, width: u32, height: u32, summary: GifSummary) -> bool {
    summary.frames <= max_frames(limits, width, height)
        && summary.frame_pixels <= animation_pixel_budget(limits)
}

fn animation_pixel_budget(limits: &Limits) -> u64 {
    limits.max_pixels.saturating_mul(ANIMATION_PIXEL_FACTOR)
}
