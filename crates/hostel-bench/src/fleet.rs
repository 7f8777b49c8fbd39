//! The control plane at scale, over the SIMULATED fleet: list, describe, placement, start,
//! destroy through the real API and CLI.

use crate::daemon::{timed, Daemon};
use crate::{latency_row, median, Row};
use anyhow::{bail, Result};
use std::time::Instant;

/// The control plane at scale: `vms` VMs on `hosts` simulated hosts (and the real local
/// one), through the real API and CLI.
pub(crate) fn fleet(
    d: &Daemon,
    hosts: usize,
    vms: usize,
    samples: usize,
    round: usize,
) -> Result<Vec<Row>> {
    fleet_on(d, hosts, vms, samples, round, "")
}

/// The same rows, their names marked with `db` (`, PostgreSQL`, say).
pub(crate) fn fleet_on(
    d: &Daemon,
    hosts: usize,
    vms: usize,
    samples: usize,
    round: usize,
    db: &str,
) -> Result<Vec<Row>> {
    let client = d.client()?;
    let curl = |path: &str| -> Result<f64> { Ok(d.get_timed(&client, path)?.1) };
    let what = |s: &str| format!("simulated fleet ({hosts} hosts, {vms} VMs{db}): {s}");
    let mut rows = Vec::new();
    // Spread over the whole list: the k-th sample looks at a pseudo-random VM or host.
    let pick = |i: usize, n: usize| (i * 7919 + 13) % n;
    let mut first = Vec::new();
    let mut deep = Vec::new();
    let mut by_host = Vec::new();
    for i in 0..samples * 10 {
        first.push(curl("/api/v1/vms")?);
        deep.push(curl(&format!("/api/v1/vms?after=sim{}", pick(i, vms)))?);
        by_host.push(curl(&format!(
            "/api/v1/vms?host=simhost-{}",
            pick(i, hosts)
        ))?);
    }
    rows.push(latency_row(
        what("list, first page of 1,000, API"),
        &mut first,
        "p99 ≤ 50 ms",
    ));
    rows.push(latency_row(
        what("list, a page of 1,000 anywhere in the list, API"),
        &mut deep,
        "p99 ≤ 50 ms",
    ));
    rows.push(latency_row(
        what(&format!("list of one host's VMs ({}), API", vms / hosts)),
        &mut by_host,
        "p99 ≤ 50 ms",
    ));
    let mut whole = Vec::new();
    for _ in 0..3 {
        whole.push(timed(|| d.cli(&["list", "-o", "json"]).map(|_| ()))?);
    }
    let whole = median(&mut whole);
    rows.push(Row {
        what: what("the whole list, every page, `hostel list -o json` (s)"),
        hostel: format!("{whole:.2} ({:.0} VMs/s)", vms as f64 / whole),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "".into(),
    });
    let mut describe = Vec::new();
    for i in 0..samples * 10 {
        describe.push(curl(&format!("/api/v1/vms/sim{}", pick(i, vms)))?);
    }
    rows.push(latency_row(
        what("describe, API (asks the VM's simulated host)"),
        &mut describe,
        "",
    ));
    rows.push(crate::metrics::scrape_row(
        d,
        samples * 3,
        &what("`/metrics` scrape"),
    )?);
    // Placement over the whole fleet: VMs with nothing host-bound (a kernel file, a
    // blank disk) go to the online host with the most memory free.
    let sim_create = |name: &str| -> Result<()> {
        d.cli(&[
            "create",
            name,
            "--kernel",
            "/simulated/vmlinuz",
            "--memory",
            "512M",
            "--disk",
            "1G",
            "--no-start",
            "--no-network",
        ])
        .map(|_| ())
    };
    let mut placed = Vec::new();
    for i in 0..samples * 2 {
        let name = format!("placed{round}x{i}");
        placed.push(timed(|| sim_create(&name))?);
    }
    let host = serde_json::from_str::<serde_json::Value>(&d.cli(&[
        "describe",
        &format!("placed{round}x0"),
        "-o",
        "json",
    ])?)?["host"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !host.starts_with("simhost-") {
        bail!("a VM with nothing host-bound was placed on {host:?}, not on a simulated host");
    }
    rows.push(latency_row(
        what("create --no-start placed over the fleet, CLI"),
        &mut placed,
        "",
    ));
    // Placements per second: 4 clients creating at once.
    let (clients, each) = (4, samples * 2);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                let sim_create = &sim_create;
                s.spawn(move || -> Result<()> {
                    for i in 0..each {
                        sim_create(&format!("burst{round}c{c}x{i}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    let rate = (clients * each) as f64 / t.elapsed().as_secs_f64();
    rows.push(Row {
        what: what(&format!(
            "placements: create --no-start by {clients} CLI clients at once (VMs/s)"
        )),
        hostel: format!("{rate:.1}"),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "".into(),
    });
    // Start and destroy on simulated hosts: the controller's round trip to the agent.
    let (mut start, mut stop) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let name = format!("placed{round}x{i}");
        start.push(timed(|| d.cli(&["start", &name]).map(|_| ()))?);
        stop.push(timed(|| d.cli(&["destroy", &name]).map(|_| ()))?);
    }
    rows.push(latency_row(
        what("start, CLI, simulated host"),
        &mut start,
        "",
    ));
    rows.push(latency_row(
        what("destroy, CLI, simulated host"),
        &mut stop,
        "",
    ));
    let mut create = Vec::new();
    for i in 0..samples * 2 {
        let name = format!("fleetnew{round}x{i}");
        create.push(timed(|| {
            d.cli(&[
                "create",
                &name,
                "--image",
                "tiny",
                "--memory",
                "64M",
                "--no-start",
                "--no-network",
            ])
            .map(|_| ())
        })?);
    }
    rows.push(latency_row(
        what("create --no-start from the tiny image (on its host, the real local agent), CLI"),
        &mut create,
        "",
    ));
    rows.push(Row {
        what: format!(
            "RSS of `hostel up` with {vms} VMs and {hosts} connected simulated agents{db}, after the above (MiB)"
        ),
        hostel: format!("{:.1}", d.rss_kib() as f64 / 1024.0),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "controller ≤ 60 MB at 10,000 VMs".into(),
    });
    Ok(rows)
}
