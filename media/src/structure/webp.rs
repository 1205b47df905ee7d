//! The RIFF container around a WebP.

/// Checks that the file holds as many bytes as its RIFF header declares. The chunks inside are
/// left to the decoder; bytes after the RIFF container are not looked at.
///
/// This matters for animated WebP, which we flatten to its first frame: the decoder never reads
/// the later frames, so without this check a file cut off after its first frame would pass.
pub(super) fn check(bytes: &[u8]) -> Result<(), String> {
    const RIFF_HEADER: u64 = 8;
    let size = bytes.get(4..8).ok_or(TRUNCATED)?;
    let declared = u64::from(u32::from_le_bytes([size[0], size[1], size[2], size[3]]));
    let length = u64::try_from(bytes.len()).map_err(|_| TRUNCATED)?;
    if length < RIFF_HEADER + declared {
        return Err(TRUNCATED.into());
    }
    Ok(())
}

const TRUNCATED: &str = "WebP is truncated: shorter than its RIFF header declares";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_the_declared_size_with_the_bytes() {
        let mut bytes = b"RIFF\x08\0\0\0WEBPabcd".to_vec();
        assert_eq!(check(&bytes), Ok(()));
        assert!(check(&bytes[..bytes.len() - 1]).is_err());
        bytes.extend_from_slice(b"appended");
        assert_eq!(check(&bytes), Ok(()));
    }
}
