//! Settings admins change at run time (the audit trail's retention), by name, as text.

use crate::row::{binds, execute_on};
use crate::Store;
use anyhow::Result;

impl Store {
    /// The value of setting `name`, if it was ever set.
    pub async fn setting(&self, name: &str) -> Result<Option<String>> {
        self.fetch_optional("SELECT value FROM settings WHERE name = $1", binds![name])
            .await
    }

    /// Sets `name` to `value`; none removes it (back to the default).
    pub async fn set_setting(&self, name: &str, value: Option<&str>) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        execute_on(
            &mut tx,
            "DELETE FROM settings WHERE name = $1",
            binds![name],
        )
        .await?;
        if let Some(value) = value {
            execute_on(
                &mut tx,
                "INSERT INTO settings (name, value) VALUES ($1, $2)",
                binds![name, value],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
