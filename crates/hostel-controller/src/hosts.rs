//! Hosts: adding an agent that runs elsewhere, listing hosts with whether their agent is
//! connected, and removing a host nothing refers to any more.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::public::{AddHostRequest, HostInfo, SetHostRequest};
use std::sync::Arc;
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

impl Controller {
    /// Every recorded host (or `only` that one), with its agent's connection state and
    /// what runs on it: from the database and the controller's own connection state (no
    /// agent is asked).
    pub(crate) async fn hosts_info(&self, only: Option<&str>) -> Res<Vec<HostInfo>> {
        let usage = self
            .store
            .host_usage(&crate::vms::live_states(), only)
            .await?;
        let hosts = match only {
            Some(id) => self.store.host(id).await?.into_iter().collect(),
            None => self.store.hosts().await?,
        };
        let now = hostel_store::now();
        Ok(hosts
            .into_iter()
            .map(|h| {
                let u = usage.get(&h.id).copied().unwrap_or_default();
                let online = self.is_online(&h.id);
                let (stale, age) = staleness(online, now - h.last_seen, self.cfg.stale_after);
                HostInfo {
                    online,
                    stale,
                    last_seen_age_seconds: age,
                    memory_vms_mib: u.live_memory_mib,
                    vms_running: u.live as u32,
                    vms_total: u.vms as u32,
                    accel: h.accel,
                    name: h.name,
                    url: h.url,
                    last_seen: h.last_seen.to_string(),
                    cpus: h.cpus,
                    memory_total_mib: h.memory_mib,
                    accel_reason: h.accel_reason,
                    qemu_version: h.qemu_version,
                    kernel: h.kernel,
                    tags: h.tags,
                    drain: h.drain,
                    machine: h.platform.machine,
                    machines: h.platform.machines,
                    cpu_models: h.platform.cpu_models,
                    cpu_name: h.platform.cpu_name,
                    postcopy: h.platform.postcopy,
                }
            })
            .collect())
    }

    /// Sets a host's tags (admins); placement filters on them (`host_tags` of a create).
    pub async fn set_host(&self, ctx: &Ctx, name: &str, req: SetHostRequest) -> Res<HostInfo> {
        ctx.require_admin()?;
        ctx.target(name, None);
        ctx.params(serde_json::json!({"tags": req.tags}));
        self.host_named(name).await?;
        let mut tags = Vec::new();
        for t in &req.tags {
            hostel_model::validate_name("tags", t)?;
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        self.store.set_host_tags(name, &tags).await?;
        Ok(self
            .hosts_info(Some(name))
            .await?
            .pop()
            .expect("the host was just read"))
    }

    /// The recorded host `name`, or not found with where the hosts are listed.
    pub(crate) async fn host_named(&self, name: &str) -> Res<hostel_store::HostRecord> {
        self.store.host(name).await?.ok_or_else(|| {
            Error::not_found(
                "host",
                name,
                format!("no host is named {name:?}: `hostel host list` lists the hosts"),
            )
        })
    }

    /// Each host's (stale, seconds since it last reported), by id.
    pub(crate) async fn host_freshness(
        &self,
    ) -> Res<std::collections::HashMap<String, (bool, u64)>> {
        let now = hostel_store::now();
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .map(|h| {
                let f = staleness(
                    self.is_online(&h.id),
                    now - h.last_seen,
                    self.cfg.stale_after,
                );
                (h.id, f)
            })
            .collect())
    }

    /// Every recorded host, for admins.
    pub async fn list_hosts(&self, ctx: &Ctx) -> Res<Vec<HostInfo>> {
        ctx.require_admin()?;
        self.hosts_info(None).await
    }

    /// Adds the host whose agent answers at `url`: checks that it answers (over mutual
    /// TLS with this controller's CA), records it, reconciles and follows it.
    pub async fn add_remote_host(
        self: &Arc<Self>,
        ctx: &Ctx,
        req: AddHostRequest,
    ) -> Res<HostInfo> {
        ctx.target(&req.url, None);
        ctx.require_admin()?;
        let url = req.url.trim_end_matches('/');
        let ok_url = url
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        if !ok_url {
            return Err(hostel_model::Invalid::new(
                "url",
                format!("{url:?} is not an agent's address: give https://ADDRESS:PORT"),
            )
            .into());
        }
        let agent = self.agent_client(url)?;
        let facts = match tokio::time::timeout(Duration::from_secs(10), agent.host()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                return Err(Error::unavailable(format!(
                    "the agent at {url} does not answer: {e:#} (is `hostel agent` running \
                     there, with a certificate from this controller's `hostel agent-cert`?)"
                )))
            }
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "the agent at {url} did not answer within 10 s"
                )))
            }
        };
        if let Some(h) = self.store.host(&facts.name).await? {
            if h.url != url && (self.is_online(&h.id) || !req.replace) {
                let (vms, _, _) = self.store.host_refs(&h.id).await?;
                return Err(Error::conflict(format!(
                    "a host named {:?} is recorded at {} ({}, {vms} VM(s)): if this agent is \
                     that host at a new address, add it with --replace (only while the old \
                     address is offline); if it is another machine, give it another name \
                     (`hostel agent --name`)",
                    h.name,
                    h.url,
                    if self.is_online(&h.id) {
                        "online"
                    } else {
                        "offline"
                    }
                )));
            }
        }
        let id = self.add_host(agent).await?;
        self.hosts_info(Some(&id))
            .await?
            .pop()
            .ok_or_else(|| Error::from(anyhow::anyhow!("host {id} vanished")))
    }

    /// Removes a host that has no VMs, images or pools left, and stops following it.
    pub async fn remove_host(&self, ctx: &Ctx, name: &str) -> Res<()> {
        ctx.require_admin()?;
        let h = self.store.host(name).await?.ok_or_else(|| {
            Error::not_found(
                "host",
                name,
                format!("no host is named {name:?}: `hostel host list` lists them"),
            )
        })?;
        // No VM is being placed or recorded meanwhile, and no reconnect adds it back.
        let _hosts = self.hosts_lock.write().await;
        if self.local_host.get() == Some(&h.id) {
            return Err(Error::conflict(format!(
                "{name:?} is the host `hostel up` itself runs on: it cannot be removed"
            )));
        }
        let (vms, images, pools) = self.store.host_refs(&h.id).await?;
        if vms + images + pools > 0 {
            return Err(Error::conflict(format!(
                "host {name:?} still has {vms} VM(s), {images} image(s) and {pools} pool(s): \
                 delete or move them first"
            )));
        }
        for tasks in [&self.followers, &self.reconnects] {
            if let Some(task) = tasks.lock().unwrap().remove(&h.id) {
                task.abort();
            }
        }
        self.agents.lock().unwrap().remove(&h.id);
        self.set_online(&h.id, false).await;
        self.store.delete_host(&h.id).await?;
        Ok(())
    }
}

/// Whether a host's report is stale, and its age in whole seconds: a connected agent
/// reports as things happen (age 0); one that is not is stale once it has been gone
/// `after` or longer.
/// Whether a host is stale, and seconds since it last reported (0 while online).
fn staleness(online: bool, since: time::Duration, after: Duration) -> (bool, u64) {
    if online {
        return (false, 0);
    }
    let since = since.max(time::Duration::ZERO);
    (
        since >= after,
        u64::try_from(since.whole_seconds()).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::staleness;
    use std::time::Duration;

    #[test]
    fn a_host_is_stale_once_offline_past_the_threshold() {
        let two_min = Duration::from_secs(120);
        let t = time::Duration::seconds;
        assert_eq!(staleness(true, t(9999), two_min), (false, 0));
        assert_eq!(staleness(false, t(119), two_min), (false, 119));
        assert_eq!(staleness(false, t(120), two_min), (true, 120));
        assert_eq!(staleness(false, t(-5), two_min), (false, 0));
        assert_eq!(staleness(false, t(0), Duration::ZERO), (true, 0));
    }
}
