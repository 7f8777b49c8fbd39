//! Resource limits per VM (`hostel limits`): CPU weight and cap, disk IOPS and bandwidth,
//! network rate. Admins set them; they are kept in `vm_limits`, go to the host in the
//! VM's spec (applied before its first instruction) and, while it runs, to its agent at
//! once. The agent enforces them (`hostel-agent/src/limits.rs`).
//!
//! Owners' defaults (`hostel default-limits`, kept in `owner_limits`) fill in what a VM
//! has not set: each limit in force is the VM's own, else its owner's (`user:ID` or
//! `group:ID`), else everybody's (`default`).

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::public::{DefaultLimits, Limits, Vm};
use hostel_model::{Invalid, Op};
use hostel_store::VmRecord;

type Res<T> = crate::error::Result<T>;

/// Limits kept as JSON (a row of `vm_limits` or `owner_limits`); none: empty.
fn parse(json: Option<&str>) -> Limits {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// Checks each limit's range; the error names the field and what it takes.
pub fn check(l: &Limits) -> Result<(), Invalid> {
    let out = |field: &str, why: String| Err(Invalid::new(field, why));
    if let Some(w) = l.cpu_weight {
        if !(1..=10_000).contains(&w) {
            return out(
                "cpu_weight",
                format!("{w}: a CPU weight is 1 to 10,000 (100 is a VM's default)"),
            );
        }
    }
    if let Some(p) = l.cpu_max_percent {
        if !(1..=25_500).contains(&p) {
            return out(
                "cpu_max_percent",
                format!("{p}: the CPU cap is 1 to 25,500 percent of one CPU"),
            );
        }
    }
    // QEMU's throttling takes up to 10^15 a second.
    const MOST: u64 = 1_000_000_000_000_000;
    if let Some(n) = l.disk_iops {
        if !(1..=MOST).contains(&n) {
            let why = format!("{n}: give 1 to 10^15 requests per second, or no limit");
            return out("disk_iops", why);
        }
    }
    if let Some(b) = l.disk_bps {
        if !(4096..=MOST).contains(&b) {
            let why = format!("{b}: a disk bandwidth cap is 4 KiB/s to 10^15 bytes/s");
            return out("disk_bps", why);
        }
    }
    if let Some(m) = l.net_mbps {
        if !(1..=100_000).contains(&m) {
            return out(
                "net_mbps",
                format!("{m}: a network rate is 1 to 100,000 Mbit/s"),
            );
        }
    }
    Ok(())
}

impl Controller {
    /// A VM's own limits (none set: empty).
    pub(crate) async fn vm_limits_of(&self, vm_id: &str) -> Res<Limits> {
        Ok(parse(self.store.vm_limits(vm_id).await?.as_deref()))
    }

    /// The defaults `key` (`default`, `user:ID` or `group:ID`) has set of its own.
    async fn owner_limits_of(&self, key: &str) -> Res<Limits> {
        Ok(parse(self.store.owner_limits(key).await?.as_deref()))
    }

    /// What an owner's VMs without limits of their own get: its defaults, else
    /// everybody's.
    async fn owner_limits_in_force(&self, key: Option<&str>) -> Res<Limits> {
        let everybody = self.owner_limits_of("default").await?;
        Ok(match key {
            Some(k) if k != "default" => self.owner_limits_of(k).await?.or(&everybody),
            _ => everybody,
        })
    }

    /// The limits a VM is held to: each one its own, else its owner's, else everybody's.
    pub(crate) async fn limits_in_force(&self, vm: &VmRecord) -> Res<Limits> {
        let own = self.vm_limits_of(&vm.id).await?;
        let key = crate::quota::owner_key(vm);
        Ok(own.or(&self.owner_limits_in_force(key.as_deref()).await?))
    }

    /// Sets a VM's limits (admins): all of them at once, as given; empty removes them.
    /// A running VM gets them (with its owner's defaults where it has none) at once.
    pub async fn set_limits(&self, ctx: &Ctx, name: &str, limits: Limits) -> Res<Vm> {
        ctx.require_admin()?;
        ctx.params(serde_json::to_value(&limits).unwrap_or_default());
        check(&limits)?;
        self.operate(ctx, name, Op::Limits, |vm, agent| {
            let limits = limits.clone();
            async move {
                if vm.state.has_process() {
                    let key = crate::quota::owner_key(&vm);
                    let fallback = self.owner_limits_in_force(key.as_deref()).await?;
                    agent.set_limits(&vm.id, limits.or(&fallback)).await?;
                }
                let json = (!limits.is_empty())
                    .then(|| serde_json::to_string(&limits).unwrap_or_default());
                self.store.set_vm_limits(&vm.id, json.as_deref()).await?;
                Ok(())
            }
        })
        .await
    }

    /// `user:NAME`, `group:NAME` or `default` to its key, and the name to show.
    async fn limits_owner(&self, owner: &str) -> Res<(String, String)> {
        if owner == "default" {
            return Ok(("default".into(), "default".into()));
        }
        let key = self.resolve_owner(owner).await?;
        let (kind, name) = owner.split_once(':').unwrap_or(("user", owner));
        Ok((key, format!("{kind}:{name}")))
    }

    async fn default_limits_view(&self, key: &str, shown: String) -> Res<DefaultLimits> {
        Ok(DefaultLimits {
            owner: shown,
            limits: self.owner_limits_of(key).await?,
            in_force: self.owner_limits_in_force(Some(key)).await?,
            applied_to: Vec::new(),
            not_applied: Vec::new(),
        })
    }

    /// `hostel default-limits OWNER`: admins see anyone's; others their own, their
    /// groups' and everybody's (the limits their VMs get).
    pub async fn default_limits_show(&self, ctx: &Ctx, owner: Option<&str>) -> Res<DefaultLimits> {
        let c = ctx.caller()?;
        let not_yours = || {
            Error::forbidden("you may see your own default limits, your groups' and everybody's")
        };
        let (key, shown) = match owner {
            Some(o) if c.is_admin => self.limits_owner(o).await?,
            // Anyone else's is refused alike whether or not the name exists.
            Some(o) => match self.limits_owner(o).await {
                Ok(k) => k,
                Err(Error::NotFound { .. }) => return Err(not_yours()),
                Err(e) => return Err(e),
            },
            None => {
                let me = self.store.user_by_id(&c.user_id).await?;
                let name = me.map(|u| u.name).unwrap_or_default();
                (format!("user:{}", c.user_id), format!("user:{name}"))
            }
        };
        if !crate::quota::may_see_owner(c, &key) {
            return Err(not_yours());
        }
        self.default_limits_view(&key, shown).await
    }

    /// Every owner that has default limits, `default` first (admins).
    pub async fn default_limits_list(&self, ctx: &Ctx) -> Res<Vec<DefaultLimits>> {
        ctx.require_admin()?;
        let mut out = vec![
            self.default_limits_view("default", "default".into())
                .await?,
        ];
        // Each row as read, beside everybody's (read once).
        let everybody = out[0].limits.clone();
        for (key, json) in self.store.all_owner_limits().await? {
            if key == "default" {
                continue;
            }
            let limits = parse(Some(&json));
            out.push(DefaultLimits {
                owner: self.owner_name(&key).await?.replacen(' ', ":", 1),
                in_force: limits.or(&everybody),
                limits,
                applied_to: Vec::new(),
                not_applied: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Sets an owner's default limits (admins), all at once as given; empty removes
    /// them. Its running VMs whose limits in force change get the new ones at once.
    pub async fn default_limits_set(
        &self,
        ctx: &Ctx,
        owner: &str,
        limits: Limits,
    ) -> Res<DefaultLimits> {
        ctx.require_admin()?;
        ctx.params(serde_json::to_value(&limits).unwrap_or_default());
        check(&limits)?;
        let (key, shown) = self.limits_owner(owner).await?;
        // The running VMs it reaches, with what they are held to now.
        // (Each owner's defaults are read once, not once per VM.)
        let mut reached = Vec::new();
        let mut defaults = std::collections::HashMap::new();
        for vm in self.store.vms().await? {
            let owner = crate::quota::owner_key(&vm);
            let theirs = key == "default" || owner.as_deref() == Some(&key);
            if theirs && vm.state.has_process() {
                let fallback = match defaults.get(&owner) {
                    Some(l) => l,
                    None => {
                        let l = self.owner_limits_in_force(owner.as_deref()).await?;
                        defaults.entry(owner).or_insert(l)
                    }
                };
                let before = self.vm_limits_of(&vm.id).await?.or(fallback);
                reached.push((vm.name.clone(), before));
            }
        }
        let json = (!limits.is_empty()).then(|| serde_json::to_string(&limits).unwrap_or_default());
        self.store.set_owner_limits(&key, json.as_deref()).await?;
        let mut view = self.default_limits_view(&key, shown).await?;
        for (name, before) in reached {
            let was = before.clone();
            let pushed = self
                .operate(ctx, &name, Op::Limits, |vm, agent| async move {
                    let now = self.limits_in_force(&vm).await?;
                    if now != was && vm.state.has_process() {
                        agent.set_limits(&vm.id, now).await?;
                    }
                    Ok(())
                })
                .await;
            match pushed {
                Ok(vm) if vm.limits_in_force != before => view.applied_to.push(name),
                Ok(_) => {}
                // Gone or stopped meanwhile: it gets them at its next start.
                Err(Error::NotFound { .. }) => {}
                Err(e) => view.not_applied.push(format!("{name}: {e}")),
            }
        }
        ctx.target_not_vm(&view.owner);
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_s_range_is_checked() {
        assert!(check(&Limits::default()).is_ok());
        let bad = [
            Limits {
                cpu_weight: Some(0),
                ..Default::default()
            },
            Limits {
                cpu_max_percent: Some(30_000),
                ..Default::default()
            },
            Limits {
                disk_iops: Some(0),
                ..Default::default()
            },
            Limits {
                disk_bps: Some(100),
                ..Default::default()
            },
            Limits {
                net_mbps: Some(0),
                ..Default::default()
            },
            Limits {
                disk_bps: Some(u64::MAX),
                ..Default::default()
            },
        ];
        for l in bad {
            assert!(check(&l).is_err(), "{l:?}");
        }
        let good = Limits {
            cpu_weight: Some(50),
            cpu_max_percent: Some(150),
            disk_iops: Some(100),
            disk_bps: Some(4 << 20),
            net_mbps: Some(10),
        };
        assert!(check(&good).is_ok());
    }
}
