//! The operations journal (see `hostel_store::OperationRecord`): an operation of more
//! than one step begins with a row that says what it is about to do, records each step
//! done (and passes that step's fault point, `controller.<kind>.<step>`), and ends
//! succeeded or failed. At a start, every operation a crash left running is finished or
//! undone here, once its host answers, and ends failed with what was done about it: no
//! disk file without its row, no row without its file, no half-made VM.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_api::public::{Operation, OperationList};
use hostel_model::TaskState;
use hostel_store::{OperationFilter, OperationRecord, VmRecord};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// What an operation is about to do, for the one who finishes or undoes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Intent {
    /// Disk files it makes or removes: each one no disk row points to after a crash is
    /// removed (a made file whose row was never written, a file whose row was deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DiskFile>,
    /// The snapshot it takes or deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// A restore over a VM: the ids of the disks it replaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    /// ... and, once it swaps them, each restored disk's id and the index it takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<(String, u32)>,
}

/// A disk file: one to be made, by its stem (`VMID-INDEX`, the agent adds the pool's
/// suffix), or one that exists, by its path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DiskFile {
    #[serde(default)]
    pub stem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl DiskFile {
    pub fn of(vm_id: &str, index: u32) -> DiskFile {
        DiskFile {
            stem: format!("{vm_id}-{index}"),
            path: None,
        }
    }

    pub fn at(disk: &hostel_store::DiskRecord) -> DiskFile {
        DiskFile {
            stem: String::new(),
            path: Some(disk.path.clone()),
        }
    }

    fn names(&self, path: &str) -> bool {
        if let Some(p) = &self.path {
            return p == path;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        name == self.stem
            || name
                .strip_prefix(self.stem.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    }
}

/// A running operation's handle: record its steps, then `end` it.
pub(crate) struct OpLog {
    id: String,
    kind: &'static str,
    store: hostel_store::Store,
}

impl OpLog {
    /// Records that `step` is done, then passes its fault point.
    pub async fn step(&self, step: &str) -> Res<()> {
        self.store.operation_step(&self.id, step, None).await?;
        hostel_faults::point(&format!("controller.{}.{step}", self.kind)).await;
        Ok(())
    }

    /// Records that `step` is done and what the operation now intends (for the one who
    /// finishes it after a crash), then passes its fault point.
    pub async fn step_with(&self, step: &str, intent: &Intent) -> Res<()> {
        let intent = serde_json::to_string(intent).map_err(anyhow::Error::from)?;
        self.store
            .operation_step(&self.id, step, Some(&intent))
            .await?;
        hostel_faults::point(&format!("controller.{}.{step}", self.kind)).await;
        Ok(())
    }

    /// The VM the operation made, once its row is written.
    pub async fn made_vm(&self, vm_id: &str, host: &str) -> Res<()> {
        self.store.operation_vm(&self.id, vm_id, host).await?;
        Ok(())
    }

    /// Ends it, succeeded.
    pub async fn done(self) {
        self.end_with(None).await
    }

    /// Ends it, failed with `e`.
    pub async fn failed(self, e: &Error) {
        self.end_or_release(e).await
    }

    /// Ends it with the operation's result.
    pub async fn end<T>(self, result: &Res<T>) {
        match result {
            Ok(_) => self.end_with(None).await,
            Err(e) => self.end_or_release(e).await,
        }
    }

    /// Ends it failed, unless its host could not be reached and what the operation may
    /// have left there only its settling removes (a disk file made but never recorded, a
    /// half-made VM, an unrecorded snapshot): then it is released, and the leader settles
    /// it once the host answers, as it would after a crash.
    async fn end_or_release(self, e: &Error) {
        let unknown = matches!(e, Error::Unavailable(_))
            && matches!(self.kind, "create" | "disk-add" | "snapshot-create");
        if !unknown {
            return self.end_with(Some(e.message())).await;
        }
        if let Err(err) = self.store.release_operation(&self.id, &e.message()).await {
            tracing::warn!(op = %self.id, "cannot release an operation: {err:#}");
        }
    }

    /// Ends it, failed with `err` if given.
    async fn end_with(self, err: Option<String>) {
        if let Err(e) = self.store.finish_operation(&self.id, err.as_deref()).await {
            tracing::warn!(op = %self.id, "cannot record the end of an operation: {e:#}");
        }
    }
}

impl Controller {
    /// Begins a journaled operation on `target` (a VM, if `vm` is given).
    pub(crate) async fn journal(
        &self,
        ctx: &Ctx,
        kind: &'static str,
        target: &str,
        vm: Option<&VmRecord>,
        intent: &Intent,
    ) -> Res<OpLog> {
        let host = vm.and_then(|v| v.host_id.as_deref());
        self.journal_at(ctx, kind, target, vm.map(|v| v.id.as_str()), host, intent)
            .await
    }

    /// Begins a journaled operation on `host` for a VM that may not have a row yet.
    pub(crate) async fn journal_at(
        &self,
        ctx: &Ctx,
        kind: &'static str,
        target: &str,
        vm_id: Option<&str>,
        host: Option<&str>,
        intent: &Intent,
    ) -> Res<OpLog> {
        let mut op = OperationRecord::begin(kind, target);
        op.vm_id = vm_id.map(Into::into);
        op.host_id = host.map(Into::into);
        op.user_id = ctx.caller().ok().map(|c| c.user_id.clone());
        op.owner = Some(self.id.clone());
        op.intent = serde_json::to_string(intent).map_err(anyhow::Error::from)?;
        self.store.begin_operation(&op).await?;
        Ok(OpLog {
            id: op.id,
            kind,
            store: self.store.clone(),
        })
    }

    /// A journaled operation on a host that needs no undoing (the host's state is read
    /// again at a start): a row, and its one fault point once the host acted.
    pub(crate) async fn journal_simple(
        &self,
        ctx: &Ctx,
        kind: &'static str,
        target: &str,
        vm: Option<&VmRecord>,
    ) -> Res<OpLog> {
        self.journal(ctx, kind, target, vm, &Intent::default())
            .await
    }

    /// Settles, each in the background once its host answers, the operations a dead
    /// controller (or an earlier life of this one) left running; those being settled
    /// already are left to it.
    pub(crate) fn settle_operations(self: &Arc<Self>, ops: Vec<OperationRecord>) {
        for op in ops {
            if !self.settling.lock().unwrap().insert(op.id.clone()) {
                continue;
            }
            tracing::warn!(op = %op.id, kind = %op.kind, target = %op.target,
                "an operation was under way when its controller stopped: settling it");
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    match me.settle_operation(&op).await {
                        Ok(Some((finished, done))) => {
                            let why = if let Some(e) = &op.error {
                                // Released when its host could not be reached.
                                format!("{e}; settled once the host answered: {done}")
                            } else if op.step.is_empty() {
                                format!("interrupted by a stop of the controller before its first step; {done}")
                            } else {
                                format!(
                                    "interrupted by a stop of the controller after its step {:?}; {done}",
                                    op.step
                                )
                            };
                            tracing::warn!(op = %op.id, kind = %op.kind, target = %op.target, "{why}");
                            // One finished by recovery succeeded; one undone failed, and
                            // says why.
                            let err = (!finished).then_some(why.as_str());
                            let _ = me.store.finish_operation(&op.id, err).await;
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(op = %op.id, "settling an interrupted operation: {}", e.message());
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                me.settling.lock().unwrap().remove(&op.id);
            });
        }
    }

    /// Finishes or undoes one interrupted operation: whether it was finished, and what
    /// was done; `None` while its host is away.
    async fn settle_operation(&self, op: &OperationRecord) -> Res<Option<(bool, String)>> {
        let intent: Intent = serde_json::from_str(&op.intent).unwrap_or_default();
        let agent = match &op.host_id {
            Some(h) => match self.agent(h) {
                Some(a) => Some(a),
                None => return Ok(None),
            },
            None => None,
        };
        let _g = match op.vm_id.as_deref() {
            Some(id) => Some(self.lock_vm(id).await),
            None => None,
        };
        let vm = match &op.vm_id {
            Some(id) => self.store.vm_by_id(id).await?,
            None => None,
        };
        let mut done = Vec::new();
        let mut finished = false;
        // Files that go once no disk row points to them.
        let mut files = intent.files.clone();
        match (op.kind.as_str(), &vm, &agent) {
            // A create that did not end is undone: no half-made VM stays, nor any disk
            // an import or a restore copied into it meanwhile.
            ("create", Some(vm), Some(agent)) | ("delete", Some(vm), Some(agent)) => {
                // A create that got as far as starting the VM left it running (and a
                // VM may have been started since): it ends first.
                if let Ok(s) = agent.get_vm(&vm.id).await {
                    if s.state.has_process() {
                        agent.destroy_vm(&vm.id).await?;
                    }
                }
                agent.forget_vm(&vm.id).await?;
                let had_nics = !self.store.nics_of(&vm.id).await?.is_empty();
                files.extend(self.store.disks_of(&vm.id).await?.iter().map(DiskFile::at));
                self.store.delete_vm(&vm.id).await?;
                if had_nics {
                    self.sync_networks().await?;
                }
                finished = op.kind == "delete";
                done.push(if finished {
                    format!("the deletion of VM {} was finished", op.target)
                } else {
                    format!("the half-made VM {} was removed", op.target)
                });
            }
            // A NIC added to a running VM: kept if its agent plugged it in (it is in
            // the VM's runtime spec), else its row goes (the agent took out what it had
            // plugged when it re-adopted the VM). A stopped VM's NIC is only its row.
            ("nic-add", Some(vm), Some(agent)) => match agent.get_vm(&vm.id).await {
                Ok(s) if s.state.has_process() => {
                    let plugged: Vec<&str> = s.nics.iter().map(|n| n.id.as_str()).collect();
                    let mut dropped = 0;
                    for n in self.store.nics_of(&vm.id).await? {
                        if !plugged.contains(&n.id.as_str()) {
                            self.store.delete_nic(&n.id).await?;
                            dropped += 1;
                        }
                    }
                    if dropped > 0 {
                        self.sync_networks().await?;
                        done.push("the NIC being plugged in was not kept".into());
                    } else {
                        finished = true;
                        done.push("the NIC was plugged in".into());
                    }
                }
                // The agent cannot say now (it may be coming back from the very crash
                // that left this): asked again later.
                Err(e) if !e.is_not_found() => return Ok(None),
                // Its row was written (the step after it) or not: the VM gets it at its
                // next start, or there is nothing.
                _ => {
                    finished = !op.step.is_empty();
                    if finished {
                        done.push("the VM does not run: it gets the NIC at its next start".into());
                    }
                }
            },
            // A restore over a VM: undone before its swap (the copies it names go, made
            // or being made, the VM keeps its own disks), finished once the swap began
            // (its intent then names the old disks' files too).
            ("restore-over", Some(vm), Some(_)) => {
                if op.step == "swapping" {
                    self.finish_swap(&vm.id, &intent).await?;
                    finished = true;
                    done.push("the restore was finished: the VM has the backup's disks".into());
                } else {
                    let copies: Vec<hostel_store::DiskRecord> = self
                        .store
                        .disks_of(&vm.id)
                        .await?
                        .into_iter()
                        .filter(|d| {
                            intent.restored.iter().any(|(id, _)| *id == d.id)
                                || (!intent.replaced.contains(&d.id)
                                    && intent.files.iter().any(|f| f.names(&d.path)))
                        })
                        .collect();
                    for d in &copies {
                        self.store.delete_disk(&d.id).await?;
                        files.push(DiskFile::at(d));
                    }
                    done.push(format!(
                        "the {} disk(s) copied in were removed: the VM keeps its disks as they were",
                        copies.len()
                    ));
                }
            }
            ("snapshot-create", Some(vm), Some(_)) => {
                let snap = intent.snapshot.clone().unwrap_or_default();
                let has_row = self
                    .store
                    .snapshots_of(&vm.id)
                    .await?
                    .iter()
                    .any(|s| s.name == snap);
                if !has_row {
                    // Taken on disk perhaps, never recorded: undone.
                    let _ = self.snapshot_call(vm, "delete", &snap, false).await;
                    done.push(format!("the snapshot {snap} was not kept"));
                }
            }
            ("snapshot-delete", Some(vm), Some(_)) => {
                let snap = intent.snapshot.clone().unwrap_or_default();
                if let Some(s) = self
                    .store
                    .snapshots_of(&vm.id)
                    .await?
                    .into_iter()
                    .find(|s| s.name == snap)
                {
                    // Deleting an internal snapshot again is harmless when it is gone.
                    let _ = self.snapshot_call(vm, "delete", &snap, false).await;
                    self.store.delete_snapshot(&s.id).await?;
                    finished = true;
                    done.push(format!("the deletion of snapshot {snap} was finished"));
                }
            }
            _ => {}
        }
        if let (Some(agent), Some(host)) = (&agent, &op.host_id) {
            if !files.is_empty() {
                let n = self.remove_unrecorded(host, agent, &files).await?;
                if n > 0 {
                    done.push(format!("{n} disk file(s) no disk pointed to were removed"));
                }
            }
        }
        if done.is_empty() {
            done.push("nothing was left to undo".into());
        }
        Ok(Some((finished, done.join("; "))))
    }

    /// The swap of a restore over a VM, as its journal says it: the old disks' rows go,
    /// and each copy takes its index (moved above every index in use first, so that no
    /// two disks ever hold one). Done again, it does the same.
    pub(crate) async fn finish_swap(&self, vm_id: &str, intent: &Intent) -> Res<()> {
        for d in self.store.disks_of(vm_id).await? {
            if intent.replaced.contains(&d.id) {
                self.store.delete_disk(&d.id).await?;
            }
        }
        let disks = self.store.disks_of(vm_id).await?;
        let copies: Vec<&(String, u32)> = intent
            .restored
            .iter()
            .filter(|(id, _)| disks.iter().any(|d| &d.id == id))
            .collect();
        let above = disks
            .iter()
            .map(|d| d.idx)
            .chain(copies.iter().map(|(_, i)| *i))
            .max()
            .unwrap_or(0)
            + 1;
        for (n, (id, _)) in copies.iter().enumerate() {
            self.store.set_disk_index(id, above + n as u32).await?;
        }
        for (id, index) in &copies {
            self.store.set_disk_index(id, *index).await?;
        }
        Ok(())
    }

    /// Settles `op` now, in the background (retried until its host answers), as if its
    /// controller had stopped: for an operation cut in a way only the journal finishes.
    pub(crate) async fn settle_now(self: &Arc<Self>, op: OpLog) {
        match self.store.operation(&op.id).await {
            Ok(Some(rec)) => self.settle_operations(vec![rec]),
            Ok(None) => {}
            Err(e) => tracing::warn!(op = %op.id, "cannot read the operation to settle: {e:#}"),
        }
    }

    /// Removes the files among `files` on `host` that no disk row points to.
    async fn remove_unrecorded(
        &self,
        host: &str,
        agent: &crate::agent_client::AgentClient,
        files: &[DiskFile],
    ) -> Res<usize> {
        let pools: Vec<wire::PoolSpec> = self
            .store
            .pools()
            .await?
            .into_iter()
            .filter(|p| p.host_id == host || p.shared)
            .map(|p| wire::PoolSpec {
                name: p.name,
                driver: p.driver.as_str().into(),
                path: p.path,
            })
            .collect();
        let listed = agent.list_files_in_pools(pools.clone()).await?;
        let rows = self.store.all_disks().await?;
        let mut removed = 0;
        for path in &listed.disks {
            let ours = files.iter().any(|f| f.names(path));
            if !ours || rows.iter().any(|d| &d.path == path) {
                continue;
            }
            let pool = pools
                .iter()
                .find(|p| std::path::Path::new(path).starts_with(&p.path))
                .cloned();
            agent
                .delete_disk(wire::DeleteDiskRequest {
                    path: path.clone(),
                    pool,
                })
                .await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// `hostel operations`: the journal, newest first. Admins see every operation,
    /// others those they asked for and those on VMs they may see.
    pub async fn list_operations(
        &self,
        ctx: &Ctx,
        state: Option<TaskState>,
        vm: Option<&str>,
        limit: u32,
    ) -> Res<OperationList> {
        if limit == 0 || limit > 10_000 {
            return Err(Error::invalid("limit", "--limit is between 1 and 10000"));
        }
        let mut f = OperationFilter {
            state,
            limit,
            ..Default::default()
        };
        if let Some(name) = vm {
            f.vm_id = Some(self.vm_named(ctx, name).await?.id);
        } else if !ctx.is_admin() {
            let c = ctx.caller()?;
            f.user_id = Some(c.user_id.clone());
            f.vm_ids = Some(
                self.store
                    .vms()
                    .await?
                    .into_iter()
                    .filter(|v| ctx.may_operate(v))
                    .map(|v| v.id)
                    .collect(),
            );
        }
        let ops = self.store.list_operations(&f).await?;
        Ok(OperationList {
            operations: ops
                .into_iter()
                .map(|o| Operation {
                    id: o.id,
                    kind: o.kind,
                    target: o.target,
                    host: o.host_id,
                    state: o.state,
                    step: (!o.step.is_empty()).then_some(o.step),
                    error: o.error,
                    started_at: o.started_at.to_string(),
                    finished_at: o.finished_at.map(|t| t.to_string()),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_disk_file_is_known_by_its_stem_and_nothing_longer() {
        let f = super::DiskFile::of("vm-1", 0);
        assert!(f.names("/p/vm-1-0.qcow2"));
        assert!(f.names("/p/vm-1-0"));
        assert!(!f.names("/p/vm-1-01.qcow2"));
        assert!(!f.names("/p/vm-1-1.qcow2"));
        let d = hostel_store::DiskRecord {
            id: "d".into(),
            vm_id: "vm-1".into(),
            idx: 0,
            path: "/p/vm-1-0.qcow2".into(),
            format: "qcow2".into(),
            size_mib: 1,
            image_id: None,
            pool_id: None,
        };
        assert!(super::DiskFile::at(&d).names("/p/vm-1-0.qcow2"));
        assert!(!super::DiskFile::at(&d).names("/q/vm-1-0.qcow2"));
    }
}
