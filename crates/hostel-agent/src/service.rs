//! The real agent's side of the agent API: [`Shared`] implements [`AgentApi`], served by
//! the generic router of `http.rs`. Its errors become [`AgentFailure`]s here, in one place.
//! Long because it is the whole contract, one method per endpoint; the work of each lives
//! in the module it names (`vm.rs`, `backup.rs`, `migrate.rs`, ...).

use crate::{AgentError, Shared};
use hostel_api::agent::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The one place where the agent's errors get their wire code.
impl From<AgentError> for AgentFailure {
    fn from(e: AgentError) -> AgentFailure {
        let code = match &e {
            AgentError::Invalid(_) => FailureCode::Invalid,
            AgentError::NotFound(_) => FailureCode::NotFound,
            AgentError::Conflict(_) => FailureCode::Conflict,
            AgentError::Timeout(_) => FailureCode::Timeout,
            AgentError::Internal(_) => FailureCode::Internal,
        };
        let message = e.to_string();
        // An invalid request's message starts with the field at fault: `field: why`.
        let field = match &e {
            AgentError::Invalid(_) => message.split(':').next().map(|f| f.to_string()),
            _ => None,
        };
        AgentFailure {
            code,
            message,
            field,
        }
    }
}

fn internal(e: tokio::task::JoinError) -> AgentFailure {
    AgentError::Internal(e.into()).into()
}

fn invalid(e: anyhow::Error) -> AgentFailure {
    AgentError::Invalid(e).into()
}

/// Bytes both ways: what a VM's websocket is served from.
pub trait ByteIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteIo for T {}

type Res<T> = Result<T, AgentFailure>;

fn find(s: &Shared, id: &str) -> Result<Arc<crate::vm::VmRuntime>, AgentFailure> {
    s.vm(id)
        .ok_or_else(|| AgentFailure::not_found(format!("no VM {id} on this host")))
}

fn check_id(id: &str) -> Res<()> {
    if !crate::is_plain_name(id) {
        return Err(AgentError::Invalid(anyhow::anyhow!("id: {id:?} is not a VM id")).into());
    }
    Ok(())
}

impl Shared {
    /// The `Arc` this agent lives in (for work handed to other tasks).
    fn arc(&self) -> Arc<Shared> {
        self.me
            .upgrade()
            .expect("the agent is alive while it serves")
    }

    fn stored_files(&self) -> StoredFiles {
        let list = |dir: std::path::PathBuf, full: bool| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&dir)
                .map(|r| {
                    r.flatten()
                        .map(|e| {
                            if full {
                                e.path().display().to_string()
                            } else {
                                e.file_name().to_string_lossy().into_owned()
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        StoredFiles {
            disks: list(self.disks_dir(), true),
            images: list(self.images_dir(), true),
            runtime: list(self.run_dir(), false),
        }
    }

    /// Runs an image build or import on a blocking thread, as lines.
    fn image_lines(
        &self,
        work: impl FnOnce(&Shared, &mut dyn FnMut(f64, &str)) -> anyhow::Result<ImageFiles>
            + Send
            + 'static,
    ) -> Lines<ImageLine, AgentFailure> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ImageLine>();
        let s = self.arc();
        tokio::task::spawn_blocking(move || {
            let t = tx.clone();
            let r = work(&s, &mut |p, m| {
                let _ = t.send(ImageLine::Progress {
                    progress: p,
                    message: m.to_string(),
                });
            });
            let _ = tx.send(match r {
                Ok(img) => ImageLine::Done { done: img },
                Err(e) => ImageLine::Error {
                    error: format!("{e:#}"),
                },
            });
        });
        Box::pin(futures::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            Ok,
        ))
    }
}

impl AgentApi for Shared {
    type Error = AgentFailure;
    type Socket = Box<dyn ByteIo>;

    async fn host(&self) -> Res<HostFacts> {
        Ok(self.facts().await)
    }

    async fn list_vms(&self) -> Res<Vec<VmStatus>> {
        let vms: Vec<_> = self.vms.lock().unwrap().values().cloned().collect();
        let mut out = Vec::new();
        for vm in vms {
            out.push(vm.status(self).await);
        }
        Ok(out)
    }

    async fn get_vm(&self, id: &str) -> Res<VmStatus> {
        Ok(find(self, id)?.status(self).await)
    }

    async fn start_vm(&self, id: &str, req: StartRequest) -> Res<VmStatus> {
        check_id(id)?;
        if req.spec.id != id {
            return Err(invalid(anyhow::anyhow!("spec: id does not match the path")));
        }
        let vm = self.vm_or_new(&req.spec);
        let _g = vm.op.lock().await;
        vm.start_with(
            &self.arc(),
            req.spec,
            req.restore_from.as_deref(),
            req.load_snapshot.as_deref(),
        )
        .await?;
        Ok(vm.status(self).await)
    }

    async fn destroy_vm(&self, id: &str) -> Res<VmStatus> {
        let vm = find(self, id)?;
        // Destroy does not wait for a running operation: it is how a stuck one is ended.
        vm.destroy(self).await?;
        Ok(vm.status(self).await)
    }

    async fn shutdown_vm(&self, id: &str, req: ShutdownRequest) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.shutdown(self, Duration::from_secs(req.timeout_secs), req.force)
            .await?;
        Ok(vm.status(self).await)
    }

    async fn reboot_vm(&self, id: &str) -> Res<VmStatus> {
        let vm = find(self, id)?;
        {
            let _g = vm.op.lock().await;
            vm.reboot(&self.arc(), Duration::from_secs(60)).await?;
        }
        Ok(vm.status(self).await)
    }

    async fn pause_vm(&self, id: &str) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.pause(self).await?;
        Ok(vm.status(self).await)
    }

    async fn unpause_vm(&self, id: &str) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.unpause(self).await?;
        Ok(vm.status(self).await)
    }

    async fn set_balloon(&self, id: &str, req: BalloonRequest) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.balloon(req.memory_mib).await?;
        Ok(vm.status(self).await)
    }

    async fn set_vcpus(&self, id: &str, req: VcpusRequest) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.set_vcpus(self, req.vcpus).await?;
        Ok(vm.status(self).await)
    }

    async fn set_limits(&self, id: &str, req: Limits) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.set_limits(self, req).await?;
        Ok(vm.status(self).await)
    }

    async fn save_vm(&self, id: &str, req: SaveRequest) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.save(self, &req.path, &req.header).await?;
        Ok(vm.status(self).await)
    }

    /// Drops what the agent knows of a VM that is being deleted, runtime dir included.
    async fn forget_vm(&self, id: &str) -> Res<()> {
        if let Some(vm) = self.vm(id) {
            if vm.state().has_process() {
                return Err(AgentFailure::conflict(
                    "the VM is running; destroy it first",
                ));
            }
            let _ = std::fs::remove_dir_all(&vm.paths.dir);
            self.vms.lock().unwrap().remove(id);
        } else {
            check_id(id)?;
            let dir = hostel_qemu::RuntimePaths::new(&self.run_dir(), id).dir;
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(u) = &self.vm_uids {
            u.release(id).map_err(AgentError::Internal)?;
        }
        Ok(())
    }

    /// The last lines of a VM's console log (the rotated file, then the current one). The
    /// files outlive the QEMU process, so a stopped or crashed VM's log can be read.
    async fn console_log(&self, id: &str, req: ConsoleLogRequest) -> Res<Vec<String>> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(invalid(anyhow::anyhow!("bad VM id {id:?}")));
        }
        let path = hostel_qemu::RuntimePaths::new(&self.run_dir(), id).console_log();
        let lines = req.lines.unwrap_or(100);
        tokio::task::spawn_blocking(move || crate::console::tail_lines(&path, lines))
            .await
            .map_err(internal)
    }

    async fn clear_console_log(&self, id: &str) -> Res<()> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(invalid(anyhow::anyhow!("bad VM id {id:?}")));
        }
        let path = hostel_qemu::RuntimePaths::new(&self.run_dir(), id).console_log();
        let hub = self
            .vms
            .lock()
            .unwrap()
            .get(id)
            .map(|vm| vm.console.clone());
        tokio::task::spawn_blocking(move || match hub {
            Some(hub) => hub.clear(),
            None => crate::console::clear_log(&path),
        })
        .await
        .map_err(internal)?
        .map_err(|e| AgentError::Internal(e).into())
    }

    async fn read_save_header(&self, req: SaveHeaderRequest) -> Res<SaveHeader> {
        Ok(crate::vm::read_save_header(&req.path)?.0)
    }

    /// The command line a VM with this definition would start with on this host.
    async fn render_argv(&self, spec: VmSpec) -> Res<Vec<String>> {
        let paths = hostel_qemu::RuntimePaths::new(&self.run_dir(), &spec.id);
        Ok(hostel_qemu::render(
            &spec,
            &paths,
            &self.host_opts().await,
            None,
        ))
    }

    async fn list_files(&self) -> Res<StoredFiles> {
        Ok(self.stored_files())
    }

    async fn list_files_in_pools(&self, pools: Vec<PoolSpec>) -> Res<StoredFiles> {
        let mut out = self.stored_files();
        for p in &pools {
            let pool = self.pool(Some(p))?;
            out.disks.extend(pool.files());
        }
        Ok(out)
    }

    async fn put_networks(&self, state: NetworksState) -> Res<NetworksApplied> {
        // An uplink the host does not have is the caller's mistake, told before any change.
        for n in &state.networks {
            if let Some(u) = n.uplink.as_deref() {
                let missing = u == "." || u == ".." || !hostel_net::link::exists(u);
                if n.mode == hostel_model::net::NetMode::Bridged && missing {
                    return Err(AgentError::Invalid(anyhow::anyhow!(
                        "uplink: this host has no interface {u:?} to put on network {:?}'s bridge",
                        n.name
                    ))
                    .into());
                }
            }
        }
        let sh = self.arc();
        tokio::task::spawn_blocking(move || sh.apply_networks(&state))
            .await
            .map_err(internal)?
            .map_err(|e| AgentError::Internal(e).into())
    }

    async fn get_networks(&self) -> Res<NetworksState> {
        Ok(self.networks.lock().unwrap().clone())
    }

    async fn add_nic(&self, id: &str, nic: NicSpec) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.add_nic(self, nic).await?;
        Ok(vm.status(self).await)
    }

    async fn remove_nic(&self, id: &str, req: RemoveNicRequest) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.remove_nic(self, &req.id).await?;
        Ok(vm.status(self).await)
    }

    async fn check_pool(&self, req: PoolSpec) -> Res<PoolUsage> {
        let pool = self.pool(Some(&req))?;
        let u = tokio::task::spawn_blocking(move || {
            pool.check()?;
            pool.usage()
        })
        .await
        .map_err(internal)?
        .map_err(invalid)?;
        Ok(PoolUsage {
            total_bytes: u.total_bytes,
            free_bytes: u.free_bytes,
            used_bytes: u.used_bytes,
        })
    }

    async fn pool_forget_image(&self, req: ForgetImageRequest) -> Res<()> {
        if !crate::is_plain_name(&req.image_id) {
            return Err(invalid(anyhow::anyhow!("not an image id")));
        }
        self.pool(Some(&req.pool))?.forget_base(&req.image_id);
        Ok(())
    }

    async fn create_disk(&self, req: CreateDiskRequest) -> Res<DiskCreated> {
        if !crate::is_plain_name(&req.vm_id) {
            return Err(invalid(anyhow::anyhow!("vm_id: not a VM id")));
        }
        let pool = self.pool(req.pool.as_ref())?;
        let stem = format!("{}-{}", req.vm_id, req.index);
        let backing = req.backing.clone();
        let size = req.size_mib;
        let p = pool.clone();
        let path = tokio::task::spawn_blocking(move || {
            let base = backing.as_ref().map(|b| hostel_storage::pool::Base {
                path: std::path::Path::new(&b.path),
                format: &b.format,
                id: &b.image_id,
            });
            p.create_disk(&stem, size, base)
        })
        .await
        .map_err(internal)?
        .map_err(invalid)?;
        // Root's alone until its VM starts (or hot-plugs it): then it is given to the
        // VM's own uid.
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        if let Err(e) = std::fs::set_permissions(&path, private) {
            let _ = pool.delete_disk(&path);
            return Err(AgentError::from(anyhow::Error::from(e)).into());
        }
        hostel_faults::point("agent.disk.created").await;
        Ok(DiskCreated {
            path: path.display().to_string(),
            format: pool.driver.disk_format().into(),
            size_mib: req.size_mib,
        })
    }

    async fn delete_disk(&self, req: DeleteDiskRequest) -> Res<()> {
        let pool = self.pool(req.pool.as_ref())?;
        let path = std::path::PathBuf::from(&req.path);
        tokio::task::spawn_blocking(move || pool.delete_disk(&path))
            .await
            .map_err(internal)?
            .map_err(invalid)
    }

    /// Grows a disk: online through QEMU when `index` names a running VM's disk (the VM
    /// is `vm`), else offline with qemu-img on `path`.
    async fn resize_disk(&self, req: ResizeDiskArgs) -> Res<()> {
        let ResizeDiskArgs { vm, disk: req } = req;
        match (vm, req.index, req.path) {
            (Some(vm), Some(index), _) => {
                let vm = find(self, &vm)?;
                let _g = vm.op.lock().await;
                vm.resize_disk(index, req.size_mib).await?;
            }
            (_, _, Some(path)) => {
                if !self
                    .pool(req.pool.as_ref())?
                    .holds(std::path::Path::new(&path))
                {
                    return Err(invalid(anyhow::anyhow!(
                        "path: {path} is not in this host's disk store"
                    )));
                }
                // The format comes from the disk's record: qemu-img never probes a file
                // its guest wrote.
                let format = req.format.ok_or_else(|| {
                    invalid(anyhow::anyhow!(
                        "format: an offline resize needs the disk's format (qcow2 or raw)"
                    ))
                })?;
                let size = req.size_mib;
                tokio::task::spawn_blocking(move || {
                    hostel_storage::disk::resize(std::path::Path::new(&path), &format, size)
                })
                .await
                .map_err(internal)?
                .map_err(invalid)?;
            }
            _ => {
                return Err(invalid(anyhow::anyhow!(
                    "give the VM and disk index, or the disk's path"
                )))
            }
        }
        Ok(())
    }

    async fn add_disk(&self, id: &str, disk: DiskSpec) -> Res<VmStatus> {
        let vm = find(self, id)?;
        if !self
            .pool(disk.pool.as_ref())?
            .holds(std::path::Path::new(&disk.path))
        {
            return Err(invalid(anyhow::anyhow!(
                "path: {} is not in the disk's pool",
                disk.path
            )));
        }
        let _g = vm.op.lock().await;
        // QEMU opens the hot-plugged file itself, as the VM's uid.
        let identity = self.qemu_identity(id).map_err(AgentError::Internal)?;
        self.give_disks(std::slice::from_ref(&disk), identity.as_ref())?;
        vm.add_disk(disk).await?;
        Ok(vm.status(self).await)
    }

    async fn remove_disk(&self, id: &str, req: DiskIndex) -> Res<VmStatus> {
        let vm = find(self, id)?;
        let _g = vm.op.lock().await;
        vm.remove_disk(req.index).await?;
        Ok(vm.status(self).await)
    }

    async fn snapshot(&self, id: &str, req: SnapshotRequest) -> Res<()> {
        let mut pools = Vec::new();
        for d in &req.disks {
            let pool = self.pool(d.pool.as_ref())?;
            if !pool.holds(std::path::Path::new(&d.path)) {
                return Err(invalid(anyhow::anyhow!(
                    "path: {} is not in the disk's pool",
                    d.path
                )));
            }
            pools.push(pool);
        }
        // qcow2 disks snapshot inside the file (through QEMU when it runs); btrfs disks by
        // subvolume, the VM paused meanwhile when it runs.
        let dir = |p: &hostel_storage::pool::Pool| p.driver == hostel_storage::pool::Driver::Dir;
        let in_file = pools.iter().all(dir);
        if !in_file && pools.iter().any(dir) {
            return Err(AgentFailure::conflict(
                "the VM has disks in a dir pool and in a btrfs pool; snapshots need all of its \
                 disks in pools of one kind",
            ));
        }
        if req.memory && !in_file {
            return Err(AgentFailure::conflict(
                "memory: snapshots with memory need qcow2 disks (dir pools); this VM's disks \
                 are in a btrfs pool: snapshot without --memory",
            ));
        }
        let live = self.vm(id).filter(|vm| vm.state().has_process());
        if let (Some(vm), true) = (&live, in_file) {
            let _g = vm.op.lock().await;
            vm.snapshot_live(&req.action, &req.name, req.memory).await?;
            return Ok(());
        }
        if req.memory {
            return Err(AgentFailure::conflict(
                "a snapshot with memory needs a running VM",
            ));
        }
        if live.is_some() && req.action != "create" && req.action != "delete" {
            return Err(AgentFailure::conflict(format!(
                "cannot {} a snapshot while the VM runs: stop it first",
                req.action
            )));
        }
        let disks = req.disks.clone();
        let (action, name) = (req.action.clone(), req.name.clone());
        let work = move || -> anyhow::Result<()> {
            for (d, pool) in disks.iter().zip(&pools) {
                pool.snapshot(std::path::Path::new(&d.path), &d.format, &action, &name)?;
            }
            Ok(())
        };
        match live {
            Some(vm) => {
                let _g = vm.op.lock().await;
                vm.while_paused(work).await?;
            }
            None => tokio::task::spawn_blocking(work)
                .await
                .map_err(internal)?
                .map_err(invalid)?,
        }
        Ok(())
    }

    async fn delete_image(&self, req: DeleteImageRequest) -> Res<()> {
        self.delete_image_files(&req.path).map_err(invalid)
    }

    /// The counters of every VM with a QEMU process (`stats.rs`).
    async fn vm_stats(&self) -> Res<Vec<VmCounters>> {
        Ok(self.vm_counters().await)
    }

    async fn events(&self) -> Res<Lines<Event, AgentFailure>> {
        Ok(event_lines(self.subscribe()))
    }

    /// Builds an image, with progress lines, then `done` or `error`.
    async fn build_image(&self, req: BuildImageRequest) -> Res<Lines<ImageLine, AgentFailure>> {
        Ok(self.image_lines(move |s, progress| s.build_image(&req, progress)))
    }

    async fn import_image(&self, req: ImportImageRequest) -> Res<Lines<ImageLine, AgentFailure>> {
        Ok(self.image_lines(move |s, progress| {
            let mut last = -1.0f64;
            s.import_image(&req.name, &req.source, &mut |p, m| {
                // A message per whole percent is plenty.
                if (p - last).abs() >= 0.01 {
                    last = p;
                    progress(p, m);
                }
            })
        }))
    }

    /// Copies a guest's disk from the host into a pool, with progress lines; the file is
    /// root's alone until its VM starts, as a new disk's is.
    async fn import_disk(&self, req: ImportDiskRequest) -> Res<Lines<ImageLine, AgentFailure>> {
        if !crate::is_plain_name(&req.vm_id) {
            return Err(invalid(anyhow::anyhow!("vm_id: not a VM id")));
        }
        if !req.source.starts_with('/') || req.source.split('/').any(|c| c == "..") {
            return Err(invalid(anyhow::anyhow!(
                "source {:?}: give the disk's absolute path on the host",
                req.source
            )));
        }
        let pool = self.pool(req.pool.as_ref())?;
        Ok(self.image_lines(move |_, progress| {
            if let Some(within) = &req.chain_within {
                progress(0.0, "checking the backup's files");
                crate::backup::check_chain(
                    std::path::Path::new(&req.source),
                    std::path::Path::new(within),
                    &req.sums,
                )?;
            }
            let stem = format!("{}-{}", req.vm_id, req.index);
            let mut last = -1.0f64;
            let source = std::path::Path::new(&req.source);
            let chain = req.chain_within.is_some();
            let path = pool.import_disk(&stem, source, &req.format, chain, &mut |f| {
                if (f - last).abs() >= 0.01 {
                    last = f;
                    progress(f, &format!("copying {}", req.source));
                }
            })?;
            let format = pool.driver.disk_format();
            let made = (|| {
                let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
                std::fs::set_permissions(&path, private)?;
                hostel_storage::disk::info(&path, format)
            })();
            let info = match made {
                Ok(i) => i,
                Err(e) => {
                    let _ = pool.delete_disk(&path);
                    return Err(e);
                }
            };
            Ok(ImageFiles {
                name: stem,
                kind: hostel_model::ImageKind::Disk,
                format: format.into(),
                path: path.display().to_string(),
                initrd: None,
                cmdline: None,
                size_bytes: info.actual_size,
                virtual_size_mib: info.virtual_size.div_ceil(1 << 20),
                sha256: String::new(),
            })
        }))
    }

    /// Backs up a VM's disks, with progress lines, then its files or why it failed.
    async fn backup_vm(&self, req: BackupVmRequest) -> Res<Lines<BackupLine, AgentFailure>> {
        crate::backup::check(&req).map_err(invalid)?;
        let vm = self.vm(&req.vm_id);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BackupLine>();
        tokio::spawn(async move {
            let t = tx.clone();
            let mut progress = move |p: f64, m: String| {
                let _ = t.send(BackupLine::Progress {
                    progress: p,
                    message: m,
                });
            };
            let made = req.clone();
            let line = match crate::backup::run(vm, req, &mut progress).await {
                Ok((files, quiesce)) => BackupLine::Done {
                    done: files,
                    quiesce: Some(quiesce),
                },
                Err(e) => BackupLine::Error {
                    error: format!("{e:#}"),
                },
            };
            // Files nobody takes (the controller went away meanwhile) are not kept.
            if tx.send(line).is_err() {
                crate::backup::remove_made(&made);
            }
        });
        Ok(Box::pin(futures::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            Ok,
        )))
    }

    async fn delete_backup_files(&self, req: DeleteBackupFilesRequest) -> Res<()> {
        tokio::task::spawn_blocking(move || crate::backup::delete_files(&req))
            .await
            .map_err(internal)?
            .map_err(invalid)
    }

    /// Starts a QEMU that waits for the VM's state from a live migration.
    async fn migrate_in(&self, id: &str, req: MigrateInRequest) -> Res<MigrateInReady> {
        check_id(id)?;
        if req.spec.id != id {
            return Err(invalid(anyhow::anyhow!("spec: id does not match the path")));
        }
        let vm = self.vm_or_new(&req.spec);
        let _g = vm.op.lock().await;
        let caps = serde_json::to_value(&req.capabilities)
            .map_err(|e| invalid(anyhow::anyhow!("capabilities: {e}")))?;
        let (uri, port, nbd_port) = vm.start_incoming(&self.arc(), req, caps).await?;
        Ok(MigrateInReady {
            uri,
            port,
            nbd_port,
        })
    }

    /// Sends a VM to a waiting host, with progress lines (one operation of the VM).
    async fn migrate_out(&self, req: MigrateOutRequest) -> Res<Lines<MigrationLine, AgentFailure>> {
        let vm = find(self, &req.vm_id)?;
        let owner = self
            .qemu_identity(&req.vm_id)
            .map_err(AgentError::Internal)?;
        vm.migration_abandoned
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<MigrationLine>();
        // Runs to its end even if the caller goes: QEMU's migration is not left half
        // watched (no downtime escalation, no mirror finished at the switch-over).
        tokio::spawn(async move {
            let _g = vm.op.lock().await;
            let t = tx.clone();
            let r = vm
                .migrate_out(&req, owner.as_ref(), &mut |p, m, step| {
                    let _ = t.send(MigrationLine::Progress {
                        progress: p,
                        message: m,
                        step: Some(step),
                    });
                })
                .await;
            let _ = tx.send(match r {
                Ok(done) => MigrationLine::Done { done },
                Err(e) => MigrationLine::Error {
                    error: e.to_string(),
                },
            });
        });
        Ok(Box::pin(futures::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            Ok,
        )))
    }

    /// Read through QMP alone: a migration under way holds the VM's operation lock.
    async fn get_migration(&self, id: &str) -> Res<MigrationState> {
        check_id(id)?;
        Ok(crate::migrate::migration_state(self.vm(id).as_deref()).await)
    }

    /// Through QMP alone, like [`get_migration`](Self::get_migration): the migration it
    /// ends may hold the VM's operation lock.
    async fn abandon_migration(
        &self,
        id: &str,
        req: AbandonMigrationRequest,
    ) -> Res<MigrationState> {
        let vm = find(self, id)?;
        Ok(crate::migrate::abandon_migration(&vm, req.resume, req.target_gone).await?)
    }

    /// Through QMP alone, like [`abandon_migration`](Self::abandon_migration).
    async fn recover_migration(
        &self,
        id: &str,
        req: RecoverMigrationRequest,
    ) -> Res<RecoverMigrationReady> {
        let vm = find(self, id)?;
        let port = crate::migrate::recover_incoming(&vm, &req.listen).await?;
        Ok(RecoverMigrationReady { port })
    }

    async fn resume_migration(&self, id: &str, req: ResumeMigrationRequest) -> Res<MigrationState> {
        let vm = find(self, id)?;
        Ok(crate::migrate::resume_outgoing(&vm, &req.uri).await?)
    }

    async fn read_image_file(&self, req: ReadImageFileRequest) -> Res<SizedBytes<AgentFailure>> {
        self.image_file_bytes(&req.path).await
    }

    async fn put_image(
        &self,
        req: PutImageRequest,
        body: ByteStream<AgentFailure>,
    ) -> Res<ImageFiles> {
        self.put_image_bytes(req, body).await
    }

    async fn read_disk_file(&self, req: ReadDiskFileRequest) -> Res<SizedBytes<AgentFailure>> {
        self.disk_file_bytes(req).await
    }

    async fn put_disk(
        &self,
        req: PutDiskRequest,
        body: ByteStream<AgentFailure>,
    ) -> Res<DiskCreated> {
        self.put_disk_bytes(req, body).await
    }

    /// The VM's console hub (scrollback, then live output; input goes to the guest).
    async fn console_socket(&self, id: &str) -> Res<Box<dyn ByteIo>> {
        let vm = find(self, id)?;
        Ok(Box::new(vm.console.open()))
    }

    /// The VM's VNC server (QEMU listens on a unix socket only).
    async fn vnc_socket(&self, id: &str) -> Res<Box<dyn ByteIo>> {
        let vm = find(self, id)?;
        let sock = tokio::net::UnixStream::connect(vm.paths.vnc())
            .await
            .map_err(|e| {
                AgentFailure::conflict(format!("the VM's VNC server is not reachable: {e}"))
            })?;
        Ok(Box::new(sock))
    }
}

/// A subscription to state changes as lines; it ends when the subscriber falls behind
/// (it has missed changes: the controller reconnects and reconciles).
pub fn event_lines(rx: tokio::sync::broadcast::Receiver<Event>) -> Lines<Event, AgentFailure> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.ok().map(|ev| (Ok(ev), rx))
    }))
}
