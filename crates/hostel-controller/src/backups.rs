//! Backups: targets (directories on the hosts) and backups of a VM's disks into them,
//! full or incremental (the agent's dirty bitmaps, `hostel-agent/src/backup.rs`), each
//! file checksummed; restored as a new VM or over their stopped VM. A backup outlives
//! its VM and is charged to its owner's disk quota. Each is made by a task that holds
//! the VM's lock; a backup whose files were written but not recorded is removed.

use crate::boot::BootConfig;
use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_api::public::*;
use hostel_model::{validate_name, Invalid};
use hostel_store::{new_id, now, BackupRecord, BackupTargetRecord};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

impl Controller {
    pub async fn backup_targets(&self, _ctx: &Ctx) -> Res<Vec<BackupTarget>> {
        let backups = self.store.backups().await?;
        Ok(self
            .store
            .backup_targets()
            .await?
            .into_iter()
            .map(|t| {
                let held: Vec<&BackupRecord> =
                    backups.iter().filter(|b| b.target_id == t.id).collect();
                BackupTarget {
                    backups: held.len() as u64,
                    size_bytes: held.iter().map(|b| b.size_bytes).sum(),
                    name: t.name,
                    dir: t.dir,
                    created_at: t.created_at.to_string(),
                }
            })
            .collect())
    }

    pub async fn create_backup_target(
        &self,
        ctx: &Ctx,
        req: CreateBackupTargetRequest,
    ) -> Res<BackupTarget> {
        ctx.require_admin()?;
        ctx.target(&req.name, None);
        validate_name("name", &req.name)?;
        let dir = req.dir.trim_end_matches('/').to_string();
        if !dir.starts_with('/') || dir.split('/').any(|c| c == "." || c == "..") {
            return Err(Invalid::new(
                "dir",
                format!("{:?}: give the directory's absolute path", req.dir),
            )
            .into());
        }
        if self.store.backup_target_by_name(&req.name).await?.is_some() {
            return Err(Error::conflict_field(
                "name",
                format!("a backup target named {:?} exists already", req.name),
            ));
        }
        let rec = BackupTargetRecord {
            id: new_id("bkt"),
            name: req.name.clone(),
            dir: dir.clone(),
            created_at: now(),
        };
        self.store.insert_backup_target(&rec).await?;
        Ok(BackupTarget {
            name: rec.name,
            dir,
            backups: 0,
            size_bytes: 0,
            created_at: rec.created_at.to_string(),
        })
    }

    pub async fn delete_backup_target(&self, ctx: &Ctx, name: &str) -> Res<()> {
        ctx.require_admin()?;
        let t = self.target_named(name).await?;
        let held = self.store.delete_backup_target_if_empty(&t.id).await?;
        if held > 0 {
            return Err(Error::conflict(format!(
                "backup target {name:?} holds {held} backups: delete them first \
                 (`hostel backup list`)"
            )));
        }
        Ok(())
    }

    /// The target named, else the only one there is.
    pub(crate) async fn target_for(&self, name: Option<&str>) -> Res<BackupTargetRecord> {
        if let Some(t) = name {
            return self.target_named(t).await;
        }
        let mut all = self.store.backup_targets().await?;
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err(Error::conflict(
                "there is no backup target yet: an admin adds one with \
                 `hostel backup-target add NAME DIR`",
            )),
            _ => Err(Invalid::new(
                "target",
                format!(
                    "there are several backup targets ({}): name one with --target",
                    all.iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .into()),
        }
    }

    /// The target a backup or schedule names (its row stays while they do).
    pub(crate) async fn target_by_id(&self, id: &str) -> Res<BackupTargetRecord> {
        self.store
            .backup_targets()
            .await?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| Error::internal(format!("backup target {id} is gone")))
    }

    async fn target_named(&self, name: &str) -> Res<BackupTargetRecord> {
        self.store
            .backup_target_by_name(name)
            .await?
            .ok_or_else(|| {
                Error::not_found(
                    "backup-target",
                    name,
                    format!(
                        "there is no backup target named {name:?}: `hostel backup-target list`"
                    ),
                )
            })
    }

    /// May the caller see (and restore, delete) backup `b`? Its owner, members of its
    /// owning group, whoever may operate its VM, and admins.
    async fn may_see(&self, ctx: &Ctx, b: &BackupRecord) -> Res<bool> {
        if ctx.is_admin() {
            return Ok(true);
        }
        let c = ctx.caller()?;
        let owned = match b.owner.as_deref().and_then(|o| o.split_once(':')) {
            Some(("user", id)) => id == c.user_id,
            Some(("group", id)) => c.group_ids.iter().any(|g| g == id),
            _ => false,
        };
        if owned {
            return Ok(true);
        }
        Ok(self
            .store
            .vm_by_id(&b.vm_id)
            .await?
            .is_some_and(|v| ctx.may_operate(&v)))
    }

    pub(crate) async fn backup_named(&self, ctx: &Ctx, name: &str) -> Res<BackupRecord> {
        let missing = || {
            Error::not_found(
                "backup",
                name,
                format!("there is no backup named {name:?}: `hostel backup list` shows yours"),
            )
        };
        let b = self.store.backup_by_name(name).await?.ok_or_else(missing)?;
        if !self.may_see(ctx, &b).await? {
            return Err(missing());
        }
        ctx.target(&b.name, Some(&b.id));
        Ok(b)
    }

    fn backup_view(
        b: BackupRecord,
        targets: &[BackupTargetRecord],
        all: &[BackupRecord],
    ) -> Backup {
        let files: Vec<wire::BackupFile> = serde_json::from_str(&b.files).unwrap_or_default();
        let def: CreateVmRequest = serde_json::from_str(&b.definition).unwrap_or_else(|_| {
            serde_json::from_value(serde_json::json!({"name": b.vm_name})).expect("defaults")
        });
        Backup {
            name: b.name.clone(),
            vm: b.vm_name.clone(),
            owner: b.owner.clone(),
            target: targets
                .iter()
                .find(|t| t.id == b.target_id)
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            kind: if files.iter().any(|f| f.incremental) {
                "incremental".into()
            } else {
                "full".into()
            },
            parent: b
                .parent_id
                .as_ref()
                .and_then(|p| all.iter().find(|x| &x.id == p))
                .map(|p| p.name.clone()),
            size_bytes: b.size_bytes,
            created_at: b.created_at.to_string(),
            disks: files
                .into_iter()
                .map(|f| BackupDisk {
                    index: f.index,
                    file: f.file,
                    size_bytes: f.size_bytes,
                    virtual_size_mib: f.virtual_size_mib,
                    sha256: f.sha256,
                    incremental: f.incremental,
                })
                .collect(),
            memory_mib: def.memory_mib,
            vcpus: def.vcpus,
            quiesce: b.quiesce.clone(),
        }
    }

    /// The caller's backups (all, for admins), newest first; of one VM with `vm`.
    pub async fn backups(&self, ctx: &Ctx, vm: Option<&str>) -> Res<Vec<Backup>> {
        let all = self.store.backups().await?;
        let targets = self.store.backup_targets().await?;
        let mut out = Vec::new();
        for b in &all {
            if vm.is_some_and(|v| v != b.vm_name) || !self.may_see(ctx, b).await? {
                continue;
            }
            out.push(Self::backup_view(b.clone(), &targets, &all));
        }
        Ok(out)
    }

    pub async fn backup(&self, ctx: &Ctx, name: &str) -> Res<Backup> {
        let b = self.backup_named(ctx, name).await?;
        let all = self.store.backups().await?;
        Ok(Self::backup_view(
            b,
            &self.store.backup_targets().await?,
            &all,
        ))
    }

    /// Deletes a backup no later one builds on: its row, then its files.
    pub async fn delete_backup(&self, ctx: &Ctx, name: &str) -> Res<()> {
        let b = self.backup_named(ctx, name).await?;
        self.remove_backup(&b).await
    }

    /// Removes backup `b` (its row, then its files) unless a later one builds on it.
    pub(crate) async fn remove_backup(&self, b: &BackupRecord) -> Res<()> {
        let name = &b.name;
        let target = self.target_by_id(&b.target_id).await?;
        let agent = self.agent(&b.host_id).ok_or_else(|| {
            Error::unavailable(format!(
                "the host that wrote backup {name:?} ({}) has no connected agent to remove \
                 its files",
                b.host_id
            ))
        })?;
        let children = self.store.delete_backup_if_leaf(&b.id).await?;
        if !children.is_empty() {
            return Err(Error::conflict(format!(
                "backup {} holds only the changes since {name:?}: delete it first",
                children.join(", ")
            )));
        }
        let files: Vec<wire::BackupFile> = serde_json::from_str(&b.files).unwrap_or_default();
        agent
            .delete_backup_files(wire::DeleteBackupFilesRequest {
                dir: target.dir.clone(),
                files: files.into_iter().map(|f| f.file).collect(),
            })
            .await?;
        Ok(())
    }

    /// Backs VM `name` up in a task: incremental onto its last backup when that is in
    /// the same target and on the same host, else full.
    pub async fn create_backup(
        self: &Arc<Self>,
        ctx: &Ctx,
        name: &str,
        req: CreateBackupRequest,
    ) -> Res<Task> {
        self.create_backup_then(ctx, name, req, false).await
    }

    /// [`Controller::create_backup`]; `prune`: then applies the VM's schedule's retention.
    pub(crate) async fn create_backup_then(
        self: &Arc<Self>,
        ctx: &Ctx,
        name: &str,
        req: CreateBackupRequest,
        prune: bool,
    ) -> Res<Task> {
        ctx.params(serde_json::json!({"target": req.target, "full": req.full}));
        let (guard, vm) = self.locked_vm(ctx, name).await?;
        let target = self.target_for(req.target.as_deref()).await?;
        if self.store.is_moving(&vm.id).await? {
            return Err(Error::conflict(format!(
                "VM {name:?} is migrating: back it up once it has arrived"
            )));
        }
        let host = vm
            .host_id
            .clone()
            .ok_or_else(|| Error::conflict("the VM has no host"))?;
        let agent = self.host_agent(&vm)?;
        let parent = if req.full {
            None
        } else {
            self.store
                .backups_of(&vm.id)
                .await?
                .into_iter()
                .next()
                .filter(|p| p.target_id == target.id && p.host_id == host)
        };
        let mut disks = Vec::new();
        for d in self.store.disks_of(&vm.id).await? {
            disks.push(wire::DiskSpec {
                index: d.idx,
                path: d.path.clone(),
                format: d.format.clone(),
                pool: self.pool_spec(d.pool_id.as_deref()).await?,
            });
        }
        if disks.is_empty() {
            return Err(Error::conflict(format!(
                "VM {name:?} has no disks to back up"
            )));
        }
        let definition = serde_json::to_string(&self.definition_of(&vm).await?)
            .map_err(|e| Error::internal(format!("{e}")))?;
        let backup_name = self.new_backup_name(&vm.name).await?;
        let task = self
            .new_task(
                ctx,
                "vm-backup",
                &vm.name,
                &format!("backing up to {}", target.name),
            )
            .await?;
        let rec = BackupRecord {
            id: new_id("bak"),
            name: backup_name,
            target_id: target.id.clone(),
            vm_id: vm.id.clone(),
            vm_name: vm.name.clone(),
            owner: crate::quota::owner_key(&vm),
            parent_id: parent.as_ref().map(|p| p.id.clone()),
            host_id: host,
            definition,
            files: String::new(),
            size_bytes: 0,
            created_at: now(),
            quiesce: None,
        };
        let body = wire::BackupVmRequest {
            vm_id: vm.id.clone(),
            dir: target.dir.clone(),
            backup_id: rec.id.clone(),
            disks,
            parent: parent.map(|p| wire::BackupParent {
                id: p.id,
                files: serde_json::from_str(&p.files).unwrap_or_default(),
            }),
        };
        let me = self.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            // The VM stays locked until its backup is recorded.
            let _guard = guard;
            let result = me.run_backup(&id, &agent, &vm, rec, body, &target).await;
            if result.is_ok() && prune {
                if let Err(e) = me.prune_backups(&vm.id).await {
                    tracing::warn!(vm = %vm.name, "pruning its backups: {e}");
                }
            }
            let _ = match result {
                Ok((name, quiesce)) => {
                    me.store
                        .update_task(
                            &id,
                            TaskState::Succeeded,
                            1.0,
                            &format!("backup {name}: {quiesce}"),
                            None,
                        )
                        .await
                }
                Err(e) => {
                    me.store
                        .update_task(&id, TaskState::Failed, 1.0, "failed", Some(&format!("{e}")))
                        .await
                }
            };
        });
        Ok(task)
    }

    async fn run_backup(
        &self,
        task: &str,
        agent: &crate::agent_client::AgentClient,
        vm: &hostel_store::VmRecord,
        mut rec: BackupRecord,
        body: wire::BackupVmRequest,
        target: &BackupTargetRecord,
    ) -> Res<(String, String)> {
        use futures::StreamExt;
        let made: Vec<String> = body
            .disks
            .iter()
            .map(|d| format!("{}-{}.qcow2", body.backup_id, d.index))
            .collect();
        let mut lines = agent.backup_vm(body).await?;
        let mut files = None;
        while let Some(line) = lines.next().await {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    // The stream broke: whatever the agent wrote is not kept.
                    let _ = agent
                        .delete_backup_files(wire::DeleteBackupFilesRequest {
                            dir: target.dir.clone(),
                            files: made,
                        })
                        .await;
                    return Err(e.into());
                }
            };
            match line {
                wire::BackupLine::Progress { progress, message } => {
                    let _ = self
                        .store
                        .update_task(task, TaskState::Running, progress, &message, None)
                        .await;
                }
                wire::BackupLine::Done { done, quiesce } => {
                    rec.quiesce = quiesce;
                    files = Some(done)
                }
                wire::BackupLine::Error { error } => return Err(Error::conflict(error)),
            }
        }
        let files = files.ok_or_else(|| {
            Error::unavailable("the host's agent ended the backup without a result")
        })?;
        rec.size_bytes = files.iter().map(|f| f.size_bytes).sum();
        // Only a backup with an incremental file needs its parent.
        if !files.iter().any(|f| f.incremental) {
            rec.parent_id = None;
        }
        rec.files = serde_json::to_string(&files).map_err(|e| Error::internal(format!("{e}")))?;
        let charge = crate::quota::Charge {
            disk_mib: rec.size_bytes.div_ceil(1 << 20),
            ..Default::default()
        };
        // Charged to the owner like any disk space: over quota, it is not kept.
        let kept = match self
            .charge(crate::quota::owner_key(vm).as_deref(), &charge)
            .await
        {
            Ok(_quota) => self.store.insert_backup(&rec).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = kept {
            let _ = agent
                .delete_backup_files(wire::DeleteBackupFilesRequest {
                    dir: target.dir.clone(),
                    files: files.into_iter().map(|f| f.file).collect(),
                })
                .await;
            return Err(e);
        }
        Ok((rec.name, rec.quiesce.unwrap_or_default()))
    }

    /// `VM-YYYYMMDD-HHMMSS`, with `-2`, `-3`, ... when taken.
    async fn new_backup_name(&self, vm: &str) -> Res<String> {
        let stamp: String = now()
            .to_string()
            .chars()
            .take(19)
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .map(|c| if c == 'T' { '-' } else { c })
            .collect();
        let base = format!("{vm}-{stamp}");
        let mut name = base.clone();
        let mut n = 2;
        while self.store.backup_by_name(&name).await?.is_some() {
            name = format!("{base}-{n}");
            n += 1;
        }
        Ok(name)
    }

    /// What a restore makes the VM from: its sizes, policies, boot (a kernel image by
    /// name) and networks (NICs get new addresses: the original may still hold them).
    pub(crate) async fn definition_of(&self, vm: &hostel_store::VmRecord) -> Res<CreateVmRequest> {
        let boot: BootConfig = vm
            .boot_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let mut nics = Vec::new();
        for n in self.store.nics_of(&vm.id).await? {
            let net = self
                .store
                .networks()
                .await?
                .into_iter()
                .find(|x| x.id == n.network_id)
                .map(|x| x.name);
            if let Some(network) = net {
                nics.push(NicRequest {
                    network,
                    ip: None,
                    mac: None,
                });
            }
        }
        let mut def: CreateVmRequest =
            serde_json::from_value(serde_json::json!({"name": vm.name})).expect("defaults");
        def.memory_mib = vm.memory_mib;
        def.max_memory_mib = Some(vm.max_memory_mib);
        def.vcpus = vm.vcpus;
        def.max_vcpus = Some(vm.max_vcpus);
        def.start = false;
        def.on_poweroff = vm.on_poweroff;
        def.on_reboot = vm.on_reboot;
        def.on_crash = vm.on_crash;
        def.nics = Some(nics);
        def.firmware = boot.firmware;
        def.kernel = boot.kernel;
        def.initrd = boot.initrd;
        def.cmdline = boot.cmdline;
        def.seed = Some(false);
        def.cpu_model = vm.cpu_model.clone();
        // A kernel image boots the restored VM as it booted this one; a disk image's
        // content is in the backed-up disk itself.
        if let Some(img) = self.image_of(vm).await? {
            if img.kind == hostel_model::ImageKind::DirectKernel {
                def.image = Some(img.name);
            }
        }
        Ok(def)
    }
}
