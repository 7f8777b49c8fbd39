//! Copying a file on a VM's host into its pool as one of its disks (a Xen guest's disk,
//! a backup's), or bytes sent to it (an imported archive's disk), journaled as a disk add, charged to the VM's owner like any disk, its
//! progress reported into a task.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_api::public::TaskState;
use hostel_store::{new_id, DiskRecord, VmRecord};

type Res<T> = crate::error::Result<T>;

/// Where a copy's progress goes: `task`'s bar from `from` over `width`, its message
/// after `label`.
pub(crate) struct Report<'a> {
    pub task: &'a str,
    pub from: f64,
    pub width: f64,
    pub label: String,
}

/// The first disk index from `from` on that no disk of VM `vm_id` has, as its index or
/// in its file's name (`VMID-N.qcow2`, or a btrfs pool's `VMID-N/`): a restore over a VM
/// leaves disks whose file names no longer follow their indexes.
pub(crate) fn free_index(disks: &[DiskRecord], vm_id: &str, from: u32) -> u32 {
    let stem_of = |d: &DiskRecord| -> Option<u32> {
        let prefix = format!("{vm_id}-");
        d.path
            .split('/')
            .filter_map(|part| part.strip_prefix(prefix.as_str()))
            .filter_map(|rest| rest.split('.').next())
            .find_map(|n| n.parse().ok())
    };
    let taken: std::collections::HashSet<u32> = disks
        .iter()
        .flat_map(|d| [Some(d.idx), stem_of(d)])
        .flatten()
        .collect();
    (from..).find(|i| !taken.contains(i)).expect("a free index")
}

/// The row of a disk file made for `vm` from other bytes (no image under it).
fn disk_record(
    vm: &VmRecord,
    idx: u32,
    pool_id: Option<String>,
    path: String,
    format: String,
    size_mib: u64,
) -> DiskRecord {
    DiskRecord {
        id: new_id("disk"),
        vm_id: vm.id.clone(),
        idx,
        path,
        format,
        size_mib,
        image_id: None,
        pool_id,
    }
}

impl Controller {
    /// Copies `req.source` in as disk `req.index` of `vm` (in pool `pool_id`), keeping
    /// it only once it is recorded and paid for (`going_mib`: the sizes of the VM's
    /// disks that go when the operation ends, as a restore over it replaces them).
    pub(crate) async fn copy_in_disk(
        &self,
        ctx: &Ctx,
        vm: &VmRecord,
        req: wire::ImportDiskRequest,
        pool_id: Option<String>,
        report: Report<'_>,
        going_mib: u64,
    ) -> Res<DiskRecord> {
        use futures::StreamExt;
        let agent = self.host_agent(vm)?;
        let idx = req.index;
        let source = req.source.clone();
        let op = self.journal_disk_add(ctx, vm, idx).await?;
        let result: Res<DiskRecord> = async {
            let mut lines = agent.import_disk(req).await?;
            let mut made = None;
            while let Some(line) = lines.next().await {
                match line.map_err(Error::from)? {
                    wire::ImageLine::Progress { progress, message } => {
                        let _ = self
                            .store
                            .update_task(
                                report.task,
                                TaskState::Running,
                                report.from + report.width * progress,
                                &format!("{}: {message}", report.label),
                                None,
                            )
                            .await;
                    }
                    wire::ImageLine::Done { done } => made = Some(done),
                    wire::ImageLine::Error { error } => {
                        return Err(Error::conflict(format!("{source}: {error}")))
                    }
                }
            }
            let made = made.ok_or_else(|| {
                Error::unavailable(format!(
                    "{source}: the host's agent ended the copy without a result"
                ))
            })?;
            let rec = disk_record(
                vm,
                idx,
                pool_id,
                made.path,
                made.format,
                made.virtual_size_mib,
            );
            self.keep_disk(vm, &agent, rec, &op, going_mib).await
        }
        .await;
        op.end(&result).await;
        result
    }

    /// Stores `body` (a disk file's bytes, of `req.format`) as disk `req.index` of `vm`
    /// through its host's agent (`PutDisk`), keeping it only once it is recorded and paid
    /// for.
    pub(crate) async fn put_in_disk(
        &self,
        ctx: &Ctx,
        vm: &VmRecord,
        req: wire::PutDiskRequest,
        body: wire::ByteStream<crate::agent_client::AgentCallError>,
        pool_id: Option<String>,
    ) -> Res<DiskRecord> {
        let agent = self.host_agent(vm)?;
        let idx = req.index;
        let op = self.journal_disk_add(ctx, vm, idx).await?;
        let result: Res<DiskRecord> = async {
            let made = agent.put_disk(req, body).await?;
            let rec = disk_record(vm, idx, pool_id, made.path, made.format, made.size_mib);
            self.keep_disk(vm, &agent, rec, &op, 0).await
        }
        .await;
        op.end(&result).await;
        result
    }

    /// The journal row of adding disk `idx` to `vm` (its file named, for recovery).
    async fn journal_disk_add(
        &self,
        ctx: &Ctx,
        vm: &VmRecord,
        idx: u32,
    ) -> Res<crate::journal::OpLog> {
        let intent = crate::journal::Intent {
            files: vec![crate::journal::DiskFile::of(&vm.id, idx)],
            ..Default::default()
        };
        self.journal(ctx, "disk-add", &vm.name, Some(vm), &intent)
            .await
    }

    /// A disk file just made for `vm`: charged to its owner (as if the VM's disks of
    /// `going_mib` were gone) and recorded, else removed.
    async fn keep_disk(
        &self,
        vm: &VmRecord,
        agent: &crate::agent_client::AgentClient,
        rec: DiskRecord,
        op: &crate::journal::OpLog,
        going_mib: u64,
    ) -> Res<DiskRecord> {
        op.step("file-made").await?;
        // The owner pays for it like any disk: over quota, it is not kept.
        let kept = match self.charge_disk_growth(vm, rec.size_mib, going_mib).await {
            Ok(_quota) => self.store.insert_disk(&rec).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = kept {
            self.remove_disk_files(agent, std::slice::from_ref(&rec))
                .await;
            return Err(e);
        }
        op.step("row-written").await?;
        Ok(rec)
    }
}
