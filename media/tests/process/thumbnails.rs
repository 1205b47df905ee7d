use media::corpus;
use media::{ImageFormat, THUMBNAIL_LONGEST_SIDE};

use crate::helpers::{accepted, decode, gif_frames};

#[test]
fn a_wide_image_gets_a_320_pixel_wide_thumbnail_in_every_format() {
    let uploads = [
        (ImageFormat::Png, corpus::png(1000, 500)),
        (ImageFormat::Jpeg, corpus::jpeg(1000, 500)),
        (ImageFormat::Gif, corpus::gif(1000, 500)),
        (ImageFormat::Webp, corpus::webp(1000, 500)),
    ];
    for (format, upload) in uploads {
        let processed = accepted(&upload);
        assert_eq!(THUMBNAIL_LONGEST_SIDE, 320);
        assert_eq!(
            (processed.thumbnail_width, processed.thumbnail_height),
            (320, 160),
            "{format:?}"
        );
        let thumbnail = decode(&processed.thumbnail, format);
        assert_eq!(
            (thumbnail.width(), thumbnail.height()),
            (320, 160),
            "{format:?}"
        );
        assert!(
            processed.thumbnail.len() < 4 * processed.original.len(),
            "{format:?}"
        );
    }
}

#[test]
fn a_tall_image_is_scaled_by_its_height() {
    let processed = accepted(&corpus::jpeg(500, 1000));
    assert_eq!(
        (processed.thumbnail_width, processed.thumbnail_height),
        (160, 320)
    );
    let processed = accepted(&corpus::png(3, 2000));
    assert_eq!(
        (processed.thumbnail_width, processed.thumbnail_height),
        (1, 320)
    );
}

#[test]
fn a_small_image_is_never_upscaled() {
    for upload in [
        corpus::png(100, 80),
        corpus::jpeg(100, 80),
        corpus::webp(100, 80),
    ] {
        let processed = accepted(&upload);
        assert_eq!(
            (processed.thumbnail_width, processed.thumbnail_height),
            (100, 80)
        );
        let thumbnail = decode(&processed.thumbnail, processed.format);
        assert_eq!((thumbnail.width(), thumbnail.height()), (100, 80));
    }
}

#[test]
fn an_animated_gif_thumbnail_is_its_first_frame_scaled() {
    let processed = accepted(&corpus::animated_gif(640, 480, 2));
    assert_eq!(
        (processed.thumbnail_width, processed.thumbnail_height),
        (320, 240)
    );
    let frames = gif_frames(&processed.thumbnail);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].dimensions(), (320, 240));
    let top = frames[0].get_pixel(160, 20).0;
    assert!(
        top[0] > 150 && top[2] < 100,
        "first frame: red on top, {top:?}"
    );
}
