//! Hosts: the machines whose agents run VMs.

use crate::row::{binds, execute_on, Cols, Count, FromRow, Record, Value};
use crate::{placeholders, Store, Timestamp};
use anyhow::Result;
use hostel_model::{Accel, VmState};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub id: String,
    pub name: String,
    pub url: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    pub accel_reason: String,
    pub qemu_version: String,
    pub kernel: String,
    pub last_seen: Timestamp,
    /// Tags an admin gave the host (`hostel host set --tags`), for placement.
    pub tags: Vec<String>,
    /// `draining` or `drained` while an admin empties it; empty otherwise.
    pub drain: String,
    /// The machine types and CPU models its QEMU offers (JSON in the row).
    pub platform: hostel_model::Platform,
}

/// What runs on a host, as `Store::host_usage` counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostUsage {
    pub vms: u64,
    /// VMs in the live states asked for, and the memory promised to them (MiB).
    pub live: u64,
    pub live_memory_mib: u64,
}

impl FromRow for HostRecord {
    const TABLE: &'static str = "hosts";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(HostRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            url: c.text("url")?,
            cpus: c.int("cpus")?,
            memory_mib: c.int("memory_mib")?,
            accel: c.enumed("accel")?,
            accel_reason: c.text("accel_reason")?,
            qemu_version: c.text("qemu_version")?,
            kernel: c.text("kernel")?,
            last_seen: c.time("last_seen")?,
            tags: c
                .text("tags")?
                .split(',')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            drain: c.text("drain")?,
            platform: serde_json::from_str(&c.text("platform")?).unwrap_or_default(),
        })
    }
}

impl Record for HostRecord {
    const COLS: &'static str =
        "id, name, url, cpus, memory_mib, accel, accel_reason, qemu_version, kernel, last_seen, \
         tags, drain, platform";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.name,
            &self.url,
            self.cpus,
            self.memory_mib,
            self.accel,
            &self.accel_reason,
            &self.qemu_version,
            &self.kernel,
            self.last_seen,
            self.tags.join(","),
            &self.drain,
            serde_json::to_string(&self.platform).unwrap_or_default(),
        ]
    }
}

/// A host's usage, as `host_usage` sums it up.
struct UsageRow(String, HostUsage);

impl FromRow for UsageRow {
    const TABLE: &'static str = "vms";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(UsageRow(
            c.text("host_id")?,
            HostUsage {
                vms: c.int("total")?,
                live: c.int("live")?,
                live_memory_mib: c.int("live_mib")?,
            },
        ))
    }
}

impl Store {
    pub async fn upsert_host(&self, h: &HostRecord) -> Result<()> {
        // One statement, not a read then a write in a transaction: under SQLite a deferred
        // transaction that reads before it writes fails at once ("database is locked")
        // when another writer got in between, and hosts reconnect all at once.
        let sql = format!(
            "{} ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url, \
             cpus = excluded.cpus, memory_mib = excluded.memory_mib, accel = excluded.accel, \
             accel_reason = excluded.accel_reason, qemu_version = excluded.qemu_version, \
             kernel = excluded.kernel, last_seen = excluded.last_seen, \
             platform = excluded.platform",
            crate::row::insert_sql::<HostRecord>()
        );
        self.execute(&sql, h.values()).await?;
        Ok(())
    }

    pub async fn hosts(&self) -> Result<Vec<HostRecord>> {
        let sql = format!("SELECT {} FROM hosts ORDER BY name", HostRecord::COLS);
        self.fetch_all(&sql, binds![]).await
    }

    pub async fn host(&self, id: &str) -> Result<Option<HostRecord>> {
        let sql = format!("SELECT {} FROM hosts WHERE id = $1", HostRecord::COLS);
        self.fetch_optional(&sql, binds![id]).await
    }

    /// Sets a host's drain state: `draining`, `drained`, or empty.
    pub async fn set_host_drain(&self, id: &str, drain: &str) -> Result<()> {
        self.execute(
            "UPDATE hosts SET drain = $2 WHERE id = $1",
            binds![id, drain],
        )
        .await?;
        Ok(())
    }

    /// The VMs a drain of `host` moved away (to return them).
    pub async fn vms_drained_from(&self, host: &str) -> Result<Vec<String>> {
        self.fetch_all(
            "SELECT name FROM vms WHERE drained_from = $1 ORDER BY name",
            binds![host],
        )
        .await
    }

    /// Notes (or clears) the host a VM's drain moved it away from.
    pub async fn set_vm_drained_from(&self, vm_id: &str, host: Option<&str>) -> Result<()> {
        self.execute(
            "UPDATE vms SET drained_from = $2 WHERE id = $1",
            binds![vm_id, host],
        )
        .await?;
        Ok(())
    }

    /// Sets a host's tags (replacing the ones it had).
    pub async fn set_host_tags(&self, id: &str, tags: &[String]) -> Result<()> {
        self.execute(
            "UPDATE hosts SET tags = $2 WHERE id = $1",
            binds![id, tags.join(",")],
        )
        .await?;
        Ok(())
    }

    /// The hosts with a VM of anti-affinity group `group` (in any state), but for VM
    /// `except`.
    pub async fn hosts_with_group(&self, group: &str, except: Option<&str>) -> Result<Vec<String>> {
        self.fetch_all(
            "SELECT DISTINCT host_id FROM vms WHERE anti_affinity = $1 AND host_id IS NOT NULL \
             AND id <> $2",
            binds![group, except.unwrap_or("")],
        )
        .await
    }

    /// When a host's agent was last heard from (connected, or its stream ended).
    pub async fn touch_host(&self, id: &str, at: Timestamp) -> Result<()> {
        self.execute(
            "UPDATE hosts SET last_seen = $2 WHERE id = $1",
            binds![id, at],
        )
        .await?;
        Ok(())
    }

    /// What still refers to a host: its VMs, images and pools.
    pub async fn host_refs(&self, id: &str) -> Result<(u64, u64, u64)> {
        let mut n = [0u64; 3];
        for (i, table) in ["vms", "images", "pools"].iter().enumerate() {
            let sql =
                format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table} WHERE host_id = $1");
            n[i] = self.fetch_one::<Count>(&sql, binds![id]).await?.0;
        }
        Ok((n[0], n[1], n[2]))
    }

    /// Deletes a host and what it held of the images (their copies' rows).
    pub async fn delete_host(&self, id: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        execute_on(
            &mut tx,
            "DELETE FROM image_copies WHERE host_id = $1",
            binds![id],
        )
        .await?;
        execute_on(&mut tx, "DELETE FROM hosts WHERE id = $1", binds![id]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Per host (all, or `only` one): its VMs, those in `live` states, and the memory
    /// promised to those (their max memory), in one pass over the VMs.
    pub async fn host_usage(
        &self,
        live: &[VmState],
        only: Option<&str>,
    ) -> Result<HashMap<String, HostUsage>> {
        let set = placeholders(1, live.len());
        let sql = format!(
            "SELECT host_id, CAST(COUNT(*) AS BIGINT) AS total, \
             CAST(SUM(CASE WHEN state IN ({set}) THEN 1 ELSE 0 END) AS BIGINT) AS live, \
             CAST(SUM(CASE WHEN state IN ({set}) THEN max_memory_mib ELSE 0 END) AS BIGINT) \
             AS live_mib FROM vms WHERE {} GROUP BY host_id",
            match only {
                Some(_) => format!("host_id = ${}", live.len() + 1),
                None => "host_id IS NOT NULL".into(),
            }
        );
        let mut values: Vec<Value> = live.iter().map(|s| Value::from(*s)).collect();
        values.extend(only.map(Value::from));
        let rows: Vec<UsageRow> = self.fetch_all(&sql, values).await?;
        Ok(rows.into_iter().map(|UsageRow(h, u)| (h, u)).collect())
    }
}
