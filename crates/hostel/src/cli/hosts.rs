//! Hosts and the cluster's health: `info`, `dmesg`, `host list|add|remove`, `doctor`.

use super::output::{self, Column, Format};
use crate::client::Api;
use anyhow::{bail, Result};
use clap::Subcommand;
use hostel_api::public::*;
use hostel_model::format_mib;

#[derive(Subcommand)]
pub enum Cmd {
    /// The host(s): CPUs, memory, accelerator, QEMU version, VMs running.
    Info {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The daemon's log tail.
    Dmesg {
        #[arg(long, default_value_t = 50)]
        lines: usize,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Hosts (admins): list them, add one whose agent runs elsewhere, remove an empty one.
    #[command(subcommand)]
    Host(HostCmd),
    /// Check that the database and the hosts' files agree (orphans, missing files).
    Doctor {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Even out the hosts' memory and vCPU load by live migrations (admins): shows the
    /// plan, then applies it and prints each move's outcome.
    Rebalance {
        /// Only show the plan.
        #[arg(long)]
        dry_run: bool,
        /// The least a move must lower the score by (default 0.01).
        #[arg(long)]
        min_gain: Option<f64>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Background tasks (image builds, copies, migrations): show one, or cancel a
    /// migration under way (admins).
    #[command(subcommand)]
    Task(TaskCmd),
}

#[derive(Subcommand)]
pub enum TaskCmd {
    /// A task's state, progress and message.
    Show {
        id: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Stop a migration under way: the VM stays where it was, unless the switch-over
    /// was already done.
    Cancel { id: String },
}

#[derive(Subcommand)]
pub enum HostCmd {
    /// Every host, whether its agent is connected, and what runs on it.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// One host: its state, QEMU, machine types and the CPU models it runs in full.
    Show {
        name: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Add the host whose agent (`hostel agent`) answers at URL (https://ADDRESS:PORT).
    Add {
        url: String,
        /// A recorded host (same name) now at this address: take its record over.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a host that has no VMs, images or pools left.
    Remove { name: String },
    /// Empty a host for maintenance: no new VMs go there, and its running VMs migrate
    /// live to other hosts; prints each VM's outcome.
    Drain {
        name: String,
        /// How many VMs move at once (default 2).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Move VMs that are not running too (those without disks, for now).
        #[arg(long)]
        allow_offline: bool,
    },
    /// Open a drained host to new VMs again.
    Undrain {
        name: String,
        /// Also move back the VMs its drain moved away.
        #[arg(long = "return")]
        return_vms: bool,
    },
    /// Set a host's tags, which `create --host-tag` asks for.
    Set {
        name: String,
        /// The tags, comma-separated, replacing the host's (an empty string: none).
        #[arg(long, value_delimiter = ',', required = true, num_args = 0..)]
        tags: Vec<String>,
    },
}

fn online(h: &HostInfo) -> &str {
    if !h.drain.is_empty() {
        h.drain.as_str()
    } else if h.online {
        "online"
    } else if h.stale {
        "stale"
    } else {
        "offline"
    }
}

/// How long ago a host last reported, as `3m 20s ago`; nothing while it is online.
fn age(h: &HostInfo) -> String {
    if h.online {
        return String::new();
    }
    let s = h.last_seen_age_seconds;
    let text = match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    };
    format!("{text} ago")
}

const HOST_COLUMNS: &[Column<HostInfo>] = &[
    ("NAME", |h| h.name.clone()),
    ("STATE", |h| online(h).into()),
    ("CPUS", |h| h.cpus.to_string()),
    ("MEMORY", |h| format_mib(h.memory_total_mib)),
    ("PROMISED", |h| format_mib(h.memory_vms_mib)),
    ("VMS", |h| h.vms_total.to_string()),
    ("RUNNING", |h| h.vms_running.to_string()),
    ("ACCEL", |h| h.accel.as_str().into()),
    ("LAST SEEN", |h| {
        h.last_seen
            .get(..19)
            .unwrap_or(&h.last_seen)
            .replace('T', " ")
    }),
    ("LAST REPORT", age),
    ("TAGS", |h| h.tags.join(",")),
    ("URL", |h| h.url.clone()),
];

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    match cmd {
        Cmd::Task(TaskCmd::Show { id, output }) => {
            let t: Task = api.get(&format!("/api/v1/tasks/{id}")).await?;
            output::show(output, &t, show_task)
        }
        Cmd::Task(TaskCmd::Cancel { id }) => {
            let t: Task = api
                .post(
                    &format!("/api/v1/tasks/{id}/cancel"),
                    &serde_json::json!({}),
                )
                .await?;
            println!("cancelling {} {} ({})", t.kind, t.target, t.id);
            Ok(())
        }
        Cmd::Rebalance {
            dry_run,
            min_gain,
            output,
        } => {
            let plan: RebalancePlan = api
                .post("/api/v1/rebalance", &RebalanceRequest { dry_run, min_gain })
                .await?;
            output::show(output, &plan, |p| {
                println!(
                    "score {:.3} → {:.3} ({} move(s){})",
                    p.score_before,
                    p.score_after,
                    p.moves.len(),
                    if dry_run { ", not applied" } else { "" }
                );
                for m in &p.moves {
                    println!(
                        "  {}: {} → {} ({})",
                        m.vm,
                        m.from,
                        m.to,
                        format_mib(m.memory_mib)
                    );
                }
            })?;
            match plan.task {
                Some(t) => report_task(&api, t).await,
                None => Ok(()),
            }
        }
        Cmd::Info { output } => {
            let info: Info = api.get("/api/v1/info").await?;
            output::show(output, &info, print_info)
        }
        Cmd::Dmesg { lines, output } => {
            let log: LogLines = api.get(&format!("/api/v1/dmesg?lines={lines}")).await?;
            output::show(output, &log, |log| {
                log.lines.iter().for_each(|l| println!("{l}"))
            })
        }
        Cmd::Doctor { output } => {
            let r: DoctorReport = api.get("/api/v1/doctor").await?;
            output::show(output, &r, |r| {
                r.checked.iter().for_each(|c| println!("checked: {c}"));
                r.problems.iter().for_each(|p| println!("problem: {p}"));
                if r.problems.is_empty() {
                    println!("no problems found");
                }
            })?;
            if !r.problems.is_empty() {
                bail!("{} problem(s) found", r.problems.len());
            }
            Ok(())
        }
        Cmd::Host(HostCmd::List { output }) => {
            let hosts: Vec<HostInfo> = api.get("/api/v1/hosts").await?;
            output::list(output, &hosts, HOST_COLUMNS)
        }
        Cmd::Host(HostCmd::Show { name, output }) => {
            let hosts: Vec<HostInfo> = api.get("/api/v1/hosts").await?;
            let Some(h) = hosts.into_iter().find(|h| h.name == name) else {
                bail!("no host is named {name:?}: `hostel host list` lists the hosts");
            };
            output::show(output, &h, |h| {
                let rows = [
                    ("name", h.name.clone()),
                    ("state", online(h).to_string()),
                    ("url", h.url.clone()),
                    ("cpus", format!("{} ({})", h.cpus, h.cpu_name)),
                    ("memory", format_mib(h.memory_total_mib)),
                    ("promised", format_mib(h.memory_vms_mib)),
                    (
                        "vms",
                        format!("{} ({} running)", h.vms_total, h.vms_running),
                    ),
                    (
                        "accel",
                        format!("{} ({})", h.accel.as_str(), h.accel_reason),
                    ),
                    ("qemu", h.qemu_version.clone()),
                    ("kernel", h.kernel.clone()),
                    ("machine", h.machine.clone()),
                    ("machines", h.machines.join(" ")),
                    ("cpu models", h.cpu_models.join(" ")),
                    (
                        "post-copy",
                        if h.postcopy {
                            "can receive"
                        } else {
                            "cannot receive (no /dev/userfaultfd)"
                        }
                        .into(),
                    ),
                    ("tags", h.tags.join(",")),
                    ("last seen", format!("{} {}", h.last_seen, age(h))),
                ];
                for (k, v) in rows {
                    println!("{k:<11} {v}");
                }
            })
        }
        Cmd::Host(HostCmd::Add { url, replace }) => {
            let h: HostInfo = api
                .post("/api/v1/hosts", &AddHostRequest { url, replace })
                .await?;
            println!(
                "added host {} ({} CPUs, {}, {}), {}",
                h.name,
                h.cpus,
                format_mib(h.memory_total_mib),
                h.accel.as_str(),
                online(&h)
            );
            Ok(())
        }
        Cmd::Host(HostCmd::Set { name, tags }) => {
            let tags: Vec<String> = tags.into_iter().filter(|t| !t.is_empty()).collect();
            let h: HostInfo = api
                .put(
                    &format!(
                        "/api/v1/hosts/{}",
                        hostel_api::agent::endpoints::encode_segment(&name)
                    ),
                    &SetHostRequest { tags },
                )
                .await?;
            println!("host {}: tags {}", h.name, h.tags.join(","));
            Ok(())
        }
        Cmd::Host(HostCmd::Drain {
            name,
            concurrency,
            allow_offline,
        }) => {
            let req = DrainRequest {
                concurrency,
                allow_offline,
            };
            let t: Task = api.post(&host_path(&name, "drain"), &req).await?;
            report_task(&api, t).await
        }
        Cmd::Host(HostCmd::Undrain { name, return_vms }) => {
            let t: Task = api
                .post(&host_path(&name, "undrain"), &UndrainRequest { return_vms })
                .await?;
            report_task(&api, t).await
        }
        Cmd::Host(HostCmd::Remove { name }) => {
            api.delete(&format!("/api/v1/hosts/{name}")).await?;
            println!("removed host {name}");
            Ok(())
        }
    }
}

fn print_info(info: &Info) {
    if info.data_dir.is_empty() {
        println!("hostel {}", info.version);
    } else {
        println!("hostel {}  data dir {}", info.version, info.data_dir);
    }
    for c in &info.controllers {
        println!(
            "controller {} on {} at {}{}{}",
            c.id,
            c.name,
            c.api,
            if c.leader { " (leads)" } else { "" },
            if !c.alive {
                format!(" (stopped, last seen {})", c.last_seen)
            } else if c.id == info.controller {
                " (answered this)".to_string()
            } else {
                String::new()
            }
        );
    }
    if !info.database.is_empty() {
        println!("database {}", info.database);
    }
    for h in &info.hosts {
        println!("host {}", h.name);
        if h.online {
            println!("  state:        online");
        } else {
            println!("  state:        {} (last report {})", online(h), age(h));
        }
        println!("  cpus:         {}", h.cpus);
        println!(
            "  memory:       {} total, {} given to VMs",
            format_mib(h.memory_total_mib),
            format_mib(h.memory_vms_mib)
        );
        println!("  accel:        {} ({})", h.accel.as_str(), h.accel_reason);
        println!("  qemu:         {}", h.qemu_version);
        println!("  kernel:       {}", h.kernel);
        println!("  vms running:  {} of {}", h.vms_running, h.vms_total);
    }
    if let (Some(a), Some(f)) = (&info.ssh_console, &info.ssh_host_key_fingerprint) {
        println!(
            "ssh console:    ssh -p {} VMNAME@HOST (host key {f})",
            a.rsplit(':').next().unwrap_or(a)
        );
    }
}

fn host_path(name: &str, verb: &str) -> String {
    format!(
        "/api/v1/hosts/{}/{verb}",
        hostel_api::agent::endpoints::encode_segment(name)
    )
}

/// Waits for a drain's task and prints each VM's outcome, a line each.
async fn report_task(api: &Api, t: Task) -> Result<()> {
    let mut t = t;
    while t.state == TaskState::Running {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        t = api.get(&format!("/api/v1/tasks/{}", t.id)).await?;
    }
    for line in t.message.split("; ") {
        println!("{line}");
    }
    if t.state == TaskState::Failed {
        bail!("{} of host {}: not every VM moved", t.kind, t.target);
    }
    Ok(())
}

fn show_task(t: &Task) {
    println!(
        "{} {} {}: {:.0}% {}",
        t.id,
        t.kind,
        t.target,
        t.progress * 100.0,
        t.message
    );
    println!("state: {}", t.state.as_str());
    if let Some(e) = &t.error {
        println!("error: {e}");
    }
}
