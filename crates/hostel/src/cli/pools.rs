//! `hostel pool`: the storage pools VM disks live in.

use super::output::{self, opt_mib, Column, DescribeFormat, Format};
use crate::client::Api;
use anyhow::Result;
use clap::Subcommand;
use hostel_api::public::*;

#[derive(Subcommand)]
pub enum Cmd {
    /// Storage pools VM disks live in (dir, btrfs).
    #[command(subcommand)]
    Pool(PoolCmd),
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Record a pool: a directory on a host (for btrfs: on a mounted btrfs filesystem).
    Create {
        name: String,
        #[arg(long, default_value = "dir")]
        driver: String,
        #[arg(long)]
        path: String,
        #[arg(long)]
        host: Option<String>,
        /// Every host reaches PATH as the same storage (NFS, a cluster filesystem): its
        /// VMs run on any host and migrate with their memory only.
        #[arg(long)]
        shared: bool,
    },
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: DescribeFormat,
    },
    /// Forget a pool that holds no disks (its directory stays).
    Delete { name: String },
}

const POOL_COLUMNS: &[Column<Pool>] = &[
    ("NAME", |p| p.name.clone()),
    ("DRIVER", |p| p.driver.clone()),
    ("HOST", |p| p.host.clone()),
    ("SIZE", |p| opt_mib(p.total_bytes)),
    ("USED", |p| opt_mib(p.used_bytes)),
    ("FREE", |p| opt_mib(p.free_bytes)),
    ("DISKS", |p| p.disks.to_string()),
    (
        "SHARED",
        |p| if p.shared { "yes".into() } else { "".into() },
    ),
    ("PATH", |p| p.path.clone()),
];

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    let Cmd::Pool(cmd) = cmd;
    match cmd {
        PoolCmd::Create {
            name,
            driver,
            path,
            host,
            shared,
        } => {
            let req = CreatePoolRequest {
                name,
                driver,
                path,
                host,
                shared,
            };
            let p: Pool = api.post("/api/v1/pools", &req).await?;
            println!(
                "created pool {} ({}, {}): {} free of {}",
                p.name,
                p.driver,
                p.path,
                opt_mib(p.free_bytes),
                opt_mib(p.total_bytes)
            );
            Ok(())
        }
        PoolCmd::List { output } => {
            let pools: Vec<Pool> = api.get("/api/v1/pools").await?;
            output::list(output, &pools, POOL_COLUMNS)
        }
        PoolCmd::Describe { name, output } => {
            let p: Pool = api.get(&format!("/api/v1/pools/{name}")).await?;
            output::describe(output, &p)
        }
        PoolCmd::Delete { name } => {
            api.delete(&format!("/api/v1/pools/{name}")).await?;
            println!("deleted pool {name}");
            Ok(())
        }
    }
}
