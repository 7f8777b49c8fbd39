//! A VM's disks (`hostel disk`) and their snapshots (`hostel snapshot`).

use super::output::{self, Column, Format};
use super::parse;
use crate::client::{vm_path, Api};
use anyhow::Result;
use clap::Subcommand;
use hostel_api::public::*;
use hostel_model::format_mib;

#[derive(Subcommand)]
pub enum Cmd {
    /// A VM's disks.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Snapshots of a VM's disks (and optionally memory).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Subcommand)]
pub enum DiskCmd {
    /// Add a disk, blank or an overlay of a disk image (hot-plugged when running).
    Add {
        vm: String,
        #[arg(long, value_parser = parse::size_mib)]
        size: Option<u64>,
        #[arg(long)]
        image: Option<String>,
        /// The storage pool (default: the host's `default` pool).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Remove a disk by index, and its file (hot-unplugged when running).
    Remove { vm: String, disk: u32 },
    /// Grow a disk (online when running).
    Resize {
        vm: String,
        disk: u32,
        #[arg(value_parser = parse::size_mib)]
        size: u64,
    },
    List {
        vm: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot all disks at one instant (crash-consistent while running).
    Create {
        vm: String,
        name: Option<String>,
        /// Include the memory state (running VMs); revert then resumes there.
        #[arg(long)]
        memory: bool,
    },
    List {
        vm: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Bring the disks back to a snapshot (the VM must be stopped).
    Revert {
        vm: String,
        name: String,
    },
    Delete {
        vm: String,
        name: String,
    },
}

const DISK_COLUMNS: &[Column<DiskView>] = &[
    ("INDEX", |d| d.index.to_string()),
    ("SIZE", |d| format_mib(d.size_mib)),
    ("FORMAT", |d| d.format.clone()),
    ("IMAGE", |d| d.backing_image.clone().unwrap_or_default()),
    ("PATH", |d| d.path.clone()),
];

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    match cmd {
        Cmd::Disk(cmd) => disk(&api, cmd).await,
        Cmd::Snapshot(cmd) => snapshot(&api, cmd).await,
    }
}

async fn disk(api: &Api, cmd: DiskCmd) -> Result<()> {
    match cmd {
        DiskCmd::Add {
            vm,
            size,
            image,
            pool,
        } => {
            let req = AddDiskRequest {
                size_mib: size,
                image,
                pool,
            };
            let d: DiskView = api.post(&format!("{}/disks", vm_path(&vm)), &req).await?;
            output::list(Format::Table, &[d], DISK_COLUMNS)
        }
        DiskCmd::Remove { vm, disk } => {
            let _: serde_json::Value = api
                .post(
                    &format!("{}/disks/remove", vm_path(&vm)),
                    &RemoveDiskRequest { disk },
                )
                .await?;
            println!("removed disk {disk} of {vm}");
            Ok(())
        }
        DiskCmd::Resize { vm, disk, size } => {
            let req = ResizeDiskRequest {
                disk,
                size_mib: size,
            };
            let d: DiskView = api
                .post(&format!("{}/disks/resize", vm_path(&vm)), &req)
                .await?;
            output::list(Format::Table, &[d], DISK_COLUMNS)
        }
        DiskCmd::List { vm, output } => {
            let disks: Vec<DiskView> = api.get(&format!("{}/disks", vm_path(&vm))).await?;
            output::list(output, &disks, DISK_COLUMNS)
        }
    }
}

async fn snapshot(api: &Api, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create { vm, name, memory } => {
            let snap: Snapshot = api
                .post(
                    &format!("{}/snapshots", vm_path(&vm)),
                    &CreateSnapshotRequest { name, memory },
                )
                .await?;
            println!("created snapshot {} of {vm}", snap.name);
        }
        SnapshotCmd::List { vm, output } => {
            let snaps: Vec<Snapshot> = api.get(&format!("{}/snapshots", vm_path(&vm))).await?;
            output::show(output, &snaps, |snaps| {
                for s in snaps {
                    let mem = if s.with_memory { " (with memory)" } else { "" };
                    println!("{}  {}{mem}", s.name, s.created_at);
                }
            })?;
        }
        SnapshotCmd::Revert { vm, name } => {
            let v: Vm = api
                .post(
                    &format!("{}/snapshots/revert", vm_path(&vm)),
                    &SnapshotName { name: name.clone() },
                )
                .await?;
            println!("reverted {vm} to {name}; it is {}", v.state);
        }
        SnapshotCmd::Delete { vm, name } => {
            let _: serde_json::Value = api
                .post(
                    &format!("{}/snapshots/delete", vm_path(&vm)),
                    &SnapshotName { name: name.clone() },
                )
                .await?;
            println!("deleted snapshot {name} of {vm}");
        }
    }
    Ok(())
}
