//! `hostel-bench`: measures Hostel side by side with plain QEMU on the same guest, in one
//! run, and writes `docs/benchmarks.md`. Run it through `bench/run` (as root: it makes a
//! network namespace for the daemon it starts, and removes it afterwards).
//!
//! Every time is a wall-clock median over several runs, and every comparison is a ratio
//! taken in the same run, so that the machine's speed of the day cancels out.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY: &str = "HOSTEL-READY";

struct Args {
    hostel: PathBuf,
    runs: usize,
    out: Option<PathBuf>,
    quick: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        hostel: PathBuf::from("target/release/hostel"),
        runs: 5,
        out: None,
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--hostel" => a.hostel = it.next().context("--hostel PATH")?.into(),
            "--runs" => a.runs = it.next().context("--runs N")?.parse()?,
            "--out" => a.out = Some(it.next().context("--out FILE")?.into()),
            "--quick" => a.quick = true,
            other => {
                bail!("unknown argument {other:?}: use --hostel PATH --runs N --out FILE --quick")
            }
        }
    }
    if a.quick {
        a.runs = 1;
    }
    Ok(a)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A `hostel up` in a network namespace of its own.
struct Daemon {
    ns: String,
    dir: PathBuf,
    child: Child,
    hostel: PathBuf,
}

impl Daemon {
    fn start(hostel: &Path) -> Result<Daemon> {
        let ns = format!("hostel-bench-{}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        // The namespace's only way out: a proxy to the Debian mirror, for image builds.
        let proxy = relay_proxy(&ns)?;
        let log = std::fs::File::create(dir.join("daemon.out"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(hostel)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--no-default-network",
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .env("HOSTEL_CONFIG", dir.join("client.toml"))
            .env("http_proxy", format!("http://{proxy}"))
            .env("no_proxy", "127.0.0.1,localhost")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let d = Daemon {
            ns,
            dir,
            child,
            hostel: hostel.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        while !d.dir.join("client.toml").exists() {
            if Instant::now() > deadline {
                bail!(
                    "hostel up was not ready in 300 s; see {}",
                    d.dir.join("daemon.out").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.hostel)
            .args(args)
            .env("HOSTEL_CONFIG", self.dir.join("client.toml"))
            .output()?;
        if !out.status.success() {
            bail!("hostel {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn vm_id(&self, name: &str) -> Result<String> {
        let v: serde_json::Value =
            serde_json::from_str(&self.cli(&["describe", name, "-o", "json"])?)?;
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Everything left in the namespace was started by this benchmark.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status()?;
    if !st.success() {
        bail!("{cmd:?} failed");
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// An HTTP forward proxy listening inside namespace `ns` that relays each connection,
/// from the bench's own namespace, to the port-80 host its request names.
fn relay_proxy(ns: &str) -> Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let path = format!("/run/netns/{ns}");
    let listener = std::thread::spawn(move || -> Result<std::net::TcpListener> {
        let f = std::fs::File::open(&path)?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the proxy thread panicked"))??;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().ok()?);
                let mut first = String::new();
                reader.read_line(&mut first).ok()?;
                let rest = first.split_whitespace().nth(1)?.strip_prefix("http://")?;
                let host = rest.split('/').next()?;
                let host = host.strip_suffix(":80").unwrap_or(host).to_string();
                if host.contains(':') {
                    return None;
                }
                let mut origin = std::net::TcpStream::connect((host.as_str(), 80)).ok()?;
                origin.write_all(first.as_bytes()).ok()?;
                origin.write_all(reader.buffer()).ok()?;
                let mut up = reader.into_inner();
                let mut o2 = origin.try_clone().ok()?;
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up, &mut o2);
                    let _ = o2.shutdown(std::net::Shutdown::Write);
                });
                let mut down = client;
                let _ = std::io::copy(&mut origin, &mut down);
                let _ = down.shutdown(std::net::Shutdown::Both);
                let _ = t.join();
                Some(())
            });
        }
    });
    Ok(addr)
}

/// Waits until `file` contains `needle`.
fn wait_text(file: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read(file)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no {needle:?} in {} within {timeout:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_marker(file: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read(file)
            .map(|b| String::from_utf8_lossy(&b).contains(READY))
            .unwrap_or(false)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no {READY} in {} within {timeout:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(2));
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

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

struct Row {
    what: String,
    hostel: String,
    peer: String,
    ratio: String,
    budget: String,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let d = Daemon::start(&args.hostel)?;
    let mut rows = Vec::new();

    // a. create → ready, and b. destroy.
    let (mut hb, mut pb, mut destroy) = (Vec::new(), Vec::new(), Vec::new());
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
    }
    let (h, p) = (median(&mut hb), median(&mut pb));
    rows.push(Row {
        what: "create → ready marker, tiny guest (s)".into(),
        hostel: format!("{h:.3}"),
        peer: format!("{p:.3} (plain QEMU)"),
        ratio: format!("{:.3}", h / p),
        budget: "≤ 1.03× plain QEMU".into(),
    });
    let dm = median(&mut destroy);
    rows.push(Row {
        what: "destroy, CLI round trip (s)".into(),
        hostel: format!("{dm:.3}"),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "≤ 0.1 s".into(),
    });

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
    let n = if args.quick { 2 } else { 10 };
    for i in 0..n {
        d.cli(&[
            "create",
            &format!("m{i}"),
            "--image",
            "tiny",
            "--memory",
            "64M",
            "--no-network",
        ])?;
    }
    let busy = d.rss_kib();
    rows.push(Row {
        what: "RSS of `hostel up`, 0 VMs (MiB)".into(),
        hostel: format!("{:.1}", idle as f64 / 1024.0),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "agent ≤ 20 MB + controller ≤ 60 MB".into(),
    });
    rows.push(Row {
        what: format!("RSS of `hostel up`, {n} running tiny VMs (MiB)"),
        hostel: format!("{:.1}", busy as f64 / 1024.0),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "".into(),
    });

    let mut table = String::from(
        "| measurement | Hostel | peer | ratio | budget |\n| --- | --- | --- | --- | --- |\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what, r.hostel, r.peer, r.ratio, r.budget
        ));
    }
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
             Not measured yet (see the benchmark issue): libvirt side by side (`virsh create`/`virsh destroy`, \
             libvirtd RSS), the simulated control-plane fleet (1,000 hosts, 100,000 VMs), live migration, \
             and the plot.\n",
            args.runs,
            std::env::var("HOSTEL_BENCH_COMMAND").unwrap_or_else(|_| "bash bench/run".into())
        );
        std::fs::write(out, doc)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
