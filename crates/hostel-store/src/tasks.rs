//! Background tasks (image builds); the operations journal is `operations.rs`.

use crate::row::{binds, Cols, FromRow, Record, Value};
use crate::{now, Store, Timestamp};
use anyhow::Result;
use hostel_model::TaskState;

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub state: TaskState,
    pub progress: f64,
    pub message: String,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The id of the user who started it; none for Hostel's own actors (and tasks
    /// recorded before creators were).
    pub created_by: Option<String>,
    /// The controller that runs it (`cluster.rs`): when that one dies, the leader fails
    /// the task (`fail_orphan_tasks`).
    pub owner: Option<String>,
}

impl FromRow for TaskRecord {
    const TABLE: &'static str = "tasks";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(TaskRecord {
            id: c.text("id")?,
            kind: c.text("kind")?,
            target: c.text("target")?,
            state: c.enumed("state")?,
            progress: c.real("progress")?,
            message: c.text("message")?,
            error: c.opt_text("error")?,
            created_at: c.time("created_at")?,
            updated_at: c.time("updated_at")?,
            created_by: c.opt_text("created_by")?,
            owner: c.opt_text("owner")?,
        })
    }
}

impl Record for TaskRecord {
    const COLS: &'static str =
        "id, kind, target, state, progress, message, error, created_at, updated_at, created_by, \
                                owner";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.kind,
            &self.target,
            self.state,
            self.progress,
            &self.message,
            &self.error,
            self.created_at,
            self.updated_at,
            &self.created_by,
            &self.owner,
        ]
    }
}

impl Store {
    pub async fn insert_task(&self, t: &TaskRecord) -> Result<()> {
        self.insert(t).await
    }

    pub async fn update_task(
        &self,
        id: &str,
        state: TaskState,
        progress: f64,
        message: &str,
        error: Option<&str>,
    ) -> Result<()> {
        self.execute(
            "UPDATE tasks SET state = $2, progress = $3, message = $4, error = $5, \
             updated_at = $6 WHERE id = $1",
            binds![id, state, progress, message, error, now()],
        )
        .await?;
        Ok(())
    }

    pub async fn task(&self, id: &str) -> Result<Option<TaskRecord>> {
        let sql = format!("SELECT {} FROM tasks WHERE id = $1", TaskRecord::COLS);
        self.fetch_optional(&sql, binds![id]).await
    }

    /// Every task, newest first.
    pub async fn tasks(&self) -> Result<Vec<TaskRecord>> {
        let sql = format!(
            "SELECT {} FROM tasks ORDER BY created_at DESC",
            TaskRecord::COLS
        );
        let mut tasks: Vec<TaskRecord> = self.fetch_all(&sql, binds![]).await?;
        // Stored times sort as text, which puts "…:05Z" after "…:05.5Z": order by time.
        tasks.sort_by_key(|t| std::cmp::Reverse(t.created_at));
        Ok(tasks)
    }

    /// Marks tasks that were running when the daemon stopped as failed; not a
    /// migration's, which its journal row (`vm_moves`) lets recovery finish.
    pub async fn fail_interrupted_tasks(&self) -> Result<u64> {
        self.execute(
            "UPDATE tasks SET state = $2, error = 'interrupted: the daemon stopped while \
             the task ran', updated_at = $1 WHERE state = $3 \
             AND id NOT IN (SELECT id FROM vm_moves)",
            binds![now(), TaskState::Failed, TaskState::Running],
        )
        .await
    }

    /// Fails the running tasks of controllers no longer alive (none of `alive`), or of
    /// none: a task runs in its controller's process and ends with it. Not a
    /// migration's, which its journal row lets the leader finish.
    pub async fn fail_orphan_tasks(&self, alive: &[String]) -> Result<u64> {
        let running: Vec<TaskRecord> = self
            .fetch_all(
                &format!(
                    "SELECT {} FROM tasks WHERE state = $1 AND id NOT IN (SELECT id FROM vm_moves)",
                    TaskRecord::COLS
                ),
                binds![TaskState::Running],
            )
            .await?;
        let mut n = 0;
        for t in running {
            if t.owner.as_ref().is_some_and(|o| alive.contains(o)) {
                continue;
            }
            let why = format!(
                "interrupted: its controller{} stopped while the task ran",
                t.owner.map(|o| format!(" {o}")).unwrap_or_default()
            );
            n += self
                .execute(
                    "UPDATE tasks SET state = $2, error = $3, updated_at = $4 \
                     WHERE id = $1 AND state = $5",
                    binds![&t.id, TaskState::Failed, why, now(), TaskState::Running],
                )
                .await?;
        }
        Ok(n)
    }
}
