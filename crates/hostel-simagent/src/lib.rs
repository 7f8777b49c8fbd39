//! A SIMULATED agent, for the control-plane benchmark (`hostel-bench`'s `hostel-simagent`)
//! and for tests of the agent API. It runs no QEMU and touches no disk or network: a
//! [`SimHost`] implements [`AgentApi`] with records in memory, and is served by the same
//! router as the real agent (`hostel_agent::api_router`). Long because it implements
//! the whole agent contract, one method per endpoint, as the real agent does.
//!
//! Host k is `simhost-k`. It reports as running the fleet VMs `simvm-i` with
//! `i % hosts == k` and `i <` the number in its fleet file (read at each listing, so the
//! benchmark can grow the fleet it wrote into the database); VMs the controller starts on
//! it are kept in memory, and each change is streamed as events like a real agent's.

use hostel_api::agent::*;
use hostel_model::{Accel, ImageKind, VmState};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

/// A SIMULATED host: answers the whole agent API from memory (no QEMU, disk or network;
/// its only file access is reading the fleet file). Websockets are not simulated.
pub struct SimHost {
    index: usize,
    hosts: usize,
    fleet_file: PathBuf,
    /// VMs started through the API, by id.
    vms: Mutex<HashMap<String, VmStatus>>,
    /// Fleet VMs the controller stopped (they no longer run).
    stopped: Mutex<HashSet<String>>,
    events: tokio::sync::broadcast::Sender<Event>,
    /// Simulated files: disks and images "created", save files "written".
    disks: Mutex<BTreeSet<String>>,
    images: Mutex<BTreeSet<String>>,
    /// The simulated bytes of each image file, by path (for copies between hosts).
    image_bytes: Mutex<HashMap<String, bytes::Bytes>>,
    saves: Mutex<HashMap<String, SaveHeader>>,
    networks: Mutex<NetworksState>,
    /// SIMULATION of a failure: every start is refused while set (for tests of the
    /// controller's rollbacks).
    refuse_starts: std::sync::atomic::AtomicBool,
    /// SIMULATION of a failure: image files read out with one byte changed.
    corrupt_reads: std::sync::atomic::AtomicBool,
    /// Images stored from another host's bytes (copies received), counted.
    puts: std::sync::atomic::AtomicUsize,
    /// When this simulated host came up: simulated usage counters grow from here.
    born: std::time::Instant,
    /// SIMULATION: counters set by a test, reported instead of the generated ones.
    counters: Mutex<HashMap<String, VmCounters>>,
    /// SIMULATION of a slow host: how long a counters request takes.
    stats_delay: Mutex<std::time::Duration>,
    /// SIMULATED outgoing migrations' statuses (`completed`, `cancelled`), by VM id.
    migrations: Mutex<HashMap<String, String>>,
    /// The QEMU capabilities the last outgoing migration asked for (for tests).
    sent_capabilities: Mutex<Vec<String>>,
    /// SIMULATED machine types and CPU models this host's QEMU would offer.
    platform: Mutex<hostel_api::agent::Platform>,
}

type Res<T> = Result<T, AgentFailure>;

/// A SIMULATED VM's status (no QEMU: the argv says so).
fn status(id: &str, name: &str, state: VmState, pid: Option<u32>) -> VmStatus {
    VmStatus {
        id: id.into(),
        name: name.into(),
        state,
        reason: Some("simulated".into()),
        pid,
        argv: vec!["(simulated agent: no QEMU)".into()],
        accel: Accel::Kvm,
        balloon_mib: None,
        vcpus: 1,
        nics: Vec::new(),
    }
}

fn not_found(id: &str) -> AgentFailure {
    AgentFailure::not_found(format!("no VM {id} on this simulated host"))
}

impl SimHost {
    /// SIMULATION: host `index` of `hosts`, whose fleet size is read from `fleet_file`
    /// (a missing file: no fleet VMs).
    pub fn new(index: usize, hosts: usize, fleet_file: PathBuf) -> SimHost {
        SimHost {
            index,
            hosts: hosts.max(1),
            fleet_file,
            vms: Mutex::default(),
            stopped: Mutex::default(),
            events: tokio::sync::broadcast::channel(1024).0,
            disks: Mutex::default(),
            images: Mutex::default(),
            image_bytes: Mutex::default(),
            saves: Mutex::default(),
            networks: Mutex::default(),
            refuse_starts: Default::default(),
            corrupt_reads: Default::default(),
            puts: Default::default(),
            born: std::time::Instant::now(),
            counters: Mutex::default(),
            stats_delay: Mutex::default(),
            migrations: Mutex::default(),
            sent_capabilities: Mutex::default(),
            platform: Mutex::new(hostel_api::agent::Platform {
                machine: "pc-q35-10.0".into(),
                machines: vec!["pc-q35-10.0".into(), "pc-q35-9.2".into()],
                cpu_models: vec![
                    "Nehalem-v1".into(),
                    hostel_model::CPU_BASELINE.into(),
                    "Haswell-v4".into(),
                ],
                cpu_name: "simulated CPU".into(),
                postcopy: true,
            }),
        }
    }

    /// The capabilities the last migration sent from here asked QEMU for.
    pub fn sent_capabilities(&self) -> Vec<String> {
        self.sent_capabilities.lock().unwrap().clone()
    }

    /// SIMULATION: the machine types and CPU models this host reports when the
    /// controller next asks for its facts (a host with another QEMU or CPU).
    pub fn set_platform(&self, p: hostel_api::agent::Platform) {
        *self.platform.lock().unwrap() = p;
    }

    /// SIMULATION: report these counters for VM `c.id` (while it runs) instead of
    /// generated ones, until set again.
    pub fn set_counters(&self, c: VmCounters) {
        self.counters.lock().unwrap().insert(c.id.clone(), c);
    }

    /// SIMULATION of a slow host: every counters request answers after `d`.
    pub fn delay_stats(&self, d: std::time::Duration) {
        *self.stats_delay.lock().unwrap() = d;
    }

    /// SIMULATION: refuse every start from now on (`true`) or no longer (`false`), as a
    /// host whose QEMU cannot start would.
    pub fn refuse_starts(&self, on: bool) {
        self.refuse_starts
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// SIMULATION: image files are read out with a byte changed (`true`), as a failing
    /// disk or a broken link would deliver them, or intact (`false`).
    pub fn corrupt_image_reads(&self, on: bool) {
        self.corrupt_reads
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// SIMULATION: the image files this host holds now.
    pub fn image_files(&self) -> Vec<String> {
        self.images.lock().unwrap().iter().cloned().collect()
    }

    /// SIMULATION: how many copies of images other hosts' bytes were sent here.
    pub fn images_received(&self) -> usize {
        self.puts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// SIMULATION: the disk files this host holds now.
    pub fn disk_files(&self) -> Vec<String> {
        self.disks.lock().unwrap().iter().cloned().collect()
    }

    /// SIMULATION: the host's name, `simhost-INDEX`.
    pub fn name(&self) -> String {
        format!("simhost-{}", self.index)
    }

    /// The fleet VMs this host runs now: `simvm-i` for its share of i below the count.
    fn fleet(&self) -> Vec<VmStatus> {
        let n: usize = std::fs::read_to_string(&self.fleet_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let stopped = self.stopped.lock().unwrap();
        (self.index..n)
            .step_by(self.hosts)
            .map(|i| format!("simvm-{i}"))
            .filter(|id| !stopped.contains(id))
            .map(|id| {
                let i: u32 = id[6..].parse().unwrap_or(0);
                let name = format!("sim{i}");
                status(&id, &name, VmState::Running, Some(100_000 + i))
            })
            .collect()
    }

    fn find(&self, id: &str) -> Res<VmStatus> {
        if let Some(s) = self.vms.lock().unwrap().get(id) {
            return Ok(s.clone());
        }
        if id.starts_with("simvm-") {
            if let Some(s) = self.fleet().into_iter().find(|s| s.id == id) {
                return Ok(s);
            }
        }
        Err(not_found(id))
    }

    /// A SIMULATED new disk file of a VM.
    fn new_disk(&self, vm_id: &str, index: u32, size_mib: u64) -> DiskCreated {
        let path = format!("/simulated/{vm_id}/disk{index}.qcow2");
        self.disks.lock().unwrap().insert(path.clone());
        DiskCreated {
            path,
            format: "qcow2".into(),
            size_mib,
        }
    }

    /// Records a VM's new state, streamed as an event.
    fn set(&self, s: VmStatus) -> VmStatus {
        let _ = self.events.send(Event {
            vm_id: s.id.clone(),
            state: s.state,
            reason: s.reason.clone(),
            pid: s.pid,
        });
        self.keep(s)
    }

    fn keep(&self, s: VmStatus) -> VmStatus {
        if s.id.starts_with("simvm-") && !s.state.has_process() {
            self.stopped.lock().unwrap().insert(s.id.clone());
        }
        self.vms.lock().unwrap().insert(s.id.clone(), s.clone());
        s
    }

    /// Moves a VM to `state` (no process: no pid).
    fn to_state(&self, id: &str, state: VmState) -> Res<VmStatus> {
        let mut s = self.find(id)?;
        s.state = state;
        if !state.has_process() {
            s.pid = None;
        }
        Ok(self.set(s))
    }

    /// Changes a known VM's status (not its state) with `f`.
    fn update(&self, id: &str, f: impl FnOnce(&mut VmStatus)) -> Res<VmStatus> {
        let mut s = self.find(id)?;
        f(&mut s);
        Ok(self.keep(s))
    }

    /// A simulated image: one file of 1 MiB of its name repeated, with its real SHA-256.
    fn image(&self, name: &str, kind: ImageKind) -> ImageFiles {
        let path = format!("{SIM_IMAGES}/{name}.qcow2");
        let content: Vec<u8> = name.bytes().cycle().take(1 << 20).collect();
        let sha256 = sha256_hex(&content);
        self.images.lock().unwrap().insert(path.clone());
        self.image_bytes
            .lock()
            .unwrap()
            .insert(path.clone(), content.into());
        ImageFiles {
            name: name.into(),
            kind,
            format: "qcow2".into(),
            path,
            initrd: None,
            cmdline: None,
            size_bytes: 1 << 20,
            virtual_size_mib: 1024,
            sha256,
        }
    }
}

/// SIMULATED usage counters of a running VM: they grow steadily from the host's start,
/// at rates that differ from VM to VM (10 to 40 % of a vCPU, tens of KB/s of disk and
/// network), so that graphs have something plausible to show.
fn simulated_counters(s: &VmStatus, since_start: std::time::Duration) -> VmCounters {
    let k = 1 + s.id.bytes().map(u64::from).sum::<u64>() % 4;
    let ms = since_start.as_millis() as u64;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    VmCounters {
        id: s.id.clone(),
        pid: s.pid.unwrap_or(0),
        at_ms,
        cpu_ns: ms * 1_000_000 * k / 10,
        memory_bytes: (32 + 16 * k) << 20,
        disk_read_bytes: ms * 64 * k,
        disk_write_bytes: ms * 16 * k,
        net_rx_bytes: ms * 8 * k,
        net_tx_bytes: ms * 4 * k,
        disk_read_ops: ms * k / 64,
        disk_write_ops: ms * k / 256,
        net_rx_packets: ms * k / 128,
        net_tx_packets: ms * k / 256,
        balloon_bytes: Some((64 * k) << 20),
        guard_drops: 0,
    }
}

/// Where the simulated image store is (no such directory exists).
const SIM_IMAGES: &str = "/simulated/images";

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A simulated build or import: one progress line, then `done`.
fn image_lines(img: ImageFiles) -> Lines<ImageLine, AgentFailure> {
    Box::pin(futures::stream::iter([
        Ok(ImageLine::Progress {
            progress: 0.5,
            message: "simulated".into(),
        }),
        Ok(ImageLine::Done { done: img }),
    ]))
}

/// SIMULATION of the agent API: every endpoint answers from memory; consoles and VNC
/// are `unavailable`.
impl AgentApi for SimHost {
    type Error = AgentFailure;
    type Socket = tokio::io::DuplexStream;

    async fn host(&self) -> Res<HostFacts> {
        Ok(HostFacts {
            name: self.name(),
            cpus: 64,
            memory_total_mib: 256 * 1024,
            accel: Accel::Kvm,
            accel_reason: "simulated agent (no probe)".into(),
            qemu_version: "simulated".into(),
            kernel: "simulated".into(),
            disks_dir: "/simulated".into(),
            platform: self.platform.lock().unwrap().clone(),
        })
    }

    async fn list_vms(&self) -> Res<Vec<VmStatus>> {
        let vms = self.vms.lock().unwrap().clone();
        // A fleet VM the controller changed is listed once, as changed.
        let mut out: Vec<VmStatus> = self
            .fleet()
            .into_iter()
            .filter(|s| !vms.contains_key(&s.id))
            .collect();
        out.extend(vms.into_values().filter(|s| s.state.has_process()));
        Ok(out)
    }

    async fn get_vm(&self, id: &str) -> Res<VmStatus> {
        self.find(id)
    }

    async fn start_vm(&self, id: &str, req: StartRequest) -> Res<VmStatus> {
        if self.refuse_starts.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AgentFailure::conflict(
                "QEMU did not start (simulated failure)",
            ));
        }
        self.stopped.lock().unwrap().remove(id);
        let pid = 200_000 + (self.vms.lock().unwrap().len() as u32);
        let mut s = status(id, &req.spec.name, VmState::Running, Some(pid));
        s.vcpus = req.spec.vcpus;
        Ok(self.set(s))
    }

    async fn destroy_vm(&self, id: &str) -> Res<VmStatus> {
        self.to_state(id, VmState::Stopped)
    }

    async fn shutdown_vm(&self, id: &str, _req: ShutdownRequest) -> Res<VmStatus> {
        self.to_state(id, VmState::Stopped)
    }

    async fn reboot_vm(&self, id: &str) -> Res<VmStatus> {
        self.to_state(id, VmState::Running)
    }

    async fn pause_vm(&self, id: &str) -> Res<VmStatus> {
        self.to_state(id, VmState::Paused)
    }

    async fn unpause_vm(&self, id: &str) -> Res<VmStatus> {
        self.to_state(id, VmState::Running)
    }

    async fn set_balloon(&self, id: &str, req: BalloonRequest) -> Res<VmStatus> {
        self.update(id, |s| s.balloon_mib = Some(req.memory_mib))
    }

    async fn set_vcpus(&self, id: &str, req: VcpusRequest) -> Res<VmStatus> {
        self.update(id, |s| s.vcpus = req.vcpus)
    }

    /// SIMULATED: nothing runs to limit; the VM must exist.
    async fn set_limits(&self, id: &str, _req: Limits) -> Res<VmStatus> {
        self.update(id, |_| {})
    }

    async fn save_vm(&self, id: &str, req: SaveRequest) -> Res<VmStatus> {
        let s = self.to_state(id, VmState::Saved)?;
        self.saves.lock().unwrap().insert(req.path, req.header);
        Ok(s)
    }

    async fn forget_vm(&self, id: &str) -> Res<()> {
        self.vms.lock().unwrap().remove(id);
        Ok(())
    }

    async fn console_log(&self, id: &str, req: ConsoleLogRequest) -> Res<Vec<String>> {
        let n = req.lines.unwrap_or(100).min(1);
        let line = format!("(simulated agent: VM {id} has no console)");
        Ok(std::iter::repeat_n(line, n).collect())
    }

    async fn clear_console_log(&self, _id: &str) -> Res<()> {
        Ok(())
    }

    async fn read_save_header(&self, req: SaveHeaderRequest) -> Res<SaveHeader> {
        self.saves
            .lock()
            .unwrap()
            .get(&req.path)
            .cloned()
            .ok_or_else(|| AgentFailure::not_found(format!("no saved VM at {}", req.path)))
    }

    async fn render_argv(&self, _spec: VmSpec) -> Res<Vec<String>> {
        Ok(vec!["(simulated agent: no QEMU)".into()])
    }

    async fn list_files(&self) -> Res<StoredFiles> {
        Ok(StoredFiles {
            disks: self.disks.lock().unwrap().iter().cloned().collect(),
            images: self.images.lock().unwrap().iter().cloned().collect(),
            runtime: self.vms.lock().unwrap().keys().cloned().collect(),
        })
    }

    async fn list_files_in_pools(&self, _pools: Vec<PoolSpec>) -> Res<StoredFiles> {
        self.list_files().await
    }

    async fn put_networks(&self, state: NetworksState) -> Res<NetworksApplied> {
        *self.networks.lock().unwrap() = state;
        Ok(NetworksApplied::default())
    }

    async fn get_networks(&self) -> Res<NetworksState> {
        Ok(self.networks.lock().unwrap().clone())
    }

    async fn add_nic(&self, id: &str, nic: NicSpec) -> Res<VmStatus> {
        self.update(id, |s| {
            s.nics.push(NicStatus {
                id: nic.id,
                tap: nic.tap,
                drops: Some(0),
            })
        })
    }

    async fn remove_nic(&self, id: &str, req: RemoveNicRequest) -> Res<VmStatus> {
        self.update(id, |s| s.nics.retain(|n| n.id != req.id))
    }

    async fn check_pool(&self, _pool: PoolSpec) -> Res<PoolUsage> {
        Ok(PoolUsage {
            total_bytes: 1 << 40,
            free_bytes: 1 << 40,
            used_bytes: 0,
        })
    }

    async fn pool_forget_image(&self, _req: ForgetImageRequest) -> Res<()> {
        Ok(())
    }

    async fn create_disk(&self, req: CreateDiskRequest) -> Res<DiskCreated> {
        Ok(self.new_disk(&req.vm_id, req.index, req.size_mib))
    }

    async fn delete_disk(&self, req: DeleteDiskRequest) -> Res<()> {
        self.disks.lock().unwrap().remove(&req.path);
        Ok(())
    }

    async fn resize_disk(&self, req: ResizeDiskArgs) -> Res<()> {
        match (&req.vm, req.disk.index, &req.disk.path) {
            (Some(vm), Some(_), _) => self.find(vm).map(|_| ()),
            (_, _, Some(_)) => Ok(()),
            _ => Err(AgentFailure::invalid(
                "give the VM and disk index, or the disk's path",
            )),
        }
    }

    async fn add_disk(&self, id: &str, _disk: DiskSpec) -> Res<VmStatus> {
        self.find(id)
    }

    async fn remove_disk(&self, id: &str, _req: DiskIndex) -> Res<VmStatus> {
        self.find(id)
    }

    async fn snapshot(&self, _id: &str, _req: SnapshotRequest) -> Res<()> {
        Ok(())
    }

    async fn delete_backup_files(&self, req: DeleteBackupFilesRequest) -> Res<()> {
        let mut disks = self.disks.lock().unwrap();
        for f in &req.files {
            disks.remove(&format!("{}/{f}", req.dir));
        }
        Ok(())
    }

    /// SIMULATION: every disk "copied" at once, whole, into a file that is only named.
    async fn backup_vm(&self, req: BackupVmRequest) -> Res<Lines<BackupLine, AgentFailure>> {
        let files: Vec<BackupFile> = req
            .disks
            .iter()
            .map(|d| {
                let file = format!("{}-{}.qcow2", req.backup_id, d.index);
                self.disks
                    .lock()
                    .unwrap()
                    .insert(format!("{}/{file}", req.dir));
                BackupFile {
                    index: d.index,
                    file,
                    size_bytes: 1 << 20,
                    virtual_size_mib: 1024,
                    sha256: String::new(),
                    incremental: false,
                }
            })
            .collect();
        Ok(Box::pin(futures::stream::iter([Ok(BackupLine::Done {
            done: files,
            quiesce: Some("SIMULATED: not quiesced".into()),
        })])))
    }

    async fn delete_image(&self, req: DeleteImageRequest) -> Res<()> {
        self.images.lock().unwrap().remove(&req.path);
        self.image_bytes.lock().unwrap().remove(&req.path);
        Ok(())
    }

    /// SIMULATED counters of the running VMs: those a test set, else generated ones.
    async fn vm_stats(&self) -> Res<Vec<VmCounters>> {
        let delay = *self.stats_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let set = self.counters.lock().unwrap().clone();
        let since_start = self.born.elapsed();
        Ok(self
            .list_vms()
            .await?
            .into_iter()
            .filter(|s| s.state.has_process())
            .map(|s| {
                set.get(&s.id)
                    .cloned()
                    .unwrap_or_else(|| simulated_counters(&s, since_start))
            })
            .collect())
    }

    async fn events(&self) -> Res<Lines<Event, AgentFailure>> {
        // Like the real agent's: the stream ends when the subscriber falls behind.
        let rx = self.events.subscribe();
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.ok().map(|ev| (Ok(ev), rx))
        })))
    }

    async fn build_image(&self, req: BuildImageRequest) -> Res<Lines<ImageLine, AgentFailure>> {
        let kind = if req.recipe == "tiny" {
            ImageKind::DirectKernel
        } else {
            ImageKind::Disk
        };
        Ok(image_lines(self.image(&req.name, kind)))
    }

    async fn import_image(&self, req: ImportImageRequest) -> Res<Lines<ImageLine, AgentFailure>> {
        Ok(image_lines(self.image(&req.name, ImageKind::Disk)))
    }

    /// SIMULATION: no bytes are copied; the disk "arrives" at once.
    /// SIMULATION: a backup's file (`chain_within` set) is read only on the host that
    /// wrote it, as from a target on that host's local disk; other sources are taken as
    /// there.
    async fn import_disk(&self, req: ImportDiskRequest) -> Res<Lines<ImageLine, AgentFailure>> {
        if req.chain_within.is_some() && !self.disks.lock().unwrap().contains(&req.source) {
            return Err(AgentFailure::not_found(format!(
                "{}: no such file on this host",
                req.source
            )));
        }
        let disk = self.new_disk(&req.vm_id, req.index, 1024);
        Ok(image_lines(ImageFiles {
            path: disk.path,
            name: format!("{}-{}", req.vm_id, req.index),
            kind: ImageKind::Disk,
            format: "qcow2".into(),
            initrd: None,
            cmdline: None,
            size_bytes: 1 << 20,
            virtual_size_mib: 1024,
            sha256: String::new(),
        }))
    }

    /// SIMULATION: the VM "arrives" at once and runs here (no stream is awaited).
    async fn migrate_in(&self, id: &str, req: MigrateInRequest) -> Res<MigrateInReady> {
        if self.refuse_starts.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AgentFailure::conflict(
                "QEMU did not start (simulated failure)",
            ));
        }
        let pid = 200_000 + (self.vms.lock().unwrap().len() as u32);
        let mut s = status(id, &req.spec.name, VmState::Running, Some(pid));
        s.vcpus = req.spec.vcpus;
        self.set(s);
        Ok(MigrateInReady {
            uri: format!("tcp:{}:49152", req.listen),
            port: 49152,
            nbd_port: (req.export_disks && req.spec.disks.len() > req.shared_disks.len())
                .then_some(49153),
        })
    }

    /// SIMULATION: one progress line, then done; the VM stops running here.
    async fn migrate_out(&self, req: MigrateOutRequest) -> Res<Lines<MigrationLine, AgentFailure>> {
        self.find(&req.vm_id)?;
        self.to_state(&req.vm_id, VmState::Paused)?;
        *self.sent_capabilities.lock().unwrap() = req
            .capabilities
            .iter()
            .filter(|c| c.state)
            .map(|c| c.capability.clone())
            .collect();
        self.migrations
            .lock()
            .unwrap()
            .insert(req.vm_id.clone(), "completed".into());
        Ok(Box::pin(futures::stream::iter([
            Ok(MigrationLine::Progress {
                progress: 0.5,
                message: "simulated".into(),
                step: Some(MigrationStep::Memory),
            }),
            Ok(MigrationLine::Done {
                done: MigrationResult {
                    downtime_ms: 1,
                    total_ms: 2,
                    transferred_bytes: 1 << 20,
                    forced: false,
                    tls: req.tls.is_some(),
                    postcopy: false,
                },
            }),
        ])))
    }

    /// SIMULATION: a VM migrated away is `postmigrate` with a `completed` migration.
    async fn get_migration(&self, id: &str) -> Res<MigrationState> {
        let Ok(s) = self.find(id) else {
            return Ok(MigrationState::default());
        };
        let migration = self.migrations.lock().unwrap().get(id).cloned();
        let runstate = match s.state {
            VmState::Running => Some("running"),
            VmState::Paused if migration.as_deref() == Some("completed") => Some("postmigrate"),
            VmState::Paused => Some("paused"),
            _ => None,
        };
        Ok(MigrationState {
            qemu: s.state.has_process(),
            runstate: runstate.map(String::from),
            migration,
        })
    }

    /// SIMULATION: an outgoing migration not completed is cancelled.
    async fn abandon_migration(
        &self,
        id: &str,
        req: AbandonMigrationRequest,
    ) -> Res<MigrationState> {
        if let Some(m) = self.migrations.lock().unwrap().get_mut(id) {
            if m != "completed" || req.target_gone {
                *m = "cancelled".into();
            }
        }
        if req.resume && self.find(id)?.state == VmState::Paused {
            self.to_state(id, VmState::Running)?;
        }
        self.get_migration(id).await
    }

    /// SIMULATION: a simulated migration never breaks mid-way, so no post-copy waits.
    async fn recover_migration(
        &self,
        id: &str,
        _req: RecoverMigrationRequest,
    ) -> Res<RecoverMigrationReady> {
        self.find(id)?;
        Err(AgentFailure::conflict(
            "no post-copy waits for its link here (simulated)",
        ))
    }

    /// SIMULATION: as [`recover_migration`](Self::recover_migration).
    async fn resume_migration(
        &self,
        id: &str,
        _req: ResumeMigrationRequest,
    ) -> Res<MigrationState> {
        self.find(id)?;
        Err(AgentFailure::conflict(
            "no post-copy lost its link here (simulated)",
        ))
    }

    async fn read_image_file(&self, req: ReadImageFileRequest) -> Res<SizedBytes<AgentFailure>> {
        let b = self
            .image_bytes
            .lock()
            .unwrap()
            .get(&req.path)
            .cloned()
            .ok_or_else(|| {
                AgentFailure::not_found(format!("{} is no image file here", req.path))
            })?;
        let b = if self.corrupt_reads.load(std::sync::atomic::Ordering::SeqCst) {
            let mut v = b.to_vec();
            v[0] ^= 1;
            bytes::Bytes::from(v)
        } else {
            b
        };
        let pieces: Vec<Res<bytes::Bytes>> =
            b.chunks(64 * 1024).map(|c| Ok(b.slice_ref(c))).collect();
        Ok(SizedBytes {
            size: b.len() as u64,
            bytes: Box::pin(futures::stream::iter(pieces)),
        })
    }

    /// SIMULATION: a disk file's bytes are its path's, repeated to 100 KiB (standing
    /// alone or not: a simulated disk has nothing under it).
    async fn read_disk_file(&self, req: ReadDiskFileRequest) -> Res<SizedBytes<AgentFailure>> {
        if let Some(f) = req.standalone_format.as_deref() {
            if !matches!(f, "qcow2" | "raw") {
                return Err(AgentFailure::invalid(format!(
                    "standalone_format: {f:?} is not qcow2 or raw"
                )));
            }
        }
        if !self.disks.lock().unwrap().contains(&req.file) {
            return Err(AgentFailure::not_found(format!(
                "{} is no disk file here",
                req.file
            )));
        }
        let b = bytes::Bytes::from(
            req.file
                .as_bytes()
                .repeat(100 * 1024 / req.file.len().max(1)),
        );
        let pieces: Vec<Res<bytes::Bytes>> =
            b.chunks(64 * 1024).map(|c| Ok(b.slice_ref(c))).collect();
        Ok(SizedBytes {
            size: b.len() as u64,
            bytes: Box::pin(futures::stream::iter(pieces)),
        })
    }

    /// Like the real agent's: the body must be as long as the request says, or nothing
    /// is kept.
    async fn put_disk(
        &self,
        req: PutDiskRequest,
        body: ByteStream<AgentFailure>,
    ) -> Res<DiskCreated> {
        use futures::TryStreamExt;
        let all: Vec<bytes::Bytes> = body.try_collect().await?;
        let got: usize = all.iter().map(|b| b.len()).sum();
        if got as u64 != req.bytes {
            return Err(AgentFailure::invalid(format!(
                "the body ended after {got} of {} bytes: the disk is not kept",
                req.bytes
            )));
        }
        Ok(self.new_disk(&req.vm_id, req.index, req.size_mib))
    }

    /// Like the real agent's: the bytes must be as long and add up to the sum the
    /// request says, or nothing is kept.
    async fn put_image(
        &self,
        req: PutImageRequest,
        body: ByteStream<AgentFailure>,
    ) -> Res<ImageFiles> {
        use futures::TryStreamExt;
        self.puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let all: Vec<bytes::Bytes> = body.try_collect().await?;
        let all: Vec<u8> = all.concat();
        let total: u64 = req.files.iter().map(|f| f.size).sum();
        if all.len() as u64 != total {
            return Err(AgentFailure::invalid(format!(
                "the body holds {} bytes, not the files' {total}",
                all.len()
            )));
        }
        if sha256_hex(&all) != req.sha256 {
            return Err(AgentFailure::invalid(
                "sha256: the bytes received do not add up",
            ));
        }
        let mut at = 0usize;
        let mut paths = Vec::new();
        for f in &req.files {
            let path = format!("{SIM_IMAGES}/{}", f.name);
            let piece = bytes::Bytes::copy_from_slice(&all[at..at + f.size as usize]);
            at += f.size as usize;
            self.images.lock().unwrap().insert(path.clone());
            self.image_bytes.lock().unwrap().insert(path.clone(), piece);
            paths.push(path);
        }
        Ok(ImageFiles {
            name: req.name,
            kind: req.kind,
            format: req.format,
            path: paths[0].clone(),
            initrd: paths.get(1).cloned(),
            cmdline: req.cmdline,
            size_bytes: total,
            virtual_size_mib: 1024,
            sha256: req.sha256,
        })
    }
}
