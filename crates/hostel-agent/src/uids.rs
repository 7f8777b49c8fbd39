//! One uid per VM: each VM's QEMU runs as a user of its own from a reserved range and
//! owns only its own disks and runtime files, so an escaped QEMU cannot read or write
//! another VM's disks (what libvirt's sVirt labels give, done with plain uids).
//!
//! The uid of a VM is recorded in `DATA/qemu-uids.json`, so it is the same after an agent
//! restart and for a re-adopted QEMU. Uids are handed out in order and a deleted VM's uid
//! is reused only once the whole range has been used: a file an admin kept from a deleted
//! VM (`delete --keep-disks`) is still owned by its old uid, which no new VM gets soon.
//! The group of each VM is its own too (gid = uid); neither needs a passwd entry.

use anyhow::{bail, Context};
use hostel_qemu::process::RunAs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The reserved range: `first` .. `first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

impl UidRange {
    /// Far above login users (1000...), system users (< 1000), nobody (65534) and the
    /// /etc/subuid ranges useradd hands out (100000 + 65536 * n), and below the
    /// 32-bit limit (4294967295 is "no uid").
    pub const DEFAULT: UidRange = UidRange {
        first: 2_000_000_000,
        count: 65_536,
    };

    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.first && uid - self.first < self.count
    }

    fn end(&self) -> u64 {
        self.first as u64 + self.count as u64
    }

    /// Refuses a range that overlaps a user of /etc/passwd or a range of /etc/subuid or
    /// /etc/subgid: that user (or that namespace) could then open a VM's files.
    pub fn check_free(&self) -> anyhow::Result<()> {
        if self.count == 0 || self.end() > u32::MAX as u64 {
            bail!(
                "the QEMU uid range {}+{} is empty or passes 4294967294: choose another \
                 --qemu-uid-first/--qemu-uid-count",
                self.first,
                self.count
            );
        }
        let overlaps =
            |first: u64, count: u64| first < self.end() && (self.first as u64) < first + count;
        if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
            for line in passwd.lines() {
                let f: Vec<&str> = line.split(':').collect();
                if let Some(uid) = f.get(2).and_then(|u| u.parse::<u64>().ok()) {
                    if overlaps(uid, 1) {
                        bail!(
                            "user {} (uid {uid}) is inside the QEMU uid range {}+{}: choose \
                             another range with --qemu-uid-first",
                            f[0],
                            self.first,
                            self.count
                        );
                    }
                }
            }
        }
        for file in ["/etc/subuid", "/etc/subgid"] {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for line in text.lines() {
                let f: Vec<&str> = line.split(':').collect();
                let (Some(first), Some(count)) = (
                    f.get(1).and_then(|x| x.parse::<u64>().ok()),
                    f.get(2).and_then(|x| x.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                if count > 0 && overlaps(first, count) {
                    bail!(
                        "{file} gives {} the range {first}+{count}, which overlaps the QEMU uid \
                         range {}+{}: choose another range with --qemu-uid-first",
                        f[0],
                        self.first,
                        self.count
                    );
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    /// The uid of each VM of this host, by VM id.
    vms: BTreeMap<String, u32>,
    /// Where the next allocation starts looking.
    next: u32,
}

/// The uids of this host's VMs, kept in a file.
pub struct VmUids {
    path: PathBuf,
    range: UidRange,
    /// Supplementary groups every VM's QEMU gets (`kvm`, for /dev/kvm).
    groups: Vec<u32>,
    table: Mutex<Table>,
}

impl VmUids {
    pub fn load(path: &Path, range: UidRange, groups: Vec<u32>) -> anyhow::Result<VmUids> {
        range.check_free()?;
        let table = match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{} is not a uid table", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table {
                vms: BTreeMap::new(),
                next: range.first,
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(VmUids {
            path: path.to_path_buf(),
            range,
            groups,
            table: Mutex::new(table),
        })
    }

    /// The identity QEMU of VM `vm_id` runs as: its recorded uid, or a new one.
    pub fn identity(&self, vm_id: &str) -> anyhow::Result<RunAs> {
        let uid = self.uid_of(vm_id)?;
        let mut groups = vec![uid];
        groups.extend(self.groups.iter().copied());
        Ok(RunAs {
            uid,
            gid: uid,
            groups,
        })
    }

    /// The uid recorded for `vm_id`, if any.
    pub fn recorded(&self, vm_id: &str) -> Option<u32> {
        self.table.lock().unwrap().vms.get(vm_id).copied()
    }

    fn uid_of(&self, vm_id: &str) -> anyhow::Result<u32> {
        let mut t = self.table.lock().unwrap();
        if let Some(uid) = t.vms.get(vm_id) {
            return Ok(*uid);
        }
        let taken: std::collections::HashSet<u32> = t.vms.values().copied().collect();
        let start = if self.range.contains(t.next) {
            t.next - self.range.first
        } else {
            0
        };
        let uid = (0..self.range.count)
            .map(|i| self.range.first + (start + i) % self.range.count)
            .find(|u| !taken.contains(u))
            .with_context(|| {
                format!(
                    "every uid of the QEMU range {}+{} is taken by a VM of this host: give a \
                     larger --qemu-uid-count",
                    self.range.first, self.range.count
                )
            })?;
        t.vms.insert(vm_id.to_string(), uid);
        t.next = if uid + 1 < self.range.first + self.range.count {
            uid + 1
        } else {
            self.range.first
        };
        self.save(&t)?;
        Ok(uid)
    }

    /// Forgets a deleted VM's uid (reused only after the rest of the range).
    pub fn release(&self, vm_id: &str) -> anyhow::Result<()> {
        let mut t = self.table.lock().unwrap();
        if t.vms.remove(vm_id).is_some() {
            self.save(&t)?;
        }
        Ok(())
    }

    fn save(&self, t: &Table) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(t)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

/// Gives `path` to `owner` alone: chown to its uid and gid, and mode `mode`.
pub fn give(path: &Path, owner: &RunAs, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(owner.uid)),
        Some(nix::unistd::Gid::from_raw(owner.gid)),
    )
    .with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_stable_distinct_and_reused_last() {
        let dir = std::env::temp_dir().join(format!("hostel-uids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qemu-uids.json");
        let range = UidRange {
            first: 3_000_000_000,
            count: 3,
        };
        let u = VmUids::load(&path, range, vec![108]).unwrap();
        let a = u.identity("vm-a").unwrap();
        let b = u.identity("vm-b").unwrap();
        assert_eq!((a.uid, b.uid), (3_000_000_000, 3_000_000_001));
        assert_eq!((a.gid, a.groups.clone()), (a.uid, vec![a.uid, 108]));
        assert_eq!(u.identity("vm-a").unwrap().uid, a.uid, "stable");
        u.release("vm-a").unwrap();
        // A restarted agent reads the same table.
        let u = VmUids::load(&path, range, vec![]).unwrap();
        assert_eq!(u.recorded("vm-b"), Some(b.uid));
        assert_eq!(u.recorded("vm-a"), None);
        // vm-a's old uid comes back only after the rest of the range.
        assert_eq!(u.identity("vm-c").unwrap().uid, 3_000_000_002);
        assert_eq!(u.identity("vm-d").unwrap().uid, 3_000_000_000);
        let e = u.identity("vm-e").unwrap_err().to_string();
        assert!(e.contains("--qemu-uid-count"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_range_over_a_passwd_user_is_refused() {
        let e = UidRange {
            first: 0,
            count: 10,
        }
        .check_free()
        .unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
        UidRange::DEFAULT.check_free().unwrap();
    }
}
