//! Backup schedules: the leader backs each scheduled VM up every so many minutes (a
//! full backup once the chain since the last full one is long enough), then prunes its
//! backups in that target by the schedule's retention (keep the last N, the newest of
//! each of the last N days, of the last N weeks). A backup kept keeps the backups it
//! builds on.

use crate::context::{Ctx, SystemActor};
use crate::error::Error;
use crate::Controller;
use hostel_api::public::*;
use hostel_model::Invalid;
use hostel_store::{BackupRecord, ScheduleRecord};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

/// Which of `times` (newest first) the rules keep: the last `last`; the newest of each
/// of the last `daily` days, and of the last `weekly` ISO weeks, that have one.
pub fn retained(
    times: &[time::OffsetDateTime],
    last: Option<u32>,
    daily: Option<u32>,
    weekly: Option<u32>,
) -> Vec<bool> {
    let mut keep = vec![false; times.len()];
    if let Some(n) = last {
        for k in keep.iter_mut().take(n as usize) {
            *k = true;
        }
    }
    let mut by = |n: Option<u32>, key: &dyn Fn(&time::OffsetDateTime) -> (i32, u32)| {
        let Some(n) = n else { return };
        let mut seen = HashSet::new();
        for (i, t) in times.iter().enumerate() {
            if seen.len() as u32 >= n {
                break;
            }
            if seen.insert(key(t)) {
                keep[i] = true;
            }
        }
    };
    by(daily, &|t| (t.year(), t.ordinal() as u32));
    by(weekly, &|t| {
        let (y, w, _) = t.to_iso_week_date();
        (y, w as u32)
    });
    keep
}

impl Controller {
    async fn scheduled_vm(&self, ctx: &Ctx, name: &str) -> Res<hostel_store::VmRecord> {
        self.vm_named(ctx, name).await
    }

    pub async fn backup_schedule(&self, ctx: &Ctx, name: &str) -> Res<BackupSchedule> {
        let vm = self.scheduled_vm(ctx, name).await?;
        let Some(s) = self.store.backup_schedule(&vm.id).await? else {
            return Err(Error::not_found(
                "backup-schedule",
                name,
                format!("VM {name:?} has no backup schedule: `hostel backup schedule {name} --every daily` sets one"),
            ));
        };
        let target = self
            .store
            .backup_targets()
            .await?
            .into_iter()
            .find(|t| t.id == s.target_id)
            .map(|t| t.name);
        Ok(BackupSchedule {
            every_minutes: s.every_minutes,
            target,
            keep_last: s.keep_last,
            keep_daily: s.keep_daily,
            keep_weekly: s.keep_weekly,
            full_every: s.full_every,
            last_run: s.last_run.map(|t| t.to_string()),
        })
    }

    pub async fn set_backup_schedule(
        &self,
        ctx: &Ctx,
        name: &str,
        req: BackupSchedule,
    ) -> Res<BackupSchedule> {
        ctx.params(serde_json::json!({"every_minutes": req.every_minutes, "target": req.target,
            "keep_last": req.keep_last, "keep_daily": req.keep_daily, "keep_weekly": req.keep_weekly}));
        let vm = self.scheduled_vm(ctx, name).await?;
        if req.every_minutes == 0 || req.full_every == 0 {
            return Err(Invalid::new(
                "every_minutes",
                "give at least one minute between backups, and a full one every 1 or more",
            )
            .into());
        }
        if [req.keep_last, req.keep_daily, req.keep_weekly].contains(&Some(0)) {
            return Err(Invalid::new(
                "keep",
                "keep at least one (or leave the rule out): --keep-last 0 would delete every backup",
            )
            .into());
        }
        let target = self.target_for(req.target.as_deref()).await?;
        let old = self.store.backup_schedule(&vm.id).await?;
        self.store
            .set_backup_schedule(&ScheduleRecord {
                vm_id: vm.id.clone(),
                target_id: target.id,
                every_minutes: req.every_minutes,
                keep_last: req.keep_last,
                keep_daily: req.keep_daily,
                keep_weekly: req.keep_weekly,
                full_every: req.full_every,
                last_run: old.and_then(|o| o.last_run),
            })
            .await?;
        self.backup_schedule(ctx, name).await
    }

    pub async fn delete_backup_schedule(&self, ctx: &Ctx, name: &str) -> Res<()> {
        let vm = self.scheduled_vm(ctx, name).await?;
        if self.store.delete_backup_schedule(&vm.id).await? == 0 {
            return Err(Error::not_found(
                "backup-schedule",
                name,
                format!("VM {name:?} has no backup schedule"),
            ));
        }
        Ok(())
    }

    /// Takes the VM's scheduled backup now (then prunes), whenever it is due next.
    pub async fn run_backup_schedule(self: &Arc<Self>, ctx: &Ctx, name: &str) -> Res<Task> {
        let vm = self.scheduled_vm(ctx, name).await?;
        let s = self.store.backup_schedule(&vm.id).await?.ok_or_else(|| {
            Error::not_found(
                "backup-schedule",
                name,
                format!(
                    "VM {name:?} has no backup schedule: set one with `hostel backup schedule`"
                ),
            )
        })?;
        self.run_scheduled(ctx, &vm, &s).await
    }

    async fn run_scheduled(
        self: &Arc<Self>,
        ctx: &Ctx,
        vm: &hostel_store::VmRecord,
        s: &ScheduleRecord,
    ) -> Res<Task> {
        self.store
            .set_schedule_run(&vm.id, hostel_store::now())
            .await?;
        let target = self.target_by_id(&s.target_id).await?;
        // The chain the next backup would add to: from the newest back to a full one.
        let all = self.store.backups_of(&vm.id).await?;
        let mut chain = 0u32;
        let mut at = all.first().filter(|b| b.target_id == s.target_id).cloned();
        while let Some(b) = at {
            chain += 1;
            at = b
                .parent_id
                .as_ref()
                .and_then(|p| all.iter().find(|x| &x.id == p).cloned());
        }
        let req = CreateBackupRequest {
            target: Some(target.name),
            full: chain >= s.full_every,
        };
        self.create_backup_then(ctx, &vm.name, req, true).await
    }

    /// Deletes the VM's backups in its schedule's target that the retention does not
    /// keep (nor any kept backup builds on), newest first.
    pub(crate) async fn prune_backups(&self, vm_id: &str) -> Res<()> {
        let Some(s) = self.store.backup_schedule(vm_id).await? else {
            return Ok(());
        };
        if s.keep_last.is_none() && s.keep_daily.is_none() && s.keep_weekly.is_none() {
            return Ok(());
        }
        let all = self.store.backups_of(vm_id).await?;
        let list: Vec<&BackupRecord> = all.iter().filter(|b| b.target_id == s.target_id).collect();
        let times: Vec<time::OffsetDateTime> = list.iter().map(|b| b.created_at.get()).collect();
        let keep = retained(&times, s.keep_last, s.keep_daily, s.keep_weekly);
        let mut kept: HashSet<&str> = HashSet::new();
        for (b, k) in list.iter().zip(&keep) {
            if !k {
                continue;
            }
            let mut at = Some(*b);
            while let Some(x) = at {
                kept.insert(x.id.as_str());
                at = x
                    .parent_id
                    .as_ref()
                    .and_then(|p| all.iter().find(|y| &y.id == p));
            }
        }
        for b in list.iter().filter(|b| !kept.contains(b.id.as_str())) {
            tracing::info!(backup = %b.name, "pruned by its VM's backup schedule");
            self.remove_backup(b).await?;
        }
        Ok(())
    }

    /// Every `every`, takes the backups that are due.
    pub fn spawn_backup_scheduler(self: &Arc<Self>, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = me.take_due_backups().await {
                    tracing::warn!("backup schedules: {:?}", e.message());
                }
            }
        });
    }

    async fn take_due_backups(self: &Arc<Self>) -> Res<()> {
        let now = hostel_store::now();
        for s in self.store.backup_schedules().await? {
            let due = match s.last_run {
                None => true,
                Some(t) => {
                    now.get() - t.get()
                        >= time::Duration::minutes(s.every_minutes.min(i64::MAX as u64) as i64)
                }
            };
            if !due {
                continue;
            }
            let Some(vm) = self.store.vm_by_id(&s.vm_id).await? else {
                continue;
            };
            // Due no more; each VM on its own, so one busy VM (its lock held by a long
            // operation) holds up no other's backup.
            self.store.set_schedule_run(&vm.id, now).await?;
            let me = self.clone();
            tokio::spawn(async move {
                let ctx = Ctx::system(SystemActor::BackupScheduler);
                if let Err(e) = me.run_scheduled(&ctx, &vm, &s).await {
                    tracing::warn!(vm = %vm.name, "a scheduled backup did not start: {}", e.message());
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> time::OffsetDateTime {
        hostel_store::Timestamp::parse(s).unwrap().get()
    }

    #[test]
    fn retention_keeps_the_last_the_dailies_and_the_weeklies() {
        // Newest first: two today, one yesterday, one 3 days ago, one 10 days ago.
        let times = [
            at("2026-12-04T18:00:00Z"),
            at("2026-12-04T06:00:00Z"),
            at("2026-12-03T18:00:00Z"),
            at("2026-12-01T18:00:00Z"),
            at("2026-11-24T18:00:00Z"),
        ];
        assert_eq!(
            retained(&times, Some(2), None, None),
            [true, true, false, false, false]
        );
        assert_eq!(
            retained(&times, None, Some(2), None),
            [true, false, true, false, false]
        );
        // Weeks: 12-04 and 12-01 are in one ISO week (49), 11-24 in week 48.
        assert_eq!(
            retained(&times, None, None, Some(2)),
            [true, false, false, false, true]
        );
        assert_eq!(
            retained(&times, Some(1), Some(3), Some(1)),
            [true, false, true, true, false]
        );
        assert_eq!(retained(&times, None, None, None), [false; 5]);
    }
}
