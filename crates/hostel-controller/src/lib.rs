//! The controller: the source of truth (the database), the public REST API, tasks,
//! placement, and the reconciliation of what hosts report with what the records say.

pub mod accounts;
pub mod agent_client;
pub mod audit;
mod audit_retention;
pub mod auth;
mod backup_restore;
mod backup_schedule;
mod backups;
mod boot;
pub mod cluster;
pub mod console_sessions;
pub mod consoles;
pub mod context;
mod disk_import;
mod disks;
mod doctor;
mod drain;
pub mod error;
mod events;
mod hosts;
mod http;
mod image_copies;
mod images;
mod journal;
mod lease;
mod limits;
pub mod metrics;
mod migrate;
mod migrate_offline;
mod migrate_recover;
mod net_policy;
mod networks;
pub mod pki;
mod placement;
mod platform;
mod pools;
mod quota;
mod rebalance;
mod space;
pub mod sshgw;
pub mod stats;
mod stream_address;
pub mod throttle;
mod vm_archive;
mod vm_create;
mod vm_spec;
mod vms;
mod xen_import;

use agent_client::AgentClient;
use hostel_api::agent::AgentApi;
use hostel_api::agent::Event;
use hostel_store::{HostRecord, Store};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use http::{metrics_router, openapi_json, router, to_the_end};

/// A task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
pub use networks::{DEFAULT_CIDR, DEFAULT_NETWORK};
pub use space::FreeSpaceFloor;
pub use stats::StatsRange;
pub use vm_archive::VmExport;
pub use vms::VmFilter;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    /// The token of the `admin` user that `hostel up` writes to its client config.
    pub admin_token: String,
    /// The daemon's log, which `hostel dmesg` reads.
    pub log_file: PathBuf,
    /// The lease new VMs get, in days; none: no lease.
    pub default_lease_days: Option<u32>,
    /// Where the npm packages of the browser consoles are (a `node_modules`).
    pub web_dir: Option<PathBuf>,
    /// The free space the data directory's filesystem keeps: below it, new work that
    /// takes disk space is refused.
    pub min_free_space: space::FreeSpaceFloor,
    /// What refused and unauthenticated requests may cost (`throttle::Budgets`).
    pub refusal_budgets: throttle::Budgets,
    /// A host offline for this long is shown as stale (`HostInfo::stale`).
    pub stale_after: Duration,
}

/// How long a host may be offline before it is shown as stale, by default.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(120);

/// A lock whose holder is the only one doing something (a copy of an image to a host).
type OneAtATime = Arc<tokio::sync::Mutex<()>>;

pub struct Controller {
    pub store: Store,
    pub cfg: ControllerConfig,
    agents: Mutex<HashMap<String, AgentClient>>,
    /// One lock per VM id: operations on a VM run one at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Network state is pushed to hosts one push at a time.
    net_sync: tokio::sync::Mutex<()>,
    /// Ports this controller's own listeners hold (API, SSH gateway): never forwarded.
    own_ports: Mutex<Vec<(u16, &'static str)>>,
    /// Failed logins, per account and per source address.
    pub(crate) logins: auth::LoginLimiter,
    /// What refused and unauthenticated requests may cost.
    pub(crate) throttle: throttle::Throttle,
    /// Quota checks and the changes they allow happen one at a time.
    pub(crate) quota_lock: tokio::sync::Mutex<()>,
    /// The SSH console gateway, once it listens.
    pub ssh_console: Mutex<Option<sshgw::SshConsole>>,
    /// Where `/metrics` is served without a token, if anywhere (`--metrics-listen`).
    pub metrics_listen: Mutex<Option<String>>,
    /// Open consoles, ended when their right is taken away.
    pub consoles: console_sessions::ConsoleSessions,
    /// Hosts whose agent's event stream is connected now.
    online: Mutex<std::collections::HashSet<String>>,
    /// The task following each registered host's agent, to end it when the host goes.
    followers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// A client with the certificate this controller shows agents (mutual TLS), whose
    /// HTTP client and TLS settings every agent's client shares.
    agent_template: std::sync::OnceLock<AgentClient>,
    /// The host whose agent runs inside this process (`hostel up`'s own).
    local_host: std::sync::OnceLock<String>,
    /// Reconnect attempts to recorded hosts, to end if the host is removed first.
    reconnects: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Held (shared) while a new VM is placed and recorded; (alone) while a host is
    /// connected or removed, so that no VM lands on a host being removed.
    pub(crate) hosts_lock: tokio::sync::RwLock<()>,
    /// The last hour of every running VM's use, sampled from the hosts (memory only).
    pub(crate) usage: stats::UsageHistory,
    /// The API's requests, for `/metrics`.
    pub requests: metrics::RequestMetrics,
    /// One lock per image and host: a copy of an image to a host is made once at a time.
    copy_locks: Mutex<HashMap<(String, String), OneAtATime>>,
    /// VMs being migrated (by id), with the host each goes to and the memory it holds
    /// there meanwhile (placement counts it); their agents' state events wait until it
    /// ends. Mirrors the journal (`vm_moves`).
    migrating: Mutex<HashMap<String, migrate_recover::Reservation>>,
    /// How to cancel each migration this process runs, by task id.
    migration_cancels: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
    /// The cluster's CAs: the migration CA signs QEMU's certificates for a migration.
    pki: std::sync::OnceLock<pki::Pki>,
    /// A recovery loop settles migrations left unsettled (`migrate_recover.rs`).
    recovering: std::sync::atomic::AtomicBool,
    /// Held while a migration's target is chosen and reserved.
    migrate_placing: tokio::sync::Mutex<()>,
    /// This controller's id among those sharing the database (`cluster.rs`).
    id: String,
    /// Whether this controller leads now (`cluster.rs`).
    leading: std::sync::atomic::AtomicBool,
    /// Interrupted operations being settled now (`journal.rs`), by id.
    settling: Mutex<std::collections::HashSet<String>>,
}

impl Controller {
    pub fn new(store: Store, cfg: ControllerConfig) -> Arc<Controller> {
        let refusal_budgets = cfg.refusal_budgets;
        Arc::new(Controller {
            store,
            cfg,
            agents: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            logins: auth::LoginLimiter::default(),
            throttle: throttle::Throttle::new(refusal_budgets),
            quota_lock: tokio::sync::Mutex::new(()),
            ssh_console: Mutex::new(None),
            metrics_listen: Mutex::new(None),
            consoles: console_sessions::ConsoleSessions::default(),
            net_sync: tokio::sync::Mutex::new(()),
            own_ports: Mutex::new(Vec::new()),
            online: Mutex::default(),
            followers: Mutex::default(),
            agent_template: std::sync::OnceLock::new(),
            local_host: std::sync::OnceLock::new(),
            reconnects: Mutex::default(),
            hosts_lock: tokio::sync::RwLock::new(()),
            usage: stats::UsageHistory::new(),
            requests: metrics::RequestMetrics::default(),
            copy_locks: Mutex::default(),
            migrating: Mutex::default(),
            migration_cancels: Mutex::default(),
            pki: std::sync::OnceLock::new(),
            recovering: Default::default(),
            migrate_placing: tokio::sync::Mutex::new(()),
            id: hostel_store::new_id("ctl"),
            leading: Default::default(),
            settling: Mutex::default(),
        })
    }

    /// Sets the client certificate for agents added later (`POST /api/v1/hosts`) and
    /// for reconnecting to recorded hosts.
    pub fn set_agent_tls(&self, tls: agent_client::ClientTls) -> anyhow::Result<()> {
        let _ = self
            .agent_template
            .set(AgentClient::new("https://agent", &tls)?);
        Ok(())
    }

    /// Gives the controller the cluster's CAs (for migrations' certificates).
    pub fn set_pki(&self, pki: pki::Pki) {
        let _ = self.pki.set(pki);
    }

    /// Records a port one of this controller's listeners holds (API, SSH gateway), so
    /// that no port forward takes it.
    pub fn reserve_own_port(&self, port: u16, what: &'static str) {
        self.own_ports.lock().unwrap().push((port, what));
    }

    /// Names the host whose agent runs in this process; it cannot be removed.
    pub fn set_local_host(&self, id: &str) {
        let _ = self.local_host.set(id.to_string());
    }

    /// Is the host's agent connected now?
    pub fn is_online(&self, host_id: &str) -> bool {
        self.online.lock().unwrap().contains(host_id)
    }

    /// Records whether this (leading) controller follows a host's agent now: for itself,
    /// and in the database for the others.
    async fn set_online(&self, host_id: &str, up: bool) {
        {
            let mut o = self.online.lock().unwrap();
            if up {
                o.insert(host_id.to_string());
            } else {
                o.remove(host_id);
            }
        }
        if let Err(e) = self.store.set_host_online(host_id, up).await {
            tracing::warn!(host = %host_id, "cannot record whether the host is online: {e:#}");
        }
    }

    /// An agent client for `url`, with this controller's certificate.
    pub fn agent_client(&self, url: &str) -> anyhow::Result<AgentClient> {
        let template = self.agent_template.get().ok_or_else(|| {
            anyhow::anyhow!("this controller has no client certificate for agents")
        })?;
        Ok(template.for_url(url))
    }

    /// Reconnects to every recorded host but this process's own, each in the background
    /// and again every few seconds until its agent answers: a controller restart brings
    /// the fleet back without anyone re-adding hosts.
    pub fn reconnect_known_hosts(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let hosts = match me.store.hosts().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!("cannot read the hosts to reconnect to: {e:#}");
                    return;
                }
            };
            for h in hosts {
                if me.local_host.get() == Some(&h.id) || me.agent(&h.id).is_some() {
                    continue;
                }
                me.reconnect_host(h);
            }
        });
    }

    /// Connects to a recorded host in the background, again every 5 s until its agent
    /// answers.
    fn reconnect_host(self: &Arc<Self>, h: HostRecord) {
        let me = self.clone();
        let id = h.id.clone();
        let task = tokio::spawn(async move {
            let mut said = false;
            loop {
                match me.agent_client(&h.url) {
                    Ok(agent) => match me.connect_host(agent, Some(&h.id)).await {
                        Ok(_) => return,
                        Err(e) if !said => {
                            tracing::warn!(host = %h.id, "not back yet, retrying every 5 s: {e:#}");
                            said = true;
                        }
                        Err(e) => tracing::debug!(host = %h.id, "not back yet: {e:#}"),
                    },
                    Err(e) => {
                        tracing::error!(host = %h.id, "{e:#}");
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        // Ended if the host is removed before it is back.
        if let Some(old) = self
            .reconnects
            .lock()
            .unwrap()
            .insert(id, task.abort_handle())
        {
            old.abort();
        }
    }

    pub fn agent(&self, host_id: &str) -> Option<AgentClient> {
        self.agents.lock().unwrap().get(host_id).cloned()
    }

    pub fn agents(&self) -> Vec<(String, AgentClient)> {
        self.agents
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn vm_lock(&self, vm_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(vm_id.to_string())
            .or_default()
            .clone()
    }

    /// Registers a host's agent: records its facts, reconciles its VMs with the database
    /// and follows its events from then on. Returns once the first reconcile is done.
    pub async fn add_host(self: &Arc<Self>, agent: AgentClient) -> anyhow::Result<String> {
        let id = self.connect_host(agent, None).await?;
        id.ok_or_else(|| anyhow::anyhow!("the host was removed meanwhile"))
    }

    /// Connects a host's agent: records its facts, follows its events, and waits (up to
    /// 30 s) for the first reconcile. `again`: a reconnect to this recorded host, which
    /// must still be recorded and still answer to that name; none when it was removed.
    async fn connect_host(
        self: &Arc<Self>,
        agent: AgentClient,
        again: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let facts = agent.host().await?;
        let id = facts.name.clone();
        let ready_rx = {
            // Not while a host is removed or a VM is being placed and recorded.
            let _hosts = self.hosts_lock.write().await;
            if let Some(want) = again {
                if self.store.host(want).await?.is_none() {
                    return Ok(None);
                }
                if want != id {
                    anyhow::bail!(
                        "the agent at {} now calls itself {id:?}, not {want:?}",
                        agent.url
                    );
                }
            }
            self.store
                .upsert_host(&HostRecord {
                    id: id.clone(),
                    name: facts.name.clone(),
                    url: agent.url.clone(),
                    cpus: facts.cpus,
                    memory_mib: facts.memory_total_mib,
                    accel: facts.accel,
                    accel_reason: facts.accel_reason.clone(),
                    qemu_version: facts.qemu_version.clone(),
                    kernel: facts.kernel.clone(),
                    last_seen: hostel_store::now(),
                    // Kept as they are for a known host (the upsert leaves them).
                    tags: Vec::new(),
                    drain: String::new(),
                    platform: facts.platform.clone(),
                })
                .await?;
            self.agents
                .lock()
                .unwrap()
                .insert(id.clone(), agent.clone());
            if !self.leads() {
                // A standby: the leader follows the host (it reads the new row within a
                // second); this one waits until it does.
                drop(_hosts);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while tokio::time::Instant::now() < deadline {
                    if self.store.online_hosts().await?.contains(&id) {
                        self.online.lock().unwrap().insert(id.clone());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return Ok(Some(id));
            }
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let me = self.clone();
            let host = id.clone();
            let task = tokio::spawn(async move { me.follow(host, agent, Some(ready_tx)).await });
            if let Some(old) = self
                .followers
                .lock()
                .unwrap()
                .insert(id.clone(), task.abort_handle())
            {
                old.abort();
            }
            ready_rx
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        Ok(Some(id))
    }

    /// Follows one agent's events for ever, reconciling after every (re)connection.
    async fn follow(
        self: Arc<Self>,
        host: String,
        agent: AgentClient,
        mut ready: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut retry = Duration::from_millis(500);
        loop {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
            let (conn_tx, conn_rx) = tokio::sync::oneshot::channel::<()>();
            let a = agent.clone();
            // Ended with this loop too (when the host is removed), not left streaming.
            let mut follower = AbortOnDrop(tokio::spawn(async move {
                let _ = a
                    .follow_events(
                        move || {
                            let _ = conn_tx.send(());
                        },
                        move |ev| {
                            let _ = tx.send(ev);
                        },
                    )
                    .await;
            }));
            // Reconcile only once the subscription is live, so no change falls between.
            let mut ended = false;
            if conn_rx.await.is_ok() {
                self.set_online(&host, true).await;
                let _ = self.store.touch_host(&host, hostel_store::now()).await;
                let setup = async {
                    if let Err(e) = self.reconcile(&host, &agent).await {
                        tracing::warn!(%host, "reconcile failed: {e:#}");
                    }
                    match self.networks_state().await {
                        Ok(state) => {
                            if let Err(e) = agent.put_networks(state).await {
                                tracing::warn!(%host, "setting up networks failed: {e:#}");
                            }
                        }
                        Err(e) => tracing::warn!("{}", e.message()),
                    }
                };
                // A stream lost while the host is set up (a link cut then) takes it
                // offline at once, not once the setup's requests time out.
                tokio::select! {
                    _ = setup => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                        while let Some(ev) = rx.recv().await {
                            self.apply_event(&host, ev).await;
                        }
                    }
                    _ = &mut follower.0 => ended = true,
                }
            }
            if !ended {
                let _ = (&mut follower.0).await;
            }
            if self.is_online(&host) {
                self.set_online(&host, false).await;
                let _ = self.store.touch_host(&host, hostel_store::now()).await;
                tracing::warn!(%host, "lost the agent's event stream; reconnecting");
                retry = Duration::from_millis(500);
            } else {
                // Down for a while: try less often, up to every 10 s.
                retry = (retry * 2).min(Duration::from_secs(10));
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Writes a VM's state as its host reports it; a report from another host (one the
    /// VM left, or is moving to) or about a VM that is migrating is not written.
    async fn apply_event(&self, host: &str, ev: Event) {
        if self.is_migrating(&ev.vm_id) {
            return;
        }
        // A migration another controller runs.
        if self.shared_database() && self.store.is_moving(&ev.vm_id).await.unwrap_or(false) {
            return;
        }
        match self.store.vm_by_id(&ev.vm_id).await {
            Ok(Some(vm)) if vm.host_id.as_deref() != Some(host) => {
                tracing::debug!(vm = %ev.vm_id, %host, "event from a host the VM is not on");
            }
            Ok(Some(_)) => {
                let _ = self
                    .store
                    .set_vm_state(&ev.vm_id, ev.state, ev.reason.as_deref(), ev.pid)
                    .await;
            }
            _ => tracing::debug!(vm = %ev.vm_id, "event for a VM the database does not have"),
        }
    }

    /// Makes the database agree with what actually runs on a host.
    pub async fn reconcile(&self, host: &str, agent: &AgentClient) -> anyhow::Result<()> {
        let running: HashMap<String, _> = agent
            .list_vms()
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let on_host = self
            .store
            .vms_page(&hostel_store::VmPageQuery {
                host_id: Some(host),
                limit: u32::MAX,
                ..Default::default()
            })
            .await?;
        // Migrations other controllers run are theirs to settle.
        let moving: Vec<String> = if self.shared_database() {
            self.store
                .moves()
                .await?
                .into_iter()
                .map(|m| m.vm_id)
                .collect()
        } else {
            Vec::new()
        };
        for vm in on_host.into_iter().map(|r| r.vm) {
            if self.is_migrating(&vm.id) || moving.contains(&vm.id) {
                continue;
            }
            match running.get(&vm.id) {
                // Written only when it changed: after a restart, thousands of VMs agree.
                Some(s)
                    if vm.state != s.state || vm.pid != s.pid || vm.state_reason != s.reason =>
                {
                    self.store
                        .set_vm_state(&vm.id, s.state, s.reason.as_deref(), s.pid)
                        .await?;
                }
                Some(_) => {}
                None => {
                    if vm.state.has_process() {
                        self.store
                            .set_vm_state(
                                &vm.id,
                                hostel_model::VmState::Crashed,
                                Some("its QEMU was not running when the host's agent came back"),
                                None,
                            )
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
