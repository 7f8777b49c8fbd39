//! `hostel backup` and `hostel backup-target`: backups of VMs' disks (full, then
//! incremental), where they go, and restoring them.

use super::images::wait_task;
use super::output::{self, Column, DescribeFormat, Format};
use crate::client::Api;
use anyhow::{bail, Result};
use clap::Subcommand;
use hostel_api::agent::endpoints::encode_segment;
use hostel_api::public::*;

#[derive(Subcommand)]
pub enum Cmd {
    /// Backups of VMs' disks: full, then only what changed (incremental), with the VM
    /// running; restored as a new VM or over their VM.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Where backups go: directories on the hosts (NFS, say). Adding and deleting is
    /// for admins.
    #[command(subcommand)]
    BackupTarget(TargetCmd),
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Back a VM up: incremental onto its last backup in the same target, else full.
    Create {
        vm: String,
        /// The backup target (needed when there are several).
        #[arg(long)]
        target: Option<String>,
        /// A full backup even where an incremental one could be taken.
        #[arg(long)]
        full: bool,
    },
    /// Your backups (every one, for admins), newest first.
    List {
        /// Only this VM's.
        vm: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: DescribeFormat,
    },
    /// Restore a backup (or a VM's latest): as a new VM with --as, else over its VM,
    /// which must be stopped.
    Restore {
        /// A backup's name, or a VM's (its latest backup).
        backup: String,
        #[arg(long = "as", value_name = "NEWNAME")]
        as_name: Option<String>,
        /// Start the VM once restored.
        #[arg(long)]
        start: bool,
    },
    /// Delete a backup no later one builds on.
    Delete { name: String },
    /// A VM's backup schedule: with --every, set it (a backup that often, old ones
    /// pruned by the --keep-* rules); --run-now takes the next one now; --off ends it;
    /// else it is shown.
    Schedule {
        vm: String,
        /// hourly, daily, weekly, or a period: 30m, 6h, 2d, 1w.
        #[arg(long, value_parser = parse_every)]
        every: Option<u64>,
        #[arg(long)]
        target: Option<String>,
        /// Keep the newest N.
        #[arg(long)]
        keep_last: Option<u32>,
        /// Keep the newest of each of the last N days that have one.
        #[arg(long)]
        keep_daily: Option<u32>,
        /// Keep the newest of each of the last N weeks that have one.
        #[arg(long)]
        keep_weekly: Option<u32>,
        /// A full backup once the chain since the last full one holds N.
        #[arg(long, default_value_t = 7)]
        full_every: u32,
        #[arg(long, conflicts_with_all = ["every", "run_now"])]
        off: bool,
        #[arg(long)]
        run_now: bool,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: DescribeFormat,
    },
}

/// `hourly`, `daily`, `weekly`, or N followed by m, h, d or w: minutes.
fn parse_every(s: &str) -> Result<u64, String> {
    let minutes = match s {
        "hourly" => Some(60),
        "daily" => Some(1440),
        "weekly" => Some(10080),
        _ => {
            let (n, unit) = s.split_at(s.len().saturating_sub(1));
            let per = match unit {
                "m" => Some(1),
                "h" => Some(60),
                "d" => Some(1440),
                "w" => Some(10080),
                _ => None,
            };
            per.zip(n.parse::<u64>().ok()).map(|(p, n)| p * n)
        }
    };
    minutes.filter(|m| *m > 0).ok_or_else(|| {
        format!("{s:?}: give hourly, daily, weekly, or a period like 30m, 6h, 2d, 1w")
    })
}

#[derive(Subcommand)]
pub enum TargetCmd {
    /// Add a backup target: a directory on the hosts (made if missing).
    Add { name: String, dir: String },
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Forget a target that holds no backups (its directory stays).
    Delete { name: String },
}

const BACKUP_COLUMNS: &[Column<Backup>] = &[
    ("NAME", |b| b.name.clone()),
    ("VM", |b| b.vm.clone()),
    ("KIND", |b| b.kind.clone()),
    ("SIZE", |b| output::bytes(b.size_bytes as f64)),
    ("TARGET", |b| b.target.clone()),
    ("CREATED", |b| b.created_at.clone()),
    ("PARENT", |b| b.parent.clone().unwrap_or_default()),
];

const TARGET_COLUMNS: &[Column<BackupTarget>] = &[
    ("NAME", |t| t.name.clone()),
    ("DIR", |t| t.dir.clone()),
    ("BACKUPS", |t| t.backups.to_string()),
    ("SIZE", |t| output::bytes(t.size_bytes as f64)),
];

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    match cmd {
        Cmd::Backup(BackupCmd::Create { vm, target, full }) => {
            let req = CreateBackupRequest { target, full };
            let path = format!("/api/v1/vms/{}/backups", encode_segment(&vm));
            let t: Task = api.post(&path, &req).await?;
            wait_task(&api, t).await
        }
        Cmd::Backup(BackupCmd::List { vm, output }) => {
            let path = match &vm {
                Some(v) => format!("/api/v1/backups?vm={}", encode_segment(v)),
                None => "/api/v1/backups".into(),
            };
            let backups: Vec<Backup> = api.get(&path).await?;
            output::list(output, &backups, BACKUP_COLUMNS)
        }
        Cmd::Backup(BackupCmd::Describe { name, output }) => {
            let b: Backup = api
                .get(&format!("/api/v1/backups/{}", encode_segment(&name)))
                .await?;
            output::describe(output, &b)
        }
        Cmd::Backup(BackupCmd::Restore {
            backup,
            as_name,
            start,
        }) => {
            let name = match api
                .get::<Backup>(&format!("/api/v1/backups/{}", encode_segment(&backup)))
                .await
            {
                Ok(b) => b.name,
                Err(_) => {
                    let of_vm: Vec<Backup> = api
                        .get(&format!("/api/v1/backups?vm={}", encode_segment(&backup)))
                        .await?;
                    match of_vm.into_iter().next() {
                        Some(b) => b.name,
                        None => bail!(
                            "there is no backup named {backup:?}, nor a VM of that name with \
                             backups: `hostel backup list` shows yours"
                        ),
                    }
                }
            };
            let req = RestoreBackupRequest { as_name, start };
            let path = format!("/api/v1/backups/{}/restore", encode_segment(&name));
            let t: Task = api.post(&path, &req).await?;
            wait_task(&api, t).await
        }
        Cmd::Backup(BackupCmd::Schedule {
            vm,
            every,
            target,
            keep_last,
            keep_daily,
            keep_weekly,
            full_every,
            off,
            run_now,
            output,
        }) => {
            let path = format!("/api/v1/vms/{}/backup-schedule", encode_segment(&vm));
            if off {
                api.delete(&path).await?;
                println!("{vm} has no backup schedule now (its backups stay)");
                return Ok(());
            }
            if let Some(every_minutes) = every {
                let req = BackupSchedule {
                    every_minutes,
                    target,
                    keep_last,
                    keep_daily,
                    keep_weekly,
                    full_every,
                    last_run: None,
                };
                let s: BackupSchedule = api.put(&path, &req).await?;
                if !run_now {
                    return output::describe(output, &s);
                }
            }
            if run_now {
                let t: Task = api
                    .post(&format!("{path}/run"), &serde_json::json!({}))
                    .await?;
                return wait_task(&api, t).await;
            }
            let s: BackupSchedule = api.get(&path).await?;
            output::describe(output, &s)
        }
        Cmd::Backup(BackupCmd::Delete { name }) => {
            api.delete(&format!("/api/v1/backups/{}", encode_segment(&name)))
                .await?;
            println!("deleted backup {name}");
            Ok(())
        }
        Cmd::BackupTarget(TargetCmd::Add { name, dir }) => {
            let dir = super::files::absolute(std::path::Path::new(&dir))?;
            let t: BackupTarget = api
                .post(
                    "/api/v1/backup-targets",
                    &CreateBackupTargetRequest { name, dir },
                )
                .await?;
            println!("added backup target {} ({})", t.name, t.dir);
            Ok(())
        }
        Cmd::BackupTarget(TargetCmd::List { output }) => {
            let targets: Vec<BackupTarget> = api.get("/api/v1/backup-targets").await?;
            output::list(output, &targets, TARGET_COLUMNS)
        }
        Cmd::BackupTarget(TargetCmd::Delete { name }) => {
            api.delete(&format!("/api/v1/backup-targets/{}", encode_segment(&name)))
                .await?;
            println!("deleted backup target {name}");
            Ok(())
        }
    }
}
