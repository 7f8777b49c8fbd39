//! Live migration: a running VM moves to another host while it runs. The target's agent
//! gets new files for the VM's disks and starts a QEMU that waits for the VM's state and
//! serves those disks over NBD (`MigrateIn`); the source's agent mirrors the disks into
//! them, then sends the memory (`MigrateOut`, with progress and its convergence rules,
//! `hostel-agent/src/migrate.rs`). Both streams are QEMU's TLS with certificates from the
//! cluster's migration CA made for this migration (`pki.rs`), unless the admin asks for
//! a plain stream.
//!
//! Each step is written to the migration's journal row (`vm_moves`): prepare, storage,
//! memory, switchover (the source's), commit, cleanup. Only once QEMU says it completed
//! does the database move the VM and its disks to the target, with the row's step, in
//! one transaction; the source's QEMU and disk files then go. Any failure, and a
//! controller that starts with rows left, ends in `migrate_recover.rs`, which asks both
//! hosts' QEMU what happened and finishes the move or undoes it.
//!
//! While a VM migrates, its agents' state events are not written (the migration writes
//! the outcome), and events from a host that is not the VM's are never written.
//!
//! Not yet (issue #15): pools shared between hosts (memory only), post-copy, offline
//! moves of stopped VMs.

use crate::context::Ctx;
use crate::error::Error;
use crate::migrate_recover::{MovedDisk, Reservation, Settled};
use crate::stream_address::stream_address;
use crate::Controller;
use futures::StreamExt;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_api::public::*;
use hostel_model::VmState;
use hostel_store::{MoveRecord, VmRecord};
use std::collections::HashMap;
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// The downtime a migration allows unless asked otherwise (ms).
const DEFAULT_MAX_DOWNTIME_MS: u64 = 300;

/// What both ends of every migration use: auto-converge throttles a guest that writes
/// memory faster than it is sent; events let QEMU report its steps.
/// QEMU's capabilities for both ends. With `postcopy` (memory alone moves, and the
/// target's QEMU may use userfaultfd) the migration may end in post-copy, which QEMU 10
/// does not combine with multifd: one stream then.
fn capabilities(postcopy: bool) -> Vec<wire::MigrationCapability> {
    let last = if postcopy { "postcopy-ram" } else { "multifd" };
    ["auto-converge", "events", last]
        .into_iter()
        .map(|c| wire::MigrationCapability {
            capability: c.into(),
            state: true,
        })
        .collect()
}

impl Controller {
    /// Each migration's target host and the memory it holds there: this controller's,
    /// and, on a shared database, other controllers' (their journal rows).
    pub(crate) async fn migrating_to(&self) -> Res<Vec<(String, u64)>> {
        let mut by_vm: HashMap<String, (String, u64)> = self
            .migrating
            .lock()
            .unwrap()
            .iter()
            .map(|(vm, r)| (vm.clone(), (r.target.clone(), r.mib)))
            .collect();
        if self.shared_database() {
            for m in self.store.moves().await? {
                by_vm.entry(m.vm_id).or_insert((m.target, m.memory_mib));
            }
        }
        Ok(by_vm.into_values().collect())
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
            "bandwidth_mibps": req.bandwidth_mibps, "force_complete": req.force_complete,
            "unencrypted": req.unencrypted, "offline": req.offline,
            "no_postcopy": req.no_postcopy}),
        );
        let (guard, vm) = self.locked_vm(ctx, name).await?;
        if req.offline && vm.state.has_process() {
            return Err(Error::conflict(format!(
                "VM {name} is {}: an offline move is for a VM that does not run; stop it \
                 first (`hostel shutdown {name}`), or move it live (without --offline)",
                vm.state.as_str()
            )));
        }
        if !req.offline && !matches!(vm.state, VmState::Running | VmState::Paused) {
            return Err(Error::conflict(format!(
                "VM {name} is {}: only a running or paused VM migrates live; move it with \
                 --offline (its disks are copied), or start it first",
                vm.state.as_str()
            )));
        }
        if self.is_migrating(&vm.id) || self.store.is_moving(&vm.id).await? {
            return Err(Error::conflict(format!(
                "VM {name} is migrating already: wait for that migration to end"
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
        if !req.offline && !req.unencrypted && self.pki.get().is_none() {
            return Err(Error::unavailable(
                "this controller has no migration CA to encrypt the stream with",
            ));
        }
        let source_agent = self.host_agent(&vm)?;
        // The target is chosen and its memory held for the VM at once: two migrations
        // at a time (a drain's) do not both fill the same room.
        let placing = self.migrate_placing.lock().await;
        // A VM that does not run holds no memory anywhere.
        let need_mib = if req.offline { 0 } else { vm.max_memory_mib };
        // Hosts whose QEMU lacks the VM's machine type or CPU model: the one named is
        // refused with the reason, the others are left out of placement's choice.
        let mut unfit = Vec::new();
        if let Some(s) = self.store.host(&source).await? {
            for h in self.store.hosts().await? {
                if h.id == source {
                    continue;
                }
                if let Err(e) = crate::platform::check_movable(&vm, &s, &h, !req.offline) {
                    if req.to.as_deref() == Some(h.id.as_str()) {
                        return Err(e);
                    }
                    unfit.push((h.id.clone(), e.message()));
                }
            }
        }
        let (target, _, _) = self
            .place(&crate::placement::Ask {
                need_mib,
                tags: &[],
                anti_affinity: vm.anti_affinity.as_deref(),
                exclude: Some(&source),
                only: req.to.as_deref(),
                vm_id: Some(&vm.id),
                unfit: &unfit,
            })
            .await?;
        let target_rec = self.store.host(&target).await?.ok_or_else(|| {
            Error::from(anyhow::anyhow!("host {target} went while it was chosen"))
        })?;
        let source_rec = self.store.host(&source).await?;
        let source_url = source_rec
            .as_ref()
            .map(|h| h.url.clone())
            .unwrap_or_default();
        self.check_networks_on(&vm, &target).await?;
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
        let row = MoveRecord {
            id: task.id.clone(),
            vm_id: vm.id.clone(),
            source: source.clone(),
            target: target.clone(),
            memory_mib: need_mib,
            step: if req.offline { "offline" } else { "prepare" }.into(),
            was_running: vm.state == VmState::Running,
            disks: "[]".into(),
            started_at: hostel_store::now(),
            updated_at: hostel_store::now(),
            owner: Some(self.id.clone()),
        };
        if let Err(e) = self.store.insert_move(&row).await {
            let _ = self
                .store
                .update_task(
                    &task.id,
                    TaskState::Failed,
                    1.0,
                    "failed",
                    Some(&format!("{e:#}")),
                )
                .await;
            return Err(e.into());
        }
        self.migrating.lock().unwrap().insert(
            vm.id.clone(),
            Reservation {
                id: task.id.clone(),
                target: target.clone(),
                mib: need_mib,
                live: true,
            },
        );
        drop(placing);
        let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
        self.migration_cancels
            .lock()
            .unwrap()
            .insert(task.id.clone(), cancel_tx);
        let me = self.clone();
        tokio::spawn(async move {
            // The VM's lock is held to the end: no other operation runs on it meanwhile.
            let _guard = guard;
            let moving = Moving {
                vm,
                row,
                connect,
                source_agent,
                target_agent,
                req,
                cancel,
            };
            let res = if moving.req.offline {
                me.run_offline(&moving).await
            } else {
                me.run_migration(&moving).await.map(|r| done_message(&r))
            };
            me.migration_cancels.lock().unwrap().remove(&moving.row.id);
            me.end_migration(&moving, res).await;
            if me.is_migrating(&moving.vm.id) {
                // Not settled yet (a host did not answer): recovery goes on with it.
                me.ensure_recovery();
            }
        });
        Ok(task)
    }

    /// Asks a migration under way to stop (its task's id); it ends with the VM where it
    /// was, unless its switch-over is already done.
    pub async fn cancel_task(&self, ctx: &Ctx, id: &str) -> Res<Task> {
        ctx.require_admin()?;
        let task = self.task(ctx, id).await?;
        if task.state != TaskState::Running {
            return Err(Error::conflict(format!(
                "task {id} has ended ({}): nothing to cancel",
                task.state.as_str()
            )));
        }
        let sent = match self.migration_cancels.lock().unwrap().get(id) {
            Some(tx) => tx.send(true).is_ok(),
            None => false,
        };
        if !sent {
            return Err(Error::conflict(format!(
                "task {id} ({}) cannot be cancelled: only a migration under way can",
                task.kind
            )));
        }
        self.task(ctx, id).await
    }

    async fn end_migration(&self, m: &Moving, res: Res<String>) {
        let id = &m.row.id;
        let _ = match res {
            Ok(msg) => {
                {
                    let mut held = self.migrating.lock().unwrap();
                    if held.get(&m.vm.id).is_some_and(|r| r.live) {
                        held.remove(&m.vm.id);
                    }
                }
                self.store
                    .update_task(id, TaskState::Succeeded, 1.0, &msg, None)
                    .await
            }
            Err(e) => {
                // Whatever happened, both hosts' QEMU say how it ends.
                match self.settle_move(&m.row.id).await {
                    Ok(Settled::Back) => {
                        self.migrating.lock().unwrap().remove(&m.vm.id);
                        self.store
                            .update_task(id, TaskState::Failed, 1.0, "failed", Some(&e.message()))
                            .await
                    }
                    Ok(Settled::Forward) => {
                        self.migrating.lock().unwrap().remove(&m.vm.id);
                        let msg = format!(
                            "done: the VM runs on {} (its switch-over completed although \
                             the migration reported: {})",
                            m.row.target,
                            e.message()
                        );
                        self.store
                            .update_task(id, TaskState::Succeeded, 1.0, &msg, None)
                            .await
                    }
                    Err(e2) => {
                        // A host is not back: recovery settles it once both answer.
                        if let Some(r) = self.migrating.lock().unwrap().get_mut(&m.vm.id) {
                            r.live = false;
                        }
                        let msg = format!(
                            "{}; waiting for both hosts to answer to settle it ({})",
                            e.message(),
                            e2.message()
                        );
                        self.store
                            .update_task(id, TaskState::Running, 0.99, &msg, None)
                            .await
                    }
                }
            }
        };
    }

    /// What boots the VM, as the target holds it (copied there first if it has none).
    pub(crate) async fn boot_images_to(&self, vm: &VmRecord, target: &str) -> Res<()> {
        if let Some(img) = self.image_of(vm).await? {
            self.image_on(&img, target, None).await?;
        }
        if let Some(cd) = &vm.cdrom_image_id {
            if let Some(img) = self.store.image_by_id(cd).await? {
                self.image_on(&img, target, None).await?;
            }
        }
        Ok(())
    }

    /// The target's copy of a disk's image, to make the disk's new file on.
    pub(crate) async fn backing_on(
        &self,
        image_id: Option<&str>,
        target: &str,
    ) -> Res<Option<wire::Backing>> {
        let Some(id) = image_id else { return Ok(None) };
        let Some(img) = self.store.image_by_id(id).await? else {
            return Ok(None);
        };
        let copy = self.image_on(&img, target, None).await?;
        Ok(Some(wire::Backing {
            path: copy.path.unwrap_or_default(),
            format: img.format.clone(),
            image_id: img.id.clone(),
        }))
    }

    async fn run_migration(&self, m: &Moving) -> Res<wire::MigrationResult> {
        let vm = &m.vm;
        let cancelled = || m.cancelled();
        self.boot_images_to(vm, &m.row.target).await?;
        cancelled()?;
        let mut there = vm.clone();
        there.host_id = Some(m.row.target.clone());
        let mut spec = self.spec_of(&there).await?;
        // The disks move too: new files on the target (in its default pool, on its copy
        // of their image), which the source mirrors into before the memory goes. Each
        // is in the journal as soon as it exists.
        let mut disks = self.disks_to_move(m).await?;
        // Disks on a shared pool stay where they are: both hosts reach the same file.
        let shared = self.on_shared_pools(&disks).await?;
        for i in 0..disks.len() {
            if shared.contains(&disks[i].disk.idx) {
                continue;
            }
            let backing = self
                .backing_on(disks[i].disk.image_id.as_deref(), &m.row.target)
                .await?;
            let c = m
                .target_agent
                .create_disk(wire::CreateDiskRequest {
                    vm_id: vm.id.clone(),
                    index: disks[i].disk.idx,
                    size_mib: disks[i].disk.size_mib,
                    backing,
                    pool: None,
                })
                .await?;
            disks[i].new_path = Some(c.path);
            disks[i].new_format = Some(c.format);
            self.journal_disks(&m.row.id, &disks).await?;
        }
        for s in spec.disks.iter_mut() {
            if let Some(d) = disks.iter().find(|d| d.disk.idx == s.index) {
                if let (Some(path), Some(format)) = (&d.new_path, &d.new_format) {
                    s.path = path.clone();
                    s.format = format.clone();
                    s.pool = None;
                }
            }
        }
        let moving: Vec<u32> = disks
            .iter()
            .filter(|d| d.new_path.is_some())
            .map(|d| d.disk.idx)
            .collect();
        cancelled()?;
        // Post-copy is the last step for a guest that does not converge, where only its
        // memory moves (a mirror must finish before the switch-over) and the target
        // can take it, unless the admin asked for none.
        let postcopy = moving.is_empty()
            && !m.req.no_postcopy
            && self
                .store
                .host(&m.row.target)
                .await?
                .is_some_and(|h| h.platform.postcopy);
        let (target_tls, source_tls) = self.stream_tls(m)?;
        let ready = m
            .target_agent
            .migrate_in(
                &vm.id,
                wire::MigrateInRequest {
                    spec,
                    listen: "0.0.0.0".into(),
                    capabilities: capabilities(postcopy),
                    export_disks: !moving.is_empty(),
                    shared_disks: shared.clone(),
                    tls: target_tls,
                },
            )
            .await?;
        hostel_faults::point("controller.migrate.prepare").await;
        cancelled()?;
        let mirror = match (ready.nbd_port, moving.is_empty()) {
            (_, true) => None,
            (Some(port), false) => Some(wire::DiskMirror {
                host: m.connect.clone(),
                port,
                disks: moving,
            }),
            (None, false) => {
                return Err(Error::from(anyhow::anyhow!(
                    "host {}'s agent did not export the disks",
                    m.row.target
                )));
            }
        };
        let uri = wire::tcp_uri(&m.connect, ready.port);
        self.progress(&m.row.id, 0.05, &format!("sending to {uri}"))
            .await;
        let result = self
            .send_state(m, &uri, mirror, source_tls, capabilities(postcopy))
            .await?;
        // QEMU completed: the VM runs on the target. The journal says so, then the
        // database moves it there (its host, its disks' new files) with the step, and
        // only then do the source's QEMU (paused after sending) and files go.
        self.store.set_move_step(&m.row.id, "commit").await?;
        hostel_faults::point("controller.migrate.commit").await;
        let state = self
            .arrived_state(&m.target_agent, vm, m.row.was_running, result.forced)
            .await?;
        self.commit_moved(m, &disks, state.state, state.pid).await?;
        tracing::info!(vm = %vm.name, from = %m.row.source, to = %m.row.target,
            downtime_ms = result.downtime_ms, tls = result.tls, "migrated");
        Ok(result)
    }

    /// The certificates of both ends (target, source) for this migration's streams;
    /// none if the admin asked for a plain stream.
    fn stream_tls(&self, m: &Moving) -> Res<(Option<wire::StreamTls>, Option<wire::StreamTls>)> {
        if m.req.unencrypted {
            return Ok((None, None));
        }
        let pki = self
            .pki
            .get()
            .ok_or_else(|| Error::unavailable("this controller has no migration CA"))?;
        let hostname = format!("{}.migration.hostel", m.row.id.to_ascii_lowercase());
        let end = |server: bool| -> anyhow::Result<wire::StreamTls> {
            let (ca, pair) = pki.stream_pair(&hostname, server)?;
            Ok(wire::StreamTls {
                ca_pem: ca,
                cert_pem: String::from_utf8(pair.cert_pem)?,
                key_pem: String::from_utf8(pair.key_pem)?,
                hostname: hostname.clone(),
            })
        };
        Ok((Some(end(true)?), Some(end(false)?)))
    }

    /// The move is done: the database says the VM is on the target (in `state`, QEMU
    /// `pid`) with its disks' new files, then the source's QEMU and old files go (or,
    /// if the source does not answer, recovery removes them later).
    pub(crate) async fn commit_moved(
        &self,
        m: &Moving,
        disks: &[MovedDisk],
        state: VmState,
        pid: Option<u32>,
    ) -> Res<()> {
        let moved: Vec<(String, String, String)> = disks
            .iter()
            .filter_map(|d| {
                Some((
                    d.disk.id.clone(),
                    d.new_path.clone()?,
                    d.new_format.clone()?,
                ))
            })
            .collect();
        self.store.commit_move(&m.row, state, pid, &moved).await?;
        hostel_faults::point("controller.migrate.cleanup").await;
        let row = MoveRecord {
            disks: serde_json::to_string(disks).map_err(anyhow::Error::from)?,
            ..m.row.clone()
        };
        if !self.clean_source(&row).await {
            if let Some(r) = self.migrating.lock().unwrap().get_mut(&m.vm.id) {
                r.live = false;
            }
        }
        Ok(())
    }

    /// The indexes of those disks that are in a shared pool.
    pub(crate) async fn on_shared_pools(&self, disks: &[MovedDisk]) -> Res<Vec<u32>> {
        let shared: Vec<String> = self
            .store
            .pools()
            .await?
            .into_iter()
            .filter(|p| p.shared)
            .map(|p| p.id)
            .collect();
        Ok(disks
            .iter()
            .filter(|d| d.disk.pool_id.as_ref().is_some_and(|p| shared.contains(p)))
            .map(|d| d.disk.idx)
            .collect())
    }

    /// The VM's disks as they are, written to the journal before any moves.
    pub(crate) async fn disks_to_move(&self, m: &Moving) -> Res<Vec<MovedDisk>> {
        let disks: Vec<MovedDisk> = self
            .store
            .disks_of(&m.vm.id)
            .await?
            .iter()
            .map(MovedDisk::of)
            .collect();
        self.journal_disks(&m.row.id, &disks).await?;
        Ok(disks)
    }

    pub(crate) async fn journal_disks(&self, id: &str, disks: &[MovedDisk]) -> Res<()> {
        let json = serde_json::to_string(disks).map_err(anyhow::Error::from)?;
        self.store.set_move_disks(id, &json).await?;
        Ok(())
    }

    /// The source's agent sends the VM's state; its progress goes to the task, its steps
    /// to the journal. A cancel asks the source to give the migration up.
    async fn send_state(
        &self,
        m: &Moving,
        uri: &str,
        mirror: Option<wire::DiskMirror>,
        tls: Option<wire::StreamTls>,
        capabilities: Vec<wire::MigrationCapability>,
    ) -> Res<wire::MigrationResult> {
        let mut lines = m
            .source_agent
            .migrate_out(wire::MigrateOutRequest {
                vm_id: m.vm.id.clone(),
                uri: uri.to_string(),
                capabilities,
                max_downtime_ms: m.req.max_downtime_ms.unwrap_or(DEFAULT_MAX_DOWNTIME_MS),
                bandwidth_mibps: m.req.bandwidth_mibps,
                force_complete: m.req.force_complete,
                // Auto-converge throttles the guest step by step: time to work.
                stall_secs: 20,
                mirror,
                tls,
            })
            .await?;
        let mut step: Option<wire::MigrationStep> = None;
        let mut cancel = m.cancel.clone();
        let mut asked = false;
        loop {
            let line = tokio::select! {
                l = lines.next() => l,
                changed = cancel.changed(), if !asked => {
                    if changed.is_ok() && *cancel.borrow() {
                        asked = true;
                        self.progress(&m.row.id, 0.5, "cancelling").await;
                        let _ = m
                            .source_agent
                            .abandon_migration(
                                &m.vm.id,
                                wire::AbandonMigrationRequest {
                                    resume: m.row.was_running,
                                    target_gone: false,
                                },
                            )
                            .await;
                    }
                    continue;
                }
            };
            let Some(line) = line else { break };
            match line? {
                wire::MigrationLine::Progress {
                    progress,
                    message,
                    step: s,
                } => {
                    if s.is_some() && s != step {
                        step = s;
                        if let Some(s) = s {
                            self.store.set_move_step(&m.row.id, s.as_str()).await?;
                            hostel_faults::point(&format!("controller.migrate.{}", s.as_str()))
                                .await;
                        }
                    }
                    self.progress(&m.row.id, 0.05 + 0.9 * progress, &message)
                        .await;
                }
                wire::MigrationLine::Done { done } => return Ok(done),
                wire::MigrationLine::Error { error } if asked => {
                    return Err(Error::conflict(format!(
                        "the migration was cancelled ({error})"
                    )))
                }
                wire::MigrationLine::Error { error } => return Err(Error::conflict(error)),
            }
        }
        Err(Error::unavailable(
            "the source host's agent ended the migration without a result",
        ))
    }

    pub(crate) async fn progress(&self, task: &str, f: f64, message: &str) {
        let _ = self
            .store
            .update_task(task, TaskState::Running, f, message, None)
            .await;
    }
}

/// The task's message of a live migration that went through.
fn done_message(r: &wire::MigrationResult) -> String {
    format!(
        "done: {} ms downtime, {} ms in all{}{}",
        r.downtime_ms,
        r.total_ms,
        if r.forced {
            " (the guest was paused to finish)"
        } else if r.postcopy {
            " (finished by post-copy: the guest ran on the target while its memory followed)"
        } else {
            ""
        },
        if r.tls {
            ", encrypted"
        } else {
            ", unencrypted"
        }
    )
}

impl Moving {
    pub(crate) fn cancelled(&self) -> Res<()> {
        if *self.cancel.borrow() {
            Err(Error::conflict("the migration was cancelled"))
        } else {
            Ok(())
        }
    }
}

/// A migration under way.
pub(crate) struct Moving {
    pub vm: VmRecord,
    /// Its journal row as it began.
    pub row: MoveRecord,
    /// The target's address the source sends the stream to.
    pub connect: String,
    pub source_agent: crate::agent_client::AgentClient,
    pub target_agent: crate::agent_client::AgentClient,
    pub req: MigrateRequest,
    /// Set by `cancel_task`.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}
