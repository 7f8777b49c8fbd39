//! Live migration: a running VM moves to another host while it runs. The target's agent
//! gets new files for the VM's disks and starts a QEMU that waits for the VM's state and
//! serves those disks over NBD (`MigrateIn`); the source's agent mirrors the disks into
//! them, then sends the memory (`MigrateOut`, with progress and its convergence rules,
//! `hostel-agent/src/migrate.rs`). Only once QEMU says it completed does the database move
//! the VM and its disks to the target; the source's QEMU and disk files then go. Before
//! that, any failure ends the target's QEMU, removes its new disk files and leaves the VM
//! running on the source.
//!
//! While a VM migrates, its agents' state events are not written (the migration writes
//! the outcome), and events from a host that is not the VM's are never written.
//!
//! Not yet (issue #15): pools shared between hosts (memory only), TLS on the streams, the
//! migration's steps kept in the database for recovery after a crash, cancel, drain and
//! rebalance.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use futures::StreamExt;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_api::public::*;
use hostel_model::VmState;
use hostel_store::VmRecord;
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// The downtime a migration allows unless asked otherwise (ms).
const DEFAULT_MAX_DOWNTIME_MS: u64 = 300;

/// What both ends of every migration use: auto-converge throttles a guest that writes
/// memory faster than it is sent; events let QEMU report its steps.
fn capabilities() -> Vec<wire::MigrationCapability> {
    ["auto-converge", "events"]
        .into_iter()
        .map(|c| wire::MigrationCapability {
            capability: c.into(),
            state: true,
        })
        .collect()
}

/// The address part of an agent's `https://ADDRESS:PORT`, where the host's QEMU listens
/// for a migration stream.
fn host_address(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let hostport = rest.split('/').next()?;
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => hostport
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(hostport),
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The address the source host sends a migration stream to: the target agent's, unless
/// that is a loopback address (the agent inside `hostel up`, reached by the controller on
/// its own machine), whose machine is then reached at the address it uses itself to
/// reach the source.
fn stream_address(target_url: &str, source_url: &str) -> Option<String> {
    let target = host_address(target_url)?;
    let loopback = target
        .parse::<std::net::IpAddr>()
        .map(|a| a.is_loopback())
        .unwrap_or(target == "localhost");
    if !loopback {
        return Some(target);
    }
    let source: std::net::IpAddr = host_address(source_url)?.parse().ok()?;
    if source.is_loopback() {
        // Both agents on this machine: loopback reaches the target.
        return Some(target);
    }
    let any: std::net::IpAddr = if source.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    // A datagram socket "connected" sends nothing; it only picks the route's address.
    let sock = std::net::UdpSocket::bind((any, 0)).ok()?;
    sock.connect((source, 9)).ok()?;
    let me = sock.local_addr().ok()?.ip();
    (!me.is_loopback()).then(|| me.to_string())
}

impl Controller {
    /// Each migration's target host and the memory it holds there.
    pub(crate) fn migrating_to(&self) -> Vec<(String, u64)> {
        self.migrating.lock().unwrap().values().cloned().collect()
    }

    /// Whether a migration of this VM is under way (its agents' events then wait).
    pub(crate) fn is_migrating(&self, vm_id: &str) -> bool {
        self.migrating.lock().unwrap().contains_key(vm_id)
    }

    /// Starts moving a running VM to another host (admins): checked up front, then a
    /// task whose id comes back at once.
    pub async fn migrate_vm(
        self: &Arc<Self>,
        ctx: &Ctx,
        name: &str,
        req: MigrateRequest,
    ) -> Res<Task> {
        ctx.require_admin()?;
        ctx.params(
            serde_json::json!({"to": req.to, "max_downtime_ms": req.max_downtime_ms,
            "bandwidth_mibps": req.bandwidth_mibps, "force_complete": req.force_complete}),
        );
        let (guard, vm) = self.locked_vm(ctx, name).await?;
        if !matches!(vm.state, VmState::Running | VmState::Paused) {
            return Err(Error::conflict(format!(
                "VM {name} is {}: only a running or paused VM migrates live (start it, or move \
                 a stopped VM by offline migration, not built yet)",
                vm.state.as_str()
            )));
        }
        if let Some(d) = req.max_downtime_ms {
            if !(1..=60_000).contains(&d) {
                return Err(hostel_model::Invalid::new(
                    "max_downtime_ms",
                    format!("{d} ms: allow from 1 to 60,000 ms of downtime"),
                )
                .into());
            }
        }
        let source = vm.host_id.clone().unwrap_or_default();
        if req.to.as_deref() == Some(source.as_str()) {
            return Err(hostel_model::Invalid::new(
                "to",
                format!("VM {name} is on host {source} already: name another host"),
            )
            .into());
        }
        if let Some(t) = &req.to {
            self.host_named(t).await?;
        }
        if !self.store.snapshots_of(&vm.id).await?.is_empty() {
            return Err(Error::conflict(format!(
                "VM {name} has snapshots, which do not move with its disks: delete them first \
                 (`hostel snapshot list {name}`)"
            )));
        }
        let source_agent = self.host_agent(&vm)?;
        // The target is chosen and its memory held for the VM at once: two migrations
        // at a time (a drain's) do not both fill the same room.
        let placing = self.migrate_placing.lock().await;
        let (target, _, _) = self
            .place(&crate::placement::Ask {
                need_mib: vm.max_memory_mib,
                tags: &[],
                anti_affinity: vm.anti_affinity.as_deref(),
                exclude: Some(&source),
                only: req.to.as_deref(),
                vm_id: Some(&vm.id),
            })
            .await?;
        let target_rec = self.store.host(&target).await?.ok_or_else(|| {
            Error::from(anyhow::anyhow!("host {target} went while it was chosen"))
        })?;
        let source_url = self
            .store
            .host(&source)
            .await?
            .map(|h| h.url)
            .unwrap_or_default();
        let connect = stream_address(&target_rec.url, &source_url).ok_or_else(|| {
            Error::from(anyhow::anyhow!(
                "no address of host {target} that host {source} reaches is known (agent \
                 addresses {:?} and {source_url:?})",
                target_rec.url
            ))
        })?;
        let target_agent = self.agent(&target).ok_or_else(|| {
            Error::unavailable(format!("host {target} is not connected: try again"))
        })?;
        ctx.target(&vm.name, Some(&vm.id));
        let task = self
            .new_task(
                ctx,
                "vm-migrate",
                &format!("{} from {source} to {target}", vm.name),
                "preparing the target",
            )
            .await?;
        self.migrating
            .lock()
            .unwrap()
            .insert(vm.id.clone(), (target.clone(), vm.max_memory_mib));
        drop(placing);
        let me = self.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            // The VM's lock is held to the end: no other operation runs on it meanwhile.
            let _guard = guard;
            let moving = Moving {
                vm,
                source,
                target,
                connect,
                source_agent,
                target_agent,
                req,
                task: id.clone(),
            };
            let res = me.run_migration(&moving).await;
            me.migrating.lock().unwrap().remove(&moving.vm.id);
            let _ = match res {
                Ok(r) => {
                    let msg = format!(
                        "done: {} ms downtime, {} ms in all{}",
                        r.downtime_ms,
                        r.total_ms,
                        if r.forced {
                            " (the guest was paused to finish)"
                        } else {
                            ""
                        }
                    );
                    me.store
                        .update_task(&id, TaskState::Succeeded, 1.0, &msg, None)
                        .await
                }
                Err(e) => {
                    me.store
                        .update_task(&id, TaskState::Failed, 1.0, "failed", Some(&e.to_string()))
                        .await
                }
            };
        });
        Ok(task)
    }

    async fn run_migration(&self, m: &Moving) -> Res<wire::MigrationResult> {
        let vm = &m.vm;
        // What boots the VM, as the target holds it (copied there first if it has none).
        if let Some(img) = self.image_of(vm).await? {
            self.image_on(&img, &m.target, None).await?;
        }
        if let Some(cd) = &vm.cdrom_image_id {
            if let Some(img) = self.store.image_by_id(cd).await? {
                self.image_on(&img, &m.target, None).await?;
            }
        }
        let mut there = vm.clone();
        there.host_id = Some(m.target.clone());
        let mut spec = self.spec_of(&there).await?;
        // The disks move too: new files on the target (in its default pool, on its copy
        // of their image), which the source mirrors into before the memory goes.
        let disks = self.store.disks_of(&vm.id).await?;
        let mut made: Vec<(hostel_store::DiskRecord, wire::DiskCreated)> = Vec::new();
        let prepared = async {
            for d in &disks {
                let backing = match &d.image_id {
                    Some(i) => match self.store.image_by_id(i).await? {
                        Some(img) => {
                            let copy = self.image_on(&img, &m.target, None).await?;
                            Some(wire::Backing {
                                path: copy.path.unwrap_or_default(),
                                format: img.format.clone(),
                                image_id: img.id.clone(),
                            })
                        }
                        None => None,
                    },
                    None => None,
                };
                let c = m
                    .target_agent
                    .create_disk(wire::CreateDiskRequest {
                        vm_id: vm.id.clone(),
                        index: d.idx,
                        size_mib: d.size_mib,
                        backing,
                        pool: None,
                    })
                    .await?;
                made.push((d.clone(), c));
            }
            Ok::<(), Error>(())
        }
        .await;
        let drop_made = |made: Vec<(hostel_store::DiskRecord, wire::DiskCreated)>| async move {
            for (_, c) in made {
                let _ = m
                    .target_agent
                    .delete_disk(wire::DeleteDiskRequest {
                        path: c.path,
                        pool: None,
                    })
                    .await;
            }
        };
        if let Err(e) = prepared {
            drop_made(made).await;
            return Err(e);
        }
        for s in spec.disks.iter_mut() {
            if let Some((_, c)) = made.iter().find(|(d, _)| d.idx == s.index) {
                s.path = c.path.clone();
                s.format = c.format.clone();
                s.pool = None;
            }
        }
        let ready = match m
            .target_agent
            .migrate_in(
                &vm.id,
                wire::MigrateInRequest {
                    spec,
                    listen: "0.0.0.0".into(),
                    capabilities: capabilities(),
                    export_disks: !made.is_empty(),
                },
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let _ = m.target_agent.forget_vm(&vm.id).await;
                drop_made(made).await;
                return Err(e.into());
            }
        };
        let mirror = match (ready.nbd_port, made.is_empty()) {
            (_, true) => None,
            (Some(port), false) => Some(wire::DiskMirror {
                host: m.connect.clone(),
                port,
                disks: made.iter().map(|(d, _)| d.idx).collect(),
            }),
            (None, false) => {
                let _ = m.target_agent.destroy_vm(&vm.id).await;
                let _ = m.target_agent.forget_vm(&vm.id).await;
                drop_made(made).await;
                return Err(Error::from(anyhow::anyhow!(
                    "host {}'s agent did not export the disks",
                    m.target
                )));
            }
        };
        let uri = if m.connect.contains(':') {
            format!("tcp:[{}]:{}", m.connect, ready.port)
        } else {
            format!("tcp:{}:{}", m.connect, ready.port)
        };
        self.progress(&m.task, 0.05, &format!("sending to {uri}"))
            .await;
        let sent = self.send_state(m, &uri, mirror).await;
        let result = match sent {
            Ok(r) => r,
            Err(e) => {
                // Before the switch: the target's QEMU and disks go, the VM runs on the
                // source.
                let _ = m.target_agent.destroy_vm(&vm.id).await;
                let _ = m.target_agent.forget_vm(&vm.id).await;
                drop_made(made).await;
                return Err(e);
            }
        };
        // The switch is done: the VM runs on the target. The database says so first
        // (its host, its disks' new files), then the source's QEMU (paused after sending)
        // is ended and its disk files removed.
        // The target resumes a running VM itself, just after QEMU says it completed: its
        // state is read once it has (a paused VM stays paused).
        if result.forced && vm.state == VmState::Running {
            // Paused to finish, it arrives paused: it runs again here.
            let _ = m.target_agent.unpause_vm(&vm.id).await;
        }
        let mut status = m.target_agent.get_vm(&vm.id).await?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while vm.state == VmState::Running
            && status.state == VmState::Paused
            && !result.forced
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            status = m.target_agent.get_vm(&vm.id).await?;
        }
        let moved: Vec<(String, String, String)> = made
            .iter()
            .map(|(d, c)| (d.id.clone(), c.path.clone(), c.format.clone()))
            .collect();
        self.store
            .set_vm_host(&vm.id, &m.target, status.state, status.pid)
            .await?;
        self.store.move_disks(&moved).await?;
        let _ = m.source_agent.destroy_vm(&vm.id).await;
        let _ = m.source_agent.forget_vm(&vm.id).await;
        let old: Vec<hostel_store::DiskRecord> = made.into_iter().map(|(d, _)| d).collect();
        self.remove_disk_files(&m.source_agent, &old).await;
        tracing::info!(vm = %vm.name, from = %m.source, to = %m.target,
            downtime_ms = result.downtime_ms, "migrated");
        Ok(result)
    }

    /// The source's agent sends the VM's state; its progress goes to the task.
    async fn send_state(
        &self,
        m: &Moving,
        uri: &str,
        mirror: Option<wire::DiskMirror>,
    ) -> Res<wire::MigrationResult> {
        let mut lines = m
            .source_agent
            .migrate_out(wire::MigrateOutRequest {
                vm_id: m.vm.id.clone(),
                uri: uri.to_string(),
                capabilities: capabilities(),
                max_downtime_ms: m.req.max_downtime_ms.unwrap_or(DEFAULT_MAX_DOWNTIME_MS),
                bandwidth_mibps: m.req.bandwidth_mibps,
                force_complete: m.req.force_complete,
                stall_secs: 10,
                mirror,
            })
            .await?;
        while let Some(line) = lines.next().await {
            match line? {
                wire::MigrationLine::Progress { progress, message } => {
                    self.progress(&m.task, 0.05 + 0.9 * progress, &message)
                        .await;
                }
                wire::MigrationLine::Done { done } => return Ok(done),
                wire::MigrationLine::Error { error } => return Err(Error::conflict(error)),
            }
        }
        Err(Error::unavailable(
            "the source host's agent ended the migration without a result",
        ))
    }

    async fn progress(&self, task: &str, f: f64, message: &str) {
        let _ = self
            .store
            .update_task(task, TaskState::Running, f, message, None)
            .await;
    }
}

/// A migration under way.
struct Moving {
    vm: VmRecord,
    source: String,
    target: String,
    /// The target's address the source sends the stream to.
    connect: String,
    source_agent: crate::agent_client::AgentClient,
    target_agent: crate::agent_client::AgentClient,
    req: MigrateRequest,
    task: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_addresses() {
        use super::host_address;
        assert_eq!(
            host_address("https://10.0.0.2:8471").as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            host_address("https://[fd00::2]:8471").as_deref(),
            Some("fd00::2")
        );
        assert_eq!(
            host_address("https://node2:8471/").as_deref(),
            Some("node2")
        );
        assert_eq!(host_address("http://x:1"), None);
    }

    #[test]
    fn stream_addresses() {
        use super::stream_address;
        let at = |t: &str, s: &str| stream_address(t, s);
        assert_eq!(
            at("https://10.0.0.2:1", "https://10.0.0.3:1").as_deref(),
            Some("10.0.0.2")
        );
        // Two agents on one machine.
        assert_eq!(
            at("https://127.0.0.1:1", "https://127.0.0.1:2").as_deref(),
            Some("127.0.0.1")
        );
    }
}
