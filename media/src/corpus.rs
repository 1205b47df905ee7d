//! The upload test corpus, built in memory (feature `corpus`, off by default).
//!
//! Each function returns the bytes of one upload: valid images of each format, photos carrying
//! EXIF (GPS, orientation), and hostile or broken files. Tests here and in the HTTP crates use
//! them, so that no binary fixture needs to be stored. The marker constants let a test assert
//! that what was stored no longer holds what the upload smuggled in.
//!
//! The builders panic on an argument they cannot honour (a GIF wider than 65535, say): that is
//! a bug in the calling test, and a `Result` would only move the panic into every test.

use image::codecs::gif::{GifEncoder, Repeat};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{Delay, DynamicImage, Frame, ImageEncoder, Rgb, RgbImage, RgbaImage};

/// Stored in the GPS IFD of [`jpeg_with_exif_gps`] (as GPSMapDatum); must not survive.
pub const EXIF_MARKER: &str = "GPS-SECRET-48.8584N";
/// Inside the payload that [`jpeg_with_appended_payload`] appends after the EOI; must not survive.
pub const APPENDED_MARKER: &str = "APPENDED-PAYLOAD-5a17";
/// Inside the HTML that the polyglots carry in a JPEG comment or a PNG text chunk; must not
/// survive.
pub const POLYGLOT_MARKER: &str = "POLYGLOT-SCRIPT-91c2";

/// The picture every generator draws: a red top half and a blue bottom half, each with a few
/// shades in 8-pixel blocks. Eight colours in all, so a GIF holds it exactly, and the halves
/// show which way up a decoded image is.
pub fn pattern(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let shade = u8::try_from(((x / 8 + y / 8) % 4) * 15).unwrap_or(0);
        if y < height / 2 {
            Rgb([200 + shade, 30, 30])
        } else {
            Rgb([30, 30, 200 + shade])
        }
    })
}

/// An 8-bit RGB PNG.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(pattern(width, height))
        .write_with_encoder(PngEncoder::new(&mut bytes))
        .unwrap_or_else(|error| panic!("the PNG fixture does not encode: {error}"));
    bytes
}

/// A baseline JPEG at quality 90, with the JFIF header the encoder writes and nothing else.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(pattern(width, height))
        .write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, 90))
        .unwrap_or_else(|error| panic!("the JPEG fixture does not encode: {error}"));
    bytes
}

/// A single-frame GIF.
pub fn gif(width: u32, height: u32) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(pattern(width, height)).to_rgba8();
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder
            .encode_frame(Frame::new(image))
            .unwrap_or_else(|error| panic!("the GIF fixture does not encode: {error}"));
    }
    bytes
}

/// An animated GIF of `frames` frames, 100 ms each, looping forever; frame `n` is the pattern
/// with its colours rotated `n` times, so consecutive frames differ.
pub fn animated_gif(width: u32, height: u32, frames: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder
            .set_repeat(Repeat::Infinite)
            .unwrap_or_else(|error| panic!("cannot set the GIF fixture's repeat: {error}"));
        for index in 0..frames {
            encoder
                .encode_frame(Frame::from_parts(
                    animation_frame(width, height, index),
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                ))
                .unwrap_or_else(|error| panic!("a GIF fixture frame does not encode: {error}"));
        }
    }
    bytes
}

/// A lossless WebP.
pub fn webp(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(pattern(width, height))
        .write_with_encoder(WebPEncoder::new_lossless(&mut bytes))
        .unwrap_or_else(|error| panic!("the WebP fixture does not encode: {error}"));
    bytes
}

/// An animated WebP (VP8X, ANIM and one lossless ANMF frame per frame, 100 ms each), frames
/// drawn as in [`animated_gif`]. The `image` crate cannot write animated WebP, so the container
/// is assembled here around the bitstreams its still encoder writes.
pub fn animated_webp(width: u32, height: u32, frames: u32) -> Vec<u8> {
    const ANIMATION_FLAG: u8 = 0x02;
    const ALPHA_FLAG: u8 = 0x10;
    let mut vp8x = vec![ANIMATION_FLAG | ALPHA_FLAG, 0, 0, 0];
    vp8x.extend_from_slice(&u24(width - 1));
    vp8x.extend_from_slice(&u24(height - 1));
    // Background colour (BGRA) and loop count (0: forever).
    let anim = [0, 0, 0, 0, 0, 0];

    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8X", &vp8x));
    body.extend(riff_chunk(b"ANIM", &anim));
    for index in 0..frames {
        let frame = animation_frame(width, height, index);
        let mut still = Vec::new();
        WebPEncoder::new_lossless(&mut still)
            .write_image(
                frame.as_raw(),
                width,
                height,
                image::ExtendedColorType::Rgba8,
            )
            .unwrap_or_else(|error| panic!("the WebP frame does not encode: {error}"));
        assert_eq!(
            &still[12..16],
            b"VP8L",
            "a plain lossless WebP holds one VP8L chunk"
        );
        // Frame header: offset x/2, offset y/2, width-1, height-1, duration (ms), then the
        // flags byte (no blending, no disposal), followed by the frame's VP8L chunk.
        let mut anmf = Vec::new();
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(width - 1));
        anmf.extend_from_slice(&u24(height - 1));
        anmf.extend_from_slice(&u24(100));
        anmf.push(0x02);
        anmf.extend_from_slice(&still[12..]);
        body.extend(riff_chunk(b"ANMF", &anmf));
    }
    riff_chunk(b"RIFF", &body)
}

/// A valid JPEG whose APP1 `Exif\0\0` segment holds a TIFF structure with a GPS IFD
/// (GPSVersionID, latitude 48°51'30.24" N, longitude 2°17'40.2" E) and [`EXIF_MARKER`] as the
/// GPSMapDatum ASCII value.
pub fn jpeg_with_exif_gps(width: u32, height: u32) -> Vec<u8> {
    with_segment_after_soi(&jpeg(width, height), 0xE1, &exif_payload(None, true))
}

/// A valid JPEG whose EXIF says to display it with the given orientation (1–8; 6 means "rotate
/// 90° clockwise"), with no GPS data. The pixels are [`pattern`] as stored.
pub fn jpeg_with_orientation(width: u32, height: u32, orientation: u16) -> Vec<u8> {
    with_segment_after_soi(
        &jpeg(width, height),
        0xE1,
        &exif_payload(Some(orientation), false),
    )
}

/// A valid JPEG carrying [`srgb_like_icc_profile`] in its APP2 segment.
pub fn jpeg_with_icc_profile(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 90);
    encoder
        .set_icc_profile(srgb_like_icc_profile())
        .unwrap_or_else(|error| panic!("the JPEG encoder refuses the profile: {error}"));
    DynamicImage::ImageRgb8(pattern(width, height))
        .write_with_encoder(encoder)
        .unwrap_or_else(|error| panic!("the JPEG fixture does not encode: {error}"));
    bytes
}

/// A minimal well-formed ICC profile header for an RGB display profile with no tags: enough for
/// decoders and encoders to carry it, not a profile a colour engine would use.
pub fn srgb_like_icc_profile() -> Vec<u8> {
    let mut profile = vec![0u8; 132];
    profile[0..4].copy_from_slice(&132u32.to_be_bytes());
    profile[8..12].copy_from_slice(&[0x04, 0x30, 0, 0]);
    profile[12..16].copy_from_slice(b"mntr");
    profile[16..20].copy_from_slice(b"RGB ");
    profile[20..24].copy_from_slice(b"XYZ ");
    profile[36..40].copy_from_slice(b"acsp");
    profile
}

/// A tiny, well-formed PNG (valid chunk CRCs) whose IHDR declares 60000 × 60000 RGBA: 14.4 GB
/// once decoded. Its IDAT holds no valid compressed data at all, so only a check of the header
/// can call it too large; anything that tries to decode it fails instead (see
/// [`png_header_without_data`], the same file at a size that is allowed).
pub fn pixel_bomb_png() -> Vec<u8> {
    png_header_without_data(60_000, 60_000)
}

/// A well-formed PNG (signature, IHDR declaring `width` × `height` RGBA, a tEXt comment, an
/// IDAT of 50 bytes that are not a valid zlib stream, IEND; all CRCs valid): about 150 bytes,
/// whatever it declares. Its structure is complete; its pixels cannot be decoded.
pub fn png_header_without_data(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 6 (RGBA), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    // A zlib header, then bytes that are not a deflate stream (block type 3 is reserved).
    let mut idat = vec![0x78, 0x9C];
    idat.extend_from_slice(&[0xFF; 48]);

    let mut bytes = PNG_SIGNATURE.to_vec();
    bytes.extend(png_chunk(b"IHDR", &ihdr));
    bytes.extend(png_chunk(
        b"tEXt",
        b"Comment\0test fixture: the header declares the size, the pixel data is not there",
    ));
    bytes.extend(png_chunk(b"IDAT", &idat));
    bytes.extend(png_chunk(b"IEND", b""));
    bytes
}

/// A valid 64 × 64 PNG whose IDAT chunk is cut to half its data, with its length and CRC
/// rewritten to match: the chunk structure is intact, the compressed pixels stop early.
pub fn png_with_short_image_data() -> Vec<u8> {
    let bytes = png(64, 64);
    let idat = bytes
        .windows(4)
        .position(|window| window == b"IDAT")
        .unwrap_or_else(|| panic!("the encoder wrote no IDAT chunk"))
        - 4;
    let length = u32::from_be_bytes([
        bytes[idat],
        bytes[idat + 1],
        bytes[idat + 2],
        bytes[idat + 3],
    ]);
    let data_start = idat + 8;
    let data_end = data_start
        + usize::try_from(length).unwrap_or_else(|error| panic!("chunk too large: {error}"));
    let half = &bytes[data_start..data_start + (data_end - data_start) / 2];

    let mut corrupt = bytes[..idat].to_vec();
    corrupt.extend(png_chunk(b"IDAT", half));
    corrupt.extend_from_slice(&bytes[data_end + 4..]);
    corrupt
}

/// A valid 64 × 64 lossless WebP whose VP8L bitstream is cut to half, with the chunk and RIFF
/// sizes rewritten to match: the container is intact, the bitstream stops early.
pub fn webp_with_short_bitstream() -> Vec<u8> {
    let bytes = webp(64, 64);
    assert_eq!(
        &bytes[12..16],
        b"VP8L",
        "a plain lossless WebP holds one VP8L chunk"
    );
    let bitstream = &bytes[20..];
    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8L", &bitstream[..bitstream.len() / 2]));
    riff_chunk(b"RIFF", &body)
}

/// A GIF with a 10 × 10 canvas and three frames whose image descriptors each declare 9000 ×
/// 9000 (243 million pixels to decode in all), holding two bytes of LZW data each: under a
/// hundred bytes. Only the descriptors can call it too large.
pub fn gif_frame_bomb() -> Vec<u8> {
    gif_frames_without_data((10, 10), (9000, 9000), 3)
}

/// A well-formed GIF (header, a two-colour global table, `frames` image descriptors each
/// declaring `frame` = (width, height) at the top left of a `canvas` = (width, height), trailer)
/// whose frames hold two bytes of LZW data each, far from enough to fill them.
pub fn gif_frames_without_data(canvas: (u16, u16), frame: (u16, u16), frames: u32) -> Vec<u8> {
    let mut bytes = b"GIF89a".to_vec();
    bytes.extend_from_slice(&canvas.0.to_le_bytes());
    bytes.extend_from_slice(&canvas.1.to_le_bytes());
    bytes.extend_from_slice(&[0x80, 0, 0]);
    bytes.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    for _ in 0..frames {
        bytes.extend_from_slice(&[0x2C, 0, 0, 0, 0]);
        bytes.extend_from_slice(&frame.0.to_le_bytes());
        bytes.extend_from_slice(&frame.1.to_le_bytes());
        bytes.push(0);
        // LZW minimum code size, one sub-block of two bytes, the empty sub-block.
        bytes.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    bytes.push(0x3B);
    bytes
}

/// An HTML page with a script, as someone might upload it under a `.png` name.
pub fn html_as_png() -> Vec<u8> {
    b"<!DOCTYPE html>\n<html><head><title>photo.png</title></head>\
      <body><script>alert(document.cookie)</script></body></html>\n"
        .to_vec()
}

/// An SVG with an `onload` script, as someone might upload it under a `.png` name.
pub fn svg_as_png() -> Vec<u8> {
    b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" \
      height=\"10\" onload=\"alert(document.cookie)\"><rect width=\"10\" height=\"10\"/></svg>\n"
        .to_vec()
}

/// `GIF89a` followed by a script: passes a magic-bytes check, is not an image.
pub fn gif_header_then_script() -> Vec<u8> {
    b"GIF89a<script>alert(1)</script>".to_vec()
}

/// A 64 × 64 JPEG cut off in the middle of its entropy-coded data: most JPEG decoders would
/// show it with a grey lower part and report success.
pub fn truncated_jpeg() -> Vec<u8> {
    let bytes = jpeg(64, 64);
    let start_of_scan = bytes
        .windows(2)
        .position(|pair| pair == [0xFF, 0xDA])
        .unwrap_or_else(|| panic!("the encoder wrote no scan"));
    let keep = start_of_scan + (bytes.len() - start_of_scan) / 2;
    bytes[..keep].to_vec()
}

/// A 64 × 64 PNG cut off in the middle of its IDAT data.
pub fn truncated_png() -> Vec<u8> {
    truncated(png(64, 64))
}

/// A 64 × 64 GIF cut off in the middle of its image data.
pub fn truncated_gif() -> Vec<u8> {
    truncated(gif(64, 64))
}

/// A 64 × 64 WebP cut off in the middle of its bitstream.
pub fn truncated_webp() -> Vec<u8> {
    truncated(webp(64, 64))
}

/// A valid 64 × 64 JPEG followed by a ZIP archive (one stored file, an HTML page with a script
/// and [`APPENDED_MARKER`]): the classic way to smuggle a payload past an image check.
pub fn jpeg_with_appended_payload() -> Vec<u8> {
    let content = format!("<html><script>alert('{APPENDED_MARKER}')</script></html>");
    let name = b"payload.html";
    let content_length =
        u32::try_from(content.len()).unwrap_or_else(|error| panic!("payload too large: {error}"));
    let mut zip = Vec::new();
    // Local file header: signature, version 10, no flags, stored, no time or date, CRC,
    // compressed and uncompressed sizes, name length, no extra field.
    zip.extend_from_slice(b"PK\x03\x04");
    zip.extend_from_slice(&10u16.to_le_bytes());
    zip.extend_from_slice(&[0; 8]);
    zip.extend_from_slice(&crc32(content.as_bytes()).to_le_bytes());
    zip.extend_from_slice(&content_length.to_le_bytes());
    zip.extend_from_slice(&content_length.to_le_bytes());
    zip.extend_from_slice(
        &u16::try_from(name.len())
            .unwrap_or_else(|error| panic!("name too long: {error}"))
            .to_le_bytes(),
    );
    zip.extend_from_slice(&0u16.to_le_bytes());
    zip.extend_from_slice(name);
    zip.extend_from_slice(content.as_bytes());

    let mut bytes = jpeg(64, 64);
    bytes.extend(zip);
    bytes
}

/// A JPEG/HTML polyglot: a valid 64 × 64 JPEG whose comment (COM) segment holds an HTML page
/// with a script, which a browser sniffing the content could run if the file were served as
/// something other than `image/jpeg`.
pub fn polyglot_jpeg_html() -> Vec<u8> {
    let html = format!("<html><body><script>alert('{POLYGLOT_MARKER}')</script></body></html>");
    with_segment_after_soi(&jpeg(64, 64), 0xFE, html.as_bytes())
}

/// A valid 64 × 64 PNG with a `tEXt` chunk holding an HTML page with a script.
pub fn png_with_script_text_chunk() -> Vec<u8> {
    let bytes = png(64, 64);
    let text = format!("Comment\0<html><script>alert('{POLYGLOT_MARKER}')</script></html>");
    // The IHDR chunk is the first 8 + 4 + 4 + 13 + 4 bytes; text chunks may follow it.
    let after_ihdr = PNG_SIGNATURE.len() + 25;
    let mut with_text = bytes[..after_ihdr].to_vec();
    with_text.extend(png_chunk(b"tEXt", text.as_bytes()));
    with_text.extend_from_slice(&bytes[after_ihdr..]);
    with_text
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn animation_frame(width: u32, height: u32, index: u32) -> RgbaImage {
    let mut frame = DynamicImage::ImageRgb8(pattern(width, height)).to_rgba8();
    for pixel in frame.pixels_mut() {
        pixel.0[..3].rotate_left(usize::try_from(index % 3).unwrap_or(0));
    }
    frame
}

/// Keeps 60% of the file: past the headers of a small image, inside its pixel data.
fn truncated(bytes: Vec<u8>) -> Vec<u8> {
    let keep = bytes.len() * 6 / 10;
    bytes[..keep].to_vec()
}

/// Inserts a JPEG segment (`marker`, length, `payload`) right after the SOI marker.
fn with_segment_after_soi(jpeg: &[u8], marker: u8, payload: &[u8]) -> Vec<u8> {
    let length = u16::try_from(payload.len() + 2)
        .unwrap_or_else(|error| panic!("a JPEG segment holds under 64 KiB: {error}"));
    let mut bytes = jpeg[..2].to_vec();
    bytes.extend_from_slice(&[0xFF, marker]);
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(&jpeg[2..]);
    bytes
}

/// `Exif\0\0` and a little-endian TIFF structure: IFD0 with an optional Orientation and, if
/// `with_gps`, a GPSInfo pointer to a GPS IFD.
fn exif_payload(orientation: Option<u16>, with_gps: bool) -> Vec<u8> {
    const SHORT: u16 = 3;
    const LONG: u16 = 4;
    const BYTE: u16 = 1;
    const ASCII: u16 = 2;
    const RATIONAL: u16 = 5;

    let mut ifd0: Vec<(u16, u16, u32, [u8; 4])> = Vec::new();
    if let Some(orientation) = orientation {
        let value = orientation.to_le_bytes();
        ifd0.push((0x0112, SHORT, 1, [value[0], value[1], 0, 0]));
    }
    let ifd0_offset: u32 = 8;
    let ifd0_size = ifd_size(ifd0.len() + usize::from(with_gps));
    let gps_offset = ifd0_offset + ifd0_size;
    if with_gps {
        ifd0.push((0x8825, LONG, 1, gps_offset.to_le_bytes()));
    }

    let mut tiff = b"II\x2A\x00".to_vec();
    tiff.extend_from_slice(&ifd0_offset.to_le_bytes());
    write_ifd(&mut tiff, &ifd0);

    if with_gps {
        let mut datum = EXIF_MARKER.as_bytes().to_vec();
        datum.push(0);
        let gps_entries = 6;
        let data_offset = gps_offset + ifd_size(gps_entries);
        let latitude_offset = data_offset;
        let longitude_offset = data_offset + 24;
        let datum_offset = data_offset + 48;
        let datum_count =
            u32::try_from(datum.len()).unwrap_or_else(|error| panic!("marker too long: {error}"));
        let gps = [
            (0x0000, BYTE, 4, [2, 3, 0, 0]),
            (0x0001, ASCII, 2, [b'N', 0, 0, 0]),
            (0x0002, RATIONAL, 3, latitude_offset.to_le_bytes()),
            (0x0003, ASCII, 2, [b'E', 0, 0, 0]),
            (0x0004, RATIONAL, 3, longitude_offset.to_le_bytes()),
            (0x0012, ASCII, datum_count, datum_offset.to_le_bytes()),
        ];
        write_ifd(&mut tiff, &gps);
        for (numerator, denominator) in [(48, 1), (51, 1), (3024, 100), (2, 1), (17, 1), (402, 10)]
        {
            tiff.extend_from_slice(&u32::to_le_bytes(numerator));
            tiff.extend_from_slice(&u32::to_le_bytes(denominator));
        }
        tiff.extend_from_slice(&datum);
    }

    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    payload
}

fn ifd_size(entries: usize) -> u32 {
    u32::try_from(2 + 12 * entries + 4).unwrap_or_else(|error| panic!("IFD too large: {error}"))
}

fn write_ifd(tiff: &mut Vec<u8>, entries: &[(u16, u16, u32, [u8; 4])]) {
    let count =
        u16::try_from(entries.len()).unwrap_or_else(|error| panic!("IFD too large: {error}"));
    tiff.extend_from_slice(&count.to_le_bytes());
    for (tag, field_type, value_count, value) in entries {
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&field_type.to_le_bytes());
        tiff.extend_from_slice(&value_count.to_le_bytes());
        tiff.extend_from_slice(value);
    }
    // No next IFD.
    tiff.extend_from_slice(&0u32.to_le_bytes());
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let length =
        u32::try_from(data.len()).unwrap_or_else(|error| panic!("chunk too large: {error}"));
    let mut chunk = length.to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    let crc = crc32(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    chunk
}

fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let length =
        u32::try_from(data.len()).unwrap_or_else(|error| panic!("chunk too large: {error}"));
    let mut chunk = kind.to_vec();
    chunk.extend_from_slice(&length.to_le_bytes());
    chunk.extend_from_slice(data);
    if data.len() % 2 == 1 {
        chunk.push(0);
    }
    chunk
}

fn u24(value: u32) -> [u8; 3] {
    let bytes = value.to_le_bytes();
    [bytes[0], bytes[1], bytes[2]]
}

/// CRC-32 as PNG and ZIP use it (reflected, polynomial 0xEDB88320). Bitwise: the corpus checks
/// a few hundred bytes, not worth a table or a dependency.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value_and_png_iend() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(png_chunk(b"IEND", b""), b"\0\0\0\0IEND\xAE\x42\x60\x82");
    }

    #[test]
    fn pixel_bomb_is_small_and_declares_60000_square() {
        let bomb = pixel_bomb_png();
        assert!(bomb.len() < 200, "{} bytes", bomb.len());
        assert_eq!(&bomb[12..16], b"IHDR");
        assert_eq!(&bomb[16..24], b"\0\0\xEA\x60\0\0\xEA\x60");
    }

    #[test]
    fn exif_fixture_is_a_tiff_structure_with_the_marker() {
        let jpeg = jpeg_with_exif_gps(16, 16);
        assert_eq!(&jpeg[2..4], b"\xFF\xE1");
        assert_eq!(&jpeg[6..16], b"Exif\0\0II\x2A\0");
        let haystack = String::from_utf8_lossy(&jpeg);
        assert!(haystack.contains(EXIF_MARKER));
    }
}
