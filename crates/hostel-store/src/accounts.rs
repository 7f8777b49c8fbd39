//! Users, groups, API tokens, SSH keys and the audit trail.

use crate::row::{binds, Cols, FromRow, Record, Value};
use crate::{Store, Timestamp};
use anyhow::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub name: String,
    /// Argon2 PHC string; none: the user cannot log in with a password.
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// SHA-256 (hex) of the token's secret; the secret itself is shown once and not kept.
    pub secret_hash: String,
    pub read_only: bool,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    /// Set for a browser session (the web UI's login): the browser and address it was
    /// made from. A session also ends after it has been idle too long.
    pub session: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SshKeyRecord {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub public_key: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub at: Timestamp,
    pub user_name: Option<String>,
    pub source: String,
    pub action: String,
    pub target: Option<String>,
    pub vm_id: Option<String>,
    /// The parameters that matter, as a JSON object.
    pub params: Option<String>,
    /// `ok`, `denied` or `failed`.
    pub result: String,
    pub error: Option<String>,
}

/// What `audit` returns.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub vm_ids: Option<Vec<String>>,
    pub user_name: Option<String>,
    /// Entries whose time's text sorts at or after this: an RFC 3339 UTC time, or a
    /// prefix of one (`2026-11-22`), as `hostel audit --since` has always taken it.
    pub since: Option<String>,
    pub limit: u32,
}

impl FromRow for UserRecord {
    const TABLE: &'static str = "users";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(UserRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            password_hash: c.opt_text("password_hash")?,
            is_admin: c.flag("is_admin")?,
            created_at: c.time("created_at")?,
        })
    }
}

impl Record for UserRecord {
    const COLS: &'static str = "id, name, password_hash, is_admin, created_at";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.name,
            &self.password_hash,
            self.is_admin,
            self.created_at,
        ]
    }
}

impl FromRow for GroupRecord {
    const TABLE: &'static str = "user_groups";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(GroupRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            created_at: c.time("created_at")?,
        })
    }
}

impl Record for GroupRecord {
    const COLS: &'static str = "id, name, created_at";
    fn values(&self) -> Vec<Value<'_>> {
        binds![&self.id, &self.name, self.created_at]
    }
}

impl FromRow for TokenRecord {
    const TABLE: &'static str = "tokens";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(TokenRecord {
            id: c.text("id")?,
            user_id: c.text("user_id")?,
            name: c.text("name")?,
            secret_hash: c.text("secret_hash")?,
            read_only: c.flag("read_only")?,
            expires_at: c.opt_time("expires_at")?,
            revoked_at: c.opt_time("revoked_at")?,
            created_at: c.time("created_at")?,
            last_used_at: c.opt_time("last_used_at")?,
            session: c.opt_text("session")?,
        })
    }
}

impl Record for TokenRecord {
    const COLS: &'static str = "id, user_id, name, secret_hash, read_only, expires_at, \
        revoked_at, created_at, last_used_at, session";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.user_id,
            &self.name,
            &self.secret_hash,
            self.read_only,
            self.expires_at,
            self.revoked_at,
            self.created_at,
            self.last_used_at,
            &self.session,
        ]
    }
}

impl FromRow for SshKeyRecord {
    const TABLE: &'static str = "ssh_keys";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(SshKeyRecord {
            id: c.text("id")?,
            user_id: c.text("user_id")?,
            name: c.text("name")?,
            public_key: c.text("public_key")?,
            created_at: c.time("created_at")?,
        })
    }
}

impl Record for SshKeyRecord {
    const COLS: &'static str = "id, user_id, name, public_key, created_at";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.user_id,
            &self.name,
            &self.public_key,
            self.created_at,
        ]
    }
}

impl FromRow for AuditRecord {
    const TABLE: &'static str = "audit";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(AuditRecord {
            id: c.text("id")?,
            at: c.time("at")?,
            user_name: c.opt_text("user_name")?,
            source: c.text("source")?,
            action: c.text("action")?,
            target: c.opt_text("target")?,
            vm_id: c.opt_text("vm_id")?,
            result: c.text("result")?,
            error: c.opt_text("error")?,
            params: c.opt_text("params")?,
        })
    }
}

impl Record for AuditRecord {
    const COLS: &'static str =
        "id, at, user_name, source, action, target, vm_id, result, error, params";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            self.at,
            &self.user_name,
            &self.source,
            &self.action,
            &self.target,
            &self.vm_id,
            &self.result,
            &self.error,
            &self.params,
        ]
    }
}

/// The `SELECT` of a record's columns from its table, then `rest`.
fn select<T: Record>(rest: &str) -> String {
    format!("SELECT {} FROM {} {rest}", T::COLS, T::TABLE)
}

impl Store {
    // ---- users ----

    pub async fn insert_user(&self, u: &UserRecord) -> Result<()> {
        self.insert(u).await
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        self.fetch_optional(&select::<UserRecord>("WHERE name = $1"), binds![name])
            .await
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>> {
        self.fetch_optional(&select::<UserRecord>("WHERE id = $1"), binds![id])
            .await
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        self.fetch_all(&select::<UserRecord>("ORDER BY name"), binds![])
            .await
    }

    pub async fn set_user_password(&self, id: &str, hash: &str) -> Result<()> {
        self.execute(
            "UPDATE users SET password_hash = $1 WHERE id = $2",
            binds![hash, id],
        )
        .await?;
        Ok(())
    }

    pub async fn set_user_admin(&self, id: &str, admin: bool) -> Result<()> {
        self.execute(
            "UPDATE users SET is_admin = $1 WHERE id = $2",
            binds![admin, id],
        )
        .await?;
        Ok(())
    }

    /// Deletes a user with their tokens, keys and memberships, unless they own VMs;
    /// returns the names of those VMs otherwise.
    pub async fn delete_user_if_unused(&self, id: &str) -> Result<Vec<String>> {
        self.delete_if_unused(
            "users",
            "SELECT name FROM vms WHERE owner_user_id = $1 ORDER BY name",
            &[
                "DELETE FROM tokens WHERE user_id = $1",
                "DELETE FROM ssh_keys WHERE user_id = $1",
                "DELETE FROM group_members WHERE user_id = $1",
                "DELETE FROM quotas WHERE owner = 'user:' || $1",
                "DELETE FROM owner_limits WHERE owner = 'user:' || $1",
            ],
            id,
        )
        .await
    }

    // ---- groups ----

    pub async fn insert_group(&self, g: &GroupRecord) -> Result<()> {
        self.insert(g).await
    }

    pub async fn group_by_name(&self, name: &str) -> Result<Option<GroupRecord>> {
        self.fetch_optional(&select::<GroupRecord>("WHERE name = $1"), binds![name])
            .await
    }

    pub async fn group_by_id(&self, id: &str) -> Result<Option<GroupRecord>> {
        self.fetch_optional(&select::<GroupRecord>("WHERE id = $1"), binds![id])
            .await
    }

    pub async fn groups(&self) -> Result<Vec<GroupRecord>> {
        self.fetch_all(&select::<GroupRecord>("ORDER BY name"), binds![])
            .await
    }

    /// Ids of the groups `user_id` belongs to.
    pub async fn group_ids_of(&self, user_id: &str) -> Result<Vec<String>> {
        self.fetch_all(
            "SELECT group_id FROM group_members WHERE user_id = $1",
            binds![user_id],
        )
        .await
    }

    /// Names of a group's members.
    pub async fn members_of(&self, group_id: &str) -> Result<Vec<String>> {
        self.fetch_all(
            "SELECT u.name FROM users u JOIN group_members m ON m.user_id = u.id \
             WHERE m.group_id = $1 ORDER BY u.name",
            binds![group_id],
        )
        .await
    }

    pub async fn add_member(&self, group_id: &str, user_id: &str) -> Result<()> {
        self.execute(
            "INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)",
            binds![group_id, user_id],
        )
        .await?;
        Ok(())
    }

    pub async fn remove_member(&self, group_id: &str, user_id: &str) -> Result<bool> {
        let n = self
            .execute(
                "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
                binds![group_id, user_id],
            )
            .await?;
        Ok(n > 0)
    }

    /// Deletes a group unless VMs are owned or administered by it; returns their names.
    pub async fn delete_group_if_unused(&self, id: &str) -> Result<Vec<String>> {
        self.delete_if_unused(
            "user_groups",
            "SELECT name FROM vms WHERE owner_group_id = $1 OR admin_group_id = $1 ORDER BY name",
            &[
                "DELETE FROM group_members WHERE group_id = $1",
                "DELETE FROM quotas WHERE owner = 'group:' || $1",
                "DELETE FROM owner_limits WHERE owner = 'group:' || $1",
            ],
            id,
        )
        .await
    }

    // ---- tokens ----

    pub async fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        self.insert(t).await
    }

    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.fetch_optional(&select::<TokenRecord>("WHERE id = $1"), binds![id])
            .await
    }

    pub async fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
        self.fetch_all(
            &select::<TokenRecord>("WHERE user_id = $1 ORDER BY name"),
            binds![user_id],
        )
        .await
    }

    pub async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<()> {
        self.execute(
            "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            binds![at, id],
        )
        .await?;
        Ok(())
    }

    pub async fn delete_token(&self, id: &str) -> Result<()> {
        self.execute("DELETE FROM tokens WHERE id = $1", binds![id])
            .await?;
        Ok(())
    }

    pub async fn touch_token(&self, id: &str, at: Timestamp) -> Result<()> {
        self.execute(
            "UPDATE tokens SET last_used_at = $1 WHERE id = $2",
            binds![at, id],
        )
        .await?;
        Ok(())
    }

    // ---- SSH keys ----

    pub async fn insert_ssh_key(&self, k: &SshKeyRecord) -> Result<()> {
        self.insert(k).await
    }

    pub async fn ssh_keys_of(&self, user_id: &str) -> Result<Vec<SshKeyRecord>> {
        self.fetch_all(
            &select::<SshKeyRecord>("WHERE user_id = $1 ORDER BY name"),
            binds![user_id],
        )
        .await
    }

    /// Every registered key: (user id, public key line).
    pub async fn all_ssh_keys(&self) -> Result<Vec<(String, String)>> {
        self.fetch_all("SELECT user_id, public_key FROM ssh_keys", binds![])
            .await
    }

    pub async fn delete_ssh_key(&self, user_id: &str, name: &str) -> Result<bool> {
        let n = self
            .execute(
                "DELETE FROM ssh_keys WHERE user_id = $1 AND name = $2",
                binds![user_id, name],
            )
            .await?;
        Ok(n > 0)
    }

    // ---- quotas ----

    /// The limits set for `owner` (`default`, `user:ID` or `group:ID`), as JSON.
    pub async fn quota(&self, owner: &str) -> Result<Option<String>> {
        self.fetch_optional(
            "SELECT limits_json FROM quotas WHERE owner = $1",
            binds![owner],
        )
        .await
    }

    pub async fn set_quota(&self, owner: &str, limits_json: &str) -> Result<()> {
        self.replace_value("quotas", ("owner", owner), "limits_json", Some(limits_json))
            .await
    }

    // ---- owners' default resource limits ----

    /// The resource limits `owner` (`default`, `user:ID` or `group:ID`) gives its VMs
    /// that have none of their own, as JSON.
    pub async fn owner_limits(&self, owner: &str) -> Result<Option<String>> {
        self.fetch_optional(
            "SELECT limits FROM owner_limits WHERE owner = $1",
            binds![owner],
        )
        .await
    }

    /// Every owner's default limits: (owner, JSON).
    pub async fn all_owner_limits(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT owner, limits FROM owner_limits ORDER BY owner")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    sqlx::Row::try_get(r, "owner")?,
                    sqlx::Row::try_get(r, "limits")?,
                ))
            })
            .collect()
    }

    /// Sets `owner`'s default limits, or removes them (none).
    pub async fn set_owner_limits(&self, owner: &str, limits: Option<&str>) -> Result<()> {
        self.replace_value("owner_limits", ("owner", owner), "limits", limits)
            .await
    }

    // ---- audit ----

    pub async fn insert_audit(&self, a: &AuditRecord) -> Result<()> {
        self.insert(a).await
    }

    /// Audit entries, newest last, filtered in SQL.
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut sql = select::<AuditRecord>("WHERE 1 = 1");
        let mut binds: Vec<Value> = Vec::new();
        if let Some(u) = &f.user_name {
            binds.push(u.into());
            sql += &format!(" AND user_name = ${}", binds.len());
        }
        if let Some(s) = &f.since {
            binds.push(s.into());
            sql += &format!(" AND at >= ${}", binds.len());
        }
        if let Some(ids) = &f.vm_ids {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let from = binds.len() + 1;
            binds.extend(ids.iter().map(Value::from));
            sql += &format!(" AND vm_id IN ({})", crate::placeholders(from, ids.len()));
        }
        let limit = if f.limit == 0 { 1000 } else { f.limit };
        sql += &format!(" ORDER BY at DESC, id DESC LIMIT {limit}");
        let mut out: Vec<AuditRecord> = self.fetch_all(&sql, binds).await?;
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` entries made before `before` (compared as times), from the oldest
    /// seconds (within one second in no set order: stored text sorts `…05.5Z` before
    /// `…05Z`), oldest first: what a retention policy removes next.
    pub async fn audit_before(&self, before: Timestamp, limit: u32) -> Result<Vec<AuditRecord>> {
        // Text that sorts at or after every stored time up to `before`; exact below.
        let sql = select::<AuditRecord>(&format!(
            "WHERE at <= $1 ORDER BY at, id LIMIT {}",
            limit.max(1)
        ));
        let mut out: Vec<AuditRecord> = self
            .fetch_all(&sql, binds![before.upper_bound_text()])
            .await?;
        out.retain(|a| a.at < before);
        out.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Deletes the audit entries with these ids; gives how many there were.
    pub async fn delete_audit(&self, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "DELETE FROM audit WHERE id IN ({})",
            crate::placeholders(1, ids.len())
        );
        self.execute(&sql, ids.iter().map(Value::from).collect())
            .await
    }

    /// How many audit entries there are.
    pub async fn audit_count(&self) -> Result<u64> {
        let n: crate::row::Count = self
            .fetch_one("SELECT CAST(COUNT(*) AS BIGINT) FROM audit", binds![])
            .await?;
        Ok(n.0)
    }
}
