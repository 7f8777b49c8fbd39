//! The agent API: what the controller asks of the agent that runs a host.
//!
//! The controller sends a VM's whole definition at every start (the agent keeps no VM
//! records of its own); the agent reports what actually runs, and streams state changes
//! as they happen on [`endpoints::Events`].
//!
//! Long because it is the one place every wire type of the agent API is declared: the
//! agent, the controller and the simulated agent all read them from here.
//!
//! - [`endpoints`]: every endpoint, declared once (method, route, request, response).
//! - [`AgentApi`]: the same endpoints as a trait, implemented by the real agent, the
//!   simulated one and the controller's client.
//! - [`AgentFailure`]: the error every endpoint may answer with.
//! - this module: the wire types.

mod api;
pub mod endpoints;
mod failure;

pub use api::{AgentApi, ByteStream, Lines, SizedBytes};
pub use failure::{AgentFailure, FailureCode};

pub use crate::public::Limits;
pub use hostel_model::Platform;
use hostel_model::{Accel, ImageKind, Policy, VmState};
use serde::{Deserialize, Serialize};

/// The request of an endpoint that takes none: `{}` in a body, nothing in a query string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Boot {
    /// QEMU loads the kernel and initrd itself.
    DirectKernel {
        kernel: String,
        initrd: Option<String>,
        cmdline: String,
    },
    /// SeaBIOS boots the first disk (or the CD-ROM, when there is one).
    Bios,
    /// OVMF (UEFI) boots the first disk or the CD-ROM; its variables live in the VM's
    /// runtime directory, made from the host's template at the first start.
    Uefi,
}

/// A NoCloud seed (the `cidata` ISO cloud-init reads at first boot).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Seed {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskSpec {
    pub index: u32,
    pub path: String,
    pub format: String,
    /// The storage pool the disk is in; absent: the host's default `dir` pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
}

/// A storage pool on a host: a driver and the directory it keeps disks in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    /// `dir` or `btrfs`.
    pub driver: String,
    pub path: String,
}

/// A pool's space, as its filesystem reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolUsage {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
}

/// A VM's definition as rendered from the controller's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmSpec {
    /// Its resource limits, applied from its first instruction.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    pub id: String,
    pub name: String,
    pub memory_mib: u64,
    pub max_memory_mib: u64,
    pub vcpus: u32,
    pub max_vcpus: u32,
    pub boot: Boot,
    pub disks: Vec<DiskSpec>,
    pub on_poweroff: Policy,
    pub on_reboot: Policy,
    pub on_crash: Policy,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// An ISO (or disk image) attached read-only as a CD-ROM; the firmware boots it first.
    #[serde(default)]
    pub cdrom: Option<DiskSpec>,
    /// The first-boot configuration, attached as a second CD-ROM.
    #[serde(default)]
    pub seed: Option<Seed>,
    /// The machine type the VM is pinned to (`pc-q35-10.0`); none: this QEMU's `q35`.
    #[serde(default)]
    pub machine: Option<String>,
    /// A named QEMU CPU model (`Westmere-v1`); none: all the host's accelerator offers
    /// (`host` under KVM, `max` under TCG).
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// A virtio-serial port for the QEMU guest agent (`org.qemu.guest_agent.0`): a VM
    /// gets it at a cold start; one started before keeps its devices as they are.
    #[serde(default)]
    pub guest_agent: bool,
}

/// A VM's network interface: a tap on the network's bridge, guarded to its addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NicSpec {
    pub id: String,
    pub index: u32,
    pub mac: String,
    pub ipv4: String,
    pub ipv6: Option<String>,
    pub bridge: String,
    pub tap: String,
}

/// One network as a host runs it: bridge, dnsmasq, NAT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkSpec {
    pub id: String,
    pub name: String,
    pub bridge: String,
    pub cidr: String,
    pub gateway: String,
    pub mode: hostel_model::net::NetMode,
    pub uplink: Option<String>,
    pub domain: Option<String>,
    pub ipv6_prefix: Option<String>,
    #[serde(default)]
    pub dns_forward: Option<String>,
    pub hosts: Vec<NetHost>,
    /// Host services (`PROTO/PORT`) its VMs may reach on the host; nothing else is.
    #[serde(default)]
    pub host_ports: Vec<String>,
    /// Bridges of the networks its VMs may reach (links are listed on both sides).
    #[serde(default)]
    pub links: Vec<String>,
    /// IPv4 CIDRs its VMs may reach although they are on the host's own LAN.
    #[serde(default)]
    pub allow_to: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetHost {
    pub name: String,
    pub mac: String,
    pub ipv4: String,
    pub ipv6: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForwardSpec {
    pub proto: String,
    pub host_port: u16,
    pub ip: String,
    pub guest_port: u16,
}

/// A port forward the host could not apply (a service on the host listens on its port);
/// the others were applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SkippedForward {
    pub forward: ForwardSpec,
    pub reason: String,
}

/// What a host made of a network state: everything, but the forwards it lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NetworksApplied {
    #[serde(default)]
    pub skipped: Vec<SkippedForward>,
}

/// Everything network-related a host should run; the agent converges to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NetworksState {
    pub networks: Vec<NetworkSpec>,
    pub forwards: Vec<ForwardSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NicStatus {
    pub id: String,
    pub tap: String,
    /// Frames the port guard dropped.
    pub drops: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    pub spec: VmSpec,
    /// Resume from a file written by `save` instead of booting.
    #[serde(default)]
    pub restore_from: Option<String>,
    /// Resume from a snapshot with memory state instead of booting.
    #[serde(default)]
    pub load_snapshot: Option<String>,
}

/// What the agent knows of one VM that has (or had) a QEMU process on its host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmStatus {
    pub id: String,
    pub name: String,
    pub state: VmState,
    pub reason: Option<String>,
    pub pid: Option<u32>,
    pub argv: Vec<String>,
    pub accel: Accel,
    /// The balloon's actual size, when the guest's driver reports one.
    pub balloon_mib: Option<u64>,
    pub vcpus: u32,
    #[serde(default)]
    pub nics: Vec<NicStatus>,
}

/// The cumulative counters of one VM that has a QEMU process, as its host read them at
/// `at_ms`. Raw and ever-growing while the same QEMU runs; the controller turns two
/// readings into rates. A new QEMU (another `pid`) starts again from zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmCounters {
    pub id: String,
    /// The QEMU process the counters are of.
    pub pid: u32,
    /// When they were read: milliseconds since the Unix epoch, by the host's clock.
    pub at_ms: u64,
    /// CPU time the QEMU process has used (user + system, all its threads: the vCPUs
    /// and QEMU's own work for the guest), in nanoseconds.
    pub cpu_ns: u64,
    /// The QEMU process's resident memory (the guest's touched memory and QEMU's own).
    pub memory_bytes: u64,
    /// Bytes the guest has read from and written to its disks (and CD-ROMs), summed.
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    /// Bytes the guest has received and sent on its NICs, summed: seen from the guest,
    /// so a tap's transmitted bytes are the guest's received ones.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// Read and write requests the guest made of its disks, summed.
    #[serde(default)]
    pub disk_read_ops: u64,
    #[serde(default)]
    pub disk_write_ops: u64,
    /// Packets the guest has received and sent on its NICs, summed.
    #[serde(default)]
    pub net_rx_packets: u64,
    #[serde(default)]
    pub net_tx_packets: u64,
    /// The memory the guest has now, as its balloon says (`query-balloon`'s `actual`);
    /// none when QEMU did not say in time.
    #[serde(default)]
    pub balloon_bytes: Option<u64>,
    /// Frames the port guards of its NICs dropped (anti-spoofing), summed.
    #[serde(default)]
    pub guard_drops: u64,
}

/// An agent's event stream carries an empty line at least every 5 s; a controller that
/// hears nothing for this long takes the agent for gone (a dead host or a cut network
/// sends no FIN) and reconnects.
pub const EVENTS_SILENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// One change of state, streamed as a JSON line on `GET /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub vm_id: String,
    pub state: VmState,
    pub reason: Option<String>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShutdownRequest {
    pub timeout_secs: u64,
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BalloonRequest {
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpusRequest {
    pub vcpus: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveRequest {
    pub path: String,
    /// Written as the file's first line so that `restore FILE` knows which VM it holds.
    pub header: SaveHeader,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SaveHeader {
    pub magic: String,
    pub vm_id: String,
    pub vm_name: String,
    pub saved_at: String,
}

pub const SAVE_MAGIC: &str = "HOSTEL-SAVE-1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateDiskRequest {
    pub vm_id: String,
    pub index: u32,
    pub size_mib: u64,
    /// Make the disk from this image (an overlay, or a clone in pools that clone).
    #[serde(default)]
    pub backing: Option<Backing>,
    #[serde(default)]
    pub pool: Option<PoolSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backing {
    pub path: String,
    pub format: String,
    #[serde(default)]
    pub image_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskCreated {
    pub path: String,
    pub format: String,
    pub size_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteDiskRequest {
    pub path: String,
    #[serde(default)]
    pub pool: Option<PoolSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildImageRequest {
    pub recipe: String,
    pub name: String,
    #[serde(default)]
    pub suite: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub size_mib: Option<u64>,
    #[serde(default)]
    pub mirror: Option<String>,
}

/// One line of an image build or import: progress, then `done` or `error`. On the wire
/// `{"progress":0.5,"message":".."}`, `{"done":{..}}`, `{"error":".."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageLine {
    Progress { progress: f64, message: String },
    Done { done: ImageFiles },
    Error { error: String },
}

/// Backs up a VM's disks into a directory (a backup target's): each disk whole, or,
/// where `parent` has a file for it and the disk still tracks the writes since (a
/// persistent dirty bitmap named `hostel-PARENT` in its qcow2), only what changed, into
/// a qcow2 whose backing file is the parent's. A running VM is copied live
/// (`blockdev-backup`); a stopped one with qemu-img. Every disk starts a bitmap named
/// `hostel-BACKUP_ID` at the moment of the copy, for the next backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupVmRequest {
    pub vm_id: String,
    /// The backup target's directory (made if missing).
    pub dir: String,
    /// This backup's id: its files are `ID-N.qcow2` (N the disk's index).
    pub backup_id: String,
    /// The VM's disks (read with qemu-img when it has no QEMU).
    pub disks: Vec<DiskSpec>,
    /// The backup this one adds to, if any.
    #[serde(default)]
    pub parent: Option<BackupParent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupParent {
    pub id: String,
    /// Its file (a name in the same directory) by disk index.
    pub files: Vec<BackupFile>,
}

/// One disk's file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupFile {
    pub index: u32,
    /// A file name in the backup target's directory.
    pub file: String,
    pub size_bytes: u64,
    pub virtual_size_mib: u64,
    /// SHA-256 of the file as written.
    pub sha256: String,
    /// Only what changed since the parent's file (its backing file).
    pub incremental: bool,
}

/// A backup's progress, then its files, or why it failed (nothing is left then).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BackupLine {
    Progress {
        progress: f64,
        message: String,
    },
    Done {
        done: Vec<BackupFile>,
        /// How the copy was made consistent: the guest agent froze the file systems,
        /// the VM was at rest, or why it is only crash-consistent.
        #[serde(default)]
        quiesce: Option<String>,
    },
    Error {
        error: String,
    },
}

/// Removes files of a backup from its target's directory (plain names only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteBackupFilesRequest {
    pub dir: String,
    pub files: Vec<String>,
}

/// A backup file to check before it is read, by its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileSum {
    pub path: String,
    pub sha256: String,
}

/// Copies a guest's disk from a file or block device on the host (a Xen guest's, say)
/// into a pool as the disk `index` of VM `vm_id`. Its lines are [`ImageLine`]s: progress,
/// then the disk's file (`ImageFiles` with `kind` Disk), or an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportDiskRequest {
    pub vm_id: String,
    pub index: u32,
    /// An absolute path on the host.
    pub source: String,
    /// The source's format, as its owner says (never probed): raw, qcow2, vmdk, vdi, vhdx.
    pub format: String,
    #[serde(default)]
    pub pool: Option<PoolSpec>,
    /// A backup's restore: the source is a qcow2 whose backing chain may only name
    /// files in this directory, each checked against `sums` first.
    #[serde(default)]
    pub chain_within: Option<String>,
    #[serde(default)]
    pub sums: Vec<FileSum>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportImageRequest {
    pub name: String,
    pub source: String,
}

/// An image as stored on a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageFiles {
    pub name: String,
    pub kind: ImageKind,
    pub format: String,
    /// The disk file, or the kernel for direct-kernel images.
    pub path: String,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub size_bytes: u64,
    pub virtual_size_mib: u64,
    pub sha256: String,
}

/// A VM to receive by live migration: its definition as on this host (its files this
/// host's), the address to listen on, and the migration capabilities both ends use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateInRequest {
    pub spec: VmSpec,
    /// The address to listen on: one of this host's, or `0.0.0.0` for all of them.
    pub listen: String,
    /// QMP `migrate-set-capabilities` entries, the same on both ends.
    pub capabilities: Vec<MigrationCapability>,
    /// Serve the VM's disks (as [`VmSpec::disks`] names them, new files on this host)
    /// over NBD for the source to mirror its disks into, until the VM runs here.
    #[serde(default)]
    pub export_disks: bool,
    /// The disks (by index) on storage both hosts share: the same file, not exported.
    #[serde(default)]
    pub shared_disks: Vec<u32>,
    /// TLS for the incoming stream and the NBD server (this end's certificate is the
    /// server's); none: plain TCP, only when the admin asked for it.
    #[serde(default)]
    pub tls: Option<StreamTls>,
}

/// QEMU's TLS on one end of a migration's streams (memory and NBD): the cluster CA, and
/// a certificate and key from it made for this one migration, which QEMU reads from a
/// directory of the VM's own for as long as the migration lasts. Both ends check the
/// other's certificate against the CA.
#[derive(Clone, Serialize, Deserialize)]
pub struct StreamTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The name the receiving end's certificate is made for, which the sending end
    /// checks.
    pub hostname: String,
}

impl std::fmt::Debug for StreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a private key in a log line.
        f.debug_struct("StreamTls")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// What a host's QEMU is doing about a VM's migration, as QEMU itself says: what
/// recovery reads on both hosts to tell whether the switch-over happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MigrationState {
    /// A QEMU for the VM runs on this host.
    pub qemu: bool,
    /// Its run state (`query-status`): `inmigrate` while it waits for the VM's state,
    /// `postmigrate` once it sent it, `running`, `paused`, ...
    #[serde(default)]
    pub runstate: Option<String>,
    /// Its outgoing migration's status (`query-migrate`: `active`, `device`,
    /// `pre-switchover`, `completed`, `failed`, `cancelled`); none if it never sent one.
    #[serde(default)]
    pub migration: Option<String>,
}

impl MigrationState {
    /// Its migration is in post-copy (the guest runs on the target, memory still on the
    /// source): neither QEMU may go, nor the source run on.
    pub fn in_postcopy(&self) -> bool {
        self.migration
            .as_deref()
            .is_some_and(|m| m.starts_with("postcopy"))
    }
}

/// QEMU's `tcp:` URI of a migration stream at `address` (an IPv6 one in brackets) and
/// `port`, as both the listening and the sending end write it.
pub fn tcp_uri(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("tcp:[{address}]:{port}")
    } else {
        format!("tcp:{address}:{port}")
    }
}

/// Ends a migration on its sending host without the switch-over: its QEMU stops sending
/// and mirroring and drops the mirror's targets; `resume` runs the guest again if the
/// migration left it paused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbandonMigrationRequest {
    pub resume: bool,
    /// The receiving QEMU is gone: even a migration that completed is undone, and this
    /// QEMU (which then holds the only copy of the VM) takes its disks back and runs.
    #[serde(default)]
    pub target_gone: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationCapability {
    pub capability: String,
    pub state: bool,
}

/// Makes the receiving QEMU of a post-copy whose link broke (`postcopy-paused`) listen
/// again, on `listen`, for the sending QEMU to resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverMigrationRequest {
    pub listen: String,
}

/// Where the receiving QEMU of a paused post-copy listens again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverMigrationReady {
    pub port: u16,
}

/// Resumes a post-copy whose link broke, from the sending QEMU, to `uri`
/// (`tcp:ADDRESS:PORT`, where the receiving QEMU listens again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeMigrationRequest {
    pub uri: String,
}

/// Where the receiving QEMU waits for the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateInReady {
    /// `tcp:ADDRESS:PORT`, as it listens.
    pub uri: String,
    pub port: u16,
    /// The NBD server's port, when it exports the disks; each disk's export is named
    /// `disk` and its index.
    #[serde(default)]
    pub nbd_port: Option<u16>,
}

/// Where the source mirrors a migrating VM's disks to: the target's NBD server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskMirror {
    pub host: String,
    pub port: u16,
    /// The disks' indexes (`disk` and the index is each one's export).
    pub disks: Vec<u32>,
}

/// Sends a running VM's state to a receiving QEMU ([`MigrateInReady::uri`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateOutRequest {
    pub vm_id: String,
    pub uri: String,
    pub capabilities: Vec<MigrationCapability>,
    /// The most the guest may be paused for at the switch-over, in ms; the limit starts
    /// lower and is raised towards this while the migration does not converge.
    pub max_downtime_ms: u64,
    /// Bandwidth cap in MiB/s; none: QEMU's default.
    #[serde(default)]
    pub bandwidth_mibps: Option<u64>,
    /// When it does not converge within the downtime: pause the guest and finish
    /// (`true`), or give up and leave it running here (`false`).
    #[serde(default)]
    pub force_complete: bool,
    /// Seconds without progress (the memory left to send not shrinking) before the
    /// migration counts as not converging.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
    /// Copy the VM's disks too, first, to the target's NBD exports (no shared storage).
    #[serde(default)]
    pub mirror: Option<DiskMirror>,
    /// TLS towards the receiving QEMU (this end's certificate is a client's); none:
    /// plain TCP.
    #[serde(default)]
    pub tls: Option<StreamTls>,
}

fn default_stall_secs() -> u64 {
    10
}

/// One line of a migration: progress, then `done` or `error`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MigrationLine {
    Progress {
        progress: f64,
        message: String,
        /// The step the migration is at.
        #[serde(default)]
        step: Option<MigrationStep>,
    },
    Done {
        done: MigrationResult,
    },
    Error {
        error: String,
    },
}

/// The steps of a migration the sending host takes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStep {
    /// The disks are mirrored to the target.
    Storage,
    /// The memory is sent.
    Memory,
    /// The guest is paused and the disks' mirrors finish: the last moment the migration
    /// can still be given up.
    Switchover,
}

impl MigrationStep {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStep::Storage => "storage",
            MigrationStep::Memory => "memory",
            MigrationStep::Switchover => "switchover",
        }
    }
}

/// How a migration went, as QEMU measured it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationResult {
    /// How long the guest was paused for the switch-over (ms).
    pub downtime_ms: u64,
    pub total_ms: u64,
    /// Memory sent, in bytes.
    pub transferred_bytes: u64,
    /// The guest was paused to finish (`force_complete`): the downtime is longer.
    pub forced: bool,
    /// The streams were encrypted (QEMU's TLS).
    #[serde(default)]
    pub tls: bool,
    /// The guest did not converge and finished by post-copy: it ran on the target while
    /// the rest of its memory followed on demand.
    #[serde(default)]
    pub postcopy: bool,
}

/// A stopped VM's disk file to read out, for a move to another host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadDiskFileRequest {
    /// The disk file's path.
    pub file: String,
    /// The pool it is in; none: the host's default pool. (Its fields are query
    /// parameters of their own: `name`, `driver`, `path`.)
    #[serde(default, flatten)]
    pub pool: Option<PoolSpec>,
    /// The file's format (`qcow2` or `raw`), to have it sent standing alone: a copy with
    /// what its backing chain holds merged in, made for the read and gone after it (an
    /// export). None: the file as it is (a move, whose target has the image under it).
    #[serde(default)]
    pub standalone_format: Option<String>,
}

/// A stopped VM's disk, stored on this host from another host's disk file sent as the
/// body of [`PutDisk`](endpoints::PutDisk): a new file in `pool` (named like any disk of
/// the VM), on this host's copy of its image (`backing`), in the pool's format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutDiskRequest {
    pub vm_id: String,
    pub index: u32,
    pub size_mib: u64,
    /// The sent file's format (`qcow2` or `raw`).
    pub format: String,
    /// The sent file's length: a body of any other length is refused.
    pub bytes: u64,
    #[serde(default)]
    pub backing: Option<Backing>,
    #[serde(default)]
    pub pool: Option<PoolSpec>,
}

/// One file of an image to read from a host's image store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadImageFileRequest {
    /// The file's path on that host, inside its image store (as in [`ImageFiles`]).
    pub path: String,
}

/// An image to store on a host from the bytes of its files, sent one after another in
/// the body of [`PutImage`](endpoints::PutImage) (the disk file; or the kernel, then the
/// initrd).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutImageRequest {
    pub name: String,
    pub kind: ImageKind,
    pub format: String,
    pub cmdline: Option<String>,
    /// Each file: its path inside the image store (`NAME.qcow2`, `NAME/vmlinuz`, ...)
    /// and its length in bytes, in the order of the body.
    pub files: Vec<ImageFilePart>,
    /// The SHA-256 the files must add up to (as [`ImageFiles::sha256`]); anything else
    /// is refused and nothing is kept.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageFilePart {
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostFacts {
    pub name: String,
    pub cpus: u32,
    pub memory_total_mib: u64,
    pub accel: Accel,
    pub accel_reason: String,
    pub qemu_version: String,
    pub kernel: String,
    /// The directory of the host's default `dir` pool.
    #[serde(default)]
    pub disks_dir: String,
    /// The machine types and CPU models its QEMU offers.
    #[serde(default)]
    pub platform: Platform,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskIndex {
    pub index: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResizeDiskRequest {
    /// The disk of a running VM (online resize), by index.
    #[serde(default)]
    pub index: Option<u32>,
    /// The disk file of a stopped VM (offline resize).
    #[serde(default)]
    pub path: Option<String>,
    pub size_mib: u64,
    /// The pool of the disk file (offline resize); absent: the default pool.
    #[serde(default)]
    pub pool: Option<PoolSpec>,
    /// The disk file's format from its record (offline resize): never probed.
    #[serde(default)]
    pub format: Option<String>,
}

/// A disk resize: [`ResizeDiskRequest`] and, for an online resize, the VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResizeDiskArgs {
    /// The running VM whose disk `index` grows (online resize).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(flatten)]
    pub disk: ResizeDiskRequest,
}

/// How much of a VM's console log to read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsoleLogRequest {
    /// The number of last lines; absent: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
}

/// Names a file written by a save.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveHeaderRequest {
    pub path: String,
}

/// Names a NIC of the VM to unplug.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveNicRequest {
    pub id: String,
}

/// Names the image whose copy a pool drops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgetImageRequest {
    pub pool: PoolSpec,
    pub image_id: String,
}

/// Names the image file (or the kernel of a direct-kernel image) to remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteImageRequest {
    pub path: String,
}

/// A snapshot operation on a VM's disks: qcow2 internal snapshots, through QEMU when it
/// runs (all disks at one instant, the VM paused meanwhile) and qemu-img when not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// `create`, `revert` or `delete`.
    pub action: String,
    pub name: String,
    /// The disk files (used when the VM has no QEMU).
    pub disks: Vec<DiskSpec>,
    /// Also save the memory state (running VMs; `create` only).
    #[serde(default)]
    pub memory: bool,
}

/// The files a host's stores hold, for `hostel doctor`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StoredFiles {
    pub disks: Vec<String>,
    pub images: Vec<String>,
    /// VM ids with a runtime directory.
    pub runtime: Vec<String>,
}
