use std::io::Cursor;

use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, DynamicImage, ImageFormat, RgbaImage};
use media::{Limits, Processed, Rejection, process};

pub fn accepted(bytes: &[u8]) -> Processed {
    match process(bytes, &Limits::default()) {
        Ok(processed) => processed,
        Err(rejection) => panic!("rejected: {rejection}"),
    }
}

pub fn rejected(bytes: &[u8]) -> Rejection {
    match process(bytes, &Limits::default()) {
        Ok(processed) => panic!("accepted as {:?}", processed.format),
        Err(rejection) => rejection,
    }
}

/// Decodes stored bytes as a client would, insisting on the given format.
pub fn decode(bytes: &[u8], format: media::ImageFormat) -> DynamicImage {
    let format = match format {
        media::ImageFormat::Png => ImageFormat::Png,
        media::ImageFormat::Jpeg => ImageFormat::Jpeg,
        media::ImageFormat::Gif => ImageFormat::Gif,
        media::ImageFormat::Webp => ImageFormat::WebP,
    };
    image::load_from_memory_with_format(bytes, format)
        .unwrap_or_else(|error| panic!("the stored bytes do not decode: {error}"))
}

pub fn gif_frames(bytes: &[u8]) -> Vec<RgbaImage> {
    GifDecoder::new(Cursor::new(bytes))
        .unwrap_or_else(|error| panic!("the GIF header does not decode: {error}"))
        .into_frames()
        .map(|frame| {
            frame
                .unwrap_or_else(|error| panic!("a GIF frame does not decode: {error}"))
                .into_buffer()
        })
        .collect()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Whether a pixel is mostly red (the top half of the corpus pattern) or mostly blue (the bottom
/// half), allowing for lossy compression.
pub fn is_red(pixel: [u8; 3]) -> bool {
    pixel[0] > 150 && pixel[2] < 100
}

pub fn is_blue(pixel: [u8; 3]) -> bool {
    pixel[2] > 150 && pixel[0] < 100
}

pub fn rgb_at(image: &DynamicImage, x: u32, y: u32) -> [u8; 3] {
    image.to_rgb8().get_pixel(x, y).0
}
