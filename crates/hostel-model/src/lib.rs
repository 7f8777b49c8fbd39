//! Hostel's domain types and their validation. No I/O lives here.
//!
//! Every validation error names the field that is wrong and says what would work, so
//! the API and the CLI can pass it to the user unchanged.

pub mod archive;
pub mod net;
pub mod qcow2;
pub mod xen;

use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// A validation failure: which field, and what would work instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

pub const MIB: u64 = 1024 * 1024;

/// Smallest and largest memory a VM may be given, in MiB.
pub const MIN_MEMORY_MIB: u64 = 32;
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// Largest vCPU count QEMU's q35/pc machine supports without extra options.
pub const MAX_VCPUS: u32 = 255;
/// Disk sizes, in MiB.
pub const MIN_DISK_MIB: u64 = 1;
pub const MAX_DISK_MIB: u64 = 64 * 1024 * 1024;

/// What a host's QEMU offers a VM: a VM moves live only to a host that offers its
/// machine type and its CPU model with every feature.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Platform {
    /// The versioned machine type `q35` stands for in this QEMU (`pc-q35-10.0`).
    pub machine: String,
    /// Every q35 machine type this QEMU runs.
    pub machines: Vec<String>,
    /// The named CPU models this host runs with all their features under its
    /// accelerator (QMP `query-cpu-definitions` without unavailable features).
    pub cpu_models: Vec<String>,
    /// The host CPU's model name (`/proc/cpuinfo`): VMs on the `host` CPU model move
    /// only between hosts with the same one.
    pub cpu_name: String,
    /// Its QEMU can receive a VM by post-copy (userfaultfd is open to it).
    #[serde(default)]
    pub postcopy: bool,
}

/// The CPU model of all a host's accelerator offers (QEMU's `host` under KVM, `max`
/// under TCG): the fastest, but it ties a VM to hosts with the same CPU and QEMU.
pub const CPU_HOST: &str = "host";
/// The named model VMs get by default once a cluster has more than one host: the
/// x86-64-v2 level with AES (as Proxmox's default), which every x86-64 server of the
/// last decade and QEMU's TCG run in full, so a VM on it moves to any host.
pub const CPU_BASELINE: &str = "Westmere-v1";

/// A CPU model's name as a VM may ask for it: `host`, or a QEMU model's name.
pub fn validate_cpu_model(model: &str) -> Result<(), Invalid> {
    let ok = !model.is_empty()
        && model.len() <= 64
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(Invalid::new(
            "cpu_model",
            format!(
                "{model:?} is not a CPU model: give `host` or a QEMU model's name such as                  {CPU_BASELINE} (`hostel host show HOST` lists those a host runs)"
            ),
        ));
    }
    Ok(())
}

/// Names of VMs and images: a DNS label, so that the networking work can use the name as
/// the VM's host name unchanged.
pub fn validate_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let first_ok = name
        .bytes()
        .next()
        .map(|b| b.is_ascii_lowercase())
        .unwrap_or(false);
    if name.is_empty() || name.len() > 63 || !ok_chars || !first_ok || name.ends_with('-') {
        return Err(Invalid::new(
            field,
            format!(
                "{name:?} is not a valid name: use 1 to 63 characters of lowercase letters, digits \
                 and '-', starting with a letter and not ending with '-' (for example \"web-1\")"
            ),
        ));
    }
    Ok(())
}

/// Parses a size such as `512M`, `2G`, `1.5GiB`, `1048576K` or a bare number of MiB,
/// and returns it in bytes.
pub fn parse_size(field: &str, text: &str) -> Result<u64, Invalid> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Invalid::new(
            field,
            format!("{text:?} is not a size: write a number with a unit, like 512M, 2G or 20GiB"),
        )
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => MIB,
        "B" => 1,
        "K" | "KB" | "KIB" => 1024,
        "G" | "GB" | "GIB" => 1024 * MIB,
        "T" | "TB" | "TIB" => 1024 * 1024 * MIB,
        _ => return Err(bad()),
    };
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Ok((value * mult as f64).round() as u64)
}

/// Parses a size and converts it to whole MiB, rejecting sizes that are not a whole MiB.
pub fn parse_size_mib(field: &str, text: &str) -> Result<u64, Invalid> {
    let bytes = parse_size(field, text)?;
    if !bytes.is_multiple_of(MIB) {
        return Err(Invalid::new(
            field,
            format!(
                "{text:?} is not a whole number of MiB: round it, for example to {}M",
                bytes / MIB + 1
            ),
        ));
    }
    Ok(bytes / MIB)
}

pub fn format_mib(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}G", mib / 1024)
    } else {
        format!("{mib}M")
    }
}

/// The life-cycle state of a VM, as the API and `describe` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Stopped,
    Starting,
    Running,
    Paused,
    ShuttingDown,
    Crashed,
    Saved,
}

impl VmState {
    /// Every state.
    pub const ALL: [VmState; 7] = [
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::ShuttingDown,
        VmState::Crashed,
        VmState::Saved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting-down",
            VmState::Crashed => "crashed",
            VmState::Saved => "saved",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        Some(match s {
            "stopped" => VmState::Stopped,
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "paused" => VmState::Paused,
            "shutting-down" => VmState::ShuttingDown,
            "crashed" => VmState::Crashed,
            "saved" => VmState::Saved,
            _ => return None,
        })
    }

    /// True while a QEMU process exists for the VM.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::ShuttingDown
        )
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operations a user can ask for; used to check them against the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Reboot,
    Pause,
    Unpause,
    Shutdown,
    Destroy,
    Delete,
    MemSet,
    VcpuSet,
    Limits,
    Save,
    Restore,
    Console,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Reboot => "reboot",
            Op::Pause => "pause",
            Op::Unpause => "unpause",
            Op::Shutdown => "shutdown",
            Op::Destroy => "destroy",
            Op::Delete => "delete",
            Op::MemSet => "mem-set",
            Op::VcpuSet => "vcpu-set",
            Op::Limits => "limits",
            Op::Save => "save",
            Op::Restore => "restore",
            Op::Console => "console",
        }
    }

    fn allowed_in(self) -> &'static [VmState] {
        use VmState::*;
        match self {
            Op::Start => &[Stopped, Crashed],
            Op::Reboot => &[Running],
            Op::Pause => &[Running],
            Op::Unpause => &[Paused],
            Op::Shutdown => &[Running, ShuttingDown],
            Op::Destroy => &[Starting, Running, Paused, ShuttingDown],
            Op::Delete => &[Stopped, Crashed, Saved],
            Op::MemSet | Op::VcpuSet => &[Stopped, Crashed, Running, Paused],
            Op::Limits => &[Stopped, Crashed, Running, Paused, Saved],
            Op::Save => &[Running, Paused],
            Op::Restore => &[Saved],
            Op::Console => &[Starting, Running, Paused, ShuttingDown],
        }
    }

    /// Checks that the operation makes sense in `state`; the error says what would.
    pub fn check(self, state: VmState) -> Result<(), WrongState> {
        let allowed = self.allowed_in();
        if allowed.contains(&state) {
            return Ok(());
        }
        let list: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let hint = match (self, state) {
            (Op::Delete, _) => " (stop it first with `hostel destroy` or `hostel shutdown`)",
            (Op::Start, VmState::Saved) => " (use `hostel restore FILE` to resume a saved VM)",
            (Op::Start, _) => " (it is already running)",
            (_, VmState::Stopped) => " (start it first with `hostel start`)",
            (_, VmState::Saved) => " (restore it first with `hostel restore FILE`)",
            (_, VmState::Paused) => " (unpause it first with `hostel unpause`)",
            _ => "",
        };
        Err(WrongState {
            op: self,
            state,
            message: format!(
                "cannot {} a VM that is {state}: {} is allowed only when the VM is {}{hint}",
                self.name(),
                self.name(),
                list.join(" or ")
            ),
        })
    }
}

/// An operation the VM's state does not allow (a conflict with the VM's state, not bad
/// input): what was asked, in which state, and what would work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state: {message}")]
pub struct WrongState {
    pub op: Op,
    pub state: VmState,
    pub message: String,
}

/// What happens when the guest powers off, reboots or crashes (as in a Xen config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    Destroy,
    Restart,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Destroy => "destroy",
            Policy::Restart => "restart",
        }
    }
    pub fn parse(field: &str, s: &str) -> Result<Policy, Invalid> {
        match s {
            "destroy" => Ok(Policy::Destroy),
            "restart" => Ok(Policy::Restart),
            _ => Err(Invalid::new(
                field,
                format!("{s:?} is not a policy: use \"destroy\" or \"restart\""),
            )),
        }
    }
}

/// Which accelerator runs guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The sizing part of a VM definition, validated as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    pub memory_mib: u64,
    pub max_memory_mib: u64,
    pub vcpus: u32,
    pub max_vcpus: u32,
}

impl Sizing {
    /// `host_memory_mib` is the memory of the largest host the VM could run on.
    pub fn validate(&self, host_memory_mib: u64) -> Result<(), Invalid> {
        check_memory("memory", self.memory_mib)?;
        check_memory("max_memory", self.max_memory_mib)?;
        if self.max_memory_mib < self.memory_mib {
            return Err(Invalid::new(
                "max_memory",
                format!(
                    "max memory {} is below memory {}: raise --max-memory or lower --memory",
                    format_mib(self.max_memory_mib),
                    format_mib(self.memory_mib)
                ),
            ));
        }
        if self.max_memory_mib > host_memory_mib {
            let field = if self.max_memory_mib == self.memory_mib {
                "memory"
            } else {
                "max_memory"
            };
            return Err(Invalid::new(
                field,
                format!(
                    "{} is more than the host has ({}): ask for at most {}",
                    format_mib(self.max_memory_mib),
                    format_mib(host_memory_mib),
                    format_mib(host_memory_mib)
                ),
            ));
        }
        check_vcpus("vcpus", self.vcpus)?;
        check_vcpus("max_vcpus", self.max_vcpus)?;
        if self.max_vcpus < self.vcpus {
            return Err(Invalid::new(
                "max_vcpus",
                format!(
                    "max vCPUs {} is below vCPUs {}: raise --max-vcpus or lower --vcpus",
                    self.max_vcpus, self.vcpus
                ),
            ));
        }
        Ok(())
    }
}

fn check_memory(field: &str, mib: u64) -> Result<(), Invalid> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(Invalid::new(
            field,
            format!(
                "{} is out of range: use between {} and {}",
                format_mib(mib),
                format_mib(MIN_MEMORY_MIB),
                format_mib(MAX_MEMORY_MIB)
            ),
        ));
    }
    Ok(())
}

fn check_vcpus(field: &str, n: u32) -> Result<(), Invalid> {
    if !(1..=MAX_VCPUS).contains(&n) {
        return Err(Invalid::new(
            field,
            format!("{n} is out of range: use between 1 and {MAX_VCPUS}"),
        ));
    }
    Ok(())
}

pub fn check_disk_size(field: &str, mib: u64) -> Result<(), Invalid> {
    if !(MIN_DISK_MIB..=MAX_DISK_MIB).contains(&mib) {
        return Err(Invalid::new(
            field,
            format!(
                "{} is out of range: use between {} and {}",
                format_mib(mib),
                format_mib(MIN_DISK_MIB),
                format_mib(MAX_DISK_MIB)
            ),
        ));
    }
    Ok(())
}

/// What kind of thing an image is, which decides how a VM from it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// A kernel + initrd booted directly by QEMU (like a Xen `kernel=`/`ramdisk=` config).
    DirectKernel,
    /// A disk image booted by its own bootloader under SeaBIOS.
    Disk,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::DirectKernel => "direct-kernel",
            ImageKind::Disk => "disk",
        }
    }
    pub fn parse(s: &str) -> Option<ImageKind> {
        match s {
            "direct-kernel" => Some(ImageKind::DirectKernel),
            "disk" => Some(ImageKind::Disk),
            _ => None,
        }
    }
}

/// Where a storage pool keeps its disks (the agent's `hostel_storage::pool` implements
/// each driver; this is only the name, so that records can carry it without I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolDriver {
    Dir,
    Btrfs,
}

impl PoolDriver {
    pub fn parse(s: &str) -> Option<PoolDriver> {
        match s {
            "dir" => Some(PoolDriver::Dir),
            "btrfs" => Some(PoolDriver::Btrfs),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PoolDriver::Dir => "dir",
            PoolDriver::Btrfs => "btrfs",
        }
    }
    /// The format of the disk files the driver makes.
    pub fn disk_format(self) -> &'static str {
        match self {
            PoolDriver::Dir => "qcow2",
            PoolDriver::Btrfs => "raw",
        }
    }
}

/// How far a background task (or a VM operation) got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "x0", &"a".repeat(63)] {
            validate_name("name", ok).unwrap();
        }
        for bad in ["", "1abc", "Web", "a_b", "a-", "a.b", &"a".repeat(64), "-a"] {
            let e = validate_name("name", bad).unwrap_err();
            assert_eq!(e.field, "name");
            assert!(e.message.contains("lowercase"), "{e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("m", "512M").unwrap(), 512 * MIB);
        assert_eq!(parse_size("m", "512").unwrap(), 512 * MIB);
        assert_eq!(parse_size("m", "2G").unwrap(), 2048 * MIB);
        assert_eq!(parse_size("m", "1.5GiB").unwrap(), 1536 * MIB);
        assert_eq!(parse_size("m", "1024K").unwrap(), MIB);
        assert_eq!(parse_size_mib("m", "1G").unwrap(), 1024);
        assert!(parse_size("m", "12X").is_err());
        assert!(parse_size("m", "").is_err());
        assert!(parse_size("m", "-1G").is_err());
        assert!(parse_size_mib("m", "1000K").is_err());
    }

    #[test]
    fn sizing_limits() {
        let ok = Sizing {
            memory_mib: 256,
            max_memory_mib: 512,
            vcpus: 1,
            max_vcpus: 4,
        };
        ok.validate(1024).unwrap();
        let e = Sizing {
            memory_mib: 8,
            ..ok.clone()
        }
        .validate(1024)
        .unwrap_err();
        assert_eq!(e.field, "memory");
        let e = Sizing {
            max_memory_mib: 128,
            ..ok.clone()
        }
        .validate(1024)
        .unwrap_err();
        assert_eq!(e.field, "max_memory");
        let e = Sizing {
            memory_mib: 2048,
            max_memory_mib: 2048,
            ..ok.clone()
        }
        .validate(1024)
        .unwrap_err();
        assert_eq!(e.field, "memory");
        assert!(e.message.contains("more than the host has"));
        let e = Sizing {
            vcpus: 0,
            ..ok.clone()
        }
        .validate(1024)
        .unwrap_err();
        assert_eq!(e.field, "vcpus");
        let e = Sizing { vcpus: 5, ..ok }.validate(1024).unwrap_err();
        assert_eq!(e.field, "max_vcpus");
    }

    #[test]
    fn state_checks() {
        let e = Op::Pause.check(VmState::Stopped).unwrap_err();
        assert!(
            e.message.contains("cannot pause a VM that is stopped"),
            "{e}"
        );
        assert!(e.message.contains("hostel start"), "{e}");
        Op::Pause.check(VmState::Running).unwrap();
        Op::Delete.check(VmState::Stopped).unwrap();
        assert!(Op::Delete.check(VmState::Running).is_err());
        for s in VmState::ALL {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
        }
    }
}
