//! The web UI at scale, over the SIMULATED fleet: the VM list page's render time with
//! 1,000 VMs on it, and how long a VM's state change takes to show in a real browser
//! (Chromium following the event stream).

use crate::daemon::Daemon;
use crate::{latency_row, Row};
use anyhow::{bail, Context, Result};
use std::process::Command;

pub(crate) fn web(d: &Daemon, vms: usize, samples: usize, vm: &str) -> Result<Vec<Row>> {
    let (url, token) = d.client()?;
    let pw_file = d.dir.join("bench-web.pw");
    std::fs::write(&pw_file, "bench-web-password-1\n")?;
    let pw = pw_file.to_str().context("a UTF-8 path")?;
    d.cli(&[
        "user",
        "create",
        "webbench",
        "--admin",
        "--password-file",
        pw,
    ])?;
    let jar = d.dir.join("bench-web.cookies");
    let curl = |args: &[&str]| -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &d.ns, "curl", "-sf", "-b"])
            .arg(&jar)
            .arg("-c")
            .arg(&jar)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("curl {args:?} failed");
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    curl(&[
        "-o",
        "/dev/null",
        "-d",
        "user=webbench&password=bench-web-password-1&next=/vms",
        &format!("{url}/login"),
    ])?;
    let mut page = Vec::new();
    for _ in 0..samples * 10 {
        let t: f64 = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            &format!("{url}/vms"),
        ])?
        .trim()
        .parse()?;
        page.push(t);
    }
    let body = curl(&[&format!("{url}/vms")])?;
    let rows_shown = body.matches("<tr data-vm=").count();
    if rows_shown != 1000.min(vms) {
        bail!(
            "the list page showed {rows_shown} VMs, not {}",
            1000.min(vms)
        );
    }
    let mut out = vec![latency_row(
        format!(
            "web UI: the VM list page with 1,000 VMs (first page of {vms}), rendered, over loopback"
        ),
        &mut page,
        "p99 ≤ 100 ms",
    )];
    let script = std::env::current_dir()?.join("web/tests/bench-live.mjs");
    let live = Command::new("ip")
        .args(["netns", "exec", &d.ns, "node"])
        .arg(&script)
        .args([
            &url,
            "webbench:bench-web-password-1",
            &token,
            vm,
            &samples.max(10).to_string(),
        ])
        .output()
        .context("running node for the browser benchmark")?;
    if !live.status.success() {
        bail!("bench-live.mjs: {}", String::from_utf8_lossy(&live.stderr));
    }
    let mut delays: Vec<f64> = String::from_utf8_lossy(&live.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|ms| ms / 1000.0)
        .collect();
    out.push(latency_row(
        "web UI: a VM's state change (API start/destroy on a simulated host) → shown in Chromium's VM list, event stream".into(),
        &mut delays,
        "p99 ≤ 1 s",
    ));
    Ok(out)
}
