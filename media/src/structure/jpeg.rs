//! A walk over a JPEG's marker structure, used to refuse truncated files.
//!
//! JPEG decoders are lenient: given a file cut off in the middle of the entropy-coded data they
//! fill the rest of the picture with grey and report success. So before decoding we walk the
//! segments ourselves and require the end-of-image marker of the main image.

/// Where the main image's EOI marker ends, or why the structure is broken.
///
/// Accepts baseline and progressive files (several scans, tables between them). Bytes after the
/// EOI (a second image of a multi-picture file, or anything appended) are not looked at; the
/// re-encode drops them.
pub(super) fn end_of_image(bytes: &[u8]) -> Result<usize, String> {
    if !bytes.starts_with(&[0xFF, MARKER_SOI]) {
        return Err("JPEG does not start with SOI".into());
    }
    let mut position = 2;
    let mut seen_frame_header = false;
    let mut seen_scan = false;
    loop {
        let (marker, after_marker) = read_marker(bytes, position)?;
        match marker {
            MARKER_EOI => {
                if !seen_frame_header || !seen_scan {
                    return Err("JPEG ends before any frame or scan".into());
                }
                return Ok(after_marker);
            }
            MARKER_SOI => return Err("second SOI inside the JPEG".into()),
            // Standalone markers: no length field follows.
            MARKER_TEM | MARKER_RST0..=MARKER_RST7 => position = after_marker,
            _ => {
                let segment_end = segment_end(bytes, after_marker)?;
                if is_start_of_frame(marker) {
                    seen_frame_header = true;
                }
                if marker == MARKER_SOS {
                    if !seen_frame_header {
                        return Err("JPEG scan before its frame header".into());
                    }
                    seen_scan = true;
                    position = end_of_entropy_coded_data(bytes, segment_end)?;
                } else {
                    position = segment_end;
                }
            }
        }
    }
}

const MARKER_TEM: u8 = 0x01;
const MARKER_RST0: u8 = 0xD0;
const MARKER_RST7: u8 = 0xD7;
const MARKER_SOI: u8 = 0xD8;
const MARKER_EOI: u8 = 0xD9;
const MARKER_SOS: u8 = 0xDA;

const TRUNCATED: &str = "JPEG is truncated: no end-of-image marker";

/// SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
fn is_start_of_frame(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Reads a marker at `position`, skipping fill bytes (any number of 0xFF before the code).
fn read_marker(bytes: &[u8], mut position: usize) -> Result<(u8, usize), String> {
    match bytes.get(position) {
        Some(0xFF) => {}
        Some(other) => {
            return Err(format!(
                "expected a JPEG marker at byte {position}, found {other:#04x}"
            ));
        }
        None => return Err(TRUNCATED.into()),
    }
    while bytes.get(position) == Some(&0xFF) {
        position += 1;
    }
    match bytes.get(position) {
        Some(0x00) => Err(format!("invalid JPEG marker 0xFF00 at byte {position}")),
        Some(&marker) => Ok((marker, position + 1)),
        None => Err(TRUNCATED.into()),
    }
}

/// The end of a segment whose two-byte big-endian length (which counts itself) starts at
/// `length_position`.
fn segment_end(bytes: &[u8], length_position: usize) -> Result<usize, String> {
    let length_bytes = bytes
        .get(length_position..length_position + 2)
        .ok_or(TRUNCATED)?;
    let length = usize::from(u16::from_be_bytes([length_bytes[0], length_bytes[1]]));
    if length < 2 {
        return Err(format!("JPEG segment length {length} is too short"));
    }
    let end = length_position + length;
    if end > bytes.len() {
        return Err(TRUNCATED.into());
    }
    Ok(end)
}

/// The position of the first marker after entropy-coded data starting at `position`.
///
/// In the data, 0xFF is followed by 0x00 (a stuffed data byte), by RST0–RST7 (restart markers,
/// part of the data), or by 0xFF (fill before a marker); anything else is the next marker.
fn end_of_entropy_coded_data(bytes: &[u8], mut position: usize) -> Result<usize, String> {
    loop {
        let offset = bytes
            .get(position..)
            .and_then(|rest| rest.iter().position(|&byte| byte == 0xFF))
            .ok_or(TRUNCATED)?;
        let marker_position = position + offset;
        match bytes.get(marker_position + 1) {
            None => return Err(TRUNCATED.into()),
            Some(0x00 | MARKER_RST0..=MARKER_RST7) => position = marker_position + 2,
            Some(0xFF) => position = marker_position + 1,
            Some(_) => return Ok(marker_position),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, a frame header, a scan header, `data`, then `tail`.
    fn jpeg_like(data: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0xFF, 0xD8];
        bytes.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x04, 0xAA, 0xBB]);
        bytes.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x03, 0xCC]);
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(tail);
        bytes
    }

    #[test]
    fn finds_eoi_after_stuffed_bytes_restarts_and_fill() {
        let bytes = jpeg_like(
            &[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56],
            &[0xFF, 0xFF, 0xD9],
        );
        assert_eq!(end_of_image(&bytes), Ok(bytes.len()));
    }

    #[test]
    fn allows_several_scans_and_trailing_bytes() {
        let mut tail = vec![0xFF, 0xC4, 0x00, 0x03, 0x00];
        tail.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x03, 0xCC, 0x77, 0xFF, 0x00]);
        tail.extend_from_slice(&[0xFF, 0xD9]);
        let end = jpeg_like(&[0x01], &tail).len();
        tail.extend_from_slice(b"PK\x03\x04 appended");
        assert_eq!(end_of_image(&jpeg_like(&[0x01], &tail)), Ok(end));
    }

    #[test]
    fn refuses_every_truncation() {
        let bytes = jpeg_like(&[0x12, 0xFF, 0x00, 0x34], &[0xFF, 0xD9]);
        for cut in 0..bytes.len() {
            assert!(
                end_of_image(&bytes[..cut]).is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    #[test]
    fn refuses_eoi_without_a_scan_and_overlong_segments() {
        assert!(end_of_image(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err());
        assert!(end_of_image(&[0xFF, 0xD8, 0xFF, 0xE1, 0x10, 0x00, 0xFF, 0xD9]).is_err());
        assert!(end_of_image(&[0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01, 0xFF, 0xD9]).is_err());
    }
}
