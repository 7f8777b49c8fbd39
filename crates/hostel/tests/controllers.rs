//! Two `hostel controller`s on one real PostgreSQL server, a real agent with real guests:
//! either controller serves the API; the leader follows the host; SIGKILLed in the middle
//! of a workload, its background work (the host's events, its unfinished operations) is
//! taken over by the other within seconds, and nothing is lost.

mod common;
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

#[test]
fn two_controllers_one_dies_the_other_takes_over() {
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
    let holds = tmp.path().join("holds");
    std::fs::create_dir_all(&holds).unwrap();
    let mut a = Ctl::launch_with(
        &ns,
        &tmp.path().join("a"),
        &url,
        &[("HOSTEL_HOLD_DIR", &holds)],
    );
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
    let mut b = Ctl::launch(&ns, &b_dir, &url);
    let a_id = a.json(&ns, &["info"])["controller"]
        .as_str()
        .unwrap()
        .to_string();
    let b_id = b.json(&ns, &["info"])["controller"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("a leader", Duration::from_secs(10), || {
        leader(&ns, &b).is_some()
    });
    let first = leader(&ns, &b).unwrap();
    assert_eq!(first, a_id, "the first controller leads");
    let shown = b.ok(&ns, &["info"]);
    assert!(
        shown.contains("(leads)") && shown.contains(&b_id),
        "{shown}"
    );

    // A real agent, added through the one that stands by: the leader follows it.
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
    let agent_data = tmp.path().join("agent");
    let (mut agent, agent_url) = start_agent_as(
        &ns,
        &AgentAt {
            name: "node1",
            listen: "127.0.0.1:0".into(),
            tls: tls.clone(),
            data: agent_data.clone(),
            env: Vec::new(),
        },
    );
    b.ok(&ns, &["host", "add", &agent_url]);
    let online = |c: &Ctl| {
        c.json(&ns, &["host", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "node1" && h["online"] == true)
    };
    wait_for("node1 online on both", Duration::from_secs(30), || {
        online(&a) && online(&b)
    });
    b.ok(&ns, &["image", "build", "tiny", "--name", "tiny"]);
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
    // An operation through b waits while one through a holds the VM: a's disk add is
    // held where its file is made; b's snapshot waits for it, then both are done.
    let point = "controller.disk-add.file-made";
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
        1
    );

    // The leader dies in the middle of an operation of its own: a disk added through it
    // (held at the point where its file exists and no row yet).
    a.kill9();
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
    a.ok(&ns, &["delete", "va"]);
    a.ok(&ns, &["destroy", "vb"]);
    a.ok(&ns, &["delete", "vb"]);
    drop(a);
    let _ = agent.kill();
    let _ = agent.wait();
}
