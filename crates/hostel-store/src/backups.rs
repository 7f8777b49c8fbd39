//! Backup targets (directories backups go to) and backups: a VM's disks at a moment,
//! whole or as the changes since an earlier backup. A backup outlives its VM: it keeps
//! the VM's name, owner and definition (JSON) to restore from, and its files (JSON).

use crate::row::{binds, Cols, FromRow, Record, Value};
use crate::{Store, Timestamp};
use anyhow::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct BackupTargetRecord {
    pub id: String,
    pub name: String,
    /// An absolute directory, the same on every host that writes to it (NFS, say).
    pub dir: String,
    pub created_at: Timestamp,
}

impl FromRow for BackupTargetRecord {
    const TABLE: &'static str = "backup_targets";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(BackupTargetRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            dir: c.text("dir")?,
            created_at: c.time("created_at")?,
        })
    }
}

impl Record for BackupTargetRecord {
    const COLS: &'static str = "id, name, dir, created_at";
    fn values(&self) -> Vec<Value<'_>> {
        binds![&self.id, &self.name, &self.dir, self.created_at]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackupRecord {
    pub id: String,
    /// What users call it: VM-YYYYMMDD-HHMMSS.
    pub name: String,
    pub target_id: String,
    pub vm_id: String,
    pub vm_name: String,
    /// `user:ID` or `group:ID`: who is charged for it and may restore it.
    pub owner: Option<String>,
    /// The backup this one holds the changes since, if any.
    pub parent_id: Option<String>,
    pub host_id: String,
    /// The VM's definition at the time (JSON).
    pub definition: String,
    /// Its files, one per disk (JSON list of the agent API's `BackupFile`).
    pub files: String,
    pub size_bytes: u64,
    pub created_at: Timestamp,
    /// How it was made consistent (the guest agent froze the file systems, the VM was at
    /// rest, or why it is crash-consistent); none: made before this was recorded.
    pub quiesce: Option<String>,
}

impl FromRow for BackupRecord {
    const TABLE: &'static str = "backups";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(BackupRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            target_id: c.text("target_id")?,
            vm_id: c.text("vm_id")?,
            vm_name: c.text("vm_name")?,
            owner: c.opt_text("owner")?,
            parent_id: c.opt_text("parent_id")?,
            host_id: c.text("host_id")?,
            definition: c.text("definition")?,
            files: c.text("files")?,
            size_bytes: c.int("size_bytes")?,
            created_at: c.time("created_at")?,
            quiesce: c.opt_text("quiesce")?,
        })
    }
}

impl Record for BackupRecord {
    const COLS: &'static str = "id, name, target_id, vm_id, vm_name, owner, parent_id, host_id, \
                                definition, files, size_bytes, created_at, quiesce";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.name,
            &self.target_id,
            &self.vm_id,
            &self.vm_name,
            self.owner.as_deref(),
            self.parent_id.as_deref(),
            &self.host_id,
            &self.definition,
            &self.files,
            self.size_bytes,
            self.created_at,
            self.quiesce.as_deref(),
        ]
    }
}

/// A VM's backup schedule: every so many minutes into a target, with retention.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    pub vm_id: String,
    pub target_id: String,
    pub every_minutes: u64,
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    /// A full backup once the chain since the last full one has this many.
    pub full_every: u32,
    pub last_run: Option<Timestamp>,
}

impl FromRow for ScheduleRecord {
    const TABLE: &'static str = "backup_schedules";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(ScheduleRecord {
            vm_id: c.text("vm_id")?,
            target_id: c.text("target_id")?,
            every_minutes: c.int("every_minutes")?,
            keep_last: c.opt_int("keep_last")?,
            keep_daily: c.opt_int("keep_daily")?,
            keep_weekly: c.opt_int("keep_weekly")?,
            full_every: c.int("full_every")?,
            last_run: c.opt_time("last_run")?,
        })
    }
}

impl Record for ScheduleRecord {
    const COLS: &'static str = "vm_id, target_id, every_minutes, keep_last, keep_daily, \
                                keep_weekly, full_every, last_run";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.vm_id,
            &self.target_id,
            self.every_minutes,
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.full_every,
            self.last_run,
        ]
    }
}

impl Store {
    /// Sets (replaces) a VM's backup schedule.
    pub async fn set_backup_schedule(&self, s: &ScheduleRecord) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        crate::row::execute_on(
            &mut tx,
            "DELETE FROM backup_schedules WHERE vm_id = $1",
            binds![&s.vm_id],
        )
        .await?;
        crate::row::execute_on(
            &mut tx,
            &crate::row::insert_sql::<ScheduleRecord>(),
            s.values(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_backup_schedule(&self, vm_id: &str) -> Result<u64> {
        self.execute(
            "DELETE FROM backup_schedules WHERE vm_id = $1",
            binds![vm_id],
        )
        .await
    }

    pub async fn backup_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let sql = format!(
            "SELECT {} FROM backup_schedules ORDER BY vm_id",
            ScheduleRecord::COLS
        );
        self.fetch_all(&sql, binds![]).await
    }

    pub async fn backup_schedule(&self, vm_id: &str) -> Result<Option<ScheduleRecord>> {
        let sql = format!(
            "SELECT {} FROM backup_schedules WHERE vm_id = $1",
            ScheduleRecord::COLS
        );
        self.fetch_optional(&sql, binds![vm_id]).await
    }

    pub async fn set_schedule_run(&self, vm_id: &str, at: Timestamp) -> Result<()> {
        self.execute(
            "UPDATE backup_schedules SET last_run = $2 WHERE vm_id = $1",
            binds![vm_id, at],
        )
        .await?;
        Ok(())
    }

    pub async fn insert_backup_target(&self, t: &BackupTargetRecord) -> Result<()> {
        self.insert(t).await
    }

    pub async fn backup_targets(&self) -> Result<Vec<BackupTargetRecord>> {
        let sql = format!(
            "SELECT {} FROM backup_targets ORDER BY name",
            BackupTargetRecord::COLS
        );
        self.fetch_all(&sql, binds![]).await
    }

    pub async fn backup_target_by_name(&self, name: &str) -> Result<Option<BackupTargetRecord>> {
        let sql = format!(
            "SELECT {} FROM backup_targets WHERE name = $1",
            BackupTargetRecord::COLS
        );
        self.fetch_optional(&sql, binds![name]).await
    }

    /// Deletes the target's row unless a backup is in it or a schedule names it;
    /// returns how many do.
    pub async fn delete_backup_target_if_empty(&self, id: &str) -> Result<u64> {
        let mut tx = self.pool().begin().await?;
        let held: Vec<BackupRecord> = crate::row::fetch_all_on(
            &mut tx,
            &format!(
                "SELECT {} FROM backups WHERE target_id = $1",
                BackupRecord::COLS
            ),
            binds![id],
        )
        .await?;
        let scheduled: Vec<ScheduleRecord> = crate::row::fetch_all_on(
            &mut tx,
            &format!(
                "SELECT {} FROM backup_schedules WHERE target_id = $1",
                ScheduleRecord::COLS
            ),
            binds![id],
        )
        .await?;
        if held.is_empty() && scheduled.is_empty() {
            crate::row::execute_on(
                &mut tx,
                "DELETE FROM backup_targets WHERE id = $1",
                binds![id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok((held.len() + scheduled.len()) as u64)
    }

    pub async fn insert_backup(&self, b: &BackupRecord) -> Result<()> {
        self.insert(b).await
    }

    /// Every backup, newest first.
    pub async fn backups(&self) -> Result<Vec<BackupRecord>> {
        let sql = format!(
            "SELECT {} FROM backups ORDER BY created_at DESC, name DESC",
            BackupRecord::COLS
        );
        self.fetch_all(&sql, binds![]).await
    }

    /// A VM's backups (by its id), newest first.
    pub async fn backups_of(&self, vm_id: &str) -> Result<Vec<BackupRecord>> {
        let sql = format!(
            "SELECT {} FROM backups WHERE vm_id = $1 ORDER BY created_at DESC, name DESC",
            BackupRecord::COLS
        );
        self.fetch_all(&sql, binds![vm_id]).await
    }

    pub async fn backup_by_name(&self, name: &str) -> Result<Option<BackupRecord>> {
        let sql = format!("SELECT {} FROM backups WHERE name = $1", BackupRecord::COLS);
        self.fetch_optional(&sql, binds![name]).await
    }

    /// Deletes a backup's row unless a later one builds on it; returns those that do.
    pub async fn delete_backup_if_leaf(&self, id: &str) -> Result<Vec<String>> {
        let mut tx = self.pool().begin().await?;
        let children: Vec<BackupRecord> = crate::row::fetch_all_on(
            &mut tx,
            &format!(
                "SELECT {} FROM backups WHERE parent_id = $1",
                BackupRecord::COLS
            ),
            binds![id],
        )
        .await?;
        if children.is_empty() {
            crate::row::execute_on(&mut tx, "DELETE FROM backups WHERE id = $1", binds![id])
                .await?;
        }
        tx.commit().await?;
        Ok(children.into_iter().map(|b| b.name).collect())
    }

    /// The bytes of an owner's backups (`user:ID` or `group:ID`).
    pub async fn backup_bytes_of(&self, owner: &str) -> Result<u64> {
        let rows: Vec<BackupRecord> = self
            .fetch_all(
                &format!(
                    "SELECT {} FROM backups WHERE owner = $1",
                    BackupRecord::COLS
                ),
                binds![owner],
            )
            .await?;
        Ok(rows.iter().map(|b| b.size_bytes).sum())
    }
}
