//! The VM archive of `hostel export` and `hostel import-vm`: a POSIX tar (ustar) of
//! regular files, in this order: [`MANIFEST`] (the VM's definition and its disks, JSON),
//! each disk's file, then [`SUMS`] (the SHA-256 of every file before it, as
//! `sha256sum` writes them). Any tar reads it (`tar tvf`, `sha256sum -c`); Hostel writes
//! and reads it as a stream, so neither end holds the whole archive.
//!
//! Only what such an archive needs is here: regular files with short names, and sizes
//! past ustar's 8 GiB in the base-256 form GNU tar and libarchive read.

/// Tar's block: headers are one, each file's data is padded to whole ones.
pub const BLOCK: usize = 512;
/// The archive's first file.
pub const MANIFEST: &str = "hostel-vm.json";
/// The archive's last file.
pub const SUMS: &str = "SHA256SUMS";
/// What the manifest's `format` says.
pub const FORMAT: &str = "hostel-vm";
/// The manifest's version this build writes and reads.
pub const VERSION: u32 = 1;

/// The header of a regular file `name` of `size` bytes (`name`: at most 100 bytes).
pub fn header(name: &str, size: u64, mtime: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size < 1 << 33 {
        octal(&mut h[124..136], size);
    } else {
        // Base-256: the first byte's high bit set, the size big-endian in the rest.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..271].copy_from_slice(b"hostel");
    h[297..303].copy_from_slice(b"hostel");
    let sum = checksum(&h);
    // Six digits, a NUL, a space: as tar writes it.
    let digits = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(digits.as_bytes());
    h
}

/// The zero bytes that follow a file's `size` bytes of data.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// The end of an archive: two zero blocks.
pub const END: [u8; 2 * BLOCK] = [0u8; 2 * BLOCK];

/// What a header block says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file and its length.
    File { name: String, size: u64 },
    /// A zero block: the archive's end.
    End,
}

/// Reads one header block.
pub fn parse_header(h: &[u8; BLOCK]) -> Result<Entry, String> {
    if h.iter().all(|b| *b == 0) {
        return Ok(Entry::End);
    }
    let stored = parse_octal(&h[148..156]).ok_or("a header's checksum is not a number")?;
    if stored != checksum(h) {
        return Err("a header's checksum is wrong: the archive is damaged".into());
    }
    if &h[257..262] != b"ustar" {
        return Err("not a POSIX tar archive (no ustar header)".into());
    }
    let name = cstr(&h[..100]);
    if !matches!(h[156], b'0' | 0) {
        return Err(format!(
            "{name:?} is not a regular file: an archive of `hostel export` holds only files"
        ));
    }
    if !cstr(&h[345..500]).is_empty() {
        return Err(format!(
            "{name:?}: long names are not used by `hostel export`"
        ));
    }
    let size = if h[124] & 0x80 != 0 {
        let mut v = (h[124] & 0x7f) as u64;
        for b in &h[125..136] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(*b as u64))
                .ok_or("a file's size is out of range")?;
        }
        v
    } else {
        parse_octal(&h[124..136]).ok_or("a file's size is not a number")?
    };
    Ok(Entry::File { name, size })
}

/// The sum of the header's bytes, its checksum field counted as spaces.
fn checksum(h: &[u8; BLOCK]) -> u64 {
    h.iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u64
            }
        })
        .sum()
}

/// `v` in octal, zero-padded, NUL-ended, filling `field`.
fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(&s.as_bytes()[s.len() - field.len()..]);
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: String = field
        .iter()
        .map(|b| *b as char)
        .filter(|c| *c != '\0' && *c != ' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(&s, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The name of disk `index`'s file in the archive.
pub fn disk_file(index: u32, format: &str) -> String {
    format!("disk-{index}.{format}")
}

/// Parses [`SUMS`]: `HEX  NAME` a line.
pub fn parse_sums(text: &str) -> Result<Vec<(String, String)>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (sum, name) = l
                .split_once("  ")
                .ok_or_else(|| format!("{SUMS}: {l:?} is not `SHA256  NAME`"))?;
            Ok((name.trim().to_string(), sum.trim().to_ascii_lowercase()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back_and_tar_sizes_past_8_gib() {
        for size in [0u64, 1, 511, 512, 513, (1 << 33) - 1, 1 << 33, 5 << 40] {
            let h = header("disk-0.qcow2", size, 1_700_000_000);
            assert_eq!(
                parse_header(&h),
                Ok(Entry::File {
                    name: "disk-0.qcow2".into(),
                    size
                })
            );
            assert_eq!((size + padding(size) as u64) % BLOCK as u64, 0);
        }
        assert_eq!(parse_header(&[0u8; BLOCK]), Ok(Entry::End));
        let mut bad = header("x", 10, 0);
        bad[0] = b'y';
        assert!(parse_header(&bad).unwrap_err().contains("checksum"));
        let mut link = header("x", 0, 0);
        link[156] = b'2';
        let sum = checksum(&link);
        link[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(parse_header(&link)
            .unwrap_err()
            .contains("not a regular file"));
    }

    #[test]
    fn sums_are_read_as_sha256sum_writes_them() {
        let s = parse_sums("ab12  hostel-vm.json\nCD34  disk-0.qcow2\n").unwrap();
        assert_eq!(
            s,
            [
                ("hostel-vm.json".to_string(), "ab12".to_string()),
                ("disk-0.qcow2".to_string(), "cd34".to_string())
            ]
        );
        assert!(parse_sums("nonsense").is_err());
    }
}
