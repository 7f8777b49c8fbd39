//! VMs: list, create, the life-cycle actions, resizing, describe, save and restore,
//! and leases.

use super::files::absolute;
use super::output::{self, Column, DescribeFormat, Format};
use super::parse;
use crate::client::{vm_path, Api};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hostel_api::public::*;
use hostel_model::{format_mib, Policy, VmState};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// List the VMs you may operate (all of them for admins), in name order.
    List {
        /// Only the VMs on this host.
        #[arg(long)]
        host: Option<String>,
        /// Only the VMs in this state (running, stopped, paused, saved, crashed, ...).
        #[arg(long, value_parser = parse::vm_state)]
        state: Option<VmState>,
        /// Only the VMs whose name or an IP address holds this text.
        #[arg(long)]
        search: Option<String>,
        /// Only the VMs of this owner (`user:NAME` or `group:NAME`).
        #[arg(long)]
        owner: Option<String>,
        /// How many VMs each request asks for (1 to 1000); the list is whole either way.
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Create a VM from an image, and start it unless --no-start.
    Create(Box<CreateArgs>),
    /// Start a stopped VM.
    Start { name: String },
    /// Reboot cleanly (ACPI power-off, then start again).
    Reboot { name: String },
    /// Pause a VM's vCPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Unpause { name: String },
    /// Stop a VM at once, like pulling the plug.
    Destroy { name: String },
    /// Delete a stopped VM and its disks.
    Delete {
        name: String,
        /// Keep the disk files (their paths are printed); admins only, as no quota
        /// charges files no VM owns.
        #[arg(long)]
        keep_disks: bool,
    },
    /// Ask the guest to power off (ACPI).
    Shutdown {
        name: String,
        /// Seconds, or a duration like 90s, 5m or 1h.
        #[arg(long, default_value_t = 60, value_parser = parse::secs)]
        timeout: u64,
        /// Stop it hard if it has not powered off by the timeout.
        #[arg(long)]
        force: bool,
    },
    /// Set a VM's memory (balloon), up to its max memory.
    MemSet {
        name: String,
        #[arg(value_parser = parse::size_mib)]
        size: u64,
    },
    /// Set a VM's vCPU count (hotplug), up to its max vCPUs.
    VcpuSet { name: String, vcpus: u32 },
    /// Show a VM's latest use (CPU, memory, disk and network) and a summary of the last
    /// hour (or day); `-o json` gives every point.
    Stats {
        name: String,
        /// The last day, a point per minute, instead of the last hour.
        #[arg(long)]
        day: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show a VM: definition, live state, host, accelerator, QEMU command line.
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: DescribeFormat,
    },
    /// Save a VM's memory state to FILE (on its host) and stop it.
    Save { name: String, file: PathBuf },
    /// Resume a VM from a file written by `save`.
    Restore { file: PathBuf },
    /// Extend a VM's lease (from now).
    Renew {
        name: String,
        #[arg(long)]
        days: Option<u32>,
        /// An exact end, RFC 3339 (admins).
        #[arg(long)]
        until: Option<String>,
    },
    /// Set a stopped VM's CPU model: `host` (all its host offers; it then moves live only
    /// between hosts with the same CPU and QEMU) or a QEMU model the host runs in full
    /// (`hostel host show HOST` lists them).
    CpuModel { name: String, model: String },
    /// Move a running VM to another host while it runs (admins), with a progress bar;
    /// prints the downtime it achieved.
    Migrate {
        name: String,
        /// The host to move to (default: placement's choice among the others).
        #[arg(long)]
        to: Option<String>,
        /// The most the guest may be paused for at the switch-over, in ms (default 300).
        #[arg(long)]
        max_downtime: Option<u64>,
        /// A bandwidth cap for the memory stream, in MiB/s.
        #[arg(long)]
        bandwidth: Option<u64>,
        /// When the guest writes memory faster than it can be sent, pause it to finish.
        #[arg(long)]
        force_complete: bool,
        /// Send memory and disks as plain TCP, not TLS (a network trusted like the hosts).
        #[arg(long)]
        unencrypted: bool,
        /// Never finish by post-copy (otherwise the last step, when only memory moves,
        /// for a guest that does not converge).
        #[arg(long)]
        no_postcopy: bool,
        /// Print the migration's task id and return at once (`hostel task show|cancel`).
        #[arg(long)]
        detach: bool,
        /// Move a VM that does not run: its disks are copied to the other host.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    /// The image to boot (leave out with --cdrom or --kernel).
    #[arg(long)]
    image: Option<String>,
    #[arg(long, default_value = "512M", value_parser = parse::size_mib)]
    memory: u64,
    /// What mem-set may grow the VM to (default: --memory).
    #[arg(long, value_parser = parse::size_mib)]
    max_memory: Option<u64>,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// What vcpu-set may grow the VM to (default: --vcpus).
    #[arg(long)]
    max_vcpus: Option<u32>,
    /// Disk size: an overlay of a disk image, or a blank disk for a kernel image.
    #[arg(long, value_parser = parse::size_mib)]
    disk: Option<u64>,
    #[arg(long)]
    no_start: bool,
    #[arg(long, default_value = "destroy", value_parser = parse::policy)]
    on_poweroff: Policy,
    #[arg(long, default_value = "restart", value_parser = parse::policy)]
    on_reboot: Policy,
    #[arg(long, default_value = "destroy", value_parser = parse::policy)]
    on_crash: Policy,
    /// A NIC on this network (repeatable). Without it: one NIC on `default`.
    #[arg(long = "network")]
    networks: Vec<String>,
    /// The IP of the NIC given by the --network in the same position.
    #[arg(long = "ip")]
    ips: Vec<String>,
    /// The MAC of the NIC given by the --network in the same position.
    #[arg(long = "mac")]
    macs: Vec<String>,
    /// No NIC at all.
    #[arg(long, conflicts_with = "networks")]
    no_network: bool,
    /// bios (SeaBIOS) or uefi (OVMF).
    #[arg(long, default_value = "bios", value_parser = parse::firmware)]
    firmware: Firmware,
    /// Boot and install from an ISO: an image's name or a file on the host.
    #[arg(long)]
    cdrom: Option<String>,
    /// Boot this kernel directly (a file on the host), like a Xen `kernel=`.
    #[arg(long)]
    kernel: Option<String>,
    #[arg(long)]
    initrd: Option<String>,
    #[arg(long)]
    cmdline: Option<String>,
    /// An SSH public key for the guest, or a file holding keys (repeatable).
    #[arg(long = "ssh-key")]
    ssh_keys: Vec<String>,
    /// A file whose first line is the guest's root password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Attach no first-boot (NoCloud) seed.
    #[arg(long)]
    no_seed: bool,
    /// The storage pool for the VM's disk.
    #[arg(long)]
    pool: Option<String>,
    /// A lease in days (default: the cluster's).
    #[arg(long)]
    lease_days: Option<u32>,
    /// Make the VM a group's (`group:NAME`, a group you are in); admins may name any
    /// `user:NAME` too. Default: yours.
    #[arg(long)]
    owner: Option<String>,
    /// Only a host with this tag (`hostel host set --tags`); repeat for several.
    #[arg(long = "host-tag")]
    host_tags: Vec<String>,
    /// An anti-affinity group: the VM goes to no host with a VM of the same group.
    #[arg(long)]
    anti_affinity: Option<String>,
    /// Also print how the host was chosen: every host considered and its verdict.
    #[arg(long)]
    explain: bool,
    /// The guest's CPU: `host`, or a QEMU model the host runs in full (default: `host`
    /// on one host; the cluster baseline, Westmere-v1, once there are more).
    #[arg(long)]
    cpu_model: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
}

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    // The actions that answer with the VM, shown as a one-row table.
    let action = |name: &str, verb: &str| format!("{}/{verb}", vm_path(name));
    let empty = serde_json::json!({});
    let vm: Vm = match cmd {
        Cmd::List {
            host,
            state,
            search,
            owner,
            page_size,
            output,
        } => {
            let filter = [("host", host), ("q", search), ("owner", owner)];
            return list(&api, filter, state, page_size, output).await;
        }
        Cmd::Create(args) => return create(&api, *args).await,
        Cmd::Start { name } => api.post(&action(&name, "start"), &empty).await?,
        Cmd::Reboot { name } => api.post(&action(&name, "reboot"), &empty).await?,
        Cmd::Pause { name } => api.post(&action(&name, "pause"), &empty).await?,
        Cmd::Unpause { name } => api.post(&action(&name, "unpause"), &empty).await?,
        Cmd::Destroy { name } => api.post(&action(&name, "destroy"), &empty).await?,
        Cmd::Delete { name, keep_disks } => {
            let kept: Vec<String> = api
                .delete_json(&format!("{}?keep_disks={keep_disks}", vm_path(&name)))
                .await?;
            println!("deleted {name}");
            for p in kept {
                println!("kept disk {p}");
            }
            return Ok(());
        }
        Cmd::Shutdown {
            name,
            timeout,
            force,
        } => {
            let req = ShutdownRequest {
                timeout_secs: timeout,
                force,
            };
            api.post(&action(&name, "shutdown"), &req).await?
        }
        Cmd::MemSet { name, size } => {
            let req = MemSetRequest { memory_mib: size };
            api.post(&action(&name, "memory"), &req).await?
        }
        Cmd::VcpuSet { name, vcpus } => {
            api.post(&action(&name, "vcpus"), &VcpuSetRequest { vcpus })
                .await?
        }
        Cmd::Stats { name, day, output } => {
            let range = if day { "?range=day" } else { "" };
            let stats: VmStats = api
                .get(&format!("{}{range}", action(&name, "stats")))
                .await?;
            return output::show(output, &stats, |s| print_stats(&name, s));
        }
        Cmd::Describe { name, output } => {
            let vm: Vm = api.get(&vm_path(&name)).await?;
            return output::describe(output, &vm);
        }
        Cmd::Save { name, file } => {
            let path = absolute(&file)?;
            let req = SaveRequest { path: path.clone() };
            let vm: Vm = api.post(&action(&name, "save"), &req).await?;
            println!(
                "saved {} to {path}; `hostel restore {path}` resumes it",
                vm.name
            );
            return Ok(());
        }
        Cmd::Restore { file } => {
            let req = RestoreRequest {
                path: absolute(&file)?,
            };
            api.post("/api/v1/restore", &req).await?
        }
        Cmd::Migrate {
            name,
            to,
            max_downtime,
            bandwidth,
            force_complete,
            unencrypted,
            no_postcopy,
            detach,
            offline,
        } => {
            let req = MigrateRequest {
                to,
                max_downtime_ms: max_downtime,
                bandwidth_mibps: bandwidth,
                force_complete,
                unencrypted,
                no_postcopy,
                offline,
            };
            let t: Task = api.post(&action(&name, "migrate"), &req).await?;
            if detach {
                println!("{}", t.id);
                return Ok(());
            }
            super::images::wait_task(&api, t).await?;
            return Ok(());
        }
        Cmd::CpuModel { name, model } => {
            let v: Vm = api
                .post(
                    &action(&name, "cpu-model"),
                    &SetCpuModelRequest { cpu_model: model },
                )
                .await?;
            println!(
                "{}: CPU model {}, machine type {} (from its next start)",
                v.name, v.qemu.cpu_model, v.qemu.machine
            );
            return Ok(());
        }
        Cmd::Renew { name, days, until } => {
            let v: Vm = api
                .post(&action(&name, "renew"), &RenewRequest { days, until })
                .await?;
            println!(
                "{}: lease ends {}",
                v.name,
                v.lease_expires_at.unwrap_or_else(|| "never".into())
            );
            return Ok(());
        }
    };
    show_vm(&vm, Format::Table)
}

async fn list(
    api: &Api,
    filter: [(&str, Option<String>); 3],
    state: Option<VmState>,
    page_size: u32,
    output: Format,
) -> Result<()> {
    let mut url = reqwest::Url::parse("http://hostel/api/v1/vms")?;
    let state = state.map(|s| s.as_str().to_string());
    let limit = Some(page_size.to_string());
    let rest = [("state", state), ("limit", limit)];
    for (k, v) in filter.iter().chain(rest.iter()) {
        if let Some(v) = v {
            url.query_pairs_mut().append_pair(k, v);
        }
    }
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let mut vms: Vec<VmSummary> = Vec::new();
    api.get_pages(&path, |page| {
        vms.extend(page);
        Ok(())
    })
    .await?;
    output::show(output, &vms, |vms| vm_table(vms))
}

const VM_COLUMNS: &[Column<VmSummary>] = &[
    ("NAME", |v| v.name.clone()),
    ("STATE", |v| v.state.to_string()),
    ("MEMORY", |v| {
        format!(
            "{}/{}",
            format_mib(v.memory_mib),
            format_mib(v.max_memory_mib)
        )
    }),
    ("VCPUS", |v| format!("{}/{}", v.vcpus, v.max_vcpus)),
    ("HOST", |v| v.host.clone().unwrap_or_default()),
    ("IMAGE", |v| v.image.clone().unwrap_or_default()),
    ("OWNER", |v| v.owner.clone().unwrap_or_default()),
    ("LEASE", |v| {
        v.lease_expires_at
            .as_deref()
            .map(|l| l.get(..16).unwrap_or(l).replace('T', " "))
            .unwrap_or_default()
    }),
    ("PID", |v| v.pid.map(|p| p.to_string()).unwrap_or_default()),
    ("CONFIRMED", |v| {
        let s = v.state_age_seconds;
        let age = match s {
            0 => return "live".into(),
            1..60 => format!("{s}s ago"),
            60..3600 => format!("{}m ago", s / 60),
            3600..86400 => format!("{}h ago", s / 3600),
            _ => format!("{}d ago", s / 86400),
        };
        if v.host_stale {
            format!("{age} (stale host)")
        } else {
            age
        }
    }),
];

/// The VMs' table, then a warning for each lease that ends soon.
fn vm_table(vms: &[VmSummary]) {
    output::print_table(vms, VM_COLUMNS);
    for v in vms {
        if let Some(w) = &v.lease_warning {
            println!("warning: {}: {w}", v.name);
        }
    }
}

const STATS_COLUMNS: &[Column<VmStatsPoint>] = &[
    ("AT", |p| p.at.replace('T', " ")),
    ("CPU", |p| format!("{:.1}%", p.cpu_percent)),
    ("MEMORY", |p| output::bytes(p.memory_bytes as f64)),
    ("DISK READ", |p| rate(p.disk_read_bps as f64)),
    ("DISK WRITE", |p| rate(p.disk_write_bps as f64)),
    ("NET RX", |p| rate(p.net_rx_bps as f64)),
    ("NET TX", |p| rate(p.net_tx_bps as f64)),
];

fn rate(bps: f64) -> String {
    format!("{}/s", output::bytes(bps))
}

/// A quantity of a point, and how it is shown.
type Measure = fn(&VmStatsPoint) -> f64;
type Shown = fn(f64) -> String;

/// What `hostel stats` sums up over all the points: average and peak of each.
const STATS_SUMMARY: &[(&str, Measure, Shown)] = &[
    ("cpu", |p| p.cpu_percent, |v| format!("{v:.1}%")),
    ("memory", |p| p.memory_bytes as f64, output::bytes),
    ("disk read", |p| p.disk_read_bps as f64, rate),
    ("disk write", |p| p.disk_write_bps as f64, rate),
    ("net rx", |p| p.net_rx_bps as f64, rate),
    ("net tx", |p| p.net_tx_bps as f64, rate),
];

/// The latest point as a table, then the averages and peaks of all the points.
fn print_stats(name: &str, s: &VmStats) {
    let Some(last) = s.points.last() else {
        println!(
            "no usage of {name} yet: the controller samples running VMs every {} s, and \
             the first point comes one interval after it first sees the VM running",
            s.interval_seconds
        );
        return;
    };
    output::print_table(std::slice::from_ref(last), STATS_COLUMNS);
    let n = s.points.len();
    println!(
        "\n{n} point{} from {} to {} (one every {} s):",
        if n == 1 { "" } else { "s" },
        s.points[0].at.replace('T', " "),
        last.at.replace('T', " "),
        s.interval_seconds
    );
    for (what, measure, shown) in STATS_SUMMARY {
        let avg = s.points.iter().map(measure).sum::<f64>() / n as f64;
        let max = s.points.iter().map(measure).fold(0.0, f64::max);
        println!("  {what:<10}  avg {}, max {}", shown(avg), shown(max));
    }
}

fn show_vm(v: &Vm, format: Format) -> Result<()> {
    output::show(format, v, |v| vm_table(&[VmSummary::from(v)]))
}

async fn create(api: &Api, a: CreateArgs) -> Result<()> {
    let mut keys = Vec::new();
    for k in a.ssh_keys {
        let p = std::path::Path::new(&k);
        if !k.starts_with("ssh-")
            && !k.starts_with("ecdsa-")
            && !k.starts_with("sk-")
            && p.is_file()
        {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--ssh-key: reading {k}"))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        } else {
            keys.push(k);
        }
    }
    let password = match a.password_file {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("--password-file: reading {}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        None => None,
    };
    let cdrom = match a.cdrom {
        Some(c) if c.contains('/') => Some(absolute(std::path::Path::new(&c))?),
        other => other,
    };
    let (networks, ips, macs) = (a.networks, a.ips, a.macs);
    if ips.len() > networks.len() || macs.len() > networks.len() {
        bail!("each --ip and --mac belongs to a --network before it: give one --network per NIC");
    }
    let nics = if a.no_network {
        Some(Vec::new())
    } else if networks.is_empty() {
        None
    } else {
        Some(
            networks
                .iter()
                .enumerate()
                .map(|(i, n)| NicRequest {
                    network: n.clone(),
                    ip: ips.get(i).cloned(),
                    mac: macs.get(i).cloned(),
                })
                .collect(),
        )
    };
    let req = CreateVmRequest {
        nics,
        name: a.name,
        image: a.image,
        memory_mib: a.memory,
        max_memory_mib: a.max_memory,
        vcpus: a.vcpus,
        max_vcpus: a.max_vcpus,
        disk_mib: a.disk,
        start: !a.no_start,
        on_poweroff: a.on_poweroff,
        on_reboot: a.on_reboot,
        on_crash: a.on_crash,
        firmware: a.firmware,
        cdrom,
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        ssh_keys: keys,
        password,
        seed: if a.no_seed { Some(false) } else { None },
        pool: a.pool,
        lease_days: a.lease_days,
        owner: a.owner,
        host_tags: a.host_tags,
        anti_affinity: a.anti_affinity,
        cpu_model: a.cpu_model,
        explain: a.explain,
    };
    let vm: Vm = api.post("/api/v1/vms", &req).await?;
    if let Some(p) = vm.placement.as_ref().filter(|_| a.output == Format::Table) {
        // On stderr, so that the VM's row stays the output.
        eprintln!("placed on {}: {}", p.chosen, p.rule);
        for h in &p.hosts {
            eprintln!("  {:<24} {:>8} MiB free  {}", h.host, h.free_mib, h.verdict);
        }
    }
    show_vm(&vm, a.output)
}
