//! What `/metrics` reads of the records: counts grouped by the database (so a scrape of
//! 10,000 VMs reads a few rows, not every record), and each VM's labels.

use crate::Store;
use anyhow::Result;
use sqlx::Row;

/// A VM's labels in `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmLabels {
    pub id: String,
    pub name: String,
    /// `user:NAME` or `group:NAME`; empty if it has none.
    pub owner: String,
}

/// A VM's owner as the API names it, `user:NAME` or `group:NAME` (the group when it has
/// one); empty if it has none.
pub fn owner_label(user: Option<String>, group: Option<String>) -> String {
    match (user, group) {
        (_, Some(g)) => format!("group:{g}"),
        (Some(u), None) => format!("user:{u}"),
        (None, None) => String::new(),
    }
}

impl Store {
    /// Rows of `table` counted by two of its text columns: (a, b, count).
    async fn count_by(&self, table: &str, a: &str, b: &str) -> Result<Vec<(String, String, u64)>> {
        let sql = format!(
            "SELECT {a} AS a, {b} AS b, COUNT(*) AS n FROM {table} GROUP BY {a}, {b} ORDER BY {a}, {b}"
        );
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("a")?,
                    r.try_get::<String, _>("b")?,
                    r.try_get::<i64, _>("n")?.max(0) as u64,
                ))
            })
            .collect()
    }

    /// Tasks by kind and state.
    pub async fn task_counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.count_by("tasks", "kind", "state").await
    }

    /// Journaled operations by kind and state.
    pub async fn operation_counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.count_by("operations", "kind", "state").await
    }

    /// VMs by host (empty: none) and state.
    pub async fn vm_counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.count_by("vms", "COALESCE(host_id, '')", "state").await
    }

    /// Every VM's name and owner, for the labels of its usage counters.
    pub async fn vm_labels(&self) -> Result<Vec<VmLabels>> {
        let rows = sqlx::query(
            "SELECT v.id AS id, v.name AS name, u.name AS uname, g.name AS gname FROM vms v \
             LEFT JOIN users u ON u.id = v.owner_user_id \
             LEFT JOIN user_groups g ON g.id = v.owner_group_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let user: Option<String> = r.try_get("uname")?;
                let group: Option<String> = r.try_get("gname")?;
                Ok(VmLabels {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    owner: owner_label(user, group),
                })
            })
            .collect()
    }
}
