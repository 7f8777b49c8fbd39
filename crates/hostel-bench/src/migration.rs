//! Live migration (issue #15): downtime and total time of `hostel migrate` between two
//! real `hostel agent`s on this machine, against plain QEMU's `migrate` between two QEMU
//! processes the benchmark starts itself with the Hostel VM's own command line.
//!
//! It is long because both sides live here, each driven step by step so that they do the
//! same thing: the cluster of two agents, the plain QEMU pair with its own QMP and NBD
//! mirror, the busy guest on both, and the rows and their wording.
//!
//! The two agents share one network namespace of the benchmark's own, linked to the
//! daemon's by a veth pair (as in crates/hostel/tests/migration_faults.rs); both hosts
//! carry a tag, and every benchmark VM is created with `--host-tag` for it, so that it goes
//! to one of the two agents. The plain QEMUs run in that same namespace, over its
//! loopback, so both migrate on the same machine, between two processes, over TCP.
//!
//! Per guest size (256 MiB, 1 GiB) and storage (no disk; a 64 MiB disk mirrored over NBD):
//! - Hostel: `hostel migrate VM --to OTHER` back and forth, with TLS (the default) and
//!   with `--unencrypted`, taking turns going first; QEMU's `downtime` and `total-time`
//!   from the command's "done: N ms downtime, M ms in all" and the command's wall time.
//! - Plain QEMU: the same VM's argv (from its runtime.json, after Hostel's runs), source
//!   booted to the ready marker, then per run a target with `-incoming defer`, the same
//!   capabilities on both ends (auto-converge, events, multifd), `migrate-incoming`,
//!   `migrate`, `query-migrate` until completed; no TLS. With a disk, the disk is
//!   mirrored to the target's NBD export first, as Hostel's agent does it
//!   (`blockdev-mirror` in write-blocking mode, finished at `pause-before-switchover`).
//!
//! Then a busy guest (256 MiB, no disk) rewriting a tmpfs file nonstop, over the link as it
//! is and over one capped at 32 MiB/s (slower than the guest dirties): `hostel migrate`
//! with its defaults and with `--force-complete`, and plain QEMU with the same
//! capabilities and with none at all (QEMU's own defaults), each plain run given 60 s.

use crate::daemon::{run, wait_marker, wait_text, Daemon};
use crate::latency::in_netns;
use crate::{median, Row, READY};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The two agents: host name, listen address (both in the node namespace).
const AGENTS: [(&str, &str); 2] = [
    ("migbench-a", "10.254.0.2:8471"),
    ("migbench-b", "10.254.0.2:8472"),
];
const NODE_IP: &str = "10.254.0.2";
/// Every benchmark VM asks for this tag, which only the two agents' hosts carry.
const TAG: &str = "migbench";
/// The capabilities Hostel's controller asks both ends of every migration for.
const CAPS: [&str; 3] = ["auto-converge", "events", "multifd"];
/// What Hostel's sending agent adds, to finish the disks' mirrors while paused.
const PAUSE: &str = "pause-before-switchover";
/// The "not shared" VMs' disk.
const DISK: &str = "64M";
/// The most a busy guest's plain QEMU migration is given (Hostel's agent has its own
/// watchdog: 20 s without progress at the highest downtime limit).
const BUSY_CAP: Duration = Duration::from_secs(60);
/// QEMU's own `max-bandwidth` (MiB/s), which Hostel leaves as it is without `--bandwidth`.
const DEFAULT_BANDWIDTH_MIB: u64 = 128;
/// The slow link the busy guest also migrates over (MiB/s): slower than it dirties.
const SLOW_LINK_MIB: u64 = 32;
/// The busy guest rewrites this many MiB of a tmpfs file in place, over and over.
const BUSY_MIB: usize = 64;

/// A paragraph for docs/benchmarks.md: how the live migration rows are measured.
pub(crate) const NOTE: &str = "The live migration rows (issue #15) run two real \
`hostel agent`s on this machine, in one network namespace of the benchmark's own linked to \
the daemon's by a veth pair; the VM (the tiny image's kernel and initrd, `--no-network`, \
created with a host tag only the two agents carry) goes back and forth between them with \
`hostel migrate VM --to OTHER`, with TLS (Hostel's default: a certificate per migration for \
the memory and NBD streams) and with `--unencrypted`, taking turns going first. Downtime and \
total time are QEMU's own (`query-migrate` `downtime` and `total-time` on the sending side, \
which `hostel migrate` prints as \"done: N ms downtime, M ms in all\"); the \"command\" row \
is the `hostel migrate` process from spawn to exit (it polls its task every 200 ms), which \
includes starting the target's QEMU, the disk's mirror, the switch-over and the controller's \
commit. Plain QEMU is the same VM's command line (from its runtime.json) started by the \
benchmark as root in the same namespace: the source booted to the ready marker, then per run \
a new target with `-incoming defer`, `migrate-set-capabilities` auto-converge, events and \
multifd on both ends (what Hostel asks for), `migrate-incoming` and `migrate` over TCP on \
the namespace's loopback, `query-migrate` every 10 ms until `completed`, no TLS, QEMU's \
default downtime limit (300 ms) and bandwidth cap (128 MiB/s, which Hostel keeps too); its \
\"command\" is target spawn → target `running`. With a disk (`--disk 64M`: not shared, so \
mirrored to the target's NBD export) plain QEMU does what Hostel's agent does: \
`blockdev-mirror` in write-blocking mode until ready, `pause-before-switchover`, the mirror \
finished while paused, `migrate-continue`. \"No disk\": only memory moves, as for a VM \
whose disks are in a shared pool (the same files on both hosts). The ratio column is Hostel \
`--unencrypted` over plain QEMU (neither encrypts); the TLS figure beside it shows what \
encryption adds. The busy guest types, on its serial console (`hostel console` with the \
command piped in; plain QEMU: the chardev socket), a loop that rewrites a 64 MiB tmpfs file \
of non-zero data in place nonstop (`dd conv=notrunc`; zeros would be cheap for QEMU's \
zero-page detection), then migrates over the link as it is and over one capped at 32 MiB/s \
(`hostel migrate --unencrypted --bandwidth 32`; plain: `max-bandwidth`), slower than the \
guest dirties. Plain QEMU runs there are cancelled after 60 s. `hostel migrate \
--force-complete` runs are started with `--detach` and their task polled through the API \
every 50 ms: \"paused for\" is from the first poll whose message says the guest was paused \
to the first that sees the task ended, because QEMU's downtime starts at its own final \
stop and leaves out the time the agent had the guest paused before it.";

/// The two agents and their namespace. Dropping it ends the agents, anything left in the
/// namespace (their QEMUs, the plain QEMUs) and the namespace with its veth pair.
struct Cluster {
    node: String,
    dir: PathBuf,
    agents: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.node])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.node])
            .status();
    }
}

impl Cluster {
    fn start(d: &Daemon) -> Result<Cluster> {
        let node = format!("hostel-bench-mig-{}", std::process::id());
        let dir = d.dir.join("mig");
        std::fs::create_dir_all(&dir)?;
        run(Command::new("ip").args(["netns", "add", &node]))?;
        let mut c = Cluster {
            node,
            dir,
            agents: Vec::new(),
        };
        run(Command::new("ip").args(["-n", &c.node, "link", "set", "lo", "up"]))?;
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("hbma{id}"), format!("hbmb{id}"));
        run(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &b]))?;
        run(Command::new("ip").args(["link", "set", &a, "netns", &d.ns]))?;
        run(Command::new("ip").args(["link", "set", &b, "netns", &c.node]))?;
        for (ns, dev, ip) in [(&d.ns, &a, "10.254.0.1/30"), (&c.node, &b, "10.254.0.2/30")] {
            run(Command::new("ip").args(["-n", ns, "addr", "add", ip, "dev", dev]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
        }
        for (name, listen) in AGENTS {
            let tls = c.dir.join(format!("tls-{name}"));
            run(Command::new(&d.hostel)
                .args(["agent-cert", name, "--san", NODE_IP, "--data-dir"])
                .arg(d.data())
                .arg("--out")
                .arg(&tls)
                .stdout(Stdio::null()))?;
            let data = c.dir.join(format!("agent-{name}"));
            let log = std::fs::File::create(data.with_extension("log"))?;
            let mut child = Command::new("ip")
                .args(["netns", "exec", &c.node])
                .arg(&d.hostel)
                .args(["agent", "--name", name, "--listen", listen, "--tls-dir"])
                .arg(&tls)
                .arg("--data-dir")
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("the agent's stdout")?)
                .read_line(&mut line)?;
            c.agents.push(child);
            if !line.starts_with("https://") {
                bail!(
                    "hostel agent {name} printed {line:?}; see {}",
                    data.with_extension("log").display()
                );
            }
            d.cli(&["host", "add", line.trim()])?;
            d.cli(&["host", "set", name, "--tags", TAG])?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let hosts: Value = serde_json::from_str(&d.cli(&["host", "list", "-o", "json"])?)?;
            let up = hosts
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| AGENTS.iter().any(|(n, _)| h["name"] == *n) && h["online"] == true)
                .count();
            if up == AGENTS.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!("the two agents were not online within 60 s: {hosts}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// Ends the agents and removes their hosts from the daemon (best effort: a host
    /// that keeps records stays, offline, and gets no new VMs).
    fn finish(mut self, d: &Daemon) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        for (name, _) in AGENTS {
            if let Err(e) = d.cli(&["host", "remove", name]) {
                eprintln!("migration: host {name} stays, offline: {e:#}");
            }
        }
    }

    /// The runtime directory of VM `id` on agent `host`.
    fn run_dir(&self, host: &str, id: &str) -> PathBuf {
        self.dir.join(format!("agent-{host}")).join("run").join(id)
    }
}

/// The tiny image's kernel, initrd and command line, as files the agents read.
struct Boot {
    kernel: String,
    initrd: String,
    cmdline: String,
}

fn boot_of(d: &Daemon) -> Result<Boot> {
    d.cli(&[
        "create",
        "migprobe",
        "--image",
        "tiny",
        "--no-start",
        "--no-network",
    ])?;
    let v: Value = serde_json::from_str(&d.cli(&["describe", "migprobe", "-o", "json"])?)?;
    d.cli(&["delete", "migprobe"])?;
    let s = |k: &str| v["boot"][k].as_str().unwrap_or_default().to_string();
    Ok(Boot {
        kernel: s("kernel"),
        initrd: s("initrd"),
        cmdline: s("cmdline"),
    })
}

/// (host, id) of VM `name`.
fn placed(d: &Daemon, name: &str) -> Result<(String, String)> {
    let v: Value = serde_json::from_str(&d.cli(&["describe", name, "-o", "json"])?)?;
    let host = v["host"].as_str().unwrap_or_default().to_string();
    if !AGENTS.iter().any(|(n, _)| *n == host) {
        bail!("{name} is on host {host:?}, not one of the benchmark's agents");
    }
    Ok((host, v["id"].as_str().unwrap_or_default().to_string()))
}

fn other(host: &str) -> &'static str {
    if host == AGENTS[0].0 {
        AGENTS[1].0
    } else {
        AGENTS[0].0
    }
}

/// Creates a Hostel VM on one of the agents and waits for its ready marker.
fn hostel_vm(d: &Daemon, c: &Cluster, boot: &Boot, name: &str, mib: u64, disk: bool) -> Result<()> {
    let mem = format!("{mib}M");
    let mut args = vec![
        "create",
        name,
        "--memory",
        &mem,
        "--no-network",
        "--kernel",
        &boot.kernel,
        "--initrd",
        &boot.initrd,
        "--cmdline",
        &boot.cmdline,
        "--host-tag",
        TAG,
    ];
    if disk {
        args.extend(["--disk", DISK]);
    }
    d.cli(&args)?;
    let (host, id) = placed(d, name)?;
    wait_marker(
        &c.run_dir(&host, &id).join("console.log"),
        Duration::from_secs(180),
    )
}

/// How one migration went.
#[derive(Debug, Clone)]
struct Moved {
    /// QEMU's downtime and total time (ms); none when it did not complete.
    done: Option<(f64, f64)>,
    /// The command's (or the plain run's) wall time (s).
    wall: f64,
    /// Why it did not complete, or how it finished.
    why: String,
    /// Plain QEMU's own account of it (Hostel's QEMU answers only its agent).
    stats: Option<Stats>,
    /// How long Hostel's task said the guest was paused to finish (s): its message said
    /// so, to the task's end, seen by polls every 50 ms. QEMU's downtime leaves it out.
    paused: Option<f64>,
}

/// What a plain QEMU's `query-migrate` said along the way.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    /// Dirty bitmap syncs: the passes over memory.
    syncs: u64,
    /// The most auto-converge throttled the guest's vCPUs (%).
    throttle: u64,
    /// The fastest the guest dirtied memory (MiB/s, QEMU's `dirty-pages-rate`).
    dirty: f64,
    /// The stream's rate at the end (MiB/s, QEMU's `mbps`).
    rate: f64,
}

/// `hostel migrate NAME --to OTHER EXTRA…`, timed. With `--force-complete` it is
/// detached and its task watched instead, to see how long the guest stays paused.
fn hostel_migrate(d: &Daemon, name: &str, extra: &[&str]) -> Result<Moved> {
    let (host, _) = placed(d, name)?;
    let to = other(&host);
    let watch = extra.contains(&"--force-complete");
    let mut cmd = in_netns(&d.ns, &d.hostel)?;
    cmd.args(["migrate", name, "--to", to])
        .args(extra)
        .args(watch.then_some("--detach"))
        .env("HOSTEL_CONFIG", d.dir.join("client.toml"))
        .stdin(Stdio::null());
    let t = Instant::now();
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (ok, said, wall, paused) = if watch {
        if !out.status.success() {
            bail!("hostel migrate {name} {extra:?} --detach: {stderr}");
        }
        let (task, paused) = watch_task(d, stdout.trim())?;
        let wall = t.elapsed().as_secs_f64();
        let ok = task["state"] == "succeeded";
        let said = task[if ok { "message" } else { "error" }]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (ok, said, wall, paused)
    } else {
        let wall = t.elapsed().as_secs_f64();
        let ok = out.status.success();
        (ok, if ok { stdout } else { stderr }, wall, None)
    };
    if !ok {
        // "[error: vm-migrate VM from A to B failed: ]WHY; the VM keeps running here. …"
        let last = said.trim().lines().last().unwrap_or_default();
        let why = last.split_once("failed: ").map(|(_, w)| w).unwrap_or(last);
        return Ok(Moved {
            done: None,
            wall,
            why: why.split("; ").next().unwrap_or(why).to_string(),
            stats: None,
            paused: None,
        });
    }
    let done = parse_done(&said).with_context(|| format!("hostel migrate {name} said {said:?}"))?;
    let want = if extra.contains(&"--unencrypted") {
        ", unencrypted"
    } else {
        ", encrypted"
    };
    if !said.contains(want) {
        bail!("hostel migrate {name} {extra:?} said {said:?}: not{want}");
    }
    let (now, _) = placed(d, name)?;
    if now != to {
        bail!("{name} is on {now} after migrating to {to}");
    }
    let forced = said.contains(PAUSED);
    Ok(Moved {
        done: Some(done),
        wall,
        why: if forced { PAUSED.into() } else { String::new() },
        stats: None,
        paused: paused.filter(|_| forced),
    })
}

/// Polls task `id` through the API every 50 ms until it ends: the task, and how long
/// after its message first said the guest was paused it was seen ended (s).
fn watch_task(d: &Daemon, id: &str) -> Result<(Value, Option<f64>)> {
    let (url, token) = d.client()?;
    let addr = url
        .strip_prefix("http://")
        .with_context(|| format!("the API is at {url}: only http:// is watched here"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut paused_at = None;
    loop {
        let body = http_get(&d.ns, addr, &token, &format!("/api/v1/tasks/{id}"))?;
        let task: Value =
            serde_json::from_str(&body).with_context(|| format!("task {id}: {body:?}"))?;
        let now = Instant::now();
        if task["state"] != "running" {
            let paused = paused_at.map(|p| now.duration_since(p).as_secs_f64());
            return Ok((task, paused));
        }
        if paused_at.is_none()
            && task["message"]
                .as_str()
                .is_some_and(|m| m.contains("paused"))
        {
            paused_at = Some(now);
        }
        if now > deadline {
            bail!("task {id} still running after 600 s: {task}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 GET with the admin token from inside namespace `ns`: the body of a 200.
fn http_get(ns: &str, addr: &str, token: &str, path: &str) -> Result<String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    let (ns, addr) = (format!("/run/netns/{ns}"), addr.to_string());
    let answer = std::thread::spawn(move || -> Result<Vec<u8>> {
        nix::sched::setns(
            std::fs::File::open(&ns)?,
            nix::sched::CloneFlags::CLONE_NEWNET,
        )?;
        let mut c = std::net::TcpStream::connect(&addr)?;
        c.write_all(req.as_bytes())?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)?;
        Ok(answer)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the HTTP client thread panicked"))??;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(body.to_string());
    }
    // Chunked: SIZE\r\nDATA\r\n… until a chunk of size 0.
    let (mut out, mut rest) = (String::new(), body);
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    Ok(out)
}

/// What `hostel migrate` says of a migration it finished by pausing the guest.
const PAUSED: &str = "paused to finish";

/// "…done: N ms downtime, M ms in all…" → (N, M).
fn parse_done(s: &str) -> Option<(f64, f64)> {
    let rest = &s[s.find("done: ")? + "done: ".len()..];
    let mut it = rest.split(" ms ");
    let downtime = it.next()?.trim().parse().ok()?;
    let total = it.next()?.strip_prefix("downtime, ")?.trim().parse().ok()?;
    Some((downtime, total))
}

/// A QMP connection of the benchmark's own (plain QEMU only: the agent holds a Hostel
/// VM's). Events are read past.
struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &Path, child: &mut Child) -> Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let s = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                bail!("QEMU's QMP socket {} did not open", path.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut q = Qmp {
            w: s.try_clone()?,
            r: BufReader::new(s),
        };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting)?;
        q.exec("qmp_capabilities", Value::Null)?;
        Ok(q)
    }

    fn exec(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let mut req = json!({ "execute": cmd });
        if !args.is_null() {
            req["arguments"] = args;
        }
        self.w.write_all(format!("{req}\n").as_bytes())?;
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                bail!("QMP closed during {cmd}");
            }
            let v: Value = serde_json::from_str(&line)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {}", e["desc"].as_str().unwrap_or_default());
            }
        }
    }

    /// Turns capabilities `on` on and the others the benchmark uses off (a QEMU keeps
    /// them from the migration that brought its guest).
    fn caps(&mut self, on: &[&str]) -> Result<()> {
        let list: Vec<Value> = CAPS
            .iter()
            .chain(&[PAUSE])
            .map(|c| json!({"capability": c, "state": on.contains(c)}))
            .collect();
        self.exec("migrate-set-capabilities", json!({ "capabilities": list }))?;
        Ok(())
    }
}

/// A plain QEMU's serial console (its chardev socket): everything it printed, and a way
/// to type.
struct Serial {
    w: UnixStream,
    seen: Arc<Mutex<String>>,
}

impl Serial {
    fn open(path: &Path) -> Result<Serial> {
        let s = UnixStream::connect(path)
            .with_context(|| format!("the serial socket {}", path.display()))?;
        let seen = Arc::new(Mutex::new(String::new()));
        let (mut r, into) = (s.try_clone()?, seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Serial { w: s, seen })
    }

    fn wait(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.seen.lock().unwrap().contains(needle) {
            if Instant::now() > deadline {
                bail!("no {needle:?} on the plain QEMU's serial within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// A plain QEMU of the benchmark's own.
struct Plain {
    child: Child,
    qmp: Qmp,
    serial: Serial,
}

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Hostel VM's command line, to start plain QEMUs with.
struct Argv {
    argv: Vec<String>,
    /// The VM's runtime directory, which each plain QEMU replaces by its own.
    run_dir: String,
    /// The VM's disk file, which each plain QEMU replaces by its own.
    disk: Option<String>,
}

impl Argv {
    fn of(c: &Cluster, d: &Daemon, name: &str) -> Result<Argv> {
        let (host, id) = placed(d, name)?;
        let dir = c.run_dir(&host, &id);
        let rt: Value = serde_json::from_slice(
            &std::fs::read(dir.join("runtime.json"))
                .with_context(|| format!("{name}'s runtime.json"))?,
        )?;
        let mut argv: Vec<String> = serde_json::from_value(rt["argv"].clone())?;
        // A VM that came by migration was started waiting for it.
        if let Some(i) = argv.iter().position(|a| a == "-incoming") {
            argv.drain(i..(i + 2).min(argv.len()));
        }
        let disk = argv.iter().find_map(|a| {
            let rest = a.strip_prefix("driver=file,filename=")?;
            a.contains("node-name=file0")
                .then(|| rest.split(",node-name=").next().unwrap_or(rest).to_string())
        });
        Ok(Argv {
            argv,
            run_dir: dir.display().to_string(),
            disk,
        })
    }

    /// Starts a plain QEMU in namespace `ns` with this command line in `dir` (and its
    /// disk `dir/disk.qcow2`, a new blank one), waiting for a migration with `incoming`.
    fn start(&self, ns: &str, dir: &Path, incoming: bool) -> Result<Plain> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mine = dir.display().to_string();
        let disk = dir.join("disk.qcow2");
        if self.disk.is_some() {
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&disk)
                .arg(DISK))?;
        }
        let mut argv: Vec<String> = self
            .argv
            .iter()
            .map(|a| {
                let a = a.replace(&self.run_dir, &mine);
                match &self.disk {
                    Some(orig) => a.replace(orig, &disk.display().to_string()),
                    None => a,
                }
            })
            .collect();
        if incoming {
            argv.extend(["-incoming".into(), "defer".into()]);
        }
        let mut child = in_netns(ns, Path::new(&argv[0]))?
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.err"))?)
            .spawn()?;
        let qmp = match Qmp::connect(&dir.join("qmp.sock"), &mut child) {
            Ok(q) => q,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(dir.join("qemu.err")).unwrap_or_default();
                return Err(e.context(err));
            }
        };
        let serial = match Serial::open(&dir.join("serial.sock")) {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Plain { child, qmp, serial })
    }
}

/// A free TCP port on namespace `ns`'s loopback.
fn free_port(ns: &str) -> Result<u16> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<u16> {
        nix::sched::setns(
            std::fs::File::open(&path)?,
            nix::sched::CloneFlags::CLONE_NEWNET,
        )?;
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the port thread panicked"))?
}

const MIB: f64 = 1048576.0;

/// Migrates plain QEMU `src` to a new one started in `dir` with the same command line:
/// the target (running the guest now), and how it went. With `cap`, a migration still
/// going after that long is cancelled: the source runs on and the target goes.
fn plain_migrate(
    ns: &str,
    argv: &Argv,
    src: &mut Plain,
    dir: &Path,
    caps: &[&str],
    cap: Option<Duration>,
    bandwidth_mib: Option<u64>,
) -> Result<(Option<Plain>, Moved)> {
    let t = Instant::now();
    let mut dst = argv.start(ns, dir, true)?;
    let uri = format!("tcp:127.0.0.1:{}", free_port(ns)?);
    dst.qmp.caps(caps)?;
    dst.qmp.exec("migrate-incoming", json!({ "uri": uri }))?;
    let disk = argv.disk.is_some();
    if disk {
        let nbd = free_port(ns)?.to_string();
        dst.qmp.exec(
            "nbd-server-start",
            json!({"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": nbd}}}),
        )?;
        dst.qmp.exec(
            "block-export-add",
            json!({"type": "nbd", "id": "disk0", "node-name": "disk0", "writable": true}),
        )?;
        src.qmp.exec(
            "blockdev-add",
            json!({"driver": "nbd", "node-name": "mig0",
                "server": {"type": "inet", "host": "127.0.0.1", "port": nbd},
                "export": "disk0"}),
        )?;
        src.qmp.exec(
            "blockdev-mirror",
            json!({"job-id": "mig0", "device": "disk0", "target": "mig0", "sync": "top",
                "copy-mode": "write-blocking", "auto-dismiss": false}),
        )?;
        loop {
            let j = mirror_job(&mut src.qmp)?.context("the disk's mirror job ended early")?;
            if j["ready"] == true {
                break;
            }
            if j["status"] == "concluded" || j["error"].is_string() {
                bail!("the disk's mirror failed: {j}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut src_caps = caps.to_vec();
    if disk {
        src_caps.push(PAUSE);
    }
    src.qmp.caps(&src_caps)?;
    src.qmp.exec(
        "migrate-set-parameters",
        json!({"max-bandwidth": bandwidth_mib.unwrap_or(DEFAULT_BANDWIDTH_MIB) << 20}),
    )?;
    src.qmp.exec("migrate", json!({ "uri": uri }))?;
    let mut st = Stats::default();
    let m = loop {
        std::thread::sleep(Duration::from_millis(10));
        let m = src.qmp.exec("query-migrate", Value::Null)?;
        let ram = &m["ram"];
        st.dirty = st.dirty.max(
            ram["dirty-pages-rate"].as_f64().unwrap_or(0.0)
                * ram["page-size"].as_f64().unwrap_or(4096.0)
                / MIB,
        );
        st.throttle = st
            .throttle
            .max(m["cpu-throttle-percentage"].as_u64().unwrap_or(0));
        st.syncs = ram["dirty-sync-count"].as_u64().unwrap_or(st.syncs);
        st.rate = ram["mbps"].as_f64().unwrap_or(0.0) * 1e6 / 8.0 / MIB;
        match m["status"].as_str().unwrap_or("") {
            "completed" => break m,
            s @ ("failed" | "cancelled") => {
                bail!("the plain migration {s}: {}", m["error-desc"])
            }
            "pre-switchover" => {
                // Paused: the mirror takes its last writes and ends, then on.
                src.qmp
                    .exec("block-job-cancel", json!({"device": "mig0"}))?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while let Some(j) = mirror_job(&mut src.qmp)? {
                    if j["status"] == "concluded" {
                        src.qmp.exec("job-dismiss", json!({"id": "mig0"}))?;
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("the disk's mirror did not end within 30 s: {j}");
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                src.qmp.exec("blockdev-del", json!({"node-name": "mig0"}))?;
                src.qmp
                    .exec("migrate-continue", json!({"state": "pre-switchover"}))?;
            }
            _ => {}
        }
        if let Some(cap) = cap {
            if t.elapsed() > cap {
                let wall = t.elapsed().as_secs_f64();
                src.qmp.exec("migrate_cancel", Value::Null)?;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let s = src.qmp.exec("query-migrate", Value::Null)?;
                    if matches!(s["status"].as_str(), Some("cancelled" | "failed")) {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("the plain migration did not cancel within 30 s: {s}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let moved = Moved {
                    done: None,
                    wall,
                    why: format!(
                        "cancelled at {} s with {} MiB still left",
                        cap.as_secs(),
                        m["ram"]["remaining"].as_u64().unwrap_or(0) >> 20
                    ),
                    stats: Some(st),
                    paused: None,
                };
                return Ok((None, moved));
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while dst.qmp.exec("query-status", Value::Null)?["status"] != "running" {
        if Instant::now() > deadline {
            bail!("the plain target did not run within 30 s of the migration's end");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = t.elapsed().as_secs_f64();
    if disk {
        dst.qmp.exec("nbd-server-stop", Value::Null)?;
    }
    let moved = Moved {
        done: Some((
            m["downtime"].as_f64().unwrap_or(0.0),
            m["total-time"].as_f64().unwrap_or(0.0),
        )),
        wall,
        why: String::new(),
        stats: Some(st),
        paused: None,
    };
    Ok((Some(dst), moved))
}

/// The disk's mirror job (`mig0`), if there is one.
fn mirror_job(q: &mut Qmp) -> Result<Option<Value>> {
    let jobs = q.exec("query-block-jobs", Value::Null)?;
    Ok(jobs
        .as_array()
        .and_then(|a| a.iter().find(|j| j["device"] == "mig0"))
        .cloned())
}

/// Plain QEMU directories, one per process, never reused.
struct Dirs {
    base: PathBuf,
    n: usize,
}

impl Dirs {
    fn next(&mut self) -> PathBuf {
        self.n += 1;
        self.base.join(format!("p{}", self.n))
    }
}

/// Runs of each idle guest's migration (Hostel's downtime varies by up to its agent's
/// 200 ms poll, so a few more than 3).
const IDLE_RUNS: usize = 5;
/// Runs of each busy guest's migration (up to a minute each).
const BUSY_RUNS: usize = 3;

/// The live migration rows; one run of each in the quick run.
pub(crate) fn rows(d: &Daemon, quick: bool) -> Result<Vec<Row>> {
    let c = Cluster::start(d)?;
    let (idle, busy) = if quick {
        (1, 1)
    } else {
        (IDLE_RUNS, BUSY_RUNS)
    };
    let res = measure(d, &c, idle, busy);
    c.finish(d);
    res
}

fn measure(d: &Daemon, c: &Cluster, runs: usize, busy_runs: usize) -> Result<Vec<Row>> {
    let boot = boot_of(d)?;
    let mut dirs = Dirs {
        base: c.dir.clone(),
        n: 0,
    };
    let mut rows = Vec::new();
    for mib in [256u64, 1024] {
        for disk in [false, true] {
            let t = Instant::now();
            let name = format!("mig{mib}{}", if disk { "d" } else { "n" });
            hostel_vm(d, c, &boot, &name, mib, disk)?;
            let (mut tls, mut tcp) = (Vec::new(), Vec::new());
            for i in 0..runs {
                // Each goes first every other run.
                let order = if i % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for enc in order {
                    let extra: &[&str] = if enc { &[] } else { &["--unencrypted"] };
                    let m = hostel_migrate(d, &name, extra)?;
                    if m.done.is_none() {
                        bail!("hostel migrate {name} {extra:?}: {}", m.why);
                    }
                    (if enc { &mut tls } else { &mut tcp }).push(m);
                }
            }
            let argv = Argv::of(c, d, &name)?;
            d.cli(&["destroy", &name])?;
            d.cli(&["delete", &name])?;
            let mut src = argv.start(&c.node, &dirs.next(), false)?;
            src.serial.wait(READY, Duration::from_secs(180))?;
            let mut plain = Vec::new();
            for _ in 0..runs {
                let (dst, m) =
                    plain_migrate(&c.node, &argv, &mut src, &dirs.next(), &CAPS, None, None)?;
                plain.push(m);
                src = dst.context("a plain migration without a cap ends with a target")?;
            }
            drop(src);
            eprintln!(
                "migration: {name}: {:.0} s; Hostel TLS {tls:?}, --unencrypted {tcp:?}, plain {plain:?}",
                t.elapsed().as_secs_f64()
            );
            rows.extend(idle_rows(mib, disk, &tls, &tcp, &plain));
        }
    }
    rows.extend(busy(d, c, &boot, busy_runs, &mut dirs)?);
    Ok(rows)
}

fn med(v: &[Moved], f: impl Fn(&Moved) -> Option<f64>) -> Option<f64> {
    let mut x: Vec<f64> = v.iter().filter_map(f).collect();
    (!x.is_empty()).then(|| median(&mut x))
}

fn downtime(m: &Moved) -> Option<f64> {
    m.done.map(|d| d.0)
}

fn total(m: &Moved) -> Option<f64> {
    m.done.map(|d| d.1)
}

fn wall(m: &Moved) -> Option<f64> {
    Some(m.wall)
}

fn ratio(h: Option<f64>, p: Option<f64>) -> String {
    match (h, p) {
        (Some(h), Some(p)) if p > 0.0 => format!("{:.3}", h / p),
        _ => String::new(),
    }
}

fn size(mib: u64) -> String {
    if mib >= 1024 {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

fn idle_rows(mib: u64, disk: bool, tls: &[Moved], tcp: &[Moved], plain: &[Moved]) -> Vec<Row> {
    // Up to the first comma or parenthesis, a label of its own (the plot's).
    let storage = if disk {
        "with a 64 MiB disk (not shared: mirrored over NBD)"
    } else {
        "without a disk (only memory moves, as with a shared pool)"
    };
    let what = |m: &str| {
        let (metric, detail) = m.split_once(", ").unwrap_or((m, ""));
        format!(
            "live migration {metric} of an idle {} guest {storage}, {detail}",
            size(mib)
        )
    };
    let n = |v: &[Moved]| v.len();
    let f = |x: Option<f64>, scale: f64, digits: usize| {
        x.map(|x| format!("{:.*}", digits, x * scale))
            .unwrap_or_else(|| "n/a".into())
    };
    let row =
        |m: &str, get: fn(&Moved) -> Option<f64>, scale: f64, digits: usize, peer: &str| Row {
            what: what(m),
            hostel: format!(
                "{} `--unencrypted`; {} TLS",
                f(med(tcp, get), scale, digits),
                f(med(tls, get), scale, digits)
            ),
            peer: format!("{} ({peer})", f(med(plain, get), scale, digits)),
            ratio: ratio(med(tcp, get), med(plain, get)),
            budget: String::new(),
        };
    let runs = n(tls).min(n(tcp)).min(n(plain));
    vec![
        row(
            &format!("downtime, QEMU's (ms, {runs} runs)"),
            downtime,
            1.0,
            0,
            "plain QEMU `migrate`, no TLS",
        ),
        row(
            &format!("total time, QEMU's `total-time` (ms, {runs} runs)"),
            total,
            1.0,
            0,
            "plain QEMU `migrate`, no TLS",
        ),
        row(
            &format!("command time, `hostel migrate` spawn → exit (s, {runs} runs)"),
            wall,
            1.0,
            2,
            "plain QEMU, target spawn → target running, no TLS",
        ),
    ]
}

/// What the busy guest types: a 64 MiB file of non-zero data in /tmp (tmpfs), then a
/// loop that rewrites it in place, nonstop, in the background.
fn dirty_cmd() -> String {
    format!(
        "cd /tmp && yes 0123456789abcdef | head -c 1048576 > c && \
         for i in $(seq {BUSY_MIB}); do cat c; done > x && rm c && echo DIRTYING-\"ON\"; \
         (while :; do dd if=x of=x bs=1M conv=notrunc 2>/dev/null; done) &\n"
    )
}

const DIRTYING: &str = "DIRTYING-ON";

/// How many converged (and were paused to finish), and for those that did not, how
/// long they tried and why they stopped.
fn summary(v: &[Moved]) -> String {
    let ok = v.iter().filter(|m| m.done.is_some()).count();
    let forced = v.iter().filter(|m| m.why == PAUSED).count();
    let mut s = match ok {
        0 => format!("none of {} converged", v.len()),
        _ => format!("{ok} of {} converged", v.len()),
    };
    if forced > 0 {
        s += &format!(", {forced} of them by pausing the guest");
        if let Some(p) = med(v, |m| m.paused) {
            s += &format!(
                " (paused for {p:.1} s, median, by the task's messages polled every 50 ms; \
                 QEMU's downtime does not count it)"
            );
        }
    }
    if ok < v.len() {
        let failed: Vec<Moved> = v.iter().filter(|m| m.done.is_none()).cloned().collect();
        s += &match failed.len() {
            1 => format!("; gave up after {:.1} s: {}", failed[0].wall, failed[0].why),
            _ => format!(
                "; {} after {:.1} s (median; the first: {})",
                if ok == 0 {
                    "each gave up"
                } else {
                    "the others gave up"
                },
                med(&failed, wall).unwrap_or(0.0),
                failed[0].why
            ),
        };
    }
    s
}

/// A cell: the median of the runs that converged, scaled, and how many did.
fn cell(v: &[Moved], get: fn(&Moved) -> Option<f64>, scale: f64, digits: usize) -> String {
    match med(v, get) {
        Some(x) => format!("{:.*} ({})", digits, x * scale, summary(v)),
        None => summary(v),
    }
}

/// A cell with both: time to converge (s) and downtime (ms), and how many converged.
fn both(v: &[Moved]) -> String {
    match (med(v, total), med(v, downtime)) {
        (Some(t), Some(d)) => format!("{:.1} s, {d:.0} ms ({})", t / 1e3, summary(v)),
        _ => summary(v),
    }
}

/// What plain QEMU said about its runs: passes over memory, throttling, rates.
fn plain_stats(v: &[Moved]) -> String {
    let st: Vec<Stats> = v.iter().filter_map(|m| m.stats).collect();
    let syncs = |f: fn(u64, u64) -> u64| st.iter().map(|s| s.syncs).reduce(f).unwrap_or(0);
    let (lo, hi) = (syncs(u64::min), syncs(u64::max));
    let passes = if lo == hi {
        format!("{lo}")
    } else {
        format!("{lo}–{hi}")
    };
    let throttle = match st.iter().map(|s| s.throttle).max().unwrap_or(0) {
        0 => "never throttled".to_string(),
        t => format!("throttled by auto-converge up to {t}%"),
    };
    format!(
        "{passes} passes over memory, {throttle}, the stream at {:.0} MiB/s (QEMU's `mbps`)",
        median(&mut st.iter().map(|s| s.rate).collect::<Vec<_>>()),
    )
}

/// A busy guest's migrations over one link.
#[derive(Default)]
struct Busy {
    /// Hostel: its defaults (TLS), `--unencrypted`, `--force-complete`.
    tls: Vec<Moved>,
    tcp: Vec<Moved>,
    force: Vec<Moved>,
    /// Plain QEMU: Hostel's capabilities, and none.
    same: Vec<Moved>,
    bare: Vec<Moved>,
}

fn busy(d: &Daemon, c: &Cluster, boot: &Boot, runs: usize, dirs: &mut Dirs) -> Result<Vec<Row>> {
    let t = Instant::now();
    let name = "migbusy";
    let mib = 256;
    hostel_vm(d, c, boot, name, mib, false)?;
    let mut con = in_netns(&d.ns, &d.hostel)?;
    let out = con
        .args(["console", name])
        .env("HOSTEL_CONFIG", d.dir.join("client.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin
                .take()
                .expect("piped stdin")
                .write_all(dirty_cmd().as_bytes())?;
            ch.wait_with_output()
        })?;
    if !out.status.success() {
        bail!(
            "hostel console {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (host, id) = placed(d, name)?;
    wait_text(
        &c.run_dir(&host, &id).join("console.log"),
        DIRTYING,
        Duration::from_secs(120),
    )?;
    // The link as it is, then one slower than the guest dirties: there only the
    // comparable `--unencrypted`, and `--force-complete` with it.
    let (mut fast, mut slow) = (Busy::default(), Busy::default());
    let slow_bw = SLOW_LINK_MIB.to_string();
    for i in 0..runs {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for enc in order {
            let extra: &[&str] = if enc { &[] } else { &["--unencrypted"] };
            (if enc { &mut fast.tls } else { &mut fast.tcp }).push(hostel_migrate(d, name, extra)?);
        }
        fast.force
            .push(hostel_migrate(d, name, &["--force-complete"])?);
        let slowly = ["--unencrypted", "--bandwidth", &slow_bw];
        slow.tcp.push(hostel_migrate(d, name, &slowly)?);
        slow.force.push(hostel_migrate(
            d,
            name,
            &[&slowly[..], &["--force-complete"]].concat(),
        )?);
    }
    let argv = Argv::of(c, d, name)?;
    d.cli(&["destroy", name])?;
    d.cli(&["delete", name])?;

    let mut src = argv.start(&c.node, &dirs.next(), false)?;
    src.serial.wait(READY, Duration::from_secs(180))?;
    src.serial.w.write_all(dirty_cmd().as_bytes())?;
    src.serial.wait(DIRTYING, Duration::from_secs(120))?;
    for (b, bw) in [(&mut fast, None), (&mut slow, Some(SLOW_LINK_MIB))] {
        for i in 0..runs + 1 {
            // The last run with QEMU's own defaults: no capabilities at all.
            let caps: &[&str] = if i < runs { &CAPS } else { &[] };
            let (dst, m) = plain_migrate(
                &c.node,
                &argv,
                &mut src,
                &dirs.next(),
                caps,
                Some(BUSY_CAP),
                bw,
            )?;
            (if i < runs { &mut b.same } else { &mut b.bare }).push(m);
            if let Some(dst) = dst {
                src = dst;
            }
        }
    }
    drop(src);
    for (what, b) in [("as it is", &fast), ("slow", &slow)] {
        eprintln!(
            "migration: busy, link {what}: Hostel TLS {:?}, --unencrypted {:?}, --force-complete \
             {:?}, plain {:?}, QEMU defaults {:?}",
            b.tls, b.tcp, b.force, b.same, b.bare
        );
    }
    eprintln!("migration: busy: {:.0} s", t.elapsed().as_secs_f64());
    let dirty = [&fast, &slow]
        .iter()
        .flat_map(|b| b.same.iter().chain(&b.bare))
        .filter_map(|m| m.stats)
        .map(|s| s.dirty)
        .fold(0.0, f64::max);
    let guest = format!(
        "(no disk, rewriting a {BUSY_MIB} MiB tmpfs file in place nonstop: up to {dirty:.0} \
         MiB/s dirtied while it migrates, by plain QEMU's count)"
    );
    let mut rows = busy_rows(
        &size(mib),
        &guest,
        (
            "the link as it is",
            &format!("(QEMU's default {DEFAULT_BANDWIDTH_MIB} MiB/s cap)"),
        ),
        "",
        &fast,
        runs,
    );
    rows.extend(busy_rows(
        &size(mib),
        &guest,
        (
            &format!("a {SLOW_LINK_MIB} MiB/s link"),
            &format!(
                "(slower than the guest dirties: `--bandwidth {SLOW_LINK_MIB}`; plain: \
                 `max-bandwidth`)"
            ),
        ),
        &format!(" --unencrypted --bandwidth {SLOW_LINK_MIB}"),
        &slow,
        runs,
    ));
    Ok(rows)
}

/// The rows of a busy guest's migrations over one link.
/// Each row's text starts with a label of its own, up to the first comma or parenthesis
/// (the plot's): what, of a busy guest of `size`, over which link (`link.0`).
fn busy_rows(
    size: &str,
    guest: &str,
    link: (&str, &str),
    flags: &str,
    b: &Busy,
    runs: usize,
) -> Vec<Row> {
    let what = |metric: &str| {
        format!(
            "live migration {metric} of a busy {size} guest over {} {guest} {}",
            link.0, link.1
        )
    };
    // Only runs that all converged have a time to compare.
    let all = |v: &[Moved], get: fn(&Moved) -> Option<f64>| {
        if v.iter().all(|m| m.done.is_some()) {
            med(v, get)
        } else {
            None
        }
    };
    let hostel = |get: fn(&Moved) -> Option<f64>, scale: f64, digits: usize| {
        let tcp = cell(&b.tcp, get, scale, digits);
        if b.tls.is_empty() {
            tcp
        } else {
            format!(
                "{tcp} `--unencrypted`; {} TLS",
                cell(&b.tls, get, scale, digits)
            )
        }
    };
    let peer =
        |v: &[Moved], get: fn(&Moved) -> Option<f64>, scale: f64, digits: usize, how: &str| {
            format!(
                "{} (plain QEMU `migrate`, {how}, no TLS, {} s at most; {})",
                cell(v, get, scale, digits),
                BUSY_CAP.as_secs(),
                plain_stats(v)
            )
        };
    let same_caps = "the same capabilities";
    vec![
        Row {
            what: format!(
                "{}, QEMU's `total-time`, `hostel migrate{flags}` (max downtime 300 ms, gives \
                 up after 20 s without progress) (s, {runs} runs)",
                what("time to converge")
            ),
            hostel: hostel(total, 1e-3, 1),
            peer: peer(&b.same, total, 1e-3, 1, same_caps),
            ratio: ratio(all(&b.tcp, total), all(&b.same, total)),
            budget: String::new(),
        },
        Row {
            what: format!(
                "{}, QEMU's, `hostel migrate{flags}` (ms, {runs} runs)",
                what("downtime")
            ),
            hostel: hostel(downtime, 1.0, 0),
            peer: peer(&b.same, downtime, 1.0, 0, same_caps),
            ratio: ratio(all(&b.tcp, downtime), all(&b.same, downtime)),
            budget: String::new(),
        },
        Row {
            what: format!(
                "{}, `hostel migrate{flags} --force-complete`: time to converge (s) and \
                 downtime (ms), against plain QEMU `migrate` with QEMU's own defaults, no \
                 capabilities ({runs} runs; 1 run)",
                what("time and downtime when forced")
            ),
            hostel: both(&b.force),
            peer: format!(
                "{} (plain QEMU `migrate`, no capabilities, no TLS, {} s at most; {})",
                both(&b.bare),
                BUSY_CAP.as_secs(),
                plain_stats(&b.bare)
            ),
            ratio: String::new(),
            budget: String::new(),
        },
    ]
}
