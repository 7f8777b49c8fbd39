//! Creating a VM: placement, boot planning, quota, disks, NICs; a failed create removes
//! everything it made, rows before files.

use crate::agent_client::AgentClient;
use crate::boot::{BootConfig, CloudConfig};
use crate::context::Ctx;
use crate::error::Error;
use crate::journal::OpLog;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::agent::{self as wire};
use hostel_api::public::*;
use hostel_model::{validate_name, ImageKind, Invalid, Sizing, VmState};
use hostel_store::{new_id, now, DiskRecord, ImageRecord, VmRecord};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

impl Controller {
    pub async fn create_vm(self: &Arc<Self>, ctx: &Ctx, req: CreateVmRequest) -> Res<Vm> {
        Ok(self.create_vm_made(ctx, req, false).await?.0)
    }

    /// A VM whose disks are added after it is made (an import, a restore), so it may have
    /// nothing to boot yet. Its create's journal entry is returned open: the caller steps
    /// it (`disk-copied`) as each disk comes in and ends it when they are all in; a crash
    /// before then removes the VM with every disk it got (`journal.rs`, "create").
    pub(crate) async fn create_vm_with(
        self: &Arc<Self>,
        ctx: &Ctx,
        req: CreateVmRequest,
    ) -> Res<(Vm, OpLog)> {
        let (vm, op) = self.create_vm_made(ctx, req, true).await?;
        let op = op.ok_or_else(|| Error::internal("a create whose disks follow ended early"))?;
        Ok((vm, op))
    }

    /// [`Controller::create_vm`]; with `disks_follow`, the create's journal entry is
    /// left open and returned when it succeeds.
    async fn create_vm_made(
        self: &Arc<Self>,
        ctx: &Ctx,
        req: CreateVmRequest,
        disks_follow: bool,
    ) -> Res<(Vm, Option<OpLog>)> {
        ctx.target(&req.name, None);
        ctx.params(serde_json::json!({"image": req.image, "memory_mib": req.memory_mib, "max_memory_mib": req.max_memory_mib, "vcpus": req.vcpus, "disk_mib": req.disk_mib, "start": req.start}));
        validate_name("name", &req.name)?;
        if let Some(g) = &req.anti_affinity {
            validate_name("anti_affinity", g)?;
        }
        for t in &req.host_tags {
            validate_name("host_tags", t)?;
        }
        // Kept in the VM's record: no longer than a kernel takes.
        if req
            .cmdline
            .as_ref()
            .is_some_and(|c| c.chars().count() > 2048)
        {
            return Err(Invalid::new(
                "cmdline",
                "the kernel command line is longer than 2,048 characters, which x86 Linux \
                 takes at most: shorten it",
            )
            .into());
        }
        self.require_free_space()?;
        let sizing = Sizing {
            memory_mib: req.memory_mib,
            max_memory_mib: req.max_memory_mib.unwrap_or(req.memory_mib),
            vcpus: req.vcpus,
            max_vcpus: req.max_vcpus.unwrap_or(req.vcpus),
        };
        let pool = match &req.pool {
            Some(p) => Some(self.pool_named(p).await?),
            None => None,
        };
        let image = match &req.image {
            Some(name) => Some(self.store.image_by_name(name).await?.ok_or_else(|| {
                Error::not_found(
                    "image",
                    name,
                    format!(
                        "there is no image named {name:?}: `hostel image list` shows the images \
                         there are, `hostel image build tiny` makes one"
                    ),
                )
            })?),
            None => None,
        };
        // Held until the VM is recorded: a host is not removed under a VM placed on it.
        let _placing = self.hosts_lock.read().await;
        let mut placement = None;
        // A VM in a host's own pool goes to that host; one in a shared pool, anywhere.
        let (host, host_mem) = match pool.as_ref().filter(|p| !p.shared) {
            Some(p) => {
                let h = self
                    .store
                    .hosts()
                    .await?
                    .into_iter()
                    .find(|h| h.id == p.host_id)
                    .filter(|h| self.is_online(&h.id))
                    .ok_or_else(|| {
                        Error::unavailable(format!(
                            "pool {:?} is on host {}, which is not connected",
                            p.name, p.host_id
                        ))
                    })?;
                (h.id, h.memory_mib)
            }
            None => {
                // A VM bigger than every connected host: said as such, not as "no room".
                let biggest = self
                    .store
                    .hosts()
                    .await?
                    .into_iter()
                    .filter(|h| self.is_online(&h.id))
                    .map(|h| h.memory_mib)
                    .max();
                if let Some(b) = biggest {
                    sizing.validate(b)?;
                }
                let (h, mem, why) = self
                    .place(&crate::placement::Ask {
                        need_mib: if req.start { sizing.max_memory_mib } else { 0 },
                        tags: &req.host_tags,
                        anti_affinity: req.anti_affinity.as_deref(),
                        exclude: None,
                        only: None,
                        vm_id: None,
                        unfit: &[],
                    })
                    .await?;
                placement = Some(why);
                (h, mem)
            }
        };
        sizing.validate(host_mem)?;
        // Pinned now: the VM keeps its machine type and CPU model wherever it moves.
        let host_rec = self.host_named(&host).await?;
        let cpu_model = self
            .choose_cpu_model(req.cpu_model.as_deref(), &host_rec)
            .await?;
        let machine = Some(host_rec.platform.machine.clone()).filter(|m| !m.is_empty());
        if let Some(d) = req.disk_mib {
            hostel_model::check_disk_size("disk", d)?;
        }
        if let Some(days) = req.lease_days {
            if !(1..=366).contains(&days) {
                return Err(Invalid::new(
                    "lease_days",
                    format!(
                        "{days} days: a lease lasts from 1 to 366 days (`hostel renew` extends it)"
                    ),
                )
                .into());
            }
        }
        let (boot_cfg, cdrom_image) = self
            .plan_boot(ctx, &req, image.as_ref(), disks_follow)
            .await?;
        let cloud = CloudConfig {
            seed: req.seed.unwrap_or_else(|| {
                boot_cfg.kernel.is_none()
                    && image
                        .as_ref()
                        .map(|i| i.kind == ImageKind::Disk)
                        .unwrap_or(false)
            }),
            ssh_keys: req
                .ssh_keys
                .iter()
                .map(|k| crate::boot::check_ssh_key(k))
                .collect::<Result<_, _>>()?,
            password_hash: req
                .password
                .as_deref()
                .map(crate::boot::hash_password)
                .transpose()?,
        };
        let pool_spec = self.pool_spec(pool.as_ref().map(|p| p.id.as_str())).await?;
        if self.store.vm_by_name(&req.name).await?.is_some() {
            return Err(Error::conflict_field(
                "name",
                format!(
                    "a VM named {:?} exists already: choose another name, or delete that VM first",
                    req.name
                ),
            ));
        }
        let agent = self.agent(&host).ok_or_else(|| {
            Error::unavailable(format!(
                "host {host} went away while the VM was placed on it: try again"
            ))
        })?;
        // The host's copies of what the VM boots from, copied there now if it has none.
        let image_files = match &image {
            Some(i) => Some(self.image_on(i, &host, None).await?),
            None => None,
        };
        if let Some(cd) = &cdrom_image {
            self.image_on(cd, &host, None).await?;
        }
        let vm_id = new_id("vm");
        ctx.target(&req.name, Some(&vm_id));
        let nic_reqs = match &req.nics {
            Some(n) => n.clone(),
            None => match self.store.network_by_name(crate::DEFAULT_NETWORK).await? {
                Some(_) => vec![NicRequest {
                    network: crate::DEFAULT_NETWORK.into(),
                    ip: None,
                    mac: None,
                }],
                None => Vec::new(),
            },
        };
        let mut nics: Vec<hostel_store::NicRecord> = Vec::new();
        for (i, r) in nic_reqs.iter().enumerate() {
            let planned = self.plan_nic(ctx, &vm_id, i as u32, r, &nics).await?;
            if let Some(dup) = nics.iter().find(|n| n.mac == planned.mac) {
                return Err(Error::conflict_field(
                    "mac",
                    format!("MAC {} is given twice", dup.mac),
                ));
            }
            nics.push(planned);
        }
        // The disk: an overlay of a disk image (at least the image's size), or a blank one.
        let mut disk_plan: Option<wire::CreateDiskRequest> = None;
        if let Some(image) = image.as_ref().filter(|i| i.kind == ImageKind::Disk) {
            let size = req.disk_mib.unwrap_or(image.virtual_size_mib);
            if size < image.virtual_size_mib {
                return Err(Invalid::new(
                    "disk",
                    format!(
                        "{} is smaller than the image {:?} ({}): ask for at least that much",
                        hostel_model::format_mib(size),
                        image.name,
                        hostel_model::format_mib(image.virtual_size_mib)
                    ),
                )
                .into());
            }
            disk_plan = Some(wire::CreateDiskRequest {
                vm_id: vm_id.clone(),
                index: 0,
                size_mib: size,
                backing: Some(wire::Backing {
                    path: image_files
                        .as_ref()
                        .and_then(|c| c.path.clone())
                        .unwrap_or_else(|| image.path.clone()),
                    format: image.format.clone(),
                    image_id: image.id.clone(),
                }),
                pool: pool_spec.clone(),
            });
        } else if let Some(size) = req.disk_mib {
            disk_plan = Some(wire::CreateDiskRequest {
                vm_id: vm_id.clone(),
                index: 0,
                size_mib: size,
                backing: None,
                pool: pool_spec.clone(),
            });
        }
        // Quota, charged to the caller, checked and held until the VM is recorded (and
        // started), so that concurrent creates cannot pass a limit together.
        let (owner_user_id, owner_group_id) = self.create_owner(ctx, req.owner.as_deref()).await?;
        let owner = Some(match (&owner_user_id, &owner_group_id) {
            (_, Some(g)) => format!("group:{g}"),
            (u, None) => format!("user:{}", u.as_deref().unwrap_or_default()),
        });
        let disk_mib = disk_plan.as_ref().map(|p| p.size_mib).unwrap_or(0);
        let _quota = self
            .charge(
                owner.as_deref(),
                &crate::quota::Charge {
                    ram_mib: if req.start { sizing.max_memory_mib } else { 0 },
                    disk_mib,
                    vms: 1,
                    vms_running: req.start as u64,
                    vcpus: if req.start { sizing.vcpus as u64 } else { 0 },
                    nics: nics.len() as u64,
                    port_forwards: 0,
                    snapshots: 0,
                    vm_max_ram_mib: sizing.max_memory_mib,
                    vm_disk_mib: disk_mib,
                },
            )
            .await?;
        // From here on the host and the database change: journaled, so that a crash
        // midway is undone at the next start (`journal.rs`).
        let intent = crate::journal::Intent {
            files: disk_plan
                .iter()
                .map(|_| crate::journal::DiskFile::of(&vm_id, 0))
                .collect(),
            ..Default::default()
        };
        let op = self
            .journal_at(ctx, "create", &req.name, None, Some(&host), &intent)
            .await?;
        let result: Res<Vm> = async {
            let mut disks = Vec::new();
            if let Some(plan) = &disk_plan {
                let made = agent.create_disk(plan.clone()).await?;
                disks.push(DiskRecord {
                    id: new_id("disk"),
                    vm_id: vm_id.clone(),
                    idx: 0,
                    path: made.path,
                    format: made.format,
                    size_mib: made.size_mib,
                    image_id: plan
                        .backing
                        .as_ref()
                        .and(image.as_ref())
                        .map(|i| i.id.clone()),
                    pool_id: pool.as_ref().map(|p| p.id.clone()),
                });
            }
            let record = VmRecord {
                id: vm_id.clone(),
                name: req.name.clone(),
                host_id: Some(host.clone()),
                image_id: image.as_ref().map(|i| i.id.clone()),
                memory_mib: sizing.memory_mib,
                max_memory_mib: sizing.max_memory_mib,
                vcpus: sizing.vcpus,
                max_vcpus: sizing.max_vcpus,
                state: VmState::Stopped,
                state_reason: Some("created".into()),
                on_poweroff: req.on_poweroff,
                on_reboot: req.on_reboot,
                on_crash: req.on_crash,
                saved_path: None,
                pid: None,
                created_at: now(),
                updated_at: now(),
                cdrom_image_id: cdrom_image.map(|i| i.id),
                boot_json: Some(serde_json::to_string(&boot_cfg).map_err(anyhow::Error::from)?),
                cloud_json: Some(serde_json::to_string(&cloud).map_err(anyhow::Error::from)?),
                owner_user_id: None,
                owner_group_id: None,
                admin_group_id: None,
                lease_expires_at: req
                    .lease_days
                    .or(self.cfg.default_lease_days)
                    .map(crate::lease::in_days),
                anti_affinity: req.anti_affinity.clone(),
                machine,
                cpu_model: Some(cpu_model),
                guest_agent: true,
            };
            op.step("disks-made").await?;
            let mut record = record;
            record.owner_user_id = owner_user_id;
            record.owner_group_id = owner_group_id;
            if let Err(e) = self.store.insert_vm(&record, &disks).await {
                self.remove_disk_files(&agent, &disks).await;
                if hostel_store::is_unique_violation(&e) {
                    return Err(Error::conflict_field(
                        "name",
                        format!(
                            "a VM named {:?} exists already: choose another name",
                            req.name
                        ),
                    ));
                }
                return Err(e.into());
            }
            for nic in &nics {
                if let Err(e) = self.store.insert_nic(nic).await {
                    let _ = self.store.delete_vm(&vm_id).await;
                    self.remove_disk_files(&agent, &disks).await;
                    if hostel_store::is_unique_violation(&e) {
                        return Err(Error::conflict(
                            "an IP or MAC was taken meanwhile; nothing was created: try again",
                        ));
                    }
                    return Err(e.into());
                }
            }
            op.made_vm(&vm_id, &host).await?;
            op.step("rows-written").await?;
            if !nics.is_empty() {
                if let Err(e) = self.sync_networks().await {
                    let _ = self.store.delete_vm(&vm_id).await;
                    self.remove_disk_files(&agent, &disks).await;
                    let _ = self.sync_networks().await;
                    return Err(
                        e.context("setting up the VM's network failed, so nothing was kept")
                    );
                }
            }
            op.step("networks-set").await?;
            let mut started = None;
            if req.start {
                let _g = self.lock_vm(&vm_id).await;
                match self.start_locked(&record, None).await {
                    Ok(status) => started = Some(status),
                    Err(e) => {
                        // A failed create removes everything it made.
                        let _ = agent.forget_vm(&vm_id).await;
                        let _ = self.store.delete_vm(&vm_id).await;
                        self.remove_disk_files(&agent, &disks).await;
                        let _ = self.sync_networks().await;
                        return Err(e.context(
                            "the VM was created but could not start, so nothing was kept",
                        ));
                    }
                }
            }
            let vm = self.vm_named(ctx, &req.name).await?;
            // What runs is what the start just answered: no second call to the host.
            let mut view = self.view_with(&vm, true, started).await?;
            if req.explain {
                view.placement = placement;
            }
            Ok(view)
        }
        .await;
        match result {
            Ok(vm) if disks_follow => Ok((vm, Some(op))),
            result => {
                op.end(&result).await;
                result.map(|vm| (vm, None))
            }
        }
    }

    /// How a new VM boots: checks the firmware, CD-ROM and kernel asked for.
    pub(crate) async fn plan_boot(
        &self,
        ctx: &Ctx,
        req: &CreateVmRequest,
        image: Option<&ImageRecord>,
        disks_follow: bool,
    ) -> Res<(BootConfig, Option<ImageRecord>)> {
        let abs = |field: &str, p: &str| -> Result<String, Invalid> {
            if p.starts_with('/') && !p.split('/').any(|c| c == "..") {
                Ok(p.to_string())
            } else {
                Err(Invalid::new(
                    field,
                    format!("{p:?} is not an absolute path: give the file's full path on the host"),
                ))
            }
        };
        let mut bc = BootConfig {
            firmware: req.firmware,
            ..Default::default()
        };
        // Files on the host are for admins: a user could read any of them into a guest.
        let host_file = req.kernel.is_some()
            || req.initrd.is_some()
            || req.cdrom.as_deref().is_some_and(|c| c.starts_with('/'));
        if host_file && !ctx.is_admin() {
            return Err(Error::forbidden(
                "only an admin may boot files from the host (--kernel, --initrd, --cdrom FILE): \
                 boot an image from the library instead (`hostel image list`)",
            ));
        }
        if let Some(k) = &req.kernel {
            bc.kernel = Some(abs("kernel", k)?);
            bc.initrd = req
                .initrd
                .as_deref()
                .map(|i| abs("initrd", i))
                .transpose()?;
            bc.cmdline = req.cmdline.clone();
            if req.firmware == Firmware::Uefi {
                return Err(Invalid::new(
                    "firmware",
                    "a VM booting its own kernel (--kernel) is started by QEMU, not by a \
                     firmware: leave --firmware out",
                )
                .into());
            }
        } else if req.initrd.is_some() || req.cmdline.is_some() {
            return Err(Invalid::new(
                "kernel",
                "--initrd and --cmdline go with --kernel: give the kernel too",
            )
            .into());
        }
        let mut cdrom_image = None;
        if let Some(cd) = &req.cdrom {
            match self.store.image_by_name(cd).await? {
                Some(img) if img.kind == ImageKind::Disk => cdrom_image = Some(img),
                Some(_) => {
                    return Err(Invalid::new(
                        "cdrom",
                        format!("{cd:?} is a kernel image, not an ISO or disk image"),
                    )
                    .into())
                }
                None if cd.starts_with('/') => bc.cdrom_path = Some(abs("cdrom", cd)?),
                None => {
                    return Err(Error::not_found(
                        "image",
                        cd,
                        format!(
                            "there is no image named {cd:?}, and it is not an absolute path: \
                             give an image's name (`hostel image list`) or an ISO file's full path"
                        ),
                    ))
                }
            }
        }
        if image.is_none() && bc.kernel.is_none() && req.cdrom.is_none() && !disks_follow {
            return Err(Invalid::new(
                "image",
                "nothing to boot: give an image, or --cdrom ISO (with --disk SIZE to install \
                 onto), or --kernel FILE",
            )
            .into());
        }
        if let Some(img) = image {
            if img.kind == ImageKind::DirectKernel && req.firmware == Firmware::Uefi {
                return Err(Invalid::new(
                    "firmware",
                    format!(
                        "image {:?} is a kernel QEMU boots directly: --firmware does not apply",
                        img.name
                    ),
                )
                .into());
            }
        }
        Ok((bc, cdrom_image))
    }

    pub(crate) async fn pool_named(&self, name: &str) -> Res<hostel_store::PoolRecord> {
        self.store.pool_by_name(name).await?.ok_or_else(|| {
            Error::not_found(
                "pool",
                name,
                format!(
                    "there is no pool named {name:?}: `hostel pool list` shows them, \
                     `hostel pool create` makes one"
                ),
            )
        })
    }

    pub(crate) async fn remove_disk_files(&self, agent: &AgentClient, disks: &[DiskRecord]) {
        for d in disks {
            let pool = match self.pool_spec(d.pool_id.as_deref()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(path = %d.path, "not removing a disk file: {}", e.message());
                    continue;
                }
            };
            if let Err(e) = agent
                .delete_disk(wire::DeleteDiskRequest {
                    path: d.path.clone(),
                    pool,
                })
                .await
            {
                tracing::warn!(path = %d.path, "could not remove a disk file: {e:#}");
            }
        }
    }
}
