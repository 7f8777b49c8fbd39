//! A VM's definition as its host's agent needs it, and the view the API shows, both
//! rendered from the records each time.

use crate::boot::{BootConfig, CloudConfig};
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::agent::{self as wire, Boot, DiskSpec, VmSpec};
use hostel_api::public::*;
use hostel_model::ImageKind;
use hostel_store::VmRecord;

type Res<T> = crate::error::Result<T>;

impl Controller {
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
        // The files of the VM's images as its host holds them.
        let host = vm.host_id.clone().unwrap_or_default();
        let boot = match (&bc.kernel, image) {
            (Some(kernel), _) => Boot::DirectKernel {
                kernel: kernel.clone(),
                initrd: bc.initrd.clone(),
                cmdline: bc.cmdline.clone().unwrap_or_else(|| "console=ttyS0".into()),
            },
            (None, Some(img)) if img.kind == ImageKind::DirectKernel => {
                let (kernel, initrd) = self.image_files_on(&img, &host).await?;
                Boot::DirectKernel {
                    kernel,
                    initrd,
                    cmdline: img.cmdline.clone().unwrap_or_default(),
                }
            }
            _ => match bc.firmware {
                Firmware::Bios => Boot::Bios,
                Firmware::Uefi => Boot::Uefi,
            },
        };
        let cdrom = match (&vm.cdrom_image_id, &bc.cdrom_path) {
            (Some(id), _) => match self.store.image_by_id(id).await? {
                Some(i) => Some(DiskSpec {
                    index: 0,
                    path: self.image_files_on(&i, &host).await?.0,
                    format: i.format,
                    pool: None,
                }),
                None => None,
            },
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
            limits: self.limits_in_force(vm).await?,
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
            on_poweroff: vm.on_poweroff,
            on_reboot: vm.on_reboot,
            on_crash: vm.on_crash,
            nics: nics.iter().map(Self::nic_spec).collect(),
            machine: vm.machine.clone(),
            cpu_model: vm.cpu_model.clone(),
            guest_agent: vm.guest_agent,
        })
    }

    /// The agent's view of a pool, by id; none: the host's default pool.
    pub(crate) async fn pool_spec(&self, pool_id: Option<&str>) -> Res<Option<wire::PoolSpec>> {
        let Some(id) = pool_id else {
            return Ok(None);
        };
        let p = self.store.pool_by_id(id).await?.ok_or_else(|| {
            Error::from(anyhow::anyhow!(
                "a disk names pool {id}, which is not recorded"
            ))
        })?;
        Ok(Some(wire::PoolSpec {
            name: p.name,
            driver: p.driver.as_str().into(),
            path: p.path,
        }))
    }

    /// What the API shows of a VM; `live`: ask its host for what runs now.
    pub(crate) async fn view(&self, vm: &VmRecord, live: bool) -> Res<Vm> {
        self.view_with(vm, live, None).await
    }

    /// [`Self::view`], with the status the host's agent has just given (a start's
    /// answer), so that the host is not asked again.
    pub(crate) async fn view_with(
        &self,
        vm: &VmRecord,
        live: bool,
        known: Option<wire::VmStatus>,
    ) -> Res<Vm> {
        let state = vm.state;
        let spec = self.spec_of(vm).await?;
        let image = self.image_of(vm).await?;
        let disks = self.store.disks_of(&vm.id).await?;
        let mut status = known.filter(|s| s.state == state);
        if status.is_none() && live && state.has_process() {
            if let Some(agent) = vm.host_id.as_deref().and_then(|h| self.agent(h)) {
                status = agent.get_vm(&vm.id).await.ok();
            }
        }
        let host = vm.host_id.as_deref().and_then(|h| self.agent(h));
        let accel = match &status {
            Some(s) => Some(s.accel),
            None => match &host {
                Some(a) if live => a.host().await.ok().map(|f| f.accel),
                _ => None,
            },
        };
        let argv = match (&status, &host) {
            (Some(s), _) => s.argv.clone(),
            // What the next start would run, rendered by the host that would run it.
            (None, Some(agent)) if live => {
                agent.render_argv(spec.clone()).await.unwrap_or_default()
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
            limits: self.vm_limits_of(&vm.id).await?,
            limits_in_force: spec.limits.clone(),
            anti_affinity: vm.anti_affinity.clone(),
            placement: None,
            id: vm.id.clone(),
            name: vm.name.clone(),
            owner,
            admin_group,
            lease_warning: vm.lease_expires_at.and_then(crate::lease::warning),
            lease_expires_at: vm.lease_expires_at.map(|t| t.to_string()),
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
                machine: vm.machine.clone().unwrap_or_else(|| "q35".into()),
                cpu_model: vm
                    .cpu_model
                    .clone()
                    .unwrap_or_else(|| hostel_model::CPU_HOST.into()),
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
            created_at: vm.created_at.to_string(),
        })
    }
}
