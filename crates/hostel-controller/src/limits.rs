//! Resource limits per VM (`hostel limits`): CPU weight and cap, disk IOPS and bandwidth,
//! network rate. Admins set them; they are kept in `vm_limits`, go to the host in the
//! VM's spec (applied before its first instruction) and, while it runs, to its agent at
//! once. The agent enforces them (`hostel-agent/src/limits.rs`).

use crate::context::Ctx;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::public::{Limits, Vm};
use hostel_model::{Invalid, Op};

type Res<T> = crate::error::Result<T>;

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
    /// A VM's limits (none set: empty).
    pub(crate) async fn vm_limits_of(&self, vm_id: &str) -> Res<Limits> {
        Ok(match self.store.vm_limits(vm_id).await? {
            Some(json) => serde_json::from_str(&json).unwrap_or_default(),
            None => Limits::default(),
        })
    }

    /// Sets a VM's limits (admins): all of them at once, as given; empty removes them.
    /// A running VM gets them at once.
    pub async fn set_limits(&self, ctx: &Ctx, name: &str, limits: Limits) -> Res<Vm> {
        ctx.require_admin()?;
        ctx.params(serde_json::to_value(&limits).unwrap_or_default());
        check(&limits)?;
        self.operate(ctx, name, Op::Limits, |vm, agent| {
            let limits = limits.clone();
            async move {
                if vm.state.has_process() {
                    agent.set_limits(&vm.id, limits.clone()).await?;
                }
                let json = (!limits.is_empty())
                    .then(|| serde_json::to_string(&limits).unwrap_or_default());
                self.store.set_vm_limits(&vm.id, json.as_deref()).await?;
                Ok(())
            }
        })
        .await
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
