//! Users, groups, API tokens, SSH keys and the audit trail.

use crate::{opt_str, u64_of, Store};
use anyhow::Result;
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub name: String,
    /// Argon2 PHC string; none: the user cannot log in with a password.
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// SHA-256 (hex) of the token's secret; the secret itself is shown once and not kept.
    pub secret_hash: String,
    pub read_only: bool,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SshKeyRecord {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub public_key: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub at: String,
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
    pub since: Option<String>,
    pub limit: u32,
}

const USER_COLS: &str = "id, name, password_hash, is_admin, created_at";
const TOKEN_COLS: &str =
    "id, user_id, name, secret_hash, read_only, expires_at, revoked_at, created_at, last_used_at";
const AUDIT_COLS: &str = "id, at, user_name, source, action, target, vm_id, result, error, params";

fn user_of(r: &AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        password_hash: opt_str(r, "password_hash")?,
        is_admin: u64_of(r, "is_admin")? != 0,
        created_at: r.try_get("created_at")?,
    })
}

fn group_of(r: &AnyRow) -> Result<GroupRecord> {
    Ok(GroupRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
    })
}

fn token_of(r: &AnyRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        secret_hash: r.try_get("secret_hash")?,
        read_only: u64_of(r, "read_only")? != 0,
        expires_at: opt_str(r, "expires_at")?,
        revoked_at: opt_str(r, "revoked_at")?,
        created_at: r.try_get("created_at")?,
        last_used_at: opt_str(r, "last_used_at")?,
    })
}

fn key_of(r: &AnyRow) -> Result<SshKeyRecord> {
    Ok(SshKeyRecord {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        public_key: r.try_get("public_key")?,
        created_at: r.try_get("created_at")?,
    })
}

fn audit_of(r: &AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        user_name: opt_str(r, "user_name")?,
        source: r.try_get("source")?,
        action: r.try_get("action")?,
        target: opt_str(r, "target")?,
        vm_id: opt_str(r, "vm_id")?,
        result: r.try_get("result")?,
        error: opt_str(r, "error")?,
        params: opt_str(r, "params")?,
    })
}

impl Store {
    // ---- users ----

    pub async fn insert_user(&self, u: &UserRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(&u.id)
        .bind(&u.name)
        .bind(&u.password_hash)
        .bind(u.is_admin as i64)
        .bind(&u.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_of).transpose()
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_of).transpose()
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_of).collect()
    }

    pub async fn set_user_password(&self, id: &str, hash: &str) -> Result<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_user_admin(&self, id: &str, admin: bool) -> Result<()> {
        sqlx::query("UPDATE users SET is_admin = $1 WHERE id = $2")
            .bind(admin as i64)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a user with their tokens, keys and memberships, unless they own VMs;
    /// returns the names of those VMs otherwise.
    pub async fn delete_user_if_unused(&self, id: &str) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let owned: Vec<String> =
            sqlx::query("SELECT name FROM vms WHERE owner_user_id = $1 ORDER BY name")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("name"))
                .collect::<Result<_, _>>()?;
        if owned.is_empty() {
            for sql in [
                "DELETE FROM tokens WHERE user_id = $1",
                "DELETE FROM ssh_keys WHERE user_id = $1",
                "DELETE FROM group_members WHERE user_id = $1",
                "DELETE FROM users WHERE id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(owned)
    }

    // ---- groups ----

    pub async fn insert_group(&self, g: &GroupRecord) -> Result<()> {
        sqlx::query("INSERT INTO user_groups (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&g.id)
            .bind(&g.name)
            .bind(&g.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn group_by_name(&self, name: &str) -> Result<Option<GroupRecord>> {
        let row = sqlx::query("SELECT id, name, created_at FROM user_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(group_of).transpose()
    }

    pub async fn group_by_id(&self, id: &str) -> Result<Option<GroupRecord>> {
        let row = sqlx::query("SELECT id, name, created_at FROM user_groups WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(group_of).transpose()
    }

    pub async fn groups(&self) -> Result<Vec<GroupRecord>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM user_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(group_of).collect()
    }

    /// Ids of the groups `user_id` belongs to.
    pub async fn group_ids_of(&self, user_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT group_id FROM group_members WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("group_id")?))
            .collect()
    }

    /// Names of a group's members.
    pub async fn members_of(&self, group_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT u.name FROM users u JOIN group_members m ON m.user_id = u.id \
             WHERE m.group_id = $1 ORDER BY u.name",
        )
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("name")?))
            .collect()
    }

    pub async fn add_member(&self, group_id: &str, user_id: &str) -> Result<()> {
        sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)")
            .bind(group_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn remove_member(&self, group_id: &str, user_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
            .bind(group_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes a group unless VMs are owned or administered by it; returns their names.
    pub async fn delete_group_if_unused(&self, id: &str) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let used: Vec<String> = sqlx::query(
            "SELECT name FROM vms WHERE owner_group_id = $1 OR admin_group_id = $1 ORDER BY name",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("name"))
        .collect::<Result<_, _>>()?;
        if used.is_empty() {
            for sql in [
                "DELETE FROM group_members WHERE group_id = $1",
                "DELETE FROM user_groups WHERE id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(used)
    }

    // ---- tokens ----

    pub async fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&t.id)
        .bind(&t.user_id)
        .bind(&t.name)
        .bind(&t.secret_hash)
        .bind(t.read_only as i64)
        .bind(&t.expires_at)
        .bind(&t.revoked_at)
        .bind(&t.created_at)
        .bind(&t.last_used_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_of).transpose()
    }

    pub async fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM tokens WHERE user_id = $1 ORDER BY name"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_of).collect()
    }

    pub async fn revoke_token(&self, id: &str, at: &str) -> Result<()> {
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_token(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn touch_token(&self, id: &str, at: &str) -> Result<()> {
        sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- SSH keys ----

    pub async fn insert_ssh_key(&self, k: &SshKeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO ssh_keys (id, user_id, name, public_key, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&k.id)
        .bind(&k.user_id)
        .bind(&k.name)
        .bind(&k.public_key)
        .bind(&k.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn ssh_keys_of(&self, user_id: &str) -> Result<Vec<SshKeyRecord>> {
        let rows = sqlx::query(
            "SELECT id, user_id, name, public_key, created_at FROM ssh_keys \
             WHERE user_id = $1 ORDER BY name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_of).collect()
    }

    /// Every registered key: (user id, public key line).
    pub async fn all_ssh_keys(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT user_id, public_key FROM ssh_keys")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("user_id")?, r.try_get("public_key")?)))
            .collect()
    }

    pub async fn delete_ssh_key(&self, user_id: &str, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM ssh_keys WHERE user_id = $1 AND name = $2")
            .bind(user_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- ownership ----

    pub async fn set_vm_owner(
        &self,
        vm_id: &str,
        owner_user_id: Option<&str>,
        owner_group_id: Option<&str>,
        admin_group_id: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE vms SET owner_user_id = $1, owner_group_id = $2, admin_group_id = $3 \
             WHERE id = $4",
        )
        .bind(owner_user_id)
        .bind(owner_group_id)
        .bind(admin_group_id)
        .bind(vm_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- quotas ----

    /// The limits set for `owner` (`default`, `user:ID` or `group:ID`), as JSON.
    pub async fn quota(&self, owner: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT limits_json FROM quotas WHERE owner = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<String, _>("limits_json"))
            .transpose()?)
    }

    pub async fn set_quota(&self, owner: &str, limits_json: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM quotas WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO quotas (owner, limits_json) VALUES ($1, $2)")
            .bind(owner)
            .bind(limits_json)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_vm_lease(&self, vm_id: &str, expires_at: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE vms SET lease_expires_at = $1 WHERE id = $2")
            .bind(expires_at)
            .bind(vm_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- audit ----

    pub async fn insert_audit(&self, a: &AuditRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO audit ({AUDIT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&a.id)
        .bind(&a.at)
        .bind(&a.user_name)
        .bind(&a.source)
        .bind(&a.action)
        .bind(&a.target)
        .bind(&a.vm_id)
        .bind(&a.result)
        .bind(&a.error)
        .bind(&a.params)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Audit entries, newest last, filtered in SQL.
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut sql = format!("SELECT {AUDIT_COLS} FROM audit WHERE 1 = 1");
        let mut n = 0;
        let mut binds: Vec<String> = Vec::new();
        if let Some(u) = &f.user_name {
            n += 1;
            sql += &format!(" AND user_name = ${n}");
            binds.push(u.clone());
        }
        if let Some(s) = &f.since {
            n += 1;
            sql += &format!(" AND at >= ${n}");
            binds.push(s.clone());
        }
        if let Some(ids) = &f.vm_ids {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut ps = Vec::new();
            for id in ids {
                n += 1;
                ps.push(format!("${n}"));
                binds.push(id.clone());
            }
            sql += &format!(" AND vm_id IN ({})", ps.join(", "));
        }
        let limit = if f.limit == 0 { 1000 } else { f.limit };
        sql += &format!(" ORDER BY at DESC, id DESC LIMIT {limit}");
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut out: Vec<AuditRecord> = rows.iter().map(audit_of).collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }
}
