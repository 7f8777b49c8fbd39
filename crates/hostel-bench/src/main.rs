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
        runs: 11,
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
    proxy: String,
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
        let child = Self::spawn(&ns, &dir, hostel, &proxy)?;
        let d = Daemon {
            ns,
            dir,
            child,
            hostel: hostel.to_path_buf(),
            proxy,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn spawn(ns: &str, dir: &Path, hostel: &Path, proxy: &str) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.out"))?;
        Ok(Command::new("ip")
            .args(["netns", "exec", ns])
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
            .spawn()?)
    }

    /// SIGTERM: the daemon stops, its VMs go on.
    fn stop(&mut self) -> Result<()> {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        self.child.wait()?;
        let _ = std::fs::remove_file(self.dir.join("client.toml"));
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        self.child = Self::spawn(&self.ns, &self.dir, &self.hostel, &self.proxy)?;
        self.wait_ready()
    }

    /// The API's address and the admin token, from the client config.
    fn client(&self) -> Result<(String, String)> {
        let cfg: toml::Value =
            toml::from_str(&std::fs::read_to_string(self.dir.join("client.toml"))?)?;
        Ok((
            cfg["url"]
                .as_str()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            cfg["token"].as_str().unwrap_or_default().to_string(),
        ))
    }

    fn wait_ready(&self) -> Result<()> {
        let d = self;
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
        Ok(())
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
        end(&mut self.child, &self.ns, &self.dir);
    }
}

/// Ends `child`, then everything left in namespace `ns` (all of it started by this
/// benchmark: QEMUs, virtlogd), removes the namespace and the directory `dir`.
fn end(child: &mut Child, ns: &str, dir: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let _ = std::fs::remove_dir_all(dir);
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

/// libvirt, for comparison: its own `libvirtd` and `virtlogd`, started for the benchmark
/// in a network namespace and a private mount namespace of their own (so the host's
/// /etc/libvirt/qemu.conf, /run/libvirt and /var/lib/libvirt are not touched), as root
/// with `security_driver = "none"`; stopped and removed afterwards.
struct Libvirt {
    ns: String,
    dir: PathBuf,
    child: Child,
    uri: String,
}

impl Libvirt {
    fn start() -> Result<Libvirt> {
        for tool in ["libvirtd", "virtlogd", "virsh"] {
            if !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success()
            {
                bail!(
                    "{tool} is missing: bench/run installs libvirt-daemon, \
                     libvirt-daemon-driver-qemu and libvirt-clients from bookworm-backports"
                );
            }
        }
        let ns = format!("hostel-bench-lv-{}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        for sub in ["run", "lib", "cache", "log"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(
            dir.join("qemu.conf"),
            "security_driver = \"none\"\nuser = \"root\"\ngroup = \"root\"\n\
             dynamic_ownership = 0\nremember_owner = 0\n",
        )?;
        std::fs::write(
            dir.join("libvirtd.conf"),
            "unix_sock_rw_perms = \"0700\"\nauth_unix_rw = \"none\"\n",
        )?;
        let d = dir.display();
        std::fs::write(
            dir.join("inner.sh"),
            format!(
                "set -e\nmount --make-rprivate /\n\
                 mount --bind {d}/qemu.conf /etc/libvirt/qemu.conf\n\
                 mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt\n\
                 mount --bind {d}/run /run/libvirt\n\
                 mount --bind {d}/lib /var/lib/libvirt\n\
                 mount --bind {d}/cache /var/cache/libvirt\n\
                 mount --bind {d}/log /var/log/libvirt\n\
                 virtlogd -d\n\
                 exec libvirtd -f {d}/libvirtd.conf\n"
            ),
        )?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        let log = std::fs::File::create(dir.join("libvirtd.out"))?;
        // ip netns exec, unshare and sh all exec: the child's pid is libvirtd's.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "unshare", "-m", "sh"])
            .arg(dir.join("inner.sh"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let lv = Libvirt {
            uri: format!("qemu:///system?socket={d}/run/libvirt-sock"),
            ns,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while lv.virsh(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "libvirtd did not answer in 60 s; see {}",
                    lv.dir.join("libvirtd.out").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(lv)
    }

    fn virsh(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// A transient domain like the plain QEMU one: q35, TCG, `-cpu max`, 256 MiB, the
    /// tiny image's kernel and initrd, a serial console to a file, balloon and pvpanic.
    fn domain_xml(&self, name: &str, img: &Path, cmdline: &str, serial: &Path) -> String {
        format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>256</memory>\n  \
             <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    \
             <kernel>{k}</kernel>\n    <initrd>{i}</initrd>\n    <cmdline>{c} hostel.name={name}</cmdline>\n  \
             </os>\n  <cpu mode='maximum'/>\n  <devices>\n    \
             <emulator>/usr/bin/qemu-system-x86_64</emulator>\n    \
             <controller type='usb' model='none'/>\n    \
             <serial type='file'><source path='{s}'/><target port='0'/></serial>\n    \
             <memballoon model='virtio'/>\n    <panic model='pvpanic'/>\n  </devices>\n</domain>\n",
            k = img.join("vmlinuz").display(),
            i = img.join("initrd.img").display(),
            c = cmdline.trim(),
            s = serial.display(),
        )
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        end(&mut self.child, &self.ns, &self.dir);
    }
}

/// `virsh create` → ready marker, then `virsh destroy`: (boot s, destroy s).
fn libvirt_boot(lv: &Libvirt, img: &Path, cmdline: &str, i: usize) -> Result<(f64, f64)> {
    let name = format!("lv{i}");
    let serial = lv.dir.join(format!("{name}.serial"));
    let xml = lv.dir.join(format!("{name}.xml"));
    std::fs::write(&xml, lv.domain_xml(&name, img, cmdline, &serial))?;
    let t = Instant::now();
    lv.virsh(&["create", xml.to_str().unwrap_or_default()])?;
    wait_marker(&serial, Duration::from_secs(120))?;
    let boot = t.elapsed().as_secs_f64();
    let destroy = timed(|| lv.virsh(&["destroy", &name]).map(|_| ()))?;
    Ok((boot, destroy))
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

/// A SIMULATED fleet of agents (`hostel-simagent`, one process, a port per host) that
/// answers the agent API over mutual TLS with a certificate from the daemon's CA.
struct SimFleet {
    child: Child,
    urls: Vec<String>,
    /// How many fleet VMs the simulated hosts report as running.
    fleet_file: PathBuf,
}

impl SimFleet {
    fn start(d: &Daemon, hosts: usize) -> Result<SimFleet> {
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
fn fleet_records(d: &mut Daemon, sim: &SimFleet, from: usize, to: usize) -> Result<f64> {
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
    let out = Command::new("sqlite3")
        .arg(&db)
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
        bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr));
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
fn latency_row(what: String, v: &mut [f64], budget: &str) -> Row {
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

/// The control plane at scale: `vms` VMs on `hosts` simulated hosts (and the real local
/// one), through the real API and CLI.
fn fleet(d: &Daemon, hosts: usize, vms: usize, samples: usize, round: usize) -> Result<Vec<Row>> {
    let (url, token) = d.client()?;
    let curl = |path: &str| -> Result<f64> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &d.ns,
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total}",
            ])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{url}{path}"))
            .output()?;
        if !out.status.success() {
            bail!("GET {path} failed");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    let what = |s: &str| format!("simulated fleet ({hosts} hosts, {vms} VMs): {s}");
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
            "RSS of `hostel up` with {vms} VMs and {hosts} connected simulated agents, after the above (MiB)"
        ),
        hostel: format!("{:.1}", d.rss_kib() as f64 / 1024.0),
        peer: "n/a".into(),
        ratio: "".into(),
        budget: "controller ≤ 60 MB at 10,000 VMs".into(),
    });
    Ok(rows)
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

struct Row {
    what: String,
    hostel: String,
    peer: String,
    ratio: String,
    budget: String,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut d = Daemon::start(&args.hostel)?;
    let lv = Libvirt::start()?;
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
        rows.extend(fleet(&d, hosts, vms, samples, round)?);
        had = vms;
    }
    let _ = sim.child.kill();
    let _ = sim.child.wait();
    // f. Slots for live migration, against plain QEMU's migrate, once Hostel has it.
    for what in ["downtime", "total time"] {
        rows.push(Row {
            what: format!("live migration {what}, tiny guest, without and with shared storage (s)"),
            hostel: "not yet: no live migration".into(),
            peer: "plain QEMU `migrate`: not yet".into(),
            ratio: "".into(),
            budget: "".into(),
        });
    }

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
             ![ratios](benchmarks.png)\n\n\
             libvirt {} runs in a network and mount namespace of the benchmark's own, as root with \
             `security_driver = \"none\"`; its domain is the plain QEMU guest in XML (q35, TCG, `-cpu max`, \
             256 MiB, the tiny image's kernel and initrd, serial to a file, balloon, pvpanic).\n\n\
             The simulated fleet is the one fake in these benchmarks: `hostel-simagent` (crates/hostel-bench/src/bin), \
             one process serving 1,000 SIMULATED agents, each on a port of its own with the agent API over mutual TLS \
             (a certificate from `hostel agent-cert`), the same wire types as `hostel agent`, no QEMU. The hosts \
             join through `hostel host add`; then 10,000 and then 100,000 running VM rows are written into the \
             daemon's SQLite database (VM i on simulated host i mod 1,000, which reports it running) and the daemon \
             is restarted, so that it reconnects to and reconciles every host. List, describe, create, start and \
             destroy then go through the real API, CLI and controller; describe, start and destroy reach the \
             VM's simulated agent. A list page is up to 1,000 VMs (the API's default and most). The VM counts \
             are the written rows (the create rows add a few). Not measured yet: live migration (no cluster yet).\n",
            args.runs,
            std::env::var("HOSTEL_BENCH_COMMAND").unwrap_or_else(|_| "bash bench/run".into()),
            lv.virsh(&["version", "--daemon"])
                .ok()
                .and_then(|v| v.lines().find(|l| l.contains("daemon")).map(|l| l.trim().to_string()))
                .unwrap_or_default()
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
