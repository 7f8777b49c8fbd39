//! Restoring a backup (`backups.rs` takes them): as a new VM, made with its disks to
//! follow and removed again if they do not all come; or over its own stopped VM, the
//! backup's disks copied in beside the old ones, then swapped in. Both are journaled
//! (`journal.rs`): a crash undoes a half-made VM and a restore before its swap, and
//! finishes a swap begun.

use crate::context::Ctx;
use crate::error::Error;
use crate::journal::OpLog;
use crate::Controller;
use hostel_api::agent as wire;
use hostel_api::public::*;
use hostel_model::{TaskState, VmState};
use hostel_store::{BackupTargetRecord, DiskRecord};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

impl Controller {
    /// Restores a backup in a task: as a new VM (`as_name`), else over its own VM,
    /// which must be stopped (its disks are replaced only once the backup's are in).
    pub async fn restore_backup(
        self: &Arc<Self>,
        ctx: &Ctx,
        name: &str,
        req: RestoreBackupRequest,
    ) -> Res<Task> {
        let b = self.backup_named(ctx, name).await?;
        let caller = ctx.caller()?.clone();
        ctx.params(serde_json::json!({"as": req.as_name, "start": req.start}));
        let target = self.target_by_id(&b.target_id).await?;
        let files: Vec<wire::BackupFile> = serde_json::from_str(&b.files)
            .map_err(|e| Error::internal(format!("backup {name:?}: its file list: {e}")))?;
        if files.is_empty() {
            return Err(Error::conflict(format!(
                "backup {name:?} holds no disks: there is nothing to restore"
            )));
        }
        // Every file a restore of each disk reads: this backup's and its ancestors'.
        let all = self.store.backups().await?;
        let mut sums = Vec::new();
        let mut at = Some(b.clone());
        while let Some(x) = at {
            for f in serde_json::from_str::<Vec<wire::BackupFile>>(&x.files).unwrap_or_default() {
                sums.push(wire::FileSum {
                    path: format!("{}/{}", target.dir, f.file),
                    sha256: f.sha256,
                });
            }
            at = x
                .parent_id
                .as_ref()
                .and_then(|p| all.iter().find(|y| &y.id == p).cloned());
        }
        let (vm, guard, replace, op) = match &req.as_name {
            Some(new_name) => {
                let mut def: CreateVmRequest = serde_json::from_str(&b.definition)
                    .map_err(|e| Error::internal(format!("the backup's definition: {e}")))?;
                def.name = new_name.clone();
                def.start = false;
                let (made, op) = self.create_vm_with(ctx, def).await?;
                match self.ready_restored(ctx, &made.name, &b.host_id, &op).await {
                    Ok((g, vm)) => (vm, g, Vec::new(), op),
                    Err(e) => {
                        let e = self.unmake(ctx, &made.name, e).await;
                        op.failed(&e).await;
                        return Err(e);
                    }
                }
            }
            None => {
                let vm = self
                    .store
                    .vm_by_id(&b.vm_id)
                    .await?
                    .filter(|v| ctx.may_operate(v))
                    .ok_or_else(|| {
                        Error::not_found(
                            "vm",
                            &b.vm_name,
                            format!(
                                "VM {:?} is gone: restore the backup as a new VM (--as NAME)",
                                b.vm_name
                            ),
                        )
                    })?;
                let (g, vm) = self.locked_vm(ctx, &vm.name).await?;
                if !matches!(vm.state, VmState::Stopped | VmState::Crashed) {
                    return Err(Error::conflict(format!(
                        "VM {:?} is {}: stop it before restoring over it (or restore as a new \
                         VM with --as NAME)",
                        vm.name,
                        vm.state.as_str()
                    )));
                }
                if !self.store.snapshots_of(&vm.id).await?.is_empty() {
                    return Err(Error::conflict(format!(
                        "VM {:?} has snapshots of the disks a restore replaces: delete them \
                         first (`hostel snapshot list {0}`), or restore as a new VM (--as NAME)",
                        vm.name
                    )));
                }
                let old = self.store.disks_of(&vm.id).await?;
                // Journaled: a crash before the swap leaves the VM its disks as they
                // were, one during it finishes the swap (`journal.rs`).
                let intent = crate::journal::Intent {
                    replaced: old.iter().map(|d| d.id.clone()).collect(),
                    ..Default::default()
                };
                let op = self
                    .journal(ctx, "restore-over", &vm.name, Some(&vm), &intent)
                    .await?;
                (vm, g, old, op)
            }
        };
        let task = match self
            .new_task(
                ctx,
                "backup-restore",
                &vm.name,
                &format!("restoring {}", b.name),
            )
            .await
        {
            Ok(t) => t,
            Err(e) => {
                drop(guard);
                let e = match req.as_name.is_some() {
                    true => self.unmake(ctx, &vm.name, e).await,
                    false => e,
                };
                op.failed(&e).await;
                return Err(e);
            }
        };
        let me = self.clone();
        let id = task.id.clone();
        let source = ctx.source.clone();
        let new_vm = req.as_name.is_some();
        let start = req.start;
        tokio::spawn(async move {
            let tctx = Ctx::user(caller, source);
            let restored = me
                .restore_disks(&tctx, &id, &vm, &target, &files, &sums, &replace, &op)
                .await;
            drop(guard);
            // Whole once the disks are in; then the start, if asked.
            let (result, op) = match restored {
                Ok(()) => {
                    op.done().await;
                    let started = match start {
                        true => me.start_vm(&tctx, &vm.name).await.map(|_| ()),
                        false => Ok(()),
                    };
                    (started.map_err(Undone::No), None)
                }
                Err(Undone::Swapping(e)) => {
                    // Left running: settled (the swap finished) from here on.
                    me.settle_now(op).await;
                    (Err(Undone::Swapping(e)), None)
                }
                Err(e) => (Err(e), Some(op)),
            };
            let _ = match result {
                Ok(()) => {
                    me.store
                        .update_task(&id, TaskState::Succeeded, 1.0, "restored", None)
                        .await
                }
                Err(Undone::Swapping(e)) => {
                    // Nothing to end: the swap is finished by whoever settles the journal
                    // next (this controller's next start, or another controller).
                    let msg = format!(
                        "{e}; the swap of the disks was cut: it is finished when the \
                         controller next starts"
                    );
                    me.store
                        .update_task(&id, TaskState::Failed, 1.0, "failed", Some(&msg))
                        .await
                }
                Err(Undone::No(e)) => {
                    let e = if new_vm {
                        // Nothing half made stays: the new VM goes with what it got.
                        me.unmake(&tctx, &vm.name, e).await
                    } else if op.is_some() {
                        e.then("the VM keeps its disks as they were")
                    } else {
                        e.then("the VM has the backup's disks, but it did not start")
                    };
                    if let Some(op) = op {
                        op.failed(&e).await;
                    }
                    let msg = e.message();
                    me.store
                        .update_task(&id, TaskState::Failed, 1.0, "failed", Some(&msg))
                        .await
                }
            };
        });
        Ok(task)
    }

    /// Puts a new VM without disks on `host` (where a backup's files are), with what it
    /// boots from.
    async fn place_restored_on(&self, vm: &hostel_store::VmRecord, host: &str) -> Res<()> {
        self.boot_images_to(vm, host).await?;
        self.store.set_vm_host(&vm.id, host, vm.state, None).await?;
        Ok(())
    }

    /// Copies each backed-up disk into the VM's pool as a new disk; then, over an
    /// existing VM, its old disks go and the new ones take their places.
    #[allow(clippy::too_many_arguments)]
    async fn restore_disks(
        &self,
        ctx: &Ctx,
        task: &str,
        vm: &hostel_store::VmRecord,
        target: &BackupTargetRecord,
        files: &[wire::BackupFile],
        sums: &[wire::FileSum],
        replace: &[DiskRecord],
        op: &OpLog,
    ) -> Result<(), Undone> {
        let agent = self.host_agent(vm).map_err(Undone::No)?;
        // Each restored disk is copied in beside the old ones (a free index and file name),
        // then takes its place in the VM's order.
        let n = files.len().max(1) as f64;
        let mut made: Vec<(DiskRecord, u32)> = Vec::new();
        // Over a VM, the disks it replaces go at the end: the copies are charged as if
        // they were gone already (what the owner and the VM hold once it is done).
        let going: u64 = replace.iter().map(|d| d.size_mib).sum();
        for (i, f) in files.iter().enumerate() {
            let mut taken: Vec<DiskRecord> = replace.to_vec();
            taken.extend(made.iter().map(|(d, _)| d.clone()));
            let next = taken.iter().map(|d| d.idx + 1).max().unwrap_or(0);
            let idx = crate::disk_import::free_index(&taken, &vm.id, next);
            // Over a VM, the journal names the copy about to be made first: a crash
            // while it is made (its row written or not) removes it too.
            if !replace.is_empty() {
                let intent = swap_intent(&vm.id, replace, &made, Some(idx), false);
                if let Err(e) = op.step_with("copying", &intent).await {
                    self.drop_copies(&agent, &made).await;
                    return Err(Undone::No(e));
                }
            }
            let result = self
                .copy_in_disk(
                    ctx,
                    vm,
                    wire::ImportDiskRequest {
                        vm_id: vm.id.clone(),
                        index: idx,
                        source: format!("{}/{}", target.dir, f.file),
                        format: "qcow2".into(),
                        pool: None,
                        chain_within: Some(target.dir.clone()),
                        sums: sums.to_vec(),
                    },
                    None,
                    crate::disk_import::Report {
                        task,
                        from: i as f64 / n * 0.95,
                        width: 0.95 / n,
                        label: format!("disk {}/{}", i + 1, files.len()),
                    },
                    going,
                )
                .await;
            let result = match result {
                Ok(rec) => {
                    made.push((rec, f.index));
                    // Over a VM, the journal names each copy: only those go if a crash
                    // cuts the restore before its swap. (A new VM goes whole.)
                    match replace.is_empty() {
                        true => op.step("disk-copied").await,
                        false => {
                            let intent = swap_intent(&vm.id, replace, &made, None, false);
                            op.step_with("disk-copied", &intent).await
                        }
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // Over an existing VM, what was copied in so far goes again.
                self.drop_copies(&agent, &made).await;
                return Err(Undone::No(e));
            }
        }
        if replace.is_empty() {
            return Ok(());
        }
        // The old disks go; the restored ones take their indexes. From here on a crash
        // (or a failure) finishes this, not undoes it.
        let intent = swap_intent(&vm.id, replace, &made, None, true);
        if let Err(e) = op.step_with("swapping", &intent).await {
            self.drop_copies(&agent, &made).await;
            return Err(Undone::No(e));
        }
        self.finish_swap(&vm.id, &intent)
            .await
            .map_err(Undone::Swapping)?;
        self.remove_disk_files(&agent, replace).await;
        Ok(())
    }

    /// Removes the disks a restore copied in (rows, then files).
    async fn drop_copies(
        &self,
        agent: &crate::agent_client::AgentClient,
        made: &[(DiskRecord, u32)],
    ) {
        let recs: Vec<DiskRecord> = made.iter().map(|(d, _)| d.clone()).collect();
        for rec in &recs {
            let _ = self.store.delete_disk(&rec.id).await;
        }
        self.remove_disk_files(agent, &recs).await;
    }

    /// The new VM of a restore, locked, on the host that holds the backup's files (a
    /// target on a host's local disk; one all hosts share reads the same anywhere) while
    /// that host is connected.
    async fn ready_restored(
        &self,
        ctx: &Ctx,
        name: &str,
        host: &str,
        op: &OpLog,
    ) -> Res<(crate::cluster::VmGuard, hostel_store::VmRecord)> {
        let (g, mut vm) = self.locked_vm(ctx, name).await?;
        if vm.host_id.as_deref() != Some(host) && self.agent(host).is_some() {
            self.place_restored_on(&vm, host).await?;
            // A crash from here on is settled on that host, where its disks go.
            op.made_vm(&vm.id, host).await?;
            vm.host_id = Some(host.to_string());
        }
        Ok((g, vm))
    }

    /// Removes a VM a restore or import made and could not fill; `e` says why, and
    /// whether the VM went too.
    pub(crate) async fn unmake(&self, ctx: &Ctx, name: &str, e: Error) -> Error {
        match self.delete_vm(ctx, name).await {
            Ok(()) => e.then(&format!("VM {name:?} was removed again")),
            Err(d) => e.then(&format!(
                "removing VM {name:?} again failed too ({d}): `hostel delete {name}`"
            )),
        }
    }
}

/// Why a restore's disks did not all come in.
pub(crate) enum Undone {
    /// Nothing was kept: the VM has the disks it had.
    No(Error),
    /// The swap began and was cut: the journal finishes it.
    Swapping(Error),
}

/// A restore over a VM as its journal says it: the disks it replaces, the copies made
/// so far with the indexes they take, the file of the copy being made (`copying`, its
/// index), and (`swapping`) the old disks' files, which go once their rows have.
fn swap_intent(
    vm_id: &str,
    replace: &[DiskRecord],
    made: &[(DiskRecord, u32)],
    copying: Option<u32>,
    swapping: bool,
) -> crate::journal::Intent {
    use crate::journal::DiskFile;
    crate::journal::Intent {
        replaced: replace.iter().map(|d| d.id.clone()).collect(),
        restored: made.iter().map(|(d, i)| (d.id.clone(), *i)).collect(),
        files: match swapping {
            true => replace.iter().map(DiskFile::at).collect(),
            false => copying
                .map(|i| DiskFile::of(vm_id, i))
                .into_iter()
                .collect(),
        },
        ..Default::default()
    }
}
