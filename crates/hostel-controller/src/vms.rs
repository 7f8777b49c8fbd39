//! VMs: finding one the actor may operate, listing, the lifecycle (start, stop, reboot,
//! pause, sizes, save and restore), deletion, and `info`. Every operation on a VM runs
//! under its lock and is checked against its state.

use crate::agent_client::AgentClient;
use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::agent::{self as wire, SaveHeader};
use hostel_api::public::*;
use hostel_model::{Invalid, Op, VmState};
use hostel_store::{now, ImageRecord, VmRecord};

type Res<T> = crate::error::Result<T>;

/// The states in which a VM has a QEMU process (and holds its memory), by name.
pub(crate) fn live_states() -> Vec<VmState> {
    VmState::ALL
        .into_iter()
        .filter(|s| s.has_process())
        .collect()
}

/// The most VMs one page of a list holds.
pub(crate) const MAX_PAGE: u32 = 1000;

/// Which of the caller's VMs a list holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmFilter<'a> {
    pub host: Option<&'a str>,
    pub state: Option<&'a str>,
    /// Text in the VM's name or one of its IP addresses.
    pub search: Option<&'a str>,
    /// `user:NAME` or `group:NAME`.
    pub owner: Option<&'a str>,
}

impl Controller {
    /// The VM named `name`, if the caller may operate it: to anyone else it does not
    /// exist (a 404, the same as for a name nobody uses).
    pub(crate) async fn vm_named(&self, ctx: &Ctx, name: &str) -> Res<VmRecord> {
        let missing = || {
            Error::not_found(
                "vm",
                name,
                format!("there is no VM named {name:?}: `hostel list` shows the VMs there are"),
            )
        };
        let vm = self.store.vm_by_name(name).await?.ok_or_else(missing)?;
        if !ctx.may_operate(&vm) {
            return Err(missing());
        }
        // What the operation acts on, for its audit entry.
        ctx.target(&vm.name, Some(&vm.id));
        Ok(vm)
    }

    /// Save files of non-admins live in `DATA/saves/USER/`; admins may name any path.
    pub(crate) fn check_save_path(&self, ctx: &Ctx, path: &str) -> Res<()> {
        if !ctx.is_admin() {
            let c = ctx.caller()?;
            let dir = self.cfg.data_dir.join("saves").join(&c.user_name);
            if !within(&dir, path) {
                return Err(Invalid::new(
                    "path",
                    format!(
                        "{path} is outside your save directory: save to a file in {}/",
                        dir.display()
                    ),
                )
                .into());
            }
            // All-in-one: the controller's data dir is the host's.
            let _ = std::fs::create_dir_all(&dir);
        }
        Ok(())
    }

    /// Removes the save file of a VM being deleted: its quota charge ends with the VM. Only
    /// files in the save directories: like `check_save_path`, this takes the controller's
    /// data dir for the host's (all-in-one).
    fn remove_save_file(&self, path: &str) {
        if within(&self.cfg.data_dir.join("saves"), path) {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!("removing the save file {path} of a deleted VM: {e}");
            }
        }
    }

    /// The VM under its operation lock, read again once the lock is held (an operation
    /// that ran meanwhile may have changed it).
    pub(crate) async fn locked_vm(
        &self,
        ctx: &Ctx,
        name: &str,
    ) -> Res<(crate::cluster::VmGuard, VmRecord)> {
        let vm = self.vm_named(ctx, name).await?;
        let guard = self.lock_vm(&vm.id).await;
        Ok((guard, self.vm_named(ctx, name).await?))
    }

    pub(crate) fn host_agent(&self, vm: &VmRecord) -> Res<AgentClient> {
        let host = vm.host_id.as_deref().unwrap_or_default();
        self.agent(host).ok_or_else(|| {
            Error::unavailable(format!("the VM's host {host:?} has no connected agent"))
        })
    }

    pub(crate) async fn image_of(&self, vm: &VmRecord) -> Res<Option<ImageRecord>> {
        match &vm.image_id {
            Some(id) => Ok(self.store.image_by_id(id).await?),
            None => Ok(None),
        }
    }

    /// One page of the VMs the caller may operate (of those `filter` lets through), in
    /// name order, and the name to
    /// continue after when more follow. Two queries whatever the page's size.
    pub async fn list_vms(
        &self,
        ctx: &Ctx,
        limit: u32,
        after: Option<&str>,
        filter: &VmFilter<'_>,
    ) -> Res<(Vec<VmSummary>, Option<String>)> {
        let VmFilter { host, state, .. } = *filter;
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Invalid::new(
                "limit",
                format!("{limit} VMs a page is out of range: ask for 1 to {MAX_PAGE}"),
            )
            .into());
        }
        if let Some(s) = state {
            if VmState::parse(s).is_none() {
                let names: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
                // Bad input (a 400), not a VM whose state forbids something: the domain
                // error says which, not the field's name.
                return Err(Invalid::new(
                    "state",
                    format!("{s:?} is not a VM state: use one of {}", names.join(", ")),
                )
                .into());
            }
        }
        let state = state.and_then(VmState::parse);
        if let Some(h) = host {
            if self.store.host(h).await?.is_none() {
                return Err(Error::not_found(
                    "host",
                    h,
                    format!("no host is named {h:?}: `hostel info` lists the hosts"),
                ));
            }
        }
        if filter.search.is_some_and(|q| q.chars().count() > 253) {
            return Err(Invalid::new(
                "q",
                "the search text is longer than 253 characters (a DNS name's most): shorten it",
            )
            .into());
        }
        let (owner_user_id, owner_group_id) = match filter.owner {
            None => (None, None),
            Some(o) => match o.split_once(':') {
                Some(("user", n)) => (Some(self.store.user_by_name(n).await?.map(|u| u.id)), None),
                Some(("group", n)) => {
                    (None, Some(self.store.group_by_name(n).await?.map(|g| g.id)))
                }
                _ => {
                    return Err(Invalid::new(
                        "owner",
                        format!("{o:?}: give user:NAME or group:NAME"),
                    )
                    .into())
                }
            },
        };
        // An owner that does not exist owns nothing: an empty list, not a tell.
        if owner_user_id == Some(None) || owner_group_id == Some(None) {
            return Ok((Vec::new(), None));
        }
        let visible_to = ctx.visible_to()?;
        let mut rows = self
            .store
            .vms_page(&hostel_store::VmPageQuery {
                visible_to,
                host_id: host,
                state,
                after,
                search: filter.search.filter(|t| !t.is_empty()),
                owner_user_id: owner_user_id.flatten().as_deref(),
                owner_group_id: owner_group_id.flatten().as_deref(),
                // One more than asked tells whether another page follows.
                limit: limit + 1,
            })
            .await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.vm.name.clone())
        } else {
            None
        };
        // How fresh each row's state is: as fresh as its host's last report.
        let freshness = self.host_freshness().await?;
        let out = rows
            .into_iter()
            .map(|r| {
                let state = r.vm.state;
                let v = r.vm;
                let (host_stale, state_age_seconds) = v
                    .host_id
                    .as_ref()
                    .and_then(|h| freshness.get(h).copied())
                    .unwrap_or_default();
                VmSummary {
                    host_stale,
                    state_age_seconds,
                    owner: match (r.owner_user, r.owner_group) {
                        (Some(u), _) => Some(format!("user:{u}")),
                        (None, Some(g)) => Some(format!("group:{g}")),
                        _ => None,
                    },
                    state,
                    state_reason: v.state_reason,
                    host: v.host_id,
                    image: r.image,
                    memory_mib: v.memory_mib,
                    max_memory_mib: v.max_memory_mib,
                    vcpus: v.vcpus,
                    max_vcpus: v.max_vcpus,
                    ips: r.ips,
                    dns_names: r.dns_names,
                    pid: if state.has_process() { v.pid } else { None },
                    lease_warning: v.lease_expires_at.and_then(crate::lease::warning),
                    lease_expires_at: v.lease_expires_at.map(|t| t.to_string()),
                    created_at: v.created_at.to_string(),
                    id: v.id,
                    name: v.name,
                }
            })
            .collect();
        Ok((out, next))
    }

    /// Starts the VM on its host and records what the host says; the host's answer.
    pub(crate) async fn start_locked(
        &self,
        vm: &VmRecord,
        restore_from: Option<&str>,
    ) -> Res<wire::VmStatus> {
        let agent = self.host_agent(vm)?;
        // A restore needs the machine type its state was saved from, which is the one
        // recorded (or, unpinned, `q35` as before).
        let vm = &match restore_from {
            None => {
                // A cold start may change its devices: it gets the guest agent's port.
                let mut vm = self.pin_platform(vm).await?;
                if !vm.guest_agent {
                    self.store.set_vm_guest_agent(&vm.id, true).await?;
                    vm.guest_agent = true;
                }
                vm
            }
            Some(_) => vm.clone(),
        };
        let spec = self.spec_of(vm).await?;
        let status = agent
            .start_vm(
                &vm.id,
                wire::StartRequest {
                    spec,
                    restore_from: restore_from.map(String::from),
                    load_snapshot: None,
                },
            )
            .await?;
        hostel_faults::point("controller.start.launched").await;
        self.store
            .set_vm_state(&vm.id, status.state, status.reason.as_deref(), status.pid)
            .await?;
        Ok(status)
    }

    /// Runs `f` under the VM's lock as a recorded operation, after checking the state.
    pub(crate) async fn operate<F, Fut>(&self, ctx: &Ctx, name: &str, op: Op, f: F) -> Res<Vm>
    where
        F: FnOnce(VmRecord, AgentClient) -> Fut,
        Fut: std::future::Future<Output = Res<()>>,
    {
        let vm = self.vm_named(ctx, name).await?;
        let _g = if op == Op::Destroy {
            // Destroy must be able to end an operation that hangs.
            None
        } else {
            Some(self.lock_vm(&vm.id).await)
        };
        let vm = self.vm_named(ctx, name).await?;
        op.check(vm.state)?;
        let agent = self.host_agent(&vm)?;
        let rec = self.journal_simple(ctx, op.name(), name, Some(&vm)).await?;
        let result = f(vm.clone(), agent).await;
        rec.end(&result).await;
        result?;
        let vm = self.vm_named(ctx, name).await?;
        self.view(&vm, true).await
    }

    pub(crate) async fn sync_status(&self, vm_id: &str, s: &wire::VmStatus) -> Res<()> {
        hostel_faults::point("controller.action.done-on-host").await;
        self.store
            .set_vm_state(vm_id, s.state, s.reason.as_deref(), s.pid)
            .await?;
        Ok(())
    }

    pub async fn start_vm(&self, ctx: &Ctx, name: &str) -> Res<Vm> {
        self.operate(ctx, name, Op::Start, |vm, _| async move {
            if vm
                .lease_expires_at
                .is_some_and(|e| e <= hostel_store::now())
            {
                return Err(Invalid::new(
                    "lease",
                    format!(
                        "the lease of {:?} ended at {}: `hostel renew {}` first",
                        vm.name,
                        vm.lease_expires_at
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        vm.name
                    ),
                )
                .into());
            }
            let _quota = self.charge_start(&vm).await?;
            self.start_locked(&vm, None).await.map(|_| ())
        })
        .await
    }

    pub async fn simple_action(&self, ctx: &Ctx, name: &str, op: Op) -> Res<Vm> {
        if !matches!(op, Op::Reboot | Op::Pause | Op::Unpause | Op::Destroy) {
            return Err(Error::internal(format!(
                "{} is not a simple action",
                op.name()
            )));
        }
        self.operate(ctx, name, op, |vm, agent| async move {
            let s = match op {
                Op::Reboot => agent.reboot_vm(&vm.id).await?,
                Op::Pause => agent.pause_vm(&vm.id).await?,
                Op::Unpause => agent.unpause_vm(&vm.id).await?,
                _ => agent.destroy_vm(&vm.id).await?,
            };
            self.sync_status(&vm.id, &s).await
        })
        .await
    }

    pub async fn shutdown_vm(&self, ctx: &Ctx, name: &str, req: ShutdownRequest) -> Res<Vm> {
        ctx.params(serde_json::json!({"timeout_secs": req.timeout_secs, "force": req.force}));
        self.operate(ctx, name, Op::Shutdown, |vm, agent| async move {
            let s = agent
                .shutdown_vm(
                    &vm.id,
                    wire::ShutdownRequest {
                        timeout_secs: req.timeout_secs,
                        force: req.force,
                    },
                )
                .await?;
            self.sync_status(&vm.id, &s).await
        })
        .await
    }

    /// The quota a start charges: one more running VM, its max memory (what QEMU is
    /// given, whatever the balloon target) and vCPUs.
    pub(crate) async fn charge_start(
        &self,
        vm: &VmRecord,
    ) -> Res<Option<tokio::sync::MutexGuard<'_, ()>>> {
        self.charge(
            crate::quota::owner_key(vm).as_deref(),
            &crate::quota::Charge {
                ram_mib: vm.max_memory_mib,
                vms_running: 1,
                vcpus: vm.vcpus as u64,
                vm_max_ram_mib: vm.max_memory_mib,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn mem_set(&self, ctx: &Ctx, name: &str, memory_mib: u64) -> Res<Vm> {
        ctx.params(serde_json::json!({"memory_mib": memory_mib}));
        self.operate(ctx, name, Op::MemSet, |vm, agent| async move {
            // No quota check: memory is charged at the VM's max memory, which a balloon
            // target never passes.
            if memory_mib < hostel_model::MIN_MEMORY_MIB || memory_mib > vm.max_memory_mib {
                return Err(Invalid::new(
                    "memory",
                    format!(
                        "{} is out of range for this VM: use between {} and its max memory {} \
                         (max memory is fixed at create time with --max-memory)",
                        hostel_model::format_mib(memory_mib),
                        hostel_model::format_mib(hostel_model::MIN_MEMORY_MIB),
                        hostel_model::format_mib(vm.max_memory_mib)
                    ),
                )
                .into());
            }
            if vm.state.has_process() {
                agent
                    .set_balloon(&vm.id, wire::BalloonRequest { memory_mib })
                    .await?;
            }
            self.store.set_vm_memory(&vm.id, memory_mib).await?;
            Ok(())
        })
        .await
    }

    pub async fn vcpu_set(&self, ctx: &Ctx, name: &str, vcpus: u32) -> Res<Vm> {
        ctx.params(serde_json::json!({"vcpus": vcpus}));
        self.operate(ctx, name, Op::VcpuSet, |vm, agent| async move {
            let _quota = self
                .charge(
                    crate::quota::owner_key(&vm).as_deref(),
                    &crate::quota::Charge {
                        vcpus: if vm.state.has_process() {
                            (vcpus as u64).saturating_sub(vm.vcpus as u64)
                        } else {
                            0
                        },
                        ..Default::default()
                    },
                )
                .await?;
            if vcpus < 1 || vcpus > vm.max_vcpus {
                return Err(Invalid::new(
                    "vcpus",
                    format!(
                        "{vcpus} is out of range for this VM: use between 1 and its max vCPUs {} \
                         (fixed at create time with --max-vcpus)",
                        vm.max_vcpus
                    ),
                )
                .into());
            }
            if vm.state.has_process() {
                agent
                    .set_vcpus(&vm.id, wire::VcpusRequest { vcpus })
                    .await?;
            }
            self.store.set_vm_vcpus(&vm.id, vcpus).await?;
            Ok(())
        })
        .await
    }

    pub async fn save_vm(&self, ctx: &Ctx, name: &str, path: String) -> Res<Vm> {
        ctx.params(serde_json::json!({"path": path}));
        self.check_save_path(ctx, &path)?;
        self.require_free_space()?;
        self.operate(ctx, name, Op::Save, |vm, agent| async move {
            let _quota = self.charge_save(&vm).await?;
            let header = SaveHeader {
                magic: wire::SAVE_MAGIC.into(),
                vm_id: vm.id.clone(),
                vm_name: vm.name.clone(),
                saved_at: now().to_string(),
            };
            let s = agent
                .save_vm(
                    &vm.id,
                    wire::SaveRequest {
                        path: path.clone(),
                        header,
                    },
                )
                .await?;
            // The file first: a crash between the two leaves a VM the host says is
            // saved (the next reconcile) whose file is known.
            self.store.set_vm_saved(&vm.id, Some(&path)).await?;
            hostel_faults::point("controller.save.saved").await;
            self.sync_status(&vm.id, &s).await?;
            Ok(())
        })
        .await
    }

    pub async fn restore_vm(&self, ctx: &Ctx, path: String) -> Res<Vm> {
        ctx.params(serde_json::json!({"path": path}));
        self.check_save_path(ctx, &path)?;
        // Any host can read the header; the VM it names decides where it resumes.
        let (_, agent) = self
            .agents()
            .into_iter()
            .next()
            .ok_or_else(|| Error::unavailable("no host is connected"))?;
        let header = agent
            .read_save_header(wire::SaveHeaderRequest { path: path.clone() })
            .await?;
        let vm = self.store.vm_by_id(&header.vm_id).await?.ok_or_else(|| {
            Error::from(Invalid::new(
                "path",
                format!(
                    "{path} holds the state of VM {:?}, which no longer exists",
                    header.vm_name
                ),
            ))
        })?;
        // The same answer as for a VM that is gone: nothing about others' VMs leaks.
        if !ctx.may_operate(&vm) {
            return Err(Error::not_found(
                "vm",
                &path,
                format!("{path} holds the state of no VM of yours"),
            ));
        }
        self.operate(ctx, &vm.name, Op::Restore, |vm, _| async move {
            let _quota = self.charge_start(&vm).await?;
            self.start_locked(&vm, Some(&path)).await?;
            hostel_faults::point("controller.restore.restored").await;
            self.store.set_vm_saved(&vm.id, None).await?;
            Ok(())
        })
        .await
    }

    pub async fn delete_vm(&self, ctx: &Ctx, name: &str) -> Res<()> {
        self.delete_vm_keeping(ctx, name, false).await.map(|_| ())
    }

    /// Deletes a stopped VM; its disk files go too unless `keep_disks`, in which case
    /// their paths are returned (no row points at them any more: they are the user's).
    pub async fn delete_vm_keeping(
        &self,
        ctx: &Ctx,
        name: &str,
        keep_disks: bool,
    ) -> Res<Vec<String>> {
        ctx.params(serde_json::json!({"keep_disks": keep_disks}));
        if keep_disks && !ctx.is_admin() {
            // Kept files belong to no VM, so no quota would charge them.
            return Err(Error::forbidden(
                "only an admin may delete a VM and keep its disk files: files no VM owns \
                 are charged to no quota. Delete the VM without --keep-disks, or ask an \
                 admin to keep them for you",
            ));
        }
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        Op::Delete.check(vm.state)?;
        let agent = self.host_agent(&vm)?;
        let disks = self.store.disks_of(&vm.id).await?;
        let intent = crate::journal::Intent {
            files: if keep_disks {
                Vec::new()
            } else {
                disks.iter().map(crate::journal::DiskFile::at).collect()
            },
            ..Default::default()
        };
        let op = self
            .journal(ctx, "delete", name, Some(&vm), &intent)
            .await?;
        let result: Res<Vec<String>> = async {
            agent.forget_vm(&vm.id).await?;
            op.step("host-forgot").await?;
            // Rows first, then files: a disk file is never removed while a row points to it.
            let had_nics = !self.store.nics_of(&vm.id).await?.is_empty();
            self.store.delete_vm(&vm.id).await?;
            op.step("rows-deleted").await?;
            let kept = if keep_disks {
                disks
                    .iter()
                    .map(|d| d.path.clone())
                    .chain(vm.saved_path.clone())
                    .collect()
            } else {
                self.remove_disk_files(&agent, &disks).await;
                if let Some(path) = &vm.saved_path {
                    self.remove_save_file(path);
                }
                Vec::new()
            };
            if had_nics {
                self.sync_networks().await?;
            }
            Ok(kept)
        }
        .await;
        op.end(&result).await;
        let kept = result?;
        self.locks.lock().unwrap().remove(&vm.id);
        Ok(kept)
    }

    pub async fn info(&self, ctx: &Ctx) -> Res<Info> {
        let mut hosts = self.hosts_info(None).await?;
        // Where agents and the data live is for admins (`hostel host list`).
        let admin = ctx.is_admin();
        if !admin {
            for h in &mut hosts {
                h.url.clear();
            }
        }
        let ssh = self.ssh_console.lock().unwrap().clone();
        Ok(Info {
            version: env!("CARGO_PKG_VERSION").into(),
            data_dir: if admin {
                self.cfg.data_dir.display().to_string()
            } else {
                String::new()
            },
            database: match (admin, self.store.is_sqlite()) {
                (false, _) => String::new(),
                (true, true) => "sqlite".into(),
                (true, false) => "postgresql".into(),
            },
            hosts,
            ssh_console: ssh.as_ref().map(|s| s.addr.clone()),
            ssh_host_key: ssh.as_ref().map(|s| s.host_key.clone()),
            ssh_host_key_fingerprint: ssh.map(|s| s.fingerprint),
            controllers: if admin {
                let stale = hostel_store::Store::stale_before();
                let all = self.store.controllers().await?;
                // A leader that died says so until its heartbeat is stale; the one that
                // took over has said it since.
                let leader = all
                    .iter()
                    .filter(|c| c.leader && c.last_seen > stale)
                    .max_by_key(|c| c.last_seen)
                    .map(|c| c.id.clone());
                all.into_iter()
                    // One `hostel up` on SQLite: its earlier lives are no news.
                    .filter(|c| c.last_seen > stale || self.shared_database())
                    .map(|c| ControllerInfo {
                        alive: c.last_seen > stale,
                        leader: leader.as_ref() == Some(&c.id),
                        last_seen: c.last_seen.to_string(),
                        id: c.id,
                        name: c.name,
                        api: c.api,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            controller: self.id().to_string(),
            metrics_listen: if admin {
                self.metrics_listen.lock().unwrap().clone()
            } else {
                None
            },
        })
    }
}

/// True if `path` names something under `dir`, with no `..` to climb out.
fn within(dir: &std::path::Path, path: &str) -> bool {
    let p = std::path::Path::new(path);
    p.starts_with(dir)
        && !p
            .components()
            .any(|x| matches!(x, std::path::Component::ParentDir))
}
