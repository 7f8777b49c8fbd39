//! Use, live: `hostel top` (every VM the caller may see, busiest first, redrawn like
//! `virt-top`) and `hostel metrics` (the controller's Prometheus metrics, for admins).

use super::output::{self, Column, Format};
use crate::client::Api;
use anyhow::{bail, Result};
use clap::Subcommand;
use hostel_api::public::*;

#[derive(Subcommand)]
pub enum Cmd {
    /// Every VM you may see with its latest use (CPU, memory, disk and network over
    /// the last sampling interval), busiest first; redrawn every few seconds until
    /// Ctrl-C, like virt-top.
    Top {
        /// Print one frame and end (for scripts); `-o json` implies it.
        #[arg(long)]
        once: bool,
        /// Seconds between frames.
        #[arg(long, default_value_t = 5)]
        interval: u64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The controller's metrics in the Prometheus text format (admins): what
    /// `/metrics` serves to a scraper.
    Metrics,
}

fn rate(bps: u64) -> String {
    format!("{}/s", output::bytes(bps as f64))
}

/// A measure of the VM's last point, or `-` when it has none.
fn last(u: &VmUsage, show: impl Fn(&VmStatsPoint) -> String) -> String {
    u.last.as_ref().map(show).unwrap_or_else(|| "-".into())
}

const TOP_COLUMNS: &[Column<VmUsage>] = &[
    ("NAME", |u| u.name.clone()),
    ("STATE", |u| u.state.as_str().to_string()),
    ("HOST", |u| u.host.clone().unwrap_or_default()),
    ("OWNER", |u| u.owner.clone()),
    ("VCPUS", |u| u.vcpus.to_string()),
    ("CPU", |u| last(u, |p| format!("{:.1}%", p.cpu_percent))),
    ("MEMORY", |u| {
        last(u, |p| output::bytes(p.memory_bytes as f64))
    }),
    ("DISK R", |u| last(u, |p| rate(p.disk_read_bps))),
    ("DISK W", |u| last(u, |p| rate(p.disk_write_bps))),
    ("NET RX", |u| last(u, |p| rate(p.net_rx_bps))),
    ("NET TX", |u| last(u, |p| rate(p.net_tx_bps))),
];

/// One frame: a summary line, then the table.
fn frame(all: &[VmUsage]) {
    let running: Vec<&VmUsage> = all.iter().filter(|u| u.state.has_process()).collect();
    let cpu: f64 = running
        .iter()
        .filter_map(|u| u.last.as_ref())
        .map(|p| p.cpu_percent)
        .sum();
    let mem: u64 = running
        .iter()
        .filter_map(|u| u.last.as_ref())
        .map(|p| p.memory_bytes)
        .sum();
    println!(
        "hostel top - {} VMs, {} running; CPU {cpu:.1}% of one CPU, memory {}",
        all.len(),
        running.len(),
        output::bytes(mem as f64)
    );
    println!();
    output::print_table(all, TOP_COLUMNS);
}

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    match cmd {
        Cmd::Top {
            once,
            interval,
            output,
        } => {
            if interval == 0 {
                bail!("--interval is at least 1 second");
            }
            if once || output == Format::Json {
                let all: Vec<VmUsage> = api.get("/api/v1/usage").await?;
                return output::show(output, &all, |a| frame(a));
            }
            loop {
                let all: Vec<VmUsage> = api.get("/api/v1/usage").await?;
                // Clear the screen and go home, then draw.
                print!("\x1b[2J\x1b[H");
                frame(&all);
                println!("\n(every {interval} s; Ctrl-C ends)");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(interval)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        Cmd::Metrics => {
            print!("{}", api.get_text("/metrics").await?);
            Ok(())
        }
    }
}
