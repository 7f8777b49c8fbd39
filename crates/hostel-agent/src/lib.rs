//! The host agent: runs the QEMU processes of one host, re-adopts them after a restart,
//! and serves the agent API (HTTPS with mutual TLS) to the controller.

mod backup;
pub mod console;
mod disk_moves;
mod guest_agent;
mod http;
mod images;
mod limits;
mod migrate;
mod net;
mod service;
mod stats;
mod stream_tls;
mod uffd;
pub mod uids;
pub mod vm;

use anyhow::{anyhow, Context};
use hostel_api::agent::{Event, HostFacts, ImageFiles};
use hostel_model::{Accel, ImageKind};
use hostel_qemu::argv::{HostOptions, RuntimePaths};
use hostel_qemu::process::RunAs;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{broadcast, OnceCell};
use vm::VmRuntime;

pub use http::{api_router, serve, serve_router, TlsFiles};
pub use service::{event_lines, ByteIo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(format!("{s:?} is not an accelerator: use auto, kvm or tcg")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Holds `images/`, `disks/` and `run/` (one directory per running VM).
    pub data_dir: PathBuf,
    pub host_name: String,
    pub qemu_binary: String,
    pub accel: AccelChoice,
    /// When the agent runs as root, its supplementary groups (`kvm`) are every QEMU's.
    pub qemu_user: String,
    /// When the agent runs as root, each VM's QEMU runs as a uid of its own from here.
    pub qemu_uids: uids::UidRange,
    /// Where the KVM probe's answer is cached (per host boot).
    pub probe_cache: PathBuf,
}

/// Errors of the agent's operations; each becomes a wire
/// [`AgentFailure`](hostel_api::agent::AgentFailure) in `service.rs`.
#[derive(Debug)]
pub enum AgentError {
    Invalid(anyhow::Error),
    NotFound(String),
    Conflict(String),
    Timeout(String),
    Internal(anyhow::Error),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Invalid(e) | AgentError::Internal(e) => write!(f, "{e:#}"),
            AgentError::NotFound(m) | AgentError::Conflict(m) | AgentError::Timeout(m) => {
                f.write_str(m)
            }
        }
    }
}

impl From<hostel_qemu::QmpError> for AgentError {
    fn from(e: hostel_qemu::QmpError) -> Self {
        match e {
            hostel_qemu::QmpError::Closed => {
                AgentError::Conflict("the VM's QEMU exited during the operation".into())
            }
            e => AgentError::Internal(anyhow!(e)),
        }
    }
}

impl From<anyhow::Error> for AgentError {
    fn from(e: anyhow::Error) -> Self {
        AgentError::Internal(e)
    }
}

/// State shared by the agent's handlers.
pub struct Shared {
    /// The `Arc` this lives in, for work handed to other tasks.
    me: Weak<Shared>,
    pub cfg: AgentConfig,
    pub vms: Mutex<HashMap<String, Arc<VmRuntime>>>,
    events: broadcast::Sender<Event>,
    /// The QEMU user's identity (when root); VMs run as their own, [`Shared::vm_uids`].
    pub run_as: Option<RunAs>,
    /// Each VM's QEMU identity (when root).
    pub vm_uids: Option<uids::VmUids>,
    accel: OnceCell<(Accel, String)>,
    /// What this host's QEMU offers VMs, asked once.
    platform: OnceCell<hostel_api::agent::Platform>,
    pub qemu_version: String,
    /// Port guards of the NICs of running VMs, by tap name.
    guards: Mutex<HashMap<String, hostel_net::guard::Guard>>,
    /// The network state last applied.
    pub networks: Mutex<hostel_api::agent::NetworksState>,
    /// Network changes are applied one at a time.
    net_apply: Mutex<()>,
    /// The host LAN the filter in the kernel was rendered with: when the host's own
    /// addresses change, the filter is rendered again.
    filtered_lan: Mutex<Vec<String>>,
}

impl Shared {
    pub fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn run_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("run")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("images")
    }
    pub fn disks_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("disks")
    }
    /// The paths of the temporary copies exports make, one a line (`disk_moves.rs`).
    pub(crate) fn export_ledger(&self) -> PathBuf {
        self.cfg.data_dir.join(disk_moves::EXPORT_LEDGER)
    }

    /// A storage pool by its spec; none: the host's default `dir` pool (DATA/disks).
    pub fn pool(
        &self,
        spec: Option<&hostel_api::agent::PoolSpec>,
    ) -> Result<hostel_storage::pool::Pool, AgentError> {
        use hostel_storage::pool::{Driver, Pool};
        Ok(match spec {
            None => Pool {
                name: "default".into(),
                driver: Driver::Dir,
                root: self.disks_dir(),
            },
            Some(p) => Pool {
                name: p.name.clone(),
                driver: Driver::parse(&p.driver).ok_or_else(|| {
                    AgentError::Invalid(anyhow::anyhow!(
                        "driver: {:?} is not a pool driver this host has: use dir or btrfs",
                        p.driver
                    ))
                })?,
                root: PathBuf::from(&p.path),
            },
        })
    }

    /// The accelerator, decided by a real probe the first time it is needed.
    pub async fn accel(&self) -> (Accel, String) {
        self.accel
            .get_or_init(|| async {
                match self.cfg.accel {
                    AccelChoice::Kvm => (Accel::Kvm, "chosen with --accel kvm".to_string()),
                    AccelChoice::Tcg => (Accel::Tcg, "chosen with --accel tcg".to_string()),
                    AccelChoice::Auto => self.probe().await,
                }
            })
            .await
            .clone()
    }

    async fn probe(&self) -> (Accel, String) {
        if std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return (
                Accel::Tcg,
                "KVM unavailable: /dev/kvm cannot be opened".into(),
            );
        }
        if let Some(r) = hostel_qemu::probe::cached(&self.cfg.probe_cache, &self.qemu_version) {
            return (r.accel, r.reason);
        }
        let dir = self.cfg.data_dir.join("probe-guest");
        let guest = if dir.join("vmlinuz").exists() {
            Ok(hostel_storage::tiny::TinyImage {
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.img"),
                cmdline: std::fs::read_to_string(dir.join("cmdline")).unwrap_or_default(),
                kernel_version: String::new(),
            })
        } else {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || {
                let img = hostel_storage::tiny::build_tiny(
                    &hostel_storage::tiny::TinyBuildOptions {
                        out_dir: d.clone(),
                        kernel: None,
                        busybox: None,
                    },
                    &mut |_| {},
                )?;
                std::fs::write(d.join("cmdline"), &img.cmdline)?;
                Ok::<_, anyhow::Error>(img)
            })
            .await
            .map_err(|e| anyhow!(e))
            .and_then(|r| r)
        };
        let guest = match guest {
            Ok(g) => g,
            Err(e) => {
                return (
                    Accel::Tcg,
                    format!("KVM not probed (no probe guest: {e:#}); using TCG"),
                )
            }
        };
        let r = hostel_qemu::probe::probe_cached(
            &self.cfg.probe_cache,
            &self.cfg.qemu_binary,
            &self.qemu_version,
            &hostel_qemu::probe::ProbeGuest {
                kernel: guest.kernel,
                initrd: guest.initrd,
                cmdline: guest.cmdline,
                ready_marker: hostel_storage::tiny::READY_MARKER.to_string(),
            },
            std::time::Duration::from_secs(15),
        )
        .await;
        (r.accel, r.reason)
    }

    pub async fn host_opts(&self) -> HostOptions {
        HostOptions {
            qemu_binary: self.cfg.qemu_binary.clone(),
            accel: self.accel().await.0,
            strict_sandbox: true,
        }
    }

    pub async fn facts(&self) -> HostFacts {
        let (accel, accel_reason) = self.accel().await;
        HostFacts {
            name: self.cfg.host_name.clone(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_total_mib: host_memory_mib(),
            accel,
            accel_reason,
            qemu_version: self.qemu_version.clone(),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            disks_dir: self.disks_dir().display().to_string(),
            platform: hostel_api::agent::Platform {
                postcopy: uffd::available(self.vm_uids.is_some()),
                ..self.platform(accel).await
            },
        }
    }

    /// The machine types and CPU models this host's QEMU offers under `accel`; empty
    /// (and said in the log) when QEMU cannot be asked, so no VM is pinned to them.
    async fn platform(&self, accel: Accel) -> hostel_api::agent::Platform {
        self.platform
            .get_or_init(|| async {
                hostel_qemu::platform::probe(&self.cfg.qemu_binary, accel)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!("cannot list QEMU's machine types and CPU models: {e:#}");
                        Default::default()
                    })
            })
            .await
            .clone()
    }

    /// The identity VM `vm_id`'s QEMU runs as: its own uid (when the agent is root).
    pub fn qemu_identity(&self, vm_id: &str) -> anyhow::Result<Option<RunAs>> {
        match &self.vm_uids {
            Some(u) => Ok(Some(u.identity(vm_id)?)),
            None => Ok(None),
        }
    }

    /// Makes a VM's runtime directory, private to its QEMU's uid, without stale sockets.
    pub fn prepare_runtime_dir(
        &self,
        paths: &RuntimePaths,
        identity: Option<&RunAs>,
    ) -> Result<(), AgentError> {
        std::fs::create_dir_all(&paths.dir)
            .with_context(|| format!("creating {}", paths.dir.display()))?;
        for stale in [
            paths.qmp(),
            paths.serial(),
            paths.vnc(),
            paths.pidfile(),
            paths.state(),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o700))
            .context("chmod runtime dir")?;
        if let Some(owner) = identity {
            uids::give(&paths.dir, owner, 0o700)?;
        }
        Ok(())
    }

    /// Gives a VM's disk files to its QEMU's uid alone (0600), each checked to be inside
    /// its pool first: root chowns only what it made. Image bases (the backing files of
    /// overlays) stay root's, readable by every VM and writable by none.
    pub fn give_disks(
        &self,
        disks: &[hostel_api::agent::DiskSpec],
        identity: Option<&RunAs>,
    ) -> Result<(), AgentError> {
        let Some(owner) = identity else {
            return Ok(());
        };
        for d in disks {
            let path = Path::new(&d.path);
            if !self.pool(d.pool.as_ref())?.holds(path) {
                return Err(AgentError::Invalid(anyhow!(
                    "path: {} is not in the disk's pool",
                    d.path
                )));
            }
            uids::give(path, owner, 0o600)?;
        }
        Ok(())
    }

    pub fn vm(&self, id: &str) -> Option<Arc<VmRuntime>> {
        self.vms.lock().unwrap().get(id).cloned()
    }

    pub fn vm_or_new(&self, spec: &hostel_api::agent::VmSpec) -> Arc<VmRuntime> {
        let mut vms = self.vms.lock().unwrap();
        vms.entry(spec.id.clone())
            .or_insert_with(|| {
                VmRuntime::new(spec.clone(), RuntimePaths::new(&self.run_dir(), &spec.id))
            })
            .clone()
    }

    pub fn build_image(
        &self,
        opts: &hostel_api::agent::BuildImageRequest,
        progress: &mut dyn FnMut(f64, &str),
    ) -> anyhow::Result<ImageFiles> {
        let (recipe, name) = (opts.recipe.as_str(), opts.name.as_str());
        if recipe == "debian" {
            return self.build_debian(opts, name, progress);
        }
        if recipe != "tiny" {
            anyhow::bail!(
                "recipe: {recipe:?} is not a recipe this host can build: use \"tiny\" or \"debian\""
            );
        }
        let dir = self.images_dir().join(name);
        if dir.exists() {
            anyhow::bail!("{} exists already; delete the image first", dir.display());
        }
        progress(
            0.05,
            "building the tiny image (Debian cloud kernel + busybox initramfs)",
        );
        let img = hostel_storage::tiny::build_tiny(
            &hostel_storage::tiny::TinyBuildOptions {
                out_dir: dir.clone(),
                kernel: None,
                busybox: None,
            },
            &mut |m| progress(0.5, m),
        )?;
        progress(0.9, "recording checksums");
        let sha256 = hostel_storage::disk::sha256_files(&[&img.kernel, &img.initrd])?;
        let size_bytes =
            std::fs::metadata(&img.kernel)?.len() + std::fs::metadata(&img.initrd)?.len();
        for p in [&dir, &img.kernel, &img.initrd] {
            let mode = if p.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(ImageFiles {
            name: name.to_string(),
            kind: ImageKind::DirectKernel,
            format: "kernel".into(),
            path: img.kernel.display().to_string(),
            initrd: Some(img.initrd.display().to_string()),
            cmdline: Some(img.cmdline),
            size_bytes,
            virtual_size_mib: 0,
            sha256,
        })
    }

    /// The `debian` recipe: built by the unprivileged build user in its own directory,
    /// then moved into the image store.
    fn build_debian(
        &self,
        opts: &hostel_api::agent::BuildImageRequest,
        name: &str,
        progress: &mut dyn FnMut(f64, &str),
    ) -> anyhow::Result<ImageFiles> {
        let dir = self.images_dir();
        std::fs::create_dir_all(&dir)?;
        let dest = dir.join(format!("{name}.qcow2"));
        if dest.exists() {
            anyhow::bail!("{} exists already; delete the image first", dest.display());
        }
        let work = Path::new("/var/lib/hostel-build").join(format!("build-{name}"));
        let debian = hostel_storage::debian::DebianOptions {
            suite: opts.suite.clone().unwrap_or_else(|| "bookworm".into()),
            mirror: opts
                .mirror
                .clone()
                .unwrap_or_else(|| "http://deb.debian.org/debian".into()),
            size_mib: opts.size_mib.unwrap_or(4096),
            packages: opts.packages.clone(),
        };
        let res = hostel_storage::debian::build(&debian, &work, &mut |f, m| progress(0.97 * f, m))
            .and_then(|disk| {
                let tmp = dir.join(format!("{name}.building"));
                if std::fs::rename(&disk, &tmp).is_err() {
                    std::fs::copy(&disk, &tmp)?;
                }
                nix::unistd::chown(
                    &tmp,
                    Some(nix::unistd::Uid::from_raw(0)),
                    Some(nix::unistd::Gid::from_raw(0)),
                )?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
                std::fs::rename(&tmp, &dest)?;
                Ok(())
            });
        // Root can remove what the build user's namespace left, whatever its owners.
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_file(dir.join(format!("{name}.building")));
        res?;
        progress(0.98, "recording the checksum");
        let info = hostel_storage::disk::info(&dest, "qcow2")?;
        Ok(ImageFiles {
            name: name.to_string(),
            kind: ImageKind::Disk,
            format: "qcow2".into(),
            path: dest.display().to_string(),
            initrd: None,
            cmdline: None,
            size_bytes: std::fs::metadata(&dest)?.len(),
            virtual_size_mib: info.virtual_size.div_ceil(1 << 20),
            sha256: hostel_storage::disk::sha256_file(&dest)?,
        })
    }

    pub fn import_image(
        &self,
        name: &str,
        source: &str,
        progress: &mut dyn FnMut(f64, &str),
    ) -> anyhow::Result<ImageFiles> {
        let dir = self.images_dir();
        std::fs::create_dir_all(&dir)?;
        let dest = dir.join(format!("{name}.qcow2"));
        if source.starts_with("http://") || source.starts_with("https://") {
            let download = dir.join(format!("{name}.download"));
            let res = download_file(source, &download, &mut |f| progress(0.5 * f, "downloading"))
                .and_then(|_| {
                    hostel_storage::disk::import_with_progress(&download, &dest, &mut |f| {
                        progress(0.5 + 0.45 * f, "converting to qcow2")
                    })
                });
            let _ = std::fs::remove_file(&download);
            res?;
        } else {
            let src = Path::new(source);
            if !src.is_absolute() {
                anyhow::bail!(
                    "path: {source:?} is not absolute: give the image file's full path on the host"
                );
            }
            hostel_storage::disk::import_with_progress(src, &dest, &mut |f| {
                progress(0.95 * f, "converting to qcow2")
            })?;
        }
        progress(0.95, "recording the checksum");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
        let info = hostel_storage::disk::info(&dest, "qcow2")?;
        Ok(ImageFiles {
            name: name.to_string(),
            kind: ImageKind::Disk,
            format: "qcow2".into(),
            path: dest.display().to_string(),
            initrd: None,
            cmdline: None,
            size_bytes: std::fs::metadata(&dest)?.len(),
            virtual_size_mib: info.virtual_size.div_ceil(1 << 20),
            sha256: hostel_storage::disk::sha256_file(&dest)?,
        })
    }

    /// Removes an image's files; only ever under this host's images directory.
    pub fn delete_image_files(&self, path: &str) -> anyhow::Result<()> {
        let p = Path::new(path);
        let images = self.images_dir();
        let target = if p.file_name().map(|n| n == "vmlinuz").unwrap_or(false) {
            p.parent().unwrap_or(p).to_path_buf()
        } else {
            p.to_path_buf()
        };
        if !inside(&target, &images) || target == images {
            anyhow::bail!("{} is not in this host's image store", target.display());
        }
        if target.is_dir() {
            std::fs::remove_dir_all(&target)?;
        } else if target.exists() {
            std::fs::remove_file(&target)?;
        }
        Ok(())
    }
}

/// Downloads `url` to `dest` (through a temporary name), reporting the fraction done
/// when the server gives the length.
fn download_file(url: &str, dest: &Path, progress: &mut dyn FnMut(f64)) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::{Read, Write};
    let mut resp = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        .timeout(None)
        .build()?
        .get(url)
        .send()
        .with_context(|| format!("downloading {url}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("downloading {url}: the server answered {}", resp.status());
    }
    let total = resp.content_length();
    let tmp = dest.with_extension("part");
    let mut f = std::fs::File::create(&tmp)?;
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let res = (|| -> anyhow::Result<()> {
        loop {
            let n = resp
                .read(&mut buf)
                .with_context(|| format!("downloading {url}"))?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
            got += n as u64;
            if let Some(t) = total.filter(|t| *t > 0) {
                progress(got as f64 / t as f64);
            }
        }
        if let Some(t) = total {
            if got != t {
                anyhow::bail!("downloading {url}: got {got} of {t} bytes");
            }
        }
        f.sync_all()?;
        Ok(std::fs::rename(&tmp, dest)?)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// True if `path` lies under `dir` with no `..` that could climb out of it.
pub(crate) fn inside(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// An id safe to use as one path component.
pub(crate) fn is_plain_name(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Checks that the QEMU user can reach `dir` (every ancestor searchable by it).
fn check_reachable(dir: &Path, who: &str, u: &RunAs) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut p = Some(dir);
    while let Some(d) = p {
        let m = std::fs::metadata(d)?;
        let ok = if m.uid() == u.uid {
            m.mode() & 0o100 != 0
        } else if m.gid() == u.gid {
            m.mode() & 0o010 != 0
        } else {
            m.mode() & 0o001 != 0
        };
        if !ok {
            anyhow::bail!(
                "QEMU runs as {who}, which cannot reach {} because {} has mode {:o}: \
                 `chmod o+x {}` or choose another --data-dir",
                dir.display(),
                d.display(),
                m.mode() & 0o7777,
                d.display()
            );
        }
        p = d.parent();
    }
    Ok(())
}

/// Makes the files of the default pool private to their owners: disks made before each
/// VM had its own uid were readable by all (mode 0644); a VM's start gives them to it.
fn private_disk_files(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_file() && m.mode() & 0o077 != 0 {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Creates the agent: makes its directories, and re-adopts every QEMU that an earlier
/// agent left running.
pub async fn start(cfg: AgentConfig) -> anyhow::Result<Arc<Shared>> {
    let root = nix::unistd::Uid::effective().is_root();
    let run_as = if root {
        Some(hostel_qemu::process::lookup_user(&cfg.qemu_user)?)
    } else {
        None
    };
    let vm_uids = match &run_as {
        Some(u) => {
            // The QEMU user's own group stays out: files from before per-VM uids are its.
            let groups = u.groups.iter().copied().filter(|g| *g != u.gid).collect();
            let table = cfg.data_dir.join("qemu-uids.json");
            Some(uids::VmUids::load(&table, cfg.qemu_uids, groups)?)
        }
        None => None,
    };
    for d in ["", "run", "disks", "images"] {
        let p = cfg.data_dir.join(d);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        let mode = if d == "images" { 0o755 } else { 0o711 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    if run_as.is_some() {
        // A VM's uid is neither owner nor group of the directories above its files.
        let any_vm = RunAs {
            uid: cfg.qemu_uids.first,
            gid: cfg.qemu_uids.first,
            groups: Vec::new(),
        };
        let who = "a uid of its own per VM";
        check_reachable(&cfg.data_dir.join("disks"), who, &any_vm)?;
        check_reachable(&cfg.data_dir.join("run"), who, &any_vm)?;
        private_disk_files(&cfg.data_dir.join("disks"));
    }
    disk_moves::sweep_export_copies(
        &cfg.data_dir.join(disk_moves::EXPORT_LEDGER),
        &cfg.data_dir.join("disks"),
    );
    let qemu_version = hostel_qemu::probe::qemu_version(&cfg.qemu_binary).await?;
    let shared = Arc::new_cyclic(|me| Shared {
        me: me.clone(),
        cfg,
        vms: Mutex::new(HashMap::new()),
        events: broadcast::channel(1024).0,
        run_as,
        vm_uids,
        accel: OnceCell::new(),
        platform: OnceCell::new(),
        qemu_version,
        guards: Mutex::new(HashMap::new()),
        networks: Mutex::new(Default::default()),
        net_apply: Mutex::new(()),
        filtered_lan: Mutex::new(Vec::new()),
    });
    adopt_all(&shared).await;
    shared.supervise_dnsmasq();
    Ok(shared)
}

async fn adopt_all(shared: &Arc<Shared>) {
    let Ok(entries) = std::fs::read_dir(shared.run_dir()) else {
        return;
    };
    let mut adopted = Vec::new();
    let mut adopted_vms = Vec::new();
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let paths = RuntimePaths::new(&shared.run_dir(), &id);
        let Some(rt) = vm::read_runtime_file(&paths) else {
            continue;
        };
        let vm = shared.vm_or_new(&rt.spec);
        let pid = rt.pid;
        if vm.adopt(shared, rt).await {
            tracing::info!(vm = %vm.spec().name, pid, "re-adopted a running QEMU");
            adopted.push(pid);
            adopted_vms.push(vm);
        } else {
            tracing::warn!(vm = %vm.spec().name, pid, "its QEMU is gone; not re-adopted");
            let _ = std::fs::remove_file(paths.state());
            shared.vms.lock().unwrap().remove(&id);
        }
    }
    // Every adopted VM's guards are registered: NICs half plugged in can go now.
    for vm in adopted_vms {
        vm.drop_pending_nics(shared).await;
    }
    // A QEMU of ours that nothing above adopted (its agent died between starting it and
    // recording it) would run on unknown, holding its disks and taps: it is ended, and
    // its VM is crashed as far as the controller can tell.
    for (pid, id) in hostel_qemu::process::qemus_under(&shared.run_dir()) {
        if !adopted.contains(&pid) {
            tracing::warn!(vm = %id, pid, "ending a QEMU no agent recorded (its agent died as it started it)");
            hostel_qemu::process::kill(pid);
        }
    }
}
