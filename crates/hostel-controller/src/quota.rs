//! Quotas, charged to a VM's owner (Invirt's `owners` table): cluster-wide defaults,
//! per-owner overrides, checked under one lock so that concurrent requests never pass a
//! limit together.
//!
//! What is charged is what a VM can take, not what it asks for: memory at the VM's max
//! memory (QEMU is started with it, and a guest without a balloon driver uses it all, as
//! Proxmox charges configured memory), disk space for disks, snapshots and save files,
//! and the shared things a VM holds: NICs (addresses) and port forwards (host ports).
//! Snapshots and saves are charged a bound, not a measurement, so that the charge is
//! known before the file is written and cannot grow behind the quota's back.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::public::{Quota, QuotaLimits, QuotaUse};
use hostel_model::{format_mib, Invalid};
use hostel_store::VmRecord;

type Res<T> = crate::error::Result<T>;

/// The defaults until an admin sets others (`hostel quota set default ...`).
pub fn builtin_defaults() -> QuotaLimits {
    QuotaLimits {
        ram_total_mib: Some(8 << 10),
        ram_per_vm_mib: Some(4 << 10),
        disk_total_mib: Some(200 << 10),
        disk_per_vm_mib: Some(100 << 10),
        vms_total: Some(10),
        vms_running: Some(5),
        vcpus_total: Some(8),
        nics_total: Some(8),
        port_forwards_total: Some(8),
        snapshots_total: Some(20),
    }
}

/// QEMU's device state beside guest RAM in a save file or a memory snapshot (VGA RAM
/// alone is 16 MiB), so a memory state is charged max memory plus this.
pub const DEVICE_STATE_MIB: u64 = 64;

/// What a memory state (save file, snapshot with memory) of `vm` is charged.
pub fn memory_state_mib(vm: &VmRecord) -> u64 {
    vm.max_memory_mib + DEVICE_STATE_MIB
}

/// What one snapshot of `vm` is charged: a snapshot keeps every block the VM overwrites
/// later, up to its disks' sizes, so it is charged them (plus a memory state).
pub fn snapshot_mib(vm: &VmRecord, disks_mib: u64, with_memory: bool) -> u64 {
    disks_mib + if with_memory { memory_state_mib(vm) } else { 0 }
}

/// What a request would add to its owner's use.
#[derive(Debug, Clone, Default)]
pub struct Charge {
    pub ram_mib: u64,
    pub disk_mib: u64,
    pub vms: u64,
    pub vms_running: u64,
    pub vcpus: u64,
    pub nics: u64,
    pub port_forwards: u64,
    pub snapshots: u64,
    /// The VM's max memory and its disks' total after the request (per-VM limits).
    pub vm_max_ram_mib: u64,
    pub vm_disk_mib: u64,
}

/// The owner key of a VM: `user:ID`, `group:ID`, or none (ownerless: admins only).
pub fn owner_key(vm: &VmRecord) -> Option<String> {
    match (&vm.owner_user_id, &vm.owner_group_id) {
        (Some(u), _) => Some(format!("user:{u}")),
        (None, Some(g)) => Some(format!("group:{g}")),
        _ => None,
    }
}

/// Whether the caller may see what is set for owner `key`: admins anyone's, others
/// their own, their groups' and the defaults.
pub(crate) fn may_see_owner(c: &crate::context::Caller, key: &str) -> bool {
    c.is_admin
        || key == "default"
        || key == format!("user:{}", c.user_id)
        || key
            .strip_prefix("group:")
            .is_some_and(|g| c.group_ids.iter().any(|x| x == g))
}

impl Controller {
    /// Field by field: the owner's own limit, else the default's.
    async fn limits_of(&self, owner: &str) -> Res<QuotaLimits> {
        let defaults = match self.store.quota("default").await? {
            Some(j) => serde_json::from_str(&j).unwrap_or_default(),
            None => builtin_defaults(),
        };
        if owner == "default" {
            return Ok(defaults);
        }
        let own: QuotaLimits = match self.store.quota(owner).await? {
            Some(j) => serde_json::from_str(&j).unwrap_or_default(),
            None => QuotaLimits::default(),
        };
        Ok(QuotaLimits {
            ram_total_mib: own.ram_total_mib.or(defaults.ram_total_mib),
            ram_per_vm_mib: own.ram_per_vm_mib.or(defaults.ram_per_vm_mib),
            disk_total_mib: own.disk_total_mib.or(defaults.disk_total_mib),
            disk_per_vm_mib: own.disk_per_vm_mib.or(defaults.disk_per_vm_mib),
            vms_total: own.vms_total.or(defaults.vms_total),
            vms_running: own.vms_running.or(defaults.vms_running),
            vcpus_total: own.vcpus_total.or(defaults.vcpus_total),
            nics_total: own.nics_total.or(defaults.nics_total),
            port_forwards_total: own.port_forwards_total.or(defaults.port_forwards_total),
            snapshots_total: own.snapshots_total.or(defaults.snapshots_total),
        })
    }

    async fn use_of(&self, owner: &str, except_vm: Option<&str>) -> Res<QuotaUse> {
        let mut u = QuotaUse::default();
        // Only the owner's VMs and disks: this runs on every create, start and resize.
        let (vms, disks) = match owner.split_once(':') {
            Some(("user", id)) => self.store.owned(Some(id), None).await?,
            Some(("group", id)) => self.store.owned(None, Some(id)).await?,
            _ => (Vec::new(), Vec::new()),
        };
        let mut counted = std::collections::HashSet::new();
        for v in vms {
            if owner_key(&v).as_deref() != Some(owner) || Some(v.id.as_str()) == except_vm {
                continue;
            }
            u.vms += 1;
            if v.state.has_process() {
                u.vms_running += 1;
                u.ram_mib += v.max_memory_mib;
                u.vcpus += v.vcpus as u64;
            }
            let disks_mib = disks
                .iter()
                .filter(|d| d.vm_id == v.id)
                .map(|d| d.size_mib)
                .sum::<u64>();
            u.disk_mib += disks_mib;
            for s in self.store.snapshots_of(&v.id).await? {
                u.snapshots += 1;
                u.snapshots_mib += snapshot_mib(&v, disks_mib, s.with_memory);
            }
            if v.saved_path.is_some() {
                u.saves_mib += memory_state_mib(&v);
            }
            u.nics += self.store.nics_of(&v.id).await?.len() as u64;
            counted.insert(v.id);
        }
        u.backups_mib = self.store.backup_bytes_of(owner).await?.div_ceil(1 << 20);
        u.disk_mib += u.snapshots_mib + u.saves_mib + u.backups_mib;
        u.port_forwards = self
            .store
            .forwards()
            .await?
            .iter()
            .filter(|f| counted.contains(&f.vm_id))
            .count() as u64;
        Ok(u)
    }

    /// Is the owner an admin user (whose VMs no quota limits)?
    async fn exempt(&self, owner: &str) -> Res<bool> {
        match owner.strip_prefix("user:") {
            Some(id) => Ok(self
                .store
                .user_by_id(id)
                .await?
                .map(|u| u.is_admin)
                .unwrap_or(false)),
            None => Ok(false),
        }
    }

    /// Takes the quota lock and checks that `charge` fits `owner`'s limits; the lock is
    /// to be held until the change is recorded. None (no lock) for owners no quota
    /// limits: ownerless VMs and admins' own.
    pub(crate) async fn charge(
        &self,
        owner: Option<&str>,
        charge: &Charge,
    ) -> Res<Option<tokio::sync::MutexGuard<'_, ()>>> {
        let Some(owner) = owner else {
            return Ok(None);
        };
        if self.exempt(owner).await? {
            return Ok(None);
        }
        let guard = self.quota_lock.lock().await;
        let limits = self.limits_of(owner).await?;
        let used = self.use_of(owner, None).await?;
        let who = self.owner_name(owner).await?;
        let over =
            |what: &str, now: u64, add: u64, limit: Option<u64>, unit: &dyn Fn(u64) -> String| {
                match limit {
                    // A request that adds nothing to a quantity is not refused by it: an
                    // owner over a lowered limit can still restore, stop and delete.
                    Some(l) if add > 0 && now + add > l => Some(format!(
                        "over quota: {what} of {who} would be {} with this, the limit is {} \
                     (over by {}): free some, or ask an admin to raise it (`hostel quota show`)",
                        unit(now + add),
                        unit(l),
                        unit(now + add - l)
                    )),
                    _ => None,
                }
            };
        let mib = |n: u64| format_mib(n);
        let count = |n: u64| n.to_string();
        // The one-VM limits first: they are what a request can fix by itself.
        let checks = [
            over(
                "one VM's max memory",
                0,
                charge.vm_max_ram_mib,
                limits.ram_per_vm_mib,
                &mib,
            ),
            over(
                "one VM's disks",
                0,
                charge.vm_disk_mib,
                limits.disk_per_vm_mib,
                &mib,
            ),
            over(
                "the max memory of running VMs",
                used.ram_mib,
                charge.ram_mib,
                limits.ram_total_mib,
                &mib,
            ),
            over(
                "the disk space (disks, snapshots, save files)",
                used.disk_mib,
                charge.disk_mib,
                limits.disk_total_mib,
                &mib,
            ),
            over(
                "the number of VMs",
                used.vms,
                charge.vms,
                limits.vms_total,
                &count,
            ),
            over(
                "the number of running VMs",
                used.vms_running,
                charge.vms_running,
                limits.vms_running,
                &count,
            ),
            over(
                "the vCPUs of running VMs",
                used.vcpus,
                charge.vcpus,
                limits.vcpus_total,
                &count,
            ),
            over(
                "the number of NICs",
                used.nics,
                charge.nics,
                limits.nics_total,
                &count,
            ),
            over(
                "the number of port forwards",
                used.port_forwards,
                charge.port_forwards,
                limits.port_forwards_total,
                &count,
            ),
            over(
                "the number of snapshots",
                used.snapshots,
                charge.snapshots,
                limits.snapshots_total,
                &count,
            ),
        ];
        if let Some(msg) = checks.into_iter().flatten().next() {
            return Err(Error::Quota(Invalid::new("quota", msg).to_string()));
        }
        Ok(Some(guard))
    }

    pub(crate) async fn owner_name(&self, owner: &str) -> Res<String> {
        Ok(match owner.split_once(':') {
            Some(("user", id)) => format!(
                "user {}",
                self.store
                    .user_by_id(id)
                    .await?
                    .map(|u| u.name)
                    .unwrap_or_default()
            ),
            Some(("group", id)) => format!(
                "group {}",
                self.store
                    .group_by_id(id)
                    .await?
                    .map(|g| g.name)
                    .unwrap_or_default()
            ),
            _ => owner.to_string(),
        })
    }

    /// What a VM as a whole charges its owner (for a transfer), and its per-VM sizes.
    pub(crate) async fn vm_charge(&self, vm: &VmRecord) -> Res<Charge> {
        let disks_mib = self.disks_mib(vm).await?;
        let snapshots = self.store.snapshots_of(&vm.id).await?;
        let snapshots_mib: u64 = snapshots
            .iter()
            .map(|s| snapshot_mib(vm, disks_mib, s.with_memory))
            .sum();
        let saves_mib = if vm.saved_path.is_some() {
            memory_state_mib(vm)
        } else {
            0
        };
        let port_forwards = self
            .store
            .forwards()
            .await?
            .iter()
            .filter(|f| f.vm_id == vm.id)
            .count() as u64;
        let on = vm.state.has_process();
        Ok(Charge {
            ram_mib: if on { vm.max_memory_mib } else { 0 },
            disk_mib: disks_mib + snapshots_mib + saves_mib,
            vms: 1,
            vms_running: on as u64,
            vcpus: if on { vm.vcpus as u64 } else { 0 },
            nics: self.store.nics_of(&vm.id).await?.len() as u64,
            port_forwards,
            snapshots: snapshots.len() as u64,
            vm_max_ram_mib: vm.max_memory_mib,
            vm_disk_mib: disks_mib,
        })
    }

    /// Checks that one more NIC fits the owner's quota of `vm`; the guard is to be held
    /// until the NIC is recorded.
    pub(crate) async fn charge_nic(
        &self,
        vm: &VmRecord,
    ) -> Res<Option<tokio::sync::MutexGuard<'_, ()>>> {
        let charge = Charge {
            nics: 1,
            ..Default::default()
        };
        self.charge(owner_key(vm).as_deref(), &charge).await
    }

    /// Checks that one more port forward fits the owner's quota of `vm`; the guard is to
    /// be held until the forward is recorded.
    pub(crate) async fn charge_port_forward(
        &self,
        vm: &VmRecord,
    ) -> Res<Option<tokio::sync::MutexGuard<'_, ()>>> {
        let charge = Charge {
            port_forwards: 1,
            ..Default::default()
        };
        self.charge(owner_key(vm).as_deref(), &charge).await
    }

    /// The sizes of `vm`'s disks, added up.
    async fn disks_mib(&self, vm: &VmRecord) -> Res<u64> {
        Ok(self
            .store
            .disks_of(&vm.id)
            .await?
            .iter()
            .map(|d| d.size_mib)
            .sum())
    }

    /// Checks that one more snapshot of `vm` fits, charged what [`snapshot_mib`] says.
    pub(crate) async fn charge_snapshot(
        &self,
        vm: &VmRecord,
        with_memory: bool,
    ) -> Res<Option<tokio::sync::MutexGuard<'_, ()>>> {
        let disks_mib = self.disks_mib(vm).await?;
        let charge = Charge {
            snapshots: 1,
            disk_mib: snapshot_mib(vm, disks_mib, with_memory),
            ..Default::default()
        };
        self.charge(owner_key(vm).as_deref(), &charge).await
    }

    /// Checks that a save file of `vm` fits the owner's disk space.
    pub(crate) async fn charge_save(
        &self,
        vm: &VmRecord,
    ) -> Res<Option<tokio::sync::MutexGuard<'_, ()>>> {
        let charge = Charge {
            disk_mib: memory_state_mib(vm),
            ..Default::default()
        };
        self.charge(owner_key(vm).as_deref(), &charge).await
    }

    /// Checks that `grow_mib` more disk on `vm` fits once its disks of `going_mib` are
    /// gone (a restore over a VM replaces them; 0 elsewhere): each of the VM's snapshots
    /// is charged the VM's disk sizes, so it grows with them.
    pub(crate) async fn charge_disk_growth(
        &self,
        vm: &VmRecord,
        grow_mib: u64,
        going_mib: u64,
    ) -> Res<Option<tokio::sync::MutexGuard<'_, ()>>> {
        let disks_mib = self.disks_mib(vm).await?;
        let snapshots = self.store.snapshots_of(&vm.id).await?.len() as u64;
        let charge = Charge {
            disk_mib: grow_mib.saturating_sub(going_mib) * (1 + snapshots),
            vm_disk_mib: (disks_mib + grow_mib).saturating_sub(going_mib),
            ..Default::default()
        };
        self.charge(owner_key(vm).as_deref(), &charge).await
    }

    /// `hostel quota show [OWNER]`: limits and use; users see their own and their groups'.
    pub async fn quota_show(&self, ctx: &Ctx, owner: Option<&str>) -> Res<Quota> {
        let c = ctx.caller()?;
        let not_yours =
            || Error::forbidden("you may see your own quota, your groups' and the defaults");
        let key = match owner {
            None => format!("user:{}", c.user_id),
            Some("default") => "default".into(),
            Some(o) if c.is_admin => self.resolve_owner(o).await?,
            // Anyone else's is refused alike whether or not the name exists, so that the
            // answer does not tell which names do.
            Some(o) => match self.resolve_owner(o).await {
                Ok(key) => key,
                Err(Error::NotFound { .. }) => return Err(not_yours()),
                Err(e) => return Err(e),
            },
        };
        if !may_see_owner(c, &key) {
            return Err(not_yours());
        }
        Ok(Quota {
            owner: match key.as_str() {
                "default" => "default".into(),
                k => self.owner_name(k).await?.replacen(' ', ":", 1),
            },
            limits: self.limits_of(&key).await?,
            used: if key == "default" {
                QuotaUse::default()
            } else {
                self.use_of(&key, None).await?
            },
            exempt: key != "default" && self.exempt(&key).await?,
        })
    }

    /// `user:NAME` / `group:NAME` (a bare name is a user) to an owner key.
    pub(crate) async fn resolve_owner(&self, o: &str) -> Res<String> {
        let (kind, name) = o.split_once(':').unwrap_or(("user", o));
        match kind {
            "user" => match self.store.user_by_name(name).await? {
                Some(u) => Ok(format!("user:{}", u.id)),
                None => Err(Error::not_found(
                    "user",
                    name,
                    format!("there is no user named {name:?}"),
                )),
            },
            "group" => match self.store.group_by_name(name).await? {
                Some(g) => Ok(format!("group:{}", g.id)),
                None => Err(Error::not_found(
                    "group",
                    name,
                    format!("there is no group named {name:?}"),
                )),
            },
            _ => Err(Invalid::new(
                "owner",
                format!("{o:?}: give user:NAME, group:NAME or default"),
            )
            .into()),
        }
    }

    pub async fn quota_set(&self, ctx: &Ctx, owner: &str, limits: QuotaLimits) -> Res<Quota> {
        ctx.params(serde_json::to_value(&limits).unwrap_or_default());
        let c = ctx.caller()?;
        if !c.is_admin {
            return Err(Error::forbidden("only an admin may do this"));
        }
        let key = if owner == "default" {
            "default".to_string()
        } else {
            self.resolve_owner(owner).await?
        };
        let json = serde_json::to_string(&limits).map_err(anyhow::Error::from)?;
        self.store.set_quota(&key, &json).await?;
        self.quota_show(ctx, Some(owner)).await
    }
}
