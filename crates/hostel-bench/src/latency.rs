//! create → QEMU running: the control plane's own overhead, which the guest's boot hides in
//! the create → ready-marker rows (issue #12). Each run, in turn: `hostel create` through the
//! real CLI and the same create as one raw HTTP request to the API (each first every other
//! run), QEMU alone with the CLI's VM's command line, and `virsh create` of the plain QEMU
//! guest; each guest is destroyed (and Hostel's deleted) right after.
//!
//! What "running" is, and how it is seen:
//! - A Hostel VM's QMP socket takes one client and the agent holds it from QEMU's start, so
//!   the benchmark cannot ask that QEMU itself. `hostel create` returns after the API
//!   answered, and the API answers a create after the agent's start, whose last step is
//!   QMP `query-status` answering `running` (hostel-agent `vm.rs`). That return is timed;
//!   `describe` → `running` is checked after it, untimed.
//! - `virsh create` returns once libvirt has resumed the domain it started paused (`-S`,
//!   then `cont`). Its return is timed; `virsh domstate` → `running` is checked after it,
//!   untimed.
//! - QEMU's own start-up, for scale: the Hostel VM's own command line (its runtime.json)
//!   started by the benchmark, timed from exec until QMP `query-status` says `running`,
//!   asked by the benchmark's own QMP client on that QEMU's socket.
//! - For both, independently of what either tool says: the first moment a `CPU n/…` thread
//!   of the new QEMU (both name their threads, `debug-threads=on`) has spent 1 ms on a CPU,
//!   from `/proc/PID/task/TID/schedstat`, polled about every millisecond from the
//!   benchmark. A vCPU that waits (paused, or before the machine is started) uses well
//!   under 1 ms; one executing the guest crosses it within a millisecond or two.

use crate::daemon::Daemon;
use crate::libvirt::Libvirt;
use crate::Row;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A paragraph for docs/benchmarks.md: what the create → QEMU running rows time.
pub(crate) const NOTE: &str =
    "The create → QEMU running rows (issue #12) take the guest's boot out: each \
run, in turn, `hostel create NAME --image tiny --memory 256M --no-network` (the real CLI, \
spawned straight into the daemon's network namespace, as `virsh` is spawned straight), the \
same create as one raw `POST /api/v1/vms` with the admin token from the client config (the \
bench's own HTTP/1.1 client, one connection, no process started; the two take turns going \
first), and `virsh create` of the libvirt domain above; every guest is destroyed (and Hostel's deleted) right after. \
\"command returned\" times the CLI process or the `virsh` process from spawn to exit: \
`hostel create` returns after the API answered, which is after the agent's QMP \
`query-status` said `running` (the agent holds the VM's only QMP connection, so the \
benchmark cannot ask QEMU itself); `virsh create` returns after libvirt's `cont`. Untimed \
checks after each: `describe` says `running`, `virsh domstate` says `running`. \"vCPU \
executing\" is the same moment seen from outside both: the first poll (about every \
millisecond) at which a `CPU n/…` thread of the new QEMU has spent 1 ms on a CPU \
(`/proc/PID/task/TID/schedstat`). \"QEMU alone\" starts the Hostel VM's own command \
line (from its runtime.json) from the benchmark, as root, and times exec → QMP `query-status` \
says `running` on that QEMU's socket (`qmp_capabilities`, then `query-status` about every \
millisecond): QEMU's own start-up, which any create that starts a QEMU pays. Each timed \
step starts after a 200 ms pause (the step right after `virsh destroy` took about 14 ms longer \
without it). p99 is the nearest rank over the row's runs (at 100 runs, the second slowest).";

/// Runs of the create → QEMU running rows in a full run: enough for a p99.
pub(crate) const FULL_RUNS: usize = 100;

struct Samples {
    cli: Vec<f64>,
    cli_vcpu: Vec<f64>,
    post: Vec<f64>,
    virsh: Vec<f64>,
    virsh_vcpu: Vec<f64>,
    version: Vec<f64>,
    qemu: Vec<f64>,
}

/// The create → QEMU running rows, over `runs` runs.
pub(crate) fn rows(d: &Daemon, lv: &Libvirt, runs: usize) -> Result<Vec<Row>> {
    let (url, token) = d.client()?;
    let addr = url
        .strip_prefix("http://")
        .with_context(|| format!("the API is at {url}: only http:// is measured here"))?
        .to_string();
    let img = d.data().join("images/tiny");
    let run_dir = d.data().join("run");
    let mut s = Samples {
        cli: Vec::new(),
        cli_vcpu: Vec::new(),
        post: Vec::new(),
        virsh: Vec::new(),
        virsh_vcpu: Vec::new(),
        version: Vec::new(),
        qemu: Vec::new(),
    };
    let mut cmdline: Option<String> = None;
    for i in 0..runs {
        // a. The CLI and b. the same create as one raw HTTP request (the daemon's own
        // handling), in turns: each goes first every other run.
        let (cli, post) = (format!("lat{i}"), format!("latpost{i}"));
        let (a, p) = if i % 2 == 0 {
            let a = cli_create(d, &run_dir, &cli)?;
            (a, post_create(d, &addr, &token, &run_dir, &post)?)
        } else {
            let p = post_create(d, &addr, &token, &run_dir, &post)?;
            (cli_create(d, &run_dir, &cli)?, p)
        };
        s.cli.push(a.took);
        s.cli_vcpu.push(a.vcpu);
        s.post.push(p);
        cmdline.get_or_insert(a.cmdline);

        // a2. QEMU alone, with the command line the agent gave the CLI's VM, started by
        // the benchmark (as root, without the agent's user switch): QEMU's own start-up.
        let mine = d.dir.join("latqemu");
        std::fs::create_dir_all(&mine)?;
        let argv: Vec<String> = a
            .argv
            .iter()
            .map(|x| x.replace(&a.run_dir, &mine.display().to_string()))
            .collect();
        settle();
        s.qemu.push(ms(qemu_alone(&argv, &mine.join("qmp.sock"))?));
        let _ = std::fs::remove_dir_all(&mine);

        // c. The CLI process alone, for the breakdown.
        let t = Instant::now();
        finish(Command::new(&d.hostel).arg("--version"), "hostel --version")?;
        s.version.push(ms(t.elapsed()));

        // d. libvirt.
        let name = format!("latlv{i}");
        let serial = lv.dir.join(format!("{name}.serial"));
        let xml = lv.dir.join(format!("{name}.xml"));
        std::fs::write(
            &xml,
            lv.domain_xml(&name, &img, cmdline.as_deref().unwrap_or(""), &serial),
        )?;
        let pidfile = lv.dir.join("run/qemu").join(format!("{name}.pid"));
        let _ = std::fs::remove_file(&pidfile);
        let watch = VcpuWatch::start(Box::new(move || {
            std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
        }));
        settle();
        let t = Instant::now();
        finish(
            Command::new("virsh")
                .args(["-q", "-c", &lv.uri, "create"])
                .arg(&xml),
            "virsh create",
        )?;
        s.virsh.push(ms(t.elapsed()));
        s.virsh_vcpu
            .push(ms(watch.seen()?.saturating_duration_since(t)));
        let state = lv.virsh(&["domstate", &name])?;
        if state.trim() != "running" {
            bail!(
                "virsh domstate {name}: {:?} after virsh create",
                state.trim()
            );
        }
        lv.virsh(&["destroy", &name])?;
        let _ = std::fs::remove_file(&serial);
        let _ = std::fs::remove_file(&xml);
    }
    Ok(table(&mut s, runs))
}

/// One `hostel create` through the CLI, destroyed and deleted after.
struct CliCreate {
    took: f64,
    vcpu: f64,
    cmdline: String,
    /// The QEMU command line the agent ran, and the VM's runtime directory in it.
    argv: Vec<String>,
    run_dir: String,
}

fn cli_create(d: &Daemon, run_dir: &Path, name: &str) -> Result<CliCreate> {
    settle();
    let watch = VcpuWatch::start(new_pidfile_in(run_dir, "qemu.pid")?);
    let t = Instant::now();
    let mut cli = in_netns(&d.ns, &d.hostel)?;
    cli.args(["create", name, "--image", "tiny", "--memory", "256M"])
        .arg("--no-network")
        .env("HOSTEL_CONFIG", d.dir.join("client.toml"));
    finish(&mut cli, &format!("hostel create {name}"))?;
    let took = ms(t.elapsed());
    let vcpu = ms(watch.seen()?.saturating_duration_since(t));
    let v = running(d, name)?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let rt: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir.join(&id).join("runtime.json"))
            .with_context(|| format!("{name}'s runtime.json"))?,
    )?;
    gone(d, name)?;
    Ok(CliCreate {
        took,
        vcpu,
        cmdline: v["boot"]["cmdline"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        argv: serde_json::from_value(rt["argv"].clone())?,
        run_dir: run_dir.join(&id).display().to_string(),
    })
}

/// The same create as one raw `POST /api/v1/vms`, destroyed and deleted after: ms.
fn post_create(d: &Daemon, addr: &str, token: &str, run_dir: &Path, name: &str) -> Result<f64> {
    let body = serde_json::json!({
        "name": name, "image": "tiny", "memory_mib": 256, "nics": []
    })
    .to_string();
    settle();
    // Watched like the CLI's create, so both bear the same polling.
    let watch = VcpuWatch::start(new_pidfile_in(run_dir, "qemu.pid")?);
    let (status, took) = post(&d.ns, addr, token, "/api/v1/vms", &body)?;
    watch.seen()?;
    if !(200..300).contains(&status) {
        bail!("POST /api/v1/vms for {name}: HTTP {status}");
    }
    running(d, name)?;
    gone(d, name)?;
    Ok(ms(took))
}

fn table(s: &mut Samples, runs: usize) -> Vec<Row> {
    let (h, hp) = p50_p99(&mut s.cli);
    let (l, lp) = p50_p99(&mut s.virsh);
    let (hv, hvp) = p50_p99(&mut s.cli_vcpu);
    let (lv, lvp) = p50_p99(&mut s.virsh_vcpu);
    let (p, pp) = p50_p99(&mut s.post);
    let (v, vp) = p50_p99(&mut s.version);
    let (q, qp) = p50_p99(&mut s.qemu);
    let pair = |a: f64, b: f64| format!("p50 {a:.1}, p99 {b:.1}");
    vec![
        Row {
            what: format!(
                "create → QEMU running, tiny guest, command returned ({runs} runs; ms, ratio of p50s)"
            ),
            hostel: pair(h, hp),
            peer: format!("{} (`virsh create`; p99 ratio {:.2})", pair(l, lp), hp / lp),
            ratio: format!("{:.3}", h / l),
            budget: "p50 ≤ 50 ms".into(),
        },
        Row {
            what: format!(
                "create → QEMU running, tiny guest, to its vCPU executing, seen in /proc ({runs} runs; ms, ratio of p50s)"
            ),
            hostel: pair(hv, hvp),
            peer: format!("{} (`virsh create`; p99 ratio {:.2})", pair(lv, lvp), hvp / lvp),
            ratio: format!("{:.3}", hv / lv),
            budget: "".into(),
        },
        Row {
            what: format!(
                "create → QEMU running, tiny guest: QEMU alone with the Hostel VM's command line, exec → QMP `query-status` running ({runs} runs; ms)"
            ),
            hostel: pair(q, qp),
            peer: format!(
                "n/a; Hostel's share over QEMU's own start: {:.1} ms at p50 through the CLI, {:.1} ms through the raw request",
                h - q,
                p - q
            ),
            ratio: "".into(),
            budget: "".into(),
        },
        Row {
            what: format!(
                "create → QEMU running, tiny guest, one raw `POST /api/v1/vms` → answered: the daemon's own share ({runs} runs; ms)"
            ),
            hostel: pair(p, pp),
            peer: format!(
                "n/a; the CLI's own share: {:.1} ms at p50 over the raw request (`hostel --version` alone: {})",
                h - p,
                pair(v, vp)
            ),
            ratio: "".into(),
            budget: "".into(),
        },
    ]
}

/// Lets the machine settle before a timed step: a destroyed QEMU's memory is freed, and
/// libvirtd and virtlogd finish with the last domain after `virsh destroy` returns (the
/// step right after one took about 14 ms longer without this pause).
fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 (nearest rank) of `v`.
fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (pct(0.5), pct(0.99))
}

/// `program`, to be spawned straight into network namespace `ns` (a `setns` between fork
/// and exec: no `ip netns exec`, whose mount namespace and /sys remount would be timed).
pub(crate) fn in_netns(ns: &str, program: &Path) -> Result<Command> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: the closure makes one system call (setns) between fork and exec; the file
    // it names is moved into the closure, so it stays open until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(f.as_raw_fd());
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(cmd)
}

/// Runs `cmd` to its end, its output discarded but for errors.
fn finish(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Checks (untimed) that the API says `name` is running; gives its description.
fn running(d: &Daemon, name: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&d.cli(&["describe", name, "-o", "json"])?)?;
    if v["state"] != "running" {
        bail!("{name} is {} after its create returned", v["state"]);
    }
    Ok(v)
}

fn gone(d: &Daemon, name: &str) -> Result<()> {
    d.cli(&["destroy", name])?;
    d.cli(&["delete", name])?;
    Ok(())
}

/// One HTTP/1.1 request from inside network namespace `ns`, on a new connection:
/// (status, time from connecting to the last byte of the answer).
fn post(ns: &str, addr: &str, token: &str, path: &str, body: &str) -> Result<(u16, Duration)> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (ns, addr) = (format!("/run/netns/{ns}"), addr.to_string());
    std::thread::spawn(move || -> Result<(u16, Duration)> {
        nix::sched::setns(
            std::fs::File::open(&ns)?,
            nix::sched::CloneFlags::CLONE_NEWNET,
        )?;
        let t = Instant::now();
        let mut c = std::net::TcpStream::connect(&addr)?;
        c.set_nodelay(true)?;
        c.write_all(req.as_bytes())?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)?;
        let took = t.elapsed();
        let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP answer: {head:?}"))?;
        Ok((status, took))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the HTTP client thread panicked"))?
}

/// Starts QEMU with `argv`, whose QMP socket is `qmp`: time from exec until QMP
/// `query-status` says `running` (`qmp_capabilities`, then `query-status` about every
/// millisecond). Then ends that QEMU.
fn qemu_alone(argv: &[String], qmp: &Path) -> Result<Duration> {
    let t = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let took = (|| -> Result<Duration> {
        let deadline = t + Duration::from_secs(30);
        let c = loop {
            if let Ok(c) = std::os::unix::net::UnixStream::connect(qmp) {
                break c;
            }
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                bail!("QEMU's QMP socket {} did not open", qmp.display());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let mut w = c.try_clone()?;
        let mut r = std::io::BufReader::new(c);
        let mut ask = |cmd: &str| -> Result<serde_json::Value> {
            w.write_all(format!("{{\"execute\": \"{cmd}\"}}\n").as_bytes())?;
            loop {
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut r, &mut line)? == 0 {
                    bail!("QMP closed");
                }
                let v: serde_json::Value = serde_json::from_str(&line)?;
                if v.get("return").is_some() || v.get("error").is_some() {
                    return Ok(v);
                }
            }
        };
        ask("qmp_capabilities")?;
        loop {
            if ask("query-status")?["return"]["status"] == "running" {
                return Ok(t.elapsed());
            }
            if Instant::now() > deadline {
                bail!("QEMU did not run within 30 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })();
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// Finds the pid of a QEMU that is starting (None until its pidfile is there).
type FindPid = Box<dyn FnMut() -> Option<u32> + Send>;

/// A pidfile named `file` in a directory of `dir` that is not there yet (a Hostel VM's
/// runtime directory, named by an id the benchmark learns only from the answer).
fn new_pidfile_in(dir: &Path, file: &'static str) -> Result<FindPid> {
    let before: HashSet<PathBuf> = entries(dir);
    let dir = dir.to_path_buf();
    Ok(Box::new(move || {
        entries(&dir)
            .into_iter()
            .filter(|p| !before.contains(p))
            .find_map(|p| {
                std::fs::read_to_string(p.join(file))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
    }))
}

fn entries(dir: &Path) -> HashSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Watches, from a thread of its own, for the first moment a vCPU thread of a starting
/// QEMU has spent 1 ms on a CPU.
struct VcpuWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<Instant>>,
}

/// CPU time of a vCPU thread that counts as executing the guest.
const EXECUTING_NS: u64 = 1_000_000;

impl VcpuWatch {
    fn start(mut find: FindPid) -> VcpuWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let quit = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let (mut pid, mut stopped) = (None, None);
            while Instant::now() < deadline {
                if pid.is_none() {
                    pid = find();
                }
                if let Some(p) = pid {
                    if vcpu_ns(p) >= EXECUTING_NS {
                        return Some(Instant::now());
                    }
                }
                // Once the command has returned, the vCPU gets 5 s more.
                if quit.load(Ordering::Relaxed)
                    && stopped.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(5)
                {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        });
        VcpuWatch { stop, thread }
    }

    /// When the vCPU was first seen executing.
    fn seen(self) -> Result<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the vCPU watch panicked"))?
            .context(
                "no vCPU thread of the new QEMU had run 1 ms within 5 s of its create returning",
            )
    }
}

/// The most CPU time any `CPU n/…` thread of process `pid` has had, in ns.
fn vcpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.starts_with("CPU "))
                .unwrap_or(false)
        })
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}
