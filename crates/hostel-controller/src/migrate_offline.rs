//! Offline moves: a VM that does not run goes to another host with its disks. Each disk
//! file is read out of the source's pool and written into the target's default pool
//! (`ReadDiskFile`, `PutDisk`), through the controller over the agents' mutual TLS; a
//! qcow2 overlay is pointed at the target's copy of its image. The journal row (step
//! `offline`) names each new file as soon as it exists; only when all are there does
//! the database move the VM and its disks, in one transaction, and the source's files
//! go. A failure or a crash before that removes the new files and leaves the VM where it
//! was (`migrate_recover.rs`).

use crate::error::Error;
use crate::migrate::Moving;
use crate::Controller;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_store::MoveRecord;

type Res<T> = crate::error::Result<T>;

impl Controller {
    /// Runs an offline move; its task's message.
    pub(crate) async fn run_offline(&self, m: &Moving) -> Res<String> {
        let vm = &m.vm;
        self.boot_images_to(vm, &m.row.target).await?;
        let mut disks = self.disks_to_move(m).await?;
        let shared = self.on_shared_pools(&disks).await?;
        let n = disks.len();
        let mut bytes = 0u64;
        for i in 0..n {
            m.cancelled()?;
            if shared.contains(&disks[i].disk.idx) {
                // Both hosts reach the same file.
                continue;
            }
            self.progress(
                &m.row.id,
                i as f64 / n as f64,
                &format!("copying disk {} of {n}", i + 1),
            )
            .await;
            let pool = self.pool_spec(disks[i].disk.pool_id.as_deref()).await?;
            let sized = m
                .source_agent
                .read_disk_file(wire::ReadDiskFileRequest {
                    file: disks[i].disk.path.clone(),
                    pool,
                    standalone_format: None,
                })
                .await?;
            let backing = self
                .backing_on(disks[i].disk.image_id.as_deref(), &m.row.target)
                .await?;
            let c = m
                .target_agent
                .put_disk(
                    wire::PutDiskRequest {
                        vm_id: vm.id.clone(),
                        index: disks[i].disk.idx,
                        size_mib: disks[i].disk.size_mib,
                        format: disks[i].disk.format.clone(),
                        bytes: sized.size,
                        backing,
                        pool: None,
                    },
                    sized.bytes,
                )
                .await?;
            bytes += sized.size;
            disks[i].new_path = Some(c.path);
            disks[i].new_format = Some(c.format);
            self.journal_disks(&m.row.id, &disks).await?;
        }
        hostel_faults::point("controller.migrate.offline-commit").await;
        self.commit_moved(m, &disks, vm.state, None).await?;
        tracing::info!(vm = %vm.name, from = %m.row.source, to = %m.row.target, bytes,
            "moved offline");
        Ok(format!(
            "done: moved offline, {} disk(s) copied ({} MiB), {} on shared storage",
            n - shared.len(),
            bytes.div_ceil(1 << 20),
            shared.len()
        ))
    }

    /// Undoes an offline move that did not commit: its new files on the target go; the
    /// VM, which never ran meanwhile, stays as it is on the source.
    pub(crate) async fn undo_offline(
        &self,
        row: &MoveRecord,
        target: &crate::agent_client::AgentClient,
    ) -> Res<()> {
        for d in crate::migrate_recover::moved_disks(row) {
            if let Some(path) = d.new_path {
                target
                    .delete_disk(wire::DeleteDiskRequest { path, pool: None })
                    .await
                    .map_err(|e| Error::from(anyhow::anyhow!("{e:#}")))?;
            }
        }
        self.store.delete_move(&row.id).await?;
        Ok(())
    }
}
