//! A VM's resource limits on this host: CPU through its QEMU's cgroup (`cpu.max` and
//! `cpu.weight` on cgroup v2; `cpu.cfs_quota_us` and `cpu.shares` where only v1 has the
//! cpu controller), disks through QEMU's I/O throttling (`block_set_io_throttle`, each
//! virtio-blk device), NICs by their guards and taps (`net.rs`). A start applies them
//! while QEMU waits before the guest's first instruction (`-S`); `SetLimits` changes them
//! while it runs.

use hostel_api::agent::{DiskSpec, Limits};
use hostel_qemu::Qmp;
use serde_json::json;
use std::path::{Path, PathBuf};

/// CFS period, µs: a cap of P percent is P × 1000 µs of CPU each period.
const PERIOD_US: u64 = 100_000;

/// Where this host's cpu controller is.
enum CpuCgroups {
    /// Unified hierarchy with the cpu controller (`/sys/fs/cgroup`).
    V2(PathBuf),
    /// The v1 cpu hierarchy (`/sys/fs/cgroup/cpu`).
    V1(PathBuf),
}

fn cpu_cgroups() -> Option<CpuCgroups> {
    known_cgroups().or_else(mounted_here)
}

/// The cpu controller where it is mounted already (nothing is mounted here).
fn known_cgroups() -> Option<CpuCgroups> {
    let own = Path::new(OWN_MOUNTS);
    found_in(Path::new("/sys/fs/cgroup"))
        .or_else(|| found_in(&own.join("unified")))
        .or_else(|| found_in(&own.join("v1")))
}

/// Where the agent mounts the cgroup hierarchies itself when `/sys` lacks them.
const OWN_MOUNTS: &str = "/run/hostel-agent/cgroup";

/// The cpu controller under `root`, as systemd and most distributions mount it.
fn found_in(root: &Path) -> Option<CpuCgroups> {
    let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if v2.split_whitespace().any(|c| c == "cpu") {
        return Some(CpuCgroups::V2(root.to_path_buf()));
    }
    let v1 = root.join("cpu");
    v1.join("cpu.cfs_quota_us")
        .exists()
        .then_some(CpuCgroups::V1(v1))
}

/// A fresh `/sys` without the cgroup mounts (`ip netns exec` gives one, as do some
/// containers): the hierarchies mounted again under the agent's own directory in
/// `/run`, the unified one if it has the cpu controller, else the v1 cpu one.
fn mounted_here() -> Option<CpuCgroups> {
    let own = Path::new(OWN_MOUNTS);
    let mount = |dir: &Path, args: &[&str]| {
        if dir.join("cgroup.procs").exists() {
            return true;
        }
        std::fs::create_dir_all(dir).is_ok()
            && std::process::Command::new("mount")
                .args(args)
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
    };
    if mount(&own.join("unified"), &["-t", "cgroup2", "none"]) {
        if let Some(c @ CpuCgroups::V2(_)) = found_in(&own.join("unified")) {
            return Some(c);
        }
    }
    let v1 = own.join("v1");
    if mount(&v1.join("cpu"), &["-t", "cgroup", "-o", "cpu", "cgroup"]) {
        return found_in(&v1);
    }
    None
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The cgroup of VM `vm_id` (made if needed, with the cpu controller on the way down).
fn vm_cgroup(vm_id: &str) -> anyhow::Result<(PathBuf, bool)> {
    let Some(c) = cpu_cgroups() else {
        anyhow::bail!(
            "this host has no cgroup cpu controller (neither cgroup v2 with cpu enabled nor \
             the v1 cpu hierarchy), so CPU limits cannot be enforced: remove them \
             (`hostel limits VM --cpu-weight none --cpu-max none`)"
        )
    };
    let dir = c.vm_dir(vm_id);
    if let CpuCgroups::V2(root) = &c {
        // v2 hands the controller down each level.
        let top = root.join("hostel");
        std::fs::create_dir_all(&top)?;
        let _ = write(&root.join("cgroup.subtree_control"), "+cpu");
        write(&top.join("cgroup.subtree_control"), "+cpu")?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok((dir, matches!(c, CpuCgroups::V2(_))))
}

impl CpuCgroups {
    /// The cgroup of VM `vm_id` under this hierarchy (there or not).
    fn vm_dir(&self, vm_id: &str) -> PathBuf {
        match self {
            CpuCgroups::V2(root) | CpuCgroups::V1(root) => root.join("hostel").join(vm_id),
        }
    }
}

/// Puts QEMU `pid` in its VM's cgroup and sets its CPU weight and cap; with neither
/// limit and no cgroup yet, nothing is done.
pub fn cpu(vm_id: &str, pid: u32, l: &Limits) -> anyhow::Result<()> {
    let none = l.cpu_weight.is_none() && l.cpu_max_percent.is_none();
    // No limits and not in a cgroup of ours (as the process itself says, wherever the
    // hierarchy is mounted): nothing to do.
    let placed = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.contains(&format!("/hostel/{vm_id}")));
    if none && !placed && cgroup_of(vm_id).is_none() {
        return Ok(());
    }
    let (dir, v2) = vm_cgroup(vm_id)?;
    write(&dir.join("cgroup.procs"), &pid.to_string())?;
    let weight = l.cpu_weight.unwrap_or(100);
    if v2 {
        let max = match l.cpu_max_percent {
            Some(p) => format!("{} {PERIOD_US}", u64::from(p) * PERIOD_US / 100),
            None => format!("max {PERIOD_US}"),
        };
        write(&dir.join("cpu.max"), &max)?;
        write(&dir.join("cpu.weight"), &weight.to_string())?;
    } else {
        write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        let quota = match l.cpu_max_percent {
            Some(p) => (u64::from(p) * PERIOD_US / 100).to_string(),
            None => "-1".into(),
        };
        write(&dir.join("cpu.cfs_quota_us"), &quota)?;
        // v1 shares: 1024 is the default weight (v2's 100).
        let shares = (u64::from(weight) * 1024 / 100).max(2);
        write(&dir.join("cpu.shares"), &shares.to_string())?;
    }
    Ok(())
}

/// The VM's cgroup, if it has one (a VM without CPU limits mounts nothing).
fn cgroup_of(vm_id: &str) -> Option<PathBuf> {
    let dir = known_cgroups()?.vm_dir(vm_id);
    dir.exists().then_some(dir)
}

/// Removes the VM's cgroup once its QEMU is gone (a cgroup with a process stays).
pub fn forget(vm_id: &str) {
    if let Some(dir) = cgroup_of(vm_id) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Sets one disk's I/O limits (zeros lift them).
pub async fn disk(qmp: &Qmp, index: u32, l: &Limits) -> anyhow::Result<()> {
    qmp.execute(
        "block_set_io_throttle",
        json!({
            // The virtio-blk-pci proxy has no backend of its own; its virtio device has.
            "id": format!("/machine/peripheral/virtio-disk{index}/virtio-backend"),
            "bps": l.disk_bps.unwrap_or(0), "bps_rd": 0, "bps_wr": 0,
            "iops": l.disk_iops.unwrap_or(0), "iops_rd": 0, "iops_wr": 0,
        }),
    )
    .await?;
    Ok(())
}

/// Sets every disk's I/O limits.
pub async fn disks(qmp: &Qmp, disks: &[DiskSpec], l: &Limits) -> anyhow::Result<()> {
    for d in disks {
        disk(qmp, d.index, l).await?;
    }
    Ok(())
}

/// Whether a start must hold the guest (`-S`) until the limits are in place.
pub fn hold_at_start(l: &Limits) -> bool {
    !l.is_empty()
}
