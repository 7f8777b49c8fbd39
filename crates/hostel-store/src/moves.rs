//! Migrations under way, one row each: the journal a migration keeps of its steps, so
//! that after a crash recovery knows which VM was moving where, with which new disk
//! files, and whether the database already says it arrived. A row also holds the VM's
//! memory on its target host (placement counts it) until the migration ends.

use crate::row::{binds, execute_on, Cols, FromRow, Record, Value};
use crate::{now, Store, Timestamp};
use anyhow::Result;
use hostel_model::VmState;

#[derive(Debug, Clone, PartialEq)]
pub struct MoveRecord {
    /// The migration's task id.
    pub id: String,
    pub vm_id: String,
    pub source: String,
    pub target: String,
    /// The memory held on the target meanwhile.
    pub memory_mib: u64,
    /// `prepare` (target disks and QEMU), `storage`, `memory`, `switchover` (on the
    /// source), `commit` (QEMU completed; the database is written next), `cleanup` (the
    /// database says the target: the source's QEMU and files go).
    pub step: String,
    /// The guest ran (not paused) when the migration began.
    pub was_running: bool,
    /// The VM's disks as the migration moves them, as JSON (the controller's to read):
    /// each disk's record before and its new file on the target.
    pub disks: String,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    /// The controller that runs it (`cluster.rs`): when it dies, the leader settles it.
    pub owner: Option<String>,
}

impl FromRow for MoveRecord {
    const TABLE: &'static str = "vm_moves";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(MoveRecord {
            id: c.text("id")?,
            vm_id: c.text("vm_id")?,
            source: c.text("source")?,
            target: c.text("target")?,
            memory_mib: c.int("memory_mib")?,
            step: c.text("step")?,
            was_running: c.flag("was_running")?,
            disks: c.text("disks")?,
            started_at: c.time("started_at")?,
            updated_at: c.time("updated_at")?,
            owner: c.opt_text("owner")?,
        })
    }
}

impl Record for MoveRecord {
    const COLS: &'static str =
        "id, vm_id, source, target, memory_mib, step, was_running, disks, started_at, updated_at, \
         owner";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.vm_id,
            &self.source,
            &self.target,
            self.memory_mib,
            &self.step,
            self.was_running,
            &self.disks,
            self.started_at,
            self.updated_at,
            &self.owner,
        ]
    }
}

impl Store {
    /// Records a migration that begins; refused if the VM is moving already.
    pub async fn insert_move(&self, m: &MoveRecord) -> Result<()> {
        self.insert(m).await
    }

    /// Every migration not ended, oldest first.
    pub async fn moves(&self) -> Result<Vec<MoveRecord>> {
        let sql = format!(
            "SELECT {} FROM vm_moves ORDER BY started_at, id",
            MoveRecord::COLS
        );
        self.fetch_all(&sql, vec![]).await
    }

    /// One migration's row, if it has not ended.
    pub async fn move_by_id(&self, id: &str) -> Result<Option<MoveRecord>> {
        let sql = format!("SELECT {} FROM vm_moves WHERE id = $1", MoveRecord::COLS);
        self.fetch_optional(&sql, binds![id]).await
    }

    pub async fn set_move_step(&self, id: &str, step: &str) -> Result<()> {
        self.execute(
            "UPDATE vm_moves SET step = $2, updated_at = $3 WHERE id = $1",
            binds![id, step, now()],
        )
        .await?;
        Ok(())
    }

    pub async fn set_move_disks(&self, id: &str, disks: &str) -> Result<()> {
        self.execute(
            "UPDATE vm_moves SET disks = $2, updated_at = $3 WHERE id = $1",
            binds![id, disks, now()],
        )
        .await?;
        Ok(())
    }

    /// The switch-over happened: at once, the VM is on the target (in `state`, QEMU
    /// `pid`), each moved disk (`id`, new path, format) is its file there, and the
    /// migration goes on to its cleanup.
    pub async fn commit_move(
        &self,
        m: &MoveRecord,
        state: VmState,
        pid: Option<u32>,
        moved: &[(String, String, String)],
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let at = now();
        execute_on(
            &mut tx,
            "UPDATE vms SET host_id = $2, state = $3, pid = $4, state_reason = NULL, \
             updated_at = $5 WHERE id = $1",
            binds![m.vm_id.as_str(), m.target.as_str(), state, pid, at],
        )
        .await?;
        for (id, path, format) in moved {
            execute_on(
                &mut tx,
                "UPDATE disks SET path = $2, format = $3, pool_id = NULL WHERE id = $1",
                binds![id.as_str(), path.as_str(), format.as_str()],
            )
            .await?;
        }
        execute_on(
            &mut tx,
            "UPDATE vm_moves SET step = 'cleanup', updated_at = $2 WHERE id = $1",
            binds![m.id.as_str(), at],
        )
        .await?;
        tx.commit().await?;
        self.vm_changed(&m.vm_id);
        Ok(())
    }

    pub async fn delete_move(&self, id: &str) -> Result<()> {
        self.execute("DELETE FROM vm_moves WHERE id = $1", binds![id])
            .await?;
        Ok(())
    }
}
