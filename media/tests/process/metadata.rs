use std::io::Cursor;

use image::ImageDecoder;
use image::codecs::jpeg::JpegDecoder;
use media::ImageFormat;
use media::corpus::{self, APPENDED_MARKER, EXIF_MARKER, POLYGLOT_MARKER};

use crate::helpers::{accepted, contains, decode, is_blue, is_red, rgb_at};

#[test]
fn exif_and_gps_are_gone_from_original_and_thumbnail() {
    let upload = corpus::jpeg_with_exif_gps(800, 600);
    assert!(contains(&upload, b"Exif\0\0"), "the fixture carries EXIF");
    assert!(
        contains(&upload, EXIF_MARKER.as_bytes()),
        "the fixture carries the marker"
    );
    let mut decoder = JpegDecoder::new(Cursor::new(&upload))
        .unwrap_or_else(|error| panic!("the fixture does not decode: {error}"));
    assert!(
        decoder
            .exif_metadata()
            .unwrap_or_else(|error| panic!("the EXIF does not read: {error}"))
            .is_some()
    );

    let processed = accepted(&upload);
    for stored in [&processed.original, &processed.thumbnail] {
        assert!(!contains(stored, b"Exif"));
        assert!(!contains(stored, EXIF_MARKER.as_bytes()));
        assert!(!contains(stored, b"GPS"));
        let mut decoder = JpegDecoder::new(Cursor::new(stored))
            .unwrap_or_else(|error| panic!("the stored JPEG does not decode: {error}"));
        assert_eq!(
            decoder
                .exif_metadata()
                .unwrap_or_else(|error| panic!("the metadata does not read: {error}")),
            None
        );
    }
}

#[test]
fn bytes_appended_after_the_image_are_gone() {
    let upload = corpus::jpeg_with_appended_payload();
    assert!(contains(&upload, APPENDED_MARKER.as_bytes()));
    assert!(contains(&upload, b"PK\x03\x04"));

    let processed = accepted(&upload);
    for stored in [&processed.original, &processed.thumbnail] {
        assert!(!contains(stored, APPENDED_MARKER.as_bytes()));
        assert!(!contains(stored, b"PK\x03\x04"));
        assert!(
            stored.ends_with(&[0xFF, 0xD9]),
            "the stored JPEG ends at its EOI"
        );
    }
}

#[test]
fn scripts_in_comments_and_text_chunks_are_gone() {
    for (format, upload) in [
        (ImageFormat::Jpeg, corpus::polyglot_jpeg_html()),
        (ImageFormat::Png, corpus::png_with_script_text_chunk()),
    ] {
        assert!(contains(&upload, POLYGLOT_MARKER.as_bytes()));
        let processed = accepted(&upload);
        assert_eq!(processed.format, format);
        for stored in [&processed.original, &processed.thumbnail] {
            assert!(!contains(stored, POLYGLOT_MARKER.as_bytes()), "{format:?}");
            assert!(!contains(stored, b"<script"), "{format:?}");
        }
    }
    let processed = accepted(&corpus::png_with_script_text_chunk());
    assert!(!contains(&processed.original, b"tEXt"));
}

#[test]
fn a_colour_profile_is_kept() {
    let profile = corpus::srgb_like_icc_profile();
    let processed = accepted(&corpus::jpeg_with_icc_profile(400, 300));
    for stored in [&processed.original, &processed.thumbnail] {
        let mut decoder = JpegDecoder::new(Cursor::new(stored))
            .unwrap_or_else(|error| panic!("the stored JPEG does not decode: {error}"));
        assert_eq!(
            decoder
                .icc_profile()
                .unwrap_or_else(|error| panic!("the profile does not read: {error}")),
            Some(profile.clone())
        );
    }
}

#[test]
fn exif_orientation_6_is_applied_so_the_photo_stays_upright() {
    // Stored 200 × 100, red on top; orientation 6 says "rotate 90° clockwise to display", which
    // puts the stored top on the right.
    let processed = accepted(&corpus::jpeg_with_orientation(200, 100, 6));
    assert_eq!((processed.width, processed.height), (100, 200));
    assert_eq!(
        (processed.thumbnail_width, processed.thumbnail_height),
        (100, 200)
    );

    let stored = decode(&processed.original, ImageFormat::Jpeg);
    assert_eq!((stored.width(), stored.height()), (100, 200));
    assert!(is_red(rgb_at(&stored, 90, 100)), "the right half is red");
    assert!(is_blue(rgb_at(&stored, 10, 100)), "the left half is blue");
    assert!(
        !contains(&processed.original, b"Exif"),
        "no orientation left to apply twice"
    );
}

#[test]
fn exif_orientation_1_changes_nothing() {
    let processed = accepted(&corpus::jpeg_with_orientation(200, 100, 1));
    assert_eq!((processed.width, processed.height), (200, 100));
    let stored = decode(&processed.original, ImageFormat::Jpeg);
    assert!(is_red(rgb_at(&stored, 100, 10)));
}
