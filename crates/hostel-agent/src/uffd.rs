//! Post-copy migration needs the receiving QEMU to serve its own page faults through
//! userfaultfd. QEMU runs as its VM's own uid, and the kernel lets unprivileged
//! processes use userfaultfd only with `vm.unprivileged_userfaultfd=1`, a host-wide
//! switch. `/dev/userfaultfd` (Linux 6.1+, used by QEMU 8.1+) gives the same to whoever
//! may open it; so, as libvirt does for its QEMU, the agent grants the receiving QEMU's
//! uid read and write on that device with a POSIX ACL entry while it waits for its VM,
//! and takes the entry back after (QEMU holds its descriptor by then). The device's own
//! mode comes back once no entry is left.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;

const DEVICE: &str = "/dev/userfaultfd";
const XATTR: &str = "system.posix_acl_access";
/// Serializes changes to the device's ACL between processes (more than one agent on a
/// machine, as in tests): each change reads the ACL, edits it and writes it back.
const LOCK: &str = "/run/hostel-userfaultfd.lock";

/// Whether a QEMU this agent starts can receive a VM by post-copy: with per-VM uids
/// (`grants`), through the device; a QEMU running as root, always; else when the kernel
/// allows unprivileged userfaultfd.
pub fn available(grants: bool) -> bool {
    if grants {
        return std::path::Path::new(DEVICE).exists();
    }
    nix::unistd::geteuid().is_root()
        || std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
            .is_ok_and(|v| v.trim() == "1")
}

/// Lets `uid` open the device until [`revoke`].
pub fn grant(uid: u32) -> anyhow::Result<()> {
    edit(|uids| {
        uids.insert(uid);
    })
}

/// Takes `uid`'s entry back; the last one out removes the ACL and restores the mode.
pub fn revoke(uid: u32) {
    if let Err(e) = edit(|uids| {
        uids.remove(&uid);
    }) {
        tracing::warn!("taking back uid {uid}'s access to {DEVICE}: {e:#}");
    }
}

/// Whether `uid` has an entry now.
pub fn granted(uid: u32) -> bool {
    read_acl().is_ok_and(|(uids, _)| uids.contains(&uid))
}

fn edit(change: impl FnOnce(&mut BTreeSet<u32>)) -> anyhow::Result<()> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {LOCK}: {e}"))?;
    let (mut uids, mode) = read_acl()?;
    change(&mut uids);
    if uids.is_empty() {
        remove_acl(mode)
    } else {
        write_acl(&uids, mode)
    }
}

/// The uids named in the device's ACL, and its mode without the ACL.
fn read_acl() -> anyhow::Result<(BTreeSet<u32>, u32)> {
    let mode = std::fs::metadata(DEVICE)?.permissions().mode() & 0o777;
    let (path, name) = (CString::new(DEVICE)?, CString::new(XATTR)?);
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and the buffer is as long as said.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok((BTreeSet::new(), mode));
        }
        anyhow::bail!("cannot read {DEVICE}'s ACL: {e}");
    }
    Ok(decode(&buf[..n as usize], mode))
}

fn decode(b: &[u8], mut mode: u32) -> (BTreeSet<u32>, u32) {
    let mut uids = BTreeSet::new();
    for c in b.get(4..).unwrap_or_default().chunks_exact(8) {
        let tag = u16::from_le_bytes([c[0], c[1]]);
        let perm = u16::from_le_bytes([c[2], c[3]]) as u32 & 7;
        let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        match tag {
            0x01 => mode = (mode & !0o700) | perm << 6,
            0x02 => {
                uids.insert(id);
            }
            0x04 => mode = (mode & !0o070) | perm << 3,
            0x20 => mode = (mode & !0o007) | perm,
            _ => {}
        }
    }
    (uids, mode)
}

/// The ACL in the kernel's xattr form: version 2, then (tag, perm, id) entries in tag
/// order: the owner, each uid, the group, the mask, others.
fn encode(uids: &BTreeSet<u32>, mode: u32) -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let mut b = 2u32.to_le_bytes().to_vec();
    let mut entry = |tag: u16, perm: u32, id: u32| {
        b.extend(tag.to_le_bytes());
        b.extend((perm as u16).to_le_bytes());
        b.extend(id.to_le_bytes());
    };
    entry(0x01, (mode >> 6) & 7, UNDEFINED);
    for uid in uids {
        entry(0x02, 6, *uid);
    }
    entry(0x04, (mode >> 3) & 7, UNDEFINED);
    entry(0x10, 6 | ((mode >> 3) & 7), UNDEFINED);
    entry(0x20, mode & 7, UNDEFINED);
    b
}

fn write_acl(uids: &BTreeSet<u32>, mode: u32) -> anyhow::Result<()> {
    let acl = encode(uids, mode);
    let (path, name) = (CString::new(DEVICE)?, CString::new(XATTR)?);
    // SAFETY: both strings are NUL-terminated and live across the call; the value is a
    // byte buffer of the length given.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    if r != 0 {
        anyhow::bail!(
            "cannot give {DEVICE} an ACL: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn remove_acl(mode: u32) -> anyhow::Result<()> {
    let (path, name) = (CString::new(DEVICE)?, CString::new(XATTR)?);
    // SAFETY: both strings are NUL-terminated and live across the call.
    let r = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENODATA) {
            anyhow::bail!("cannot remove {DEVICE}'s ACL: {e}");
        }
    }
    // The mask's bits stay in the group's place of the mode: the mode goes back.
    std::fs::set_permissions(DEVICE, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_names_each_uid_between_the_owner_and_the_group() {
        let uids: BTreeSet<u32> = [7, 5].into_iter().collect();
        let b = encode(&uids, 0o600);
        let entries: Vec<(u16, u16, u32)> = b[4..]
            .chunks(8)
            .map(|c| {
                (
                    u16::from_le_bytes([c[0], c[1]]),
                    u16::from_le_bytes([c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        assert_eq!(&b[..4], &2u32.to_le_bytes());
        assert_eq!(decode(&b, 0o660), (uids.clone(), 0o600), "read back");
        assert_eq!(
            entries,
            [
                (0x01, 6, u32::MAX),
                (0x02, 6, 5),
                (0x02, 6, 7),
                (0x04, 0, u32::MAX),
                (0x10, 6, u32::MAX),
                (0x20, 0, u32::MAX)
            ]
        );
    }

    /// Real: a uid of the VM range opens the device only while granted, and the
    /// device's mode is as it was after. (Root only, as the agent is.)
    #[test]
    fn a_granted_uid_opens_the_device_and_not_after() {
        if !nix::unistd::geteuid().is_root() || !std::path::Path::new(DEVICE).exists() {
            eprintln!("skipped: needs root and {DEVICE}");
            return;
        }
        use std::os::unix::process::CommandExt;
        let uid = 2_000_065_000 + std::process::id() % 500;
        let opens = || {
            std::process::Command::new("/bin/sh")
                .args(["-c", &format!("exec 3<>{DEVICE}")])
                .uid(uid)
                .gid(uid)
                .status()
                .unwrap()
                .success()
        };
        let before = std::fs::metadata(DEVICE).unwrap().permissions().mode();
        assert!(!opens(), "uid {uid} opened {DEVICE} without a grant");
        grant(uid).unwrap();
        assert!(granted(uid));
        assert!(opens(), "uid {uid} could not open {DEVICE} when granted");
        revoke(uid);
        assert!(!granted(uid));
        assert!(
            !opens(),
            "uid {uid} opened {DEVICE} after the grant was taken back"
        );
        let after = std::fs::metadata(DEVICE).unwrap().permissions().mode();
        assert_eq!(before & 0o7777, after & 0o7777, "the device's mode");
    }
}
