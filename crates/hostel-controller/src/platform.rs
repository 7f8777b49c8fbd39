//! A VM's machine type and CPU model: chosen when it is made, pinned in its record, and
//! checked against a host before it moves there. A migration stream carries the guest's
//! devices and CPU state, so the target's QEMU must offer the same machine type and run
//! the same CPU model in full; QEMU's own `q35` and `max`/`host` mean different things
//! on different hosts, so a cluster's VMs get a named, versioned baseline instead.
//! The target must also run the VM's networks.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_api::public::{SetCpuModelRequest, Vm};
use hostel_model::{validate_cpu_model, Invalid, CPU_BASELINE, CPU_HOST};
use hostel_store::{HostRecord, VmRecord};

type Res<T> = crate::error::Result<T>;

impl Controller {
    /// The CPU model a new VM on `host` gets: the one asked for, if the host runs it in
    /// full; otherwise `host` on a single host, and the baseline once there are more.
    pub(crate) async fn choose_cpu_model(
        &self,
        asked: Option<&str>,
        host: &HostRecord,
    ) -> Res<String> {
        if let Some(m) = asked {
            check_runs(m, host)?;
            return Ok(m.to_string());
        }
        let several = self.store.hosts().await?.len() > 1;
        let runs_baseline = host.platform.cpu_models.is_empty()
            || host.platform.cpu_models.iter().any(|m| m == CPU_BASELINE);
        Ok(if several && runs_baseline {
            CPU_BASELINE
        } else {
            CPU_HOST
        }
        .to_string())
    }

    /// Pins a VM made before pinning to its host's `q35` (as `host` CPU), before it
    /// starts from cold: from then on it moves only where that machine type exists.
    pub(crate) async fn pin_platform(&self, vm: &VmRecord) -> Res<VmRecord> {
        if vm.machine.is_some() && vm.cpu_model.is_some() {
            return Ok(vm.clone());
        }
        let host = self.store.host(vm.host_id.as_deref().unwrap_or("")).await?;
        let machine = host
            .map(|h| h.platform.machine)
            .filter(|m| !m.is_empty() && vm.machine.is_none());
        let cpu = vm.cpu_model.is_none().then_some(CPU_HOST);
        self.store
            .set_vm_platform(&vm.id, machine.as_deref(), cpu)
            .await?;
        let mut vm = vm.clone();
        vm.machine = machine.or(vm.machine);
        vm.cpu_model = Some(vm.cpu_model.unwrap_or_else(|| CPU_HOST.into()));
        Ok(vm)
    }

    /// Refuses a move to a host that does not run one of the VM's networks (the state
    /// pushed to it last failed there), after pushing it once more.
    pub(crate) async fn check_networks_on(&self, vm: &VmRecord, target: &str) -> Res<()> {
        let nics = self.store.nics_of(&vm.id).await?;
        let Some(agent) = self.agent(target).filter(|_| !nics.is_empty()) else {
            return Ok(());
        };
        let missing = |have: &wire::NetworksState| -> Vec<String> {
            let mut m: Vec<String> = nics
                .iter()
                .map(|n| n.network_id.clone())
                .filter(|id| !have.networks.iter().any(|n| &n.id == id))
                .collect();
            m.dedup();
            m
        };
        let mut miss = missing(&agent.get_networks().await?);
        if !miss.is_empty() {
            if let Err(e) = self.sync_networks().await {
                tracing::warn!("pushing the networks again before a move: {e}");
            }
            miss = missing(&agent.get_networks().await?);
        }
        if miss.is_empty() {
            return Ok(());
        }
        let mut names = Vec::new();
        for id in &miss {
            names.push(match self.store.network_by_id(id).await? {
                Some(n) => n.name,
                None => id.clone(),
            });
        }
        Err(Error::conflict(format!(
            "host {target} does not run network {} of VM {}: it failed to set it up (its \
             agent's log says why); fix that host, or choose another",
            names.join(", "),
            vm.name
        )))
    }

    /// Sets a stopped VM's CPU model (its owner or an admin); its next start uses it.
    pub async fn set_cpu_model(&self, ctx: &Ctx, name: &str, req: SetCpuModelRequest) -> Res<Vm> {
        ctx.params(serde_json::json!({"cpu_model": req.cpu_model}));
        let (_guard, vm) = self.locked_vm(ctx, name).await?;
        if vm.state.has_process() {
            return Err(Error::conflict(format!(
                "VM {name} is {}: its CPU model changes only while it is stopped (`hostel \
                 shutdown {name}` first)",
                vm.state.as_str()
            )));
        }
        let host = self.host_named(vm.host_id.as_deref().unwrap_or("")).await?;
        check_runs(&req.cpu_model, &host)?;
        self.store
            .set_vm_platform(&vm.id, None, Some(&req.cpu_model))
            .await?;
        let vm = self.vm_named(ctx, name).await?;
        self.view(&vm, true).await
    }
}

/// Refuses a CPU model `host` does not run in full (when it says which it runs).
fn check_runs(model: &str, host: &HostRecord) -> Res<()> {
    validate_cpu_model(model)?;
    let models = &host.platform.cpu_models;
    if model == CPU_HOST || models.is_empty() || models.iter().any(|m| m == model) {
        return Ok(());
    }
    Err(Invalid::new(
        "cpu_model",
        format!(
            "host {} does not run CPU model {model:?} in full under {}: choose `host` or one \
             of {}",
            host.name,
            host.accel.as_str(),
            models.join(", ")
        ),
    )
    .into())
}

/// Why `vm` cannot run on `target` as it is pinned, if it cannot: the target's QEMU must
/// have its machine type and run its CPU model in full. A `live` move also needs the
/// `host` model (and an unpinned machine type) to mean the same on both hosts.
pub(crate) fn check_movable(
    vm: &VmRecord,
    source: &HostRecord,
    target: &HostRecord,
    live: bool,
) -> Res<()> {
    let name = &vm.name;
    let t = &target.platform;
    match &vm.machine {
        Some(m) if !t.machines.is_empty() && !t.machines.contains(m) => {
            return Err(Error::conflict(format!(
                "VM {name} is pinned to machine type {m}, which host {} (QEMU {}) does not \
                 have: run a QEMU there that has it, or choose another host",
                target.name, target.qemu_version
            )));
        }
        None if live && source.qemu_version != target.qemu_version => {
            return Err(Error::conflict(format!(
                "host {} runs QEMU {} and host {} QEMU {}: VM {name} runs the `q35` of its \
                 QEMU (made before machine types were pinned), which differs between \
                 versions, so it cannot move live; stop it and start it again (which pins \
                 it to its host's machine type), or move it --offline",
                source.name, source.qemu_version, target.name, target.qemu_version
            )));
        }
        _ => {}
    }
    let model = vm.cpu_model.as_deref().unwrap_or(CPU_HOST);
    if model != CPU_HOST {
        if !t.cpu_models.is_empty() && !t.cpu_models.iter().any(|m| m == model) {
            return Err(Error::conflict(format!(
                "VM {name} runs CPU model {model}, which host {} does not run in full under \
                 {}: choose another host, or stop the VM and give it a model both run \
                 (`hostel cpu-model {name} {CPU_BASELINE}`)",
                target.name,
                target.accel.as_str()
            )));
        }
    } else if live {
        let s = &source.platform;
        let same = source.accel == target.accel
            && source.qemu_version == target.qemu_version
            && s.cpu_name == t.cpu_name;
        if !same {
            return Err(Error::conflict(format!(
                "VM {name} runs CPU model `host` (all host {} offers: {} {} under QEMU {}), \
                 which host {} ({} {} under QEMU {}) may not match: stop it, give it a named \
                 model (`hostel cpu-model {name} {CPU_BASELINE}`) and start it again, or \
                 move it --offline",
                source.name,
                s.cpu_name,
                source.accel.as_str(),
                source.qemu_version,
                target.name,
                t.cpu_name,
                target.accel.as_str(),
                target.qemu_version
            )));
        }
    }
    Ok(())
}
