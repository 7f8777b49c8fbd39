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
        crate::images::file_bytes(p).await
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
    if req.format == "qcow2" {
        // The image under it is this host's copy now (or none).
        let mut c = Command::new("qemu-img");
        c.args(["rebase", "-u", "-f", "qcow2"]);
        match &req.backing {
            Some(b) => c.args(["-b", &b.path, "-F", &b.format]),
            None => c.args(["-b", ""]),
        };
        run(c.arg(part), "qemu-img rebase")?;
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
