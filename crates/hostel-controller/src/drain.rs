//! Draining a host for maintenance: it gets no new VMs (`draining`), its running VMs
//! migrate live to other hosts a few at a time, each move recorded in the audit trail
//! as `vm.migrate` by the admin who drained; a VM that cannot move is reported and the
//! drain goes on. Once no VM is left the host is `drained`. Each moved VM remembers
//! where it came from, and `undrain --return` sends those back.

use crate::context::{Actor, Ctx};
use crate::error::Error;
use crate::Controller;
use futures::StreamExt;
use hostel_api::public::*;
use hostel_model::VmState;
use hostel_store::VmRecord;
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// How many VMs a drain moves at once, unless asked otherwise.
const DEFAULT_CONCURRENCY: u32 = 2;

impl Controller {
    /// Starts draining a host (admins): a task that reports each VM's outcome.
    pub async fn drain_host(
        self: &Arc<Self>,
        ctx: &Ctx,
        name: &str,
        req: DrainRequest,
    ) -> Res<Task> {
        ctx.require_admin()?;
        ctx.target(name, None);
        ctx.params(
            serde_json::json!({"concurrency": req.concurrency, "allow_offline": req.allow_offline}),
        );
        let n = req.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=16).contains(&n) {
            return Err(hostel_model::Invalid::new(
                "concurrency",
                format!("{n} VMs at once: move from 1 to 16 at a time"),
            )
            .into());
        }
        self.host_named(name).await?;
        self.store.set_host_drain(name, "draining").await?;
        let vms = self.vms_on(name).await?;
        let task = self
            .new_task(
                ctx,
                "host-drain",
                name,
                &format!("{} VM(s) to move", vms.len()),
            )
            .await?;
        let (me, host, caller) = (self.clone(), name.to_string(), caller_of(ctx)?);
        let id = task.id.clone();
        tokio::spawn(async move {
            let ctx = Ctx::user(caller, "drain");
            let allow_offline = req.allow_offline;
            let outcomes: Vec<String> = futures::stream::iter(vms)
                .map(|vm| {
                    let (me, ctx, host) = (me.clone(), &ctx, host.clone());
                    async move {
                        let r = me.move_off(ctx, &vm, None, allow_offline).await;
                        if r.is_ok() {
                            let _ = me.store.set_vm_drained_from(&vm.id, Some(&host)).await;
                        }
                        describe(&vm.name, r)
                    }
                })
                .buffer_unordered(n as usize)
                .collect()
                .await;
            let left = me.vms_on(&host).await.map(|v| v.len()).unwrap_or(0);
            if left == 0 {
                let _ = me.store.set_host_drain(&host, "drained").await;
            }
            me.finish_report(&id, left, outcomes).await;
        });
        Ok(task)
    }

    /// Opens a host to new VMs again (admins); with `return`, the VMs its drain
    /// moved away migrate back (a task reports each).
    pub async fn undrain_host(
        self: &Arc<Self>,
        ctx: &Ctx,
        name: &str,
        req: UndrainRequest,
    ) -> Res<Task> {
        ctx.require_admin()?;
        ctx.target(name, None);
        ctx.params(serde_json::json!({"return": req.return_vms}));
        self.host_named(name).await?;
        self.store.set_host_drain(name, "").await?;
        let names = if req.return_vms {
            self.store.vms_drained_from(name).await?
        } else {
            Vec::new()
        };
        let task = self
            .new_task(
                ctx,
                "host-undrain",
                name,
                &format!("{} VM(s) to return", names.len()),
            )
            .await?;
        let (me, host, caller) = (self.clone(), name.to_string(), caller_of(ctx)?);
        let id = task.id.clone();
        tokio::spawn(async move {
            let ctx = Ctx::user(caller, "undrain");
            let mut outcomes = Vec::new();
            for n in names {
                let Ok(Some(vm)) = me.store.vm_by_name(&n).await else {
                    continue;
                };
                let r = me.move_off(&ctx, &vm, Some(&host), true).await;
                if r.is_ok() {
                    let _ = me.store.set_vm_drained_from(&vm.id, None).await;
                }
                outcomes.push(describe(&vm.name, r));
            }
            me.finish_report(&id, 0, outcomes).await;
        });
        Ok(task)
    }

    /// Moves one VM to `to` (or placement's choice): a running one by live migration, one
    /// that does not run by an offline move (its disks copied), if allowed. Audited as
    /// `vm.migrate` for the drain's admin.
    async fn move_off(
        self: &Arc<Self>,
        ctx: &Ctx,
        vm: &VmRecord,
        to: Option<&str>,
        allow_offline: bool,
    ) -> Res<String> {
        let live = matches!(vm.state, VmState::Running | VmState::Paused);
        let res = if live || allow_offline {
            let req = MigrateRequest {
                to: to.map(String::from),
                offline: !live,
                ..Default::default()
            };
            match self.migrate_vm(ctx, &vm.name, req).await {
                Ok(t) => self.wait_task(&t.id).await,
                Err(e) => Err(e),
            }
        } else {
            Err(Error::conflict(format!(
                "it is {}: only running VMs move unless offline moves are allowed \
                 (--allow-offline)",
                vm.state.as_str()
            )))
        };
        let rec = crate::audit::event_record(
            ctx,
            "vm.migrate",
            Some((Some(&vm.id), &vm.name)),
            serde_json::json!({"by": ctx.source, "to": to}),
            res.as_ref().err(),
        );
        self.record_audit(rec).await;
        res
    }

    /// Waits for a task to end: its message, or its error.
    pub(crate) async fn wait_task(&self, id: &str) -> Res<String> {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let Some(t) = self.store.task(id).await? else {
                return Err(Error::from(anyhow::anyhow!("task {id} went")));
            };
            match t.state {
                TaskState::Running => continue,
                TaskState::Succeeded => return Ok(t.message),
                TaskState::Failed => {
                    return Err(Error::conflict(t.error.unwrap_or(t.message)));
                }
            }
        }
    }

    /// Every VM recorded on a host.
    async fn vms_on(&self, host: &str) -> Res<Vec<VmRecord>> {
        Ok(self
            .store
            .vms_page(&hostel_store::VmPageQuery {
                host_id: Some(host),
                limit: u32::MAX,
                ..Default::default()
            })
            .await?
            .into_iter()
            .map(|r| r.vm)
            .collect())
    }

    /// Ends a drain's task with each VM's outcome; failed if any VM stayed.
    pub(crate) async fn finish_report(&self, id: &str, left: usize, outcomes: Vec<String>) {
        let failed = outcomes.iter().any(|o| o.contains(": stays: "));
        let mut report = outcomes.join("; ");
        if report.is_empty() {
            report = "no VM to move".into();
        }
        let _ = if failed || left > 0 {
            self.store
                .update_task(id, TaskState::Failed, 1.0, &report, Some(&report))
                .await
        } else {
            self.store
                .update_task(id, TaskState::Succeeded, 1.0, &report, None)
                .await
        };
    }
}

pub(crate) fn caller_of(ctx: &Ctx) -> Res<crate::context::Caller> {
    match &ctx.actor {
        Actor::User(c) => Ok(c.clone()),
        Actor::System(_) => Err(Error::forbidden(
            "only an admin may drain or rebalance hosts",
        )),
    }
}

fn describe(vm: &str, r: Res<String>) -> String {
    match r {
        Ok(how) => format!("{vm}: {how}"),
        Err(e) => format!("{vm}: stays: {}", e.message()),
    }
}
