//! Backups of a VM's disks into a backup target's directory.
//!
//! A running VM is copied live by QEMU's `blockdev-backup`, every disk at the same
//! instant (one `transaction`), into new qcow2 files QEMU gets as file descriptors
//! (`add-fd`: the VM's uid never needs to reach the target directory). Each disk starts
//! a persistent dirty bitmap `hostel-ID` in that transaction; the next backup copies
//! only what that bitmap marks (`sync: bitmap`, leaving it as it was) into a qcow2 whose
//! backing file is the previous backup's, so a restore reads the chain. A bitmap is
//! dropped only when a later backup builds on a newer one: if recording a backup fails,
//! the next one builds on the last recorded and its bitmap still holds every change.
//! A disk without a usable bitmap (a raw disk, a QEMU that crashed, a disk added since)
//! is copied whole. A stopped VM is copied whole with qemu-img, and its qcow2 disks get
//! the new bitmap for the next start.

use crate::guest_agent::GuestAgent;
use crate::vm::VmRuntime;
use anyhow::{anyhow, bail, Context, Result};
use hostel_api::agent::*;
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "hostel-";

fn bitmap(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// The file of disk `index` of backup `id`.
fn file_name(id: &str, index: u32) -> String {
    format!("{id}-{index}.qcow2")
}

/// Checks what the request names before anything is touched.
pub fn check(req: &BackupVmRequest) -> Result<()> {
    let plain = crate::is_plain_name;
    if !plain(&req.vm_id) || !plain(&req.backup_id) {
        bail!("vm_id and backup_id must be plain names");
    }
    if !req.dir.starts_with('/') || req.dir.split('/').any(|c| c == "..") {
        bail!("dir {:?}: give the target's absolute path", req.dir);
    }
    if let Some(p) = &req.parent {
        if !plain(&p.id) || p.files.iter().any(|f| !is_file_name(&f.file)) {
            bail!("parent: its id and files must be plain names");
        }
    }
    Ok(())
}

/// A name of a file directly in a target's directory.
pub fn is_file_name(f: &str) -> bool {
    !f.is_empty()
        && f != "."
        && f != ".."
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Backs up `req`'s disks, through the running QEMU of `vm` when there is one.
pub async fn run(
    vm: Option<Arc<VmRuntime>>,
    req: BackupVmRequest,
    progress: &mut (dyn FnMut(f64, String) + Send),
) -> Result<(Vec<BackupFile>, String)> {
    check(&req)?;
    let dir = PathBuf::from(&req.dir);
    // Backups hold whole disks: root's alone, as the pools' disks are.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("making {}", dir.display()))?;
    let qmp = vm.as_ref().and_then(|v| v.qmp_handle().ok());
    let mut quiesce = String::from("at rest: the VM was not running");
    let made = match qmp {
        Some(q) => {
            let port = vm
                .as_ref()
                .filter(|v| v.spec().guest_agent)
                .map(|v| v.paths.guest_agent());
            live(&q, &req, &dir, progress, port.as_deref(), &mut quiesce).await
        }
        None => {
            let r = req.clone();
            let d = dir.clone();
            tokio::task::spawn_blocking(move || offline(&r, &d)).await?
        }
    };
    let mut files = match made {
        Ok(f) => f,
        Err(e) => {
            for d in &req.disks {
                let _ = std::fs::remove_file(dir.join(file_name(&req.backup_id, d.index)));
            }
            return Err(e);
        }
    };
    progress(0.97, "checksumming".into());
    let d = dir.clone();
    let summed = tokio::task::spawn_blocking(move || -> Result<Vec<BackupFile>> {
        for f in &mut files {
            let path = d.join(&f.file);
            f.sha256 = hostel_storage::disk::sha256_file(&path)?;
            f.size_bytes = std::fs::metadata(&path)?.len();
        }
        Ok(files)
    })
    .await?;
    if summed.is_err() {
        for d in &req.disks {
            let _ = std::fs::remove_file(dir.join(file_name(&req.backup_id, d.index)));
        }
    }
    summed.map(|files| (files, quiesce))
}

/// Freezes the guest's file systems through its agent on `port`, when it has one that
/// answers; the agent to thaw them with. `quiesce` says what happened.
async fn freeze(port: Option<&Path>, quiesce: &mut String) -> Option<GuestAgent> {
    let Some(port) = port else {
        *quiesce = "crash-consistent: the VM has no guest agent port (it gets one at its \
                    next start from cold)"
            .into();
        return None;
    };
    let mut ga = match GuestAgent::connect(port).await {
        Ok(ga) => ga,
        Err(e) => {
            *quiesce = format!("crash-consistent: {e:#}");
            return None;
        }
    };
    match ga.freeze().await {
        Ok(n) => {
            *quiesce = format!("the guest agent froze {n} file system(s)");
            Some(ga)
        }
        Err(e) => {
            // Whatever it froze before failing is thawed again.
            let _ = ga.thaw().await;
            *quiesce = format!("crash-consistent: the guest agent could not freeze: {e:#}");
            None
        }
    }
}

/// Thaws what `freeze` froze; tries three times, and says so loudly if it cannot.
async fn thaw(vm: &str, mut ga: GuestAgent) {
    for attempt in 1..=3 {
        match ga.thaw().await {
            Ok(_) => return,
            Err(e) => tracing::error!(vm = %vm, attempt, "thawing the guest's file systems: {e:#}"),
        }
    }
}

/// The bitmaps of node `disk{i}`: (name, usable).
fn bitmaps_of(nodes: &Value, index: u32) -> Vec<(String, bool)> {
    let node = format!("disk{index}");
    nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node-name"] == node.as_str()))
        .and_then(|n| n["dirty-bitmaps"].as_array())
        .map(|bs| {
            bs.iter()
                .filter_map(|b| {
                    let name = b["name"].as_str()?.to_string();
                    let usable = b["inconsistent"] != true && b["busy"] != true;
                    Some((name, usable))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn virtual_size(nodes: &Value, index: u32) -> Option<u64> {
    let node = format!("disk{index}");
    nodes
        .as_array()?
        .iter()
        .find(|n| n["node-name"] == node.as_str())?["image"]["virtual-size"]
        .as_u64()
}

/// One disk's copy as planned: whole, or since the parent's bitmap onto its file.
struct Plan {
    index: u32,
    qcow2: bool,
    /// The parent's file this one's backing is (an incremental copy).
    parent_file: Option<String>,
    size: u64,
    path: PathBuf,
}

async fn live(
    qmp: &hostel_qemu::Qmp,
    req: &BackupVmRequest,
    dir: &Path,
    progress: &mut (dyn FnMut(f64, String) + Send),
    guest_agent: Option<&Path>,
    quiesce: &mut String,
) -> Result<Vec<BackupFile>> {
    let nodes = qmp
        .execute("query-named-block-nodes", json!({"flat": true}))
        .await?;
    let parent_bitmap = req.parent.as_ref().map(|p| bitmap(&p.id));
    let mut plans = Vec::new();
    for d in &req.disks {
        let qcow2 = d.format == "qcow2";
        let marks = bitmaps_of(&nodes, d.index);
        // Bitmaps of backups no longer built on (a parent's parent, a failed one).
        for (name, _) in &marks {
            if name.starts_with(PREFIX) && Some(name) != parent_bitmap.as_ref() {
                let _ = qmp
                    .execute(
                        "block-dirty-bitmap-remove",
                        json!({"node": format!("disk{}", d.index), "name": name}),
                    )
                    .await;
            }
        }
        let usable = marks
            .iter()
            .any(|(n, ok)| *ok && Some(n) == parent_bitmap.as_ref());
        let parent_file = req
            .parent
            .as_ref()
            .and_then(|p| p.files.iter().find(|f| f.index == d.index))
            .map(|f| f.file.clone())
            .filter(|f| usable && dir.join(f).exists());
        let size = virtual_size(&nodes, d.index)
            .ok_or_else(|| anyhow!("disk {} is not attached to the VM's QEMU", d.index))?;
        plans.push(Plan {
            index: d.index,
            qcow2,
            parent_file,
            size,
            path: dir.join(file_name(&req.backup_id, d.index)),
        });
    }
    // The target files, each handed to QEMU as a descriptor of a set of its own.
    let mut fds = Vec::new();
    let result = async {
        for p in &plans {
            let mut c = Command::new("qemu-img");
            c.args(["create", "-q", "-f", "qcow2"]);
            if let Some(parent) = &p.parent_file {
                // Relative: the chain moves with the directory.
                c.args(["-b", parent, "-F", "qcow2"]);
            }
            c.arg(&p.path).arg(p.size.to_string());
            run_tool(&mut c, "qemu-img create")?;
            private(&p.path)?;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p.path)?;
            let set = qmp
                .execute_with_fd(
                    "add-fd",
                    json!({"opaque": format!("backup {}", p.index)}),
                    f.as_raw_fd(),
                )
                .await?;
            let set_id = set["fdset-id"]
                .as_u64()
                .ok_or_else(|| anyhow!("add-fd gave no fdset-id: {set}"))?;
            fds.push((f, set_id));
            qmp.execute(
                "blockdev-add",
                json!({"driver": "file", "node-name": format!("bkf{}", p.index),
                       "filename": format!("/dev/fdset/{set_id}")}),
            )
            .await?;
            qmp.execute(
                "blockdev-add",
                json!({"driver": "qcow2", "node-name": format!("bk{}", p.index),
                       "file": format!("bkf{}", p.index), "backing": null}),
            )
            .await?;
        }
        // Every disk at the same instant, each starting the bitmap the next backup uses.
        let mut actions = Vec::new();
        for p in &plans {
            let disk = format!("disk{}", p.index);
            if p.qcow2 {
                actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                    "node": disk, "name": bitmap(&req.backup_id), "persistent": true}}));
            }
            let mut job = json!({"job-id": format!("bk{}", p.index), "device": disk,
                "target": format!("bk{}", p.index), "sync": "full", "auto-dismiss": false});
            if p.parent_file.is_some() {
                job["sync"] = json!("bitmap");
                job["bitmap"] = json!(parent_bitmap);
                job["bitmap-mode"] = json!("never");
            }
            actions.push(json!({"type": "blockdev-backup", "data": job}));
        }
        // The guest's file systems frozen for the instant the copy starts, if its agent
        // answers; thawed at once, whatever the transaction gave.
        let frozen = freeze(guest_agent, quiesce).await;
        let started = qmp
            .execute("transaction", json!({ "actions": actions }))
            .await;
        if let Some(ga) = frozen {
            thaw(&req.vm_id, ga).await;
        }
        started?;
        wait_jobs(qmp, &plans, progress).await
    }
    .await;
    end_jobs(qmp, &plans).await;
    for (_, set) in &fds {
        let _ = qmp.execute("remove-fd", json!({"fdset-id": set})).await;
    }
    drop(fds);
    if let Err(e) = result {
        // The bitmap this backup started goes with it.
        for p in plans.iter().filter(|p| p.qcow2) {
            let _ = qmp
                .execute(
                    "block-dirty-bitmap-remove",
                    json!({"node": format!("disk{}", p.index), "name": bitmap(&req.backup_id)}),
                )
                .await;
        }
        return Err(e);
    }
    Ok(plans
        .iter()
        .map(|p| BackupFile {
            index: p.index,
            file: file_name(&req.backup_id, p.index),
            size_bytes: 0,
            virtual_size_mib: p.size.div_ceil(1 << 20),
            sha256: String::new(),
            incremental: p.parent_file.is_some(),
        })
        .collect())
}

/// Ends the backup jobs (cancelled if still running) and drops their target nodes.
async fn end_jobs(qmp: &hostel_qemu::Qmp, plans: &[Plan]) {
    let ids: Vec<String> = plans.iter().map(|p| format!("bk{}", p.index)).collect();
    for id in &ids {
        let _ = qmp
            .execute("block-job-cancel", json!({"device": id, "force": true}))
            .await;
    }
    // A cancelled job concludes a moment later; each is dismissed once it has.
    for _ in 0..100 {
        let jobs = qmp
            .execute("query-jobs", json!({}))
            .await
            .unwrap_or_default();
        let left: Vec<&Value> = jobs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|j| j["id"].as_str().is_some_and(|i| ids.iter().any(|x| x == i)))
                    .collect()
            })
            .unwrap_or_default();
        if left.is_empty() {
            break;
        }
        for j in left.iter().filter(|j| j["status"] == "concluded") {
            let _ = qmp.execute("job-dismiss", json!({"id": j["id"]})).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in plans {
        for node in [format!("bk{}", p.index), format!("bkf{}", p.index)] {
            let _ = qmp
                .execute("blockdev-del", json!({"node-name": node}))
                .await;
        }
    }
}

/// Waits until every backup job has concluded, reporting the bytes copied.
async fn wait_jobs(
    qmp: &hostel_qemu::Qmp,
    plans: &[Plan],
    progress: &mut (dyn FnMut(f64, String) + Send),
) -> Result<()> {
    loop {
        let jobs = qmp.execute("query-jobs", json!({})).await?;
        let ours: Vec<&Value> = jobs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|j| {
                        j["id"]
                            .as_str()
                            .is_some_and(|id| plans.iter().any(|p| id == format!("bk{}", p.index)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(j) = ours.iter().find(|j| j["error"].is_string()) {
            bail!(
                "copying disk {} failed: {}",
                j["id"].as_str().unwrap_or("?").trim_start_matches("bk"),
                j["error"].as_str().unwrap_or("")
            );
        }
        let (len, done) = ours.iter().fold((0u64, 0u64), |(l, d), j| {
            (
                l + j["total-progress"].as_u64().unwrap_or(0),
                d + j["current-progress"].as_u64().unwrap_or(0),
            )
        });
        if ours.len() == plans.len() && ours.iter().all(|j| j["status"] == "concluded") {
            return Ok(());
        }
        if ours.len() < plans.len() {
            bail!("a backup job of QEMU's went missing");
        }
        let f = if len == 0 {
            0.0
        } else {
            done as f64 / len as f64
        };
        progress(
            0.95 * f,
            format!("copied {} of {} MiB", done >> 20, len >> 20),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A stopped VM's disks, copied whole with qemu-img; each qcow2 disk then starts the
/// bitmap of this backup (and drops older ones) for its next start.
fn offline(req: &BackupVmRequest, dir: &Path) -> Result<Vec<BackupFile>> {
    let mut files = Vec::new();
    for d in &req.disks {
        let path = dir.join(file_name(&req.backup_id, d.index));
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-q", "-f", &d.format, "-O", "qcow2"])
            .arg(&d.path)
            .arg(&path);
        run_tool(&mut c, "qemu-img convert")?;
        private(&path)?;
        let info = hostel_storage::disk::info(&path, "qcow2")?;
        files.push(BackupFile {
            index: d.index,
            file: file_name(&req.backup_id, d.index),
            size_bytes: 0,
            virtual_size_mib: info.virtual_size.div_ceil(1 << 20),
            sha256: String::new(),
            incremental: false,
        });
    }
    for d in req.disks.iter().filter(|d| d.format == "qcow2") {
        let info = hostel_storage::disk::info(Path::new(&d.path), "qcow2")?;
        let old = info
            .format_specific
            .as_ref()
            .and_then(|f| f["data"]["bitmaps"].as_array().cloned())
            .unwrap_or_default();
        for b in old {
            if let Some(name) = b["name"].as_str().filter(|n| n.starts_with(PREFIX)) {
                let mut c = Command::new("qemu-img");
                c.args(["bitmap", "-f", "qcow2", "--remove", &d.path, name]);
                run_tool(&mut c, "qemu-img bitmap --remove")?;
            }
        }
        let mut c = Command::new("qemu-img");
        c.args([
            "bitmap",
            "-f",
            "qcow2",
            "--add",
            &d.path,
            &bitmap(&req.backup_id),
        ]);
        run_tool(&mut c, "qemu-img bitmap --add")?;
    }
    Ok(files)
}

/// Root's alone (0600): a backup file holds a whole disk.
fn private(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Removes the files a backup made (it failed, or nobody took its result).
pub fn remove_made(req: &BackupVmRequest) {
    for d in &req.disks {
        let _ = std::fs::remove_file(Path::new(&req.dir).join(file_name(&req.backup_id, d.index)));
    }
}

fn run_tool(c: &mut Command, what: &str) -> Result<()> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes `files` (plain names) from `dir`; those already gone are no error.
pub fn delete_files(req: &DeleteBackupFilesRequest) -> Result<()> {
    if !req.dir.starts_with('/') || req.dir.split('/').any(|c| c == "..") {
        bail!("dir {:?}: give the target's absolute path", req.dir);
    }
    for f in &req.files {
        if !is_file_name(f) {
            bail!("{f:?} is not a file name");
        }
        match std::fs::remove_file(Path::new(&req.dir).join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {f}")),
        }
    }
    Ok(())
}

/// Checks a restore's source: a qcow2 whose whole backing chain is in `within`, each
/// file with the SHA-256 `sums` gives for it.
pub fn check_chain(source: &Path, within: &Path, sums: &[FileSum]) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["info", "-f", "qcow2", "--backing-chain", "--output=json"])
        .arg(source)
        .output()
        .context("running qemu-img info")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let chain: Value = serde_json::from_slice(&out.stdout)?;
    for layer in chain.as_array().into_iter().flatten() {
        let file = layer["filename"].as_str().unwrap_or("");
        let path = Path::new(file);
        if path.parent() != Some(within) || layer["format"] != "qcow2" {
            bail!("{file} is outside the backup target {}", within.display());
        }
        if let Some(want) = sums.iter().find(|s| s.path == file) {
            let got = hostel_storage::disk::sha256_file(path)?;
            if got != want.sha256 {
                bail!(
                    "{file} has changed since it was written (SHA-256 {got}, recorded {}): \
                     the backup is damaged",
                    want.sha256
                );
            }
        }
    }
    Ok(())
}
