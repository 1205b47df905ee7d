//! A walk over a PNG's chunks up to IEND.

/// Checks that the chunks (length, type, data, CRC) follow each other up to an IEND chunk with
/// nothing cut off. CRCs are left to the decoder; bytes after IEND are not looked at.
pub(super) fn check(bytes: &[u8]) -> Result<(), String> {
    const SIGNATURE: usize = 8;
    let mut position = SIGNATURE;
    loop {
        let header = bytes.get(position..position + 8).ok_or(TRUNCATED)?;
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if length > MAX_CHUNK_LENGTH {
            return Err(format!("PNG chunk length {length} is beyond 2^31 - 1"));
        }
        let kind = &header[4..8];
        // The chunk header, its data and its CRC; `length` fits in usize on 32 and 64 bits.
        let chunk_end = position + 8 + usize::try_from(length).map_err(|_| TRUNCATED)? + 4;
        if chunk_end > bytes.len() {
            return Err(TRUNCATED.into());
        }
        if kind == b"IEND" {
            return Ok(());
        }
        position = chunk_end;
    }
}

const MAX_CHUNK_LENGTH: u32 = (1 << 31) - 1;

const TRUNCATED: &str = "PNG is truncated: no IEND chunk";

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in parts {
            let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend_from_slice(*kind);
            bytes.extend_from_slice(data);
            bytes.extend_from_slice(&[0; 4]);
        }
        bytes
    }

    #[test]
    fn accepts_chunks_up_to_iend_and_trailing_bytes() {
        let mut bytes = chunks(&[(b"IHDR", &[0; 13]), (b"IDAT", b"data"), (b"IEND", b"")]);
        assert_eq!(check(&bytes), Ok(()));
        bytes.extend_from_slice(b"PK\x03\x04");
        assert_eq!(check(&bytes), Ok(()));
    }

    #[test]
    fn refuses_every_truncation() {
        let bytes = chunks(&[(b"IHDR", &[0; 13]), (b"IDAT", b"data"), (b"IEND", b"")]);
        for cut in 0..bytes.len() {
            assert!(check(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
    }
}
