//! `hostel import-xen`: a Xen guest brought over from its `xm`/`xl` config file. The
//! controller reads the file, makes the VM and copies its disks in (a task followed here
//! with a progress bar); this prints what it makes and what it cannot carry over.

use super::files::absolute;
use super::images::wait_task;
use crate::client::Api;
use anyhow::{Context, Result};
use clap::Subcommand;
use hostel_api::public::*;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a VM from a Xen guest's config file (/etc/xen/NAME.cfg): its name,
    /// memory, vCPUs, on_* policies, MACs and IPs; its disks (file:, phy:, tap:aio:,
    /// tap:qcow2:) copied into a pool with a progress bar; a PV kernel booted directly,
    /// pygrub guests from their disk. What it cannot carry over is listed by line.
    /// Admins only.
    ImportXen {
        /// The config file.
        file: PathBuf,
        /// Where the guest's disk files (and kernel, ramdisk) are on the host now: each
        /// path in the config is looked for here by its file name.
        #[arg(long, value_name = "DIR")]
        disk_dir: Option<PathBuf>,
        /// The network its NICs join (default: `default`).
        #[arg(long)]
        network: Option<String>,
        /// The VM's name, where the config's is not one Hostel takes.
        #[arg(long)]
        name: Option<String>,
        /// The storage pool the disks go to.
        #[arg(long)]
        pool: Option<String>,
        /// Leave the VM stopped once its disks are in.
        #[arg(long)]
        no_start: bool,
        /// Only say what would be made and what is not carried over.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    match cmd {
        Cmd::ImportXen {
            file,
            disk_dir,
            network,
            name,
            pool,
            no_start,
            dry_run,
        } => {
            let config = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let req = ImportXenRequest {
                config,
                disk_dir: disk_dir.as_deref().map(absolute).transpose()?,
                network,
                name,
                pool,
                start: !no_start,
                dry_run,
            };
            let made: XenImport = api.post("/api/v1/import/xen", &req).await?;
            let verb = if dry_run { "would make" } else { "makes" };
            println!("{}: {verb} VM {}", file.display(), made.vm);
            for p in &made.plan {
                println!("  {p}");
            }
            if !made.not_carried.is_empty() {
                println!("not carried over:");
                for n in &made.not_carried {
                    println!("  {n}");
                }
            }
            match made.task {
                Some(t) => wait_task(&api, t).await,
                None => Ok(()),
            }
        }
    }
}
