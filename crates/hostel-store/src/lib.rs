//! Hostel's persistence: one SQL code path over sqlx's `AnyPool`, so the embedded SQLite
//! of `hostel up` and a cluster's PostgreSQL share every query.
//!
//! Portable SQL only: `$N` placeholders (SQLite reads them by number too), TEXT and
//! BIGINT columns, timestamps as RFC 3339 text, no engine-specific functions.

mod accounts;
mod migrations;
mod net;

use anyhow::{Context, Result};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::time::Duration;

pub use accounts::{AuditFilter, AuditRecord, GroupRecord, SshKeyRecord, TokenRecord, UserRecord};
pub use migrations::MIGRATIONS;
pub use net::{ForwardRecord, NetworkRecord, NicRecord};

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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

/// What runs on a host, as `Store::host_usage` counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostUsage {
    pub vms: u64,
    /// VMs in the live states asked for, and the memory promised to them (MiB).
    pub live: u64,
    pub live_memory_mib: u64,
}

/// Which VMs a list page holds.
#[derive(Debug, Clone, Default)]
pub struct VmPageQuery<'a> {
    /// Only the VMs this user (id) and these groups (ids) own or administer; none: all.
    pub visible_to: Option<(&'a str, &'a [String])>,
    pub host_id: Option<&'a str>,
    pub state: Option<&'a str>,
    /// Only VMs whose name sorts after this one (the last name of the previous page).
    pub after: Option<&'a str>,
    pub limit: u32,
}

/// A VM as a list shows it: its record and the names it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct VmListRow {
    pub vm: VmRecord,
    pub owner_user: Option<String>,
    pub owner_group: Option<String>,
    pub image: Option<String>,
    /// Its NICs' IPv4 addresses, in NIC order.
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub host_id: Option<String>,
    pub image_id: Option<String>,
    pub memory_mib: u64,
    pub max_memory_mib: u64,
    pub vcpus: u32,
    pub max_vcpus: u32,
    pub state: String,
    pub state_reason: Option<String>,
    pub on_poweroff: String,
    pub on_reboot: String,
    pub on_crash: String,
    pub saved_path: Option<String>,
    pub pid: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
    /// The image attached as the VM's CD-ROM, if it is one from the library.
    pub cdrom_image_id: Option<String>,
    /// How the VM boots (firmware, CD-ROM file, own kernel), as JSON.
    pub boot_json: Option<String>,
    /// Its first-boot configuration (seed on/off, SSH keys, password hash), as JSON.
    pub cloud_json: Option<String>,
    /// The owner: a user or a group (quotas are charged to it).
    pub owner_user_id: Option<String>,
    pub owner_group_id: Option<String>,
    /// A group whose members may operate the VM too.
    pub admin_group_id: Option<String>,
    /// When the VM's lease runs out (it is then shut down, never deleted).
    pub lease_expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiskRecord {
    pub id: String,
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
pub struct PoolRecord {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub path: String,
    pub host_id: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: String,
    pub vm_id: String,
    pub name: String,
    pub with_memory: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub format: String,
    pub path: String,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub size_bytes: u64,
    pub virtual_size_mib: u64,
    pub sha256: String,
    pub host_id: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub id: String,
    pub name: String,
    pub url: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub accel: String,
    pub accel_reason: String,
    pub qemu_version: String,
    pub kernel: String,
    pub last_seen: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub state: String,
    pub progress: f64,
    pub message: String,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OperationRecord {
    pub id: String,
    pub vm_id: Option<String>,
    pub kind: String,
    pub state: String,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

pub(crate) fn u64_of(row: &AnyRow, col: &str) -> Result<u64> {
    Ok(row.try_get::<i64, _>(col)? as u64)
}
pub(crate) fn opt_str(row: &AnyRow, col: &str) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}

const VM_COLS: &str = "id, name, host_id, image_id, memory_mib, max_memory_mib, vcpus, \
    max_vcpus, state, state_reason, on_poweroff, on_reboot, on_crash, saved_path, pid, \
    created_at, updated_at, cdrom_image_id, boot_json, cloud_json, owner_user_id, \
    owner_group_id, admin_group_id, lease_expires_at";

fn vm_of(r: &AnyRow) -> Result<VmRecord> {
    Ok(VmRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        host_id: opt_str(r, "host_id")?,
        image_id: opt_str(r, "image_id")?,
        memory_mib: u64_of(r, "memory_mib")?,
        max_memory_mib: u64_of(r, "max_memory_mib")?,
        vcpus: u64_of(r, "vcpus")? as u32,
        max_vcpus: u64_of(r, "max_vcpus")? as u32,
        state: r.try_get("state")?,
        state_reason: opt_str(r, "state_reason")?,
        on_poweroff: r.try_get("on_poweroff")?,
        on_reboot: r.try_get("on_reboot")?,
        on_crash: r.try_get("on_crash")?,
        saved_path: opt_str(r, "saved_path")?,
        pid: r.try_get::<Option<i64>, _>("pid")?.map(|p| p as u32),
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        cdrom_image_id: opt_str(r, "cdrom_image_id")?,
        boot_json: opt_str(r, "boot_json")?,
        cloud_json: opt_str(r, "cloud_json")?,
        owner_user_id: opt_str(r, "owner_user_id")?,
        owner_group_id: opt_str(r, "owner_group_id")?,
        admin_group_id: opt_str(r, "admin_group_id")?,
        lease_expires_at: opt_str(r, "lease_expires_at")?,
    })
}

/// The VMs that use an image: booting from it, with it as CD-ROM, or with a disk on it.
const IMAGE_USERS: &str = "SELECT name FROM vms WHERE image_id = $1 OR cdrom_image_id = $1 \
     UNION SELECT v.name FROM vms v JOIN disks d ON d.vm_id = v.id WHERE d.image_id = $1 \
     ORDER BY name";

const DISK_COLS: &str = "id, vm_id, idx, path, format, size_mib, image_id, pool_id";

const DISK_INSERT: &str = "INSERT INTO disks (id, vm_id, idx, path, format, size_mib, image_id, \
     pool_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// The one INSERT of a disk row, for a lone disk and for a new VM's disks alike.
fn insert_disk_query(
    d: &DiskRecord,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(DISK_INSERT)
        .bind(&d.id)
        .bind(&d.vm_id)
        .bind(d.idx as i64)
        .bind(&d.path)
        .bind(&d.format)
        .bind(d.size_mib as i64)
        .bind(&d.image_id)
        .bind(&d.pool_id)
}

fn disk_of(r: &AnyRow) -> Result<DiskRecord> {
    Ok(DiskRecord {
        id: r.try_get("id")?,
        vm_id: r.try_get("vm_id")?,
        idx: u64_of(r, "idx")? as u32,
        path: r.try_get("path")?,
        format: r.try_get("format")?,
        size_mib: u64_of(r, "size_mib")?,
        image_id: opt_str(r, "image_id")?,
        pool_id: opt_str(r, "pool_id")?,
    })
}

const POOL_COLS: &str = "id, name, driver, path, host_id, created_at";

fn pool_of(r: &AnyRow) -> Result<PoolRecord> {
    Ok(PoolRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        driver: r.try_get("driver")?,
        path: r.try_get("path")?,
        host_id: r.try_get("host_id")?,
        created_at: r.try_get("created_at")?,
    })
}

const IMAGE_COLS: &str = "id, name, kind, format, path, initrd, cmdline, size_bytes, \
    virtual_size_mib, sha256, host_id, created_at";

fn image_of(r: &AnyRow) -> Result<ImageRecord> {
    Ok(ImageRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        format: r.try_get("format")?,
        path: r.try_get("path")?,
        initrd: opt_str(r, "initrd")?,
        cmdline: opt_str(r, "cmdline")?,
        size_bytes: u64_of(r, "size_bytes")?,
        virtual_size_mib: u64_of(r, "virtual_size_mib")?,
        sha256: r.try_get("sha256")?,
        host_id: r.try_get("host_id")?,
        created_at: r.try_get("created_at")?,
    })
}

const HOST_COLS: &str =
    "id, name, url, cpus, memory_mib, accel, accel_reason, qemu_version, kernel, last_seen";

fn host_of(r: &AnyRow) -> Result<HostRecord> {
    Ok(HostRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        url: r.try_get("url")?,
        cpus: u64_of(r, "cpus")? as u32,
        memory_mib: u64_of(r, "memory_mib")?,
        accel: r.try_get("accel")?,
        accel_reason: r.try_get("accel_reason")?,
        qemu_version: r.try_get("qemu_version")?,
        kernel: r.try_get("kernel")?,
        last_seen: r.try_get("last_seen")?,
    })
}

const TASK_COLS: &str = "id, kind, target, state, progress, message, error, created_at, updated_at";

fn task_of(r: &AnyRow) -> Result<TaskRecord> {
    Ok(TaskRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        target: r.try_get("target")?,
        state: r.try_get("state")?,
        progress: r.try_get::<f64, _>("progress")?,
        message: r.try_get("message")?,
        error: opt_str(r, "error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
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
            .with_context(|| format!("opening the database {url}"))?;
        let store = Store { pool, sqlite };
        store.migrate().await?;
        Ok(store)
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    async fn migrate(&self) -> Result<()> {
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
                .bind(now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }

    // ---- hosts ----

    pub async fn upsert_host(&self, h: &HostRecord) -> Result<()> {
        // One statement, not a read then a write in a transaction: under SQLite a deferred
        // transaction that reads before it writes fails at once ("database is locked")
        // when another writer got in between, and hosts reconnect all at once.
        sqlx::query(
            "INSERT INTO hosts (id, name, url, cpus, memory_mib, accel, accel_reason, \
             qemu_version, kernel, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url, \
             cpus = excluded.cpus, memory_mib = excluded.memory_mib, accel = excluded.accel, \
             accel_reason = excluded.accel_reason, qemu_version = excluded.qemu_version, \
             kernel = excluded.kernel, last_seen = excluded.last_seen",
        )
        .bind(&h.id)
        .bind(&h.name)
        .bind(&h.url)
        .bind(h.cpus as i64)
        .bind(h.memory_mib as i64)
        .bind(&h.accel)
        .bind(&h.accel_reason)
        .bind(&h.qemu_version)
        .bind(&h.kernel)
        .bind(&h.last_seen)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn hosts(&self) -> Result<Vec<HostRecord>> {
        let rows = sqlx::query(&format!("SELECT {HOST_COLS} FROM hosts ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(host_of).collect()
    }

    pub async fn host(&self, id: &str) -> Result<Option<HostRecord>> {
        let row = sqlx::query(&format!("SELECT {HOST_COLS} FROM hosts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_of).transpose()
    }

    /// When a host's agent was last heard from (connected, or its stream ended).
    pub async fn touch_host(&self, id: &str, at: &str) -> Result<()> {
        sqlx::query("UPDATE hosts SET last_seen = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// What still refers to a host: its VMs, images and pools.
    pub async fn host_refs(&self, id: &str) -> Result<(u64, u64, u64)> {
        let mut n = [0u64; 3];
        for (i, table) in ["vms", "images", "pools"].iter().enumerate() {
            let row = sqlx::query(&format!(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table} WHERE host_id = $1"
            ))
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
            n[i] = row.try_get::<i64, _>("n")? as u64;
        }
        Ok((n[0], n[1], n[2]))
    }

    pub async fn delete_host(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Per host (all, or `only` one): its VMs, those in `live` states, and the memory
    /// promised to those (their max memory), in one pass over the VMs.
    pub async fn host_usage(
        &self,
        live: &[&str],
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
        let mut q = sqlx::query(&sql);
        for s in live.iter().copied().chain(only) {
            q = q.bind(s);
        }
        let mut out = HashMap::new();
        for r in q.fetch_all(&self.pool).await? {
            out.insert(
                r.try_get::<String, _>("host_id")?,
                HostUsage {
                    vms: r.try_get::<i64, _>("total")? as u64,
                    live: r.try_get::<i64, _>("live")? as u64,
                    live_memory_mib: r.try_get::<i64, _>("live_mib")? as u64,
                },
            );
        }
        Ok(out)
    }

    // ---- images ----

    pub async fn insert_image(&self, i: &ImageRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO images ({IMAGE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12)"
        ))
        .bind(&i.id)
        .bind(&i.name)
        .bind(&i.kind)
        .bind(&i.format)
        .bind(&i.path)
        .bind(&i.initrd)
        .bind(&i.cmdline)
        .bind(i.size_bytes as i64)
        .bind(i.virtual_size_mib as i64)
        .bind(&i.sha256)
        .bind(&i.host_id)
        .bind(&i.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn image_by_name(&self, name: &str) -> Result<Option<ImageRecord>> {
        let row = sqlx::query(&format!("SELECT {IMAGE_COLS} FROM images WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(image_of).transpose()
    }

    pub async fn image_by_id(&self, id: &str) -> Result<Option<ImageRecord>> {
        let row = sqlx::query(&format!("SELECT {IMAGE_COLS} FROM images WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(image_of).transpose()
    }

    pub async fn images(&self) -> Result<Vec<ImageRecord>> {
        let rows = sqlx::query(&format!("SELECT {IMAGE_COLS} FROM images ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(image_of).collect()
    }

    /// Names of the VMs that use an image (booting from it or with a disk based on it).
    pub async fn image_users(&self, image_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(IMAGE_USERS)
            .bind(image_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("name")?))
            .collect()
    }

    /// Deletes the image row only if no VM uses it; returns the users otherwise.
    pub async fn delete_image_if_unused(&self, image_id: &str) -> Result<Vec<String>> {
        self.delete_if_unused("images", IMAGE_USERS, image_id).await
    }

    /// Deletes row `id` of `table` in one transaction unless `users_sql` (with `$1` = id)
    /// names VMs that use it; returns those names. The row is write-locked first, so
    /// nothing can start using it meanwhile.
    pub(crate) async fn delete_if_unused(
        &self,
        table: &str,
        users_sql: &str,
        id: &str,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("UPDATE {table} SET name = name WHERE id = $1"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let users: Vec<String> = sqlx::query(users_sql)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("name"))
            .collect::<Result<_, _>>()?;
        if users.is_empty() {
            sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(users)
    }

    // ---- VMs ----

    /// Inserts a VM and its disks in one transaction.
    pub async fn insert_vm(&self, v: &VmRecord, disks: &[DiskRecord]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO vms ({VM_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
        ))
        .bind(&v.id)
        .bind(&v.name)
        .bind(&v.host_id)
        .bind(&v.image_id)
        .bind(v.memory_mib as i64)
        .bind(v.max_memory_mib as i64)
        .bind(v.vcpus as i64)
        .bind(v.max_vcpus as i64)
        .bind(&v.state)
        .bind(&v.state_reason)
        .bind(&v.on_poweroff)
        .bind(&v.on_reboot)
        .bind(&v.on_crash)
        .bind(&v.saved_path)
        .bind(v.pid.map(|p| p as i64))
        .bind(&v.created_at)
        .bind(&v.updated_at)
        .bind(&v.cdrom_image_id)
        .bind(&v.boot_json)
        .bind(&v.cloud_json)
        .bind(&v.owner_user_id)
        .bind(&v.owner_group_id)
        .bind(&v.admin_group_id)
        .bind(&v.lease_expires_at)
        .execute(&mut *tx)
        .await?;
        for d in disks {
            insert_disk_query(d).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn vm_by_name(&self, name: &str) -> Result<Option<VmRecord>> {
        let row = sqlx::query(&format!("SELECT {VM_COLS} FROM vms WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vm_of).transpose()
    }

    pub async fn vm_by_id(&self, id: &str) -> Result<Option<VmRecord>> {
        let row = sqlx::query(&format!("SELECT {VM_COLS} FROM vms WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vm_of).transpose()
    }

    pub async fn vms(&self) -> Result<Vec<VmRecord>> {
        let rows = sqlx::query(&format!("SELECT {VM_COLS} FROM vms ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(vm_of).collect()
    }

    /// One page of the VM list, in name order, with the names a list shows joined in:
    /// one query for the VMs and one for their NICs' addresses, whatever the page's size.
    pub async fn vms_page(&self, q: &VmPageQuery<'_>) -> Result<Vec<VmListRow>> {
        let mut cond: Vec<String> = Vec::new();
        let mut binds: Vec<&str> = Vec::new();
        // Binds a value and gives its placeholder.
        fn mark<'a>(binds: &mut Vec<&'a str>, v: &'a str) -> String {
            binds.push(v);
            format!("${}", binds.len())
        }
        if let Some((user, groups)) = q.visible_to {
            let mut any = vec![format!("v.owner_user_id = {}", mark(&mut binds, user))];
            if !groups.is_empty() {
                let marks: Vec<String> = groups.iter().map(|g| mark(&mut binds, g)).collect();
                let set = marks.join(", ");
                any.push(format!("v.owner_group_id IN ({set})"));
                any.push(format!("v.admin_group_id IN ({set})"));
            }
            cond.push(format!("({})", any.join(" OR ")));
        }
        if let Some(h) = q.host_id {
            cond.push(format!("v.host_id = {}", mark(&mut binds, h)));
        }
        if let Some(st) = q.state {
            cond.push(format!("v.state = {}", mark(&mut binds, st)));
        }
        if let Some(after) = q.after {
            cond.push(format!("v.name > {}", mark(&mut binds, after)));
        }
        let cols: Vec<String> = VM_COLS.split(", ").map(|c| format!("v.{c}")).collect();
        let sql = format!(
            "SELECT {}, u.name AS owner_user_name, g.name AS owner_group_name, \
             i.name AS image_name FROM vms v \
             LEFT JOIN users u ON u.id = v.owner_user_id \
             LEFT JOIN user_groups g ON g.id = v.owner_group_id \
             LEFT JOIN images i ON i.id = v.image_id{} ORDER BY v.name LIMIT {}",
            cols.join(", "),
            if cond.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", cond.join(" AND "))
            },
            q.limit
        );
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(*b);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut at = HashMap::with_capacity(rows.len());
        for r in &rows {
            let vm = vm_of(r)?;
            at.insert(vm.id.clone(), out.len());
            out.push(VmListRow {
                vm,
                owner_user: opt_str(r, "owner_user_name")?,
                owner_group: opt_str(r, "owner_group_name")?,
                image: opt_str(r, "image_name")?,
                ips: Vec::new(),
            });
        }
        if out.is_empty() {
            return Ok(out);
        }
        // A thousand ids a query at most: databases cap how many values one query binds.
        let ids: Vec<String> = out.iter().map(|r| r.vm.id.clone()).collect();
        for chunk in ids.chunks(1000) {
            let sql = format!(
                "SELECT vm_id, ip FROM nics WHERE vm_id IN ({}) ORDER BY vm_id, idx",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                let vm_id: String = r.try_get("vm_id")?;
                if let Some(&i) = at.get(&vm_id) {
                    out[i].ips.push(r.try_get("ip")?);
                }
            }
        }
        Ok(out)
    }

    /// Memory promised to VMs in `states`, per host: host id → sum of max memory (MiB).
    pub async fn memory_by_host(&self, states: &[&str]) -> Result<Vec<(String, u64)>> {
        let sql = format!(
            "SELECT host_id, CAST(SUM(max_memory_mib) AS BIGINT) AS mib FROM vms \
             WHERE host_id IS NOT NULL AND state IN ({}) GROUP BY host_id",
            placeholders(1, states.len())
        );
        let mut q = sqlx::query(&sql);
        for s in states {
            q = q.bind(*s);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("host_id")?, r.try_get::<i64, _>("mib")? as u64)))
            .collect()
    }

    /// The VMs an owner has and their disks: a user's (`user`), or a group's (`group`,
    /// counting only VMs that no user owns, as quotas do).
    pub async fn owned(
        &self,
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<(Vec<VmRecord>, Vec<DiskRecord>)> {
        let (cond, id) = match (user, group) {
            (Some(u), _) => ("owner_user_id = $1", u),
            (None, Some(g)) => ("owner_user_id IS NULL AND owner_group_id = $1", g),
            (None, None) => return Ok((Vec::new(), Vec::new())),
        };
        let vms = sqlx::query(&format!(
            "SELECT {VM_COLS} FROM vms WHERE {cond} ORDER BY name"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let disks = sqlx::query(&format!(
            "SELECT {DISK_COLS} FROM disks WHERE vm_id IN (SELECT id FROM vms WHERE {cond}) \
             ORDER BY vm_id, idx"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok((
            vms.iter().map(vm_of).collect::<Result<_>>()?,
            disks.iter().map(disk_of).collect::<Result<_>>()?,
        ))
    }

    /// VMs whose lease ends at or before `at` (leases are stored as UTC RFC 3339 text,
    /// which sorts as time does).
    pub async fn vms_lease_ended(&self, at: &str) -> Result<Vec<VmRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {VM_COLS} FROM vms WHERE lease_expires_at IS NOT NULL \
             AND lease_expires_at <= $1 ORDER BY name"
        ))
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(vm_of).collect()
    }

    pub async fn set_vm_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        pid: Option<u32>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE vms SET state = $2, state_reason = $3, pid = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(reason)
        .bind(pid.map(|p| p as i64))
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_vm_memory(&self, id: &str, memory_mib: u64) -> Result<()> {
        sqlx::query("UPDATE vms SET memory_mib = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(memory_mib as i64)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_vm_vcpus(&self, id: &str, vcpus: u32) -> Result<()> {
        sqlx::query("UPDATE vms SET vcpus = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(vcpus as i64)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_vm_saved(&self, id: &str, path: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE vms SET saved_path = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(path)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a VM and its disk rows in one transaction.
    pub async fn delete_vm(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for q in [
            "DELETE FROM snapshots WHERE vm_id = $1",
            "DELETE FROM port_forwards WHERE vm_id = $1",
            "DELETE FROM nics WHERE vm_id = $1",
            "DELETE FROM disks WHERE vm_id = $1",
            "DELETE FROM operations WHERE vm_id = $1",
        ] {
            sqlx::query(q).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM vms WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn disks_of(&self, vm_id: &str) -> Result<Vec<DiskRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {DISK_COLS} FROM disks WHERE vm_id = $1 ORDER BY idx"
        ))
        .bind(vm_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(disk_of).collect()
    }

    pub async fn insert_disk(&self, d: &DiskRecord) -> Result<()> {
        insert_disk_query(d).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn delete_disk(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM disks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_disk_size(&self, id: &str, size_mib: u64) -> Result<()> {
        sqlx::query("UPDATE disks SET size_mib = $2 WHERE id = $1")
            .bind(id)
            .bind(size_mib as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (id, vm_id, name, with_memory, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&s.id)
        .bind(&s.vm_id)
        .bind(&s.name)
        .bind(s.with_memory as i64)
        .bind(&s.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn snapshots_of(&self, vm_id: &str) -> Result<Vec<SnapshotRecord>> {
        let rows = sqlx::query(
            "SELECT id, vm_id, name, with_memory, created_at FROM snapshots WHERE vm_id = $1 \
             ORDER BY created_at, name",
        )
        .bind(vm_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SnapshotRecord {
                    id: r.try_get("id")?,
                    vm_id: r.try_get("vm_id")?,
                    name: r.try_get("name")?,
                    with_memory: r.try_get::<i64, _>("with_memory")? != 0,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn all_disks(&self) -> Result<Vec<DiskRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {DISK_COLS} FROM disks ORDER BY vm_id, idx"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(disk_of).collect()
    }

    // ---- pools ----

    pub async fn insert_pool(&self, p: &PoolRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO pools ({POOL_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.driver)
        .bind(&p.path)
        .bind(&p.host_id)
        .bind(&p.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn pools(&self) -> Result<Vec<PoolRecord>> {
        let rows = sqlx::query(&format!("SELECT {POOL_COLS} FROM pools ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(pool_of).collect()
    }

    pub async fn pool_by_name(&self, name: &str) -> Result<Option<PoolRecord>> {
        let row = sqlx::query(&format!("SELECT {POOL_COLS} FROM pools WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pool_of).transpose()
    }

    pub async fn pool_by_id(&self, id: &str) -> Result<Option<PoolRecord>> {
        let row = sqlx::query(&format!("SELECT {POOL_COLS} FROM pools WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pool_of).transpose()
    }

    /// Deletes the pool's row unless a disk is in it; returns the VMs using it otherwise.
    pub async fn delete_pool_if_unused(&self, id: &str) -> Result<Vec<String>> {
        self.delete_if_unused(
            "pools",
            "SELECT DISTINCT v.name FROM vms v JOIN disks d ON d.vm_id = v.id \
             WHERE d.pool_id = $1 ORDER BY v.name",
            id,
        )
        .await
    }

    // ---- tasks ----

    pub async fn insert_task(&self, t: &TaskRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO tasks ({TASK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&t.id)
        .bind(&t.kind)
        .bind(&t.target)
        .bind(&t.state)
        .bind(t.progress)
        .bind(&t.message)
        .bind(&t.error)
        .bind(&t.created_at)
        .bind(&t.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn update_task(
        &self,
        id: &str,
        state: &str,
        progress: f64,
        message: &str,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = $2, progress = $3, message = $4, error = $5, \
             updated_at = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(progress)
        .bind(message)
        .bind(error)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn task(&self, id: &str) -> Result<Option<TaskRecord>> {
        let row = sqlx::query(&format!("SELECT {TASK_COLS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_of).transpose()
    }

    pub async fn tasks(&self) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLS} FROM tasks ORDER BY created_at DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_of).collect()
    }

    /// Marks tasks that were running when the daemon stopped as failed.
    pub async fn fail_interrupted_tasks(&self) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE tasks SET state = 'failed', error = 'interrupted: the daemon stopped while \
             the task ran', updated_at = $1 WHERE state = 'running'",
        )
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    // ---- operations ----

    pub async fn begin_operation(&self, vm_id: Option<&str>, kind: &str) -> Result<String> {
        let id = new_id("op");
        sqlx::query(
            "INSERT INTO operations (id, vm_id, kind, state, error, started_at, finished_at) \
             VALUES ($1, $2, $3, 'running', NULL, $4, NULL)",
        )
        .bind(&id)
        .bind(vm_id)
        .bind(kind)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn finish_operation(&self, id: &str, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE operations SET state = $2, error = $3, finished_at = $4 WHERE id = $1")
            .bind(id)
            .bind(if error.is_some() {
                "failed"
            } else {
                "succeeded"
            })
            .bind(error)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn operations(&self, vm_id: &str) -> Result<Vec<OperationRecord>> {
        let rows = sqlx::query(
            "SELECT id, vm_id, kind, state, error, started_at, finished_at FROM operations \
             WHERE vm_id = $1 ORDER BY started_at",
        )
        .bind(vm_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OperationRecord {
                    id: r.try_get("id")?,
                    vm_id: opt_str(r, "vm_id")?,
                    kind: r.try_get("kind")?,
                    state: r.try_get("state")?,
                    error: opt_str(r, "error")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: opt_str(r, "finished_at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
