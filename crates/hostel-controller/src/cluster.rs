//! More than one controller on one PostgreSQL database (`hostel controller`, behind any
//! HTTP load balancer). Every controller serves the API and runs the operations asked
//! of it; exactly one, the leader (`hostel_store::cluster`: an advisory lock), also runs
//! the background work:
//! - it follows every host's agent (events, reconcile, networks) and records which hosts
//!   it follows now, which the others read as the hosts' online state;
//! - the lease reaper and the audit trail's upkeep;
//! - it settles what a dead controller left: its running operations (`journal.rs`) and
//!   migrations (`migrate_recover.rs`), once that controller's heartbeat stops.
//!
//! The others stand by: they keep a client for every recorded host, read the online
//! state every second, and try for the lead every second. A leader that loses its lock
//! stops (the caller exits): another may lead already. Operations on one VM run one at a
//! time across controllers (`lock_vm`: the `vm_locks` row, taken over from a dead
//! controller). On SQLite there is one controller, which leads from its start.

use crate::Controller;
use hostel_store::cluster::{Lead, HEARTBEAT_EVERY};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// An operation's hold on a VM: this process's lock, and on PostgreSQL the database's.
pub struct VmGuard {
    _local: tokio::sync::OwnedMutexGuard<()>,
    shared: Option<(hostel_store::Store, String, String)>,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if let Some((store, vm, token)) = self.shared.take() {
            tokio::spawn(async move {
                if let Err(e) = store.unlock_vm(&vm, &token).await {
                    tracing::warn!(%vm, "cannot give back the VM's lock: {e:#}");
                }
            });
        }
    }
}

impl Controller {
    /// This controller's id (its row in `controllers`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this controller leads now: on SQLite, the one controller always does.
    pub fn leads(&self) -> bool {
        !self.shared_database() || self.leading.load(Ordering::SeqCst)
    }

    /// More than one controller may share the database.
    pub(crate) fn shared_database(&self) -> bool {
        !self.store.is_sqlite()
    }

    /// Takes VM `vm_id` for one operation: one at a time in this process, and across
    /// controllers on PostgreSQL (waiting while another live controller holds it).
    pub async fn lock_vm(&self, vm_id: &str) -> VmGuard {
        let local = self.vm_lock(vm_id).lock_owned().await;
        if !self.shared_database() {
            return VmGuard {
                _local: local,
                shared: None,
            };
        }
        let token = hostel_store::new_id("lock");
        let mut said = false;
        loop {
            match self.store.try_lock_vm(vm_id, &self.id, &token).await {
                Ok(true) => break,
                Ok(false) if !said => {
                    tracing::info!(vm = %vm_id, "another controller operates the VM: waiting");
                    said = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(vm = %vm_id, "taking the VM's lock: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        VmGuard {
            _local: local,
            shared: Some((self.store.clone(), vm_id.to_string(), token)),
        }
    }

    /// Says every second that this controller is alive, and whether it leads.
    pub fn spawn_heartbeat(self: &Arc<Self>, name: String, api: String) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            loop {
                if let Err(e) = me.store.heartbeat(&me.id, &name, &api, me.leads()).await {
                    tracing::warn!("cannot record this controller's heartbeat: {e:#}");
                }
                n += 1;
                if n.is_multiple_of(3600) {
                    let _ = me.store.forget_dead_controllers().await;
                }
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            }
        });
    }

    /// Leads from now on, or fails if another controller does (`hostel up`, which runs
    /// alone with its own agent). Keep the `Lead` for as long as the process runs.
    pub async fn lead_alone(self: &Arc<Self>) -> anyhow::Result<Lead> {
        match self.store.try_lead().await? {
            Some(lead) => {
                self.leading.store(true, Ordering::SeqCst);
                Ok(lead)
            }
            None => anyhow::bail!(
                "another controller leads this database: `hostel up` runs alone with its \
                 own agent; run `hostel controller` for more than one controller"
            ),
        }
    }

    /// Stands by until it can lead, then leads; returns only when a lead it held is lost
    /// (the process must then stop: another controller may lead already).
    pub async fn contend(self: &Arc<Self>) -> anyhow::Error {
        let me = self.clone();
        let standby = tokio::spawn(async move {
            loop {
                me.stand_by_once().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        loop {
            match self.store.try_lead().await {
                Ok(Some(lead)) => {
                    standby.abort();
                    return self.lead(lead).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("trying for the lead: {e:#}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A standby's view of the hosts: a client for each recorded one, and which the
    /// leader follows now.
    async fn stand_by_once(&self) {
        let (hosts, online) = match (self.store.hosts().await, self.store.online_hosts().await) {
            (Ok(h), Ok(o)) => (h, o),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("reading the hosts: {e:#}");
                return;
            }
        };
        for h in &hosts {
            let known = self.agent(&h.id).is_some_and(|a| a.url == h.url);
            if !known {
                match self.agent_client(&h.url) {
                    Ok(a) => {
                        self.agents.lock().unwrap().insert(h.id.clone(), a);
                    }
                    Err(e) => tracing::warn!(host = %h.id, "{e:#}"),
                }
            }
        }
        self.agents
            .lock()
            .unwrap()
            .retain(|id, _| hosts.iter().any(|h| &h.id == id));
        *self.online.lock().unwrap() = online.into_iter().collect();
    }

    /// Leads: the background work, until the lock is lost.
    async fn lead(self: &Arc<Self>, mut lead: Lead) -> anyhow::Error {
        self.leading.store(true, Ordering::SeqCst);
        tracing::info!(
            controller = %self.id,
            "this controller leads: it follows the hosts and runs the background work"
        );
        // The last leader's view of who is online is nobody's now.
        self.online.lock().unwrap().clear();
        if let Ok(hosts) = self.store.hosts().await {
            for h in hosts {
                let _ = self.store.set_host_online(&h.id, false).await;
            }
        }
        // The clients a standby kept are replaced by followed ones.
        self.agents.lock().unwrap().clear();
        self.start_leader_work();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !lead.holds().await {
                self.leading.store(false, Ordering::SeqCst);
                return anyhow::anyhow!(
                    "this controller lost the lead (the database connection that held it \
                     ended): stopping, so that no two controllers lead"
                );
            }
        }
    }

    /// What only the leader runs: the lease reaper, the audit upkeep, following every
    /// recorded host (and those recorded later, by any controller), and settling what
    /// dead controllers left.
    pub fn start_leader_work(self: &Arc<Self>) {
        self.spawn_lease_reaper(Duration::from_secs(2));
        self.spawn_backup_scheduler(Duration::from_secs(5));
        self.spawn_audit_upkeep();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.follow_new_hosts().await;
                if let Err(e) = me.take_over_orphans().await {
                    tracing::warn!("settling a dead controller's work: {e:#}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// The controllers alive now: on SQLite only this one.
    pub(crate) async fn live_controllers(&self) -> anyhow::Result<Vec<String>> {
        if !self.shared_database() {
            return Ok(vec![self.id.clone()]);
        }
        let stale = hostel_store::Store::stale_before();
        let mut ids: Vec<String> = self
            .store
            .controllers()
            .await?
            .into_iter()
            .filter(|c| c.last_seen > stale)
            .map(|c| c.id)
            .collect();
        if !ids.contains(&self.id) {
            ids.push(self.id.clone());
        }
        Ok(ids)
    }

    /// Operations and migrations whose controller died (or an earlier life of this one):
    /// settled here.
    async fn take_over_orphans(self: &Arc<Self>) -> anyhow::Result<()> {
        let alive = self.live_controllers().await?;
        let ops = self.store.running_operations().await?;
        let orphans: Vec<_> = ops
            .into_iter()
            .filter(|o| o.owner.as_ref().is_none_or(|w| !alive.contains(w)))
            .collect();
        self.settle_operations(orphans);
        let moves = self.store.moves().await?;
        let orphans: Vec<_> = moves
            .into_iter()
            .filter(|m| m.owner.as_ref().is_none_or(|w| !alive.contains(w)))
            .collect();
        self.adopt_moves(orphans);
        let failed = self.store.fail_orphan_tasks(&alive).await?;
        if failed > 0 {
            tracing::warn!(
                failed,
                "tasks of a controller that stopped failed as interrupted"
            );
        }
        Ok(())
    }

    /// Follows the recorded hosts no task of this leader follows yet, and stops following
    /// those removed (by another controller).
    async fn follow_new_hosts(self: &Arc<Self>) {
        let Ok(hosts) = self.store.hosts().await else {
            return;
        };
        let gone: Vec<String> = self
            .agents()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !hosts.iter().any(|h| &h.id == id))
            .collect();
        for id in gone {
            self.agents.lock().unwrap().remove(&id);
            for tasks in [&self.followers, &self.reconnects] {
                if let Some(t) = tasks.lock().unwrap().remove(&id) {
                    t.abort();
                }
            }
            self.online.lock().unwrap().remove(&id);
        }
        for h in hosts {
            if self.local_host.get() == Some(&h.id) || self.agent(&h.id).is_some() {
                continue;
            }
            if self
                .reconnects
                .lock()
                .unwrap()
                .get(&h.id)
                .is_some_and(|t| !t.is_finished())
            {
                continue;
            }
            self.reconnect_host(h);
        }
    }
}
