//! What each public operation does: validate, record, ask the host's agent, record again.
//! A failed create removes everything it made.

use crate::agent_client::{AgentClient, AgentRefusal};
use crate::api::ApiError;
use crate::boot::{BootConfig, CloudConfig};
use crate::Controller;
use hostel_api::agent::{self as wire, Boot, DiskSpec, SaveHeader, VmSpec};
use hostel_api::public::*;
use hostel_model::{validate_name, ImageKind, Invalid, Op, Policy, Sizing, VmState};
use hostel_store::{new_id, now, DiskRecord, ImageRecord, TaskRecord, VmRecord};
use std::sync::Arc;

type Res<T> = Result<T, ApiError>;

/// The states in which a VM has a QEMU process (and holds its memory), by name.
pub(crate) fn live_states() -> Vec<&'static str> {
    VmState::ALL
        .into_iter()
        .filter(|s| s.has_process())
        .map(|s| s.as_str())
        .collect()
}

/// The most VMs one page of a list holds.
pub(crate) const MAX_PAGE: u32 = 1000;

fn state_of(v: &VmRecord) -> VmState {
    VmState::parse(&v.state).unwrap_or(VmState::Crashed)
}

fn policy(s: &str) -> Policy {
    Policy::parse("policy", s).unwrap_or_default()
}

impl Controller {
    /// The VM named `name`, if the caller may operate it: to anyone else it does not
    /// exist (a 404, the same as for a name nobody uses).
    pub(crate) async fn vm_named(&self, name: &str) -> Res<VmRecord> {
        let missing = || {
            ApiError::not_found(format!(
                "there is no VM named {name:?}: `hostel list` shows the VMs there are"
            ))
        };
        let vm = self.store.vm_by_name(name).await?.ok_or_else(missing)?;
        match crate::auth::current() {
            Some(c) if !c.may_operate(&vm) => Err(missing()),
            _ => Ok(vm),
        }
    }

    /// Save files of non-admins live in `DATA/saves/USER/`; admins may name any path.
    pub(crate) fn check_save_path(&self, path: &str) -> Res<()> {
        if let Some(c) = crate::auth::current() {
            if !c.is_admin {
                let dir = self.cfg.data_dir.join("saves").join(&c.user_name);
                let p = std::path::Path::new(path);
                let inside = p.starts_with(&dir)
                    && !p
                        .components()
                        .any(|x| matches!(x, std::path::Component::ParentDir));
                if !inside {
                    return Err(Invalid::new(
                        "path",
                        format!(
                            "{path} is outside your save directory: save to a file in {}/",
                            dir.display()
                        ),
                    )
                    .into());
                }
                // All-in-one: the controller's data dir is the host's.
                let _ = std::fs::create_dir_all(&dir);
            }
        }
        Ok(())
    }

    /// The VM under its operation lock, read again once the lock is held (an operation
    /// that ran meanwhile may have changed it).
    pub(crate) async fn locked_vm(
        &self,
        name: &str,
    ) -> Res<(tokio::sync::OwnedMutexGuard<()>, VmRecord)> {
        let vm = self.vm_named(name).await?;
        let guard = self.vm_lock(&vm.id).lock_owned().await;
        Ok((guard, self.vm_named(name).await?))
    }

    pub(crate) fn host_agent(&self, vm: &VmRecord) -> Res<AgentClient> {
        let host = vm.host_id.as_deref().unwrap_or_default();
        self.agent(host).ok_or_else(|| {
            ApiError::unavailable(format!("the VM's host {host:?} has no connected agent"))
        })
    }

    async fn image_of(&self, vm: &VmRecord) -> Res<Option<ImageRecord>> {
        match &vm.image_id {
            Some(id) => Ok(self.store.image_by_id(id).await?),
            None => Ok(None),
        }
    }

    /// The VM's definition as the agent needs it, rendered from the records now.
    pub(crate) async fn spec_of(&self, vm: &VmRecord) -> Res<VmSpec> {
        let image = self.image_of(vm).await?;
        let disks = self.store.disks_of(&vm.id).await?;
        let bc = BootConfig::parse(vm.boot_json.as_deref());
        let mut cloud = CloudConfig::parse(vm.cloud_json.as_deref());
        if cloud.seed {
            // The owner's SSH keys, as they are now, go into the guest too.
            if let Some(u) = &vm.owner_user_id {
                for k in self.store.ssh_keys_of(u).await? {
                    if !cloud.ssh_keys.contains(&k.public_key) {
                        cloud.ssh_keys.push(k.public_key);
                    }
                }
            }
        }
        let boot = match (&bc.kernel, image) {
            (Some(kernel), _) => Boot::DirectKernel {
                kernel: kernel.clone(),
                initrd: bc.initrd.clone(),
                cmdline: bc.cmdline.clone().unwrap_or_else(|| "console=ttyS0".into()),
            },
            (None, Some(img)) if img.kind == ImageKind::DirectKernel.as_str() => {
                Boot::DirectKernel {
                    kernel: img.path.clone(),
                    initrd: img.initrd.clone(),
                    cmdline: img.cmdline.clone().unwrap_or_default(),
                }
            }
            _ => match bc.firmware {
                Firmware::Bios => Boot::Bios,
                Firmware::Uefi => Boot::Uefi,
            },
        };
        let cdrom = match (&vm.cdrom_image_id, &bc.cdrom_path) {
            (Some(id), _) => self.store.image_by_id(id).await?.map(|i| DiskSpec {
                index: 0,
                path: i.path,
                format: i.format,
                pool: None,
            }),
            (None, Some(path)) => Some(DiskSpec {
                index: 0,
                path: path.clone(),
                format: "raw".into(),
                pool: None,
            }),
            (None, None) => None,
        };
        let nics = self.store.nics_of(&vm.id).await?;
        let seed = if cloud.seed {
            let mut domain = None;
            if let Some(n) = nics.first() {
                if let Some(net) = self.store.network_by_id(&n.network_id).await? {
                    domain = net.domain;
                }
            }
            let seed_nics: Vec<crate::boot::SeedNic> = nics
                .iter()
                .map(|n| crate::boot::SeedNic { mac: n.mac.clone() })
                .collect();
            Some(crate::boot::render_seed(
                &vm.id,
                &vm.name,
                domain.as_deref(),
                &cloud,
                &seed_nics,
            ))
        } else {
            None
        };
        let mut pools = std::collections::HashMap::new();
        for d in &disks {
            if let Some(pid) = &d.pool_id {
                if !pools.contains_key(pid) {
                    pools.insert(pid.clone(), self.pool_spec(Some(pid)).await?);
                }
            }
        }
        Ok(VmSpec {
            cdrom,
            seed,
            id: vm.id.clone(),
            name: vm.name.clone(),
            memory_mib: vm.memory_mib,
            max_memory_mib: vm.max_memory_mib,
            vcpus: vm.vcpus,
            max_vcpus: vm.max_vcpus,
            boot,
            disks: disks
                .iter()
                .map(|d| DiskSpec {
                    index: d.idx,
                    path: d.path.clone(),
                    format: d.format.clone(),
                    pool: d
                        .pool_id
                        .as_ref()
                        .and_then(|p| pools.get(p).cloned().flatten()),
                })
                .collect(),
            on_poweroff: policy(&vm.on_poweroff),
            on_reboot: policy(&vm.on_reboot),
            on_crash: policy(&vm.on_crash),
            nics: nics.iter().map(Self::nic_spec).collect(),
        })
    }

    /// The agent's view of a pool, by id; none: the host's default pool.
    pub(crate) async fn pool_spec(&self, pool_id: Option<&str>) -> Res<Option<wire::PoolSpec>> {
        let Some(id) = pool_id else {
            return Ok(None);
        };
        let p = self.store.pool_by_id(id).await?.ok_or_else(|| {
            ApiError::from(anyhow::anyhow!(
                "a disk names pool {id}, which is not recorded"
            ))
        })?;
        Ok(Some(wire::PoolSpec {
            name: p.name,
            driver: p.driver,
            path: p.path,
        }))
    }

    pub(crate) async fn view(&self, vm: &VmRecord, live: bool) -> Res<Vm> {
        let state = state_of(vm);
        let spec = self.spec_of(vm).await?;
        let image = self.image_of(vm).await?;
        let disks = self.store.disks_of(&vm.id).await?;
        let mut status = None;
        if live && state.has_process() {
            if let Some(agent) = vm.host_id.as_deref().and_then(|h| self.agent(h)) {
                status = agent.vm(&vm.id).await.ok().flatten();
            }
        }
        let host = vm.host_id.as_deref().and_then(|h| self.agent(h));
        let accel = match &status {
            Some(s) => Some(s.accel),
            None => match &host {
                Some(a) if live => a.facts().await.ok().map(|f| f.accel),
                _ => None,
            },
        };
        let argv = match (&status, &host) {
            (Some(s), _) => s.argv.clone(),
            // What the next start would run, rendered by the host that would run it.
            (None, Some(agent)) if live => {
                agent.post("/v1/render", &spec).await.unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let mut pool_names = std::collections::HashMap::new();
        for p in self.store.pools().await? {
            pool_names.insert(p.id, p.name);
        }
        let bc = BootConfig::parse(vm.boot_json.as_deref());
        let cdrom_name = match &vm.cdrom_image_id {
            Some(id) => self.store.image_by_id(id).await?.map(|i| i.name),
            None => bc.cdrom_path.clone(),
        };
        let mut images_by_id = std::collections::HashMap::new();
        for d in &disks {
            if let Some(i) = &d.image_id {
                if let Some(img) = self.store.image_by_id(i).await? {
                    images_by_id.insert(i.clone(), img.name);
                }
            }
        }
        let owner = match (&vm.owner_user_id, &vm.owner_group_id) {
            (Some(u), _) => self
                .store
                .user_by_id(u)
                .await?
                .map(|u| format!("user:{}", u.name)),
            (None, Some(g)) => self
                .store
                .group_by_id(g)
                .await?
                .map(|g| format!("group:{}", g.name)),
            _ => None,
        };
        let admin_group = match &vm.admin_group_id {
            Some(g) => self.store.group_by_id(g).await?.map(|g| g.name),
            None => None,
        };
        Ok(Vm {
            id: vm.id.clone(),
            name: vm.name.clone(),
            owner,
            admin_group,
            lease_warning: vm
                .lease_expires_at
                .as_deref()
                .and_then(crate::lease::warning),
            lease_expires_at: vm.lease_expires_at.clone(),
            state,
            state_reason: vm.state_reason.clone(),
            host: vm.host_id.clone(),
            accel,
            image: image.as_ref().map(|i| i.name.clone()),
            memory: MemoryView {
                max_mib: vm.max_memory_mib,
                current_mib: status
                    .as_ref()
                    .and_then(|s| s.balloon_mib)
                    .unwrap_or(vm.memory_mib),
                target_mib: vm.memory_mib,
            },
            vcpus: VcpuView {
                current: vm.vcpus,
                max: vm.max_vcpus,
            },
            qemu: QemuView {
                pid: status
                    .as_ref()
                    .and_then(|s| s.pid)
                    .or(if state.has_process() { vm.pid } else { None }),
                argv,
            },
            disks: disks
                .iter()
                .map(|d| DiskView {
                    index: d.idx,
                    path: d.path.clone(),
                    format: d.format.clone(),
                    size_mib: d.size_mib,
                    backing_image: d
                        .image_id
                        .as_ref()
                        .and_then(|i| images_by_id.get(i).cloned()),
                    pool: d
                        .pool_id
                        .as_ref()
                        .and_then(|p| pool_names.get(p).cloned())
                        .unwrap_or_else(|| "default".into()),
                })
                .collect(),
            nics: self.nic_views(vm, status.as_ref()).await?,
            boot: match &spec.boot {
                Boot::DirectKernel {
                    kernel,
                    initrd,
                    cmdline,
                } => BootView {
                    method: "direct-kernel".into(),
                    kernel: Some(kernel.clone()),
                    initrd: initrd.clone(),
                    cmdline: Some(cmdline.clone()),
                    cdrom: cdrom_name,
                    seed: spec.seed.is_some(),
                },
                Boot::Bios | Boot::Uefi => BootView {
                    method: if spec.boot == Boot::Uefi {
                        "uefi"
                    } else {
                        "bios"
                    }
                    .into(),
                    kernel: None,
                    initrd: None,
                    cmdline: None,
                    cdrom: cdrom_name,
                    seed: spec.seed.is_some(),
                },
            },
            policies: PoliciesView {
                on_poweroff: spec.on_poweroff,
                on_reboot: spec.on_reboot,
                on_crash: spec.on_crash,
            },
            saved_to: vm.saved_path.clone(),
            created_at: vm.created_at.clone(),
        })
    }

    /// One page of the VMs the caller may operate, in name order, and the name to
    /// continue after when more follow. Two queries whatever the page's size.
    pub async fn list_vms(
        &self,
        limit: u32,
        after: Option<&str>,
        host: Option<&str>,
        state: Option<&str>,
    ) -> Res<(Vec<VmSummary>, Option<String>)> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Invalid::new(
                "limit",
                format!("{limit} VMs a page is out of range: ask for 1 to {MAX_PAGE}"),
            )
            .into());
        }
        if let Some(s) = state {
            if VmState::parse(s).is_none() {
                let names: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
                // Bad input, not a VM whose state forbids something (which `From<Invalid>`
                // makes a 409 of a field named "state").
                return Err(ApiError {
                    status: axum::http::StatusCode::BAD_REQUEST,
                    body: hostel_api::ErrorBody {
                        error: "invalid".into(),
                        message: format!(
                            "state: {s:?} is not a VM state: use one of {}",
                            names.join(", ")
                        ),
                        field: Some("state".into()),
                    },
                });
            }
        }
        if let Some(h) = host {
            if self.store.host(h).await?.is_none() {
                return Err(ApiError::not_found(format!(
                    "no host is named {h:?}: `hostel info` lists the hosts"
                )));
            }
        }
        let caller = crate::auth::current();
        let visible_to = caller
            .as_ref()
            .filter(|c| !c.is_admin)
            .map(|c| (c.user_id.as_str(), c.group_ids.as_slice()));
        let mut rows = self
            .store
            .vms_page(&hostel_store::VmPageQuery {
                visible_to,
                host_id: host,
                state,
                after,
                // One more than asked tells whether another page follows.
                limit: limit + 1,
            })
            .await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.vm.name.clone())
        } else {
            None
        };
        let out = rows
            .into_iter()
            .map(|r| {
                let state = state_of(&r.vm);
                let v = r.vm;
                VmSummary {
                    owner: match (r.owner_user, r.owner_group) {
                        (Some(u), _) => Some(format!("user:{u}")),
                        (None, Some(g)) => Some(format!("group:{g}")),
                        _ => None,
                    },
                    state,
                    state_reason: v.state_reason,
                    host: v.host_id,
                    image: r.image,
                    memory_mib: v.memory_mib,
                    max_memory_mib: v.max_memory_mib,
                    vcpus: v.vcpus,
                    max_vcpus: v.max_vcpus,
                    ips: r.ips,
                    pid: if state.has_process() { v.pid } else { None },
                    lease_warning: v
                        .lease_expires_at
                        .as_deref()
                        .and_then(crate::lease::warning),
                    lease_expires_at: v.lease_expires_at,
                    created_at: v.created_at,
                    id: v.id,
                    name: v.name,
                }
            })
            .collect();
        Ok((out, next))
    }

    /// Where a new VM goes: the connected host with the most memory not promised to VMs;
    /// `only`: the host that holds what the VM needs (its image lives there).
    async fn place(&self, max_memory_mib: u64, only: Option<&str>) -> Res<(String, u64)> {
        if let Some(h) = only {
            let rec = self.store.host(h).await?.ok_or_else(|| {
                ApiError::from(anyhow::anyhow!("the image's host {h:?} is not recorded"))
            })?;
            if !self.is_online(h) {
                return Err(ApiError::unavailable(format!(
                    "the VM's image is on host {h:?}, whose agent is not connected now: start \
                     `hostel agent` there or wait until `hostel host list` shows it online, \
                     or use an image on another host"
                )));
            }
            return Ok((rec.id, rec.memory_mib));
        }
        let hosts = self.store.hosts().await?;
        // Memory promised to VMs with a QEMU, per host, added up by the database.
        let used_by: std::collections::HashMap<String, u64> = self
            .store
            .memory_by_host(&live_states())
            .await?
            .into_iter()
            .collect();
        let mut best: Option<(String, i64, u64)> = None;
        for h in hosts {
            if !self.is_online(&h.id) {
                continue;
            }
            let used: u64 = used_by.get(&h.id).copied().unwrap_or(0);
            let free = h.memory_mib as i64 - used as i64;
            if best.as_ref().map(|b| free > b.1).unwrap_or(true) {
                best = Some((h.id.clone(), free, h.memory_mib));
            }
        }
        let (id, _, total) = best.ok_or_else(|| {
            ApiError::unavailable("no host is connected to place the VM on".to_string())
        })?;
        let _ = max_memory_mib;
        Ok((id, total))
    }

    pub async fn create_vm(self: &Arc<Self>, req: CreateVmRequest) -> Res<Vm> {
        validate_name("name", &req.name)?;
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
                ApiError::not_found(format!(
                    "there is no image named {name:?}: `hostel image list` shows the images \
                     there are, `hostel image build tiny` makes one"
                ))
            })?),
            None => None,
        };
        // Files the VM boots from live on one host: the VM goes there.
        let cdrom_host = match &req.cdrom {
            Some(c) if !c.starts_with('/') => self.store.image_by_name(c).await?.map(|i| i.host_id),
            _ => None,
        };
        let files_host = match (image.as_ref().map(|i| &i.host_id), &cdrom_host) {
            (Some(a), Some(b)) if a != b => {
                return Err(Invalid::new(
                    "cdrom",
                    format!(
                        "the image is on host {a}, the CD-ROM image on host {b}: a VM needs \
                         both on its own host"
                    ),
                )
                .into());
            }
            (Some(a), _) => Some(a.clone()),
            (None, b) => b.clone(),
        };
        // Held until the VM is recorded: a host is not removed under a VM placed on it.
        let _placing = self.hosts_lock.read().await;
        let (host, host_mem) = match &pool {
            Some(p) if files_host.as_ref().is_some_and(|h| h != &p.host_id) => {
                return Err(Invalid::new(
                    "pool",
                    format!(
                        "pool {:?} is on host {}, the image on another: use a pool on the \
                         image's host (`hostel pool list` shows each pool's host)",
                        p.name, p.host_id
                    ),
                )
                .into());
            }
            Some(p) => {
                let h = self
                    .store
                    .hosts()
                    .await?
                    .into_iter()
                    .find(|h| h.id == p.host_id)
                    .filter(|h| self.is_online(&h.id))
                    .ok_or_else(|| {
                        ApiError::unavailable(format!(
                            "pool {:?} is on host {}, which is not connected",
                            p.name, p.host_id
                        ))
                    })?;
                (h.id, h.memory_mib)
            }
            None => {
                self.place(sizing.max_memory_mib, files_host.as_deref())
                    .await?
            }
        };
        sizing.validate(host_mem)?;
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
        let (boot_cfg, cdrom_image) = self.plan_boot(&req, image.as_ref()).await?;
        let cloud = CloudConfig {
            seed: req.seed.unwrap_or_else(|| {
                boot_cfg.kernel.is_none()
                    && image
                        .as_ref()
                        .map(|i| i.kind == ImageKind::Disk.as_str())
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
            return Err(ApiError::conflict_field(
                "name",
                format!(
                    "a VM named {:?} exists already: choose another name, or delete that VM first",
                    req.name
                ),
            ));
        }
        let agent = self.agent(&host).ok_or_else(|| {
            ApiError::unavailable(format!(
                "host {host} went away while the VM was placed on it: try again"
            ))
        })?;
        let vm_id = new_id("vm");
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
            let planned = self.plan_nic(&vm_id, i as u32, r, &nics).await?;
            if let Some(dup) = nics.iter().find(|n| n.mac == planned.mac) {
                return Err(ApiError::conflict_field(
                    "mac",
                    format!("MAC {} is given twice", dup.mac),
                ));
            }
            nics.push(planned);
        }
        // The disk: an overlay of a disk image (at least the image's size), or a blank one.
        let mut disk_plan: Option<wire::CreateDiskRequest> = None;
        if let Some(image) = image
            .as_ref()
            .filter(|i| i.kind == ImageKind::Disk.as_str())
        {
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
                    path: image.path.clone(),
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
        let owner = crate::auth::current().map(|c| format!("user:{}", c.user_id));
        let disk_mib = disk_plan.as_ref().map(|p| p.size_mib).unwrap_or(0);
        let _quota = self
            .charge(
                owner.as_deref(),
                &crate::quota::Charge {
                    ram_mib: if req.start { sizing.memory_mib } else { 0 },
                    disk_mib,
                    vms: 1,
                    vms_running: req.start as u64,
                    vcpus: if req.start { sizing.vcpus as u64 } else { 0 },
                    vm_max_ram_mib: sizing.max_memory_mib,
                    vm_disk_mib: disk_mib,
                },
            )
            .await?;
        let mut disks = Vec::new();
        if let Some(plan) = &disk_plan {
            let made: wire::DiskCreated = agent.post("/v1/disks", plan).await?;
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
            state: VmState::Stopped.as_str().into(),
            state_reason: Some("created".into()),
            on_poweroff: req.on_poweroff.as_str().into(),
            on_reboot: req.on_reboot.as_str().into(),
            on_crash: req.on_crash.as_str().into(),
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
        };
        let mut record = record;
        if let Some(c) = crate::auth::current() {
            record.owner_user_id = Some(c.user_id.clone());
        }
        if let Err(e) = self.store.insert_vm(&record, &disks).await {
            self.remove_disk_files(&agent, &disks).await;
            if hostel_store::is_unique_violation(&e) {
                return Err(ApiError::conflict_field(
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
                    return Err(ApiError::conflict(
                        "an IP or MAC was taken meanwhile; nothing was created: try again".into(),
                    ));
                }
                return Err(e.into());
            }
        }
        if !nics.is_empty() {
            if let Err(e) = self.sync_networks().await {
                let _ = self.store.delete_vm(&vm_id).await;
                self.remove_disk_files(&agent, &disks).await;
                let _ = self.sync_networks().await;
                return Err(e.context("setting up the VM's network failed, so nothing was kept"));
            }
        }
        let op = self.store.begin_operation(Some(&vm_id), "create").await?;
        if req.start {
            let lock = self.vm_lock(&vm_id);
            let _g = lock.lock().await;
            if let Err(e) = self.start_locked(&record, None).await {
                // A failed create removes everything it made.
                let _ = agent
                    .post::<_, ()>(&format!("/v1/vms/{vm_id}/forget"), &serde_json::json!({}))
                    .await;
                let _ = self.store.delete_vm(&vm_id).await;
                self.remove_disk_files(&agent, &disks).await;
                let _ = self.sync_networks().await;
                return Err(
                    e.context("the VM was created but could not start, so nothing was kept")
                );
            }
        }
        self.store.finish_operation(&op, None).await?;
        let vm = self.vm_named(&req.name).await?;
        self.view(&vm, true).await
    }

    /// How a new VM boots: checks the firmware, CD-ROM and kernel asked for.
    async fn plan_boot(
        &self,
        req: &CreateVmRequest,
        image: Option<&ImageRecord>,
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
        if host_file && crate::auth::current().is_some_and(|c| !c.is_admin) {
            return Err(ApiError::forbidden(
                "only an admin may boot files from the host (--kernel, --initrd, --cdrom FILE): \
                 boot an image from the library instead (`hostel image list`)"
                    .into(),
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
                Some(img) if img.kind == ImageKind::Disk.as_str() => cdrom_image = Some(img),
                Some(_) => {
                    return Err(Invalid::new(
                        "cdrom",
                        format!("{cd:?} is a kernel image, not an ISO or disk image"),
                    )
                    .into())
                }
                None if cd.starts_with('/') => bc.cdrom_path = Some(abs("cdrom", cd)?),
                None => {
                    return Err(ApiError::not_found(format!(
                        "there is no image named {cd:?}, and it is not an absolute path: \
                         give an image's name (`hostel image list`) or an ISO file's full path"
                    )))
                }
            }
        }
        if image.is_none() && bc.kernel.is_none() && req.cdrom.is_none() {
            return Err(Invalid::new(
                "image",
                "nothing to boot: give an image, or --cdrom ISO (with --disk SIZE to install \
                 onto), or --kernel FILE",
            )
            .into());
        }
        if let Some(img) = image {
            if img.kind == ImageKind::DirectKernel.as_str() && req.firmware == Firmware::Uefi {
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
            ApiError::not_found(format!(
                "there is no pool named {name:?}: `hostel pool list` shows them, \
                 `hostel pool create` makes one"
            ))
        })
    }

    async fn remove_disk_files(&self, agent: &AgentClient, disks: &[DiskRecord]) {
        for d in disks {
            let pool = match self.pool_spec(d.pool_id.as_deref()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(path = %d.path, "not removing a disk file: {:?}", e.body);
                    continue;
                }
            };
            if let Err(e) = agent
                .post::<_, ()>(
                    "/v1/disks/delete",
                    &wire::DeleteDiskRequest {
                        path: d.path.clone(),
                        pool,
                    },
                )
                .await
            {
                tracing::warn!(path = %d.path, "could not remove a disk file: {e:#}");
            }
        }
    }

    async fn start_locked(&self, vm: &VmRecord, restore_from: Option<&str>) -> Res<()> {
        let agent = self.host_agent(vm)?;
        let spec = self.spec_of(vm).await?;
        let status: wire::VmStatus = agent
            .post(
                &format!("/v1/vms/{}/start", vm.id),
                &wire::StartRequest {
                    spec,
                    restore_from: restore_from.map(String::from),
                    load_snapshot: None,
                },
            )
            .await?;
        self.store
            .set_vm_state(
                &vm.id,
                status.state.as_str(),
                status.reason.as_deref(),
                status.pid,
            )
            .await?;
        Ok(())
    }

    /// Runs `f` under the VM's lock as a recorded operation, after checking the state.
    async fn operate<F, Fut>(&self, name: &str, op: Op, f: F) -> Res<Vm>
    where
        F: FnOnce(VmRecord, AgentClient) -> Fut,
        Fut: std::future::Future<Output = Res<()>>,
    {
        let vm = self.vm_named(name).await?;
        let lock = self.vm_lock(&vm.id);
        let _g = if op == Op::Destroy {
            // Destroy must be able to end an operation that hangs.
            None
        } else {
            Some(lock.lock().await)
        };
        let vm = self.vm_named(name).await?;
        op.check(state_of(&vm))?;
        let agent = self.host_agent(&vm)?;
        let rec = self.store.begin_operation(Some(&vm.id), op.name()).await?;
        let result = f(vm.clone(), agent).await;
        let err = result.as_ref().err().map(|e| e.body.message.clone());
        self.store.finish_operation(&rec, err.as_deref()).await?;
        result?;
        let vm = self.vm_named(name).await?;
        self.view(&vm, true).await
    }

    async fn sync_status(&self, vm_id: &str, s: &wire::VmStatus) -> Res<()> {
        self.store
            .set_vm_state(vm_id, s.state.as_str(), s.reason.as_deref(), s.pid)
            .await?;
        Ok(())
    }

    pub async fn start_vm(&self, name: &str) -> Res<Vm> {
        self.operate(name, Op::Start, |vm, _| async move {
            if vm
                .lease_expires_at
                .as_deref()
                .is_some_and(|e| e <= hostel_store::now().as_str())
            {
                return Err(Invalid::new(
                    "lease",
                    format!(
                        "the lease of {:?} ended at {}: `hostel renew {}` first",
                        vm.name,
                        vm.lease_expires_at.as_deref().unwrap_or_default(),
                        vm.name
                    ),
                )
                .into());
            }
            let _quota = self.charge_start(&vm).await?;
            self.start_locked(&vm, None).await
        })
        .await
    }

    pub async fn simple_action(&self, name: &str, op: Op) -> Res<Vm> {
        let action = match op {
            Op::Reboot => "reboot",
            Op::Pause => "pause",
            Op::Unpause => "unpause",
            Op::Destroy => "destroy",
            _ => unreachable!("not a simple action"),
        };
        self.operate(name, op, |vm, agent| async move {
            let s = agent.action(&vm.id, action).await?;
            self.sync_status(&vm.id, &s).await
        })
        .await
    }

    pub async fn shutdown_vm(&self, name: &str, req: ShutdownRequest) -> Res<Vm> {
        self.operate(name, Op::Shutdown, |vm, agent| async move {
            let s: wire::VmStatus = agent
                .post(
                    &format!("/v1/vms/{}/shutdown", vm.id),
                    &wire::ShutdownRequest {
                        timeout_secs: req.timeout_secs,
                        force: req.force,
                    },
                )
                .await?;
            self.sync_status(&vm.id, &s).await
        })
        .await
    }

    /// The quota a start charges: one more running VM, its memory and vCPUs.
    async fn charge_start(&self, vm: &VmRecord) -> Res<Option<tokio::sync::MutexGuard<'_, ()>>> {
        self.charge(
            crate::quota::owner_key(vm).as_deref(),
            &crate::quota::Charge {
                ram_mib: vm.memory_mib,
                vms_running: 1,
                vcpus: vm.vcpus as u64,
                vm_max_ram_mib: vm.max_memory_mib,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn mem_set(&self, name: &str, memory_mib: u64) -> Res<Vm> {
        self.operate(name, Op::MemSet, |vm, agent| async move {
            let _quota = self
                .charge(
                    crate::quota::owner_key(&vm).as_deref(),
                    &crate::quota::Charge {
                        ram_mib: if state_of(&vm).has_process() {
                            memory_mib.saturating_sub(vm.memory_mib)
                        } else {
                            0
                        },
                        ..Default::default()
                    },
                )
                .await?;
            if memory_mib < hostel_model::MIN_MEMORY_MIB || memory_mib > vm.max_memory_mib {
                return Err(Invalid::new(
                    "memory",
                    format!(
                        "{} is out of range for this VM: use between {} and its max memory {} \
                         (max memory is fixed at create time with --max-memory)",
                        hostel_model::format_mib(memory_mib),
                        hostel_model::format_mib(hostel_model::MIN_MEMORY_MIB),
                        hostel_model::format_mib(vm.max_memory_mib)
                    ),
                )
                .into());
            }
            if state_of(&vm).has_process() {
                let _: wire::VmStatus = agent
                    .post(
                        &format!("/v1/vms/{}/balloon", vm.id),
                        &wire::BalloonRequest { memory_mib },
                    )
                    .await?;
            }
            self.store.set_vm_memory(&vm.id, memory_mib).await?;
            Ok(())
        })
        .await
    }

    pub async fn vcpu_set(&self, name: &str, vcpus: u32) -> Res<Vm> {
        self.operate(name, Op::VcpuSet, |vm, agent| async move {
            let _quota = self
                .charge(
                    crate::quota::owner_key(&vm).as_deref(),
                    &crate::quota::Charge {
                        vcpus: if state_of(&vm).has_process() {
                            (vcpus as u64).saturating_sub(vm.vcpus as u64)
                        } else {
                            0
                        },
                        ..Default::default()
                    },
                )
                .await?;
            if vcpus < 1 || vcpus > vm.max_vcpus {
                return Err(Invalid::new(
                    "vcpus",
                    format!(
                        "{vcpus} is out of range for this VM: use between 1 and its max vCPUs {} \
                         (fixed at create time with --max-vcpus)",
                        vm.max_vcpus
                    ),
                )
                .into());
            }
            if state_of(&vm).has_process() {
                let _: wire::VmStatus = agent
                    .post(
                        &format!("/v1/vms/{}/vcpus", vm.id),
                        &wire::VcpusRequest { vcpus },
                    )
                    .await?;
            }
            self.store.set_vm_vcpus(&vm.id, vcpus).await?;
            Ok(())
        })
        .await
    }

    pub async fn save_vm(&self, name: &str, path: String) -> Res<Vm> {
        self.check_save_path(&path)?;
        self.operate(name, Op::Save, |vm, agent| async move {
            let header = SaveHeader {
                magic: wire::SAVE_MAGIC.into(),
                vm_id: vm.id.clone(),
                vm_name: vm.name.clone(),
                saved_at: now(),
            };
            let s: wire::VmStatus = agent
                .post(
                    &format!("/v1/vms/{}/save", vm.id),
                    &wire::SaveRequest {
                        path: path.clone(),
                        header,
                    },
                )
                .await?;
            self.sync_status(&vm.id, &s).await?;
            self.store.set_vm_saved(&vm.id, Some(&path)).await?;
            Ok(())
        })
        .await
    }

    pub async fn restore_vm(&self, path: String) -> Res<Vm> {
        self.check_save_path(&path)?;
        // Any host can read the header; the VM it names decides where it resumes.
        let (_, agent) = self
            .agents()
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::unavailable("no host is connected".into()))?;
        let header: SaveHeader = agent
            .post("/v1/save-header", &serde_json::json!({ "path": path }))
            .await?;
        let vm = self.store.vm_by_id(&header.vm_id).await?.ok_or_else(|| {
            ApiError::from(Invalid::new(
                "path",
                format!(
                    "{path} holds the state of VM {:?}, which no longer exists",
                    header.vm_name
                ),
            ))
        })?;
        // The same answer as for a VM that is gone: nothing about others' VMs leaks.
        if crate::auth::current().is_some_and(|c| !c.may_operate(&vm)) {
            return Err(ApiError::not_found(format!(
                "{path} holds the state of no VM of yours"
            )));
        }
        self.operate(&vm.name, Op::Restore, |vm, _| async move {
            let _quota = self.charge_start(&vm).await?;
            self.start_locked(&vm, Some(&path)).await?;
            self.store.set_vm_saved(&vm.id, None).await?;
            Ok(())
        })
        .await
    }

    pub async fn disk_views(&self, name: &str) -> Res<Vec<DiskView>> {
        let vm = self.vm_named(name).await?;
        Ok(self.view(&vm, false).await?.disks)
    }

    pub async fn add_disk(&self, name: &str, req: AddDiskRequest) -> Res<DiskView> {
        let (_g, vm) = self.locked_vm(name).await?;
        let agent = self.host_agent(&vm)?;
        let image = match &req.image {
            Some(i) => {
                let img =
                    self.store.image_by_name(i).await?.ok_or_else(|| {
                        ApiError::not_found(format!("there is no image named {i:?}"))
                    })?;
                if img.kind != ImageKind::Disk.as_str() {
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
        if state_of(&vm) == VmState::Saved {
            return Err(Invalid::new(
                "state",
                "a saved VM cannot change its devices (its saved state would no longer fit): restore it first",
            )
            .into());
        }
        let pool = match &req.pool {
            Some(p) => {
                let p = self.pool_named(p).await?;
                if Some(&p.host_id) != vm.host_id.as_ref() {
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
        let idx = disks.iter().map(|d| d.idx + 1).max().unwrap_or(0);
        let _quota = self
            .charge(
                crate::quota::owner_key(&vm).as_deref(),
                &crate::quota::Charge {
                    disk_mib: size,
                    vm_disk_mib: disks.iter().map(|d| d.size_mib).sum::<u64>() + size,
                    ..Default::default()
                },
            )
            .await?;
        let made: wire::DiskCreated = agent
            .post(
                "/v1/disks",
                &wire::CreateDiskRequest {
                    vm_id: vm.id.clone(),
                    index: idx,
                    size_mib: size,
                    backing: image.as_ref().map(|i| wire::Backing {
                        path: i.path.clone(),
                        format: i.format.clone(),
                        image_id: i.id.clone(),
                    }),
                    pool: pool_spec.clone(),
                },
            )
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
        if let Err(e) = self.store.insert_disk(&rec).await {
            self.remove_disk_files(&agent, std::slice::from_ref(&rec))
                .await;
            return Err(e.into());
        }
        if state_of(&vm).has_process() {
            let spec = DiskSpec {
                index: idx,
                path: made.path,
                format: made.format,
                pool: pool_spec,
            };
            if let Err(e) = agent
                .post::<_, wire::VmStatus>(&format!("/v1/vms/{}/disks", vm.id), &spec)
                .await
            {
                self.store.delete_disk(&rec.id).await?;
                self.remove_disk_files(&agent, std::slice::from_ref(&rec))
                    .await;
                return Err(
                    ApiError::from(e).context("hot-plugging the disk failed, so it was not kept")
                );
            }
        }
        let views = self.view(&vm, false).await?.disks;
        Ok(views
            .into_iter()
            .find(|d| d.index == idx)
            .expect("just added"))
    }

    async fn disk_at(&self, vm: &VmRecord, index: u32) -> Res<DiskRecord> {
        let name = &vm.name;
        self.store
            .disks_of(&vm.id)
            .await?
            .into_iter()
            .find(|d| d.idx == index)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "VM {name:?} has no disk {index}: `hostel disk list {name}`"
                ))
            })
    }

    pub async fn remove_disk(&self, name: &str, index: u32) -> Res<()> {
        let (_g, vm) = self.locked_vm(name).await?;
        let agent = self.host_agent(&vm)?;
        let disk = self.disk_at(&vm, index).await?;
        if state_of(&vm).has_process() {
            agent
                .post::<_, wire::VmStatus>(
                    &format!("/v1/vms/{}/disks/remove", vm.id),
                    &wire::DiskIndex { index },
                )
                .await?;
        }
        // The row goes first: a file is never removed while a row points to it.
        self.store.delete_disk(&disk.id).await?;
        self.remove_disk_files(&agent, std::slice::from_ref(&disk))
            .await;
        Ok(())
    }

    pub async fn resize_disk(&self, name: &str, req: ResizeDiskRequest) -> Res<DiskView> {
        let (_g, vm) = self.locked_vm(name).await?;
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
        let all: u64 = self
            .store
            .disks_of(&vm.id)
            .await?
            .iter()
            .map(|d| d.size_mib)
            .sum();
        let grow = req.size_mib - disk.size_mib;
        let _quota = self
            .charge(
                crate::quota::owner_key(&vm).as_deref(),
                &crate::quota::Charge {
                    disk_mib: grow,
                    vm_disk_mib: all + grow,
                    ..Default::default()
                },
            )
            .await?;
        let body = if state_of(&vm).has_process() {
            wire::ResizeDiskRequest {
                index: Some(disk.idx),
                path: None,
                size_mib: req.size_mib,
                pool: None,
            }
        } else {
            wire::ResizeDiskRequest {
                index: None,
                path: Some(disk.path.clone()),
                size_mib: req.size_mib,
                pool: self.pool_spec(disk.pool_id.as_deref()).await?,
            }
        };
        agent
            .post::<_, ()>(&format!("/v1/disks/resize?vm={}", vm.id), &body)
            .await?;
        self.store.set_disk_size(&disk.id, req.size_mib).await?;
        let views = self.view(&vm, false).await?.disks;
        Ok(views
            .into_iter()
            .find(|d| d.index == req.disk)
            .expect("exists"))
    }

    /// Compares what the database says with what the hosts hold: files no row points to,
    /// rows whose file is gone, runtime state of VMs that do not exist.
    pub async fn doctor(&self) -> Res<DoctorReport> {
        let mut problems = Vec::new();
        let mut checked = Vec::new();
        let disks = self.store.all_disks().await?;
        let images = self.store.images().await?;
        let vms = self.store.vms().await?;
        for (host, agent) in self.agents() {
            let pools: Vec<wire::PoolSpec> = self
                .store
                .pools()
                .await?
                .into_iter()
                .filter(|p| p.host_id == host)
                .map(|p| wire::PoolSpec {
                    name: p.name,
                    driver: p.driver,
                    path: p.path,
                })
                .collect();
            let files: wire::StoredFiles = agent.post("/v1/files", &pools).await?;
            checked.push(format!(
                "host {host}: {} disk files, {} image entries, {} runtime dirs",
                files.disks.len(),
                files.images.len(),
                files.runtime.len()
            ));
            for f in &files.disks {
                if !disks.iter().any(|d| &d.path == f) {
                    problems.push(format!(
                        "host {host}: disk file {f} belongs to no VM (left by an interrupted \
                         operation or `delete --keep-disks`): remove it if it holds nothing you need"
                    ));
                }
            }
            for d in disks.iter().filter(|d| {
                vms.iter()
                    .any(|v| v.id == d.vm_id && v.host_id.as_deref() == Some(host.as_str()))
            }) {
                if !files.disks.contains(&d.path) {
                    let vm = vms
                        .iter()
                        .find(|v| v.id == d.vm_id)
                        .map(|v| v.name.clone())
                        .unwrap_or_default();
                    problems.push(format!(
                        "VM {vm}: its disk {} is missing on host {host}: restore the file, or \
                         `hostel disk remove {vm} {}`",
                        d.path, d.idx
                    ));
                }
            }
            for f in &files.images {
                let known = images.iter().any(|i| {
                    &i.path == f
                        || std::path::Path::new(&i.path)
                            .parent()
                            .map(|p| p.display().to_string())
                            == Some(f.clone())
                });
                if !known && !f.contains(".tiny-build-") {
                    problems.push(format!(
                        "host {host}: image file {f} belongs to no image: remove it"
                    ));
                }
            }
            for id in &files.runtime {
                if !vms.iter().any(|v| &v.id == id) {
                    problems.push(format!("host {host}: runtime state of an unknown VM {id}"));
                }
            }
        }
        for i in &images {
            if self.agent(&i.host_id).is_some() && !std::path::Path::new(&i.path).exists() {
                problems.push(format!(
                    "image {}: its file {} is missing: delete the image",
                    i.name, i.path
                ));
            }
        }
        checked.push(format!(
            "{} VMs, {} disks, {} images in the database",
            vms.len(),
            disks.len(),
            images.len()
        ));
        Ok(DoctorReport { problems, checked })
    }

    pub async fn snapshots(&self, name: &str) -> Res<Vec<Snapshot>> {
        let vm = self.vm_named(name).await?;
        Ok(self
            .store
            .snapshots_of(&vm.id)
            .await?
            .into_iter()
            .map(|s| Snapshot {
                name: s.name,
                with_memory: s.with_memory,
                created_at: s.created_at,
            })
            .collect())
    }

    async fn snapshot_call(
        &self,
        vm: &VmRecord,
        action: &str,
        name: &str,
        memory: bool,
    ) -> Res<()> {
        let agent = self.host_agent(vm)?;
        let disks = self.spec_of(vm).await?.disks;
        agent
            .post::<_, ()>(
                &format!("/v1/vms/{}/snapshot", vm.id),
                &wire::SnapshotRequest {
                    action: action.into(),
                    name: name.into(),
                    disks,
                    memory,
                },
            )
            .await?;
        Ok(())
    }

    pub async fn create_snapshot(&self, name: &str, req: CreateSnapshotRequest) -> Res<Snapshot> {
        let (_g, vm) = self.locked_vm(name).await?;
        if self.store.disks_of(&vm.id).await?.is_empty() {
            return Err(Invalid::new(
                "vm",
                format!("VM {name:?} has no disk to snapshot: add one with `hostel disk add`"),
            )
            .into());
        }
        let state = state_of(&vm);
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
            return Err(ApiError::conflict_field(
                "name",
                format!("VM {name:?} has a snapshot {snap:?} already"),
            ));
        }
        self.snapshot_call(&vm, "create", &snap, req.memory).await?;
        let rec = hostel_store::SnapshotRecord {
            id: new_id("snap"),
            vm_id: vm.id.clone(),
            name: snap.clone(),
            with_memory: req.memory,
            created_at: now(),
        };
        if let Err(e) = self.store.insert_snapshot(&rec).await {
            let _ = self.snapshot_call(&vm, "delete", &snap, false).await;
            return Err(e.into());
        }
        Ok(Snapshot {
            name: snap,
            with_memory: req.memory,
            created_at: rec.created_at,
        })
    }

    fn find_snapshot(
        snaps: Vec<hostel_store::SnapshotRecord>,
        vm: &str,
        snap: &str,
    ) -> Res<hostel_store::SnapshotRecord> {
        snaps.into_iter().find(|s| s.name == snap).ok_or_else(|| {
            ApiError::not_found(format!(
                "VM {vm:?} has no snapshot {snap:?}: `hostel snapshot list {vm}`"
            ))
        })
    }

    /// Brings the disks back to the snapshot; one with memory also resumes the VM there.
    pub async fn revert_snapshot(&self, name: &str, snap: &str) -> Res<Vm> {
        let (_g, vm) = self.locked_vm(name).await?;
        let s = Self::find_snapshot(self.store.snapshots_of(&vm.id).await?, name, snap)?;
        let state = state_of(&vm);
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
                .as_deref()
                .is_some_and(|e| e <= hostel_store::now().as_str())
            {
                return Err(Invalid::new(
                    "lease",
                    format!("the lease of {name:?} has ended: `hostel renew {name}` first"),
                )
                .into());
            }
            let _quota = self.charge_start(&vm).await?;
            let agent = self.host_agent(&vm)?;
            let status: wire::VmStatus = agent
                .post(
                    &format!("/v1/vms/{}/start", vm.id),
                    &wire::StartRequest {
                        spec: self.spec_of(&vm).await?,
                        restore_from: None,
                        load_snapshot: Some(snap.to_string()),
                    },
                )
                .await?;
            self.sync_status(&vm.id, &status).await?;
        } else {
            self.snapshot_call(&vm, "revert", snap, false).await?;
        }
        let vm = self.vm_named(name).await?;
        self.view(&vm, true).await
    }

    pub async fn delete_snapshot(&self, name: &str, snap: &str) -> Res<()> {
        let (_g, vm) = self.locked_vm(name).await?;
        let s = Self::find_snapshot(self.store.snapshots_of(&vm.id).await?, name, snap)?;
        self.snapshot_call(&vm, "delete", snap, false).await?;
        self.store.delete_snapshot(&s.id).await?;
        Ok(())
    }

    pub async fn delete_vm(&self, name: &str) -> Res<()> {
        self.delete_vm_keeping(name, false).await.map(|_| ())
    }

    /// Deletes a stopped VM; its disk files go too unless `keep_disks`, in which case
    /// their paths are returned (no row points at them any more: they are the user's).
    pub async fn delete_vm_keeping(&self, name: &str, keep_disks: bool) -> Res<Vec<String>> {
        let (_g, vm) = self.locked_vm(name).await?;
        Op::Delete.check(state_of(&vm))?;
        let agent = self.host_agent(&vm)?;
        let disks = self.store.disks_of(&vm.id).await?;
        agent
            .post::<_, ()>(&format!("/v1/vms/{}/forget", vm.id), &serde_json::json!({}))
            .await?;
        // Rows first, then files: a disk file is never removed while a row points to it.
        let had_nics = !self.store.nics_of(&vm.id).await?.is_empty();
        self.store.delete_vm(&vm.id).await?;
        let kept = if keep_disks {
            disks.iter().map(|d| d.path.clone()).collect()
        } else {
            self.remove_disk_files(&agent, &disks).await;
            Vec::new()
        };
        self.locks.lock().unwrap().remove(&vm.id);
        if had_nics {
            self.sync_networks().await?;
        }
        Ok(kept)
    }

    pub async fn info(&self) -> Res<Info> {
        let mut hosts = self.hosts_info(None).await?;
        // Where agents and the data live is for admins (`hostel host list`).
        let admin = crate::auth::current().is_none_or(|c| c.is_admin);
        if !admin {
            for h in &mut hosts {
                h.url.clear();
            }
        }
        let ssh = self.ssh_console.lock().unwrap().clone();
        Ok(Info {
            version: env!("CARGO_PKG_VERSION").into(),
            data_dir: if admin {
                self.cfg.data_dir.display().to_string()
            } else {
                String::new()
            },
            hosts,
            ssh_console: ssh.as_ref().map(|s| s.addr.clone()),
            ssh_host_key: ssh.as_ref().map(|s| s.host_key.clone()),
            ssh_host_key_fingerprint: ssh.map(|s| s.fingerprint),
        })
    }

    // ---- images and tasks ----

    fn task_view(t: TaskRecord) -> Task {
        Task {
            id: t.id,
            kind: t.kind,
            target: t.target,
            state: match t.state.as_str() {
                "succeeded" => TaskState::Succeeded,
                "failed" => TaskState::Failed,
                _ => TaskState::Running,
            },
            progress: t.progress,
            message: t.message,
            error: t.error,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }

    pub async fn task(&self, id: &str) -> Res<Task> {
        let t = self
            .store
            .task(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("there is no task {id:?}")))?;
        Ok(Self::task_view(t))
    }

    pub async fn image_view(&self, i: ImageRecord) -> Res<Image> {
        Ok(Image {
            used_by: {
                let mut names = self.store.image_users(&i.id).await?;
                if let Some(c) = crate::auth::current().filter(|c| !c.is_admin) {
                    // The caller's VMs only, asked of the database (not every VM read).
                    let mine: std::collections::HashSet<String> = self
                        .store
                        .vms_page(&hostel_store::VmPageQuery {
                            visible_to: Some((&c.user_id, &c.group_ids)),
                            limit: u32::MAX,
                            ..Default::default()
                        })
                        .await?
                        .into_iter()
                        .map(|r| r.vm.name)
                        .collect();
                    names.retain(|n| mine.contains(n));
                }
                names
            },
            name: i.name,
            kind: ImageKind::parse(&i.kind).unwrap_or(ImageKind::Disk),
            format: i.format,
            size_bytes: i.size_bytes,
            sha256: i.sha256,
            created_at: i.created_at,
        })
    }

    /// Starts an image build or import as a task; the task's id comes back at once.
    pub async fn image_task(
        self: &Arc<Self>,
        kind: &str,
        name: String,
        body: serde_json::Value,
    ) -> Res<Task> {
        validate_name("name", &name)?;
        if self.store.image_by_name(&name).await?.is_some() {
            return Err(ApiError::conflict_field(
                "name",
                format!("an image named {name:?} exists already: choose another name or delete it"),
            ));
        }
        let (host, agent) = self
            .agents()
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::unavailable("no host is connected".into()))?;
        let task = TaskRecord {
            id: new_id("task"),
            kind: kind.to_string(),
            target: name.clone(),
            state: "running".into(),
            progress: 0.0,
            message: "queued".into(),
            error: None,
            created_at: now(),
            updated_at: now(),
        };
        self.store.insert_task(&task).await?;
        let me = self.clone();
        let id = task.id.clone();
        let path = if kind == "image-build" {
            "/v1/images/build"
        } else {
            "/v1/images/import"
        };
        tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let a = agent.clone();
            let stream = tokio::spawn(async move {
                a.stream_lines(path, &body, move |v| {
                    let _ = tx.send(v);
                })
                .await
            });
            let mut outcome: Result<wire::ImageFiles, String> =
                Err("the host's agent ended the build without a result".into());
            while let Some(v) = rx.recv().await {
                if let Some(p) = v.get("progress").and_then(|p| p.as_f64()) {
                    let m = v["message"].as_str().unwrap_or("");
                    let _ = me.store.update_task(&id, "running", p, m, None).await;
                } else if let Some(done) = v.get("done") {
                    outcome = serde_json::from_value(done.clone()).map_err(|e| e.to_string());
                } else if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                    outcome = Err(e.to_string());
                }
            }
            if let Ok(Err(e)) = stream.await {
                outcome = Err(format!("{e:#}"));
            }
            let result = match outcome {
                Ok(files) => {
                    let rec = ImageRecord {
                        id: new_id("img"),
                        name: files.name.clone(),
                        kind: files.kind.as_str().into(),
                        format: files.format.clone(),
                        path: files.path.clone(),
                        initrd: files.initrd.clone(),
                        cmdline: files.cmdline.clone(),
                        size_bytes: files.size_bytes,
                        virtual_size_mib: files.virtual_size_mib,
                        sha256: files.sha256.clone(),
                        host_id: host.clone(),
                        created_at: now(),
                    };
                    match me.store.insert_image(&rec).await {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            // Never leave files no row knows of.
                            let _ = agent
                                .post::<_, ()>(
                                    "/v1/images/delete",
                                    &serde_json::json!({"path": files.path}),
                                )
                                .await;
                            Err(format!("recording the image failed: {e:#}"))
                        }
                    }
                }
                Err(e) => Err(e),
            };
            let _ = match result {
                Ok(()) => {
                    me.store
                        .update_task(&id, "succeeded", 1.0, "done", None)
                        .await
                }
                Err(e) => {
                    me.store
                        .update_task(&id, "failed", 1.0, "failed", Some(&e))
                        .await
                }
            };
        });
        self.task(&task.id).await
    }

    pub async fn delete_image(&self, name: &str) -> Res<()> {
        let img = self
            .store
            .image_by_name(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("there is no image named {name:?}")))?;
        let users = self.store.delete_image_if_unused(&img.id).await?;
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "image {name:?} is in use by {}: delete those VMs first",
                users.join(", ")
            )));
        }
        if let Some(agent) = self.agent(&img.host_id) {
            // Pools that clone keep a copy of the image; it goes with the image.
            for p in self.store.pools().await? {
                if p.host_id == img.host_id && p.driver != "dir" {
                    let _ = agent
                        .post::<_, ()>(
                            "/v1/pools/forget-image",
                            &serde_json::json!({
                                "pool": {"name": p.name, "driver": p.driver, "path": p.path},
                                "image_id": img.id,
                            }),
                        )
                        .await;
                }
            }
            agent
                .post::<_, ()>("/v1/images/delete", &serde_json::json!({"path": img.path}))
                .await?;
        }
        Ok(())
    }
}

impl From<AgentRefusal> for ApiError {
    fn from(r: AgentRefusal) -> Self {
        ApiError::from_agent(r)
    }
}
