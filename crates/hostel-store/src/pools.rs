//! Storage pools: where a host keeps VM disks.

use crate::row::{binds, Cols, FromRow, Record, Value};
use crate::{Store, Timestamp};
use anyhow::Result;
use hostel_model::PoolDriver;

#[derive(Debug, Clone, PartialEq)]
pub struct PoolRecord {
    pub id: String,
    pub name: String,
    pub driver: PoolDriver,
    pub path: String,
    /// The host it was made on, which checked it first.
    pub host_id: String,
    pub created_at: Timestamp,
    /// Every host reaches it at the same path: its disks never move between hosts.
    pub shared: bool,
}

impl FromRow for PoolRecord {
    const TABLE: &'static str = "pools";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(PoolRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            driver: c.enumed("driver")?,
            path: c.text("path")?,
            host_id: c.text("host_id")?,
            created_at: c.time("created_at")?,
            shared: c.flag("shared")?,
        })
    }
}

impl Record for PoolRecord {
    const COLS: &'static str = "id, name, driver, path, host_id, created_at, shared";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.name,
            self.driver,
            &self.path,
            &self.host_id,
            self.created_at,
            self.shared,
        ]
    }
}

impl Store {
    pub async fn insert_pool(&self, p: &PoolRecord) -> Result<()> {
        self.insert(p).await
    }

    pub async fn pools(&self) -> Result<Vec<PoolRecord>> {
        let sql = format!("SELECT {} FROM pools ORDER BY name", PoolRecord::COLS);
        self.fetch_all(&sql, binds![]).await
    }

    pub async fn pool_by_name(&self, name: &str) -> Result<Option<PoolRecord>> {
        let sql = format!("SELECT {} FROM pools WHERE name = $1", PoolRecord::COLS);
        self.fetch_optional(&sql, binds![name]).await
    }

    pub async fn pool_by_id(&self, id: &str) -> Result<Option<PoolRecord>> {
        let sql = format!("SELECT {} FROM pools WHERE id = $1", PoolRecord::COLS);
        self.fetch_optional(&sql, binds![id]).await
    }

    /// Deletes the pool's row unless a disk is in it; returns the VMs using it otherwise.
    pub async fn delete_pool_if_unused(&self, id: &str) -> Result<Vec<String>> {
        self.delete_if_unused(
            "pools",
            "SELECT DISTINCT v.name FROM vms v JOIN disks d ON d.vm_id = v.id \
             WHERE d.pool_id = $1 ORDER BY v.name",
            &[],
            id,
        )
        .await
    }
}
