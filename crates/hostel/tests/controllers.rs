//! Two `hostel controller`s on one real PostgreSQL server, a real agent with real guests:
//! either controller serves the API; the leader follows the host; SIGKILLed in the middle
//! of a workload, its background work (the host's events, its unfinished operations) is
//! taken over by the other within seconds, and nothing is lost. And the chaos harness's
//! workload through both controllers while they (and the agent) are killed over and
//! over: its invariants hold.

mod common;
use common::workload::*;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

/// One `hostel controller`: its data dir, client config and process.
struct Ctl {
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Ctl {
    fn launch(ns: &Netns, dir: &Path, database: &str) -> Ctl {
        Self::launch_with(ns, dir, database, &[])
    }

    fn launch_with(ns: &Netns, dir: &Path, database: &str, env: &[(&str, &Path)]) -> Ctl {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("client.toml");
        let _ = std::fs::remove_file(&config);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("controller.out"))
            .unwrap();
        let child = ns
            .cmd(bin())
            .args([
                "controller",
                "--listen",
                "127.0.0.1:0",
                "--ssh-listen",
                "127.0.0.1:0",
            ])
            .args(["--database", database, "--data-dir"])
            .arg(dir.join("data"))
            .env("HOSTEL_CONFIG", &config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Ctl {
            dir: dir.to_path_buf(),
            config,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.config.exists() {
            if let Some(s) = c.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hostel controller exited with {s}: {}", c.output());
            }
            assert!(Instant::now() < deadline, "not ready: {}", c.output());
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("controller.out")).unwrap_or_default()
    }

    fn cli(&self, ns: &Netns, args: &[&str]) -> Output {
        ns.cmd(bin())
            .args(args)
            .env("HOSTEL_CONFIG", &self.config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, ns: &Netns, args: &[&str]) -> String {
        let o = self.cli(ns, args);
        assert!(
            o.status.success(),
            "hostel {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, ns: &Netns, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(ns, &a)).unwrap()
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Its API's address, from the client config it wrote.
    fn url(&self) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        v["url"].as_str().unwrap().to_string()
    }

    fn id(&self, ns: &Netns) -> String {
        self.json(ns, &["info"])["controller"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Who leads, as `hostel info` says (`None` while nobody does).
fn leader(ns: &Netns, c: &Ctl) -> Option<String> {
    let info = c.json(ns, &["info"]);
    info["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["leader"] == true)
        .map(|c| c["id"].as_str().unwrap().to_string())
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// QEMU processes under the agent's runtime directory, by VM id.
fn qemus(agent_data: &Path) -> std::collections::BTreeMap<String, usize> {
    qemus_under(&agent_data.join("run"))
}

/// Two controllers on one PostgreSQL server (a first: it leads), a real agent at
/// `agent_listen` in their namespace (added through b, the standby), and the image `tiny`.
struct Cluster {
    _pg: hostel_store::testing::PgServer,
    url: String,
    ns: Netns,
    tmp: tempfile::TempDir,
    a: Ctl,
    b: Ctl,
    agent: std::process::Child,
    agent_at: AgentAt,
}

impl Cluster {
    /// Controller a with `a_env`, the agent with `agent_env`.
    fn start(a_env: &[(&str, &Path)], agent_env: &[(&str, &Path)], agent_listen: &str) -> Cluster {
        let pg = hostel_store::testing::PgServer::start();
        let url = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(pg.database("hostel"));
        let ns = Netns::new();
        let tmp = tempfile::Builder::new()
            .prefix("hostel-ctl-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let a = Ctl::launch_with(&ns, &tmp.path().join("a"), &url, a_env);
        // The second shares the first's cluster CA, SSH host key and admin token.
        let b_dir = tmp.path().join("b");
        std::fs::create_dir_all(b_dir.join("data")).unwrap();
        let copy = std::process::Command::new("cp")
            .arg("-a")
            .arg(a.dir.join("data/pki"))
            .arg(a.dir.join("data/admin.token"))
            .arg(b_dir.join("data"))
            .status()
            .unwrap();
        assert!(copy.success());
        let b = Ctl::launch(&ns, &b_dir, &url);
        wait_for("a leader", Duration::from_secs(10), || {
            leader(&ns, &b).is_some()
        });
        let tls = tmp.path().join("tls");
        a.ok(
            &ns,
            &[
                "agent-cert",
                "node1",
                "--san",
                "127.0.0.1",
                "--data-dir",
                a.dir.join("data").to_str().unwrap(),
                "--out",
                tls.to_str().unwrap(),
            ],
        );
        let agent_at = AgentAt {
            name: "node1",
            listen: agent_listen.into(),
            tls,
            data: tmp.path().join("agent"),
            env: agent_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.display().to_string()))
                .collect(),
        };
        let (agent, agent_url) = start_agent_as(&ns, &agent_at);
        b.ok(&ns, &["host", "add", &agent_url]);
        let c = Cluster {
            _pg: pg,
            url,
            ns,
            tmp,
            a,
            b,
            agent,
            agent_at,
        };
        wait_for("node1 online on both", Duration::from_secs(30), || {
            c.online(&c.a) && c.online(&c.b)
        });
        c.b.ok(&c.ns, &["image", "build", "tiny", "--name", "tiny"]);
        c
    }

    /// Whether `c` says the agent is online.
    fn online(&self, c: &Ctl) -> bool {
        c.json(&self.ns, &["host", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "node1" && h["online"] == true)
    }
}

#[test]
fn two_controllers_one_dies_the_other_takes_over() {
    let tmp_holds = tempfile::tempdir().unwrap();
    let holds = tmp_holds.path().to_path_buf();
    let Cluster {
        _pg,
        url,
        ns,
        tmp,
        mut a,
        mut b,
        mut agent,
        agent_at,
    } = Cluster::start(
        &[("HOSTEL_HOLD_DIR", &holds)],
        &[("HOSTEL_HOLD_DIR", &holds)],
        "127.0.0.1:0",
    );
    let agent_data = agent_at.data.clone();
    let a_id = a.id(&ns);
    let b_id = b.id(&ns);
    let first = leader(&ns, &b).unwrap();
    assert_eq!(first, a_id, "the first controller leads");
    let shown = b.ok(&ns, &["info"]);
    assert!(
        shown.contains("(leads)") && shown.contains(&b_id),
        "{shown}"
    );
    let online = |c: &Ctl| {
        c.json(&ns, &["host", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "node1" && h["online"] == true)
    };
    // The agent was added through the one that stands by; the image built through it
    // is known to both.
    assert_eq!(a.json(&ns, &["image", "list"])[0]["name"], "tiny");

    // Work through both: a's running guest, b's stopped one.
    a.ok(
        &ns,
        &[
            "create",
            "va",
            "--image",
            "tiny",
            "--memory",
            "96M",
            "--no-network",
        ],
    );
    b.ok(
        &ns,
        &[
            "create",
            "vb",
            "--image",
            "tiny",
            "--memory",
            "96M",
            "--no-network",
            "--no-start",
        ],
    );
    // A change one controller makes, the other shows at once (same database).
    assert_eq!(b.json(&ns, &["describe", "va"])["state"], "running");
    // Operations on one VM are one at a time across controllers: starts through both
    // at once leave one QEMU.
    let (ra, rb) = std::thread::scope(|s| {
        let x = s.spawn(|| a.cli(&ns, &["start", "vb"]));
        let y = s.spawn(|| b.cli(&ns, &["start", "vb"]));
        (x.join().unwrap(), y.join().unwrap())
    });
    assert!(
        ra.status.success() != rb.status.success(),
        "exactly one start of vb succeeds: {} / {}",
        String::from_utf8_lossy(&ra.stderr),
        String::from_utf8_lossy(&rb.stderr)
    );
    let vb_id = b.json(&ns, &["describe", "vb"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(qemus(&agent_data).get(&vb_id), Some(&1));
    // A client that hangs up does not cut what it asked for: a disk add through a, held
    // where its file is made, whose CLI is killed there, is done whole once let go.
    let point = "controller.disk-add.file-made";
    std::fs::write(holds.join(point), "").unwrap();
    let mut hung_up = ns
        .cmd(bin())
        .args(["disk", "add", "vb", "--size", "8M"])
        .env("HOSTEL_CONFIG", &a.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a holds vb's disk add", Duration::from_secs(30), || {
        holds.join(format!("{point}.reached")).exists()
    });
    hung_up.kill().unwrap();
    hung_up.wait().unwrap();
    std::fs::remove_file(holds.join(format!("{point}.reached"))).unwrap();
    // (The controller sees the connection closed within milliseconds; before, that
    // dropped the operation where it was held.)
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(holds.join(format!("{point}.go")), "").unwrap();
    wait_for("the disk add done whole", Duration::from_secs(30), || {
        let ops = a.json(&ns, &["operations", "--vm", "vb"]);
        ops.as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "disk-add" && o["state"] == "succeeded")
    });
    assert_eq!(
        a.json(&ns, &["disk", "list", "vb"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // An operation through b waits while one through a holds the VM: a's disk add is
    // held where its file is made; b's snapshot waits for it, then both are done.
    std::fs::write(holds.join(point), "").unwrap();
    std::thread::scope(|s| {
        let add = s.spawn(|| a.cli(&ns, &["disk", "add", "vb", "--size", "8M"]));
        wait_for("a holds vb", Duration::from_secs(30), || {
            holds.join(format!("{point}.reached")).exists()
        });
        let snap = s.spawn(|| b.cli(&ns, &["snapshot", "create", "vb", "s1"]));
        wait_for("b waits for vb", Duration::from_secs(30), || {
            b.output()
                .contains("another controller operates the VM: waiting")
        });
        assert!(!snap.is_finished());
        std::fs::write(holds.join(format!("{point}.go")), "").unwrap();
        for (what, h) in [("disk add", add), ("snapshot", snap)] {
            let o = h.join().unwrap();
            assert!(
                o.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    });
    assert_eq!(
        b.json(&ns, &["disk", "list", "vb"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The leader dies in the middle of an operation of its own: a start of vb, held in
    // the agent where its QEMU has been spawned. The agent finishes that start: vb
    // runs (before, the agent dropped the start with the connection, and vb stayed
    // "starting" for good, its QEMU running).
    a.ok(&ns, &["destroy", "vb"]);
    let point = "agent.start.spawned";
    std::fs::write(holds.join(point), "").unwrap();
    let config = a.config.clone();
    std::thread::scope(|s| {
        let start = s.spawn(|| {
            ns.cmd(bin())
                .args(["start", "vb"])
                .env("HOSTEL_CONFIG", &config)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        });
        wait_for(
            "the agent holds vb's start",
            Duration::from_secs(30),
            || holds.join(format!("{point}.reached")).exists(),
        );
        a.kill9();
        assert!(!start.join().unwrap().status.success());
    });
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(holds.join(format!("{point}.go")), "").unwrap();
    let t = Instant::now();
    wait_for("b leads", Duration::from_secs(15), || {
        leader(&ns, &b).as_deref() == Some(b_id.as_str())
    });
    wait_for("node1 followed by b", Duration::from_secs(30), || {
        online(&b)
    });
    eprintln!(
        "takeover (leader SIGKILLed → the other leads and follows the host): {:?}",
        t.elapsed()
    );
    wait_for(
        "vb running after its cut start",
        Duration::from_secs(30),
        || b.json(&ns, &["describe", "vb"])["state"] == "running",
    );
    assert_eq!(qemus(&agent_data).get(&vb_id), Some(&1));
    drop(a);
    // Again, armed to die where its disk add's file is made.
    let mut a = Ctl::launch_with(
        &ns,
        &tmp.path().join("a"),
        &url,
        &[(
            "HOSTEL_CRASH_AT",
            Path::new("controller.disk-add.file-made"),
        )],
    );
    // b still leads (a came back as a standby).
    assert_eq!(leader(&ns, &b).as_deref(), Some(b_id.as_str()));
    let cut = a.cli(&ns, &["disk", "add", "va", "--size", "8M"]);
    assert!(!cut.status.success(), "a died at its crash point");
    a.child.as_mut().unwrap().wait().unwrap();
    a.child = None;
    // a's disk-add is settled by b once a's heartbeat is stale: the file without a row
    // is removed, the operation failed with why.
    let settled = wait_for("a's operation settled", Duration::from_secs(30), || {
        b.json(&ns, &["operations", "--vm", "va"])
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "disk-add" && o["state"] == "failed")
    });
    eprintln!("a's interrupted operation settled by b after {settled:?}");
    let doctor = b.cli(&ns, &["doctor", "-o", "json"]);
    let report: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // Now the leader b dies, with nothing held: a (restarted clean) takes over the host.
    let a = Ctl::launch(&ns, &tmp.path().join("a"), &url);
    std::thread::sleep(Duration::from_secs(1));
    b.kill9();
    let t = Instant::now();
    wait_for("a leads after b died", Duration::from_secs(15), || {
        leader(&ns, &a).is_some_and(|l| l != b_id)
    });
    wait_for("node1 followed by a", Duration::from_secs(30), || {
        online(&a)
    });
    let takeover = t.elapsed();
    eprintln!("takeover (leader SIGKILLed → the other leads and follows the host): {takeover:?}");
    // The new leader follows the host's events: a QEMU killed outside Hostel is seen.
    let va_id = a.json(&ns, &["describe", "va"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let va = a.json(&ns, &["describe", "va"]);
    let pid = va["qemu"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("va runs, with a pid: {va}"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for("va seen crashed", Duration::from_secs(15), || {
        a.json(&ns, &["describe", "va"])["state"] == "crashed"
    });
    assert_eq!(qemus(&agent_data).get(&va_id), None);
    // Nothing is left running in the journal, and one QEMU per running VM.
    let running = a.json(&ns, &["operations", "--state", "running"]);
    assert!(running.as_array().unwrap().is_empty(), "{running}");
    for v in a.json(&ns, &["list"]).as_array().unwrap() {
        let want = matches!(v["state"].as_str(), Some("running" | "paused")) as usize;
        let have = qemus(&agent_data)
            .get(v["id"].as_str().unwrap())
            .copied()
            .unwrap_or(0);
        assert_eq!(have, want, "{v}");
    }

    // The agent dies where it has made a disk add's file, before it answers: the
    // controller cannot know whether the file is there, so the operation is released to
    // the leader, which removes the file once the agent is back (before, the operation
    // ended failed and the file stayed, no VM's: the chaos run found it).
    let point = "agent.disk.created";
    std::fs::write(holds.join(point), "").unwrap();
    let config = a.config.clone();
    std::thread::scope(|s| {
        let add = s.spawn(|| {
            ns.cmd(bin())
                .args(["disk", "add", "va", "--size", "8M"])
                .env("HOSTEL_CONFIG", &config)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        });
        wait_for(
            "the agent holds va's disk add",
            Duration::from_secs(30),
            || holds.join(format!("{point}.reached")).exists(),
        );
        let _ = agent.kill();
        let _ = agent.wait();
        let out = add.join().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot be reached"), "{err}");
    });
    let _ = std::fs::remove_file(holds.join(point));
    let url_of_agent = a
        .json(&ns, &["host", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "node1")
        .map(|h| h["url"].as_str().unwrap().to_string())
        .unwrap();
    let again = AgentAt {
        listen: url_of_agent.trim_start_matches("https://").to_string(),
        ..agent_at.clone()
    };
    let (back, _) = start_agent_as(&ns, &again);
    agent = back;
    let settled = wait_for(
        "the released disk add settled",
        Duration::from_secs(60),
        || {
            a.json(&ns, &["operations", "--vm", "va"])
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["kind"] == "disk-add")
                .all(|o| o["state"] != "running")
        },
    );
    eprintln!("a disk add released by an unreachable agent settled after {settled:?}");
    let doctor = a.cli(&ns, &["doctor", "-o", "json"]);
    let report: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );

    a.ok(&ns, &["delete", "va"]);
    a.ok(&ns, &["destroy", "vb"]);
    a.ok(&ns, &["delete", "vb"]);
    drop(a);
    let _ = agent.kill();
    let _ = agent.wait();
}

/// The chaos harness's workload (`common::workload`) through both controllers at random,
/// as behind a load balancer, while the leader, the standby or the agent is killed: at a
/// crash point (it was started armed with `HOSTEL_CRASH_SEED`) or by SIGKILL at a random
/// time. After each kill the victim starts again, the journal settles (a dead
/// controller's operations through the survivor, once its heartbeat is stale) and the
/// invariants are checked. `HOSTEL_CHAOS_SEED` replays; `HOSTEL_CHAOS_MINUTES` (default
/// 2) sets the length.
#[test]
fn the_invariants_hold_while_controllers_and_the_agent_die() {
    let seed = chaos_seed();
    let minutes: f64 = std::env::var("HOSTEL_CHAOS_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    eprintln!(
        "chaos (controllers): seed {seed} (replay: HOSTEL_CHAOS_SEED={seed}), {minutes} minutes"
    );
    let mut rng = Rng(seed);
    // A fixed address in the test's own namespace: the agent comes back where the
    // controllers know it.
    let Cluster {
        _pg,
        url,
        ns,
        tmp,
        a,
        b,
        agent,
        agent_at,
    } = Cluster::start(&[], &[], "127.0.0.1:7801");
    let crash_log = tmp.path().join("crash-points.log");
    let tokens = make_users(&|args: &[&str]| a.ok(&ns, args));
    let counts = Counts::default();
    let ctl_dirs = [tmp.path().join("a"), tmp.path().join("b")];
    let ctls: [std::sync::RwLock<Ctl>; 2] = [a.into(), b.into()];
    let mut agent = Some(agent);
    // Each user's client config for each controller, rewritten (renamed into place)
    // when that controller comes back at a new address.
    let configs_dir = tmp.path().join("configs");
    let write_configs = |i: usize, ctl_url: &str| {
        for (u, t) in &tokens {
            let dir = configs_dir.join(i.to_string());
            std::fs::create_dir_all(dir.join("new")).unwrap();
            let fresh = config_for(&dir.join("new"), ctl_url, u, t);
            std::fs::rename(fresh, dir.join(format!("{u}.toml"))).unwrap();
        }
    };
    for (i, c) in ctls.iter().enumerate() {
        write_configs(i, &c.read().unwrap().url());
    }
    let config_of =
        |i: usize, user: &str| configs_dir.join(i.to_string()).join(format!("{user}.toml"));
    let cli = |config: &Path, args: &[&str]| -> Output {
        ns.cmd(bin())
            .args(args)
            .env("HOSTEL_CONFIG", config)
            .stdin(Stdio::null())
            .output()
            .expect("run hostel")
    };
    let saves = agent_at.data.join("saves");
    let armed = |rng: &mut Rng| -> Vec<(String, String)> {
        let mut env = vec![(
            "HOSTEL_CRASH_LOG".to_string(),
            crash_log.display().to_string(),
        )];
        if rng.below(2) == 0 {
            env.push(("HOSTEL_CRASH_SEED".into(), rng.next().to_string()));
            env.push(("HOSTEL_CRASH_ODDS".into(), "12".into()));
        }
        env
    };
    // (The one it replaces is ended first: one data dir, one process.)
    let relaunch_ctl = |i: usize, env: &[(String, String)]| {
        let env: Vec<(&str, &Path)> = env
            .iter()
            .map(|(k, v)| (k.as_str(), Path::new(v.as_str())))
            .collect();
        let mut slot = ctls[i].write().unwrap();
        if let Some(mut old) = slot.child.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        *slot = Ctl::launch_with(&ns, &ctl_dirs[i], &url, &env);
        write_configs(i, &slot.url());
    };
    let started = Instant::now();
    let mut round = 0u32;
    while started.elapsed() < Duration::from_secs_f64(minutes * 60.0) {
        round += 1;
        // The victim: the leader (half the rounds), the standby or the agent.
        let leader_id = leader(&ns, &ctls[0].read().unwrap());
        let lead = usize::from(leader_id.as_deref() != Some(&*ctls[0].read().unwrap().id(&ns)));
        let victim = match rng.below(4) {
            0 | 1 => Some(lead),
            2 => Some(1 - lead),
            _ => None,
        };
        // Started again armed (maybe) to die at a crash point, then the workload.
        let env = armed(&mut rng);
        match victim {
            Some(i) => {
                relaunch_ctl(i, &env);
            }
            None => {
                let mut old = agent.take().unwrap();
                let _ = old.kill();
                let _ = old.wait();
                let mut at = agent_at.clone();
                at.env = env.clone();
                agent = Some(start_agent_as(&ns, &at).0);
            }
        }
        counts
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gone = std::sync::atomic::AtomicBool::new(false);
        let kill_at = Instant::now() + Duration::from_millis(2_000 + rng.below(10_000));
        let victim_pid = match victim {
            Some(i) => ctls[i].read().unwrap().child.as_ref().unwrap().id(),
            None => agent.as_ref().unwrap().id(),
        };
        std::thread::scope(|s| {
            for (n, (user, _)) in tokens.iter().enumerate() {
                let mut wrng = Rng(rng.next() ^ n as u64);
                let (gone, counts, cli, saves) = (&gone, &counts, &cli, &saves);
                let config_of = &config_of;
                s.spawn(move || {
                    let mut held = vms_of(cli, &config_of(0, user), user).unwrap_or_default();
                    while !gone.load(std::sync::atomic::Ordering::SeqCst) {
                        let through = wrng.below(2) as usize;
                        let mix = Mix { network: false };
                        let config = config_of(through, user);
                        let (args, out) =
                            one_operation(cli, &config, saves, mix, user, &held, &mut wrng);
                        if out.status.success() {
                            match args[0].as_str() {
                                "create" => held.push(args[1].clone()),
                                "delete" => held.retain(|v| *v != args[1]),
                                _ => {}
                            }
                        }
                        if count(counts, &args, &out) {
                            // That one is gone: the next operation picks again.
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                });
            }
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if !pid_alive(victim_pid) {
                    break;
                }
                if Instant::now() >= kill_at {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(victim_pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    counts
                        .sigkills
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
            }
            gone.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        match victim {
            Some(i) => {
                let mut c = ctls[i].write().unwrap();
                c.child.as_mut().unwrap().wait().unwrap();
                c.child = None;
            }
            None => {
                agent.as_mut().unwrap().wait().unwrap();
            }
        }
        // The log grows by one line per crash at a point: each is counted once.
        let lines = std::fs::read_to_string(&crash_log).unwrap_or_default();
        let counted: u64 = counts.points.lock().unwrap().values().sum();
        if lines.lines().count() as u64 > counted {
            counts
                .crash_point_kills
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = lines.lines().last().unwrap().to_string();
            *counts.points.lock().unwrap().entry(p).or_insert(0) += 1;
        }
        // Back, clean; settled through either; checked.
        match victim {
            Some(i) => relaunch_ctl(i, &[]),
            None => {
                agent = Some(start_agent_as(&ns, &agent_at).0);
            }
        }
        counts
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let survivor = ctls[victim.map_or(0, |i| 1 - i)].read().unwrap();
        wait_for("the agent online again", Duration::from_secs(60), || {
            survivor
                .json(&ns, &["host", "list"])
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == "node1" && h["online"] == true)
        });
        let admin = Admin {
            cli: &cli,
            config: &survivor.config,
        };
        let violation = |what: String| counts.violation(seed, round, what);
        settle(&admin, &violation);
        check(&admin, &agent_at.data.join("run"), &counts, &violation);
        drop(survivor);
        if !counts.violations.lock().unwrap().is_empty() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-artifacts");
            let _ = std::fs::create_dir_all(&dir);
            for (i, c) in ctls.iter().enumerate() {
                let _ = std::fs::write(
                    dir.join(format!("chaos-controllers-{seed}-{i}.log")),
                    c.read().unwrap().output(),
                );
            }
            eprintln!("chaos: stopped at the first round with a violation; the controllers' logs are in {}", dir.display());
            break;
        }
    }
    let report = counts.report(seed, started.elapsed().as_secs_f64() / 60.0, round);
    eprintln!("chaos (controllers): {report}");
    if let Ok(path) = std::env::var("HOSTEL_CHAOS_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    let violations = counts.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "chaos seed {seed} (replay with HOSTEL_CHAOS_SEED={seed}): {violations:#?}"
    );
    assert!(round >= 2, "at least two kills and restarts");
    if let Some(mut g) = agent {
        let _ = g.kill();
        let _ = g.wait();
    }
}
