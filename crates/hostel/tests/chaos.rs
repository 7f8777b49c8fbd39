//! The chaos harness: a seeded random workload of several users against a real
//! `hostel up` with real guests, killed over and over, at random crash points
//! (`HOSTEL_CRASH_SEED`, see `hostel-faults`) or by SIGKILL at random times; after each
//! kill it starts again, lets the journal settle, and checks the invariants Hostel
//! promises (see `check`). Any violation fails with the seed that replays the run.
//!
//! `HOSTEL_CHAOS_SEED` replays a run; `HOSTEL_CHAOS_MINUTES` sets its length (the test
//! suite's run is short); `HOSTEL_CHAOS_REPORT` names a file the counts are written to
//! (`bench/chaos` writes `docs/reliability.md` so).
//!
//! Over 800 lines: the harness, its invariant checks and the two tests that use them
//! (the random run, and each crash point of the journal in turn) belong together.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USERS: &[&str] = &["ana", "bo", "cy"];
/// VM names per user: `ana-0`, `ana-1`.
const VMS_PER_USER: u32 = 2;
/// Where every running guest's QEMU is small.
const MEMORY: &str = "96M";

/// A small deterministic generator (splitmix64): the run's choices come from its seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

#[derive(Default, Debug)]
struct Counts {
    operations: AtomicU64,
    refused: AtomicU64,
    cut_off: AtomicU64,
    crash_point_kills: AtomicU64,
    sigkills: AtomicU64,
    restarts: AtomicU64,
    invariants_checked: AtomicU64,
    points: Mutex<BTreeMap<String, u64>>,
    violations: Mutex<Vec<String>>,
}

fn cli_as(d: &Daemon, config: &PathBuf, args: &[&str]) -> Output {
    d.ns.cmd(bin())
        .args(args)
        .env("HOSTEL_CONFIG", config)
        .stdin(Stdio::null())
        .output()
        .expect("run hostel")
}

/// A client config for `user` at the daemon's current address.
fn config_for(d: &Daemon, user: &str, token: &str) -> PathBuf {
    let config = d.dir.path().join(format!("{user}.toml"));
    std::fs::write(&config, format!("url = {:?}\ntoken = {:?}\n", d.url, token)).unwrap();
    config
}

/// The VMs named for `user` that it may operate now (its own, and those it gave its
/// group).
fn vms_of(d: &Daemon, config: &PathBuf, user: &str) -> Option<Vec<String>> {
    let out = cli_as(d, config, &["list", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|v| v["name"].as_str().map(String::from))
            .filter(|n| n.starts_with(&format!("{user}-")))
            .collect(),
    )
}

/// One random operation of `user` (a create for a VM it does not hold, else anything on
/// it): what it ran, and what it printed.
fn one_operation(
    d: &Daemon,
    config: &PathBuf,
    user: &str,
    held: &[String],
    rng: &mut Rng,
) -> (Vec<String>, Output) {
    let vm = format!("{user}-{}", rng.below(VMS_PER_USER as u64));
    let save = d
        .data_dir()
        .join("saves")
        .join(user)
        .join(format!("{vm}.state"))
        .display()
        .to_string();
    let size = format!("{}M", 8 + 8 * rng.below(3));
    let dice = if held.contains(&vm) {
        4 + rng.below(16)
    } else {
        0
    };
    let args: Vec<String> = match dice {
        0..=3 => {
            let mut a = vec!["create", &vm, "--image", "tiny", "--memory", MEMORY];
            if rng.below(2) == 0 {
                a.extend(["--disk", "16M"]);
            }
            if rng.below(2) == 0 {
                a.push("--no-start");
            }
            if rng.below(3) == 0 {
                a.push("--no-network");
            }
            a.into_iter().map(String::from).collect()
        }
        4 => vec!["delete".into(), vm],
        5 | 6 => vec!["start".into(), vm],
        7 => vec!["destroy".into(), vm],
        8 => vec![rng.pick(&["reboot", "pause", "unpause"]).to_string(), vm],
        9 => vec!["disk".into(), "add".into(), vm, "--size".into(), size],
        10 => vec!["disk".into(), "remove".into(), vm, "1".into()],
        11 => vec!["disk".into(), "resize".into(), vm, "0".into(), "40M".into()],
        12 => vec!["snapshot".into(), "create".into(), vm, "s1".into()],
        13 => vec!["snapshot".into(), "delete".into(), vm, "s1".into()],
        14 => vec!["snapshot".into(), "revert".into(), vm, "s1".into()],
        15 => vec![
            "nic".into(),
            "add".into(),
            vm,
            "--network".into(),
            "default".into(),
        ],
        16 => vec!["nic".into(), "remove".into(), vm, "1".into()],
        17 => vec!["save".into(), vm, save],
        18 => vec!["restore".into(), save],
        _ => vec!["chown".into(), vm, "group:crew".into()],
    };
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli_as(d, config, &refs);
    (args, out)
}

/// Whether the CLI failed because nothing answered (the daemon is gone), rather than
/// because the operation was refused.
fn cut_off(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    !out.status.success()
        && (err.contains("Connection refused")
            || err.contains("connection closed")
            || err.contains("error sending request")
            || err.contains("connection reset")
            || err.contains("IncompleteMessage")
            || err.contains("cannot reach")
            || err.contains("error decoding response body"))
}

struct Harness {
    d: Daemon,
    seed: u64,
    tokens: Vec<(String, String)>,
    counts: Arc<Counts>,
    crash_log: PathBuf,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let mut d = Daemon::start();
        let crash_log = d.dir.path().join("crash-points.log");
        d.ok(&["group", "create", "crew"]);
        let mut tokens = Vec::new();
        for u in USERS {
            d.ok(&["user", "create", u]);
            d.ok(&["group", "add-member", "crew", u]);
            d.ok(&[
                "quota",
                "set",
                &format!("user:{u}"),
                "--vms-running",
                "1",
                "--vms-total",
                &VMS_PER_USER.to_string(),
            ]);
            let t = d.ok(&["token", "create", "chaos", "--user", u]);
            tokens.push((u.to_string(), t.trim().to_string()));
        }
        d.ok(&["quota", "set", "group:crew", "--vms-running", "1"]);
        d.env
            .push(("HOSTEL_CRASH_LOG".into(), crash_log.display().to_string()));
        Harness {
            d,
            seed,
            tokens,
            counts: Arc::new(Counts::default()),
            crash_log,
        }
    }

    fn violation(&self, round: u32, what: String) {
        eprintln!("chaos seed {} round {round}: VIOLATION: {what}", self.seed);
        self.counts
            .violations
            .lock()
            .unwrap()
            .push(format!("round {round}: {what}"));
    }

    /// One round: the daemon runs the workload armed to die (at a crash point, or by
    /// SIGKILL at a random time), then starts clean, settles, and is checked.
    fn round(&mut self, round: u32, rng: &mut Rng, keeper: &mut Keeper) {
        let by_point = rng.below(2) == 0;
        let _ = self.d.child.take().map(|mut c| {
            let _ = c.kill();
            c.wait()
        });
        self.d
            .env
            .retain(|(k, _)| !k.starts_with("HOSTEL_CRASH_SEED") && k != "HOSTEL_CRASH_ODDS");
        if by_point {
            self.d
                .env
                .push(("HOSTEL_CRASH_SEED".into(), rng.next().to_string()));
            self.d.env.push(("HOSTEL_CRASH_ODDS".into(), "12".into()));
        }
        self.d.launch();
        self.counts.restarts.fetch_add(1, Ordering::Relaxed);
        let configs: Vec<(String, PathBuf)> = self
            .tokens
            .iter()
            .map(|(u, t)| (u.clone(), config_for(&self.d, u, t)))
            .collect();
        let gone = Arc::new(AtomicBool::new(false));
        let kill_at = Instant::now() + Duration::from_millis(2_000 + rng.below(10_000));
        let d = &self.d;
        std::thread::scope(|s| {
            for (i, (user, config)) in configs.iter().enumerate() {
                let mut wrng = Rng(rng.next() ^ i as u64);
                let gone = gone.clone();
                let counts = self.counts.clone();
                s.spawn(move || {
                    let mut held = vms_of(d, config, user).unwrap_or_default();
                    while !gone.load(Ordering::SeqCst) {
                        let (args, out) = one_operation(d, config, user, &held, &mut wrng);
                        if out.status.success() {
                            match args[0].as_str() {
                                "create" => held.push(args[1].clone()),
                                "delete" => held.retain(|v| *v != args[1]),
                                _ => {}
                            }
                        }
                        counts.operations.fetch_add(1, Ordering::Relaxed);
                        if cut_off(&out) {
                            counts.cut_off.fetch_add(1, Ordering::Relaxed);
                            // Nothing more until the harness starts it again.
                            while !gone.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        } else if !out.status.success() {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                            let err = String::from_utf8_lossy(&out.stderr);
                            if err.contains("internal error") || err.contains("500") {
                                eprintln!("chaos: {args:?}: {err}");
                            }
                        }
                    }
                });
            }
            // The killer: a crash point ends the daemon by itself; else SIGKILL at kill_at.
            let child = self.d.child.as_ref().unwrap().id();
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if !alive(child) {
                    break;
                }
                if Instant::now() >= kill_at {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    self.counts.sigkills.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            gone.store(true, Ordering::SeqCst);
        });
        let mut c = self.d.child.take().unwrap();
        let status = c.wait().unwrap();
        let last_point = std::fs::read_to_string(&self.crash_log)
            .unwrap_or_default()
            .lines()
            .last()
            .map(String::from);
        if let Some(p) = last_point.filter(|_| by_point && !status.success()) {
            // The log grows by one line per crash: a point is counted once.
            let counted: u64 = self.counts.points.lock().unwrap().values().sum();
            let lines = std::fs::read_to_string(&self.crash_log)
                .unwrap()
                .lines()
                .count() as u64;
            if lines > counted {
                self.counts
                    .crash_point_kills
                    .fetch_add(1, Ordering::Relaxed);
                *self.counts.points.lock().unwrap().entry(p).or_insert(0) += 1;
            }
        }
        // Clean again, settled, checked.
        self.d
            .env
            .retain(|(k, _)| k != "HOSTEL_CRASH_SEED" && k != "HOSTEL_CRASH_ODDS");
        self.d.launch();
        self.counts.restarts.fetch_add(1, Ordering::Relaxed);
        self.settle(round);
        self.check(round);
        keeper.check_and_write(self, round);
    }

    /// Waits until the journal has no running operation and no VM is between states.
    fn settle(&self, round: u32) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let running = self.d.json(&["operations", "--state", "running"]);
            let moving: Vec<Value> = self
                .d
                .json(&["list"])
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| matches!(v["state"].as_str(), Some("starting" | "shutting-down")))
                .cloned()
                .collect();
            if running.as_array().unwrap().is_empty() && moving.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                self.violation(
                    round,
                    format!("not settled in 90 s: operations still running {running}, VMs between states {moving:?}"),
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The invariants.
    fn check(&self, round: u32) {
        let d = &self.d;
        let vms = d.json(&["list"]);
        let vms = vms.as_array().unwrap();
        let checked = &self.counts.invariants_checked;

        // 1. Every VM has exactly the QEMU processes its state says: zero or one.
        let qemus = qemus_under(&d.data_dir().join("run"));
        for v in vms {
            let id = v["id"].as_str().unwrap();
            let want = matches!(v["state"].as_str(), Some("running" | "paused")) as usize;
            let have = qemus.get(id).copied().unwrap_or(0);
            if have != want {
                self.violation(
                    round,
                    format!(
                        "VM {} is {} with {have} QEMU processes",
                        v["name"], v["state"]
                    ),
                );
            }
            checked.fetch_add(1, Ordering::Relaxed);
        }
        for id in qemus.keys() {
            if !vms.iter().any(|v| v["id"] == id.as_str()) {
                self.violation(
                    round,
                    format!("a QEMU runs for {id}, which no VM row names"),
                );
            }
        }

        // 2. Disk rows and files agree, both ways (doctor compares them on the host).
        // (`hostel doctor` exits 1 when it found problems, and prints them still.)
        let out = d.cli(&["doctor", "-o", "json"]);
        let doctor: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("hostel doctor: {}", String::from_utf8_lossy(&out.stderr)));
        for p in doctor["problems"].as_array().unwrap() {
            self.violation(round, format!("doctor: {p}"));
        }
        checked.fetch_add(1, Ordering::Relaxed);

        // 3. No NIC's tap lacks its port guard.
        let taps = taps_in(d);
        let guarded = guarded_taps(d);
        for t in &taps {
            if !guarded.contains(t) {
                self.violation(round, format!("tap {t} has no port guard"));
            }
            checked.fetch_add(1, Ordering::Relaxed);
        }

        // 4. Quotas equal what the owners hold.
        for u in USERS {
            let q = d.json(&["quota", "show", &format!("user:{u}")]);
            let mine: Vec<&Value> = vms
                .iter()
                .filter(|v| v["owner"] == format!("user:{u}").as_str())
                .collect();
            let running = mine
                .iter()
                .filter(|v| matches!(v["state"].as_str(), Some("running" | "paused")))
                .count() as u64;
            let disks: u64 = mine
                .iter()
                .map(|v| {
                    d.json(&["disk", "list", v["name"].as_str().unwrap()])
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x["size_mib"].as_u64().unwrap())
                        .sum::<u64>()
                })
                .sum();
            let used = &q["used"];
            let disk_charged = used["disk_mib"].as_u64().unwrap()
                - used["snapshots_mib"].as_u64().unwrap_or(0)
                - used["saves_mib"].as_u64().unwrap_or(0);
            if used["vms"] != mine.len() as u64
                || used["vms_running"] != running
                || disk_charged != disks
            {
                self.violation(
                    round,
                    format!(
                        "quota of {u} says {used} but the user holds {} VMs, {running} running, {disks} MiB of disks",
                        mine.len()
                    ),
                );
            }
            checked.fetch_add(1, Ordering::Relaxed);
        }

        // 5. No accepted operation is left running (settle waited for that).
        let running = d.json(&["operations", "--state", "running"]);
        if !running.as_array().unwrap().is_empty() {
            self.violation(round, format!("operations stuck running: {running}"));
        }
        checked.fetch_add(1, Ordering::Relaxed);
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The VMs' taps in the daemon's namespace.
fn taps_in(d: &Daemon) -> Vec<String> {
    let out =
        d.ns.cmd("ip")
            .args(["-j", "link", "show"])
            .output()
            .unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    links
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str())
                .filter(|n| n.starts_with("htp"))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The taps the guards' verdict map sends to a chain of their own.
fn guarded_taps(d: &Daemon) -> Vec<String> {
    let out =
        d.ns.cmd("nft")
            .args(["list", "map", "bridge", "hostel", "nics"])
            .output()
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut taps = Vec::new();
    for part in text.split(['{', ',', '}']) {
        let part = part.trim();
        if let Some((tap, verdict)) = part.split_once(':') {
            let tap = tap.trim().trim_matches('"');
            if verdict.trim() == format!("jump nic-{tap}") {
                taps.push(tap.to_string());
            }
        }
    }
    taps
}

/// The admin's guest that writes a numbered marker to its disk and flushes it each round:
/// after every kill and restart, the last flushed marker must be there.
struct Keeper {
    written: Option<String>,
}

impl Keeper {
    fn check_and_write(&mut self, h: &Harness, round: u32) {
        let d = &h.d;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if d.state("keeper") != "running" {
                h.violation(round, format!("the keeper VM is {}, not running", d.state("keeper")));
                d.ok(&["start", "keeper"]);
            }
            let mut c = d.console("keeper").await;
            if let Some(w) = &self.written {
                let got = c.run("head -c 16 /dev/vda").await;
                if !got.contains(w.as_str()) {
                    h.violation(round, format!("the keeper's flushed {w:?} is gone: its disk holds {got:?}"));
                }
                h.counts.invariants_checked.fetch_add(1, Ordering::Relaxed);
            }
            let mark = format!("mark-{round:011}");
            c.run(&format!(
                "printf {mark} | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; sync; echo flushed"
            ))
            .await;
            self.written = Some(mark);
        });
    }
}

#[test]
fn the_invariants_hold_through_random_kills() {
    let seed: u64 = std::env::var("HOSTEL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let minutes: f64 = std::env::var("HOSTEL_CHAOS_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    eprintln!("chaos: seed {seed} (replay: HOSTEL_CHAOS_SEED={seed}), {minutes} minutes");
    let mut rng = Rng(seed);
    let mut h = Harness::new(seed);
    h.d.ok(&[
        "create",
        "keeper",
        "--image",
        "tiny",
        "--memory",
        MEMORY,
        "--disk",
        "16M",
        "--no-network",
    ]);
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = h.d.console("keeper").await;
            c.wait_for(READY, Duration::from_secs(180)).await;
        });
    }
    let mut keeper = Keeper { written: None };
    keeper.check_and_write(&h, 0);
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs_f64(minutes * 60.0) {
        round += 1;
        h.round(round, &mut rng, &mut keeper);
        if !h.counts.violations.lock().unwrap().is_empty() {
            // The daemon's log of the run, for whoever replays it.
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-artifacts");
            let _ = std::fs::create_dir_all(&dir);
            let log = dir.join(format!("chaos-{seed}.log"));
            let _ = std::fs::write(&log, h.d.daemon_output());
            eprintln!(
                "chaos: stopped at the first round with a violation; the daemon's log is in {}",
                log.display()
            );
            break;
        }
    }
    let c = &h.counts;
    let violations = c.violations.lock().unwrap().clone();
    let report = format!(
        "seed {seed}, {:.1} minutes, {round} rounds: {} operations ({} refused, {} cut off by a kill), \
         {} kills at crash points, {} SIGKILLs, {} restarts, {} invariants checked, {} violations\n\
         crash points hit: {:?}\n",
        started.elapsed().as_secs_f64() / 60.0,
        c.operations.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.cut_off.load(Ordering::Relaxed),
        c.crash_point_kills.load(Ordering::Relaxed),
        c.sigkills.load(Ordering::Relaxed),
        c.restarts.load(Ordering::Relaxed),
        c.invariants_checked.load(Ordering::Relaxed),
        violations.len(),
        c.points.lock().unwrap(),
    );
    eprintln!("chaos: {report}");
    if let Ok(path) = std::env::var("HOSTEL_CHAOS_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    assert!(
        violations.is_empty(),
        "chaos seed {seed} (replay with HOSTEL_CHAOS_SEED={seed}): {violations:#?}"
    );
    assert!(round >= 2, "at least two kills and restarts");
}

/// The journal at each point of the operations that leave files or rows behind: the
/// daemon dies there (`HOSTEL_CRASH_AT`), starts again, and the operation is finished or
/// undone, recorded so, and every invariant holds.
#[test]
fn each_interrupted_operation_is_finished_or_undone() {
    let mut h = Harness::new(0);
    // A stopped VM with a 16 MiB disk, no network.
    let stopped_vm = |name: &'static str| {
        [
            "create",
            name,
            "--image",
            "tiny",
            "--memory",
            MEMORY,
            "--disk",
            "16M",
            "--no-start",
            "--no-network",
        ]
    };
    h.d.ok(&stopped_vm("v"));
    h.d.ok(&stopped_vm("gone"));
    let new_vm = stopped_vm("half");
    // (point, operation, its kind and target in the journal, whether it ends succeeded)
    let cases: &[(&str, &[&str], &str, &str, bool)] = &[
        (
            "controller.create.disks-made",
            &new_vm,
            "create",
            "half",
            false,
        ),
        (
            "controller.create.rows-written",
            &new_vm,
            "create",
            "half",
            false,
        ),
        // A create whose VM was already running: undone, its QEMU ended.
        (
            "controller.start.launched",
            &[
                "create",
                "half",
                "--image",
                "tiny",
                "--memory",
                MEMORY,
                "--disk",
                "16M",
                "--no-network",
            ],
            "create",
            "half",
            false,
        ),
        (
            "controller.delete.host-forgot",
            &["delete", "gone"],
            "delete",
            "gone",
            true,
        ),
        (
            "controller.disk-add.file-made",
            &["disk", "add", "v", "--size", "8M"],
            "disk-add",
            "v",
            false,
        ),
        (
            "controller.disk-add.row-written",
            &["disk", "add", "v", "--size", "8M"],
            "disk-add",
            "v",
            false,
        ),
        (
            "controller.disk-remove.row-deleted",
            &["disk", "remove", "v", "1"],
            "disk-remove",
            "v",
            false,
        ),
        (
            "controller.snapshot-create.taken",
            &["snapshot", "create", "v", "s1"],
            "snapshot-create",
            "v",
            false,
        ),
    ];
    for (round, (point, op, kind, target, finished)) in cases.iter().enumerate() {
        let round = round as u32 + 1;
        h.d.kill9();
        h.d.env.push(("HOSTEL_CRASH_AT".into(), point.to_string()));
        h.d.launch();
        let out = h.d.cli(op);
        assert!(
            !out.status.success(),
            "{op:?} should have been cut off at {point}"
        );
        let status = h.d.child.as_mut().unwrap().wait().unwrap();
        assert!(!status.success(), "the daemon died at {point}: {status}");
        let log = std::fs::read_to_string(&h.crash_log).unwrap();
        assert_eq!(log.lines().last(), Some(*point), "{log}");
        h.d.child = None;
        h.d.env.retain(|(k, _)| k != "HOSTEL_CRASH_AT");
        h.d.launch();
        h.settle(round);
        h.check(round);
        let ops = h.d.json(&["operations", "--limit", "1000"]);
        let op_row = ops
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == *kind && o["target"] == *target)
            .unwrap_or_else(|| panic!("no {kind} of {target} in the journal: {ops}"))
            .clone();
        let want = if *finished { "succeeded" } else { "failed" };
        assert_eq!(op_row["state"], want, "{point}: {op_row}");
        if !finished {
            assert!(
                op_row["error"]
                    .as_str()
                    .unwrap()
                    .contains("interrupted by a stop of the controller"),
                "{op_row}"
            );
        }
        // A second disk once the add was undone, a snapshot once its taking was.
        match *point {
            "controller.create.disks-made"
            | "controller.create.rows-written"
            | "controller.start.launched" => {
                assert!(h.d.fails(&["describe", "half"]).contains("no VM"));
            }
            "controller.delete.host-forgot" => {
                assert!(h.d.fails(&["describe", "gone"]).contains("no VM"));
            }
            "controller.disk-add.file-made" => {
                assert_eq!(
                    h.d.json(&["disk", "list", "v"]).as_array().unwrap().len(),
                    1
                );
            }
            "controller.disk-add.row-written" => {
                // The row was written: the disk is kept (it had a row, so it is whole).
                assert_eq!(
                    h.d.json(&["disk", "list", "v"]).as_array().unwrap().len(),
                    2
                );
            }
            "controller.disk-remove.row-deleted" => {
                assert_eq!(
                    h.d.json(&["disk", "list", "v"]).as_array().unwrap().len(),
                    1
                );
            }
            "controller.snapshot-create.taken" => {
                assert!(h
                    .d
                    .json(&["snapshot", "list", "v"])
                    .as_array()
                    .unwrap()
                    .is_empty());
                let disk = h.d.json(&["disk", "list", "v"])[0]["path"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let info = std::process::Command::new("qemu-img")
                    .args(["snapshot", "-l", "-U", &disk])
                    .output()
                    .unwrap();
                assert!(
                    !String::from_utf8_lossy(&info.stdout).contains("s1"),
                    "the snapshot taken on disk but never recorded is gone: {}",
                    String::from_utf8_lossy(&info.stdout)
                );
                // And it can be taken again.
                h.d.ok(&["snapshot", "create", "v", "s1"]);
            }
            _ => {}
        }
    }
    let violations = h.counts.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
}
