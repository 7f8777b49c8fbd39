//! Backups (`bench/run --only backups`): a running VM's 1 GiB disk holding 512 MiB of
//! data, backed up whole against `qemu-img convert` of the same disk to a qcow2 (what a
//! stopped-VM copy costs), then 32 MiB changed and backed up incrementally against the
//! full backup. The data is written with qemu-io while the VM is stopped (the disk's
//! dirty bitmap records those writes as it records the guest's).

use crate::daemon::{run, timed, Daemon};
use crate::Row;
use anyhow::{Context, Result};
use std::process::Command;

/// Writes `mib` MiB of byte `pattern` at `offset_mib` into the stopped VM's disk.
fn fill(disk: &str, pattern: u8, offset_mib: u64, mib: u64) -> Result<()> {
    run(Command::new("qemu-io").args([
        "-f",
        "qcow2",
        "-c",
        &format!("write -P {pattern} {offset_mib}M {mib}M"),
        disk,
    ]))
}

fn backup(d: &Daemon) -> Result<(f64, u64)> {
    let t = timed(|| d.cli(&["backup", "create", "bk"]).map(|_| ()))?;
    let list: serde_json::Value =
        serde_json::from_str(&d.cli(&["backup", "list", "bk", "-o", "json"])?)?;
    let bytes = list[0]["size_bytes"].as_u64().context("a backup's size")?;
    Ok((t, bytes))
}

fn rate(bytes: u64, secs: f64) -> String {
    format!("{:.0} MiB/s", bytes as f64 / secs / (1 << 20) as f64)
}

pub(crate) fn rows(d: &Daemon) -> Result<Vec<Row>> {
    let target = d.dir.join("backups");
    d.cli(&["backup-target", "add", "bench", target.to_str().unwrap()])?;
    d.cli(&[
        "create",
        "bk",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--disk",
        "1G",
        "--no-network",
        "--no-start",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&d.cli(&["describe", "bk", "-o", "json"])?)?;
    let disk = v["disks"][0]["path"]
        .as_str()
        .context("the VM's disk")?
        .to_string();
    fill(&disk, 0x5a, 0, 512)?;

    // The peer: a whole copy of the same disk by qemu-img (to a qcow2, as backups are).
    let copy = d.dir.join("convert.qcow2");
    let convert = timed(|| {
        run(Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "qcow2", &disk])
            .arg(&copy))
    })?;
    let copy_bytes = std::fs::metadata(&copy)?.len();
    std::fs::remove_file(&copy)?;

    d.cli(&["start", "bk"])?;
    let (full, full_bytes) = backup(d)?;
    d.cli(&["destroy", "bk"])?;
    fill(&disk, 0x33, 256, 32)?;
    d.cli(&["start", "bk"])?;
    let (incr, incr_bytes) = backup(d)?;
    d.cli(&["destroy", "bk"])?;
    let mib = |b: u64| b >> 20;
    Ok(vec![
        Row {
            what: "backup, full: a running VM's 1 GiB disk holding 512 MiB".into(),
            hostel: format!(
                "{full:.2} s, {} ({} MiB written, checksummed)",
                rate(full_bytes, full),
                mib(full_bytes)
            ),
            peer: format!(
                "{convert:.2} s, {} (qemu-img convert of the same disk, {} MiB)",
                rate(copy_bytes, convert),
                mib(copy_bytes)
            ),
            ratio: format!("{:.2}×", full / convert),
            budget: "".into(),
        },
        Row {
            what: "backup, incremental: 32 MiB changed since the full one".into(),
            hostel: format!("{incr:.2} s, {} MiB written", mib(incr_bytes)),
            peer: format!("{full:.2} s, {} MiB (the full backup)", mib(full_bytes)),
            ratio: format!("{:.2}× the time", incr / full),
            budget: "".into(),
        },
    ])
}
