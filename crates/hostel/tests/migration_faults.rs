//! A live migration killed at each of its steps: the controller, the sending agent or
//! the receiving agent SIGKILLed while the migration is held at that step (a hold
//! point, `hostel-faults`), then started again. Whatever died, the migration ends with
//! exactly one QEMU for the VM, on the host the database names, with the guest still
//! counting and its disk as it wrote it. A cut link between the hosts mid-stream leaves
//! the VM running where it was, and a cancel does too.
//!
//! Two real `hostel agent`s share one network namespace (their own addresses' ports),
//! reached from `hostel up`'s namespace over a veth pair; `hostel up` runs no default
//! network, so the two agents set up nothing that could clash.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const NODES: [(&str, &str); 2] = [("node2", "10.254.0.2:8471"), ("node3", "10.254.0.2:8472")];

struct Cluster {
    d: Daemon,
    node: Netns,
    holds: PathBuf,
    agents: Vec<Option<Child>>,
    dir: PathBuf,
}

impl Cluster {
    fn agent_at(&self, i: usize) -> AgentAt {
        AgentAt {
            name: NODES[i].0,
            listen: NODES[i].1.to_string(),
            tls: self.dir.join(format!("tls-{}", NODES[i].0)),
            data: self.dir.join(format!("agent-{}", NODES[i].0)),
            env: vec![("HOSTEL_HOLD_DIR".into(), self.holds.display().to_string())],
        }
    }

    fn start_agent(&mut self, i: usize) -> String {
        let (child, url) = start_agent_as(&self.node, &self.agent_at(i));
        self.agents[i] = Some(child);
        url
    }

    fn kill_agent(&mut self, i: usize) {
        let mut c = self.agents[i].take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn index_of(host: &str) -> usize {
        NODES.iter().position(|(n, _)| *n == host).unwrap()
    }

    /// Waits until every agent is online.
    fn wait_online(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let hosts = self.d.json(&["host", "list"]);
            let up = hosts
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| NODES.iter().any(|(n, _)| h["name"] == *n) && h["online"] == true)
                .count();
            if up >= NODES.len() {
                return;
            }
            assert!(Instant::now() < deadline, "agents not back: {hosts}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn arm(&self, point: &str) {
        let _ = std::fs::remove_file(self.holds.join(format!("{point}.reached")));
        std::fs::write(self.holds.join(point), b"").unwrap();
    }

    fn wait_reached(&self, point: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.holds.join(format!("{point}.reached")).exists() {
            assert!(
                Instant::now() < deadline,
                "the migration never reached {point}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the agents' logs.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (n, _) in NODES {
            let log = std::fs::read_to_string(self.dir.join(format!("agent-{n}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out += &format!(
                "--- {n}\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        out
    }

    fn release(&self, point: &str) {
        std::fs::write(self.holds.join(format!("{point}.go")), b"").unwrap();
    }

    /// Waits for a task to end; its state.
    fn task_end(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let t = self.d.json(&["task", "show", id]);
            if t["state"] != "running" {
                return t;
            }
            assert!(Instant::now() < deadline, "task {id} did not end: {t}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The pids of the QEMU processes whose command line names this VM id, and for each the
/// agent data directory it runs from.
fn qemus_of(vm_id: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") && cmd.contains(vm_id) {
            let agent = NODES
                .iter()
                .find(|(n, _)| cmd.contains(&format!("agent-{n}/run/")))
                .map(|(n, _)| n.to_string())
                .unwrap_or_else(|| "elsewhere".into());
            out.push((pid, agent));
        }
    }
    out
}

fn count(s: String) -> u64 {
    s.trim().parse::<u64>().unwrap_or(0)
}

/// After each fault: one QEMU, where the database says, the guest counting on.
async fn check_one_copy(k: &Cluster, vm_id: &str, last: &mut u64, what: &str) -> String {
    // The database settles within a few seconds of both hosts answering.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (host, pid) = loop {
        let v = k.d.describe("mover");
        let q = qemus_of(vm_id);
        let host = v["host"].as_str().unwrap_or("").to_string();
        if v["state"] == "running" && q.len() == 1 && q[0].1 == host {
            assert_eq!(
                v["qemu"]["pid"].as_u64(),
                Some(q[0].0 as u64),
                "{what}: the database's pid is the running QEMU's: {v}"
            );
            break (host, q[0].0);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not exactly one QEMU where the database says: {q:?}, {v}\n{}",
            k.d.daemon_output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut con = k.d.console("mover").await;
    let now = count(con.run("cat /tmp/count").await);
    assert!(
        now > *last,
        "{what}: the guest counts on ({last} then {now})"
    );
    *last = now;
    assert_eq!(
        con.run("echo 3 > /proc/sys/vm/drop_caches; head -c 12 /dev/vda")
            .await,
        "still-mine-1",
        "{what}: the disk is as the guest wrote it"
    );
    let _ = pid;
    host
}

fn other(host: &str) -> &'static str {
    if host == NODES[0].0 {
        NODES[1].0
    } else {
        NODES[0].0
    }
}

#[derive(Debug, Clone, Copy)]
enum Victim {
    Controller,
    Source,
    Target,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_killed_at_any_step_ends_with_exactly_one_vm() {
    let holds = tempfile::tempdir().unwrap();
    let mut d = Daemon::unstarted();
    d.env
        .push(("HOSTEL_HOLD_DIR".into(), holds.path().display().to_string()));
    d.args.push("--no-default-network".into());
    d.launch();
    let (node, _) = linked_node(&d);
    let dir = d.dir.path().to_path_buf();
    let data = d.data_dir();
    for (name, _) in NODES {
        let out = dir.join(format!("tls-{name}"));
        d.ok(&[
            "agent-cert",
            name,
            "--data-dir",
            data.to_str().unwrap(),
            "--san",
            "10.254.0.2",
            "--out",
            out.to_str().unwrap(),
        ]);
    }
    let mut k = Cluster {
        d,
        node,
        holds: holds.path().to_path_buf(),
        agents: vec![None, None],
        dir,
    };
    for i in 0..NODES.len() {
        let url = k.start_agent(i);
        k.d.ok(&["host", "add", &url]);
    }
    k.wait_online();
    // New VMs go to the two agents' hosts, not the controller's own.
    let local = k.d.json(&["info"])["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| !NODES.iter().any(|(n, _)| h["name"] == *n))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    k.d.ok(&["host", "drain", &local]);
    let boot = {
        // The tiny guest's kernel and initrd as files the agents read (one machine).
        k.d.ok(&[
            "create",
            "probe",
            "--image",
            "tiny",
            "--no-start",
            "--no-network",
        ]);
        let b = k.d.describe("probe")["boot"].clone();
        k.d.ok(&["delete", "probe"]);
        b
    };
    // A small guest booting the tiny image's kernel, with a 32 MiB disk (`extra` more).
    let create_small = |d: &Daemon, name: &str, extra: &[&str]| {
        let mut args = vec![
            "create",
            name,
            "--memory",
            "128M",
            "--disk",
            "32M",
            "--no-network",
            "--kernel",
            boot["kernel"].as_str().unwrap(),
            "--initrd",
            boot["initrd"].as_str().unwrap(),
            "--cmdline",
            boot["cmdline"].as_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        d.ok(&args);
    };
    create_small(&k.d, "mover", &[]);
    let vm = k.d.describe("mover");
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let mut con = k.d.console("mover").await;
    con.wait_for(READY, Duration::from_secs(180)).await;
    con.run("echo still-mine-1 | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        .await;
    con.run("(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done) & true")
        .await;
    drop(con);
    let mut last = 0;
    let mut host = check_one_copy(&k, &vm_id, &mut last, "at first").await;

    // Each step, and who dies there. The hold is in the process named first; the
    // victim dies while it holds (the holder, when they are the same, never resumes).
    let cases: &[(&str, Victim)] = &[
        ("controller.migrate.prepare", Victim::Controller),
        ("agent.migrate-out.storage", Victim::Source),
        ("controller.migrate.memory", Victim::Controller),
        ("agent.migrate-out.memory", Victim::Target),
        ("agent.migrate-out.switchover", Victim::Source),
        ("agent.migrate-out.switchover", Victim::Target),
        ("controller.migrate.switchover", Victim::Controller),
        ("controller.migrate.commit", Victim::Controller),
        ("controller.migrate.commit", Victim::Target),
        ("controller.migrate.cleanup", Victim::Controller),
        ("controller.migrate.cleanup", Victim::Source),
    ];
    let mut outcomes = Vec::new();
    for (point, victim) in cases {
        let what = format!("{victim:?} killed at {point}");
        eprintln!("case: {what}");
        let to = other(&host);
        k.arm(point);
        let task = k.d.ok(&["migrate", "mover", "--to", to, "--detach"]);
        let task = task.trim().to_string();
        k.wait_reached(point);
        let holder_dies = match victim {
            Victim::Controller => {
                k.d.kill9();
                k.d.launch();
                point.starts_with("controller.")
            }
            Victim::Source => {
                let i = Cluster::index_of(&host);
                k.kill_agent(i);
                k.start_agent(i);
                point.starts_with("agent.")
            }
            Victim::Target => {
                let i = Cluster::index_of(to);
                k.kill_agent(i);
                k.start_agent(i);
                false
            }
        };
        if !holder_dies {
            k.release(point);
        }
        k.wait_online();
        let t = k.task_end(&task);
        eprintln!("{what}: {t}");
        let now = check_one_copy(&k, &vm_id, &mut last, &what).await;
        assert!(
            k.d.json(&["task", "show", &task])["state"] != "running",
            "{what}: {t}"
        );
        outcomes.push(format!("{what}: {} ({})", now, t["state"]));
        host = now;
    }
    // Both ends happen: some migrations were undone, some finished.
    let moved = outcomes.iter().filter(|o| o.contains("succeeded")).count();
    assert!(
        moved > 0 && moved < outcomes.len(),
        "some moves finish, some are undone: {outcomes:#?}"
    );

    // A cancel while the memory is sent: the VM stays where it was.
    k.arm("agent.migrate-out.memory");
    let task =
        k.d.ok(&["migrate", "mover", "--to", other(&host), "--detach"]);
    let task = task.trim().to_string();
    k.wait_reached("agent.migrate-out.memory");
    let out = k.d.ok(&["task", "cancel", &task]);
    assert!(out.contains("cancelling"), "{out}");
    k.release("agent.migrate-out.memory");
    let t = k.task_end(&task);
    assert_eq!(t["state"], "failed", "{t}");
    assert!(t["error"].as_str().unwrap().contains("cancelled"), "{t}");
    let after = check_one_copy(&k, &vm_id, &mut last, "cancelled").await;
    assert_eq!(
        after, host,
        "a cancelled migration leaves the VM where it was"
    );

    // The link between the hosts cut mid-stream (every packet between the two agents'
    // QEMUs dropped, the controller's links kept): the migration gives up, the VM runs
    // on where it was, the target's copy goes.
    k.arm("agent.migrate-out.memory");
    let task = k.d.ok(&[
        "migrate",
        "mover",
        "--to",
        other(&host),
        "--bandwidth",
        "1",
        "--detach",
    ]);
    let task = task.trim().to_string();
    k.wait_reached("agent.migrate-out.memory");
    k.release("agent.migrate-out.memory");
    // Cut once the memory flows.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = k.d.json(&["task", "show", &task]);
        if t["message"].as_str().unwrap_or("").starts_with("active:") {
            break;
        }
        assert!(Instant::now() < deadline, "the memory never flowed: {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let nft = |rules: &str| {
        let ok = Command::new("ip")
            .args(["netns", "exec", &k.node.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(rules.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(ok.success(), "nft {rules}");
    };
    nft("table inet hostel_test_cut {
        chain out { type filter hook output priority 0;
            ip saddr 10.254.0.2 ip daddr 10.254.0.2 tcp dport != { 8471, 8472 } drop
            ip saddr 10.254.0.2 ip daddr 10.254.0.2 tcp sport != { 8471, 8472 } drop
        }
    }");
    let t = k.task_end(&task);
    nft("delete table inet hostel_test_cut");
    assert_eq!(t["state"], "failed", "{t}");
    let after = check_one_copy(&k, &vm_id, &mut last, "link cut").await;
    assert_eq!(after, host, "a cut link leaves the VM where it was");
    let left = files_of(&k.dir, &vm_id);
    assert_eq!(
        left.len(),
        1,
        "one disk file for the VM, on its host: {left:?}"
    );

    // A busy guest (writing memory all the time) that cannot converge within the
    // downtime allowed: the migration gives up and the VM runs on where it was; with
    // --force-complete it is paused to finish, and arrives.
    let mut con = k.d.console("mover").await;
    con.run(
        "(while true; do i=0; while [ $i -lt 300 ]; do echo $i$i$i$i$i$i$i$i > /tmp/x$i; \
         i=$((i+1)); done; done) & true",
    )
    .await;
    drop(con);
    let slow = ["--max-downtime", "1", "--bandwidth", "4"];
    let err =
        k.d.fails(&[&["migrate", "mover", "--to", other(&host)][..], &slow].concat());
    assert!(err.contains("did not converge"), "{err}");
    let after = check_one_copy(&k, &vm_id, &mut last, "not converging").await;
    assert_eq!(
        after, host,
        "a migration given up leaves the VM where it was"
    );
    let out = k.d.ok(&[
        &["migrate", "mover", "--to", other(&host), "--force-complete"][..],
        &slow,
    ]
    .concat());
    assert!(out.contains("paused to finish"), "{out}");
    host = check_one_copy(&k, &vm_id, &mut last, "forced").await;
    assert_eq!(host, other(&after));

    // Offline: a stopped VM moves with its disk copied. Killed before its commit, it
    // stays where it was and the new file goes; then it moves, and boots there with its
    // disk as it was.
    k.d.ok(&["destroy", "mover"]);
    let err = k.d.fails(&["migrate", "mover", "--to", other(&host)]);
    assert!(err.contains("--offline"), "{err}");
    k.arm("controller.migrate.offline-commit");
    let task = k.d.ok(&[
        "migrate",
        "mover",
        "--to",
        other(&host),
        "--offline",
        "--detach",
    ]);
    let task = task.trim().to_string();
    k.wait_reached("controller.migrate.offline-commit");
    assert_eq!(files_of(&k.dir, &vm_id).len(), 2, "the copy is made");
    k.d.kill9();
    k.d.launch();
    k.wait_online();
    let t = k.task_end(&task);
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(k.d.describe("mover")["host"], host.as_str());
    let left = files_of(&k.dir, &vm_id);
    assert_eq!(left.len(), 1, "the half-made move's file went: {left:?}");
    let out =
        k.d.ok(&["migrate", "mover", "--to", other(&host), "--offline"]);
    assert!(out.contains("moved offline"), "{out}");
    let moved = k.d.describe("mover");
    assert_eq!(moved["host"], other(&host));
    let left = files_of(&k.dir, &vm_id);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0]
            .to_string_lossy()
            .contains(&format!("agent-{}/", other(&host))),
        "{left:?}"
    );
    k.d.ok(&["start", "mover"]);
    let mut con = k.d.console("mover").await;
    con.wait_for(READY, Duration::from_secs(180)).await;
    assert_eq!(con.run("head -c 12 /dev/vda").await, "still-mine-1");
    drop(con);
    assert_eq!(qemus_of(&vm_id).len(), 1);

    k.d.ok(&["destroy", "mover"]);
    k.d.ok(&["delete", "mover"]);

    // Shared storage (both agents reach the same directory, as NFS would give them):
    // only the memory moves; the disk stays the same file, which the guest still reads.
    let shared = k.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    k.d.ok(&[
        "pool",
        "create",
        "nfs",
        "--path",
        shared.to_str().unwrap(),
        "--shared",
        "--host",
        NODES[0].0,
    ]);
    create_small(&k.d, "sharer", &["--pool", "nfs"]);
    let before = k.d.describe("sharer");
    let sharer_id = before["id"].as_str().unwrap().to_string();
    let path = before["disks"][0]["path"].as_str().unwrap().to_string();
    assert!(path.starts_with(shared.to_str().unwrap()), "{path}");
    let mut con = k.d.console("sharer").await;
    con.wait_for(READY, Duration::from_secs(180)).await;
    con.run("echo on-shared-disk | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        .await;
    drop(con);
    let from = before["host"].as_str().unwrap().to_string();
    let out = k.d.ok(&["migrate", "sharer", "--to", other(&from)]);
    assert!(out.contains("ms downtime"), "{out}");
    let after = k.d.describe("sharer");
    assert_eq!(after["host"], other(&from));
    assert_eq!(after["disks"][0]["path"], path.as_str(), "the same file");
    let q = qemus_of(&sharer_id);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].1, other(&from));
    let mut con = k.d.console("sharer").await;
    assert_eq!(
        con.run("echo 3 > /proc/sys/vm/drop_caches; head -c 14 /dev/vda")
            .await,
        "on-shared-disk"
    );
    // Busy there, and not converging within the downtime allowed: with only memory to
    // move it ends in post-copy (the guest runs on the target at once and fetches the
    // pages it lacks), and arrives whole: its counter goes on from where it was.
    con.run("(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done) & true")
        .await;
    con.run(
        "(while true; do i=0; while [ $i -lt 300 ]; do echo $i$i$i$i$i$i$i$i > /tmp/x$i; \
         i=$((i+1)); done; done) & true",
    )
    .await;
    let before = count(con.run("cat /tmp/count").await);
    drop(con);
    // Slowly (4 MiB/s, 1 ms of downtime allowed): a busy guest does not converge.
    let slowly = |to: &str, detach: bool| {
        let mut args = vec!["migrate", "sharer", "--to", to];
        args.extend(["--max-downtime", "1", "--bandwidth", "4"]);
        if detach {
            args.push("--detach");
        }
        k.d.ok(&args).trim().to_string()
    };
    let out = slowly(&from, false);
    assert!(out.contains("finished by post-copy"), "{out}");
    let back = k.d.describe("sharer");
    assert_eq!(
        (back["host"].as_str(), back["state"].as_str()),
        (Some(from.as_str()), Some("running"))
    );
    let q = qemus_of(&sharer_id);
    assert_eq!(q.len(), 1, "one QEMU once the post-copy completed: {q:?}");
    assert_eq!(q[0].1, from);
    let mut con = k.d.console("sharer").await;
    let now = count(con.run("cat /tmp/count").await);
    assert!(now > before, "the guest counts on ({before} then {now})");
    assert_eq!(
        con.run("echo 3 > /proc/sys/vm/drop_caches; head -c 14 /dev/vda")
            .await,
        "on-shared-disk"
    );
    // 32 MiB of random bytes (zero pages cost nothing to send) rewritten nonstop: a
    // post-copy long enough to cut its link, at 4 MiB/s.
    con.run(
        "(while true; do dd if=/dev/urandom of=/tmp/big bs=1M count=32 2>/dev/null; done) & true",
    )
    .await;
    let before = count(con.run("cat /tmp/count").await);
    drop(con);
    // The link broken in the middle of a post-copy (every connection between the QEMUs
    // reset): the guest waits on the target for the pages still on the source, which
    // keeps them; recovery resumes the post-copy once the link is back, and the guest
    // goes on, whole.
    let task = slowly(other(&from), true);
    // Cut once the target runs the guest (it asked for pages): a cut while the device
    // state is still on its way ends the receiving QEMU, and the VM with it (below).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = k.d.json(&["task", "show", &task]);
        let m = t["message"].as_str().unwrap_or("").to_string();
        let asked = m
            .split(", ")
            .find_map(|p| p.strip_suffix(" pages fetched on demand"))
            .and_then(|n| n.parse::<u64>().ok());
        if m.starts_with("postcopy-active") && asked.is_some_and(|n| n > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target never ran the guest: {t}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nft("table inet hostel_test_reset {
        chain out { type filter hook output priority 0;
            ip saddr 10.254.0.2 ip daddr 10.254.0.2 tcp dport != { 8471, 8472 } reject with tcp reset
            ip saddr 10.254.0.2 ip daddr 10.254.0.2 tcp sport != { 8471, 8472 } reject with tcp reset
        }
    }");
    // Either the post-copy pauses, both halves kept, and resumes once the link is back;
    // or the receiving QEMU ends on the reset (seen in CI: QEMU does not always pause),
    // and the VM is crashed, never run on from the stale source. Never two copies.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = k.d.json(&["task", "show", &task]);
        let paused = t["message"]
            .as_str()
            .unwrap_or("")
            .contains("post-copy paused");
        if paused {
            assert_eq!(qemus_of(&sharer_id).len(), 2, "both halves are kept: {t}");
        }
        if paused || t["state"] != "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the reset link never told: {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
    nft("delete table inet hostel_test_reset");
    let t = k.task_end(&task);
    let q = qemus_of(&sharer_id);
    let there = k.d.describe("sharer");
    if t["state"] == "succeeded" {
        assert_eq!(there["host"], other(&from));
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(q[0].1, other(&from));
        let mut con = k.d.console("sharer").await;
        let now = count(con.run("cat /tmp/count").await);
        assert!(now > before, "the guest counts on ({before} then {now})");
        drop(con);
    } else {
        assert_eq!(there["state"], "crashed", "{t} {there}");
        // The half left is ended (its host may still be ending it as the task ends).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut q = q;
        while !q.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            q = qemus_of(&sharer_id);
        }
        assert!(
            q.is_empty(),
            "no half runs on: {q:?}; the daemon said: {}",
            {
                let log = k.d.daemon_output();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("migrat") || l.contains("post-copy") || l.contains("WARN")
                    })
                    .collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            }
        );
        k.d.ok(&["start", "sharer"]);
        let mut con = k.d.console("sharer").await;
        con.wait_for(READY, Duration::from_secs(180)).await;
        drop(con);
    }
    let at = k.d.describe("sharer")["host"].as_str().unwrap().to_string();
    let mut con = k.d.console("sharer").await;
    con.run(
        "(while true; do dd if=/dev/urandom of=/tmp/big bs=1M count=32 2>/dev/null; done) & true",
    )
    .await;
    drop(con);
    // The receiving QEMU killed in the middle of a post-copy: the guest's memory was split
    // between the hosts, so the source's stale copy must not run on (the target ran the
    // guest and wrote its disk since). It ends, and the VM is crashed, whole on its disk:
    // started again, it boots.
    let task = slowly(other(&at), true);
    let deadline = Instant::now() + Duration::from_secs(120);
    let target_qemu = loop {
        let t = k.d.json(&["task", "show", &task]);
        if t["message"]
            .as_str()
            .unwrap_or("")
            .contains("postcopy-active")
        {
            let q = qemus_of(&sharer_id);
            break q.iter().find(|(_, h)| *h == other(&at)).unwrap().0;
        }
        assert!(Instant::now() < deadline, "never in post-copy: {t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(target_qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = k.task_end(&task);
    assert_eq!(t["state"], "failed", "{t}");
    let lost = k.d.describe("sharer");
    assert_eq!(lost["state"], "crashed", "{lost}");
    assert!(
        lost["state_reason"]
            .as_str()
            .unwrap_or("")
            .contains("post-copy"),
        "{lost}"
    );
    assert_eq!(lost["host"], at.as_str());
    assert!(qemus_of(&sharer_id).is_empty(), "no half of the VM runs on");
    k.d.ok(&["start", "sharer"]);
    let mut con = k.d.console("sharer").await;
    con.wait_for(READY, Duration::from_secs(180)).await;
    // (Once seen in CI: the shell's complaint about a garbled first line of input ahead
    // of the answer. The disk's bytes are what is checked.)
    let got = con.run("head -c 14 /dev/vda").await;
    assert!(got.ends_with("on-shared-disk"), "{got:?}");
    drop(con);
    assert!(std::path::Path::new(&path).exists());
    k.d.ok(&["destroy", "sharer"]);
    k.d.ok(&["delete", "sharer"]);
    k.d.ok(&["pool", "delete", "nfs"]);
    for i in 0..NODES.len() {
        k.kill_agent(i);
    }
}

/// The VM's disk files in both agents' default pools.
fn files_of(dir: &Path, vm_id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (n, _) in NODES {
        let disks = dir.join(format!("agent-{n}")).join("disks");
        for e in std::fs::read_dir(&disks).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(vm_id) {
                out.push(e.path());
            }
        }
    }
    out
}
