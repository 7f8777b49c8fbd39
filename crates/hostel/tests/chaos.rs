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
use common::workload::*;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the CLI in the daemon's namespace with a client config.
fn cli_in(d: &Daemon) -> impl Fn(&Path, &[&str]) -> Output + Sync + '_ {
    move |config, args| {
        d.ns.cmd(bin())
            .args(args)
            .env("HOSTEL_CONFIG", config)
            .stdin(Stdio::null())
            .output()
            .expect("run hostel")
    }
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
        let tokens = make_users(&|args: &[&str]| d.ok(args));
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
        self.counts.violation(self.seed, round, what);
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
            .map(|(u, t)| (u.clone(), config_for(self.d.dir.path(), &self.d.url, u, t)))
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
                    let cli = cli_in(d);
                    let saves = d.data_dir().join("saves");
                    let mix = Mix { network: true };
                    let mut held = vms_of(&cli, config, user).unwrap_or_default();
                    while !gone.load(Ordering::SeqCst) {
                        let (args, out) =
                            one_operation(&cli, config, &saves, mix, user, &held, &mut wrng);
                        if out.status.success() {
                            match args[0].as_str() {
                                "create" => held.push(args[1].clone()),
                                "delete" => held.retain(|v| *v != args[1]),
                                _ => {}
                            }
                        }
                        if count(&counts, &args, &out) {
                            // Nothing more until the harness starts it again.
                            while !gone.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                });
            }
            // The killer: a crash point ends the daemon by itself; else SIGKILL at kill_at.
            let child = self.d.child.as_ref().unwrap().id();
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if !pid_alive(child) {
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
        let cli = cli_in(&self.d);
        let admin = Admin {
            cli: &cli,
            config: &self.d.config(),
        };
        settle(&admin, &|what| self.violation(round, what));
    }

    /// The invariants (`workload::check`), and no NIC's tap lacks its port guard.
    fn check(&self, round: u32) {
        let d = &self.d;
        let cli = cli_in(d);
        let admin = Admin {
            cli: &cli,
            config: &d.config(),
        };
        check(&admin, &d.data_dir().join("run"), &self.counts, &|what| {
            self.violation(round, what)
        });
        let taps = taps_in(d);
        let guarded = guarded_taps(d);
        for t in &taps {
            if !guarded.contains(t) {
                self.violation(round, format!("tap {t} has no port guard"));
            }
            self.counts
                .invariants_checked
                .fetch_add(1, Ordering::Relaxed);
        }
    }
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
    let seed = chaos_seed();
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
    let violations = h.counts.violations.lock().unwrap().clone();
    let report = h
        .counts
        .report(seed, started.elapsed().as_secs_f64() / 60.0, round);
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
    // A running VM with a NIC, for a NIC hot-plugged as the agent dies.
    h.d.ok(&["create", "r", "--image", "tiny", "--memory", MEMORY]);
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
        // The agent (in `hostel up`'s process) dies with the new tap in QEMU's hands.
        (
            "agent.nic-add.tap-passed",
            &["nic", "add", "r", "--network", "default"],
            "nic-add",
            "r",
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
            "agent.nic-add.tap-passed" => {
                assert_eq!(
                    h.d.json(&["nic", "list", "r"]).as_array().unwrap().len(),
                    1,
                    "the half-plugged NIC is not kept"
                );
                assert_eq!(h.d.state("r"), "running");
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
