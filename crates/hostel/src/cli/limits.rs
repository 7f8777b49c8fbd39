//! `hostel limits VM` and `hostel default-limits [OWNER]`: resource limits (CPU weight
//! and cap, disk requests and bandwidth, network rate) of one VM, and the defaults an
//! owner's VMs (or everybody's) get where they set none of their own.

use super::output::{self, Column, Format};
use super::parse::{limit_count, limit_rate, Limit};
use crate::client::{vm_path, Api};
use anyhow::Result;
use clap::{Args, Subcommand};
use hostel_api::agent::endpoints::encode_segment;
use hostel_api::public::*;

#[derive(Subcommand)]
pub enum Cmd {
    /// Show a VM's resource limits, or change them (admins): CPU weight and cap, disk
    /// requests and bandwidth, network rate. Only the limits named change; `none`
    /// removes one, `--clear` all. A running VM gets them at once. Where it has none,
    /// its owner's defaults hold it (`hostel default-limits`).
    Limits {
        name: String,
        #[command(flatten)]
        set: LimitFlags,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Default resource limits: what an owner's VMs (`user:NAME`, `group:NAME`) or
    /// everybody's (`default`) get where they set none of their own. Without OWNER: all
    /// that are set (admins). With flags: change them (admins); only those named change,
    /// and the owner's running VMs get them at once.
    DefaultLimits {
        owner: Option<String>,
        #[command(flatten)]
        set: LimitFlags,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

/// The limits a command may change.
#[derive(Args)]
pub struct LimitFlags {
    /// Share of contended CPU, 1 to 10,000 (a VM without one weighs 100).
    #[arg(long, value_name = "N|none", value_parser = limit_count)]
    cpu_weight: Option<Limit>,
    /// The most CPU it may use, in percent of one CPU (50: half; 200: two).
    #[arg(long, value_name = "PERCENT|none", value_parser = limit_count)]
    cpu_max: Option<Limit>,
    /// Read and write requests per second, each disk.
    #[arg(long, value_name = "N|none", value_parser = limit_count)]
    disk_iops: Option<Limit>,
    /// Bytes per second read and written, each disk (512K, 4M, 1G).
    #[arg(long, value_name = "RATE|none", value_parser = limit_rate)]
    disk_bps: Option<Limit>,
    /// Megabits per second each way, each NIC.
    #[arg(long, value_name = "MBIT|none", value_parser = limit_count)]
    net_mbps: Option<Limit>,
    /// Remove every limit (before applying those named).
    #[arg(long)]
    clear: bool,
}

impl LimitFlags {
    /// `old` with the changes named; none named: nothing to change.
    fn apply(&self, old: &Limits) -> Option<Limits> {
        let changes = [
            &self.cpu_weight,
            &self.cpu_max,
            &self.disk_iops,
            &self.disk_bps,
            &self.net_mbps,
        ];
        if !self.clear && changes.iter().all(|c| c.is_none()) {
            return None;
        }
        let l = if self.clear {
            Limits::default()
        } else {
            old.clone()
        };
        let set = |v: &Option<Limit>, old: Option<u64>| match v {
            None => old,
            Some(Limit::None) => None,
            Some(Limit::Set(n)) => Some(*n),
        };
        let small = |n: Option<u64>| n.map(|n| n.min(u32::MAX as u64) as u32);
        Some(Limits {
            cpu_weight: small(set(&self.cpu_weight, l.cpu_weight.map(u64::from))),
            cpu_max_percent: small(set(&self.cpu_max, l.cpu_max_percent.map(u64::from))),
            disk_iops: set(&self.disk_iops, l.disk_iops),
            disk_bps: set(&self.disk_bps, l.disk_bps),
            net_mbps: small(set(&self.net_mbps, l.net_mbps.map(u64::from))),
        })
    }
}

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    match cmd {
        Cmd::Limits { name, set, output } => {
            let path = format!("{}/limits", vm_path(&name));
            let vm: Vm = api.get(&vm_path(&name)).await?;
            let vm = match set.apply(&vm.limits) {
                Some(l) => api.put::<_, Vm>(&path, &l).await?,
                None => vm,
            };
            let both = serde_json::json!({"limits": vm.limits, "in_force": vm.limits_in_force});
            output::show(output, &both, |_| {
                print_limits(&vm.limits_in_force, Some(&vm.limits))
            })
        }
        Cmd::DefaultLimits {
            owner: None,
            output,
            ..
        } => {
            let all: Vec<DefaultLimits> = api.get("/api/v1/default-limits").await?;
            output::list(output, &all, COLUMNS)
        }
        Cmd::DefaultLimits {
            owner: Some(owner),
            set,
            output,
        } => {
            let path = format!("/api/v1/default-limits/{}", encode_segment(&owner));
            let d: DefaultLimits = api.get(&path).await?;
            let d = match set.apply(&d.limits) {
                Some(l) => api.put::<_, DefaultLimits>(&path, &l).await?,
                None => d,
            };
            output::show(output, &d, |d| {
                print_limits(&d.in_force, Some(&d.limits));
                if d.owner != "default" && d.in_force != d.limits {
                    println!("(default): everybody's, from `hostel default-limits default`");
                }
                if !d.applied_to.is_empty() {
                    println!("given at once to: {}", d.applied_to.join(", "));
                }
                for n in &d.not_applied {
                    println!("not given yet (at its next start): {n}");
                }
            })
        }
    }
}

fn num(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

const COLUMNS: &[Column<DefaultLimits>] = &[
    ("OWNER", |d| d.owner.clone()),
    ("CPU WEIGHT", |d| num(d.limits.cpu_weight.map(u64::from))),
    ("CPU MAX %", |d| {
        num(d.limits.cpu_max_percent.map(u64::from))
    }),
    ("DISK IOPS", |d| num(d.limits.disk_iops)),
    ("DISK RATE", |d| {
        d.limits
            .disk_bps
            .map(|b| format!("{}/s", output::bytes(b as f64)))
            .unwrap_or_else(|| "-".into())
    }),
    ("NET MBIT/S", |d| num(d.limits.net_mbps.map(u64::from))),
];

/// Limits in force, one a line; each not from `own` is marked `(default)`.
fn print_limits(l: &Limits, own: Option<&Limits>) {
    if l.is_empty() {
        println!("no limits");
        return;
    }
    let mark = |set_here: bool, shown: bool| {
        if shown && own.is_some() && !set_here {
            " (default)"
        } else {
            ""
        }
    };
    let own = own.cloned().unwrap_or_default();
    let line = |label: &str, v: Option<String>, here: bool| {
        let shown = v.is_some();
        println!(
            "{label:<14} {}{}",
            v.unwrap_or_else(|| "none".into()),
            mark(here, shown)
        );
    };
    line(
        "cpu weight:",
        l.cpu_weight.map(|w| w.to_string()),
        own.cpu_weight.is_some(),
    );
    line(
        "cpu max:",
        l.cpu_max_percent.map(|p| format!("{p}% of one CPU")),
        own.cpu_max_percent.is_some(),
    );
    line(
        "disk requests:",
        l.disk_iops.map(|n| format!("{n}/s each disk")),
        own.disk_iops.is_some(),
    );
    line(
        "disk rate:",
        l.disk_bps
            .map(|b| format!("{}/s each disk", output::bytes(b as f64))),
        own.disk_bps.is_some(),
    );
    line(
        "network:",
        l.net_mbps.map(|m| format!("{m} Mbit/s each way, each NIC")),
        own.net_mbps.is_some(),
    );
}
