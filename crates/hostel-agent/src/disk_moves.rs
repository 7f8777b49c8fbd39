//! A stopped VM's disks between hosts (an offline move): one disk file read out as
//! bytes, and a disk stored from another host's bytes. The sent file is written beside
//! its final place first; a qcow2 overlay is pointed at this host's copy of its image
//! (the same bytes: image copies are checked by their SHA-256), and a file whose format
//! is not the pool's is converted. Nothing is kept unless all of it arrived.

use crate::Shared;
use futures::StreamExt;
use hostel_api::agent::{
    AgentFailure, ByteStream, DiskCreated, PutDiskRequest, ReadDiskFileRequest, SizedBytes,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio::io::AsyncWriteExt;

type Res<T> = Result<T, AgentFailure>;

impl Shared {
    /// The bytes of a disk file of one of this host's pools.
    pub(crate) async fn disk_file_bytes(
        &self,
        req: ReadDiskFileRequest,
    ) -> Res<SizedBytes<AgentFailure>> {
        let pool = self.pool(req.pool.as_ref())?;
        let p = Path::new(&req.file);
        if !pool.holds(p) || !p.is_file() {
            return Err(AgentFailure::not_found(format!(
                "{} is not a disk file of pool {}",
                req.file, pool.name
            )));
        }
        match req.standalone_format {
            None => crate::images::file_bytes(p).await,
            Some(fmt) => standalone_bytes(p, &fmt, &self.export_ledger()).await,
        }
    }

    /// Stores the disk of `req` from `body` (see the module's documentation).
    pub(crate) async fn put_disk_bytes(
        &self,
        req: PutDiskRequest,
        body: ByteStream<AgentFailure>,
    ) -> Res<DiskCreated> {
        if !crate::is_plain_name(&req.vm_id) {
            return Err(AgentFailure::invalid("vm_id: not a VM id"));
        }
        if !matches!(req.format.as_str(), "qcow2" | "raw") {
            return Err(AgentFailure::invalid(format!(
                "format: {:?} is not qcow2 or raw",
                req.format
            )));
        }
        let pool = self.pool(req.pool.as_ref())?;
        // Made like any new disk (its name and place in the pool), then its content
        // replaced by what arrives.
        let stem = format!("{}-{}", req.vm_id, req.index);
        let (p, size) = (pool.clone(), req.size_mib);
        let path = tokio::task::spawn_blocking(move || p.create_disk(&stem, size, None))
            .await
            .map_err(|e| AgentFailure::internal(e.to_string()))?
            .map_err(|e| AgentFailure::invalid(format!("{e:#}")))?;
        let part = path.with_extension("part");
        let stored = async {
            receive(&part, body, req.bytes).await?;
            let (part, path, req, fmt) = (
                part.clone(),
                path.clone(),
                req.clone(),
                pool.driver.disk_format().to_string(),
            );
            tokio::task::spawn_blocking(move || settle(&part, &path, &req, &fmt))
                .await
                .map_err(|e| AgentFailure::internal(e.to_string()))?
                .map_err(|e| AgentFailure::invalid(format!("{e:#}")))
        }
        .await;
        let _ = std::fs::remove_file(&part);
        if let Err(e) = stored {
            let _ = pool.delete_disk(&path);
            return Err(e);
        }
        // Root's alone until its VM starts.
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&path, private)
            .map_err(|e| AgentFailure::internal(e.to_string()))?;
        Ok(DiskCreated {
            path: path.display().to_string(),
            format: pool.driver.disk_format().into(),
            size_mib: req.size_mib,
        })
    }
}

/// The disk file `p` (of format `fmt`) standing alone: a copy in its own directory with
/// its backing chain merged in, unlinked once open, so it goes when the read ends however
/// the read ends. A raw file has no backing file: it is sent as it is. The copy's path
/// is noted in `ledger` first: an agent that dies before the unlink removes it at its
/// next start, whatever pool it is in (`sweep_export_copies`).
async fn standalone_bytes(p: &Path, fmt: &str, ledger: &Path) -> Res<SizedBytes<AgentFailure>> {
    match fmt {
        "raw" => return crate::images::file_bytes(p).await,
        "qcow2" => {}
        other => {
            return Err(AgentFailure::invalid(format!(
                "standalone_format: {other:?} is not qcow2 or raw"
            )))
        }
    }
    let dir = p.parent().unwrap_or(Path::new("/"));
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // A name no other agent (of a host sharing the pool) or export takes: a random
    // token, and the file made here first, never over another.
    let token =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), n);
    let copy = dir.join(format!(".export-{token:016x}.qcow2"));
    note_export_copy(ledger, &copy)
        .map_err(|e| AgentFailure::internal(format!("noting {}: {e}", ledger.display())))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&copy)
        .map_err(|e| AgentFailure::internal(format!("making {}: {e}", copy.display())))?;
    let (src, dst) = (p.to_path_buf(), copy.clone());
    let made = tokio::task::spawn_blocking(move || {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-f", "qcow2", "-O", "qcow2"])
            .arg(&src)
            .arg(&dst);
        run(&mut c, "qemu-img convert")
    })
    .await
    .map_err(|e| AgentFailure::internal(e.to_string()))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&copy);
        return Err(AgentFailure::internal(format!("{}: {e:#}", p.display())));
    }
    hostel_faults::point("agent.export.copied").await;
    let opened = crate::images::file_bytes(&copy).await;
    let _ = std::fs::remove_file(&copy);
    opened
}

/// Appends `copy` to the ledger of export copies (one path a line).
fn note_export_copy(ledger: &Path, copy: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger)?;
    f.write_all(format!("{}\n", copy.display()).as_bytes())
}

/// Writes the body to `part`: exactly `bytes` of it, flushed to the disk.
async fn receive(part: &Path, mut body: ByteStream<AgentFailure>, bytes: u64) -> Res<()> {
    let fail = |e: std::io::Error| AgentFailure::internal(format!("{}: {e}", part.display()));
    let mut out = tokio::fs::File::create(part).await.map_err(fail)?;
    let mut got = 0u64;
    while let Some(b) = body.next().await {
        let b = b?;
        got += b.len() as u64;
        if got > bytes {
            return Err(AgentFailure::invalid(format!(
                "the body is longer than the {bytes} bytes said"
            )));
        }
        out.write_all(&b).await.map_err(fail)?;
    }
    if got != bytes {
        return Err(AgentFailure::invalid(format!(
            "the body ended after {got} of {bytes} bytes: the disk is not kept"
        )));
    }
    out.sync_all().await.map_err(fail)
}

/// Makes the received file the disk at `path`, in the pool's format `fmt`.
fn settle(part: &Path, path: &PathBuf, req: &PutDiskRequest, fmt: &str) -> anyhow::Result<()> {
    // Read once, before anything changes it (the format is the one said, never probed).
    let info = hostel_storage::disk::info(part, &req.format)
        .map_err(|e| anyhow::anyhow!("not a {} file QEMU reads: {e:#}", req.format))?;
    if req.format == "qcow2" {
        // Nothing of the host's is opened through it. A backing file is refused where
        // none is to be under it (an archive's disk stands alone: dropping it would lose
        // what the guest sees through it); otherwise it is replaced below, unopened.
        match req.backing {
            Some(_) => hostel_storage::disk::refuse_data_files(part, &info)?,
            None => hostel_storage::disk::refuse_other_files(part, &info)?,
        }
        // The image under it is this host's copy now (or none).
        let mut c = Command::new("qemu-img");
        c.args(["rebase", "-u", "-f", "qcow2"]);
        match &req.backing {
            Some(b) => c.args(["-b", &b.path, "-F", &b.format]),
            None => c.args(["-b", ""]),
        };
        run(c.arg(part), "qemu-img rebase")?;
    }
    // The size said is what the owner is charged and the VM's row records: the file
    // must be exactly that size (an archive's manifest is written by whoever uploads it).
    let mib = info.virtual_size.div_ceil(1 << 20);
    if mib != req.size_mib {
        anyhow::bail!(
            "the disk's virtual size is {mib} MiB, not the {} MiB said for it: not kept",
            req.size_mib
        );
    }
    if req.format == fmt {
        std::fs::rename(part, path)?;
    } else {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-f", &req.format, "-O", fmt])
            .arg(part)
            .arg(path);
        run(&mut c, "qemu-img convert")?;
    }
    Ok(())
}

fn run(c: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = c.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) const EXPORT_LEDGER: &str = "export-copies";

/// Removes the temporary copies exports make (`disk_moves.rs`) that an agent which died
/// in the middle of making one left: those its ledger names, in any pool, and any in the
/// default pool's directory `disks` (where no other agent writes). The ledger starts
/// again empty.
pub(crate) fn sweep_export_copies(ledger: &Path, disks: &Path) {
    let is_copy = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy())
            .is_some_and(|n| n.starts_with(".export-") && n.ends_with(".qcow2"))
    };
    let mut copies: Vec<PathBuf> = std::fs::read_to_string(ledger)
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .filter(|p| is_copy(p))
        .collect();
    if let Ok(entries) = std::fs::read_dir(disks) {
        copies.extend(entries.flatten().map(|e| e.path()).filter(|p| is_copy(p)));
    }
    for copy in copies {
        match std::fs::remove_file(&copy) {
            Ok(()) => tracing::info!(file = %copy.display(), "removed an export's leftover copy"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %copy.display(), "removing an export's leftover copy: {e}")
            }
        }
    }
    let _ = std::fs::remove_file(ledger);
}
