//! How long the audit trail keeps its entries: a retention in days that admins set
//! (default `DEFAULT_RETENTION_DAYS`), applied every `PRUNE_EVERY` and on demand. Before
//! an entry of a change that was not refused (`ok` or `failed`) leaves the database it
//! is appended, as a JSON line, to `DATA_DIR/audit-archive/audit-YYYY-MM-DD.jsonl` (the
//! day the entry was made), synced to disk; refusals are only counted. So no record of
//! a change is dropped silently, and a flood of refusals does not outlive its retention.

use crate::context::{Ctx, Right};
use crate::error::Error;
use crate::Controller;
use hostel_api::public::{AuditPruneReport, AuditRetention};
use hostel_store::{AuditRecord, Timestamp};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

/// The setting that holds the retention: a number of days, or `forever`.
const RETENTION_SETTING: &str = "audit.retention_days";
pub const DEFAULT_RETENTION_DAYS: u32 = 365;
/// The longest retention that can be set (a hundred years).
pub const MAX_RETENTION_DAYS: u32 = 36_600;
/// How often the retention is applied by itself.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Entries read, exported and deleted at a time.
const PRUNE_BATCH: u32 = 1000;

impl Controller {
    /// The retention in force: none keeps entries for ever.
    pub async fn audit_retention(&self, ctx: &Ctx) -> Res<AuditRetention> {
        ctx.require_admin()?;
        Ok(AuditRetention {
            days: self.retention_days().await?,
        })
    }

    async fn retention_days(&self) -> Res<Option<u32>> {
        Ok(
            match self.store.setting(RETENTION_SETTING).await?.as_deref() {
                None => Some(DEFAULT_RETENTION_DAYS),
                Some("forever") => None,
                Some(days) => Some(days.parse().map_err(|_| {
                    Error::internal(format!(
                        "the stored audit retention {days:?} is not a number of days: set it \
                     again with `hostel audit retention set`"
                    ))
                })?),
            },
        )
    }

    /// Sets the retention (admins): entries older than `days` are pruned from now on.
    pub async fn set_audit_retention(&self, ctx: &Ctx, r: AuditRetention) -> Res<AuditRetention> {
        ctx.params(serde_json::json!({ "days": r.days }));
        ctx.require_admin()?;
        let value = match r.days {
            None => "forever".to_string(),
            Some(d) if (1..=MAX_RETENTION_DAYS).contains(&d) => d.to_string(),
            Some(d) => {
                return Err(Error::invalid(
                    "days",
                    format!(
                        "{d} days is not a retention: give 1 to {MAX_RETENTION_DAYS} days, or \
                         none to keep entries for ever"
                    ),
                ))
            }
        };
        self.store
            .set_setting(RETENTION_SETTING, Some(&value))
            .await?;
        Ok(r)
    }

    /// Applies the retention now: exports, then removes, every entry older than it.
    /// Admins, and the audit keeper.
    pub async fn prune_audit(&self, ctx: &Ctx) -> Res<AuditPruneReport> {
        ctx.require_admin_or(Right::PruneAudit)?;
        let Some(days) = self.retention_days().await? else {
            return Ok(AuditPruneReport {
                removed: 0,
                exported: 0,
                files: Vec::new(),
                before: None,
            });
        };
        let before = hostel_store::now() + time::Duration::days(-i64::from(days));
        let archive = self.cfg.data_dir.join("audit-archive");
        let mut report = AuditPruneReport {
            removed: 0,
            exported: 0,
            files: Vec::new(),
            before: Some(before.to_string()),
        };
        loop {
            let old = self.store.audit_before(before, PRUNE_BATCH).await?;
            if old.is_empty() {
                break;
            }
            let kept: Vec<&AuditRecord> = old.iter().filter(|a| a.result != "denied").collect();
            // Written and synced before the rows go: a crash in between leaves a
            // duplicate line, never a lost one.
            for file in export(&archive, &kept)
                .map_err(|e| Error::from(e.context("exporting old audit entries")))?
            {
                let file = file.display().to_string();
                if !report.files.contains(&file) {
                    report.files.push(file);
                }
            }
            report.exported += kept.len() as u64;
            let ids: Vec<String> = old.iter().map(|a| a.id.clone()).collect();
            report.removed += self.store.delete_audit(&ids).await?;
            if old.len() < PRUNE_BATCH as usize {
                break;
            }
        }
        ctx.params(serde_json::json!({
            "removed": report.removed,
            "exported": report.exported,
            "before": report.before,
        }));
        Ok(report)
    }

    /// Writes the summary of refusals over budget every `throttle::SUMMARY_PERIOD`, and
    /// applies the audit retention at start and every `PRUNE_EVERY`, for as long as the
    /// controller lives.
    pub fn spawn_audit_upkeep(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let keeper = Ctx::system(crate::context::SystemActor::AuditKeeper);
            let mut last_prune: Option<tokio::time::Instant> = None;
            loop {
                let Some(c) = me.upgrade() else { return };
                if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(tokio::time::Instant::now());
                    match c.prune_audit(&keeper).await {
                        Ok(r) if r.removed > 0 => {
                            c.record_audit(crate::audit::event_record(
                                &keeper,
                                "audit.prune",
                                None,
                                serde_json::json!({
                                    "removed": r.removed,
                                    "exported": r.exported,
                                    "before": r.before,
                                }),
                                None,
                            ))
                            .await
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!("pruning the audit trail failed: {e}"),
                    }
                }
                drop(c);
                tokio::time::sleep(crate::throttle::SUMMARY_PERIOD).await;
                let Some(c) = me.upgrade() else { return };
                c.record_refusal_summary().await;
            }
        });
    }
}

/// Appends `entries` as JSON lines to one file per day under `dir` (made 0700, files
/// 0600: the trail names users and addresses), synced; gives the files written.
fn export(dir: &Path, entries: &[&AuditRecord]) -> anyhow::Result<Vec<PathBuf>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut by_day: BTreeMap<String, Vec<&AuditRecord>> = BTreeMap::new();
    for a in entries {
        by_day.entry(day_of(a.at)).or_default().push(a);
    }
    let mut files = Vec::new();
    for (day, entries) in by_day {
        let path = dir.join(format!("audit-{day}.jsonl"));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let mut text = String::new();
        for a in entries {
            text += &serde_json::json!({
                "id": a.id,
                "at": a.at.to_string(),
                "user": a.user_name,
                "source": a.source,
                "action": a.action,
                "target": a.target,
                "vm_id": a.vm_id,
                "params": a.params.as_deref().and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok()),
                "result": a.result,
                "error": a.error,
            })
            .to_string();
            text.push('\n');
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        files.push(path);
    }
    Ok(files)
}

/// `YYYY-MM-DD` of a time, in UTC.
fn day_of(t: Timestamp) -> String {
    let d = t.get().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[cfg(test)]
mod tests {
    use crate::testing::TestController;
    use hostel_api::public::AuditRetention;
    use hostel_store::AuditRecord;

    fn entry(id: &str, at: &str, result: &str) -> AuditRecord {
        AuditRecord {
            id: id.into(),
            at: hostel_store::Timestamp::parse(at).unwrap(),
            user_name: Some("alice".into()),
            source: "10.0.0.1".into(),
            action: "vm.create".into(),
            target: Some("web".into()),
            vm_id: None,
            params: Some(r#"{"memory_mib":512}"#.into()),
            result: result.into(),
            error: None,
        }
    }

    #[tokio::test]
    async fn old_entries_are_exported_then_pruned_and_refusals_only_counted() {
        let h = TestController::new().await;
        let now = hostel_store::now();
        let recent = (now + time::Duration::days(-1)).to_string();
        for (id, at, result) in [
            ("old-ok", "2020-03-04T10:00:00Z", "ok"),
            ("old-failed", "2020-03-04T11:00:00Z", "failed"),
            ("old-denied", "2020-03-05T00:00:00Z", "denied"),
            ("new", recent.as_str(), "ok"),
        ] {
            h.c.store
                .insert_audit(&entry(id, at, result))
                .await
                .unwrap();
        }
        // The default keeps a year.
        let r = h.c.audit_retention(&h.admin).await.unwrap();
        assert_eq!(r.days, Some(super::DEFAULT_RETENTION_DAYS));
        let report = h.c.prune_audit(&h.admin).await.unwrap();
        assert_eq!((report.removed, report.exported), (3, 2));
        assert_eq!(report.files.len(), 1, "{:?}", report.files);
        let file = std::path::Path::new(&report.files[0]);
        assert!(file.ends_with("audit-archive/audit-2020-03-04.jsonl"));
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["id"], "old-ok");
        assert_eq!(lines[0]["params"]["memory_mib"], 512);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let left = h.c.store.audit(&Default::default()).await.unwrap();
        assert_eq!(
            left.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["new"]
        );

        // Kept for ever: nothing is pruned.
        h.c.set_audit_retention(&h.admin, AuditRetention { days: None })
            .await
            .unwrap();
        let report = h.c.prune_audit(&h.admin).await.unwrap();
        assert_eq!(report.removed, 0);
        assert_eq!(report.before, None);
        // Set, and refused out of range.
        assert!(h
            .c
            .set_audit_retention(&h.admin, AuditRetention { days: Some(0) })
            .await
            .is_err());
        h.c.set_audit_retention(&h.admin, AuditRetention { days: Some(1) })
            .await
            .unwrap();
        assert_eq!(h.c.audit_retention(&h.admin).await.unwrap().days, Some(1));
    }

    #[tokio::test]
    async fn only_admins_set_or_apply_the_retention() {
        let h = TestController::new().await;
        let alice = h.user("alice").await;
        assert!(h.c.audit_retention(&alice).await.is_err());
        assert!(h
            .c
            .set_audit_retention(&alice, AuditRetention { days: Some(1) })
            .await
            .is_err());
        assert!(h.c.prune_audit(&alice).await.is_err());
        let keeper = crate::context::Ctx::system(crate::context::SystemActor::AuditKeeper);
        assert!(h.c.prune_audit(&keeper).await.is_ok());
        assert!(h.c.audit_retention(&keeper).await.is_err());
    }
}
