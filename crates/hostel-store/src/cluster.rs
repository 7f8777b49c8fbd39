//! More than one controller on one database (PostgreSQL): who is alive (`controllers`,
//! a heartbeat each), who leads (a PostgreSQL advisory lock, held by one connection for
//! as long as the leader lives), which host's agent the leader follows now
//! (`hosts.online`), and which controller operates which VM now (`vm_locks`, taken over
//! from a controller whose heartbeat stopped). On SQLite there is one controller: it
//! always leads.

use crate::row::binds;
use crate::{now, Store, Timestamp};
use anyhow::Result;
use sqlx::{Connection, Row};
use std::time::Duration;

/// A controller whose heartbeat is older than this is dead: its operations, migrations
/// and VM locks are taken over.
pub const CONTROLLER_STALE_AFTER: Duration = Duration::from_secs(5);

/// How often a controller says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The advisory lock the leader holds (an arbitrary constant: "hostel" in ASCII).
const LEADER_KEY: i64 = 0x686f_7374_656c;
/// The advisory lock migrations are applied under, so two controllers starting together
/// do not apply the same one twice.
pub(crate) const MIGRATE_KEY: i64 = 0x686f_7374_656d;

/// Leadership held: on PostgreSQL, the connection holding the advisory lock (the lock
/// ends with it); on SQLite, nothing to hold.
pub struct Lead {
    conn: Option<sqlx::AnyConnection>,
}

impl Lead {
    /// Whether leadership still holds: the connection that holds it still answers.
    pub async fn holds(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
        }
    }
}

/// A controller's heartbeat row.
#[derive(Debug, Clone)]
pub struct ControllerRecord {
    pub id: String,
    pub name: String,
    pub api: String,
    pub started_at: Timestamp,
    pub last_seen: Timestamp,
    pub leader: bool,
}

/// A browser console ticket not yet spent (`hostel-controller`'s `consoles.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleTicketRecord {
    /// The SHA-256 of its secret: the secret itself is only in the page's address.
    pub secret_hash: String,
    pub vm_id: String,
    pub vm_name: String,
    /// `serial` or `vga`.
    pub console: String,
    /// Who asked for it, as the controller keeps a caller (JSON): the console runs as
    /// them.
    pub caller: String,
    pub expires_at: Timestamp,
}

impl Store {
    /// Leadership, if no other controller holds it now.
    pub async fn try_lead(&self) -> Result<Option<Lead>> {
        if self.is_sqlite() {
            return Ok(Some(Lead { conn: None }));
        }
        let mut conn = self.pool().acquire().await?.detach();
        let got: i32 =
            sqlx::query("SELECT CASE WHEN pg_try_advisory_lock($1) THEN 1 ELSE 0 END AS got")
                .bind(LEADER_KEY)
                .fetch_one(&mut conn)
                .await?
                .try_get("got")?;
        if got == 1 {
            Ok(Some(Lead { conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Says that controller `id` is alive (and whether it leads).
    pub async fn heartbeat(&self, id: &str, name: &str, api: &str, leader: bool) -> Result<()> {
        let t = now();
        let n = self
            .execute(
                "UPDATE controllers SET last_seen = $2, leader = $3, api = $4 WHERE id = $1",
                binds![id, t, leader, api],
            )
            .await?;
        if n == 0 {
            self.execute(
                "INSERT INTO controllers (id, name, api, started_at, last_seen, leader) \
                 VALUES ($1, $2, $3, $4, $4, $5)",
                binds![id, name, api, t, leader],
            )
            .await?;
        }
        Ok(())
    }

    /// The controllers alive now (heartbeat within [`CONTROLLER_STALE_AFTER`]), and
    /// those that stopped: every row, the caller tells them apart by `last_seen`.
    pub async fn controllers(&self) -> Result<Vec<ControllerRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, api, started_at, last_seen, leader FROM controllers ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ControllerRecord {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    api: r.try_get("api")?,
                    started_at: Timestamp::parse(&r.try_get::<String, _>("started_at")?)?,
                    last_seen: Timestamp::parse(&r.try_get::<String, _>("last_seen")?)?,
                    leader: r.try_get::<i64, _>("leader")? != 0,
                })
            })
            .collect()
    }

    /// Forgets controllers dead for a day (their rows only say they once ran).
    pub async fn forget_dead_controllers(&self) -> Result<u64> {
        let day_ago = now() + time::Duration::hours(-24);
        self.execute(
            "DELETE FROM controllers WHERE last_seen < $1",
            binds![day_ago],
        )
        .await
    }

    /// The time before which a heartbeat means its controller is dead.
    pub fn stale_before() -> Timestamp {
        now() + time::Duration::seconds(-(CONTROLLER_STALE_AFTER.as_secs() as i64))
    }

    /// Records whether the leader follows a host's agent now.
    pub async fn set_host_online(&self, host: &str, online: bool) -> Result<()> {
        self.execute(
            "UPDATE hosts SET online = $2 WHERE id = $1",
            binds![host, online],
        )
        .await?;
        Ok(())
    }

    /// The hosts whose agent the leader follows now.
    pub async fn online_hosts(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM hosts WHERE online = 1")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("id")?))
            .collect()
    }

    /// Keeps a browser console ticket (by its secret's hash) where every controller
    /// finds it: the page that spends it may reach another controller than the one that
    /// issued it. Expired tickets go meanwhile.
    pub async fn insert_console_ticket(&self, t: &ConsoleTicketRecord) -> Result<()> {
        self.execute(
            "DELETE FROM console_tickets WHERE expires_at < $1",
            binds![now()],
        )
        .await?;
        self.execute(
            "INSERT INTO console_tickets (secret_hash, vm_id, vm_name, console, caller, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            binds![
                &t.secret_hash,
                &t.vm_id,
                &t.vm_name,
                &t.console,
                &t.caller,
                t.expires_at
            ],
        )
        .await?;
        Ok(())
    }

    /// Spends the ticket whose secret hashes to `secret_hash`: it is gone afterwards,
    /// whoever asked first (one statement, so two controllers cannot both spend it).
    /// None if unknown, spent or expired.
    pub async fn take_console_ticket(
        &self,
        secret_hash: &str,
    ) -> Result<Option<ConsoleTicketRecord>> {
        let row = sqlx::query(
            "DELETE FROM console_tickets WHERE secret_hash = $1 \
             RETURNING secret_hash, vm_id, vm_name, console, caller, expires_at",
        )
        .bind(secret_hash)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let t = ConsoleTicketRecord {
            secret_hash: r.try_get("secret_hash")?,
            vm_id: r.try_get("vm_id")?,
            vm_name: r.try_get("vm_name")?,
            console: r.try_get("console")?,
            caller: r.try_get("caller")?,
            expires_at: Timestamp::parse(&r.try_get::<String, _>("expires_at")?)?,
        };
        Ok((t.expires_at > now()).then_some(t))
    }

    /// Takes VM `vm_id` for controller `owner` (this acquisition is `token`), if no other
    /// live controller holds it. True when taken.
    pub async fn try_lock_vm(&self, vm_id: &str, owner: &str, token: &str) -> Result<bool> {
        let n = self
            .execute(
                "INSERT INTO vm_locks (vm_id, owner, token, taken_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (vm_id) DO UPDATE SET owner = excluded.owner, \
                 token = excluded.token, taken_at = excluded.taken_at \
                 WHERE vm_locks.owner = excluded.owner OR vm_locks.owner NOT IN \
                 (SELECT id FROM controllers WHERE last_seen > $5)",
                binds![vm_id, owner, token, now(), Self::stale_before()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Gives back one acquisition of a VM's lock.
    pub async fn unlock_vm(&self, vm_id: &str, token: &str) -> Result<()> {
        self.execute(
            "DELETE FROM vm_locks WHERE vm_id = $1 AND token = $2",
            binds![vm_id, token],
        )
        .await?;
        Ok(())
    }

    /// Sets the controller that runs a migration (its journal row).
    pub async fn set_move_owner(&self, id: &str, owner: &str) -> Result<()> {
        self.execute(
            "UPDATE vm_moves SET owner = $2 WHERE id = $1",
            binds![id, owner],
        )
        .await?;
        Ok(())
    }

    /// Whether a VM is being migrated (by any controller).
    pub async fn is_moving(&self, vm_id: &str) -> Result<bool> {
        let rows = sqlx::query("SELECT id FROM vm_moves WHERE vm_id = $1")
            .bind(vm_id.to_string())
            .fetch_all(self.pool())
            .await?;
        Ok(!rows.is_empty())
    }
}
