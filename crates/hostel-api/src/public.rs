//! The public REST API's request and response bodies.
//!
//! Long because it is the whole public wire schema in one place: every body type with
//! its OpenAPI limits (patterns, ranges, enums), which the checked-in document and the
//! schemathesis run are generated from and compared against. Splitting it by resource
//! would spread one contract over files that always change together.

use hostel_model::{Accel, ImageKind, Policy, VmState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateVmRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Name of the image the VM boots from. May be left out for a VM that installs from
    /// a CD-ROM (`cdrom` and `disk_mib`) or boots its own kernel (`kernel`).
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub image: Option<String>,
    /// Memory the guest gets at start, in MiB (the balloon target).
    #[serde(default = "default_memory")]
    #[schema(minimum = 32, maximum = 4194304)]
    pub memory_mib: u64,
    /// Memory the guest may grow to with `mem-set`; defaults to `memory_mib`.
    #[serde(default)]
    #[schema(minimum = 32, maximum = 4194304)]
    pub max_memory_mib: Option<u64>,
    #[serde(default = "default_vcpus")]
    #[schema(minimum = 1, maximum = 255)]
    pub vcpus: u32,
    /// vCPUs the guest may grow to with `vcpu-set`; defaults to `vcpus`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 255)]
    pub max_vcpus: Option<u32>,
    /// Size of the VM's disk in MiB. For a disk image, the overlay's size (at least the
    /// image's); for a kernel image, a blank data disk. No disk if absent for kernel images.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 67108864)]
    pub disk_mib: Option<u64>,
    /// Start the VM once it is created (the default, like `xm create`).
    #[serde(default = "yes")]
    pub start: bool,
    #[serde(default)]
    pub on_poweroff: Policy,
    #[serde(default = "restart")]
    pub on_reboot: Policy,
    #[serde(default)]
    pub on_crash: Policy,
    /// NICs to give the VM. Absent: one NIC on the network named `default`, if there is
    /// one. Empty: no NIC.
    #[serde(default)]
    pub nics: Option<Vec<NicRequest>>,
    /// The firmware that boots the VM's disk or CD-ROM: SeaBIOS or OVMF (UEFI).
    #[serde(default)]
    pub firmware: Firmware,
    /// An ISO to boot and install from: an image's name, or an absolute path on the host.
    #[serde(default)]
    #[schema(pattern = "^(/.*|[a-z]([a-z0-9-]{0,61}[a-z0-9])?)$")]
    pub cdrom: Option<String>,
    /// Boot this kernel directly (absolute path on the host), like a Xen `kernel=`.
    #[serde(default)]
    #[schema(
        pattern = "^(/([^/.\\x00][^/\\x00]*|\\.([^/.\\x00][^/\\x00]*)?|\\.\\.[^/\\x00]+)?)+$"
    )]
    pub kernel: Option<String>,
    #[serde(default)]
    #[schema(
        pattern = "^(/([^/.\\x00][^/\\x00]*|\\.([^/.\\x00][^/\\x00]*)?|\\.\\.[^/\\x00]+)?)+$"
    )]
    pub initrd: Option<String>,
    /// The kernel's command line (with `kernel`); at most 2,048 characters, as x86 Linux
    /// takes.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub cmdline: Option<String>,
    /// SSH public keys put in the guest by the first-boot seed (root's and the image's
    /// default user's).
    #[serde(default)]
    #[schema(schema_with = ssh_keys_schema)]
    pub ssh_keys: Vec<String>,
    /// A password for root in the guest, set by the seed (stored hashed only).
    #[serde(default)]
    #[schema(pattern = "^[^\\r\\n\\x00]*$", min_length = 1, max_length = 256)]
    pub password: Option<String>,
    /// Attach a NoCloud seed (hostname, keys, password, network). Default: yes for VMs
    /// booting a disk image.
    #[serde(default)]
    pub seed: Option<bool>,
    /// The storage pool for the VM's disk; default the host's `default` pool.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub pool: Option<String>,
    /// A lease in days (the VM is shut down when it ends, until renewed); default the
    /// cluster's default lease, if there is one.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 366)]
    pub lease_days: Option<u32>,
    /// Who owns (and is charged for) the VM: `group:NAME` of a group the caller is in,
    /// or for admins any `user:NAME` or `group:NAME`. Default: the caller.
    #[serde(default)]
    #[schema(pattern = "^(user:.*|group:.*)$")]
    pub owner: Option<String>,
    /// Only hosts with every one of these tags (`hostel host set --tags`) are considered.
    #[serde(default)]
    pub host_tags: Vec<String>,
    /// An anti-affinity group: the VM goes to no host that has a VM of the same group.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub anti_affinity: Option<String>,
    /// Answer with how the host was chosen (`Vm.placement`).
    #[serde(default)]
    pub explain: bool,
    /// The guest's CPU: `host` (all the host's accelerator offers: fastest, but the VM
    /// then moves live only between hosts with the same CPU and QEMU) or a QEMU model's
    /// name that the host runs in full (`hostel host show`). Default: `host` on a
    /// single host, the cluster baseline (`Westmere-v1`) once there are more.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub cpu_model: Option<String>,
}

/// Sets a stopped VM's CPU model (its next start uses it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetCpuModelRequest {
    /// `host`, or a QEMU model's name that the VM's host runs in full.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub cpu_model: String,
}

/// Moves a running VM to another host while it runs (live migration).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MigrateRequest {
    /// The host to move to; default: placement's choice among the other hosts.
    #[serde(default)]
    pub to: Option<String>,
    /// The most the guest may be paused for at the switch-over, in ms (default 300).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 60000)]
    pub max_downtime_ms: Option<u64>,
    /// A bandwidth cap for the memory stream, in MiB/s; default: none.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub bandwidth_mibps: Option<u64>,
    /// When the guest writes memory faster than it can be sent, pause it to finish
    /// (downtime then longer than `max_downtime_ms`), instead of giving up.
    #[serde(default)]
    pub force_complete: bool,
    /// Send memory and disks as plain TCP instead of QEMU's TLS (only on a network
    /// trusted as much as the hosts themselves).
    #[serde(default)]
    pub unencrypted: bool,
    /// Never end in post-copy. Otherwise a guest that does not converge, whose memory
    /// alone moves (no disk to mirror), finishes by post-copy: it runs on the target
    /// at once and fetches the pages it lacks from the source, which must then stay up
    /// until all have gone (if either host dies meanwhile, the guest is lost).
    #[serde(default)]
    pub no_postcopy: bool,
    /// Move a VM that is not running: its disk files are copied to the other host
    /// (through the controller, over the agents' mutual TLS) and it is recorded there.
    #[serde(default)]
    pub offline: bool,
}

/// How a new VM's host was chosen: every host considered, and why each was or was not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Placement {
    pub chosen: String,
    /// The rule it was chosen by.
    pub rule: String,
    pub hosts: Vec<PlacementHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlacementHost {
    pub host: String,
    /// Memory not promised to running VMs, in MiB.
    pub free_mib: i64,
    /// `chosen`, `candidate`, or why the host was left out.
    pub verdict: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// An OpenSSH public key line, as `boot::check_ssh_key` takes it.
pub const SSH_KEY_PATTERN: &str =
    "^[ \\t\\r\\n]*(ssh-|ecdsa-sha2-|sk-ssh-|sk-ecdsa-)[^\\s\\x85]*[ \\t]+[A-Za-z0-9+/=]{16,}([ \\t][^\\r\\n]*)?[ \\t\\r\\n]*$";

fn string_array(pattern: &str, description: &str) -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern)),
        )
        .description(Some(description))
        .build()
}

fn ssh_keys_schema() -> utoipa::openapi::schema::Array {
    string_array(
        SSH_KEY_PATTERN,
        "SSH public keys put in the guest by the first-boot seed (root's and the image's \
         default user's).",
    )
}

fn packages_schema() -> utoipa::openapi::schema::Array {
    string_array(
        "^[a-z0-9+.-]+$",
        "Extra Debian packages to install (`debian`).",
    )
}

fn default_memory() -> u64 {
    512
}
fn default_vcpus() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn restart() -> Policy {
    Policy::Restart
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemoryView {
    /// The most the guest can have (its boot memory; the balloon gives back the rest).
    pub max_mib: u64,
    /// What the guest has now (the balloon's actual size when running, the target when not).
    pub current_mib: u64,
    /// The balloon target that `mem-set` last asked for.
    pub target_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VcpuView {
    pub current: u32,
    pub max: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QemuView {
    /// The QEMU process, while one runs.
    pub pid: Option<u32>,
    /// The machine type the VM is pinned to (`pc-q35-10.0`); `q35` until a VM made
    /// before pinning is next started.
    #[serde(default)]
    pub machine: String,
    /// Its CPU model: `host` or a QEMU model's name.
    #[serde(default)]
    pub cpu_model: String,
    /// The command line rendered from the VM's record (the running one, or what the next
    /// start would use).
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiskView {
    pub index: u32,
    pub path: String,
    pub format: String,
    pub size_mib: u64,
    /// The image this disk is an overlay (or clone) of, if any.
    pub backing_image: Option<String>,
    /// The storage pool the disk is in.
    pub pool: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoliciesView {
    pub on_poweroff: Policy,
    pub on_reboot: Policy,
    pub on_crash: Policy,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BootView {
    /// `direct-kernel`, `bios` (SeaBIOS boots the disk or CD-ROM) or `uefi` (OVMF does).
    pub method: String,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// The CD-ROM: an image's name or a file on the host.
    #[serde(default)]
    pub cdrom: Option<String>,
    /// Whether a NoCloud first-boot seed is attached.
    #[serde(default)]
    pub seed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub id: String,
    pub name: String,
    /// `user:NAME` or `group:NAME`; none for VMs made before owners existed (admins only).
    #[serde(default)]
    pub owner: Option<String>,
    /// A group whose members may operate the VM too.
    #[serde(default)]
    pub admin_group: Option<String>,
    /// When the VM's lease runs out: it is then shut down (never deleted). None: no lease.
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    /// Set when the lease ends within 7 days or has ended.
    #[serde(default)]
    pub lease_warning: Option<String>,
    pub state: VmState,
    /// Why the VM is in its state, when that is not obvious (a crash's cause, say).
    pub state_reason: Option<String>,
    pub host: Option<String>,
    pub accel: Option<Accel>,
    pub image: Option<String>,
    pub memory: MemoryView,
    pub vcpus: VcpuView,
    pub qemu: QemuView,
    pub disks: Vec<DiskView>,
    pub nics: Vec<Nic>,
    pub boot: BootView,
    pub policies: PoliciesView,
    /// The file a saved VM's memory state is in.
    pub saved_to: Option<String>,
    pub created_at: String,
    /// Its anti-affinity group (no two VMs of a group share a host).
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// How its host was chosen: in a create's answer, when asked for (`explain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Its own resource limits (`hostel limits`); empty: none.
    #[serde(default)]
    pub limits: Limits,
    /// The limits it is held to: each one its own, else its owner's default, else the
    /// default for everybody (`hostel default-limits`).
    #[serde(default)]
    pub limits_in_force: Limits,
}

/// One VM in a list: what `hostel list` shows. `GET /api/v1/vms/{name}` has the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmSummary {
    pub id: String,
    pub name: String,
    /// `user:NAME` or `group:NAME`.
    #[serde(default)]
    pub owner: Option<String>,
    pub state: VmState,
    #[serde(default)]
    pub state_reason: Option<String>,
    pub host: Option<String>,
    pub image: Option<String>,
    /// Memory the VM is set to have and its ceiling, in MiB.
    pub memory_mib: u64,
    pub max_memory_mib: u64,
    pub vcpus: u32,
    pub max_vcpus: u32,
    /// The IPv4 addresses of its NICs, in NIC order.
    #[serde(default)]
    pub ips: Vec<String>,
    /// `NAME.DOMAIN` of its NICs on networks with a domain, in NIC order.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// QEMU's pid while the VM has a process.
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    #[serde(default)]
    pub lease_warning: Option<String>,
    pub created_at: String,
    /// Seconds since its host last confirmed its state: 0 while the host's agent is
    /// connected (every change is reported as it happens), else since the host was lost.
    #[serde(default)]
    pub state_age_seconds: u64,
    /// Its host is stale (offline longer than the controller's threshold): its state is
    /// that old.
    #[serde(default)]
    pub host_stale: bool,
}

impl From<&Vm> for VmSummary {
    fn from(v: &Vm) -> VmSummary {
        VmSummary {
            id: v.id.clone(),
            name: v.name.clone(),
            owner: v.owner.clone(),
            state: v.state,
            state_reason: v.state_reason.clone(),
            host: v.host.clone(),
            image: v.image.clone(),
            memory_mib: v.memory.target_mib,
            max_memory_mib: v.memory.max_mib,
            vcpus: v.vcpus.current,
            max_vcpus: v.vcpus.max,
            ips: v.nics.iter().map(|n| n.ip.clone()).collect(),
            dns_names: v.nics.iter().filter_map(|n| n.dns_name.clone()).collect(),
            pid: v.qemu.pid,
            lease_expires_at: v.lease_expires_at.clone(),
            lease_warning: v.lease_warning.clone(),
            created_at: v.created_at.clone(),
            state_age_seconds: 0,
            host_stale: false,
        }
    }
}

/// A VM's resource use over the last hour (`GET /api/v1/vms/{name}/stats`), for graphs.
/// The controller asks every host for its VMs' counters each `interval_seconds` and
/// keeps an hour of points in memory: they start afresh when the controller restarts.
/// A VM's points go when its QEMU stops; while its host is offline it gets no new ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStats {
    /// How often the controller takes a point, in seconds.
    #[schema(minimum = 1)]
    pub interval_seconds: u32,
    /// Oldest first: an hour's worth at most (a day's, a point a minute, for `range=day`).
    /// The first point of a running VM comes one interval after the controller first
    /// sees it; a restarted QEMU's counters start again, so one interval has no point.
    pub points: Vec<VmStatsPoint>,
}

/// A VM's resource limits; each one left out is no limit. Enforced from the VM's first
/// instruction, and changed while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Its share of contended CPU against the host's other VMs, 1 to 10,000 (cgroup
    /// `cpu.weight`; a VM without one weighs 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub cpu_weight: Option<u32>,
    /// The most CPU time its QEMU may use, in percent of one CPU (50: half a CPU; 200:
    /// two), however idle the host is (cgroup `cpu.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 25500)]
    pub cpu_max_percent: Option<u32>,
    /// Read and write requests per second, each disk (QEMU's I/O throttling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000000000000_u64)]
    pub disk_iops: Option<u64>,
    /// Bytes per second read and written, each disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 4096, maximum = 1000000000000000_u64)]
    pub disk_bps: Option<u64>,
    /// Megabits per second, each NIC, each way: what the guest receives is shaped (tc on
    /// its tap), what it sends beyond the rate is dropped (its port guard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub net_mbps: Option<u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// These limits, each one missing taken from `fallback`.
    pub fn or(&self, fallback: &Limits) -> Limits {
        Limits {
            cpu_weight: self.cpu_weight.or(fallback.cpu_weight),
            cpu_max_percent: self.cpu_max_percent.or(fallback.cpu_max_percent),
            disk_iops: self.disk_iops.or(fallback.disk_iops),
            disk_bps: self.disk_bps.or(fallback.disk_bps),
            net_mbps: self.net_mbps.or(fallback.net_mbps),
        }
    }
}

/// The resource limits an owner's VMs get where they have none of their own
/// (`hostel default-limits`). A VM's limits in force are, each one: its own, else its
/// owner's default, else the default for everybody (`default`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefaultLimits {
    /// `user:NAME`, `group:NAME` or `default` (everybody).
    pub owner: String,
    /// The owner's own defaults; empty: none.
    pub limits: Limits,
    /// What its VMs without limits of their own get: its defaults, each one missing
    /// taken from `default`'s.
    pub in_force: Limits,
    /// In a change's answer: the running VMs whose limits in force changed, and were
    /// given the new ones at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_to: Vec<String>,
    /// In a change's answer: running VMs that could not be given them now (each with
    /// why); they get them at their next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
}

/// A VM with its latest use, as `hostel top` shows it (`GET /api/v1/usage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmUsage {
    pub name: String,
    pub state: VmState,
    /// The host it is on (none for a VM on no host).
    pub host: Option<String>,
    /// `user:NAME` or `group:NAME`.
    pub owner: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Its use over the last sampling interval; none while it does not run, and for the
    /// first interval after it starts.
    pub last: Option<VmStatsPoint>,
}

/// The VM's use over the interval that ends at `at` (averages over the interval; memory
/// as it was at `at`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStatsPoint {
    #[schema(format = DateTime)]
    pub at: String,
    /// CPU time the VM's QEMU used, in percent of one CPU: 100 is one vCPU busy all the
    /// interval, so a VM with several vCPUs may go above 100. QEMU's own work for the
    /// guest (device emulation, I/O) counts too.
    #[schema(minimum = 0)]
    pub cpu_percent: f64,
    /// Host memory the VM's QEMU holds (its resident set: the guest memory it has
    /// touched, and QEMU's own).
    pub memory_bytes: u64,
    /// Bytes per second the guest read from its disks.
    pub disk_read_bps: u64,
    /// Bytes per second the guest wrote to its disks.
    pub disk_write_bps: u64,
    /// Bytes per second the guest received on its NICs.
    pub net_rx_bps: u64,
    /// Bytes per second the guest sent on its NICs.
    pub net_tx_bps: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShutdownRequest {
    /// How long to wait for the guest to power off, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Stop QEMU hard if the guest has not powered off by the timeout.
    #[serde(default)]
    pub force: bool,
}

fn default_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemSetRequest {
    #[schema(minimum = 32, maximum = 4194304)]
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VcpuSetRequest {
    #[schema(minimum = 1, maximum = 255)]
    pub vcpus: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SaveRequest {
    /// Absolute path, on the VM's host, of the file to write the memory state to.
    #[schema(
        pattern = "^(/([^/.\\x00][^/\\x00]*|\\.([^/.\\x00][^/\\x00]*)?|\\.\\.[^/\\x00]+)?)+$"
    )]
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreRequest {
    /// Absolute path, on the host, of a file written by `save`.
    #[schema(
        pattern = "^(/([^/.\\x00][^/\\x00]*|\\.([^/.\\x00][^/\\x00]*)?|\\.\\.[^/\\x00]+)?)+$"
    )]
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    pub name: String,
    /// Where the controller reaches the host's agent.
    #[serde(default)]
    pub url: String,
    /// Whether the agent's event stream is connected now (an offline host gets no new
    /// VMs; its VMs keep their last known state until it is back).
    #[serde(default)]
    pub online: bool,
    /// When the controller last connected to the agent or lost it (UTC).
    #[serde(default)]
    pub last_seen: String,
    /// Seconds since the host last reported: 0 while its agent is connected, else the
    /// time since the controller lost it (or, after a controller restart, last had it).
    #[serde(default)]
    pub last_seen_age_seconds: u64,
    /// Offline for longer than the controller's threshold (`hostel up --stale-after`):
    /// what is shown for it (its VMs' states, its use) is that old.
    #[serde(default)]
    pub stale: bool,
    pub cpus: u32,
    pub memory_total_mib: u64,
    /// Memory promised to VMs that have a QEMU process (their max memory).
    pub memory_vms_mib: u64,
    pub accel: Accel,
    /// How the accelerator was chosen (the probe's result).
    pub accel_reason: String,
    pub qemu_version: String,
    pub vms_running: u32,
    pub vms_total: u32,
    pub kernel: String,
    /// Its tags, which a create may ask for (`--host-tag`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// `draining` while an admin's drain moves its VMs away, `drained` once none is
    /// left; either way it gets no new VMs. Empty otherwise.
    #[serde(default)]
    pub drain: String,
    /// The machine type `q35` stands for in its QEMU: new VMs on it are pinned to it.
    #[serde(default)]
    pub machine: String,
    /// Every q35 machine type its QEMU runs: VMs pinned to one of them may move here.
    #[serde(default)]
    pub machines: Vec<String>,
    /// The named CPU models it runs with all their features (for `--cpu-model`).
    #[serde(default)]
    pub cpu_models: Vec<String>,
    /// Its CPU's model name: VMs on the `host` model move only between hosts with the
    /// same one.
    #[serde(default)]
    pub cpu_name: String,
    /// It can receive a VM by post-copy (its QEMU may use userfaultfd).
    #[serde(default)]
    pub postcopy: bool,
}

/// Empties a host for maintenance: it gets no new VMs, and its running VMs migrate live
/// to other hosts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DrainRequest {
    /// How many VMs move at once (default 2).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16)]
    pub concurrency: Option<u32>,
    /// VMs that are not running move too, by offline moves (their disks copied).
    #[serde(default)]
    pub allow_offline: bool,
}

/// Evens out the hosts' load by live migrations.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RebalanceRequest {
    /// Only show the plan.
    #[serde(default)]
    pub dry_run: bool,
    /// The least a move must lower the score by (default 0.01).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub min_gain: Option<f64>,
}

/// A rebalance's plan: the cluster's score (the standard deviation of the hosts' memory
/// use plus that of their vCPUs per CPU; lower is more even) before and after its moves,
/// and the task applying them unless it was a dry run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RebalancePlan {
    pub score_before: f64,
    pub score_after: f64,
    pub moves: Vec<PlannedMove>,
    #[serde(default)]
    pub task: Option<Task>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlannedMove {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub memory_mib: u64,
}

/// Opens a drained host to new VMs again.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UndrainRequest {
    /// Also move back the VMs its drain moved away.
    #[serde(default, rename = "return")]
    pub return_vms: bool,
}

/// What an admin sets on a host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetHostRequest {
    /// The host's tags, replacing the ones it had (empty: none). Each like a name:
    /// lower-case letters, digits and dashes.
    pub tags: Vec<String>,
}

/// A host to add: the address of its agent (`hostel agent`), which must present a
/// certificate from this controller's CA (`hostel agent-cert`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddHostRequest {
    /// `https://ADDRESS:PORT`
    #[schema(pattern = "^https://")]
    pub url: String,
    /// The agent is a recorded host (same name) at a new address: take the record over.
    /// Refused while the recorded address is online.
    #[serde(default)]
    pub replace: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub version: String,
    pub data_dir: String,
    /// The controller's database: `sqlite` (in the data directory) or `postgresql`
    /// (admins only).
    #[serde(default)]
    pub database: String,
    pub hosts: Vec<HostInfo>,
    /// Where `ssh -p PORT VMNAME@HOST` reaches serial consoles.
    #[serde(default)]
    pub ssh_console: Option<String>,
    /// The SSH console gateway's host key (an OpenSSH public key line) and fingerprint.
    #[serde(default)]
    pub ssh_host_key: Option<String>,
    #[serde(default)]
    pub ssh_host_key_fingerprint: Option<String>,
    /// The controllers sharing the database, alive and stopped (admins only; one on
    /// SQLite).
    #[serde(default)]
    pub controllers: Vec<ControllerInfo>,
    /// The controller that answered.
    #[serde(default)]
    pub controller: String,
    /// Where this controller serves `/metrics` without a token (`--metrics-listen`;
    /// admins only). `/metrics` on the API's address needs an admin's token.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

/// A controller, from its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ControllerInfo {
    pub id: String,
    /// Its machine's hostname.
    pub name: String,
    /// Where it serves the API.
    pub api: String,
    /// It follows the hosts and runs the background work.
    pub leader: bool,
    /// Its heartbeat is recent; a stopped one's work was taken over.
    pub alive: bool,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub name: String,
    pub kind: ImageKind,
    /// `qcow2` or `raw` for disk images; `kernel` for direct-kernel images.
    pub format: String,
    pub size_bytes: u64,
    /// SHA-256 of the image's file(s), recorded at import or build.
    pub sha256: String,
    pub created_at: String,
    /// Names of the VMs whose disks are based on this image.
    pub used_by: Vec<String>,
    /// The hosts that hold a copy of the image (`ready`) or are being given one
    /// (`copying`); the image is usable on any host, copied there on first use.
    #[serde(default)]
    pub hosts: Vec<ImageCopy>,
}

/// A host's copy of an image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageCopy {
    pub host: String,
    /// `ready` or `copying`.
    pub state: String,
}

/// Copies an image to hosts ahead of its first use there: to one host, or (no host
/// named) to every connected host that has no copy yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PushImageRequest {
    /// The host to copy the image to; none: every connected host.
    #[serde(default)]
    pub host: Option<String>,
}

/// A directory backups go to, on the hosts (NFS, say, for several).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupTarget {
    pub name: String,
    pub dir: String,
    pub backups: u64,
    pub size_bytes: u64,
    pub created_at: String,
}

/// Adds a backup target (admins).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateBackupTargetRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// An absolute directory (made if missing), the same on every host that uses it.
    #[schema(pattern = "^/")]
    pub dir: String,
}

/// Backs a VM up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateBackupRequest {
    /// The backup target; default: the only one there is.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub target: Option<String>,
    /// A full backup even when an incremental one could be taken.
    #[serde(default)]
    pub full: bool,
}

/// One disk's file in a backup.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupDisk {
    pub index: u32,
    pub file: String,
    pub size_bytes: u64,
    pub virtual_size_mib: u64,
    pub sha256: String,
    /// Holds only what changed since the parent backup's file.
    pub incremental: bool,
}

/// A backup of a VM's disks at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Backup {
    pub name: String,
    pub vm: String,
    pub owner: Option<String>,
    pub target: String,
    /// `full`, or `incremental` (only the changes since `parent`).
    pub kind: String,
    pub parent: Option<String>,
    pub size_bytes: u64,
    pub created_at: String,
    pub disks: Vec<BackupDisk>,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// How it was made consistent: "the guest agent froze N file system(s)", "at rest"
    /// (a stopped VM), or "crash-consistent: WHY" (as if the power had been cut).
    #[serde(default)]
    pub quiesce: Option<String>,
}

/// A VM's backup schedule: a backup every so often into a target, and which to keep.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupSchedule {
    /// Minutes between backups (an hour 60, a day 1440, a week 10080).
    #[schema(minimum = 1, maximum = 527040)]
    pub every_minutes: u64,
    /// The backup target; default: the only one there is.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub target: Option<String>,
    /// Keep the newest N.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub keep_last: Option<u32>,
    /// Keep the newest of each of the last N days that have one.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub keep_daily: Option<u32>,
    /// Keep the newest of each of the last N weeks that have one.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub keep_weekly: Option<u32>,
    /// A full backup once the chain since the last full one holds this many (7 by
    /// default): a restore then reads at most that many files.
    #[serde(default = "seven")]
    #[schema(minimum = 1, maximum = 1000)]
    pub full_every: u32,
    /// When it last ran (read only).
    #[serde(default)]
    pub last_run: Option<String>,
}

fn seven() -> u32 {
    7
}

/// Restores a backup: as a new VM (`as_name`), or over its VM, which must be stopped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RestoreBackupRequest {
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub as_name: Option<String>,
    /// Start the VM once restored.
    #[serde(default)]
    pub start: bool,
}

/// The first file of a VM archive (`hostel export`; see `hostel_model::archive`): what
/// the VM is and which disk files follow.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmArchiveManifest {
    /// `hostel-vm`.
    pub format: String,
    /// The manifest's version (1).
    pub version: u32,
    /// The Hostel version that wrote it.
    pub hostel: String,
    /// When (RFC 3339).
    pub exported_at: String,
    /// The VM as a create request: sizes, policies, boot, networks (NICs keep their
    /// MACs; they get addresses where they are imported).
    pub vm: CreateVmRequest,
    /// Its disks, in the order their files follow.
    pub disks: Vec<ArchivedDisk>,
}

/// How `POST /api/v1/import/vm` makes the VM of the archive in its body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportVmQuery {
    /// Its name here; default the name in the archive.
    #[serde(default)]
    #[param(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
    /// Put every NIC on this network; default the networks named in the archive.
    #[serde(default)]
    #[param(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub network: Option<String>,
    /// The pool its disks go to; default the host's.
    #[serde(default)]
    #[param(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub pool: Option<String>,
    /// Start it once imported.
    #[serde(default)]
    pub start: bool,
}

/// What an import made, and what it changed on the way (a MAC taken here, say).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportedVm {
    pub vm: Vm,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One disk of a VM archive.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArchivedDisk {
    /// Its place in the VM's disk order (0 boots).
    pub index: u32,
    /// Its file's name in the archive.
    pub file: String,
    /// `qcow2` or `raw`; the file stands alone (no backing file).
    pub format: String,
    /// Its size as the guest sees it, MiB.
    pub size_mib: u64,
}

/// A Xen guest to bring over: its `xm`/`xl` config file's text. Admins only (its disks
/// are read from the host's files).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportXenRequest {
    /// The config file's text (`/etc/xen/NAME.cfg` on the Xen host).
    #[schema(max_length = 65536)]
    pub config: String,
    /// Where the guest's disk files (and its kernel and ramdisk) are on the host now:
    /// each path in the config is looked for here by its file name. Default: the paths
    /// as the config gives them.
    #[serde(default)]
    #[schema(pattern = "^/")]
    pub disk_dir: Option<String>,
    /// The network the guest's NICs join (a Xen bridge means nothing here). Default:
    /// `default`.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub network: Option<String>,
    /// The VM's name, where the config's `name` is not one Hostel takes.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
    /// The storage pool the disks are copied into; default the host's `default` pool.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub pool: Option<String>,
    /// Start the VM once its disks are in (the default, as `xm create` does).
    #[serde(default = "yes")]
    pub start: bool,
    /// Only say what would be made and what is not carried over; make nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an import made, or would make.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct XenImport {
    /// The VM's name.
    pub vm: String,
    /// The task copying the disks in and starting the VM (none for a dry run). A failed
    /// one removes the VM again.
    pub task: Option<Task>,
    /// What the VM gets: sizes, policies, NICs, disks, boot.
    pub plan: Vec<String>,
    /// What the config says that Hostel does not carry over, line by line.
    pub not_carried: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportImageRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Absolute path, on the host, of a raw, qcow2, vmdk, vdi or vhdx file (an ISO is
    /// raw); or an http(s) URL the host downloads it from.
    #[schema(pattern = "^(/|https?://)")]
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildImageRequest {
    /// What to build: `tiny` (Debian's cloud kernel + a busybox initramfs) or `debian`
    /// (a bootable Debian from the mirror: systemd, kernel, bootloader for BIOS and UEFI,
    /// serial console, SSH server, cloud-init).
    #[schema(pattern = "^(tiny|debian)$")]
    pub recipe: String,
    /// The image's name; defaults to the recipe's name (`debian-SUITE` for debian).
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
    /// Debian suite (`debian`): bookworm by default.
    #[serde(default)]
    #[schema(pattern = "^(bookworm|trixie)$")]
    pub suite: Option<String>,
    /// Extra Debian packages to install (`debian`).
    #[serde(default)]
    #[schema(schema_with = packages_schema)]
    pub packages: Vec<String>,
    /// The image's disk size in MiB (`debian`): 4 GiB by default.
    #[serde(default)]
    #[schema(minimum = 1024, maximum = 67108864)]
    pub size_mib: Option<u64>,
    /// The Debian mirror (`debian`): http://deb.debian.org/debian by default.
    #[serde(default)]
    #[schema(pattern = "^https?://[^ ]*$")]
    pub mirror: Option<String>,
}

pub use hostel_model::TaskState;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub state: TaskState,
    /// 0.0 to 1.0.
    pub progress: f64,
    pub message: String,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One operation of the journal: what was asked, how far it got, how it ended. One a
/// crash interrupted ends `failed`, with what was done about it in `error`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    pub id: String,
    /// `create`, `delete`, `start`, `disk-add`, `snapshot-create`, ...
    pub kind: String,
    /// The VM, network or image it acts on, by name.
    pub target: String,
    pub host: Option<String>,
    pub state: TaskState,
    /// The last step it finished, if any.
    pub step: Option<String>,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperationList {
    /// Newest first.
    pub operations: Vec<Operation>,
}

/// Which console a browser ticket opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleKind {
    /// The serial console (the same one `ssh` and `hostel console` reach).
    Serial,
    /// The VGA display, through QEMU's VNC server on a unix socket.
    Vga,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleTicketRequest {
    pub console: ConsoleKind,
    /// How long the ticket lasts, 1 to 30 s (default 30).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 30)]
    pub ttl_seconds: Option<u32>,
}

/// A single-use ticket for one browser console connection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleTicket {
    pub ticket: String,
    pub console: ConsoleKind,
    /// The websocket that the ticket opens, relative to the API's address.
    pub websocket: String,
    /// The page (xterm.js or noVNC) that opens it, relative to the API's address.
    pub page: String,
    pub expires_in_seconds: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogLines {
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateNetworkRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// IPv4 network, e.g. `10.20.0.0/24`.
    #[schema(
        pattern = "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}/([89]|1[0-9]|2[0-9])$"
    )]
    pub cidr: String,
    /// Defaults to the network's first host address.
    #[serde(default)]
    #[schema(format = Ipv4)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub mode: hostel_model::net::NetMode,
    /// NAT: masquerade out of this interface only; bridged: the interface put on the bridge.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,15}$")]
    pub uplink: Option<String>,
    /// DNS domain: VMs answer as NAME.DOMAIN.
    #[serde(default)]
    #[schema(pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,61}[a-z0-9])?)*$")]
    pub domain: Option<String>,
    /// An IPv6 /64: NICs get the address SLAAC derives from their MAC.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// An upstream DNS server (IPv4) for names outside the network's domain. Without
    /// one, the network's DNS answers only its own names.
    #[serde(default)]
    #[schema(format = Ipv4)]
    pub dns_forward: Option<String>,
    /// What the network's VMs may reach beyond DHCP, DNS and (NAT) the world, and who
    /// may attach; see [`NetworkPolicy`].
    #[serde(default, flatten)]
    pub policy: NetworkPolicy,
}

/// A network's isolation policy. By default its VMs reach DHCP and DNS on the host and,
/// on a NAT network, the world beyond the host's LAN: no host service, no other network,
/// no link-local (metadata) address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default, PartialEq)]
pub struct NetworkPolicy {
    /// Host services its VMs may reach through the gateway, as `PROTO/PORT`.
    #[serde(default)]
    #[schema(schema_with = host_port_list)]
    pub host_ports: Vec<String>,
    /// Networks whose VMs its VMs may reach (and back).
    #[serde(default)]
    #[schema(schema_with = name_list)]
    pub links: Vec<String>,
    /// IPv4 CIDRs on the host's LAN its VMs may reach (NAT networks).
    #[serde(default)]
    #[schema(schema_with = cidr_list)]
    pub allow_to: Vec<String>,
    /// Users and groups who may attach NICs to a bridged network (others: admins only).
    #[serde(default)]
    #[schema(schema_with = name_list)]
    pub attach: Vec<String>,
}

/// Changes a network's policy: each list given replaces the one it names; a list left
/// out stays as it is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
pub struct UpdateNetworkRequest {
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = host_port_list)]
    pub host_ports: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = name_list)]
    pub links: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = cidr_list)]
    pub allow_to: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = name_list)]
    pub attach: Option<Vec<String>>,
}

/// A list that is given: `null` is not a list (leave the field out to keep it).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Vec::<String>::deserialize(d).map(Some)
}

/// A list of at most 64 strings, each matching `pattern`.
fn string_list(pattern: &str) -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern)),
        )
        .max_items(Some(64))
        .build()
}

fn host_port_list() -> utoipa::openapi::Array {
    string_list(
        "^(tcp|udp)/([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
    )
}

fn name_list() -> utoipa::openapi::Array {
    string_list("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
}

fn cidr_list() -> utoipa::openapi::Array {
    string_list(
        "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}/([0-9]|[12][0-9]|3[0-2])$",
    )
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub name: String,
    pub cidr: String,
    pub gateway: String,
    pub mode: hostel_model::net::NetMode,
    pub uplink: Option<String>,
    pub domain: Option<String>,
    pub ipv6: Option<String>,
    pub dns_forward: Option<String>,
    /// The bridge on each host.
    pub bridge: String,
    /// VMs with a NIC on this network.
    pub used_by: Vec<String>,
    pub created_at: String,
    /// Links are shown on both networks, whichever side an admin set them on.
    #[serde(flatten)]
    pub policy: NetworkPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NicRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub network: String,
    #[serde(default)]
    #[schema(format = Ipv4)]
    pub ip: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$")]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Nic {
    pub id: String,
    pub index: u32,
    pub network: String,
    pub mac: String,
    pub ip: String,
    pub ipv6: Option<String>,
    /// NAME.DOMAIN when the network has a domain.
    pub dns_name: Option<String>,
    pub tap: String,
    /// Frames the port guard dropped (anti-spoofing), while the VM runs.
    pub drops: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RemoveNicRequest {
    /// The NIC's MAC address or index.
    pub nic: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PortForwardRequest {
    #[schema(minimum = 1, maximum = 65535)]
    pub host_port: u16,
    #[schema(minimum = 1, maximum = 65535)]
    pub guest_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default = "tcp")]
    #[schema(pattern = "^(tcp|udp)$")]
    pub proto: String,
}

fn tcp() -> String {
    "tcp".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PortForward {
    pub vm: String,
    pub proto: String,
    pub host_port: u16,
    pub guest_port: u16,
    pub ip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddDiskRequest {
    /// Size in MiB (for an image: at least the image's size; default the image's size).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 67108864)]
    pub size_mib: Option<u64>,
    /// Make the disk an overlay of this disk image; blank otherwise.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub image: Option<String>,
    /// The storage pool to put the disk in; default the host's `default` pool.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub pool: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatePoolRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// `dir` (qcow2 files, the default) or `btrfs` (raw files in subvolumes, reflink
    /// clones, subvolume snapshots).
    #[serde(default = "dir_driver")]
    #[schema(pattern = "^(dir|btrfs)$")]
    pub driver: String,
    /// The directory on the host (for btrfs: on a mounted btrfs filesystem).
    #[schema(
        pattern = "^(/([^/.\\x00][^/\\x00]*|\\.([^/.\\x00][^/\\x00]*)?|\\.\\.[^/\\x00]+)?)+$"
    )]
    pub path: String,
    /// The host, by name; default the only (or first) host. For a shared pool, the
    /// host that records it (every connected host checks the path).
    #[serde(default)]
    pub host: Option<String>,
    /// Every host reaches this path as the same storage (NFS, a cluster filesystem):
    /// its VMs may run on any host, and migrate with their memory only.
    #[serde(default)]
    pub shared: bool,
}

fn dir_driver() -> String {
    "dir".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub name: String,
    pub driver: String,
    pub path: String,
    pub host: String,
    /// The filesystem's size, free and used space; absent when the host is unreachable.
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    /// How many VM disks are in the pool, and their sizes added up.
    pub disks: u32,
    pub provisioned_mib: u64,
    pub created_at: String,
    /// Every host reaches it at the same path.
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RemoveDiskRequest {
    /// The disk's index (`hostel disk list`).
    pub disk: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResizeDiskRequest {
    pub disk: u32,
    /// The new size in MiB: larger than the current one.
    #[schema(minimum = 1, maximum = 67108864)]
    pub size_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshotRequest {
    /// Defaults to a timestamp.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
    /// Include the memory state (the VM must be running); revert then resumes it.
    #[serde(default)]
    pub memory: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub name: String,
    pub with_memory: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotName {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
}

/// What `hostel doctor` found: each entry says what is wrong and what to do.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DoctorReport {
    pub problems: Vec<String>,
    /// What was checked, for the record.
    pub checked: Vec<String>,
}

// ---- accounts ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    pub admin: bool,
    pub groups: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateUserRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// At least 10 characters; none: the user logs in with tokens only.
    #[serde(default)]
    #[schema(pattern = "^[^\\r\\n\\x00]*$", min_length = 10, max_length = 1024)]
    pub password: Option<String>,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasswordRequest {
    #[schema(pattern = "^[^\\r\\n\\x00]*$", min_length = 10, max_length = 1024)]
    pub password: String,
    /// The password in use now: needed to change your own, once you have one (an admin
    /// setting another user's does not give it).
    #[serde(default)]
    pub current_password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateGroupRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub user: String,
}

/// An API token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub read_only: bool,
    pub expires_at: Option<String>,
    pub revoked: bool,
    pub created_at: String,
    pub last_used_at: Option<String>,
    /// A browser session (a web UI login): the browser and address it was made from.
    /// Revoking it logs that browser out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Reads only: every request that changes something is refused.
    #[serde(default)]
    pub read_only: bool,
    /// Days until it stops working; none: until revoked.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3660)]
    pub expires_in_days: Option<u32>,
    /// An exact end instead (RFC 3339, in the future).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Your password. Without it a token cannot make one that outlives it (it gets
    /// the maker's expiry, or is refused); with it, the new token's expiry is the one
    /// asked for. The web UI sends it: a browser session lasts hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[^\\r\\n\\x00]*$", max_length = 1024)]
    pub password: Option<String>,
}

/// A new token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    pub name: String,
    pub token: String,
    pub read_only: bool,
    pub expires_at: Option<String>,
    /// The request gave no expiry and the token that made this one has one: this one
    /// expires with it (a token never outlives the token that made it).
    #[serde(default)]
    pub expiry_inherited: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SshKey {
    pub name: String,
    pub public_key: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddKeyRequest {
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    #[schema(
        pattern = "^[ \\t\\r\\n]*(ssh-|ecdsa-sha2-|sk-ssh-|sk-ecdsa-)[^\\s\\x85]*[ \\t]+[A-Za-z0-9+/=]{16,}([ \\t][^\\r\\n]*)?[ \\t\\r\\n]*$",
        max_length = 8192
    )]
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    /// The new token's name; default `login-TIMESTAMP`.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub token_name: Option<String>,
    /// Default 30 days.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3660)]
    pub expires_in_days: Option<u32>,
    /// Make a browser session (what the web UI's login makes) instead of an API token:
    /// the browser, as it will be listed among the user's sessions. A session ends after
    /// an hour unused and twelve hours after the login.
    #[serde(default)]
    #[schema(max_length = 120)]
    pub browser: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub admin: bool,
    pub groups: Vec<String>,
    pub token: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetOwnerRequest {
    /// `user:NAME` or `group:NAME` (a bare name is a user).
    #[schema(pattern = "^(user:.*|group:.*|[^:]*)$")]
    pub owner: String,
    /// A group whose members may operate the VM too; "" removes it.
    #[serde(default)]
    pub admin_group: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub at: String,
    /// Who: a user's name, or `system:NAME` for Hostel's own actors (the lease reaper).
    pub user: Option<String>,
    pub source: String,
    /// The domain action, such as `vm.create`, `vm.start`, `disk.resize`, `token.create`.
    pub action: String,
    /// What it acted on (a VM's, user's, image's... name).
    pub target: Option<String>,
    /// The parameters that matter (sizes, the image, ...; never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// `ok`, `denied` or `failed`.
    pub result: String,
    pub error: Option<String>,
}

/// How long the audit trail keeps its entries in the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditRetention {
    /// Entries older than this many days are removed (those of successful changes
    /// exported first, see `AuditPruneReport`); none: kept for ever.
    #[schema(minimum = 1, maximum = 36600)]
    pub days: Option<u32>,
}

/// What a pruning of the audit trail did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditPruneReport {
    /// Entries removed from the database.
    pub removed: u64,
    /// Of those, entries that were not refusals (`ok` and `failed`), written first as
    /// JSON lines to the archive files below.
    pub exported: u64,
    /// The archive files written to, one per day of the entries
    /// (`DATA_DIR/audit-archive/audit-YYYY-MM-DD.jsonl`).
    pub files: Vec<String>,
    /// Entries made before this time were removed; none: nothing is pruned (no
    /// retention set).
    pub before: Option<String>,
}

/// Quota limits; a missing limit is no limit. Charged to a VM's owner.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuotaLimits {
    /// Max memory of the owner's running VMs added up, MiB: QEMU is given a VM's max
    /// memory, and a guest without a balloon driver uses all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_total_mib: Option<u64>,
    /// Max memory of any one VM, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_per_vm_mib: Option<u64>,
    /// All the owner's disk space added up, MiB: disks, snapshots and save files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_mib: Option<u64>,
    /// Sizes of one VM's disks added up, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_per_vm_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms_running: Option<u64>,
    /// vCPUs of the owner's running VMs added up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus_total: Option<u64>,
    /// NICs of all the owner's VMs, running or not (each holds an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics_total: Option<u64>,
    /// Port forwards of all the owner's VMs (each holds a host port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_forwards_total: Option<u64>,
    /// Snapshots of all the owner's VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_total: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuotaUse {
    /// Max memory of the running VMs added up, MiB.
    pub ram_mib: u64,
    /// Disk space charged, MiB: the disks' sizes plus `snapshots_mib`, `saves_mib` and
    /// `backups_mib`.
    pub disk_mib: u64,
    /// What the snapshots are charged, MiB (part of `disk_mib`): each is charged its VM's
    /// disk sizes, plus max memory and 64 MiB of device state if it holds memory.
    #[serde(default)]
    pub snapshots_mib: u64,
    /// What save files are charged, MiB (part of `disk_mib`): max memory and 64 MiB of
    /// device state per saved VM.
    #[serde(default)]
    pub saves_mib: u64,
    /// What backups are charged, MiB (part of `disk_mib`): their files' sizes.
    #[serde(default)]
    pub backups_mib: u64,
    pub vms: u64,
    pub vms_running: u64,
    pub vcpus: u64,
    #[serde(default)]
    pub nics: u64,
    #[serde(default)]
    pub port_forwards: u64,
    #[serde(default)]
    pub snapshots: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    /// `user:NAME`, `group:NAME` or `default`.
    pub owner: String,
    /// The limits in force (the owner's own, else the defaults').
    pub limits: QuotaLimits,
    pub used: QuotaUse,
    /// Admins' own VMs are not limited.
    pub exempt: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RenewRequest {
    /// Days from now; default the cluster's default lease (or 30).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 366)]
    pub days: Option<u32>,
    /// An exact end (RFC 3339); admins only. Overrides `days`.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

/// One message of the live event stream (`GET /api/v1/events`, server-sent events whose
/// `data` is this, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VmEvent {
    /// A VM the caller may operate was created or changed: what it is now.
    Changed { vm: Box<VmSummary> },
    /// A VM the caller could operate is gone from their view (deleted, or given to
    /// someone else).
    Gone { id: String, name: String },
    /// Someone attached a console to a VM the caller may operate (consoles never take
    /// each other over: everyone attached stays connected).
    Console {
        name: String,
        note: String,
        /// The first 12 characters of the browser ticket that opened it (a console page
        /// knows its own attach by it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ticket: Option<String>,
    },
    /// The stream fell behind and missed changes: read the list again.
    Resync,
}
