//! `/metrics` as a scraper reads it (`bench/run --only metrics`, and a row of every
//! simulated fleet run): the time of a scrape once the usage sampler has had a round
//! over the fleet's VMs (their counters are then in it), with 100 and 10,000 SIMULATED
//! VMs on 10 simulated hosts.

use crate::daemon::Daemon;
use crate::{fleet_records, latency_row, Row, SimFleet};
use anyhow::Result;
use std::time::{Duration, Instant};

/// The scrape row: waits (up to a minute) for the VMs' counters to appear, then times
/// `samples` scrapes. `what` names the row; the number of VMs in the scrape is added.
pub(crate) fn scrape_row(d: &Daemon, samples: usize, what: &str) -> Result<Row> {
    let client = d.client()?;
    let scrape = |d: &Daemon| d.get_timed(&client, "/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        let (text, _) = scrape(d)?;
        let n = text
            .lines()
            .filter(|l| l.starts_with("hostel_vm_cpu_seconds_total{"))
            .count();
        if n > 0 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut times = Vec::new();
    for _ in 0..samples {
        times.push(scrape(d)?.1);
    }
    Ok(latency_row(
        format!("{what} ({series} VMs' counters in it), API"),
        &mut times,
        "",
    ))
}

/// `--only metrics`: 10 simulated hosts, 100 then 10,000 VMs running on them.
pub(crate) fn rows(d: &mut Daemon, quick: bool) -> Result<Vec<Row>> {
    let hosts = 10;
    let sizes: &[usize] = if quick { &[100, 1_000] } else { &[100, 10_000] };
    let mut sim = SimFleet::start(d, hosts)?;
    for url in &sim.urls {
        d.cli(&["host", "add", url])?;
    }
    let mut rows = Vec::new();
    let mut had = 0;
    for &vms in sizes {
        fleet_records(d, &sim, had, vms)?;
        rows.push(scrape_row(
            d,
            30,
            &format!("simulated fleet ({hosts} hosts, {vms} VMs): `/metrics` scrape"),
        )?);
        had = vms;
    }
    let _ = sim.child.kill();
    let _ = sim.child.wait();
    Ok(rows)
}
