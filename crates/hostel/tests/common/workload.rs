//! The chaos harness's workload and invariants, shared by `chaos.rs` (one `hostel up`,
//! killed) and `controllers.rs` (two `hostel controller`s and an agent, controllers
//! killed): several users' seeded random operations, and the checks made once the
//! killed process is back and the journal has settled.

use super::qemus_under;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const USERS: &[&str] = &["ana", "bo", "cy"];
/// VM names per user: `ana-0`, `ana-1`.
pub const VMS_PER_USER: u32 = 2;
/// Where every running guest's QEMU is small.
pub const MEMORY: &str = "96M";

/// A small deterministic generator (splitmix64): the run's choices come from its seed.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// A run's seed: `HOSTEL_CHAOS_SEED`, else the clock's.
pub fn chaos_seed() -> u64 {
    std::env::var("HOSTEL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// What a run did, for its report.
#[derive(Default, Debug)]
pub struct Counts {
    pub operations: AtomicU64,
    pub refused: AtomicU64,
    pub cut_off: AtomicU64,
    pub crash_point_kills: AtomicU64,
    pub sigkills: AtomicU64,
    pub restarts: AtomicU64,
    pub invariants_checked: AtomicU64,
    pub points: Mutex<BTreeMap<String, u64>>,
    pub violations: Mutex<Vec<String>>,
}

impl Counts {
    pub fn violation(&self, seed: u64, round: u32, what: String) {
        eprintln!("chaos seed {seed} round {round}: VIOLATION: {what}");
        self.violations
            .lock()
            .unwrap()
            .push(format!("round {round}: {what}"));
    }

    /// The report line of a run (what `bench/chaos` records).
    pub fn report(&self, seed: u64, minutes: f64, rounds: u32) -> String {
        format!(
            "seed {seed}, {minutes:.1} minutes, {rounds} rounds: {} operations ({} refused, {} cut off by a kill), \
             {} kills at crash points, {} SIGKILLs, {} restarts, {} invariants checked, {} violations\n\
             crash points hit: {:?}\n",
            self.operations.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.cut_off.load(Ordering::Relaxed),
            self.crash_point_kills.load(Ordering::Relaxed),
            self.sigkills.load(Ordering::Relaxed),
            self.restarts.load(Ordering::Relaxed),
            self.invariants_checked.load(Ordering::Relaxed),
            self.violations.lock().unwrap().len(),
            self.points.lock().unwrap(),
        )
    }
}

/// Runs the CLI with a client config (a user's, or the admin's).
pub type Cli<'a> = &'a (dyn Fn(&Path, &[&str]) -> Output + Sync);

/// A client config for `user` at `url`, in `dir`.
pub fn config_for(dir: &Path, url: &str, user: &str, token: &str) -> PathBuf {
    let config = dir.join(format!("{user}.toml"));
    std::fs::write(&config, format!("url = {url:?}\ntoken = {token:?}\n")).unwrap();
    config
}

/// The VMs named for `user` that it may operate now (its own, and those it gave its
/// group).
pub fn vms_of(cli: Cli, config: &Path, user: &str) -> Option<Vec<String>> {
    let out = cli(config, &["list", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|v| v["name"].as_str().map(String::from))
            .filter(|n| n.starts_with(&format!("{user}-")))
            .collect(),
    )
}

/// What the workload may do besides the VM's lifecycle, disks and snapshots.
#[derive(Clone, Copy)]
pub struct Mix {
    /// NICs on the `default` network (a VM is created with one, sometimes).
    pub network: bool,
}

/// One random operation of `user` (a create for a VM it does not hold, else anything on
/// it): what it ran, and what it printed. Saves go under `saves`.
pub fn one_operation(
    cli: Cli,
    config: &Path,
    saves: &Path,
    mix: Mix,
    user: &str,
    held: &[String],
    rng: &mut Rng,
) -> (Vec<String>, Output) {
    let vm = format!("{user}-{}", rng.below(VMS_PER_USER as u64));
    let save = saves
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
            if !mix.network || rng.below(3) == 0 {
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
        15 if mix.network => vec![
            "nic".into(),
            "add".into(),
            vm,
            "--network".into(),
            "default".into(),
        ],
        16 if mix.network => vec!["nic".into(), "remove".into(), vm, "1".into()],
        15 | 16 => vec!["reboot".into(), vm],
        17 => vec!["save".into(), vm, save],
        18 => vec!["restore".into(), save],
        _ => vec!["chown".into(), vm, "group:crew".into()],
    };
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(config, &refs);
    (args, out)
}

/// Whether the CLI failed because nothing answered (the process is gone), rather than
/// because the operation was refused.
pub fn cut_off(out: &Output) -> bool {
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

/// Counts one operation's outcome; whether it was cut off by a kill.
pub fn count(counts: &Counts, args: &[String], out: &Output) -> bool {
    counts.operations.fetch_add(1, Ordering::Relaxed);
    if cut_off(out) {
        counts.cut_off.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    if !out.status.success() {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("internal error") || err.contains("500") {
            eprintln!("chaos: {args:?}: {err}");
        }
    }
    false
}

/// The admin's view, through whichever process serves the API.
pub struct Admin<'a> {
    pub cli: Cli<'a>,
    pub config: &'a Path,
}

impl Admin<'_> {
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = (self.cli)(self.config, &a);
        assert!(
            out.status.success(),
            "hostel {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }
}

/// Waits until the journal has no running operation and no VM is between states; a
/// violation if that takes over 90 s.
pub fn settle(admin: &Admin, violation: &dyn Fn(String)) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let running = admin.json(&["operations", "--state", "running"]);
        let moving: Vec<Value> = admin
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
            violation(format!(
                "not settled in 90 s: operations still running {running}, VMs between states {moving:?}"
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The VMs and what `read` reads, taken while no VM changed state: a guest may still
/// power off on its own after the settle (asked to before a kill), and a state read
/// before it set against a count read after is no violation.
fn steady<T>(admin: &Admin, read: impl Fn() -> T) -> (Vec<Value>, T) {
    let states = |vms: &[Value]| -> Vec<(Value, Value)> {
        vms.iter()
            .map(|v| (v["id"].clone(), v["state"].clone()))
            .collect()
    };
    let mut before = admin.json(&["list"]).as_array().unwrap().clone();
    for _ in 0..20 {
        let got = read();
        let after = admin.json(&["list"]).as_array().unwrap().clone();
        if states(&before) == states(&after) {
            return (after, got);
        }
        before = after;
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = read();
    (before, got)
}

/// The invariants that hold wherever the VMs run: QEMUs (under `run_dir`) as the VM
/// rows say, disk rows and files agreeing, quotas equal to what owners hold, no
/// operation left running. (The taps' guards and a guest's flushed data are checked by
/// the callers that can see them.)
pub fn check(admin: &Admin, run_dir: &Path, counts: &Counts, violation: &dyn Fn(String)) {
    let checked = &counts.invariants_checked;

    // 1. Every VM has exactly the QEMU processes its state says: zero or one.
    let (vms, qemus) = steady(admin, || qemus_under(run_dir));
    let vms = &vms;
    for v in vms {
        let id = v["id"].as_str().unwrap();
        let want = matches!(v["state"].as_str(), Some("running" | "paused")) as usize;
        let have = qemus.get(id).copied().unwrap_or(0);
        if have != want {
            violation(format!(
                "VM {} is {} with {have} QEMU processes",
                v["name"], v["state"]
            ));
        }
        checked.fetch_add(1, Ordering::Relaxed);
    }
    for id in qemus.keys() {
        if !vms.iter().any(|v| v["id"] == id.as_str()) {
            violation(format!("a QEMU runs for {id}, which no VM row names"));
        }
    }

    // 2. Disk rows and files agree, both ways (doctor compares them on the host).
    // (`hostel doctor` exits 1 when it found problems, and prints them still.)
    let out = (admin.cli)(admin.config, &["doctor", "-o", "json"]);
    let doctor: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("hostel doctor: {}", String::from_utf8_lossy(&out.stderr)));
    for p in doctor["problems"].as_array().unwrap() {
        violation(format!("doctor: {p}"));
    }
    checked.fetch_add(1, Ordering::Relaxed);

    // 3. Quotas equal what the owners hold.
    for u in USERS {
        let (vms, q) = steady(admin, || {
            admin.json(&["quota", "show", &format!("user:{u}")])
        });
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
                admin
                    .json(&["disk", "list", v["name"].as_str().unwrap()])
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
            violation(format!(
                "quota of {u} says {used} but the user holds {} VMs, {running} running, {disks} MiB of disks",
                mine.len()
            ));
        }
        checked.fetch_add(1, Ordering::Relaxed);
    }

    // 4. No accepted operation is left running (settle waited for that).
    let running = admin.json(&["operations", "--state", "running"]);
    if !running.as_array().unwrap().is_empty() {
        violation(format!("operations stuck running: {running}"));
    }
    checked.fetch_add(1, Ordering::Relaxed);
}

/// Makes the harness's users (quota: 2 VMs, 1 running), their group `crew` (1 running)
/// through the admin's `ok`, and gives back each user's token.
pub fn make_users(ok: &dyn Fn(&[&str]) -> String) -> Vec<(String, String)> {
    ok(&["group", "create", "crew"]);
    let mut tokens = Vec::new();
    for u in USERS {
        ok(&["user", "create", u]);
        ok(&["group", "add-member", "crew", u]);
        ok(&[
            "quota",
            "set",
            &format!("user:{u}"),
            "--vms-running",
            "1",
            "--vms-total",
            &VMS_PER_USER.to_string(),
        ]);
        let t = ok(&["token", "create", "chaos", "--user", u]);
        tokens.push((u.to_string(), t.trim().to_string()));
    }
    ok(&["quota", "set", "group:crew", "--vms-running", "1"]);
    tokens
}
