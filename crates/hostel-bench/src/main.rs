//! `hostel-bench`: measures Hostel side by side with plain QEMU on the same guest, in one
//! run, and writes `docs/benchmarks.md`. Run it through `bench/run` (as root: it makes a
//! network namespace for the daemon it starts, and removes it afterwards).
//!
//! Every time is a wall-clock median over several runs, and every comparison is a ratio
//! taken in the same run, so that the machine's speed of the day cancels out.

mod backups;
mod daemon;
mod databases;
mod fleet;
mod latency;
mod libvirt;
mod metrics;
mod migration;
mod web;

use anyhow::{bail, Context, Result};
use daemon::{run, timed, wait_marker, wait_text, Daemon};
use libvirt::{libvirt_boot, Libvirt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY: &str = "HOSTEL-READY";

struct Args {
    hostel: PathBuf,
    runs: usize,
    out: Option<PathBuf>,
    quick: bool,
    /// `--only create-latency`, `web` or `migration`: just those rows.
    only: Option<String>,
    /// Runs of the create → QEMU running rows.
    create_runs: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        hostel: PathBuf::from("target/release/hostel"),
        runs: 11,
        out: None,
        quick: false,
        only: None,
        create_runs: latency::FULL_RUNS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--hostel" => a.hostel = it.next().context("--hostel PATH")?.into(),
            "--runs" => a.runs = it.next().context("--runs N")?.parse()?,
            "--out" => a.out = Some(it.next().context("--out FILE")?.into()),
            "--quick" => a.quick = true,
            "--create-runs" => a.create_runs = it.next().context("--create-runs N")?.parse()?,
            "--only" => match it.next().as_deref() {
                Some("create-latency") => a.only = Some("create-latency".into()),
                Some("web") => a.only = Some("web".into()),
                Some("migration") => a.only = Some("migration".into()),
                Some("databases") => a.only = Some("databases".into()),
                Some("metrics") => a.only = Some("metrics".into()),
                Some("backups") => a.only = Some("backups".into()),
                other => {
                    bail!(
                        "--only {other:?}: the parts that run alone are create-latency, web, \
                         migration, databases, metrics and backups"
                    )
                }
            },
            other => {
                bail!(
                    "unknown argument {other:?}: use --hostel PATH --runs N --out FILE --quick \
                     --create-runs N --only create-latency|web|migration|databases|metrics|backups"
                )
            }
        }
    }
    if a.quick {
        a.runs = 1;
        a.create_runs = 3;
    }
    Ok(a)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Create → ready marker, through Hostel.
fn hostel_boot(d: &Daemon, name: &str) -> Result<f64> {
    let t = Instant::now();
    d.cli(&[
        "create",
        name,
        "--image",
        "tiny",
        "--memory",
        "256M",
        "--no-network",
    ])?;
    let id = d.vm_id(name)?;
    wait_marker(
        &d.data().join("run").join(id).join("console.log"),
        Duration::from_secs(120),
    )?;
    Ok(t.elapsed().as_secs_f64())
}

/// Start → ready marker, plain QEMU with the same guest and machine.
fn plain_boot(d: &Daemon, cmdline: &str) -> Result<(f64, Child)> {
    let img = d.data().join("images/tiny");
    let serial = d.dir.join("plain.serial");
    let _ = std::fs::remove_file(&serial);
    let t = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256M",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-kernel")
        .arg(img.join("vmlinuz"))
        .arg("-initrd")
        .arg(img.join("initrd.img"))
        .args(["-append", &format!("{} hostel.name=plain", cmdline.trim())])
        .args(["-device", "virtio-balloon-pci", "-device", "pvpanic"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_marker(&serial, Duration::from_secs(120))?;
    Ok((t.elapsed().as_secs_f64(), child))
}

/// Every image carries this much real data (the rest is sparse), so a full copy has
/// something to copy while the images' sizes differ tenfold.
const DATA_MIB: usize = 1024;

fn fill(path: &Path, mib: usize) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    Ok(())
}

/// A SIMULATED fleet of agents (`hostel-simagent`, one process, a port per host) that
/// answers the agent API over mutual TLS with a certificate from the daemon's CA.
pub(crate) struct SimFleet {
    pub(crate) child: Child,
    pub(crate) urls: Vec<String>,
    /// How many fleet VMs the simulated hosts report as running.
    fleet_file: PathBuf,
}

impl SimFleet {
    pub(crate) fn start(d: &Daemon, hosts: usize) -> Result<SimFleet> {
        let tls = d.dir.join("simtls");
        run(Command::new(&d.hostel)
            .args(["agent-cert", "simfleet", "--san", "127.0.0.1", "--data-dir"])
            .arg(d.data())
            .arg("--out")
            .arg(&tls)
            .stdout(Stdio::null()))?;
        let fleet_file = d.dir.join("simfleet.count");
        std::fs::write(&fleet_file, "0")?;
        let exe = std::env::current_exe()?.with_file_name("hostel-simagent");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &d.ns])
            .arg(&exe)
            .args(["--hosts", &hosts.to_string(), "--tls-dir"])
            .arg(&tls)
            .arg("--fleet-file")
            .arg(&fleet_file)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        use std::io::BufRead;
        let mut urls = Vec::new();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line?;
            if line == "ready" {
                break;
            }
            urls.push(line);
        }
        if urls.len() != hosts {
            bail!("hostel-simagent gave {} of {hosts} hosts", urls.len());
        }
        // The rest of its output is not read; keep the pipe from filling by dropping it.
        drop(lines);
        Ok(SimFleet {
            child,
            urls,
            fleet_file,
        })
    }
}

/// Writes fleet VM rows `simFROM` to `simTO-1` straight into the daemon's database with
/// the daemon stopped: running on the simulated hosts (VM i on `simhost-(i % hosts)`, as
/// `hostel-simagent` reports them), owned by the admin. Then restarts the daemon and
/// gives how long until every host's agent is connected again.
pub(crate) fn fleet_records(d: &mut Daemon, sim: &SimFleet, from: usize, to: usize) -> Result<f64> {
    let hosts = sim.urls.len();
    d.stop()?;
    let db = d.data().join("hostel.db");
    let now = "2026-01-01T00:00:00Z";
    let sql = format!(
        "BEGIN;\n\
         INSERT INTO vms (id, name, host_id, image_id, memory_mib, max_memory_mib, vcpus, max_vcpus, \
         state, state_reason, on_poweroff, on_reboot, on_crash, saved_path, pid, created_at, updated_at, \
         cdrom_image_id, boot_json, cloud_json, owner_user_id, owner_group_id, admin_group_id, lease_expires_at)\n\
         WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {last})\n\
         SELECT 'simvm-' || i, 'sim' || i, 'simhost-' || (i % {hosts}), NULL, 512, 512, 1, 1, \
         'running', 'simulated', 'destroy', 'restart', 'restart', NULL, 100000 + i, '{now}', '{now}', \
         NULL, NULL, NULL, (SELECT id FROM users WHERE name = 'admin'), NULL, NULL, NULL FROM n;\n\
         COMMIT;\n",
        last = to - 1,
    );
    let sql = match &d.database {
        None => sql,
        // The same rows on PostgreSQL: a series instead of a recursive query.
        Some(_) => sql.replace(
            &format!("WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {})\n", to - 1),
            "",
        )
        .replace(" FROM n;", &format!(" FROM generate_series({from}, {}) AS i;", to - 1)),
    };
    let mut client = match &d.database {
        None => {
            let mut c = Command::new("sqlite3");
            c.arg(&db);
            c
        }
        Some(url) => {
            let mut c = Command::new(databases::psql()?);
            c.args(["-v", "ON_ERROR_STOP=1", "-q", url]);
            c
        }
    };
    let out = client
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(sql.as_bytes())?;
            c.wait_with_output()
        })?;
    if !out.status.success() {
        bail!(
            "writing the fleet's rows: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&sim.fleet_file, to.to_string())?;
    let t = Instant::now();
    d.restart()?;
    wait_hosts_online(d, hosts + 1)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Waits until `want` hosts are online.
fn wait_hosts_online(d: &Daemon, want: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let hosts: serde_json::Value =
            serde_json::from_str(&d.cli(&["host", "list", "-o", "json"])?)?;
        let online = hosts
            .as_array()
            .map(|a| a.iter().filter(|h| h["online"] == true).count())
            .unwrap_or(0);
        if online >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {online} of {want} hosts online after 600 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// p50, p99 and the rate of a set of latencies, as a table row.
pub(crate) fn latency_row(what: String, v: &mut [f64], budget: &str) -> Row {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize] * 1e3;
    let total: f64 = v.iter().sum();
    Row {
        what,
        hostel: format!(
            "p50 {:.1} ms, p99 {:.1} ms, {:.1} ops/s",
            pct(0.5),
            pct(0.99),
            v.len() as f64 / total
        ),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: budget.into(),
    }
}

/// A short label for the plot: what, against whom.
fn plot_label(r: &Row) -> String {
    let what = r.what.split([',', '(']).next().unwrap_or(&r.what).trim();
    let peer = r
        .peer
        .split_once('(')
        .map(|(_, p)| p.split([',', ';', ')']).next().unwrap_or(p))
        .unwrap_or("")
        .trim();
    format!("{what} vs {peer}")
        .replace('`', "")
        .replace('"', "'")
}

pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) hostel: String,
    pub(crate) peer: String,
    pub(crate) ratio: String,
    pub(crate) budget: String,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.only.as_deref() == Some("databases") {
        // Two daemons of its own, one on each database.
        let rows = databases::rows(&args.hostel, args.quick)?;
        let table = table(&rows);
        print!("{table}");
        if let Some(out) = &args.out {
            let command = std::env::var("HOSTEL_BENCH_COMMAND").unwrap_or_default();
            std::fs::write(
                out,
                format!("Command: `{command}`\n\n{table}\n{}\n", databases::NOTE),
            )?;
        }
        return Ok(());
    }
    let mut d = Daemon::start(&args.hostel)?;
    let alone = match args.only.as_deref() {
        Some("web") => Some(web_alone(&mut d)?),
        Some("migration") => Some(migration::rows(&d, args.quick)?),
        Some("metrics") => Some(metrics::rows(&mut d, args.quick)?),
        Some("backups") => Some(backups::rows(&d)?),
        _ => None,
    };
    if let Some(rows) = alone {
        let table = table(&rows);
        print!("{table}");
        if let Some(out) = &args.out {
            let command = std::env::var("HOSTEL_BENCH_COMMAND").unwrap_or_default();
            let note = if args.only.as_deref() == Some("migration") {
                format!("\n{}\n", migration::NOTE)
            } else {
                String::new()
            };
            std::fs::write(out, format!("Command: `{command}`\n\n{table}{note}"))?;
        }
        return Ok(());
    }
    let lv = Libvirt::start()?;
    if args.only.is_some() {
        let rows = latency::rows(&d, &lv, args.create_runs)?;
        return write_out(&args, &d, &lv, &rows);
    }
    let lv_idle = lv.rss_kib();
    let mut rows = Vec::new();

    // a. create → ready, and b. destroy, each run: Hostel, plain QEMU, libvirt in turn.
    let (mut hb, mut pb, mut destroy) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lb, mut ld) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        let name = format!("b{i}");
        hb.push(hostel_boot(&d, &name)?);
        let v: serde_json::Value =
            serde_json::from_str(&d.cli(&["describe", &name, "-o", "json"])?)?;
        let cmdline = v["boot"]["cmdline"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        destroy.push(timed(|| d.cli(&["destroy", &name]).map(|_| ()))?);
        d.cli(&["delete", &name])?;
        let (t, mut child) = plain_boot(&d, &cmdline)?;
        pb.push(t);
        let _ = child.kill();
        let _ = child.wait();
        let (b, x) = libvirt_boot(&lv, &d.data().join("images/tiny"), &cmdline, i)?;
        lb.push(b);
        ld.push(x);
    }
    let lv_rss = lv.rss_kib();
    let (h, p, l) = (median(&mut hb), median(&mut pb), median(&mut lb));
    rows.push(Row {
        what: "create → ready marker, tiny guest (s)".into(),
        hostel: format!("{h:.3}"),
        peer: format!("{p:.3} (plain QEMU)"),
        ratio: format!("{:.3}", h / p),
        budget: "≤ 1.03× plain QEMU".into(),
    });
    rows.push(Row {
        what: "create → ready marker, tiny guest (s)".into(),
        hostel: format!("{h:.3}"),
        peer: format!("{l:.3} (`virsh create`)"),
        ratio: format!("{:.3}", h / l),
        budget: "≤ 0.9× libvirt".into(),
    });
    let (dm, lm) = (median(&mut destroy), median(&mut ld));
    rows.push(Row {
        what: "destroy, CLI round trip (s)".into(),
        hostel: format!("{dm:.3}"),
        peer: format!("{lm:.3} (`virsh destroy`)"),
        ratio: format!("{:.3}", dm / lm),
        budget: "≤ 0.1 s".into(),
    });

    // b2. create → QEMU running (the control plane's own share), against `virsh create`.
    rows.extend(latency::rows(&d, &lv, args.create_runs)?);

    // c. provisioning from a large image against a full copy.
    let sizes: &[u64] = if args.quick { &[2] } else { &[2, 20] };
    for gib in sizes {
        let raw = d.dir.join(format!("img{gib}.raw"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(&raw)
            .arg(format!("{gib}G")))?;
        fill(&raw, DATA_MIB)?;
        let name = format!("img{gib}");
        d.cli(&["image", "import", &name, raw.to_str().unwrap_or_default()])?;
        let base = d.data().join("images").join(format!("{name}.qcow2"));
        let (mut ct, mut cp) = (Vec::new(), Vec::new());
        for i in 0..args.runs {
            let vm = format!("p{gib}x{i}");
            ct.push(timed(|| {
                d.cli(&[
                    "create",
                    &vm,
                    "--image",
                    &name,
                    "--memory",
                    "128M",
                    "--no-start",
                    "--no-network",
                ])
                .map(|_| ())
            })?);
            d.cli(&["delete", &vm])?;
            let copy = d.dir.join("copy.qcow2");
            cp.push(timed(|| {
                run(Command::new("cp")
                    .arg("--sparse=never")
                    .arg(&base)
                    .arg(&copy))
            })?);
            let _ = std::fs::remove_file(&copy);
        }
        let (c, f) = (median(&mut ct), median(&mut cp));
        rows.push(Row {
            what: format!("create from a {gib} GiB image, CLI round trip (s)"),
            hostel: format!("{c:.3}"),
            peer: format!("{f:.3} (full copy of the base, {DATA_MIB} MiB of data)"),
            ratio: format!("{:.3}", c / f),
            budget: "≤ 0.05 s, independent of size".into(),
        });
        d.cli(&["image", "delete", &name])?;
        let _ = std::fs::remove_file(&raw);
    }

    // From no image at all to the first Debian VM at `login:` (one run: minutes long).
    if !args.quick {
        let t = Instant::now();
        d.cli(&["image", "build", "debian"])?;
        let build = t.elapsed().as_secs_f64();
        let t = Instant::now();
        d.cli(&[
            "create",
            "deb",
            "--image",
            "debian-bookworm",
            "--memory",
            "1G",
            "--vcpus",
            "2",
            "--no-network",
        ])?;
        let id = d.vm_id("deb")?;
        wait_text(
            &d.data().join("run").join(id).join("console.log"),
            "deb login:",
            Duration::from_secs(600),
        )?;
        let boot = t.elapsed().as_secs_f64();
        d.cli(&["destroy", "deb"])?;
        d.cli(&["delete", "deb"])?;
        rows.push(Row {
            what: "`image build debian` from the mirror (s, 1 run)".into(),
            hostel: format!("{build:.1}"),
            peer: "n/a".into(),
            ratio: "".into(),
            budget: "".into(),
        });
        rows.push(Row {
            what: "create → `NAME login:`, Debian, BIOS, TCG (s, 1 run)".into(),
            hostel: format!("{boot:.1}"),
            peer: "n/a".into(),
            ratio: "".into(),
            budget: "".into(),
        });
        rows.push(Row {
            what: "no image at all → first Debian VM at `login:` (s)".into(),
            hostel: format!("{:.1}", build + boot),
            peer: "n/a".into(),
            ratio: "".into(),
            budget: "≤ 90 s (Invirt: 3 minutes)".into(),
        });
    }

    // e. memory of the all-in-one daemon (controller + agent in one process).
    let idle = d.rss_kib();
    // As many of 100 tiny guests as boot within 10 minutes (2 in the quick run): under
    // TCG on 2 cores the idle guests' timers slow every next boot.
    let (want, phase) = if args.quick {
        (2, Duration::from_secs(120))
    } else {
        (100, Duration::from_secs(600))
    };
    let started = Instant::now();
    let mut n = 0;
    // 128 MiB: with 64 MiB the tiny guest resets over and over before its kernel prints
    // anything (seen as thousands of "guest reset" lines), and would load the CPU.
    while n < want && started.elapsed() < phase {
        let name = format!("m{n}");
        d.cli(&[
            "create",
            &name,
            "--image",
            "tiny",
            "--memory",
            "128M",
            "--no-network",
        ])?;
        n += 1;
        let id = d.vm_id(&name)?;
        let left = phase
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(60));
        if let Err(e) = wait_marker(&d.data().join("run").join(id).join("console.log"), left) {
            eprintln!(
                "VM {name} did not come up ({e:#}); measuring with {} VMs",
                n - 1
            );
            d.cli(&["destroy", &name])?;
            d.cli(&["delete", &name])?;
            n -= 1;
            break;
        }
    }
    let busy = d.rss_kib();
    // Idle guests still cost CPU under TCG: stop them before the control-plane phase.
    for i in 0..n {
        d.cli(&["destroy", &format!("m{i}")])?;
    }
    rows.push(Row {
        what: "RSS of `hostel up` (controller and agent), 0 VMs (MiB)".into(),
        hostel: format!("{:.1}", idle as f64 / 1024.0),
        peer: format!(
            "{:.1} (libvirtd alone, idle; {:.1} after its {} domains)",
            lv_idle as f64 / 1024.0,
            lv_rss as f64 / 1024.0,
            args.runs
        ),
        ratio: format!("{:.3}", idle as f64 / lv_idle.max(1) as f64),
        budget: "agent ≤ 20 MB + controller ≤ 60 MB".into(),
    });
    rows.push(Row {
        what: format!(
            "RSS of `hostel up`, {n} running tiny VMs (of {want} asked for, {:.0} s to boot them all) (MiB)",
            started.elapsed().as_secs_f64()
        ),
        hostel: format!("{:.1}", busy as f64 / 1024.0),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "".into(),
    });

    // f. live migration between two real agents, against plain QEMU's `migrate`: before
    // the simulated fleet, whose hosts would otherwise be placement's choices too.
    rows.extend(migration::rows(&d, args.quick)?);

    // d. the control plane over a simulated fleet's records.
    // A simulated fleet: the hosts join through the API; then 10,000 VMs (the memory
    // budget's size), then 100,000 (the list's).
    let (hosts, sizes, samples) = if args.quick {
        (10, vec![1_000, 2_000], 3)
    } else {
        (1_000, vec![10_000, 100_000], 10)
    };
    let mut sim = SimFleet::start(&d, hosts)?;
    let mut join = Vec::new();
    for url in &sim.urls {
        join.push(timed(|| d.cli(&["host", "add", url]).map(|_| ()))?);
    }
    rows.push(latency_row(
        format!("simulated fleet: `hostel host add`, each of {hosts} simulated hosts, CLI"),
        &mut join,
        "",
    ));
    rows.push(Row {
        what: format!(
            "RSS of `hostel up` with {hosts} connected simulated agents, no VMs on them (MiB)"
        ),
        hostel: format!("{:.1}", d.rss_kib() as f64 / 1024.0),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "".into(),
    });
    let mut had = 0;
    for (round, vms) in sizes.into_iter().enumerate() {
        let back = fleet_records(&mut d, &sim, had, vms)?;
        rows.push(Row {
            what: format!(
                "simulated fleet ({hosts} hosts, {vms} VMs): `hostel up` restart → every host's agent reconnected and reconciled (s)"
            ),
            hostel: format!("{back:.1}"),
            peer: "n/a".into(),
            ratio: "".into(),
            budget: "".into(),
        });
        rows.extend(fleet::fleet(&d, hosts, vms, samples, round)?);
        if round == 0 {
            rows.extend(web::web(&d, vms, samples, &format!("placed{round}x0"))?);
        }
        had = vms;
    }
    let _ = sim.child.kill();
    let _ = sim.child.wait();
    write_out(&args, &d, &lv, &rows)
}

/// The web UI's rows alone (`--only web`): 20 simulated hosts, 1,000 VMs, one of them
/// on a simulated host to start and stop.
fn web_alone(d: &mut Daemon) -> Result<Vec<Row>> {
    let (hosts, vms) = (20, 1_000);
    let mut sim = SimFleet::start(d, hosts)?;
    for url in &sim.urls {
        d.cli(&["host", "add", url])?;
    }
    fleet_records(d, &sim, 0, vms)?;
    d.cli(&[
        "create",
        "webbench0",
        "--kernel",
        "/simulated/vmlinuz",
        "--memory",
        "512M",
        "--disk",
        "1G",
        "--no-start",
        "--no-network",
    ])?;
    let rows = web::web(d, vms, 10, "webbench0");
    let _ = sim.child.kill();
    let _ = sim.child.wait();
    rows
}

fn table(rows: &[Row]) -> String {
    let mut table = String::from(
        "| measurement | Hostel | peer | ratio | budget |\n| --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what, r.hostel, r.peer, r.ratio, r.budget
        ));
    }
    table
}

/// Prints the table and, with `--out`, writes it as the benchmarks document with the plot's
/// data beside it.
fn write_out(args: &Args, d: &Daemon, lv: &Libvirt, rows: &[Row]) -> Result<()> {
    let table = table(rows);
    print!("{table}");
    if let Some(out) = &args.out {
        let machine = format!(
            "{} CPUs, {} MiB, kernel {}, accelerator {}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| m
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok()))
                .unwrap_or(0)
                / 1024,
            String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout).trim(),
            d.cli(&["info", "-o", "json"])
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["hosts"][0]["accel"].as_str().map(String::from))
                .unwrap_or_default()
        );
        let date = String::from_utf8_lossy(
            &Command::new("date")
                .arg("-u")
                .arg("+%Y-%m-%d %H:%M UTC")
                .output()?
                .stdout,
        )
        .trim()
        .to_string();
        let doc = format!(
            "# Benchmarks\n\nMeasured {date} on {machine}, medians over {} run(s), by\n\n```sh\n{}\n```\n\n{table}\n\
             ![ratios](benchmarks.png)\n\n\
             libvirt {} runs in a network and mount namespace of the benchmark's own, as root with \
             `security_driver = \"none\"`; its domain is the plain QEMU guest in XML (q35, TCG, `-cpu max`, \
             256 MiB, the tiny image's kernel and initrd, serial to a file, balloon, pvpanic).\n\n\
             {}\n\n\
             {}\n\n\
             The simulated fleet is the one fake in these benchmarks: `hostel-simagent` (crates/hostel-bench/src/bin), \
             one process serving 1,000 SIMULATED agents, each on a port of its own with the agent API over mutual TLS \
             (a certificate from `hostel agent-cert`), the same wire types as `hostel agent`, no QEMU. The hosts \
             join through `hostel host add`; then 10,000 and then 100,000 running VM rows are written into the \
             daemon's SQLite database (VM i on simulated host i mod 1,000, which reports it running) and the daemon \
             is restarted, so that it reconnects to and reconciles every host. List, describe, create, start and \
             destroy then go through the real API, CLI and controller; describe, start and destroy reach the \
             VM's simulated agent. A list page is up to 1,000 VMs (the API's default and most). The VM counts \
             are the written rows (the create rows add a few).\n",
            args.runs,
            std::env::var("HOSTEL_BENCH_COMMAND").unwrap_or_else(|_| "bash bench/run".into()),
            lv.virsh(&["version", "--daemon"])
                .ok()
                .and_then(|v| v.lines().find(|l| l.contains("daemon")).map(|l| l.trim().to_string()))
                .unwrap_or_default(),
            latency::NOTE,
            migration::NOTE,
        );
        // The plot's data: one ratio per row that has one.
        let mut tsv = String::new();
        for r in rows.iter().filter(|r| !r.ratio.is_empty()) {
            tsv.push_str(&format!("\"{}\"\t{}\n", plot_label(r), r.ratio));
        }
        std::fs::write(out.with_extension("tsv"), tsv)?;
        std::fs::write(out, doc)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
