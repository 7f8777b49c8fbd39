//! Storage pools: where a host keeps VM disks.
//!
//! Every driver offers the same operations — make a disk (blank or from an image), delete
//! it, snapshot it, report space — so that another driver (`lvm-thin`, where the kernel
//! has device-mapper) only has to implement [`Driver`]'s match arms.
//!
//! - `dir`: qcow2 files in a directory; a disk from an image is a qcow2 overlay on it
//!   (made in milliseconds whatever the image's size); snapshots are qcow2-internal.
//! - `btrfs`: raw files, each in a subvolume of its own on a btrfs filesystem; a disk
//!   from an image is a reflink clone of the image's raw copy in the pool (made once per
//!   image); snapshots are read-only subvolume snapshots.

use crate::disk;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The driver names live in `hostel-model`, so that the controller's records carry them
/// without depending on this crate.
pub use hostel_model::PoolDriver as Driver;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub driver: Driver,
    pub root: PathBuf,
}

/// An image a disk is made from.
pub struct Base<'a> {
    pub path: &'a Path,
    pub format: &'a str,
    /// The image's id, naming its cached copy in pools that keep one.
    pub id: &'a str,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run it"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn fs_type(path: &Path) -> Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64)
}

pub fn usage_of(path: &Path) -> Result<Usage> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as in fs_type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    let frsize = st.f_frsize as u64;
    let total = st.f_blocks as u64 * frsize;
    let free = st.f_bavail as u64 * frsize;
    Ok(Usage {
        total_bytes: total,
        free_bytes: free,
        used_bytes: total.saturating_sub(st.f_bfree as u64 * frsize),
    })
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

impl Pool {
    /// Checks that the pool's directory is there and right for its driver.
    pub fn check(&self) -> Result<()> {
        if !self.root.is_absolute() {
            bail!(
                "path: {:?} is not absolute: give the pool directory's full path",
                self.root
            );
        }
        let meta = std::fs::metadata(&self.root).with_context(|| {
            format!(
                "path: {} does not exist: create (and for btrfs, mount) it first",
                self.root.display()
            )
        })?;
        if !meta.is_dir() {
            bail!("path: {} is not a directory", self.root.display());
        }
        if self.driver == Driver::Btrfs && fs_type(&self.root)? != BTRFS_SUPER_MAGIC {
            bail!(
                "path: {} is not on a btrfs filesystem: mount one there, or use --driver dir",
                self.root.display()
            );
        }
        Ok(())
    }

    pub fn usage(&self) -> Result<Usage> {
        usage_of(&self.root)
    }

    /// True if `path` is one of this pool's disk files.
    pub fn holds(&self, path: &Path) -> bool {
        path.starts_with(&self.root)
            && path != self.root
            && !path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
    }

    fn refuse_out_of_space(&self, needed: u64, what: &str) -> Result<()> {
        let u = self.usage()?;
        if needed > u.free_bytes {
            bail!(
                "pool {:?} is out of space: {what} needs {}, the pool has {} free; free some \
                 space, or use another pool (--pool)",
                self.name,
                mib(needed),
                mib(u.free_bytes)
            );
        }
        Ok(())
    }

    /// Makes a disk named `stem` of `size_mib`, blank or from `base`. Returns its path.
    /// A failure leaves nothing behind.
    pub fn create_disk(&self, stem: &str, size_mib: u64, base: Option<Base>) -> Result<PathBuf> {
        self.check()?;
        match self.driver {
            Driver::Dir => {
                let path = self.root.join(format!("{stem}.qcow2"));
                match base {
                    Some(b) => disk::create_overlay(&path, b.path, b.format, size_mib)?,
                    None => disk::create_blank(&path, size_mib)?,
                }
                Ok(path)
            }
            Driver::Btrfs => {
                if self.root.join(stem).exists() {
                    bail!(
                        "{} exists already; refusing to overwrite it",
                        self.root.join(stem).display()
                    );
                }
                let cached = match &base {
                    Some(b) => Some(self.cached_base(b)?),
                    None => None,
                };
                let (sub, path) = self.new_subvolume(stem)?;
                let made = (|| -> Result<()> {
                    match &cached {
                        Some(c) => {
                            run(
                                Command::new("cp").arg("--reflink=always").arg(c).arg(&path),
                                "cloning the image (reflink)",
                            )?;
                            disk::resize(&path, "raw", size_mib)?;
                        }
                        None => {
                            let f = std::fs::File::create_new(&path)?;
                            f.set_len(size_mib << 20)?;
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = made {
                    let _ = self.delete_subvolume(&sub);
                    return Err(e);
                }
                Ok(path)
            }
        }
    }

    /// Makes a disk named `stem` from a guest's disk file (or block device) elsewhere on
    /// the host, of the known `format`, reporting the fraction copied (`chain`: a backup's
    /// qcow2, read through its backing chain, checked by the caller). Returns its path.
    /// A failure leaves nothing behind.
    pub fn import_disk(
        &self,
        stem: &str,
        source: &Path,
        format: &str,
        chain: bool,
        progress: &mut dyn FnMut(f64),
    ) -> Result<PathBuf> {
        self.check()?;
        match self.driver {
            Driver::Dir => {
                let path = self.root.join(format!("{stem}.qcow2"));
                disk::copy_guest_disk(source, format, &path, "qcow2", chain, progress)?;
                Ok(path)
            }
            Driver::Btrfs => {
                let (sub, path) = self.new_subvolume(stem)?;
                if let Err(e) = disk::copy_guest_disk(source, format, &path, "raw", chain, progress)
                {
                    let _ = self.delete_subvolume(&sub);
                    return Err(e);
                }
                Ok(path)
            }
        }
    }

    /// A btrfs pool's new subvolume for disk `stem` (refused if it exists), and the path
    /// of the disk's raw file in it.
    fn new_subvolume(&self, stem: &str) -> Result<(PathBuf, PathBuf)> {
        let sub = self.root.join(stem);
        if sub.exists() {
            bail!("{} exists already; refusing to overwrite it", sub.display());
        }
        run(
            Command::new("btrfs")
                .args(["-q", "subvolume", "create"])
                .arg(&sub),
            "btrfs subvolume create",
        )?;
        let path = sub.join("disk.raw");
        Ok((sub, path))
    }

    /// The raw copy of an image inside the pool, made on first use, which disks clone.
    fn cached_base(&self, b: &Base) -> Result<PathBuf> {
        let dir = self.root.join(".images");
        std::fs::create_dir_all(&dir)?;
        let cached = dir.join(format!("{}.raw", b.id));
        if cached.exists() {
            return Ok(cached);
        }
        let info = disk::info(b.path, b.format)?;
        // The raw copy is sparse: it takes about what the image file holds.
        self.refuse_out_of_space(info.actual_size, "a copy of the image")?;
        let tmp = dir.join(format!("{}.raw.tmp", b.id));
        let _ = std::fs::remove_file(&tmp);
        let res = run(
            Command::new("qemu-img")
                .args(["convert", "-q", "-f", b.format, "-O", "raw"])
                .arg(b.path)
                .arg(&tmp),
            "copying the image into the pool",
        )
        .and_then(|_| Ok(std::fs::rename(&tmp, &cached)?));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            if format!("{e:#}").contains("No space left") {
                bail!(
                    "pool {:?} is out of space: the image did not fit ({} free)",
                    self.name,
                    mib(self.usage().map(|u| u.free_bytes).unwrap_or(0))
                );
            }
            return Err(e);
        }
        Ok(cached)
    }

    /// Removes the pool's copy of an image (when the image is deleted).
    pub fn forget_base(&self, id: &str) {
        let _ = std::fs::remove_file(self.root.join(".images").join(format!("{id}.raw")));
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.root.join(".snapshots")
    }

    fn snapshot_path(&self, sub: &Path, name: &str) -> PathBuf {
        let stem = sub.file_name().unwrap_or_default().to_string_lossy();
        self.snapshot_dir().join(format!("{stem}@{name}"))
    }

    fn subvolume_of(&self, path: &Path) -> Result<PathBuf> {
        let sub = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if sub.parent() != Some(self.root.as_path()) {
            bail!("{} is not a disk of pool {:?}", path.display(), self.name);
        }
        Ok(sub)
    }

    fn delete_subvolume(&self, sub: &Path) -> Result<()> {
        run(
            Command::new("btrfs")
                .args(["-q", "subvolume", "delete"])
                .arg(sub),
            "btrfs subvolume delete",
        )
    }

    /// Deletes a disk and (btrfs) its snapshots. A disk that is gone already is fine.
    pub fn delete_disk(&self, path: &Path) -> Result<()> {
        if !self.holds(path) {
            bail!(
                "{} is not in pool {:?}; refusing to delete it",
                path.display(),
                self.name
            );
        }
        match self.driver {
            Driver::Dir => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            },
            Driver::Btrfs => {
                let sub = self.subvolume_of(path)?;
                let stem = sub
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                if let Ok(entries) = std::fs::read_dir(self.snapshot_dir()) {
                    for e in entries.flatten() {
                        if e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("{stem}@"))
                        {
                            self.delete_subvolume(&e.path())?;
                        }
                    }
                }
                if sub.exists() {
                    self.delete_subvolume(&sub)?;
                }
                Ok(())
            }
        }
    }

    /// Snapshot `create`, `revert` or `delete` on a disk no QEMU writes to (stopped, or
    /// paused by the caller).
    pub fn snapshot(&self, path: &Path, format: &str, action: &str, name: &str) -> Result<()> {
        match self.driver {
            Driver::Dir => disk::snapshot(path, format, action, name),
            Driver::Btrfs => {
                let sub = self.subvolume_of(path)?;
                let snap = self.snapshot_path(&sub, name);
                match action {
                    "create" => {
                        std::fs::create_dir_all(self.snapshot_dir())?;
                        if snap.exists() {
                            bail!("a snapshot named {name:?} exists already");
                        }
                        run(
                            Command::new("btrfs")
                                .args(["-q", "subvolume", "snapshot", "-r"])
                                .arg(&sub)
                                .arg(&snap),
                            "btrfs subvolume snapshot",
                        )
                    }
                    "revert" => {
                        if !snap.exists() {
                            bail!("there is no snapshot {name:?} of {}", path.display());
                        }
                        // Snapshot the snapshot beside the disk first, so that a failure
                        // leaves the disk as it was.
                        let next = sub.with_extension("reverting");
                        if next.exists() {
                            self.delete_subvolume(&next)?;
                        }
                        run(
                            Command::new("btrfs")
                                .args(["-q", "subvolume", "snapshot"])
                                .arg(&snap)
                                .arg(&next),
                            "btrfs subvolume snapshot",
                        )?;
                        let old = sub.with_extension("old");
                        std::fs::rename(&sub, &old)?;
                        std::fs::rename(&next, &sub)?;
                        self.delete_subvolume(&old)
                    }
                    "delete" => {
                        if !snap.exists() {
                            return Ok(());
                        }
                        self.delete_subvolume(&snap)
                    }
                    _ => bail!("{action:?} is not a snapshot action"),
                }
            }
        }
    }

    /// Disk files in the pool (for `hostel doctor`).
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            match self.driver {
                Driver::Dir => {
                    if e.path().is_file() {
                        out.push(e.path().display().to_string());
                    }
                }
                Driver::Btrfs => {
                    if e.path().is_dir() {
                        out.push(e.path().join("disk.raw").display().to_string());
                    }
                }
            }
        }
        out.sort();
        out
    }
}
