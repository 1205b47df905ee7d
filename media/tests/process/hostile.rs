use std::time::{Duration, Instant};

use media::corpus;
use media::{Limits, Rejection, process};

use crate::helpers::rejected;

#[test]
fn pixel_bomb_is_too_large_from_its_header_alone() {
    let bomb = corpus::pixel_bomb_png();
    let started = Instant::now();
    let rejection = process(&bomb, &Limits::default());
    let elapsed = started.elapsed();
    assert!(
        matches!(
            rejection,
            Err(Rejection::TooLarge {
                width: 60_000,
                height: 60_000
            })
        ),
        "{rejection:?}"
    );
    if let Err(rejection) = rejection {
        assert_eq!(rejection.code(), "image_too_large");
    }
    assert!(elapsed < Duration::from_millis(100), "took {elapsed:?}");

    // The same file at an admitted size does not decode: its data is not there. So only a
    // path that stops at the header can have answered TooLarge above.
    let same_without_data = corpus::png_header_without_data(600, 600);
    assert!(matches!(
        rejected(&same_without_data),
        Rejection::Invalid(_)
    ));
}

#[test]
fn each_limit_is_enforced_on_declared_dimensions() {
    let upload = corpus::png(120, 90);
    let narrow = Limits {
        max_width: 100,
        ..Limits::default()
    };
    let short = Limits {
        max_height: 80,
        ..Limits::default()
    };
    let few_pixels = Limits {
        max_pixels: 120 * 90 - 1,
        ..Limits::default()
    };
    for limits in [narrow, short, few_pixels] {
        let rejection = process(&upload, &limits).map(|_| ());
        assert!(
            matches!(
                rejection,
                Err(Rejection::TooLarge {
                    width: 120,
                    height: 90
                })
            ),
            "{limits:?}: {rejection:?}"
        );
    }
    let exact = Limits {
        max_width: 120,
        max_height: 90,
        max_pixels: 120 * 90,
    };
    assert!(process(&upload, &exact).is_ok());
}

#[test]
fn an_animation_over_its_pixel_budget_is_too_large() {
    // Four frames at the pixel limit are allowed, a fifth is not.
    let limits = Limits {
        max_pixels: 64 * 48,
        ..Limits::default()
    };
    assert!(process(&corpus::animated_gif(64, 48, 4), &limits).is_ok());
    let rejection = process(&corpus::animated_gif(64, 48, 5), &limits).map(|_| ());
    assert!(
        matches!(
            rejection,
            Err(Rejection::TooLarge {
                width: 64,
                height: 48
            })
        ),
        "{rejection:?}"
    );
}

#[test]
fn gif_frames_declared_larger_than_the_budget_are_too_large_before_decoding() {
    let bomb = corpus::gif_frame_bomb();
    let started = Instant::now();
    let rejection = process(&bomb, &Limits::default()).map(|_| ());
    let elapsed = started.elapsed();
    assert!(
        matches!(
            rejection,
            Err(Rejection::TooLarge {
                width: 10,
                height: 10
            })
        ),
        "{rejection:?}"
    );
    assert!(elapsed < Duration::from_millis(100), "took {elapsed:?}");

    // The same structure at a size the decoders accept: the budget refuses it from the
    // descriptors, and limits that admit it let the decoder find that the data is not there.
    let smaller = corpus::gif_frames_without_data((10, 10), (2000, 2000), 3);
    let tight = Limits {
        max_pixels: 2_000_000,
        ..Limits::default()
    };
    let rejection = process(&smaller, &tight).map(|_| ());
    assert!(
        matches!(
            rejection,
            Err(Rejection::TooLarge {
                width: 10,
                height: 10
            })
        ),
        "{rejection:?}"
    );
    let rejection = process(&smaller, &Limits::default()).map(|_| ());
    assert!(
        matches!(rejection, Err(Rejection::Invalid(_))),
        "{rejection:?}"
    );
}

#[test]
fn text_is_unsupported_whatever_it_is_called() {
    for upload in [
        corpus::html_as_png(),
        corpus::svg_as_png(),
        Vec::new(),
        b"\x89PNG".to_vec(),
    ] {
        let rejection = rejected(&upload);
        assert!(matches!(rejection, Rejection::Unsupported), "{rejection:?}");
        assert_eq!(rejection.code(), "unsupported_media_type");
    }
}

#[test]
fn a_script_behind_a_gif_signature_is_invalid() {
    let rejection = rejected(&corpus::gif_header_then_script());
    assert!(matches!(rejection, Rejection::Invalid(_)), "{rejection:?}");
    assert_eq!(rejection.code(), "invalid_image");
}

#[test]
fn a_truncated_file_of_each_format_is_invalid() {
    for upload in [
        corpus::truncated_jpeg(),
        corpus::truncated_png(),
        corpus::truncated_gif(),
        corpus::truncated_webp(),
    ] {
        let rejection = rejected(&upload);
        assert!(matches!(rejection, Rejection::Invalid(_)), "{rejection:?}");
    }
}

#[test]
fn a_truncated_jpeg_is_refused_although_a_decoder_would_show_it() {
    let upload = corpus::truncated_jpeg();
    // The `image` crate decodes it (the missing part comes out grey): the marker walk is what
    // refuses it.
    assert!(image::load_from_memory_with_format(&upload, image::ImageFormat::Jpeg).is_ok());
    assert!(matches!(rejected(&upload), Rejection::Invalid(_)));
}

#[test]
fn no_cut_of_a_valid_file_is_accepted() {
    let uploads = [
        corpus::png(24, 16),
        corpus::jpeg(24, 16),
        corpus::gif(24, 16),
        corpus::webp(24, 16),
        corpus::animated_gif(24, 16, 2),
        corpus::animated_webp(24, 16, 2),
    ];
    for upload in uploads {
        for cut in 0..upload.len() {
            assert!(
                process(&upload[..cut], &Limits::default()).is_err(),
                "{:?} cut at {cut} of {} accepted",
                media::sniff(&upload),
                upload.len()
            );
        }
    }
}

#[test]
fn corrupt_data_inside_an_intact_structure_is_invalid() {
    for upload in [
        corpus::png_with_short_image_data(),
        corpus::webp_with_short_bitstream(),
    ] {
        let rejection = rejected(&upload);
        assert!(matches!(rejection, Rejection::Invalid(_)), "{rejection:?}");
    }
}
