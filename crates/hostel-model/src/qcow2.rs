//! What a qcow2 file's header says, read from its first bytes without opening it as an
//! image (which could make QEMU's tools open files it names).

/// Whether the qcow2 file that starts with `head` (its first 16 bytes at least) names a
/// backing file: its header's backing file offset (bytes 8 to 15, big-endian) is set.
/// `None` for bytes that are no qcow2 header.
pub fn names_backing(head: &[u8]) -> Option<bool> {
    if head.len() < 16 || &head[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(head[8..16].try_into().ok()?);
    Some(offset != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qcow2_header_tells_whether_it_names_a_backing_file() {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[7] = 3;
        assert_eq!(names_backing(&h), Some(false));
        h[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        assert_eq!(names_backing(&h), Some(true));
        assert_eq!(names_backing(&h[..10]), None);
        assert_eq!(names_backing(&[0u8; 512]), None);
    }
}
