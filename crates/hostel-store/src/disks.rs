//! VM disks and snapshots.

use crate::row::{binds, execute_on, Cols, FromRow, Record, Value};
use crate::{Store, Timestamp};
use anyhow::Result;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiskRecord {
    pub id: String,
    #[serde(default)]
    pub vm_id: String,
    pub idx: u32,
    pub path: String,
    pub format: String,
    pub size_mib: u64,
    pub image_id: Option<String>,
    /// The storage pool the disk is in; none: the host's default `dir` pool.
    pub pool_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: String,
    pub vm_id: String,
    pub name: String,
    pub with_memory: bool,
    pub created_at: Timestamp,
    /// What a snapshot with memory was taken with, as JSON (the controller's
    /// `SnapshotHardware`); none for one without memory, or taken before it was kept.
    pub hardware: Option<String>,
}

impl FromRow for DiskRecord {
    const TABLE: &'static str = "disks";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(DiskRecord {
            id: c.text("id")?,
            vm_id: c.text("vm_id")?,
            idx: c.int("idx")?,
            path: c.text("path")?,
            format: c.text("format")?,
            size_mib: c.int("size_mib")?,
            image_id: c.opt_text("image_id")?,
            pool_id: c.opt_text("pool_id")?,
        })
    }
}

impl Record for DiskRecord {
    const COLS: &'static str = "id, vm_id, idx, path, format, size_mib, image_id, pool_id";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.vm_id,
            self.idx,
            &self.path,
            &self.format,
            self.size_mib,
            &self.image_id,
            &self.pool_id,
        ]
    }
}

impl FromRow for SnapshotRecord {
    const TABLE: &'static str = "snapshots";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(SnapshotRecord {
            id: c.text("id")?,
            vm_id: c.text("vm_id")?,
            name: c.text("name")?,
            with_memory: c.flag("with_memory")?,
            created_at: c.time("created_at")?,
            hardware: c.opt_text("hardware")?,
        })
    }
}

impl Record for SnapshotRecord {
    const COLS: &'static str = "id, vm_id, name, with_memory, created_at, hardware";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.vm_id,
            &self.name,
            self.with_memory,
            self.created_at,
            self.hardware.as_deref(),
        ]
    }
}

impl Store {
    pub async fn disks_of(&self, vm_id: &str) -> Result<Vec<DiskRecord>> {
        let sql = format!(
            "SELECT {} FROM disks WHERE vm_id = $1 ORDER BY idx",
            DiskRecord::COLS
        );
        self.fetch_all(&sql, binds![vm_id]).await
    }

    pub async fn all_disks(&self) -> Result<Vec<DiskRecord>> {
        let sql = format!("SELECT {} FROM disks ORDER BY vm_id, idx", DiskRecord::COLS);
        self.fetch_all(&sql, binds![]).await
    }

    pub async fn insert_disk(&self, d: &DiskRecord) -> Result<()> {
        self.insert(d).await?;
        self.vm_changed(&d.vm_id);
        Ok(())
    }

    pub async fn delete_disk(&self, id: &str) -> Result<()> {
        let vm = self.vm_of("disks", id).await?;
        self.execute("DELETE FROM disks WHERE id = $1", binds![id])
            .await?;
        if let Some(vm) = vm {
            self.vm_changed(&vm);
        }
        Ok(())
    }

    /// Gives a disk another place in its VM's order (a restore's disks take the places of
    /// those they replace).
    pub async fn set_disk_index(&self, id: &str, idx: u32) -> Result<()> {
        let vm = self.vm_of("disks", id).await?;
        self.execute("UPDATE disks SET idx = $2 WHERE id = $1", binds![id, idx])
            .await?;
        if let Some(vm) = vm {
            self.vm_changed(&vm);
        }
        Ok(())
    }

    /// Migrated disks' new files, in their new host's default pool: `(id, path, format)`.
    pub async fn move_disks(&self, moved: &[(String, String, String)]) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for (id, path, format) in moved {
            execute_on(
                &mut tx,
                "UPDATE disks SET path = $2, format = $3, pool_id = NULL WHERE id = $1",
                binds![id.as_str(), path.as_str(), format.as_str()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_disk_size(&self, id: &str, size_mib: u64) -> Result<()> {
        self.execute(
            "UPDATE disks SET size_mib = $2 WHERE id = $1",
            binds![id, size_mib],
        )
        .await?;
        if let Some(vm) = self.vm_of("disks", id).await? {
            self.vm_changed(&vm);
        }
        Ok(())
    }

    pub async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.insert(s).await?;
        self.vm_changed(&s.vm_id);
        Ok(())
    }

    pub async fn snapshots_of(&self, vm_id: &str) -> Result<Vec<SnapshotRecord>> {
        let sql = format!(
            "SELECT {} FROM snapshots WHERE vm_id = $1 ORDER BY created_at, name",
            SnapshotRecord::COLS
        );
        let mut snaps: Vec<SnapshotRecord> = self.fetch_all(&sql, binds![vm_id]).await?;
        // Stored times sort as text, which puts "…:05Z" after "…:05.5Z": order by time.
        snaps.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        Ok(snaps)
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let vm = self.vm_of("snapshots", id).await?;
        self.execute("DELETE FROM snapshots WHERE id = $1", binds![id])
            .await?;
        if let Some(vm) = vm {
            self.vm_changed(&vm);
        }
        Ok(())
    }
}
