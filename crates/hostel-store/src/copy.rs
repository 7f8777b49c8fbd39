//! Copying an installation's records from one database into another, empty one
//! (`hostel db migrate-from-sqlite`, `hostel db copy`): every table, parents before the
//! rows that name them, every row as it is, in one transaction on the target, so that a
//! copy that fails leaves the target empty.

use crate::row::{query, Value};
use crate::Store;
use anyhow::{bail, Context, Result};
use sqlx::Row;

/// Every table of the schema, each after the tables its foreign keys name.
pub const TABLES: &[&str] = &[
    "hosts",
    "users",
    "user_groups",
    "group_members",
    "tokens",
    "ssh_keys",
    "images",
    "pools",
    "networks",
    "vms",
    "disks",
    "tasks",
    "operations",
    "nics",
    "port_forwards",
    "snapshots",
    "audit",
    "quotas",
    "settings",
    "image_copies",
    "vm_moves",
    "controllers",
    "vm_locks",
    "console_tickets",
    "vm_limits",
    "backup_targets",
    "backups",
    "backup_schedules",
    "owner_limits",
];

/// How a column's values are read and bound: the schema has these three kinds only.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Int,
    Real,
}

impl Store {
    /// `table`'s columns and their kinds, as this database declares them.
    async fn columns(&self, table: &str) -> Result<Vec<(String, Kind)>> {
        let sql = if self.is_sqlite() {
            "SELECT name, type FROM pragma_table_info($1) ORDER BY cid"
        } else {
            "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 \
             ORDER BY ordinal_position"
        };
        let rows = query(sql, vec![Value::from(table)])
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let ty = r.try_get::<String, _>(1)?.to_ascii_uppercase();
                let kind = if ty.contains("INT") {
                    Kind::Int
                } else if ty.contains("DOUBLE") || ty.contains("REAL") {
                    Kind::Real
                } else {
                    Kind::Text
                };
                Ok((name, kind))
            })
            .collect()
    }

    /// How many rows each table has.
    pub async fn table_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::new();
        for t in TABLES {
            let n: i64 = query(&format!("SELECT COUNT(*) FROM {t}"), vec![])
                .fetch_one(self.pool())
                .await?
                .try_get(0)?;
            out.push((*t, n.max(0) as u64));
        }
        Ok(out)
    }

    /// Copies every record into `to`, which must have none (a database just made):
    /// answers the rows copied, table by table. Both are at the same schema version
    /// (opening a store brings it to the newest).
    pub async fn copy_into(&self, to: &Store) -> Result<Vec<(&'static str, u64)>> {
        if let Some((t, n)) = to.table_counts().await?.into_iter().find(|(_, n)| *n > 0) {
            bail!(
                "the target database is not empty (table {t} has {n} row(s)): give a new, \
                 empty one"
            );
        }
        let mut tx = to.pool().begin().await?;
        let mut copied = Vec::new();
        for t in TABLES {
            let cols = to.columns(t).await?;
            let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
            let list = names.join(", ");
            // A backup names its parent, always an older one: parents first.
            let order = if *t == "backups" {
                " ORDER BY created_at"
            } else {
                ""
            };
            let rows = query(&format!("SELECT {list} FROM {t}{order}"), vec![])
                .fetch_all(self.pool())
                .await
                .with_context(|| format!("reading table {t}"))?;
            let insert = format!(
                "INSERT INTO {t} ({list}) VALUES ({})",
                crate::placeholders(1, cols.len())
            );
            for r in &rows {
                let mut binds = Vec::with_capacity(cols.len());
                for (i, (_, kind)) in cols.iter().enumerate() {
                    binds.push(match kind {
                        Kind::Int => Value::Int(r.try_get::<Option<i64>, _>(i)?),
                        Kind::Real => Value::Real(r.try_get::<f64, _>(i)?),
                        Kind::Text => Value::Text(
                            r.try_get::<Option<String>, _>(i)?
                                .map(std::borrow::Cow::Owned),
                        ),
                    });
                }
                query(&insert, binds)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("copying a row of table {t}"))?;
            }
            copied.push((*t, rows.len() as u64));
        }
        tx.commit().await?;
        Ok(copied)
    }

    /// Every table's rows as text, in a stable order: what a copy must keep.
    pub async fn dump(&self) -> Result<Vec<(&'static str, Vec<Vec<String>>)>> {
        let mut out = Vec::new();
        for t in TABLES {
            let cols = self.columns(t).await?;
            let list: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
            let rows = query(&format!("SELECT {} FROM {t}", list.join(", ")), vec![])
                .fetch_all(self.pool())
                .await?;
            let mut text: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    cols.iter()
                        .enumerate()
                        .map(|(i, (_, kind))| {
                            Ok(match kind {
                                Kind::Int => format!("{:?}", r.try_get::<Option<i64>, _>(i)?),
                                Kind::Real => format!("{:?}", r.try_get::<f64, _>(i)?),
                                Kind::Text => format!("{:?}", r.try_get::<Option<String>, _>(i)?),
                            })
                        })
                        .collect::<Result<Vec<String>>>()
                })
                .collect::<Result<_>>()?;
            text.sort();
            out.push((*t, text));
        }
        Ok(out)
    }

    /// The tables this database has (without the migrations' own).
    pub async fn table_names(&self) -> Result<Vec<String>> {
        let sql = if self.is_sqlite() {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        } else {
            "SELECT table_name::TEXT FROM information_schema.tables \
             WHERE table_schema = current_schema()"
        };
        let mut names: Vec<String> = query(sql, vec![])
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?;
        names.retain(|n| n != "schema_migrations");
        names.sort();
        Ok(names)
    }
}
