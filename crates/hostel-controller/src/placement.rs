//! Placement: which host a new VM goes to. Every connected host is considered (images
//! follow the VM there); host tags and anti-affinity groups filter them, and of those
//! with room the one with the most memory not promised to running VMs wins (as Invirt
//! places them). The decision says why, host by host (`create --explain`).

use crate::error::Error;
use crate::vms::live_states;
use crate::Controller;
use hostel_api::public::{Placement, PlacementHost};

type Res<T> = crate::error::Result<T>;

/// What a VM asks of its host.
pub(crate) struct Ask<'a> {
    /// Memory it will promise when it runs (MiB); 0 for a VM not started now.
    pub need_mib: u64,
    /// Tags the host must all have.
    pub tags: &'a [String],
    /// No VM of this group may be on the host.
    pub anti_affinity: Option<&'a str>,
    /// Not this host (a migrating VM's own).
    pub exclude: Option<&'a str>,
    /// Only this host (a migration's target, named).
    pub only: Option<&'a str>,
    /// The VM this is for, whose own anti-affinity group does not count against it.
    pub vm_id: Option<&'a str>,
    /// Hosts the VM cannot run on, by id, and why (a moving VM's machine type or CPU
    /// model missing there).
    pub unfit: &'a [(String, String)],
}

/// The placement rule, in words, for the explanation.
const RULE: &str = "of the connected hosts with the tags asked for, no VM of the \
    anti-affinity group and room for the VM: the one with the most memory not promised to \
    running VMs";

impl Controller {
    /// Where a new VM goes, with every host's verdict; the host's total memory too.
    pub(crate) async fn place(&self, ask: &Ask<'_>) -> Res<(String, u64, Placement)> {
        let hosts = self.store.hosts().await?;
        // Memory promised to VMs with a QEMU, per host, added up by the database.
        let used_by: std::collections::HashMap<String, u64> = self
            .store
            .memory_by_host(&live_states())
            .await?
            .into_iter()
            .collect();
        let taken: Vec<String> = match ask.anti_affinity {
            Some(g) => self.store.hosts_with_group(g, ask.vm_id).await?,
            None => Vec::new(),
        };
        // Memory held on migrations' targets until they complete.
        let mut held: std::collections::HashMap<String, u64> = Default::default();
        for (host, mib) in self.migrating_to().await? {
            *held.entry(host).or_default() += mib;
        }
        let mut verdicts = Vec::new();
        let mut best: Option<(usize, i64, u64)> = None;
        for h in hosts {
            let used =
                used_by.get(&h.id).copied().unwrap_or(0) + held.get(&h.id).copied().unwrap_or(0);
            let free = h.memory_mib as i64 - used as i64;
            let missing: Vec<&str> = ask
                .tags
                .iter()
                .filter(|t| !h.tags.contains(t))
                .map(|t| t.as_str())
                .collect();
            let verdict = if ask.exclude == Some(h.id.as_str()) {
                "the VM's own host".to_string()
            } else if ask.only.is_some_and(|o| o != h.id) {
                "not the host asked for".to_string()
            } else if !h.drain.is_empty() {
                format!("{} (no new VMs)", h.drain)
            } else if !self.is_online(&h.id) {
                "offline".to_string()
            } else if let Some((_, why)) = ask.unfit.iter().find(|(id, _)| *id == h.id) {
                why.clone()
            } else if !missing.is_empty() {
                format!("lacks tag {}", missing.join(", "))
            } else if taken.contains(&h.id) {
                format!(
                    "has a VM of anti-affinity group {}",
                    ask.anti_affinity.unwrap_or_default()
                )
            } else if free < ask.need_mib as i64 {
                format!("too little memory free ({} MiB needed)", ask.need_mib)
            } else {
                if best.as_ref().map(|b| free > b.1).unwrap_or(true) {
                    best = Some((verdicts.len(), free, h.memory_mib));
                }
                "candidate".to_string()
            };
            verdicts.push(PlacementHost {
                host: h.id,
                free_mib: free,
                verdict,
            });
        }
        let Some((i, _, total)) = best else {
            let why: Vec<String> = verdicts
                .iter()
                .map(|v| format!("{}: {}", v.host, v.verdict))
                .collect();
            // No host connected: unavailable, for now. Hosts there, but none that fits
            // what was asked: a conflict with the cluster as it is.
            if verdicts.iter().all(|v| v.verdict == "offline") {
                return Err(Error::unavailable(
                    "no host is connected to place the VM on: start an agent, or wait for \
                     `hostel host list` to show one online",
                ));
            }
            return Err(Error::conflict(format!(
                "no host can take the VM ({}): ask for other tags or another anti-affinity \
                 group, free memory, or wait for a host to come back",
                why.join("; ")
            )));
        };
        verdicts[i].verdict = "chosen".into();
        let chosen = verdicts[i].host.clone();
        Ok((
            chosen.clone(),
            total,
            Placement {
                chosen,
                rule: RULE.into(),
                hosts: verdicts,
            },
        ))
    }
}
