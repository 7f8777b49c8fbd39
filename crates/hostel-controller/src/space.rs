//! The free-space floor of the data directory's filesystem. The database, the log, the
//! audit archive and (with `hostel up`) the VMs' disks share it; a guest writing into a
//! thin disk needs room that nothing else may take. Below the floor, operations that
//! take more space (create, disk add and resize, snapshots, image builds and imports,
//! saves) are refused; reads, stops and deletes keep working, so space can be freed.

use crate::error::Error;
use crate::Controller;
use std::path::Path;

/// How much of its filesystem the data directory keeps free: a share or an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeSpaceFloor {
    /// This many percent of the filesystem's size.
    Percent(u8),
    Bytes(u64),
}

/// 5 %: room for guests to write while an admin reacts, on any size of disk.
impl Default for FreeSpaceFloor {
    fn default() -> Self {
        FreeSpaceFloor::Percent(5)
    }
}

impl FreeSpaceFloor {
    fn bytes_of(self, total: u64) -> u64 {
        match self {
            FreeSpaceFloor::Percent(p) => total / 100 * u64::from(p),
            FreeSpaceFloor::Bytes(b) => b,
        }
    }
}

impl std::fmt::Display for FreeSpaceFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreeSpaceFloor::Percent(p) => write!(f, "{p}%"),
            FreeSpaceFloor::Bytes(b) => write!(f, "{}", human(*b)),
        }
    }
}

impl std::str::FromStr for FreeSpaceFloor {
    type Err = String;

    /// `5%`, `2GiB`, `500MiB`, `1TiB`, or a number of bytes (`0`: no floor).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "{s:?} is not a free-space floor: give a percentage of the filesystem \
                 (5%) or an amount (2GiB, 500MiB, 0 for none)"
            )
        };
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if p <= 90 => Ok(FreeSpaceFloor::Percent(p)),
                _ => Err(bad()),
            };
        }
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        let (number, unit) = units
            .iter()
            .find_map(|(suffix, unit)| s.strip_suffix(suffix).map(|n| (n, *unit)))
            .unwrap_or((s, 1));
        number
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .map(FreeSpaceFloor::Bytes)
            .ok_or_else(bad)
    }
}

fn human(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// (bytes available to the daemon, size of the filesystem) of the one holding `path`.
fn filesystem_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a pointer to a statvfs that lives across the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * block, st.f_blocks as u64 * block))
}

impl Controller {
    /// Refuses new work that takes disk space while the data directory's filesystem is
    /// under its floor (`ControllerConfig::min_free_space`).
    pub(crate) fn require_free_space(&self) -> crate::error::Result<()> {
        let dir = &self.cfg.data_dir;
        let (free, total) = match filesystem_space(dir) {
            Ok(space) => space,
            Err(e) => {
                // Not knowing is no reason to stop VMs from being made.
                tracing::warn!("cannot read the free space of {}: {e}", dir.display());
                return Ok(());
            }
        };
        let floor = self.cfg.min_free_space.bytes_of(total);
        if free < floor {
            return Err(Error::unavailable(format!(
                "the filesystem of {} has {} free, under its floor of {} (`hostel up \
                 --min-free-space`, now {}): new VMs, disks, snapshots, images and saves are \
                 refused so that running VMs' disks keep room; free space (delete VMs, \
                 snapshots or images you do not need, or move old files in audit-archive/ \
                 away), or lower the floor",
                dir.display(),
                human(free),
                human(floor),
                self.cfg.min_free_space,
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_are_read_as_shares_or_amounts() {
        assert_eq!("5%".parse(), Ok(FreeSpaceFloor::Percent(5)));
        assert_eq!("2GiB".parse(), Ok(FreeSpaceFloor::Bytes(2 << 30)));
        assert_eq!("500 MiB".parse(), Ok(FreeSpaceFloor::Bytes(500 << 20)));
        assert_eq!("0".parse(), Ok(FreeSpaceFloor::Bytes(0)));
        for bad in ["", "5 percent", "95%", "-1", "2GB"] {
            let e = bad.parse::<FreeSpaceFloor>().unwrap_err();
            assert!(e.contains("5%"), "{e}");
        }
        assert_eq!(FreeSpaceFloor::Percent(5).bytes_of(1000), 50);
        assert_eq!(FreeSpaceFloor::default(), FreeSpaceFloor::Percent(5));
    }

    #[test]
    fn the_filesystem_s_space_is_read() {
        let (free, total) = filesystem_space(Path::new("/")).unwrap();
        assert!(total > 0 && free <= total);
    }
}
