//! One VM's QEMU process: start, supervise, operate, and re-adopt after a restart.
//!
//! Long because it is one state machine: every operation on a running QEMU (start,
//! save, snapshot, hotplug, balloon, shutdown) goes through the same lock, the same QMP
//! connection and the same record of what the agent asked for, which decides whether an
//! exit is a crash. Split apart, those would have to share that state across files.
//!
//! QEMU's own events (SHUTDOWN, RESET, STOP, RESUME, GUEST_PANICKED) and the end of its
//! process decide the state at once; nothing polls.

use crate::console::ConsoleHub;
use crate::{AgentError, Shared};
use anyhow::{anyhow, Context};
use hostel_api::agent::{Event, SaveHeader, VmSpec, VmStatus, SAVE_MAGIC};
use hostel_model::{Policy, VmState};
use hostel_qemu::argv::{cpu_id, cpu_type, vcpu_thread_budget, RuntimePaths};
use hostel_qemu::process::{self, Launch, INCOMING_FD};
use hostel_qemu::Qmp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// What the agent itself asked of QEMU, so that its exit can be told apart from a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    None,
    Destroy,
    Shutdown,
    Reboot,
    Save,
}

/// What a running QEMU was started with; written next to its sockets for re-adoption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeFile {
    pub spec: VmSpec,
    pub argv: Vec<String>,
    pub pid: u32,
}

struct Live {
    state: VmState,
    reason: Option<String>,
    pid: Option<u32>,
    argv: Vec<String>,
    qmp: Option<Arc<Qmp>>,
    intent: Intent,
    /// The last SHUTDOWN event's reason, and whether a panic was reported.
    shutdown_reason: Option<String>,
    panicked: bool,
    /// vCPU threads this QEMU has started (see `vcpu_thread_budget`).
    vcpu_threads: u32,
    /// A NIC or disk was plugged in or out since this QEMU started, so its device
    /// layout no longer matches what a restore would render.
    devices_changed: bool,
    /// Bumped at every QEMU start, so a stale supervisor never touches a newer process.
    generation: u64,
}

pub struct VmRuntime {
    pub id: String,
    pub paths: RuntimePaths,
    pub console: Arc<ConsoleHub>,
    spec: Mutex<VmSpec>,
    live: Mutex<Live>,
    state_watch: tokio::sync::watch::Sender<VmState>,
    /// When the policies last restarted the VM, to stop a restart loop.
    restarts: Mutex<Vec<std::time::Instant>>,
    /// Serializes operations on this VM.
    pub op: tokio::sync::Mutex<()>,
    /// Set when the outgoing migration is given up (`migrate::abandon_migration`), even
    /// before its stream began: it then never does.
    pub(crate) migration_abandoned: std::sync::atomic::AtomicBool,
    /// Where this QEMU, receiving a post-copy whose link broke, listens again (QEMU
    /// takes `migrate-recover` once: a later ask gets the same port).
    pub(crate) recover_port: Mutex<Option<u16>>,
}

impl VmRuntime {
    pub fn new(spec: VmSpec, paths: RuntimePaths) -> Arc<VmRuntime> {
        Arc::new(VmRuntime {
            id: spec.id.clone(),
            console: Arc::new(ConsoleHub::new(&paths.console_log())),
            paths,
            spec: Mutex::new(spec),
            live: Mutex::new(Live {
                state: VmState::Stopped,
                reason: None,
                pid: None,
                argv: Vec::new(),
                qmp: None,
                intent: Intent::None,
                shutdown_reason: None,
                panicked: false,
                vcpu_threads: 0,
                devices_changed: false,
                generation: 0,
            }),
            state_watch: tokio::sync::watch::channel(VmState::Stopped).0,
            restarts: Mutex::new(Vec::new()),
            op: tokio::sync::Mutex::new(()),
            migration_abandoned: Default::default(),
            recover_port: Mutex::default(),
        })
    }

    pub fn spec(&self) -> VmSpec {
        self.spec.lock().unwrap().clone()
    }

    pub fn state(&self) -> VmState {
        self.live.lock().unwrap().state
    }

    pub fn pid(&self) -> Option<u32> {
        self.live.lock().unwrap().pid
    }

    fn qmp(&self) -> Result<Arc<Qmp>, AgentError> {
        self.live
            .lock()
            .unwrap()
            .qmp
            .clone()
            .ok_or_else(|| AgentError::Conflict("the VM has no running QEMU".into()))
    }

    /// The running QEMU's QMP connection (for `migrate.rs`).
    pub(crate) fn qmp_handle(&self) -> Result<Arc<Qmp>, AgentError> {
        self.qmp()
    }

    /// The running QEMU's pid and QMP connection, when it has both.
    pub(crate) fn process(&self) -> Option<(u32, Arc<Qmp>)> {
        let l = self.live.lock().unwrap();
        Some((l.pid?, l.qmp.clone()?))
    }

    pub async fn status(&self, shared: &Shared) -> VmStatus {
        let (state, reason, pid, argv, qmp) = {
            let l = self.live.lock().unwrap();
            (
                l.state,
                l.reason.clone(),
                l.pid,
                l.argv.clone(),
                l.qmp.clone(),
            )
        };
        let spec = self.spec();
        let mut balloon_mib = None;
        if let Some(q) = &qmp {
            if let Ok(v) = q
                .execute_timeout("query-balloon", json!({}), Duration::from_secs(2))
                .await
            {
                balloon_mib = v["actual"].as_u64().map(|b| b >> 20);
            }
        }
        VmStatus {
            id: self.id.clone(),
            name: spec.name.clone(),
            state,
            reason,
            pid,
            argv: if argv.is_empty() {
                hostel_qemu::render(&spec, &self.paths, &shared.host_opts().await, None)
            } else {
                argv
            },
            accel: shared.host_opts().await.accel,
            balloon_mib,
            vcpus: spec.vcpus,
            nics: spec
                .nics
                .iter()
                .map(|n| hostel_api::agent::NicStatus {
                    id: n.id.clone(),
                    tap: n.tap.clone(),
                    drops: if state.has_process() {
                        hostel_net::guard::drops(&n.tap)
                    } else {
                        None
                    },
                })
                .collect(),
        }
    }

    fn set_state(&self, shared: &Shared, state: VmState, reason: Option<String>) {
        let pid = {
            let mut l = self.live.lock().unwrap();
            l.state = state;
            l.reason = reason.clone();
            l.pid
        };
        self.state_watch.send_replace(state);
        tracing::info!(vm = %self.spec().name, %state, reason = reason.as_deref().unwrap_or(""), "VM state");
        shared.emit(Event {
            vm_id: self.id.clone(),
            state,
            reason,
            pid: if state.has_process() { pid } else { None },
        });
    }

    /// Starts QEMU from `spec` (rendered now), or resumes it from a saved state file.
    pub async fn start(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        spec: VmSpec,
        restore_from: Option<&str>,
    ) -> Result<(), AgentError> {
        self.start_with(shared, spec, restore_from, None).await
    }

    /// Starts QEMU, resuming from a save file or from a snapshot with memory if asked.
    pub async fn start_with(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        spec: VmSpec,
        restore_from: Option<&str>,
        load_snapshot: Option<&str>,
    ) -> Result<(), AgentError> {
        self.start_inner(shared, spec, restore_from, load_snapshot, None)
            .await
    }

    /// Starts QEMU waiting for the VM's state from a live migration, with the migration
    /// settings `caps` (`migrate-set-capabilities`), listening on `listen` (an address of
    /// this host); the stream's address comes back. The VM resumes here by itself once
    /// the migration completes.
    pub async fn start_incoming(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        req: hostel_api::agent::MigrateInRequest,
        caps: serde_json::Value,
    ) -> Result<(String, u16, Option<u16>), AgentError> {
        let hostel_api::agent::MigrateInRequest {
            spec,
            listen,
            export_disks,
            shared_disks,
            tls,
            ..
        } = req;
        let listen = listen.as_str();
        let free_port = || {
            std::net::TcpListener::bind((listen, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| AgentError::Invalid(anyhow!("listen: cannot listen on {listen}: {e}")))
        };
        let port = free_port()?;
        let exported = spec
            .disks
            .iter()
            .filter(|d| !shared_disks.contains(&d.index))
            .count();
        let nbd = if export_disks && exported > 0 {
            Some(free_port()?)
        } else {
            None
        };
        let uri = hostel_api::agent::tcp_uri(listen, port);
        let receive = Receive {
            uri: uri.clone(),
            caps,
            nbd: nbd.map(|p| (listen.to_string(), p)),
            shared_disks,
            tls,
        };
        self.start_inner(shared, spec, None, None, Some(receive))
            .await?;
        Ok((uri, port, nbd))
    }

    async fn start_inner(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        spec: VmSpec,
        restore_from: Option<&str>,
        load_snapshot: Option<&str>,
        migrate_from: Option<Receive>,
    ) -> Result<(), AgentError> {
        if self.state().has_process() {
            return Err(AgentError::Conflict(format!(
                "the VM is already running (QEMU pid {})",
                self.pid().unwrap_or(0)
            )));
        }
        // No VM ever runs twice: a QEMU from an earlier agent life may still hold the dir.
        if let Some(pid) = process::read_pidfile(&self.paths.pidfile()) {
            if process::is_our_qemu(pid, &self.paths.qmp().display().to_string()) {
                return Err(AgentError::Conflict(format!(
                    "a QEMU for this VM is still running (pid {pid}); destroy it first"
                )));
            }
        }
        *self.spec.lock().unwrap() = spec.clone();
        self.paths.check().map_err(AgentError::Invalid)?;
        let incoming = match restore_from {
            Some(path) => Some(open_saved(path, &spec.id)?),
            None => None,
        };
        // This VM's own uid owns its disks and runtime files, and nothing of other VMs.
        let identity = shared.qemu_identity(&spec.id)?;
        shared.prepare_runtime_dir(&self.paths, identity.as_ref())?;
        // Marks of NICs a dead agent was plugging into an earlier QEMU mean nothing now.
        clear_pending_nics(&self.paths.dir);
        shared.give_disks(&spec.disks, identity.as_ref())?;
        prepare_boot_files(shared, &self.paths, &spec, identity.as_ref())?;
        let host = shared.host_opts().await;
        let from = match (&incoming, &migrate_from) {
            (Some(_), _) => Some(hostel_qemu::Incoming::Fd(INCOMING_FD)),
            (None, Some(_)) => Some(hostel_qemu::Incoming::Defer),
            (None, None) => None,
        };
        let mut argv = hostel_qemu::render(&spec, &self.paths, &host, from);
        if let Some(tag) = load_snapshot {
            argv.extend(["-loadvm".to_string(), tag.to_string()]);
        }
        // Limits are in place before the guest's first instruction: QEMU waits (an
        // incoming VM waits for its state anyway) until they are.
        let hold = from.is_none() && crate::limits::hold_at_start(&spec.limits);
        if hold {
            argv.push("-S".into());
        }
        let generation = {
            let mut l = self.live.lock().unwrap();
            l.generation += 1;
            l.intent = Intent::None;
            l.shutdown_reason = None;
            l.panicked = false;
            l.vcpu_threads = spec.vcpus;
            l.devices_changed = false;
            l.argv = argv.clone();
            l.generation
        };
        self.set_state(shared, VmState::Starting, None);
        let taps = match shared.plug_nics(&spec) {
            Ok(t) => t,
            Err(e) => {
                self.set_state(shared, VmState::Stopped, Some(e.to_string()));
                return Err(e);
            }
        };
        let started = process::spawn(Launch {
            argv: &argv,
            log: &self.paths.log(),
            run_as: identity.clone(),
            incoming,
            taps,
        })
        .map_err(|e| {
            shared.unplug_guards(&spec);
            self.set_state(shared, VmState::Stopped, Some(format!("{e:#}")));
            AgentError::Internal(e)
        })?;
        let pid = started.pid;
        self.live.lock().unwrap().pid = Some(pid);
        hostel_faults::point("agent.start.spawned").await;
        // Before anything else: an agent that dies from here on finds this QEMU again
        // at its next start (see `adopt`), instead of leaving it running unknown.
        write_runtime_file(&self.paths, &spec, &argv, pid);
        let qmp = match self.connect_qmp(pid, &started.exit).await {
            Ok(q) => q,
            Err(e) => {
                // One that runs on (no socket in time) is ended; one reaped already is
                // not signalled (its pid may be another process's by now).
                if started.exit.is_empty() {
                    process::kill(pid);
                }
                let how = started.exit.await.unwrap_or_default();
                let log = tail_file(&self.paths.log(), 8);
                let reason = format!("QEMU failed to start: {e:#}; {how}; log: {log}");
                self.live.lock().unwrap().pid = None;
                shared.unplug_guards(&spec);
                self.set_state(shared, VmState::Stopped, Some(reason.clone()));
                return Err(AgentError::Internal(anyhow!(reason)));
            }
        };
        self.live.lock().unwrap().qmp = Some(qmp.clone());
        let _ = self.console.attach(&self.paths.serial()).await;
        self.clone()
            .supervise(shared.clone(), qmp.clone(), generation, Some(started.exit));

        // From here on a failure ends this QEMU: a failed start never leaves one running.
        let finished = async {
            if self.live.lock().unwrap().intent == Intent::Destroy {
                anyhow::bail!("the VM was destroyed while it started");
            }
            crate::limits::cpu(&spec.id, pid, &spec.limits)?;
            if spec.limits.disk_bps.is_some() || spec.limits.disk_iops.is_some() {
                crate::limits::disks(&qmp, &spec.disks, &spec.limits).await?;
            }
            if hold {
                qmp.execute("cont", json!({})).await?;
            }
            if restore_from.is_some() {
                // Restore resumes the VM, like `xm restore`, whatever its state when saved.
                wait_incoming(&qmp).await?;
                qmp.execute("cont", json!({})).await?;
            }
            if let Some(r) = &migrate_from {
                // Post-copy: this QEMU serves its page faults itself (`uffd.rs`), from
                // the capabilities' check on until it runs the VM (`watch_incoming`).
                if let Some(uid) = identity.as_ref().map(|i| i.uid).filter(|_| r.postcopy()) {
                    crate::uffd::grant(uid).map_err(|e| {
                        anyhow!("cannot let the VM's QEMU use userfaultfd for post-copy: {e:#}")
                    })?;
                }
                // Both ends of a migration use the same capabilities.
                qmp.execute(
                    "migrate-set-capabilities",
                    json!({ "capabilities": r.caps }),
                )
                .await?;
                if let Some(t) = &r.tls {
                    crate::stream_tls::tls_creds(&qmp, &self.paths, t, "server", identity.as_ref())
                        .await
                        .map_err(|e| anyhow!("{e}"))?;
                    qmp.execute(
                        "migrate-set-parameters",
                        json!({ "tls-creds": crate::stream_tls::TLS_ID }),
                    )
                    .await?;
                }
                qmp.execute("migrate-incoming", json!({ "uri": r.uri }))
                    .await?;
                if let Some((host, port)) = &r.nbd {
                    export_disks(&qmp, &spec, &r.shared_disks, host, *port, r.tls.is_some())
                        .await?;
                }
                self.clone().watch_incoming(
                    qmp.clone(),
                    r.nbd.is_some(),
                    identity.as_ref().map(|i| i.uid).filter(|_| r.postcopy()),
                );
                // Waiting for the stream: paused until it completes, then running.
                return Ok(VmState::Paused);
            }
            if spec.memory_mib < spec.max_memory_mib {
                // The balloon driver picks the target up when the guest loads it.
                let _ = qmp
                    .execute("balloon", json!({"value": spec.memory_mib << 20}))
                    .await;
            }
            let status = qmp.execute("query-status", json!({})).await?;
            Ok(if status["status"] == "paused" {
                VmState::Paused
            } else {
                VmState::Running
            })
        }
        .await;
        match finished {
            Ok(state) => {
                if self.live.lock().unwrap().generation == generation
                    && self.state() == VmState::Starting
                {
                    self.set_state(shared, state, None);
                }
                if let Some(path) = restore_from {
                    // A restore consumes its save file: the VM's disks move on from here,
                    // so the saved memory would no longer fit them, and the file's quota
                    // charge ends with the restore.
                    if let Err(e) = std::fs::remove_file(path) {
                        tracing::warn!("removing the restored save file {path}: {e}");
                    }
                }
                Ok(())
            }
            Err(e) => {
                if self.state().has_process() {
                    let _ = self.destroy(shared).await;
                }
                if let Some(uid) = identity.as_ref().map(|i| i.uid) {
                    if migrate_from.as_ref().is_some_and(|r| r.postcopy()) {
                        crate::uffd::revoke(uid);
                    }
                }
                if restore_from.is_some() {
                    // The save file is intact: the VM stays saved, ready for another try.
                    self.set_state(
                        shared,
                        VmState::Saved,
                        Some(format!("restoring failed: {e:#}; the save file is kept")),
                    );
                }
                Err(AgentError::Internal(e))
            }
        }
    }

    /// QEMU's QMP, once its socket answers; an error once QEMU has exited (`exit`, from
    /// its reaper, has its status) or after 20 s. (Not by its command line: just after
    /// `exec` returns, `/proc/PID/cmdline` can still be empty while the kernel sets the
    /// new program up, and a QEMU read then was taken for gone and killed, seen under
    /// load in CI.)
    async fn connect_qmp(
        &self,
        pid: u32,
        exit: &tokio::sync::oneshot::Receiver<String>,
    ) -> anyhow::Result<Arc<Qmp>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.paths.qmp().exists() {
                match Qmp::connect(&self.paths.qmp()).await {
                    Ok(q) => return Ok(q),
                    Err(e) if tokio::time::Instant::now() > deadline => {
                        return Err(anyhow!("connecting to QMP: {e}"))
                    }
                    Err(_) => {}
                }
            }
            // Our child stays in /proc until its reaper has waited for it.
            if !exit.is_empty() || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                anyhow::bail!("QEMU exited during start-up");
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("QEMU's QMP socket did not appear within 20 s");
            }
            // QEMU makes its socket some 50 ms after exec: look every millisecond, so a
            // start waits for QEMU and not for this loop (the create → running benchmark).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Re-adopts a QEMU left running by an earlier agent. Returns false if there is none.
    pub async fn adopt(self: &Arc<Self>, shared: &Arc<Shared>, rt: RuntimeFile) -> bool {
        if !process::is_our_qemu(rt.pid, &self.paths.qmp().display().to_string()) {
            return false;
        }
        // A QEMU the last agent started just before it died may not serve QMP yet.
        let marker = self.paths.qmp().display().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let qmp = loop {
            match Qmp::connect(&self.paths.qmp()).await {
                Ok(q) => break q,
                Err(e) => {
                    if !process::is_our_qemu(rt.pid, &marker) {
                        return false;
                    }
                    if std::time::Instant::now() > deadline {
                        // Never left running unknown: a QEMU no agent can drive is ended.
                        tracing::warn!(
                            vm = %rt.spec.name,
                            "cannot re-adopt QEMU pid {}: {e}; ending it", rt.pid
                        );
                        process::kill(rt.pid);
                        wait_gone(rt.pid, &marker).await;
                        return false;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
        let status = qmp
            .execute("query-status", json!({}))
            .await
            .unwrap_or_default();
        let generation = {
            let mut l = self.live.lock().unwrap();
            l.generation += 1;
            l.pid = Some(rt.pid);
            // Unknown after a restart; assume every slot was used once (the safe side).
            l.vcpu_threads = rt.spec.max_vcpus;
            l.argv = rt.argv.clone();
            l.qmp = Some(qmp.clone());
            l.generation
        };
        *self.spec.lock().unwrap() = rt.spec.clone();
        shared.adopt_guards(&rt.spec);
        let _ = self.console.attach(&self.paths.serial()).await;
        let runstate = status["status"].as_str().unwrap_or("");
        // A grant of userfaultfd (post-copy) to its uid goes when it no longer waits.
        let uffd_uid = shared
            .qemu_identity(&rt.spec.id)
            .ok()
            .flatten()
            .map(|i| i.uid)
            .filter(|u| crate::uffd::granted(*u));
        let mut runstate = runstate.to_string();
        if runstate == "prelaunch" && !rt.argv.iter().any(|a| a == "-incoming") {
            // A start held (-S) for its limits when the last agent died: finished now,
            // limits first, as that start would have.
            let limits = &rt.spec.limits;
            let applied = async {
                crate::limits::cpu(&rt.spec.id, rt.pid, limits)?;
                if limits.disk_bps.is_some() || limits.disk_iops.is_some() {
                    crate::limits::disks(&qmp, &rt.spec.disks, limits).await?;
                }
                qmp.execute("cont", json!({})).await?;
                anyhow::Ok(())
            }
            .await;
            match applied {
                Ok(()) => runstate = "running".into(),
                Err(e) => tracing::warn!(vm = %rt.spec.name,
                    "finishing a start held for its limits: {e:#}; the VM stays paused"),
            }
        }
        let runstate = runstate.as_str();
        if runstate == "inmigrate" {
            // Still receiving a migration: its NBD export and certificates go when it
            // ends, as if this agent had never stopped.
            self.clone().watch_incoming(qmp.clone(), true, uffd_uid);
        } else {
            if let Some(uid) = uffd_uid {
                crate::uffd::revoke(uid);
            }
            // A migration this QEMU received or sent while the agent was down may have
            // left its NBD server (writable exports of the disks) or certificates.
            let _ = qmp.execute("nbd-server-stop", json!({})).await;
            crate::stream_tls::drop_tls_files(&self.paths);
        }
        self.clone()
            .supervise(shared.clone(), qmp, generation, None);
        let state = match runstate {
            "paused" | "inmigrate" | "postmigrate" | "finish-migrate" | "prelaunch"
            | "suspended" => VmState::Paused,
            _ => VmState::Running,
        };
        self.set_state(
            shared,
            state,
            Some(format!("re-adopted QEMU pid {}", rt.pid)),
        );
        true
    }

    /// Follows QEMU's events until its monitor closes, then decides what its end means.
    fn supervise(
        self: Arc<Self>,
        shared: Arc<Shared>,
        qmp: Arc<Qmp>,
        generation: u64,
        exit: Option<tokio::sync::oneshot::Receiver<String>>,
    ) {
        let mut events = qmp.events();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) => self.on_event(&shared, &ev.event, &ev.data),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    },
                    _ = qmp.closed() => break,
                }
            }
            // Drain events that arrived just before the close.
            while let Ok(ev) = events.try_recv() {
                self.on_event(&shared, &ev.event, &ev.data);
            }
            let how = match exit {
                Some(rx) => rx.await.unwrap_or_default(),
                None => {
                    let pid = self.pid().unwrap_or(0);
                    wait_gone(pid, &self.paths.qmp().display().to_string()).await;
                    String::from("QEMU exited")
                }
            };
            self.on_exit(&shared, generation, how).await;
        });
    }

    fn on_event(&self, shared: &Shared, event: &str, data: &serde_json::Value) {
        let intent = self.live.lock().unwrap().intent;
        let state = self.state();
        match event {
            "STOP" if intent != Intent::Save && state == VmState::Running => {
                self.set_state(shared, VmState::Paused, None)
            }
            "RESUME" if matches!(state, VmState::Paused | VmState::Starting) => {
                self.set_state(shared, VmState::Running, None)
            }
            "SHUTDOWN" => {
                let reason = data["reason"].as_str().unwrap_or("").to_string();
                self.live.lock().unwrap().shutdown_reason = Some(reason);
                if self.state().has_process() && intent == Intent::None {
                    self.set_state(
                        shared,
                        VmState::ShuttingDown,
                        Some("the guest powered off".into()),
                    );
                }
            }
            "RESET" => {
                tracing::info!(vm = %self.spec().name, "guest reset");
            }
            "GUEST_PANICKED" => {
                self.live.lock().unwrap().panicked = true;
            }
            _ => {}
        }
    }

    async fn on_exit(self: &Arc<Self>, shared: &Arc<Shared>, generation: u64, how: String) {
        let (intent, shutdown_reason, panicked) = {
            let mut l = self.live.lock().unwrap();
            if l.generation != generation {
                return;
            }
            l.qmp = None;
            l.pid = None;
            l.argv.clear();
            (l.intent, l.shutdown_reason.clone(), l.panicked)
        };
        let _ = std::fs::remove_file(self.paths.state());
        let spec = self.spec();
        shared.unplug_guards(&spec);
        crate::limits::forget(&spec.id);
        let (state, reason, restart) = match intent {
            Intent::Destroy => (VmState::Stopped, "destroyed".to_string(), false),
            Intent::Shutdown => (VmState::Stopped, "shut down".to_string(), false),
            Intent::Save => (VmState::Saved, "memory state saved".to_string(), false),
            // reboot() starts the new QEMU itself, under the operation lock it holds.
            Intent::Reboot => (VmState::Stopped, "rebooting".to_string(), false),
            Intent::None if panicked => (
                VmState::Crashed,
                format!(
                    "the guest kernel panicked ({how}); on_crash={}",
                    spec.on_crash.as_str()
                ),
                spec.on_crash == Policy::Restart,
            ),
            Intent::None => match shutdown_reason.as_deref() {
                Some("guest-shutdown") => (
                    VmState::Stopped,
                    format!(
                        "the guest powered off; on_poweroff={}",
                        spec.on_poweroff.as_str()
                    ),
                    spec.on_poweroff == Policy::Restart,
                ),
                Some("guest-reset") => (
                    VmState::Stopped,
                    "the guest rebooted; on_reboot=destroy".to_string(),
                    false,
                ),
                Some(r) if !r.is_empty() => {
                    (VmState::Stopped, format!("QEMU shut down ({r})"), false)
                }
                _ => (
                    VmState::Crashed,
                    format!(
                        "QEMU ended unexpectedly: {how}; on_crash={}; its log: {}",
                        spec.on_crash.as_str(),
                        tail_file(&self.paths.log(), 2)
                    ),
                    spec.on_crash == Policy::Restart,
                ),
            },
        };
        // A guest that keeps crashing or powering off is not restarted for ever.
        let restart = restart && {
            let mut times = self.restarts.lock().unwrap();
            let now = std::time::Instant::now();
            times.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            times.push(now);
            times.len() <= MAX_RESTARTS
        };
        let reason =
            if !restart && matches!(spec.on_crash, Policy::Restart) && state == VmState::Crashed {
                format!("{reason}; not restarted: it ended {MAX_RESTARTS} times within a minute")
            } else {
                reason
            };
        self.set_state(shared, state, Some(reason));
        if restart {
            let me = self.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let _guard = me.op.lock().await;
                if me.state().has_process() {
                    return;
                }
                if let Err(e) = me.start(&shared, spec, None).await {
                    tracing::warn!("restarting the VM failed: {e}");
                }
            });
        }
    }

    async fn wait_state(&self, pred: impl Fn(VmState) -> bool, timeout: Duration) -> bool {
        let mut rx = self.state_watch.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| pred(*s)))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    pub async fn destroy(&self, shared: &Shared) -> Result<(), AgentError> {
        let (qmp, pid) = {
            let mut l = self.live.lock().unwrap();
            if !l.state.has_process() {
                return Err(AgentError::Conflict("the VM is not running".into()));
            }
            l.intent = Intent::Destroy;
            (l.qmp.clone(), l.pid)
        };
        if let Some(q) = qmp {
            let _ = q
                .execute_timeout("quit", json!({}), Duration::from_millis(500))
                .await;
        }
        if !self
            .wait_state(|s| !s.has_process(), Duration::from_secs(5))
            .await
        {
            if let Some(pid) = pid {
                process::kill(pid);
            }
            if !self
                .wait_state(|s| !s.has_process(), Duration::from_secs(10))
                .await
            {
                self.set_state(shared, VmState::Stopped, Some("destroyed (killed)".into()));
            }
        }
        Ok(())
    }

    pub async fn shutdown(
        &self,
        shared: &Shared,
        timeout: Duration,
        force: bool,
    ) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        self.live.lock().unwrap().intent = Intent::Shutdown;
        self.set_state(
            shared,
            VmState::ShuttingDown,
            Some("ACPI power-off requested".into()),
        );
        qmp.execute("system_powerdown", json!({})).await?;
        if self.wait_state(|s| !s.has_process(), timeout).await {
            return Ok(());
        }
        if force {
            self.destroy(shared).await?;
            self.set_state(
                shared,
                VmState::Stopped,
                Some(format!(
                    "forced off: the guest did not power off within {} s",
                    timeout.as_secs()
                )),
            );
            return Ok(());
        }
        self.live.lock().unwrap().intent = Intent::None;
        self.set_state(shared, VmState::Running, None);
        Err(AgentError::Timeout(format!(
            "the guest did not power off within {} s; it is still running (use --force to stop \
             it hard after the timeout, or `hostel destroy`)",
            timeout.as_secs()
        )))
    }

    /// A clean reboot: ACPI power-off, then a new QEMU from the current definition (so
    /// pending changes apply, as on Proxmox). A guest that ignores ACPI is reset instead.
    pub async fn reboot(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        self.live.lock().unwrap().intent = Intent::Reboot;
        qmp.execute("system_powerdown", json!({})).await?;
        if !self.wait_state(|s| !s.has_process(), timeout).await {
            self.live.lock().unwrap().intent = Intent::None;
            qmp.execute("system_reset", json!({})).await?;
            return Ok(());
        }
        if self.live.lock().unwrap().intent != Intent::Reboot {
            // Destroyed while it powered off for the reboot: it stays off.
            return Ok(());
        }
        self.start(shared, self.spec(), None).await
    }

    pub async fn pause(&self, shared: &Shared) -> Result<(), AgentError> {
        self.qmp()?.execute("stop", json!({})).await?;
        self.set_state(shared, VmState::Paused, None);
        Ok(())
    }

    pub async fn unpause(&self, shared: &Shared) -> Result<(), AgentError> {
        self.qmp()?.execute("cont", json!({})).await?;
        self.set_state(shared, VmState::Running, None);
        Ok(())
    }

    pub async fn balloon(&self, memory_mib: u64) -> Result<(), AgentError> {
        self.qmp()?
            .execute("balloon", json!({"value": memory_mib << 20}))
            .await?;
        let mut spec = self.spec.lock().unwrap();
        spec.memory_mib = memory_mib;
        write_runtime_spec(&self.paths, &spec);
        Ok(())
    }

    /// Hot-plugs or unplugs vCPUs until `n` are present.
    pub async fn set_vcpus(&self, shared: &Shared, n: u32) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        let accel = shared.host_opts().await.accel;
        let current = present_sockets(&qmp).await?;
        let have = current.len() as u32;
        if n > have {
            // Check the whole change first, so a refusal leaves the VM as it was.
            let used = self.live.lock().unwrap().vcpu_threads;
            if let Some(budget) = vcpu_thread_budget(accel, self.spec().max_vcpus) {
                if used + (n - have) > budget {
                    return Err(AgentError::Conflict(format!(
                        "this QEMU run cannot plug in {} more vCPU(s): under TCG a run starts at \
                         most {budget} vCPU threads (max vCPUs) and unplugged vCPUs do not give \
                         theirs back (a QEMU limitation). The VM keeps its {have} vCPU(s); \
                         `hostel reboot` starts a fresh QEMU, after which vcpu-set works again",
                        n - have
                    )));
                }
            }
            for socket in 0..self.spec().max_vcpus {
                if current.contains(&socket) {
                    continue;
                }
                if present_sockets(&qmp).await?.len() as u32 >= n {
                    break;
                }
                qmp.execute(
                    "device_add",
                    json!({"driver": cpu_type(accel, self.spec().cpu_model.as_deref()),
                           "id": cpu_id(socket),
                           "socket-id": socket, "core-id": 0, "thread-id": 0}),
                )
                .await?;
                self.live.lock().unwrap().vcpu_threads += 1;
            }
        } else if n < have {
            let mut removable: Vec<u32> = current.iter().copied().filter(|s| *s != 0).collect();
            removable.sort_unstable_by(|a, b| b.cmp(a));
            for socket in removable.into_iter().take((have - n) as usize) {
                qmp.execute("device_del", json!({"id": cpu_id(socket)}))
                    .await?;
            }
            // The guest must release each vCPU (ACPI eject) before QEMU removes it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while present_sockets(&qmp).await?.len() as u32 > n {
                if tokio::time::Instant::now() > deadline {
                    return Err(AgentError::Timeout(
                        "the guest did not release the vCPUs within 20 s (does its kernel \
                         support CPU hot-unplug?)"
                            .into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut spec = self.spec.lock().unwrap();
        spec.vcpus = n;
        write_runtime_spec(&self.paths, &spec);
        Ok(())
    }

    /// Hot-plugs a NIC into the running guest.
    pub async fn add_nic(
        &self,
        shared: &Shared,
        nic: hostel_api::agent::NicSpec,
    ) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        if self.spec().nics.iter().any(|n| n.id == nic.id) {
            return Err(AgentError::Conflict(format!(
                "NIC {} is plugged in already",
                nic.mac
            )));
        }
        // Marked before the tap exists: an agent that dies before the NIC is in the
        // runtime spec finds the mark when it re-adopts the VM, and takes the half-plugged
        // NIC out (`drop_pending_nics`).
        let mark = pending_nic_mark(&self.paths.dir, &nic.tap);
        std::fs::write(&mark, nic.index.to_string())
            .map_err(|e| AgentError::Internal(anyhow::anyhow!("{}: {e}", mark.display())))?;
        let fd = match shared.plug_nic(&nic, self.spec().limits.net_mbps) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = std::fs::remove_file(&mark);
                return Err(e);
            }
        };
        let name = format!("tap{}", nic.index);
        let res = async {
            qmp.execute_with_fd("getfd", json!({"fdname": name}), std::os::fd::AsRawFd::as_raw_fd(&fd))
                .await?;
            // QEMU holds the tap now: it outlives this process.
            hostel_faults::crash_point("agent.nic-add.tap-passed");
            qmp.execute(
                "netdev_add",
                json!({"type": "tap", "id": format!("net{}", nic.index), "fd": name, "vhost": false}),
            )
            .await?;
            device_add_on_free_port(
                &qmp,
                json!({"driver": "virtio-net-pci", "netdev": format!("net{}", nic.index),
                       "mac": nic.mac, "id": format!("nic{}", nic.index)}),
            )
            .await
        }
        .await;
        drop(fd);
        if let Err(e) = res {
            let _ = qmp
                .execute("netdev_del", json!({"id": format!("net{}", nic.index)}))
                .await;
            shared.unplug_guard(&nic.tap);
            let _ = std::fs::remove_file(&mark);
            return Err(e.into());
        }
        {
            let mut spec = self.spec.lock().unwrap();
            spec.nics.push(nic);
            self.live.lock().unwrap().devices_changed = true;
            spec.nics.sort_by_key(|n| n.index);
            write_runtime_spec(&self.paths, &spec);
        }
        let _ = std::fs::remove_file(&mark);
        Ok(())
    }

    /// Takes out the NICs an earlier agent was plugging in when it died (marked, not in
    /// the runtime spec): the guest's device and QEMU's backend if they got that far,
    /// the tap and its port guard. A marked NIC that made it into the spec is kept.
    /// Called once every VM is adopted: removing a guard rewrites the guards' verdict
    /// map from those registered, which must by then be every adopted VM's.
    pub async fn drop_pending_nics(&self, shared: &Shared) {
        let Ok(qmp) = self.qmp() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&self.paths.dir) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(tap) = file.strip_prefix(PENDING_NIC) else {
                continue;
            };
            let nics = self.spec().nics;
            let in_spec = nics.iter().any(|n| n.tap == tap);
            if !in_spec {
                let index = std::fs::read_to_string(e.path()).unwrap_or_default();
                let index = index.trim().to_string();
                tracing::warn!(vm = %self.id, %tap,
                    "a NIC was being plugged in when the agent stopped: taking it out");
                // Its device and backend, unless a NIC of the spec has that index now.
                if !nics.iter().any(|n| n.index.to_string() == index) {
                    let _ = qmp
                        .execute("device_del", json!({"id": format!("nic{index}")}))
                        .await;
                    let _ = qmp
                        .execute("netdev_del", json!({"id": format!("net{index}")}))
                        .await;
                    let _ = qmp
                        .execute("closefd", json!({"fdname": format!("tap{index}")}))
                        .await;
                }
                if let Err(e) = hostel_net::link::delete(tap) {
                    tracing::debug!(%tap, "the half-plugged tap: {e:#}");
                }
                shared.unplug_guard(tap);
            }
            let _ = std::fs::remove_file(e.path());
        }
    }

    /// Unplugs a NIC from the running guest (the guest releases it, then QEMU).
    pub async fn remove_nic(&self, shared: &Shared, nic_id: &str) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        let Some(nic) = self.spec().nics.into_iter().find(|n| n.id == nic_id) else {
            return Err(AgentError::NotFound(format!("no NIC {nic_id} on this VM")));
        };
        unplug(&qmp, &format!("nic{}", nic.index), "the NIC").await?;
        let _ = qmp
            .execute("netdev_del", json!({"id": format!("net{}", nic.index)}))
            .await;
        shared.unplug_guard(&nic.tap);
        let mut spec = self.spec.lock().unwrap();
        spec.nics.retain(|n| n.id != nic_id);
        self.live.lock().unwrap().devices_changed = true;
        write_runtime_spec(&self.paths, &spec);
        Ok(())
    }

    /// Hot-plugs a disk into the running guest, on the first free hotplug port.
    pub async fn add_disk(&self, disk: hostel_api::agent::DiskSpec) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        if self.spec().disks.iter().any(|d| d.index == disk.index) {
            return Err(AgentError::Conflict(format!(
                "disk {} is attached already",
                disk.index
            )));
        }
        let i = disk.index;
        qmp.execute(
            "blockdev-add",
            json!({"driver": "file", "filename": disk.path, "node-name": format!("file{i}"),
                   "cache": {"direct": false}, "discard": "unmap"}),
        )
        .await?;
        let res = async {
            qmp.execute(
                "blockdev-add",
                json!({"driver": disk.format, "file": format!("file{i}"),
                       "node-name": format!("disk{i}"), "discard": "unmap"}),
            )
            .await?;
            device_add_on_free_port(
                &qmp,
                json!({"driver": "virtio-blk-pci", "drive": format!("disk{i}"),
                       "id": format!("virtio-disk{i}")}),
            )
            .await
        }
        .await;
        if let Err(e) = res {
            let _ = qmp
                .execute("blockdev-del", json!({"node-name": format!("disk{i}")}))
                .await;
            let _ = qmp
                .execute("blockdev-del", json!({"node-name": format!("file{i}")}))
                .await;
            return Err(e.into());
        }
        let limits = self.spec().limits;
        if limits.disk_bps.is_some() || limits.disk_iops.is_some() {
            if let Err(e) = crate::limits::disk(&qmp, i, &limits).await {
                // Not left in the guest unlimited: taken out as if never added.
                let _ = unplug(&qmp, &format!("virtio-disk{i}"), "the disk").await;
                for node in [format!("disk{i}"), format!("file{i}")] {
                    let _ = qmp
                        .execute("blockdev-del", json!({"node-name": node}))
                        .await;
                }
                return Err(AgentError::Internal(e));
            }
        }
        let mut spec = self.spec.lock().unwrap();
        spec.disks.push(disk);
        self.live.lock().unwrap().devices_changed = true;
        spec.disks.sort_by_key(|d| d.index);
        write_runtime_spec(&self.paths, &spec);
        Ok(())
    }

    /// Sets the VM's limits: at once on its QEMU if it runs, and in its spec for the
    /// next start.
    pub async fn set_limits(
        &self,
        shared: &Shared,
        l: hostel_api::agent::Limits,
    ) -> Result<(), AgentError> {
        let spec = self.spec();
        if self.state().has_process() {
            let qmp = self.qmp()?;
            let pid = self
                .pid()
                .ok_or_else(|| AgentError::Conflict("the VM's QEMU is not known yet".into()))?;
            crate::limits::cpu(&spec.id, pid, &l)
                .map_err(|e| AgentError::Conflict(format!("{e:#}")))?;
            if (l.disk_bps, l.disk_iops) != (spec.limits.disk_bps, spec.limits.disk_iops) {
                crate::limits::disks(&qmp, &spec.disks, &l).await?;
            }
            if l.net_mbps != spec.limits.net_mbps {
                shared
                    .set_nic_rates(&spec.nics, l.net_mbps)
                    .map_err(AgentError::Internal)?;
            }
        }
        let mut spec = self.spec.lock().unwrap();
        spec.limits = l;
        write_runtime_spec(&self.paths, &spec);
        Ok(())
    }

    /// Unplugs a disk: the guest releases it, then QEMU closes the file.
    pub async fn remove_disk(&self, index: u32) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        if !self.spec().disks.iter().any(|d| d.index == index) {
            return Err(AgentError::NotFound(format!("no disk {index} on this VM")));
        }
        let dev = format!("virtio-disk{index}");
        unplug(&qmp, &dev, "the disk (is it mounted?)").await?;
        qmp.execute("blockdev-del", json!({"node-name": format!("disk{index}")}))
            .await?;
        qmp.execute("blockdev-del", json!({"node-name": format!("file{index}")}))
            .await?;
        let mut spec = self.spec.lock().unwrap();
        spec.disks.retain(|d| d.index != index);
        self.live.lock().unwrap().devices_changed = true;
        write_runtime_spec(&self.paths, &spec);
        Ok(())
    }

    /// Grows a disk of the running guest; the guest sees the new size at once.
    pub async fn resize_disk(&self, index: u32, size_mib: u64) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        qmp.execute(
            "block_resize",
            json!({"node-name": format!("disk{index}"), "size": size_mib << 20}),
        )
        .await?;
        Ok(())
    }

    /// Runs `work` (blocking) with the guest paused, so that what it does to the disks
    /// happens at one instant; resumes the guest afterwards if it was running.
    pub async fn while_paused<F>(&self, work: F) -> Result<(), AgentError>
    where
        F: FnOnce() -> anyhow::Result<()> + Send + 'static,
    {
        let qmp = self.qmp()?;
        let was_running = self.state() == VmState::Running;
        qmp.execute("stop", json!({})).await?;
        let res = tokio::task::spawn_blocking(work).await;
        if was_running {
            qmp.execute("cont", json!({})).await?;
        }
        res.map_err(|e| AgentError::Internal(e.into()))?
            .map_err(AgentError::Invalid)
    }

    /// Snapshot operations while QEMU runs: all disks at one instant (the VM paused
    /// meanwhile), optionally with the memory state (`snapshot-save`).
    pub async fn snapshot_live(
        &self,
        action: &str,
        name: &str,
        memory: bool,
    ) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        let nodes: Vec<String> = self
            .spec()
            .disks
            .iter()
            .map(|d| format!("disk{}", d.index))
            .collect();
        match action {
            "create" if memory => {
                let job = format!("snap-{name}");
                qmp.execute(
                    "snapshot-save",
                    json!({"job-id": job, "tag": name, "vmstate": nodes[0], "devices": nodes}),
                )
                .await?;
                wait_job(&qmp, &job).await.map_err(AgentError::Internal)
            }
            "create" => {
                let was_running = self.state() == VmState::Running;
                qmp.execute("stop", json!({})).await?;
                let mut made = Vec::new();
                let mut failed = None;
                for n in &nodes {
                    match qmp
                        .execute(
                            "blockdev-snapshot-internal-sync",
                            json!({"device": n, "name": name}),
                        )
                        .await
                    {
                        Ok(_) => made.push(n.clone()),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if failed.is_some() {
                    for n in &made {
                        let _ = qmp
                            .execute(
                                "blockdev-snapshot-delete-internal-sync",
                                json!({"device": n, "name": name}),
                            )
                            .await;
                    }
                }
                if was_running {
                    qmp.execute("cont", json!({})).await?;
                }
                match failed {
                    Some(e) => Err(e.into()),
                    None => Ok(()),
                }
            }
            "delete" => {
                for n in &nodes {
                    qmp.execute(
                        "blockdev-snapshot-delete-internal-sync",
                        json!({"device": n, "name": name}),
                    )
                    .await?;
                }
                Ok(())
            }
            _ => Err(AgentError::Conflict(format!(
                "cannot {action} a snapshot while the VM runs: stop it first"
            ))),
        }
    }

    /// Writes the memory state to `path` (which must not exist) and stops the VM.
    pub async fn save(
        &self,
        shared: &Shared,
        path: &str,
        header: &SaveHeader,
    ) -> Result<(), AgentError> {
        let qmp = self.qmp()?;
        if self.live.lock().unwrap().devices_changed {
            return Err(AgentError::Conflict(
                "NICs or disks were plugged in or out since this QEMU started, so a restore \
                 could not rebuild the same machine: `hostel reboot` the VM, then save it"
                    .into(),
            ));
        }
        let file = create_save_file(path, header)?;
        let was_running = self.state() == VmState::Running;
        self.live.lock().unwrap().intent = Intent::Save;
        let result = async {
            qmp.execute("stop", json!({})).await?;
            qmp.execute_with_fd(
                "getfd",
                json!({"fdname": "hostel-save"}),
                std::os::fd::AsRawFd::as_raw_fd(&file),
            )
            .await?;
            qmp.execute("migrate", json!({"uri": "fd:hostel-save"}))
                .await?;
            wait_migration(&qmp).await
        }
        .await;
        drop(file);
        if let Err(e) = result {
            self.live.lock().unwrap().intent = Intent::None;
            let _ = std::fs::remove_file(path);
            if was_running {
                let _ = qmp.execute("cont", json!({})).await;
            }
            return Err(AgentError::Internal(anyhow!(
                "saving failed, the VM goes on: {e:#}"
            )));
        }
        let _ = qmp.execute("quit", json!({})).await;
        if !self
            .wait_state(|s| s == VmState::Saved, Duration::from_secs(10))
            .await
        {
            if let Some(pid) = self.pid() {
                process::kill(pid);
            }
        }
        let _ = shared;
        Ok(())
    }
}

/// Unplugs a device and waits until the guest has released it (QEMU's DEVICE_DELETED).
async fn unplug(qmp: &Qmp, dev: &str, what: &str) -> Result<(), AgentError> {
    let mut events = qmp.events();
    qmp.execute("device_del", json!({"id": dev})).await?;
    let released = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(ev) if ev.event == "DEVICE_DELETED" && ev.data["device"] == dev => return true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return false,
            }
        }
    })
    .await;
    match released {
        Ok(true) => Ok(()),
        Ok(false) => Err(AgentError::Conflict("QEMU exited while unplugging".into())),
        Err(_) => Err(AgentError::Timeout(format!(
            "the guest did not release {what} within 30 s"
        ))),
    }
}

/// Plugs a device into the first free hotplug root port (QEMU refuses a busy one).
async fn device_add_on_free_port(
    qmp: &Qmp,
    mut args: serde_json::Value,
) -> Result<(), hostel_qemu::QmpError> {
    let mut last = None;
    for port in 0..hostel_qemu::argv::HOTPLUG_PORTS {
        args["bus"] = json!(hostel_qemu::argv::hotplug_port(port));
        match qmp.execute("device_add", args.clone()).await {
            Ok(_) => return Ok(()),
            Err(e @ hostel_qemu::QmpError::Command { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(hostel_qemu::QmpError::Closed))
}

/// Waits for a QEMU job to conclude, and dismisses it.
async fn wait_job(qmp: &Qmp, id: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = qmp.execute("query-jobs", json!({})).await?;
        let job = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == id))
            .cloned()
            .ok_or_else(|| anyhow!("the job {id} vanished"))?;
        if job["status"] == "concluded" {
            let _ = qmp.execute("job-dismiss", json!({"id": id})).await;
            if let Some(e) = job["error"].as_str() {
                anyhow::bail!("{e}");
            }
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the job {id} did not finish within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn present_sockets(qmp: &Qmp) -> Result<Vec<u32>, AgentError> {
    let cpus = qmp.execute("query-hotpluggable-cpus", json!({})).await?;
    Ok(cpus
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c.get("qom-path").is_some())
                .filter_map(|c| c["props"]["socket-id"].as_u64().map(|s| s as u32))
                .collect()
        })
        .unwrap_or_default())
}

async fn wait_migration(qmp: &Qmp) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let st = qmp.execute("query-migrate", json!({})).await?;
        match st["status"].as_str().unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                anyhow::bail!(
                    "migration {}: {}",
                    st["status"].as_str().unwrap_or(""),
                    st["error-desc"].as_str().unwrap_or("no reason given")
                )
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("writing the state did not finish within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a QEMU that receives a live migration starts.
struct Receive {
    /// `tcp:ADDRESS:PORT` it listens on.
    uri: String,
    /// `migrate-set-capabilities` entries.
    caps: serde_json::Value,
    /// Where its NBD server listens, exporting the disks for the source's mirror.
    nbd: Option<(String, u16)>,
    /// Disks on shared storage, not exported.
    shared_disks: Vec<u32>,
    /// TLS on the stream and the NBD server; none: plain TCP.
    tls: Option<hostel_api::agent::StreamTls>,
}

impl Receive {
    /// The migration may end in post-copy (the `postcopy-ram` capability is on).
    fn postcopy(&self) -> bool {
        self.caps.as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["capability"] == "postcopy-ram" && c["state"] == true)
        })
    }
}

/// Serves the VM's disks over NBD (writable, export `disk` and the index) for the
/// source's mirror, and stops serving once the VM runs here (the migration completed)
/// or its QEMU is gone.
async fn export_disks(
    qmp: &Arc<Qmp>,
    spec: &VmSpec,
    shared: &[u32],
    host: &str,
    port: u16,
    tls: bool,
) -> anyhow::Result<()> {
    let mut args =
        json!({"addr": {"type": "inet", "data": {"host": host, "port": port.to_string()}}});
    if tls {
        args["tls-creds"] = json!(crate::stream_tls::TLS_ID);
    }
    qmp.execute("nbd-server-start", args).await?;
    for d in spec.disks.iter().filter(|d| !shared.contains(&d.index)) {
        qmp.execute(
            "block-export-add",
            json!({"type": "nbd", "id": format!("disk{}", d.index),
                "node-name": format!("disk{}", d.index), "writable": true}),
        )
        .await?;
    }
    Ok(())
}

impl VmRuntime {
    /// Once the VM runs here (the migration completed) or its QEMU is gone: the NBD
    /// server (`nbd`) stops serving the disks and the migration's certificates go.
    fn watch_incoming(self: Arc<Self>, q: Arc<Qmp>, nbd: bool, uffd_uid: Option<u32>) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match q.execute("query-status", json!({})).await {
                    Ok(s) if s["status"] == "inmigrate" => continue,
                    Ok(_) => {
                        if nbd {
                            let _ = q.execute("nbd-server-stop", json!({})).await;
                        }
                        break;
                    }
                    Err(_) => break,
                }
            }
            crate::stream_tls::drop_tls_files(&self.paths);
            if let Some(uid) = uffd_uid {
                crate::uffd::revoke(uid);
            }
        });
    }
}

async fn wait_incoming(qmp: &Qmp) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let st = qmp.execute("query-status", json!({})).await?;
        match st["status"].as_str().unwrap_or("") {
            "inmigrate" => {}
            "running" | "paused" => return Ok(()),
            other => {
                let m = qmp
                    .execute("query-migrate", json!({}))
                    .await
                    .unwrap_or_default();
                if m["status"] == "failed" {
                    anyhow::bail!(
                        "restoring failed: {}",
                        m["error-desc"].as_str().unwrap_or(other)
                    );
                }
                if other != "postmigrate" && other != "prelaunch" {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("restoring did not finish within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a QEMU we did not start (a re-adopted one) has really gone.
async fn wait_gone(pid: u32, marker: &str) {
    for _ in 0..500 {
        if pid == 0 || !process::is_our_qemu(pid, marker) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn create_save_file(path: &str, header: &SaveHeader) -> Result<std::fs::File, AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = std::path::Path::new(path);
    if !p.is_absolute() {
        return Err(AgentError::Invalid(anyhow!(
            "path: {path:?} is not absolute: give the full path of the file to write on the host"
        )));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| {
            AgentError::Invalid(anyhow!(
                "path: cannot create {path}: {e}{}",
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    " (choose a new file name; save never overwrites)"
                } else {
                    ""
                }
            ))
        })?;
    let mut line = serde_json::to_vec(header).map_err(|e| AgentError::Internal(e.into()))?;
    line.push(b'\n');
    f.write_all(&line)
        .map_err(|e| AgentError::Internal(e.into()))?;
    Ok(f)
}

/// Reads a save file's header line and returns the file positioned at QEMU's stream.
pub fn read_save_header(path: &str) -> Result<(SaveHeader, std::fs::File), AgentError> {
    let f = std::fs::File::open(path)
        .map_err(|e| AgentError::Invalid(anyhow!("path: cannot open {path}: {e}")))?;
    let mut reader = std::io::BufReader::new(f);
    let mut line = Vec::new();
    let bad = || {
        AgentError::Invalid(anyhow!(
            "path: {path} is not a Hostel save file (it does not start with a {SAVE_MAGIC} header)"
        ))
    };
    reader
        .by_ref()
        .take(4096)
        .read_until(b'\n', &mut line)
        .map_err(|_| bad())?;
    let header: SaveHeader = serde_json::from_slice(&line).map_err(|_| bad())?;
    if header.magic != SAVE_MAGIC {
        return Err(bad());
    }
    // Reopen and seek: the BufReader may have read past the header.
    let mut f = std::fs::File::open(path).map_err(|e| AgentError::Internal(e.into()))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(line.len() as u64))
        .map_err(|e| AgentError::Internal(e.into()))?;
    Ok((header, f))
}

use std::io::Read as _;

fn open_saved(path: &str, vm_id: &str) -> Result<OwnedFd, AgentError> {
    let (header, f) = read_save_header(path)?;
    if header.vm_id != vm_id {
        return Err(AgentError::Invalid(anyhow!(
            "path: {path} holds the state of VM {} ({}), not this one",
            header.vm_name,
            header.vm_id
        )));
    }
    Ok(OwnedFd::from(f))
}

fn write_runtime_file(paths: &RuntimePaths, spec: &VmSpec, argv: &[String], pid: u32) {
    let rt = RuntimeFile {
        spec: spec.clone(),
        argv: argv.to_vec(),
        pid,
    };
    let tmp = paths.state().with_extension("tmp");
    if std::fs::write(&tmp, serde_json::to_vec_pretty(&rt).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, paths.state());
    }
}

fn write_runtime_spec(paths: &RuntimePaths, spec: &VmSpec) {
    if let Ok(text) = std::fs::read(paths.state()) {
        if let Ok(mut rt) = serde_json::from_slice::<RuntimeFile>(&text) {
            rt.spec = spec.clone();
            write_runtime_file(paths, spec, &rt.argv, rt.pid);
        }
    }
}

pub fn read_runtime_file(paths: &RuntimePaths) -> Option<RuntimeFile> {
    serde_json::from_slice(&std::fs::read(paths.state()).ok()?).ok()
}

fn tail_file(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

/// The files a start needs besides the disks: the NoCloud seed ISO (written anew from the
/// record each time), the UEFI variables (made once from the host's template) and a
/// check that a CD-ROM file is there for QEMU to read.
fn prepare_boot_files(
    shared: &Shared,
    paths: &RuntimePaths,
    spec: &VmSpec,
    identity: Option<&hostel_qemu::process::RunAs>,
) -> Result<(), AgentError> {
    if let Some(seed) = &spec.seed {
        hostel_storage::seed::write_seed_iso(
            &paths.seed_iso(),
            &seed.meta_data,
            &seed.user_data,
            &seed.network_config,
        )
        .map_err(AgentError::Internal)?;
        if let Some(owner) = identity {
            crate::uids::give(&paths.seed_iso(), owner, 0o600)?;
        }
    }
    if spec.boot == hostel_api::agent::Boot::Uefi && !paths.efivars().exists() {
        let template = Path::new(hostel_qemu::argv::OVMF_VARS);
        if !template.exists() {
            return Err(AgentError::Invalid(anyhow!(
                "firmware: this host has no UEFI firmware ({} is missing): apt-get install ovmf, \
                 or boot the VM with --firmware bios",
                template.display()
            )));
        }
        let tmp = paths.efivars().with_extension("tmp");
        std::fs::copy(template, &tmp).context("copying the UEFI variables template")?;
        std::fs::rename(&tmp, paths.efivars()).context("placing the UEFI variables")?;
    }
    if let (Some(owner), true) = (identity, paths.efivars().exists()) {
        crate::uids::give(&paths.efivars(), owner, 0o600)?;
    }
    // A file QEMU cannot load is the caller's mistake, told before QEMU is started.
    if let hostel_api::agent::Boot::DirectKernel { kernel, initrd, .. } = &spec.boot {
        for (field, path) in [("kernel", Some(kernel)), ("initrd", initrd.as_ref())] {
            let Some(path) = path else { continue };
            let meta = std::fs::metadata(path)
                .map_err(|e| AgentError::Invalid(anyhow!("{field}: cannot read {path}: {e}")))?;
            if !meta.is_file() {
                return Err(AgentError::Invalid(anyhow!(
                    "{field}: {path} is not a regular file"
                )));
            }
        }
    }
    if let Some(cd) = &spec.cdrom {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&cd.path)
            .map_err(|e| AgentError::Invalid(anyhow!("cdrom: cannot read {}: {e}", cd.path)))?;
        if !meta.is_file() {
            return Err(AgentError::Invalid(anyhow!(
                "cdrom: {} is not a regular file",
                cd.path
            )));
        }
        if shared.run_as.is_some() && meta.permissions().mode() & 0o004 == 0 {
            return Err(AgentError::Invalid(anyhow!(
                "cdrom: {} is not readable by QEMU's user: chmod o+r it, or import it with \
                 `hostel image import`",
                cd.path
            )));
        }
    }
    Ok(())
}

/// The file that marks a NIC being plugged into a running VM: `pending-nic-TAP` in the
/// VM's runtime directory.
const PENDING_NIC: &str = "pending-nic-";

fn pending_nic_mark(dir: &std::path::Path, tap: &str) -> std::path::PathBuf {
    dir.join(format!("{PENDING_NIC}{tap}"))
}

/// Removes every pending-NIC mark of a VM's runtime directory.
fn clear_pending_nics(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(PENDING_NIC) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
