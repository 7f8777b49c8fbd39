//! How every migration ends, whatever died when: from its journal row (`vm_moves`) and
//! what both hosts' QEMU say (`GetMigration`), with exactly one copy of the VM running
//! and the database saying where.
//!
//! - The database says the target (step `cleanup`): the source's QEMU and old disk
//!   files go.
//! - Else, the switch-over happened if the target's QEMU has the VM (it left
//!   `inmigrate`, which only a QEMU that received all of it does): the move is
//!   committed (the VM on the target, its disks the new files), then cleaned up as
//!   above.
//! - Else it did not: the source gives the migration up (the guest runs on if it ran;
//!   if the target's QEMU died after the source sent everything, the source's QEMU,
//!   the only copy left, takes its disks back and runs), the target's QEMU and new disk
//!   files go, and the VM stays where the database says.
//!
//! A controller that starts with rows left holds their VMs (no events written, their
//! memory held on the target) and settles each once both hosts' agents answer.

use crate::error::Error;
use crate::Controller;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_model::VmState;
use hostel_store::MoveRecord;
use std::sync::Arc;
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

/// One disk of a migrating VM as the journal keeps it: its record as it was (on the
/// source), and its new file on the target once made.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct MovedDisk {
    /// Its record as it was (on the source).
    #[serde(flatten)]
    pub disk: hostel_store::DiskRecord,
    pub new_path: Option<String>,
    pub new_format: Option<String>,
}

impl MovedDisk {
    pub(crate) fn of(d: &hostel_store::DiskRecord) -> MovedDisk {
        MovedDisk {
            disk: d.clone(),
            new_path: None,
            new_format: None,
        }
    }
}

pub(crate) fn moved_disks(row: &MoveRecord) -> Vec<MovedDisk> {
    serde_json::from_str(&row.disks).unwrap_or_default()
}

/// A VM's memory held on the host it migrates to; `live`: a migration in this process
/// runs it (else recovery finishes it).
#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    /// The migration's journal row (its task's id).
    pub id: String,
    pub target: String,
    pub mib: u64,
    pub live: bool,
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The VM runs on the target, and the database says so.
    Forward,
    /// The VM runs (or is paused, or stopped) on the source, where it was.
    Back,
}

impl Controller {
    /// Holds the VMs of migrations a previous life of this controller left, before any
    /// host's events are read, and settles each once both its hosts answer.
    pub async fn resume_migrations(self: &Arc<Self>) -> anyhow::Result<()> {
        let rows = self.store.moves().await?;
        self.adopt_moves(rows);
        Ok(())
    }

    /// Settles the migrations a dead controller left (the leader's takeover, see
    /// `cluster.rs`): each is held here as this process's, and recovery settles it.
    pub(crate) fn adopt_moves(self: &Arc<Self>, rows: Vec<hostel_store::MoveRecord>) {
        let mut new = 0;
        {
            let mut m = self.migrating.lock().unwrap();
            for r in rows {
                if m.contains_key(&r.vm_id) {
                    continue;
                }
                m.insert(
                    r.vm_id.clone(),
                    Reservation {
                        id: r.id.clone(),
                        target: r.target.clone(),
                        mib: r.memory_mib,
                        live: false,
                    },
                );
                new += 1;
            }
        }
        if new > 0 {
            tracing::warn!(
                count = new,
                "taking over migrations whose controller stopped"
            );
            self.ensure_recovery();
        }
    }

    /// Settles, in the background, the migrations no task of this process runs (left
    /// by an earlier life, or by a task that could not settle its own): one loop at a
    /// time.
    pub(crate) fn ensure_recovery(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.recovering.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.clone().recovery_loop().await;
            me.recovering.store(false, Ordering::SeqCst);
            // One left unsettled just as the loop ended is not forgotten.
            if me.migrating.lock().unwrap().values().any(|r| !r.live) {
                me.ensure_recovery();
            }
        });
    }

    /// Settles, every 2 s, the migrations no task of this process runs, until none is
    /// left.
    async fn recovery_loop(self: Arc<Self>) {
        loop {
            let orphans: Vec<String> = self
                .migrating
                .lock()
                .unwrap()
                .values()
                .filter(|r| !r.live)
                .map(|r| r.id.clone())
                .collect();
            let rows = self.store.moves().await.unwrap_or_default();
            for row in rows.iter().filter(|r| orphans.contains(&r.id)) {
                let _g = self.lock_vm(&row.vm_id).await;
                // Settled meanwhile by the task that ran it?
                if !self
                    .migrating
                    .lock()
                    .unwrap()
                    .get(&row.vm_id)
                    .is_some_and(|r| r.id == row.id && !r.live)
                {
                    continue;
                }
                match self.settle_move(&row.id).await {
                    Ok(how) => {
                        self.migrating.lock().unwrap().remove(&row.vm_id);
                        let (state, msg, err) = match how {
                            Settled::Forward => (
                                hostel_model::TaskState::Succeeded,
                                format!(
                                    "done: the VM runs on {} (settled by recovery)",
                                    row.target
                                ),
                                None,
                            ),
                            Settled::Back => (
                                hostel_model::TaskState::Failed,
                                "failed".to_string(),
                                Some(format!(
                                    "the migration was interrupted at its {} step; the VM \
                                     stays on {}",
                                    row.step, row.source
                                )),
                            ),
                        };
                        let _ = self
                            .store
                            .update_task(&row.id, state, 1.0, &msg, err.as_deref())
                            .await;
                        tracing::info!(vm = %row.vm_id, ?how, "migration settled");
                    }
                    Err(e) => tracing::debug!(vm = %row.vm_id, "not settled yet: {}", e.message()),
                }
            }
            if !self.migrating.lock().unwrap().values().any(|r| !r.live) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Ends the migration whose journal row is `id` (see the module's documentation).
    /// Fails, changing nothing, while either host does not answer.
    pub(crate) async fn settle_move(&self, id: &str) -> Res<Settled> {
        let Some(row) = self.store.move_by_id(id).await? else {
            return Err(Error::from(anyhow::anyhow!(
                "no migration {id} in the journal"
            )));
        };
        let agent = |host: &str| {
            self.agent(host)
                .filter(|_| self.is_online(host))
                .ok_or_else(|| Error::unavailable(format!("host {host} is not connected")))
        };
        let source = agent(&row.source)?;
        if row.step == "cleanup" {
            self.postcopy_done(&source, &row).await?;
            if let Some(target) = self
                .agent(&row.target)
                .filter(|_| self.is_online(&row.target))
            {
                let src = source.get_migration(&row.vm_id).await?;
                let tgt = target.get_migration(&row.vm_id).await?;
                if let Some(settled) = self.lost_in_postcopy(&row, &src, &tgt).await? {
                    return Ok(settled);
                }
            }
            if !self.clean_source(&row).await {
                return Err(Error::unavailable(format!(
                    "host {} did not let its copy be removed",
                    row.source
                )));
            }
            // Its state as the target has it now (a post-copy's end resumed it there
            // while its reports were not written).
            if let Some(target) = self.agent(&row.target) {
                if let Ok(s) = target.get_vm(&row.vm_id).await {
                    let _ = self
                        .store
                        .set_vm_state(&row.vm_id, s.state, s.reason.as_deref(), s.pid)
                        .await;
                }
            }
            return Ok(Settled::Forward);
        }
        let target = agent(&row.target)?;
        if row.step == "offline" {
            self.undo_offline(&row, &target).await?;
            return Ok(Settled::Back);
        }
        let src = source.get_migration(&row.vm_id).await?;
        let tgt = target.get_migration(&row.vm_id).await?;
        // Only a QEMU that received the whole VM, or runs it by post-copy, leaves
        // `inmigrate`. (The source's "completed" is no proof: a VM that came to it by
        // migration says so too.)
        let switched = tgt.qemu
            && !matches!(
                tgt.runstate.as_deref(),
                None | Some("inmigrate") | Some("prelaunch")
            );
        tracing::info!(vm = %row.vm_id, step = %row.step, ?src, ?tgt, switched,
            "settling a migration");
        if let Some(settled) = self.lost_in_postcopy(&row, &src, &tgt).await? {
            return Ok(settled);
        }
        if switched {
            let vm = self
                .store
                .vm_by_id(&row.vm_id)
                .await?
                .ok_or_else(|| Error::from(anyhow::anyhow!("VM {} is gone", row.vm_id)))?;
            // In post-copy the guest runs there already, or waits for its pages: QEMU
            // resumes it itself, and refuses a `cont` until the migration is over.
            let status = if tgt.in_postcopy() {
                target.get_vm(&row.vm_id).await?
            } else {
                self.arrived_state(&target, &vm, row.was_running, false)
                    .await?
            };
            let moved: Vec<(String, String, String)> = moved_disks(&row)
                .into_iter()
                .filter_map(|d| Some((d.disk.id, d.new_path?, d.new_format?)))
                .collect();
            self.store
                .commit_move(&row, status.state, status.pid, &moved)
                .await?;
            self.postcopy_done(&source, &row).await?;
            if !self.clean_source(&row).await {
                // Committed: the VM runs on the target; its source copy goes later.
                return Err(Error::unavailable(format!(
                    "host {} did not let its copy be removed",
                    row.source
                )));
            }
            return Ok(Settled::Forward);
        }
        if src.qemu {
            match source
                .abandon_migration(
                    &row.vm_id,
                    wire::AbandonMigrationRequest {
                        resume: row.was_running,
                        target_gone: !tgt.qemu,
                    },
                )
                .await
            {
                Ok(_) => {}
                // Completed meanwhile: settled next time, forward.
                Err(e) => return Err(e.into()),
            }
        }
        let _ = target.destroy_vm(&row.vm_id).await;
        let _ = target.forget_vm(&row.vm_id).await;
        for d in moved_disks(&row) {
            if let Some(path) = d.new_path {
                if let Err(e) = target
                    .delete_disk(wire::DeleteDiskRequest {
                        path: path.clone(),
                        pool: None,
                    })
                    .await
                {
                    tracing::warn!(%path, "could not remove a migration's new disk file: {e:#}");
                }
            }
        }
        // Its state as the source has it now (events were not written meanwhile).
        match source.get_vm(&row.vm_id).await {
            Ok(s) => {
                let _ = self
                    .store
                    .set_vm_state(&row.vm_id, s.state, s.reason.as_deref(), s.pid)
                    .await;
            }
            Err(_) => {
                let _ = self
                    .store
                    .set_vm_state(
                        &row.vm_id,
                        VmState::Crashed,
                        Some("its QEMU was gone when its migration was settled"),
                        None,
                    )
                    .await;
            }
        }
        self.store.delete_move(&row.id).await?;
        Ok(Settled::Back)
    }

    /// The VM's state on the target once its migration completed: a VM that ran runs
    /// there (resumed by its QEMU, or here if it was paused to finish, `forced`).
    pub(crate) async fn arrived_state(
        &self,
        target: &crate::agent_client::AgentClient,
        vm: &hostel_store::VmRecord,
        was_running: bool,
        forced: bool,
    ) -> Res<wire::VmStatus> {
        let mut status = target.get_vm(&vm.id).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while was_running && status.state == VmState::Paused {
            if forced || tokio::time::Instant::now() > deadline {
                // Paused to finish, or not resumed by its QEMU: it runs again here.
                status = target.unpause_vm(&vm.id).await?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            status = target.get_vm(&vm.id).await?;
        }
        Ok(status)
    }

    /// After the commit: the source's QEMU (paused since it sent the VM) and its old
    /// disk files go, then the journal row. A host that does not answer keeps the row
    /// for the next try (false).
    pub(crate) async fn clean_source(&self, row: &MoveRecord) -> bool {
        let Some(source) = self
            .agent(&row.source)
            .filter(|_| self.is_online(&row.source))
        else {
            return false;
        };
        let _ = source.destroy_vm(&row.vm_id).await;
        let _ = source.forget_vm(&row.vm_id).await;
        let old: Vec<hostel_store::DiskRecord> = moved_disks(row)
            .iter()
            .filter(|d| d.new_path.is_some())
            .map(|d| d.disk.clone())
            .collect();
        self.remove_disk_files(&source, &old).await;
        if let Err(e) = self.store.delete_move(&row.id).await {
            tracing::warn!(vm = %row.vm_id, "could not end the migration's journal row: {e:#}");
            return false;
        }
        true
    }
}

impl Controller {
    /// Refuses to let the source's copy go while a post-copy is under way: the guest
    /// runs on the target, but pages it has not fetched yet are only on the source.
    /// Recovery asks again until QEMU says the migration completed; a post-copy whose
    /// link broke is resumed meanwhile.
    async fn postcopy_done(
        &self,
        source: &crate::agent_client::AgentClient,
        row: &MoveRecord,
    ) -> Res<()> {
        let st = source.get_migration(&row.vm_id).await?;
        if !st.in_postcopy() {
            return Ok(());
        }
        let s = st.migration.unwrap_or_default();
        if s == "postcopy-paused" {
            // Resuming is asked for each time: QEMU reconnects in the background, and
            // falls back to paused while the link is still down.
            let tried = match self.resume_postcopy(source, row).await {
                Ok(()) => "asked to resume".to_string(),
                Err(e) => format!("resuming failed ({})", e.message()),
            };
            return Err(Error::unavailable(format!(
                "post-copy paused, its link broken: the VM waits on host {} for the rest of \
                 its memory, which host {} keeps; {tried}, and asked again shortly",
                row.target, row.source
            )));
        }
        Err(Error::unavailable(format!(
            "post-copy under way ({s}): the VM runs on host {}, and host {} keeps its copy \
             until the rest of its memory is there",
            row.target, row.source
        )))
    }

    /// A post-copy one of whose QEMUs died: the guest's memory was split between the
    /// hosts, so neither copy is whole and neither may run on (the other side ran the
    /// guest, and wrote its disks, since). The survivor ends and the VM is crashed: it
    /// starts again from its disks. None when this is not such a case.
    async fn lost_in_postcopy(
        &self,
        row: &MoveRecord,
        src: &wire::MigrationState,
        tgt: &wire::MigrationState,
    ) -> Res<Option<Settled>> {
        let reason = |dead: &str| {
            format!(
                "host {dead}'s QEMU died during a post-copy migration, with part of the \
                 guest's memory: the VM stopped; start it again"
            )
        };
        if src.in_postcopy() && !tgt.qemu {
            if let Some(source) = self.agent(&row.source) {
                let _ = source.destroy_vm(&row.vm_id).await;
            }
            if let Some(target) = self.agent(&row.target) {
                // "No QEMU" may also be a QEMU that did not answer (a reset link in the
                // middle of a post-copy): it is ended too, never left running half a
                // guest. (Forgetting a running VM is refused.)
                let _ = target.destroy_vm(&row.vm_id).await;
                let _ = target.forget_vm(&row.vm_id).await;
            }
            self.store
                .set_vm_state(
                    &row.vm_id,
                    VmState::Crashed,
                    Some(&reason(&row.target)),
                    None,
                )
                .await?;
            self.store.delete_move(&row.id).await?;
            return Ok(Some(Settled::Back));
        }
        if tgt.in_postcopy() && !src.qemu {
            if let Some(target) = self.agent(&row.target) {
                let _ = target.destroy_vm(&row.vm_id).await;
            }
            if row.step != "cleanup" {
                self.store
                    .commit_move(row, VmState::Crashed, None, &[])
                    .await?;
            }
            self.store
                .set_vm_state(
                    &row.vm_id,
                    VmState::Crashed,
                    Some(&reason(&row.source)),
                    None,
                )
                .await?;
            self.clean_source(row).await;
            return Ok(Some(Settled::Forward));
        }
        Ok(None)
    }

    /// The target listens again (`migrate-recover`), and the source sends the rest there.
    async fn resume_postcopy(
        &self,
        source: &crate::agent_client::AgentClient,
        row: &MoveRecord,
    ) -> Res<()> {
        let target = self
            .agent(&row.target)
            .filter(|_| self.is_online(&row.target))
            .ok_or_else(|| Error::unavailable(format!("host {} is not connected", row.target)))?;
        let url = |h: Option<hostel_store::HostRecord>| h.map(|h| h.url).unwrap_or_default();
        let (t, s) = (
            url(self.store.host(&row.target).await?),
            url(self.store.host(&row.source).await?),
        );
        let connect = crate::stream_address::stream_address(&t, &s).ok_or_else(|| {
            Error::from(anyhow::anyhow!(
                "no address of host {} is known",
                row.target
            ))
        })?;
        let ready = target
            .recover_migration(
                &row.vm_id,
                wire::RecoverMigrationRequest {
                    listen: "0.0.0.0".into(),
                },
            )
            .await?;
        source
            .resume_migration(
                &row.vm_id,
                wire::ResumeMigrationRequest {
                    uri: wire::tcp_uri(&connect, ready.port),
                },
            )
            .await?;
        tracing::info!(vm = %row.vm_id, "post-copy resumed after its link broke");
        Ok(())
    }
}
