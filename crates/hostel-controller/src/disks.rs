//! A VM's disks and snapshots: add, remove, grow; snapshots of all its disks at once,
//! with or without memory.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::agent::{self as wire, DiskSpec};
use hostel_api::public::*;
use hostel_model::{validate_name, ImageKind, Invalid, VmState};
use hostel_store::{new_id, now, DiskRecord, VmRecord};
use serde::{Deserialize, Serialize};

type Res<T> = crate::error::Result<T>;

/// What a snapshot with memory was taken with (`snapshots.hardware`): a revert loads the
/// memory into a QEMU with these devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SnapshotHardware {
    vcpus: u32,
    machine: Option<String>,
    cpu_model: Option<String>,
    guest_agent: bool,
    /// The NICs by MAC, in order.
    nics: Vec<String>,
    /// The disks by id, in order.
    disks: Vec<String>,
}

impl Controller {
    pub async fn disk_views(&self, ctx: &Ctx, name: &str) -> Res<Vec<DiskView>> {
        let vm = self.vm_named(ctx, name).await?;
        Ok(self.view(&vm, false).await?.disks)
    }

    pub async fn add_disk(&self, ctx: &Ctx, name: &str, req: AddDiskRequest) -> Res<DiskView> {
        ctx.params(
            serde_json::json!({"size_mib": req.size_mib, "image": req.image, "pool": req.pool}),
        );
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        self.require_free_space()?;
        let agent = self.host_agent(&vm)?;
        let image = match &req.image {
            Some(i) => {
                let img = self.store.image_by_name(i).await?.ok_or_else(|| {
                    Error::not_found("image", i, format!("there is no image named {i:?}"))
                })?;
                if img.kind != ImageKind::Disk {
                    return Err(Invalid::new(
                        "image",
                        format!("{i:?} is a kernel image, not a disk image: a disk can only be based on a disk image"),
                    )
                    .into());
                }
                Some(img)
            }
            None => None,
        };
        let size = match (req.size_mib, &image) {
            (Some(s), Some(img)) if s < img.virtual_size_mib => {
                return Err(Invalid::new(
                    "size",
                    format!(
                        "{} is smaller than the image ({})",
                        hostel_model::format_mib(s),
                        hostel_model::format_mib(img.virtual_size_mib)
                    ),
                )
                .into())
            }
            (Some(s), _) => s,
            (None, Some(img)) => img.virtual_size_mib,
            (None, None) => {
                return Err(
                    Invalid::new("size", "give the new disk's size, like --size 10G").into(),
                )
            }
        };
        hostel_model::check_disk_size("size", size)?;
        if vm.state == VmState::Saved {
            return Err(Invalid::new(
                "state",
                "a saved VM cannot change its devices (its saved state would no longer fit): restore it first",
            )
            .into());
        }
        let pool = match &req.pool {
            Some(p) => {
                let p = self.pool_named(p).await?;
                if !p.shared && Some(&p.host_id) != vm.host_id.as_ref() {
                    return Err(Invalid::new(
                        "pool",
                        format!(
                            "pool {:?} is on another host than VM {name:?}: pick a pool on host {}",
                            p.name,
                            vm.host_id.as_deref().unwrap_or("?")
                        ),
                    )
                    .into());
                }
                Some(p)
            }
            None => None,
        };
        let pool_spec = self.pool_spec(pool.as_ref().map(|p| p.id.as_str())).await?;
        let disks = self.store.disks_of(&vm.id).await?;
        let next = disks.iter().map(|d| d.idx + 1).max().unwrap_or(0);
        let idx = crate::disk_import::free_index(&disks, &vm.id, next);
        let _quota = self.charge_disk_growth(&vm, size, 0).await?;
        // The image as the VM's host holds it (copied there now if it has none).
        let base = match (&image, &vm.host_id) {
            (Some(i), Some(h)) => self.image_on(i, h, None).await?.path,
            _ => None,
        };
        let intent = crate::journal::Intent {
            files: vec![crate::journal::DiskFile::of(&vm.id, idx)],
            ..Default::default()
        };
        let op = self
            .journal(ctx, "disk-add", name, Some(&vm), &intent)
            .await?;
        let result: Res<()> = async {
            let made = agent
                .create_disk(wire::CreateDiskRequest {
                    vm_id: vm.id.clone(),
                    index: idx,
                    size_mib: size,
                    backing: image.as_ref().map(|i| wire::Backing {
                        path: base.clone().unwrap_or_else(|| i.path.clone()),
                        format: i.format.clone(),
                        image_id: i.id.clone(),
                    }),
                    pool: pool_spec.clone(),
                })
                .await?;
            let rec = DiskRecord {
                id: new_id("disk"),
                vm_id: vm.id.clone(),
                idx,
                path: made.path.clone(),
                format: made.format.clone(),
                size_mib: made.size_mib,
                image_id: image.as_ref().map(|i| i.id.clone()),
                pool_id: pool.as_ref().map(|p| p.id.clone()),
            };
            op.step("file-made").await?;
            if let Err(e) = self.store.insert_disk(&rec).await {
                self.remove_disk_files(&agent, std::slice::from_ref(&rec))
                    .await;
                return Err(e.into());
            }
            op.step("row-written").await?;
            if vm.state.has_process() {
                let spec = DiskSpec {
                    index: idx,
                    path: made.path,
                    format: made.format,
                    pool: pool_spec,
                };
                if let Err(e) = agent.add_disk(&vm.id, spec).await {
                    self.store.delete_disk(&rec.id).await?;
                    self.remove_disk_files(&agent, std::slice::from_ref(&rec))
                        .await;
                    return Err(
                        Error::from(e).context("hot-plugging the disk failed, so it was not kept")
                    );
                }
            }
            Ok(())
        }
        .await;
        op.end(&result).await;
        result?;
        let views = self.view(&vm, false).await?.disks;
        Ok(views
            .into_iter()
            .find(|d| d.index == idx)
            .expect("just added"))
    }

    pub(crate) async fn disk_at(&self, vm: &VmRecord, index: u32) -> Res<DiskRecord> {
        let name = &vm.name;
        self.store
            .disks_of(&vm.id)
            .await?
            .into_iter()
            .find(|d| d.idx == index)
            .ok_or_else(|| {
                Error::not_found(
                    "disk",
                    index.to_string(),
                    format!("VM {name:?} has no disk {index}: `hostel disk list {name}`"),
                )
            })
    }

    pub async fn remove_disk(&self, ctx: &Ctx, name: &str, index: u32) -> Res<()> {
        ctx.params(serde_json::json!({"disk": index}));
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        let agent = self.host_agent(&vm)?;
        let disk = self.disk_at(&vm, index).await?;
        let intent = crate::journal::Intent {
            files: vec![crate::journal::DiskFile::at(&disk)],
            ..Default::default()
        };
        let op = self
            .journal(ctx, "disk-remove", name, Some(&vm), &intent)
            .await?;
        let result: Res<()> = async {
            if vm.state.has_process() {
                agent.remove_disk(&vm.id, wire::DiskIndex { index }).await?;
            }
            op.step("detached").await?;
            // The row goes first: a file is never removed while a row points to it.
            self.store.delete_disk(&disk.id).await?;
            op.step("row-deleted").await?;
            self.remove_disk_files(&agent, std::slice::from_ref(&disk))
                .await;
            Ok(())
        }
        .await;
        op.end(&result).await;
        result
    }

    pub async fn resize_disk(
        &self,
        ctx: &Ctx,
        name: &str,
        req: ResizeDiskRequest,
    ) -> Res<DiskView> {
        ctx.params(serde_json::json!({"disk": req.disk, "size_mib": req.size_mib}));
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        self.require_free_space()?;
        let agent = self.host_agent(&vm)?;
        let disk = self.disk_at(&vm, req.disk).await?;
        hostel_model::check_disk_size("size", req.size_mib)?;
        if req.size_mib <= disk.size_mib {
            return Err(Invalid::new(
                "size",
                format!(
                    "{} is not larger than the disk ({}): disks only grow, shrinking would lose data",
                    hostel_model::format_mib(req.size_mib),
                    hostel_model::format_mib(disk.size_mib)
                ),
            )
            .into());
        }
        let grow = req.size_mib - disk.size_mib;
        let _quota = self.charge_disk_growth(&vm, grow, 0).await?;
        let body = if vm.state.has_process() {
            wire::ResizeDiskRequest {
                index: Some(disk.idx),
                path: None,
                size_mib: req.size_mib,
                pool: None,
                format: None,
            }
        } else {
            wire::ResizeDiskRequest {
                index: None,
                path: Some(disk.path.clone()),
                size_mib: req.size_mib,
                pool: self.pool_spec(disk.pool_id.as_deref()).await?,
                format: Some(disk.format.clone()),
            }
        };
        let op = self
            .journal_simple(ctx, "disk-resize", name, Some(&vm))
            .await?;
        let result: Res<()> = async {
            agent
                .resize_disk(wire::ResizeDiskArgs {
                    vm: Some(vm.id.clone()),
                    disk: body,
                })
                .await?;
            op.step("grown").await?;
            self.store.set_disk_size(&disk.id, req.size_mib).await?;
            Ok(())
        }
        .await;
        op.end(&result).await;
        result?;
        let views = self.view(&vm, false).await?.disks;
        Ok(views
            .into_iter()
            .find(|d| d.index == req.disk)
            .expect("exists"))
    }

    pub async fn snapshots(&self, ctx: &Ctx, name: &str) -> Res<Vec<Snapshot>> {
        let vm = self.vm_named(ctx, name).await?;
        Ok(self
            .store
            .snapshots_of(&vm.id)
            .await?
            .into_iter()
            .map(|s| Snapshot {
                name: s.name,
                with_memory: s.with_memory,
                created_at: s.created_at.to_string(),
            })
            .collect())
    }

    pub(crate) async fn snapshot_call(
        &self,
        vm: &VmRecord,
        action: &str,
        name: &str,
        memory: bool,
    ) -> Res<()> {
        let agent = self.host_agent(vm)?;
        let disks = self.spec_of(vm).await?.disks;
        agent
            .snapshot(
                &vm.id,
                wire::SnapshotRequest {
                    action: action.into(),
                    name: name.into(),
                    disks,
                    memory,
                },
            )
            .await?;
        Ok(())
    }

    pub async fn create_snapshot(
        &self,
        ctx: &Ctx,
        name: &str,
        req: CreateSnapshotRequest,
    ) -> Res<Snapshot> {
        ctx.params(serde_json::json!({"snapshot": req.name, "memory": req.memory}));
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        self.require_free_space()?;
        if self.store.disks_of(&vm.id).await?.is_empty() {
            return Err(Invalid::new(
                "vm",
                format!("VM {name:?} has no disk to snapshot: add one with `hostel disk add`"),
            )
            .into());
        }
        let state = vm.state;
        if state == VmState::Saved {
            return Err(Invalid::new(
                "state",
                "a saved VM cannot be snapshotted: restore it first",
            )
            .into());
        }
        if req.memory && !state.has_process() {
            return Err(Invalid::new(
                "memory",
                format!("a snapshot with memory needs a running VM; {name:?} is {state}"),
            )
            .into());
        }
        let snap = req.name.clone().unwrap_or_else(|| {
            format!(
                "snap-{}",
                now()
                    .to_string()
                    .chars()
                    .filter(|c| c.is_ascii_digit())
                    .take(14)
                    .collect::<String>()
            )
        });
        validate_name("name", &snap)?;
        if self
            .store
            .snapshots_of(&vm.id)
            .await?
            .iter()
            .any(|s| s.name == snap)
        {
            return Err(Error::conflict_field(
                "name",
                format!("VM {name:?} has a snapshot {snap:?} already"),
            ));
        }
        let _quota = self.charge_snapshot(&vm, req.memory).await?;
        let hardware = match req.memory {
            true => Some(
                serde_json::to_string(&self.hardware_of(&vm).await?.0)
                    .map_err(anyhow::Error::from)?,
            ),
            false => None,
        };
        let intent = crate::journal::Intent {
            snapshot: Some(snap.clone()),
            ..Default::default()
        };
        let op = self
            .journal(ctx, "snapshot-create", name, Some(&vm), &intent)
            .await?;
        let rec = hostel_store::SnapshotRecord {
            id: new_id("snap"),
            vm_id: vm.id.clone(),
            name: snap.clone(),
            with_memory: req.memory,
            created_at: now(),
            hardware,
        };
        let result: Res<()> = async {
            self.snapshot_call(&vm, "create", &snap, req.memory).await?;
            op.step("taken").await?;
            if let Err(e) = self.store.insert_snapshot(&rec).await {
                let _ = self.snapshot_call(&vm, "delete", &snap, false).await;
                return Err(e.into());
            }
            Ok(())
        }
        .await;
        op.end(&result).await;
        result?;
        Ok(Snapshot {
            name: snap,
            with_memory: req.memory,
            created_at: rec.created_at.to_string(),
        })
    }

    pub(crate) fn find_snapshot(
        snaps: Vec<hostel_store::SnapshotRecord>,
        vm: &str,
        snap: &str,
    ) -> Res<hostel_store::SnapshotRecord> {
        snaps.into_iter().find(|s| s.name == snap).ok_or_else(|| {
            Error::not_found(
                "snapshot",
                snap,
                format!("VM {vm:?} has no snapshot {snap:?}: `hostel snapshot list {vm}`"),
            )
        })
    }

    /// Brings the disks back to the snapshot; one with memory also resumes the VM there.
    pub async fn revert_snapshot(&self, ctx: &Ctx, name: &str, snap: &str) -> Res<Vm> {
        ctx.params(serde_json::json!({"snapshot": snap}));
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        let s = Self::find_snapshot(self.store.snapshots_of(&vm.id).await?, name, snap)?;
        let state = vm.state;
        if !matches!(state, VmState::Stopped | VmState::Crashed) {
            return Err(Invalid::new(
                "state",
                format!("cannot revert a VM that is {state}: stop it first (`hostel destroy` or `hostel shutdown`)"),
            )
            .into());
        }
        if s.with_memory {
            // Resuming is a start: the lease and the quota apply.
            if vm
                .lease_expires_at
                .is_some_and(|e| e <= hostel_store::now())
            {
                return Err(Invalid::new(
                    "lease",
                    format!("the lease of {name:?} has ended: `hostel renew {name}` first"),
                )
                .into());
            }
            // Its memory loads only into the devices it was taken with: the VM gets back
            // its vCPUs, platform and guest agent port of then; NICs and disks changed
            // since are refused, said how.
            let before = vm.clone();
            let mut vm = vm;
            let hardware: Option<SnapshotHardware> = s
                .hardware
                .as_deref()
                .and_then(|h| serde_json::from_str(h).ok());
            if let Some(then) = &hardware {
                self.check_hardware(&vm, snap, then).await?;
                vm.vcpus = then.vcpus;
                vm.machine = then.machine.clone().or(vm.machine);
                vm.cpu_model = then.cpu_model.clone().or(vm.cpu_model);
                vm.guest_agent = then.guest_agent;
            } else {
                // Taken before snapshots recorded their hardware, and so before VMs had
                // a guest agent port: its memory has none.
                vm.guest_agent = false;
            }
            let _quota = self.charge_start(&vm).await?;
            // Recorded before the start, so that the record says what runs; put back if
            // the start fails.
            let set = hardware.is_some() || before.guest_agent != vm.guest_agent;
            if set {
                self.set_hardware(&vm).await?;
            }
            let started = async {
                let agent = self.host_agent(&vm)?;
                let spec = self.spec_of(&vm).await?;
                let status = agent
                    .start_vm(
                        &vm.id,
                        wire::StartRequest {
                            spec,
                            restore_from: None,
                            load_snapshot: Some(snap.to_string()),
                        },
                    )
                    .await?;
                Ok::<_, Error>(status)
            }
            .await;
            let status = match started {
                Ok(s) => s,
                Err(e) => {
                    if set {
                        let _ = self.set_hardware(&before).await;
                    }
                    return Err(e);
                }
            };
            self.sync_status(&vm.id, &status).await?;
        } else {
            self.snapshot_call(&vm, "revert", snap, false).await?;
        }
        hostel_faults::point("controller.snapshot-revert.reverted").await;
        let vm = self.vm_named(ctx, name).await?;
        self.view(&vm, true).await
    }

    /// Records `vm`'s vCPUs, platform and guest agent port as its own.
    async fn set_hardware(&self, vm: &VmRecord) -> Res<()> {
        self.store.set_vm_vcpus(&vm.id, vm.vcpus).await?;
        self.store
            .set_vm_platform(&vm.id, vm.machine.as_deref(), vm.cpu_model.as_deref())
            .await?;
        self.store
            .set_vm_guest_agent(&vm.id, vm.guest_agent)
            .await?;
        Ok(())
    }

    /// What `vm` runs with now, as a snapshot with memory records it, and its disks.
    async fn hardware_of(&self, vm: &VmRecord) -> Res<(SnapshotHardware, Vec<DiskRecord>)> {
        let disks = self.store.disks_of(&vm.id).await?;
        let hw = SnapshotHardware {
            vcpus: vm.vcpus,
            machine: vm.machine.clone(),
            cpu_model: vm.cpu_model.clone(),
            guest_agent: vm.guest_agent,
            nics: self
                .store
                .nics_of(&vm.id)
                .await?
                .into_iter()
                .map(|n| n.mac)
                .collect(),
            disks: disks.iter().map(|d| d.id.clone()).collect(),
        };
        Ok((hw, disks))
    }

    /// Refuses a revert to memory taken with other NICs or disks than `vm` has now.
    async fn check_hardware(&self, vm: &VmRecord, snap: &str, then: &SnapshotHardware) -> Res<()> {
        let (now, disks) = self.hardware_of(vm).await?;
        let name = &vm.name;
        if now.nics != then.nics {
            let list = |m: &[String]| match m.is_empty() {
                true => "none".to_string(),
                false => m.join(", "),
            };
            return Err(Error::conflict(format!(
                "VM {name:?} had the NICs {} when snapshot {snap:?} was taken and has {} \
                 now: its memory needs the NICs it was taken with. Put them back as they \
                 were (`hostel nic add` / `hostel nic remove`), or revert to a snapshot \
                 without memory",
                list(&then.nics),
                list(&now.nics)
            )));
        }
        if now.disks != then.disks {
            let added: Vec<String> = disks
                .iter()
                .filter(|d| !then.disks.contains(&d.id))
                .map(|d| d.idx.to_string())
                .collect();
            let how = match added.is_empty() {
                false => format!(
                    "the disk(s) {} added since hold no part of it: remove them \
                     (`hostel disk remove {name} INDEX`)",
                    added.join(", ")
                ),
                true => "a disk it was taken with is gone".to_string(),
            };
            return Err(Error::conflict(format!(
                "VM {name:?} had {} disk(s) when snapshot {snap:?} was taken and has {} now: \
                 {how}, or revert to a snapshot without memory",
                then.disks.len(),
                now.disks.len()
            )));
        }
        Ok(())
    }

    pub async fn delete_snapshot(&self, ctx: &Ctx, name: &str, snap: &str) -> Res<()> {
        ctx.params(serde_json::json!({"snapshot": snap}));
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        let s = Self::find_snapshot(self.store.snapshots_of(&vm.id).await?, name, snap)?;
        let intent = crate::journal::Intent {
            snapshot: Some(snap.to_string()),
            ..Default::default()
        };
        let op = self
            .journal(ctx, "snapshot-delete", name, Some(&vm), &intent)
            .await?;
        let result: Res<()> = async {
            self.snapshot_call(&vm, "delete", snap, false).await?;
            op.step("deleted-on-disk").await?;
            self.store.delete_snapshot(&s.id).await?;
            Ok(())
        }
        .await;
        op.end(&result).await;
        result
    }
}
