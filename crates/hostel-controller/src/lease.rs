//! Leases: an optional end date per VM (Invirt's abandoned VMs). `hostel renew` moves it;
//! as it nears, `list` and `describe` warn; once it passes, the VM is shut down (ACPI,
//! then a hard stop) and kept, disks and all, until its owner renews and starts it.

use crate::context::{Ctx, SystemActor};
use crate::error::Error;
use crate::Controller;
use hostel_api::public::{RenewRequest, Vm};
use hostel_model::{Invalid, VmState};
use hostel_store::Timestamp;
use std::sync::Arc;
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

/// How long before the end `list`/`describe` start to warn.
pub const WARN_DAYS: i64 = 7;

pub fn in_days(days: u32) -> Timestamp {
    hostel_store::now() + time::Duration::days(days as i64)
}

/// The warning for a lease ending at `end`, if it ends soon or has ended.
pub fn warning(end: Timestamp) -> Option<String> {
    let left = end - hostel_store::now();
    if left <= time::Duration::ZERO {
        Some(format!(
            "the lease ended at {end}: the VM was shut down; `hostel renew` it to use it again"
        ))
    } else if left < time::Duration::days(WARN_DAYS) {
        Some(format!(
            "the lease ends at {end} (in {} h): `hostel renew` keeps the VM running",
            left.whole_hours()
        ))
    } else {
        None
    }
}

impl Controller {
    pub async fn renew(&self, ctx: &Ctx, name: &str, req: RenewRequest) -> Res<Vm> {
        ctx.params(serde_json::json!({"days": req.days, "until": req.until}));
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        let end = match (&req.until, req.days) {
            (Some(u), _) => {
                if !ctx.is_admin() {
                    return Err(Error::forbidden(
                        "only an admin may set an exact end; give --days",
                    ));
                }
                Timestamp::parse(u)
                    .map_err(|_| Invalid::new("until", format!("{u:?} is not an RFC 3339 time")))?
            }
            (None, Some(0)) => {
                return Err(Invalid::new("days", "renew for at least one day").into())
            }
            (None, Some(d)) if d > 366 => {
                return Err(Invalid::new("days", "a lease lasts at most 366 days").into())
            }
            (None, d) => in_days(d.or(self.cfg.default_lease_days).unwrap_or(30)),
        };
        self.store.set_vm_lease(&vm.id, Some(end)).await?;
        let vm = self.vm_named(ctx, name).await?;
        self.view(&vm, false).await
    }

    /// Shuts down the VMs whose lease has ended, every `every`.
    pub fn spawn_lease_reaper(self: &Arc<Self>, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = me.reap_leases().await {
                    tracing::warn!("lease check failed: {:?}", e.message());
                }
            }
        });
    }

    async fn reap_leases(&self) -> Res<()> {
        let now = hostel_store::now();
        // Only the ended leases: this runs every 2 s, whatever the number of VMs.
        for vm in self.store.vms_lease_ended(now).await? {
            let Some(end) = vm.lease_expires_at else {
                continue;
            };
            let running = vm.state.has_process();
            if end > now || !running {
                continue;
            }
            tracing::info!(vm = %vm.name, %end, "lease ended: shutting the VM down");
            // A paused guest cannot hear the power button: it is stopped at once.
            let ctx = &Ctx::system(SystemActor::LeaseReaper);
            let r = if vm.state == VmState::Paused {
                self.simple_action(ctx, &vm.name, hostel_model::Op::Destroy)
                    .await
            } else {
                self.shutdown_vm(
                    ctx,
                    &vm.name,
                    hostel_api::public::ShutdownRequest {
                        timeout_secs: 30,
                        force: true,
                    },
                )
                .await
            };
            self.record_audit(crate::audit::event_record(
                ctx,
                "vm.shutdown",
                Some((Some(&vm.id), &vm.name)),
                serde_json::json!({"reason": "lease expired", "lease_expires_at": end}),
                r.as_ref().err(),
            ))
            .await;
        }
        Ok(())
    }
}
