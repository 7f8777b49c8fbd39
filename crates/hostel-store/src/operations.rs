//! The operations journal: every operation that takes more than one step (on a host and
//! in the database) is a row here, written before its first step. It records what the
//! operation is about to do (`intent`, JSON its kind defines) and the last step done;
//! one left `running` by a crash is finished or undone at the next start, and always
//! ends `failed` with its reason or `succeeded`. It outlives the VM it was about.

use crate::row::{binds, Cols, FromRow, Record, Value};
use crate::{new_id, now, Store, Timestamp};
use anyhow::Result;
use hostel_model::TaskState;

#[derive(Debug, Clone, PartialEq)]
pub struct OperationRecord {
    pub id: String,
    /// What it does: `create`, `delete`, `start`, `disk-add`, ...
    pub kind: String,
    /// What it acts on, by name, for people (the VM's, network's or image's name).
    pub target: String,
    pub vm_id: Option<String>,
    pub host_id: Option<String>,
    /// Who asked; none for Hostel's own actors.
    pub user_id: Option<String>,
    pub state: TaskState,
    /// The last step done (empty before the first).
    pub step: String,
    /// What it is about to do, for the one who finishes or undoes it (JSON).
    pub intent: String,
    pub error: Option<String>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The controller that runs it (`cluster.rs`): when it dies, the leader settles it.
    pub owner: Option<String>,
}

impl OperationRecord {
    /// A new running operation.
    pub fn begin(kind: &str, target: &str) -> OperationRecord {
        OperationRecord {
            id: new_id("op"),
            kind: kind.into(),
            target: target.into(),
            vm_id: None,
            host_id: None,
            user_id: None,
            state: TaskState::Running,
            step: String::new(),
            intent: "{}".into(),
            error: None,
            started_at: now(),
            updated_at: now(),
            finished_at: None,
            owner: None,
        }
    }
}

impl FromRow for OperationRecord {
    const TABLE: &'static str = "operations";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(OperationRecord {
            id: c.text("id")?,
            kind: c.text("kind")?,
            target: c.text("target")?,
            vm_id: c.opt_text("vm_id")?,
            host_id: c.opt_text("host_id")?,
            user_id: c.opt_text("user_id")?,
            state: c.enumed("state")?,
            step: c.text("step")?,
            intent: c.text("intent")?,
            error: c.opt_text("error")?,
            started_at: c.time("started_at")?,
            updated_at: c.time("updated_at")?,
            finished_at: c.opt_time("finished_at")?,
            owner: c.opt_text("owner")?,
        })
    }
}

impl Record for OperationRecord {
    const COLS: &'static str = "id, kind, target, vm_id, host_id, user_id, state, step, intent, \
                                error, started_at, updated_at, finished_at, owner";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.kind,
            &self.target,
            &self.vm_id,
            &self.host_id,
            &self.user_id,
            self.state,
            &self.step,
            &self.intent,
            &self.error,
            self.started_at,
            self.updated_at,
            self.finished_at,
            &self.owner,
        ]
    }
}

/// Which operations to list.
#[derive(Debug, Clone, Default)]
pub struct OperationFilter {
    pub state: Option<TaskState>,
    /// Only those this user asked for, or that act on a VM in `vm_ids`.
    pub user_id: Option<String>,
    pub vm_ids: Option<Vec<String>>,
    pub vm_id: Option<String>,
    pub limit: u32,
}

impl Store {
    pub async fn begin_operation(&self, op: &OperationRecord) -> Result<()> {
        self.insert(op).await
    }

    /// Records a step done, and what the operation is about to do next if that changed.
    pub async fn operation_step(&self, id: &str, step: &str, intent: Option<&str>) -> Result<()> {
        match intent {
            Some(i) => {
                self.execute(
                    "UPDATE operations SET step = $2, intent = $3, updated_at = $4 WHERE id = $1",
                    binds![id, step, i, now()],
                )
                .await?
            }
            None => {
                self.execute(
                    "UPDATE operations SET step = $2, updated_at = $3 WHERE id = $1",
                    binds![id, step, now()],
                )
                .await?
            }
        };
        Ok(())
    }

    /// The VM an operation made (a create knows it only once its row is written).
    pub async fn operation_vm(&self, id: &str, vm_id: &str, host_id: &str) -> Result<()> {
        self.execute(
            "UPDATE operations SET vm_id = $2, host_id = $3, updated_at = $4 WHERE id = $1",
            binds![id, vm_id, host_id, now()],
        )
        .await?;
        Ok(())
    }

    /// Ends an operation: succeeded, or failed with its reason. Only a running one: an
    /// end recorded already (by recovery) stays.
    pub async fn finish_operation(&self, id: &str, error: Option<&str>) -> Result<()> {
        let state = if error.is_some() {
            TaskState::Failed
        } else {
            TaskState::Succeeded
        };
        self.execute(
            "UPDATE operations SET state = $2, error = $3, finished_at = $4, updated_at = $4 \
             WHERE id = $1 AND state = $5",
            binds![id, state, error, now(), TaskState::Running],
        )
        .await?;
        Ok(())
    }

    /// Gives a running operation up to whoever settles orphans (the leader): no owner,
    /// and `why` it stopped short (its host could not be reached, so what it did there is
    /// not known). It stays running until it is settled.
    pub async fn release_operation(&self, id: &str, why: &str) -> Result<()> {
        self.execute(
            "UPDATE operations SET owner = NULL, error = $2, updated_at = $3 \
             WHERE id = $1 AND state = $4",
            binds![id, why, now(), TaskState::Running],
        )
        .await?;
        Ok(())
    }

    pub async fn operation(&self, id: &str) -> Result<Option<OperationRecord>> {
        let sql = format!(
            "SELECT {} FROM operations WHERE id = $1",
            OperationRecord::COLS
        );
        self.fetch_optional(&sql, binds![id]).await
    }

    /// A VM's operations, oldest first.
    pub async fn operations(&self, vm_id: &str) -> Result<Vec<OperationRecord>> {
        self.list_operations(&OperationFilter {
            vm_id: Some(vm_id.into()),
            limit: u32::MAX,
            ..Default::default()
        })
        .await
        .map(|mut v| {
            v.reverse();
            v
        })
    }

    /// Operations still `running`: at a start, those a crash interrupted.
    pub async fn running_operations(&self) -> Result<Vec<OperationRecord>> {
        let sql = format!(
            "SELECT {} FROM operations WHERE state = $1",
            OperationRecord::COLS
        );
        let mut ops: Vec<OperationRecord> =
            self.fetch_all(&sql, binds![TaskState::Running]).await?;
        ops.sort_by_key(|o| o.started_at);
        Ok(ops)
    }

    /// Operations, newest first.
    pub async fn list_operations(&self, f: &OperationFilter) -> Result<Vec<OperationRecord>> {
        let mut sql = format!(
            "SELECT {} FROM operations WHERE ($1 = '' OR state = $1) AND ($2 = '' OR vm_id = $2)",
            OperationRecord::COLS
        );
        let by_owner = f.user_id.is_some() || f.vm_ids.is_some();
        if !by_owner {
            // Stored times sort as text but for sub-second ties: good enough to cut at.
            sql.push_str(&format!(
                " ORDER BY started_at DESC LIMIT {}",
                f.limit.min(1 << 30)
            ));
        }
        let state = f.state.map(|s| s.as_str().to_string()).unwrap_or_default();
        let vm = f.vm_id.clone().unwrap_or_default();
        let all: Vec<OperationRecord> = self.fetch_all(&sql, binds![&state, &vm]).await?;
        let mut ops: Vec<OperationRecord> = all
            .into_iter()
            .filter(|o| {
                !by_owner
                    || (f.user_id.is_some() && o.user_id == f.user_id)
                    || f.vm_ids
                        .as_ref()
                        .is_some_and(|ids| o.vm_id.as_ref().is_some_and(|id| ids.contains(id)))
            })
            .collect();
        ops.sort_by_key(|o| std::cmp::Reverse(o.started_at));
        ops.truncate(f.limit as usize);
        Ok(ops)
    }
}
