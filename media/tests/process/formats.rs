use std::io::Cursor;

use image::codecs::webp::WebPDecoder;
use image::metadata::LoopCount;
use image::{AnimationDecoder, ColorType, DynamicImage, ImageBuffer, Rgb, Rgba};
use media::corpus;
use media::{ImageFormat, sniff};

use crate::helpers::{accepted, decode, gif_frames, is_blue, is_red, rgb_at};

#[test]
fn each_format_keeps_its_format_and_dimensions() {
    let uploads = [
        (ImageFormat::Png, corpus::png(300, 200)),
        (ImageFormat::Jpeg, corpus::jpeg(300, 200)),
        (ImageFormat::Gif, corpus::gif(300, 200)),
        (ImageFormat::Webp, corpus::webp(300, 200)),
    ];
    for (format, upload) in uploads {
        let processed = accepted(&upload);
        assert_eq!(processed.format, format);
        assert_eq!(
            (processed.width, processed.height),
            (300, 200),
            "{format:?}"
        );
        assert_eq!(sniff(&processed.original), Some(format));
        assert_eq!(sniff(&processed.thumbnail), Some(format));

        let stored = decode(&processed.original, format);
        assert_eq!((stored.width(), stored.height()), (300, 200), "{format:?}");
        // The picture survives, not just its size: red on top, blue below.
        assert!(is_red(rgb_at(&stored, 150, 20)), "{format:?}");
        assert!(is_blue(rgb_at(&stored, 150, 180)), "{format:?}");
    }
}

#[test]
fn png_keeps_alpha_and_sixteen_bits() {
    let rgba = ImageBuffer::from_fn(40, 30, |x, _| {
        Rgba([10u8, 200, 10, if x < 20 { 0 } else { 255 }])
    });
    let processed = accepted(&png_bytes(&DynamicImage::ImageRgba8(rgba)));
    let stored = decode(&processed.original, ImageFormat::Png);
    assert_eq!(stored.color(), ColorType::Rgba8);
    assert_eq!(stored.to_rgba8().get_pixel(5, 5).0[3], 0);
    assert_eq!(stored.to_rgba8().get_pixel(35, 5).0[3], 255);

    let deep = ImageBuffer::from_fn(40, 30, |x, y| {
        Rgb([x as u16 * 1000 + 7, y as u16 * 2000 + 3, 65_535])
    });
    let processed = accepted(&png_bytes(&DynamicImage::ImageRgb16(deep.clone())));
    let stored = decode(&processed.original, ImageFormat::Png);
    assert_eq!(stored.color(), ColorType::Rgb16);
    assert_eq!(stored.to_rgb16(), deep, "16-bit samples survive exactly");
}

#[test]
fn webp_keeps_alpha() {
    let rgba = ImageBuffer::from_fn(40, 30, |x, _| {
        Rgba([10u8, 200, 10, if x < 20 { 0 } else { 255 }])
    });
    let mut upload = Vec::new();
    DynamicImage::ImageRgba8(rgba)
        .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut upload))
        .unwrap_or_else(|error| panic!("the WebP does not encode: {error}"));
    let processed = accepted(&upload);
    let stored = decode(&processed.original, ImageFormat::Webp);
    assert_eq!(stored.color(), ColorType::Rgba8);
    assert_eq!(stored.to_rgba8().get_pixel(5, 5).0[3], 0);
}

#[test]
fn animated_gif_stays_animated_with_its_frames_and_loop() {
    let processed = accepted(&corpus::animated_gif(64, 48, 3));
    assert_eq!((processed.width, processed.height), (64, 48));

    let frames = gif_frames(&processed.original);
    assert_eq!(frames.len(), 3);
    let first = frames[0].get_pixel(10, 5).0;
    let second = frames[1].get_pixel(10, 5).0;
    assert!(is_red([first[0], first[1], first[2]]), "{first:?}");
    assert_ne!(first, second, "frames still differ");

    let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(&processed.original))
        .unwrap_or_else(|error| panic!("the GIF does not decode: {error}"));
    assert!(matches!(decoder.loop_count(), LoopCount::Infinite));

    assert_eq!(
        gif_frames(&processed.thumbnail).len(),
        1,
        "the thumbnail is a still"
    );
}

#[test]
fn animated_webp_is_flattened_to_its_first_frame() {
    let upload = corpus::animated_webp(64, 48, 3);
    let source = WebPDecoder::new(Cursor::new(&upload))
        .unwrap_or_else(|error| panic!("the fixture does not decode: {error}"));
    assert!(source.has_animation(), "the fixture is animated");

    let processed = accepted(&upload);
    assert_eq!(processed.format, ImageFormat::Webp);
    assert_eq!((processed.width, processed.height), (64, 48));
    let stored = WebPDecoder::new(Cursor::new(&processed.original))
        .unwrap_or_else(|error| panic!("the stored WebP does not decode: {error}"));
    assert!(!stored.has_animation());
    let stored = decode(&processed.original, ImageFormat::Webp);
    assert!(is_red(rgb_at(&stored, 10, 5)), "first frame: red on top");
    assert!(is_blue(rgb_at(&stored, 10, 40)));
}

#[test]
fn a_gif_that_plays_a_set_number_of_times_keeps_that_count() {
    let mut upload = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut upload);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Finite(2))
            .unwrap_or_else(|error| panic!("cannot set the repeat: {error}"));
        for index in 0..2u8 {
            let frame = image::RgbaImage::from_pixel(8, 8, Rgba([index * 100, 0, 0, 255]));
            encoder
                .encode_frame(image::Frame::new(frame))
                .unwrap_or_else(|error| panic!("the frame does not encode: {error}"));
        }
    }
    let processed = accepted(&upload);
    let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(&processed.original))
        .unwrap_or_else(|error| panic!("the GIF does not decode: {error}"));
    match decoder.loop_count() {
        LoopCount::Finite(count) => assert_eq!(count.get(), 2),
        LoopCount::Infinite => panic!("a GIF that plays twice now loops forever"),
    }
}

fn png_bytes(image: &DynamicImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes))
        .unwrap_or_else(|error| panic!("the PNG does not encode: {error}"));
    bytes
}
