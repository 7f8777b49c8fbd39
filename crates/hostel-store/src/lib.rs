//! Hostel's persistence: one SQL code path over sqlx's `AnyPool`, so the embedded SQLite
//! of `hostel up` and a cluster's PostgreSQL share every query.
//!
//! Portable SQL only: `$N` placeholders (SQLite reads them by number too), TEXT and
//! BIGINT columns, timestamps as RFC 3339 text, no engine-specific functions.
//!
//! Records carry the model's enums and [`Timestamp`]s; `row` is the one place rows are
//! decoded into them and records bound into statements. One module per resource.

mod accounts;
mod backups;
pub mod cluster;
pub mod copy;
mod disks;
mod hosts;
mod images;
mod metrics;
mod migrations;
mod moves;
mod net;
mod operations;
mod pools;
mod row;
mod settings;
mod stamp;
mod tasks;
mod vms;

use anyhow::{Context, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::time::Duration;

pub use accounts::{AuditFilter, AuditRecord, GroupRecord, SshKeyRecord, TokenRecord, UserRecord};
pub use backups::{BackupRecord, BackupTargetRecord, ScheduleRecord};
pub use disks::{DiskRecord, SnapshotRecord};
pub use hosts::{HostRecord, HostUsage};
pub use images::{ImageCopyRecord, ImageRecord};
pub use metrics::{owner_label, VmLabels};
pub use migrations::MIGRATIONS;
pub use moves::MoveRecord;
pub use net::{ForwardRecord, NetworkRecord, NicRecord};
pub use operations::{OperationFilter, OperationRecord};
pub use pools::PoolRecord;
pub use stamp::Timestamp;
pub use tasks::TaskRecord;
pub use vms::{VmListRow, VmPageQuery, VmRecord};

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
    /// The id of every VM whose row was written, after the write: what live views
    /// (the API's event stream, the web UI) follow; on PostgreSQL, other controllers'
    /// writes too.
    vm_changes: tokio::sync::broadcast::Sender<String>,
    /// This store's name in the notifications it sends, to skip its own.
    instance: std::sync::Arc<str>,
}

/// How many VM changes a slow follower may fall behind before it is told it lagged.
const VM_CHANGES_BACKLOG: usize = 4096;

/// The time now, as records keep it.
pub fn now() -> Timestamp {
    Timestamp::now()
}

pub fn new_id(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &u[..12])
}

/// `$from, $from+1, ...`: `n` numbered placeholders for an `IN (...)` list.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// True when an error is a unique-constraint violation (a duplicate name, say).
pub fn is_unique_violation(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .map(|d| d.is_unique_violation())
            .unwrap_or(false)
    })
}

/// A database URL fit for a log or an error: its password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some(p) => p,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) the database at `url` (`sqlite:///path/hostel.db` or
    /// `postgres://...`) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL lets readers go on while one writer writes; the busy timeout
                        // makes a second writer wait instead of failing.
                        for p in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA busy_timeout = 10000",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA synchronous = NORMAL",
                        ] {
                            sqlx::query(p).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("opening the database {}", redact_url(&url)))?;
        let store = Store {
            pool,
            sqlite,
            vm_changes: tokio::sync::broadcast::channel(VM_CHANGES_BACKLOG).0,
            instance: new_id("store").into(),
        };
        store.migrate().await?;
        if !sqlite {
            store.follow_notifications(url.to_string());
        }
        Ok(store)
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    /// Follows VM writes: each message is the id of a VM whose row (or its NICs, disks,
    /// snapshots or forwards) was written or deleted.
    pub fn follow_vm_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.vm_changes.subscribe()
    }

    /// Tells followers that a VM changed (nobody following is fine); on PostgreSQL, the
    /// other controllers' followers too (`NOTIFY`, see `follow_notifications`).
    pub fn vm_changed(&self, id: &str) {
        let _ = self.vm_changes.send(id.to_string());
        if !self.sqlite {
            let pool = self.pool.clone();
            let payload = format!("{} {id}", self.instance);
            tokio::spawn(async move {
                let _ = sqlx::query("SELECT pg_notify('hostel_vm', $1)")
                    .bind(payload)
                    .execute(&pool)
                    .await;
            });
        }
    }

    /// Passes on the VM changes other controllers on this PostgreSQL database announce,
    /// for as long as the store lives, reconnecting when the link drops.
    fn follow_notifications(&self, url: String) {
        let tx = self.vm_changes.clone();
        let me = self.instance.clone();
        tokio::spawn(async move {
            loop {
                let listener = async {
                    let mut l = sqlx::postgres::PgListener::connect(&url).await?;
                    l.listen("hostel_vm").await?;
                    loop {
                        let n = l.recv().await?;
                        if let Some((from, id)) = n.payload().split_once(' ') {
                            if from != &*me {
                                let _ = tx.send(id.to_string());
                            }
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                if let Err(e) = listener.await {
                    tracing::warn!("following other controllers' changes: {e}; again in 1 s");
                }
                // Ends with the last store: nobody left to tell.
                if tx.receiver_count() == 0 && std::sync::Arc::strong_count(&me) == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    async fn migrate(&self) -> Result<()> {
        if self.sqlite {
            return self.migrate_unlocked().await;
        }
        // Two controllers starting together: one applies, the other then finds it done.
        let mut conn = self.pool.acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(cluster::MIGRATE_KEY)
            .execute(&mut conn)
            .await?;
        let result = self.migrate_unlocked().await;
        let _ = sqlx::Connection::close(conn).await;
        result
    }

    async fn migrate_unlocked(&self) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
             applied_at TEXT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let done: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("version"))
            .collect::<Result<_, _>>()?;
        for (i, stmts) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if done.contains(&version) {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for stmt in stmts.iter() {
                sqlx::query(stmt)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("migration {version}: {stmt}"))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(now().to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
