//! The SSH console gateway through a real OpenSSH client: attach by the user's registered
//! key, run a command, a second watcher sees it, the session survives a guest reboot;
//! strangers, unknown keys and unknown VMs are refused alike.

mod common;
use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    key
}

/// An `ssh` client in the daemon's namespace, its output collected as it comes.
struct Ssh {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Ssh {
    fn spawn(d: &Daemon, port: &str, key: &Path, known: &Path, user: &str, tty: bool) -> Ssh {
        let mut cmd = d.ns.cmd("ssh");
        if tty {
            cmd.arg("-tt");
        }
        cmd.args(["-p", port, "-i"])
            .arg(key)
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"])
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Ssh { child, out }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.out.lock().unwrap().contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}; saw:\n{}",
                self.out.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.out.lock().unwrap().matches(needle).count()
    }

    /// Waits for the client to end; its output.
    fn finish(mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "ssh did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        let out = self.out.lock().unwrap().clone();
        out
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_gateway_attaches_by_key() {
    let mut d = Daemon::start();
    let dir = d.dir.path();
    let info = d.json(&["info"]);
    let addr = info["ssh_console"].as_str().unwrap().to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let host_key = info["ssh_host_key"].as_str().unwrap().to_string();
    assert!(info["ssh_host_key_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("SHA256:"));
    assert!(
        d.ok(&["info"]).contains("SHA256:"),
        "info prints the fingerprint"
    );
    let known = dir.join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{port} {host_key}\n")).unwrap();

    d.ok(&["user", "create", "alice"]);
    d.ok(&["user", "create", "bob"]);
    let alice_key = keygen(dir, "alice");
    let bob_key = keygen(dir, "bob");
    let stranger_key = keygen(dir, "nobody");
    d.ok(&[
        "key",
        "add",
        "laptop",
        alice_key.with_extension("pub").to_str().unwrap(),
        "--user",
        "alice",
    ]);
    d.ok(&[
        "key",
        "add",
        "laptop",
        bob_key.with_extension("pub").to_str().unwrap(),
        "--user",
        "bob",
    ]);
    d.ok(&[
        "create",
        "c1",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
        "--on-crash",
        "restart",
    ]);
    d.ok(&["chown", "c1", "user:alice"]);
    let mut c = d.console("c1").await;
    c.wait_for(READY, Duration::from_secs(180)).await;

    // Alice attaches with her key: the scrollback replays the boot, a command runs.
    let mut s1 = Ssh::spawn(&d, &port, &alice_key, &known, "c1", true);
    s1.wait_for("console of c1", Duration::from_secs(20));
    s1.wait_for(READY, Duration::from_secs(20));
    s1.send("echo ssh-$((6*7))\n");
    s1.wait_for("ssh-42", Duration::from_secs(20));

    // A second watcher at the same time sees what the first one types.
    let s2 = Ssh::spawn(&d, &port, &alice_key, &known, "c1", true);
    s2.wait_for("console of c1", Duration::from_secs(20));
    s1.send("echo both-$((7*8))\n");
    s2.wait_for("both-56", Duration::from_secs(20));
    drop(s2);

    // The session survives a guest reboot.
    let before = s1.count(READY);
    d.ok(&["reboot", "c1"]);
    let deadline = Instant::now() + Duration::from_secs(180);
    while s1.count(READY) <= before {
        assert!(Instant::now() < deadline, "no second boot seen through ssh");
        std::thread::sleep(Duration::from_millis(100));
    }
    s1.send("echo after-$((8*9))\n");
    s1.wait_for("after-72", Duration::from_secs(30));

    // A guest panic: the session shows it, the VM restarts (on_crash restart), and the
    // same session goes on.
    let before = s1.count(READY);
    s1.send("echo c > /proc/sysrq-trigger\n");
    s1.wait_for("Kernel panic", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(180);
    while s1.count(READY) <= before {
        assert!(
            Instant::now() < deadline,
            "no boot after the panic seen through ssh"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s1.send("echo panic-$((9*9))\n");
    s1.wait_for("panic-81", Duration::from_secs(30));
    // `~.` detaches.
    s1.send("\r~.");
    s1.finish(Duration::from_secs(20));

    // Bob may not use c1, a stranger's key is unknown, a VM that does not exist: all
    // get the same refusal.
    for (key, user) in [
        (&bob_key, "c1"),
        (&stranger_key, "c1"),
        (&alice_key, "no-such-vm"),
    ] {
        let s = Ssh::spawn(&d, &port, key, &known, user, false);
        let out = s.finish(Duration::from_secs(30));
        assert!(
            out.contains("Permission denied (publickey)"),
            "{user}: {out}"
        );
        assert!(!out.contains("console of"), "{out}");
    }

    // Each attach is in the audit trail, with its length.
    let audit = d.json(&["audit", "--vm", "c1"]);
    let has =
        |action: &str| {
            audit.as_array().unwrap().iter().any(|e| {
                e["action"] == action && e["params"]["via"] == "ssh" && e["result"] == "ok"
            })
        };
    assert!(has("console.attach"), "{audit}");
    assert!(has("console.detach"), "{audit}");
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "console.detach" && e["params"]["seconds"].is_u64()),
        "{audit}"
    );
    // A daemon restart ends the sessions; the gateway comes back with the same host key
    // (the known_hosts entry still matches) and replays the scrollback, panic included.
    let status = d.sigterm();
    assert!(status.success(), "{status}");
    d.launch();
    let info = d.json(&["info"]);
    assert_eq!(
        info["ssh_host_key"].as_str().unwrap(),
        host_key,
        "host key kept"
    );
    let port = info["ssh_console"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&known, format!("[127.0.0.1]:{port} {host_key}\n")).unwrap();
    let mut s3 = Ssh::spawn(&d, &port, &alice_key, &known, "c1", true);
    s3.wait_for("Kernel panic", Duration::from_secs(20));
    s3.send("echo again-$((5*5))\n");
    s3.wait_for("again-25", Duration::from_secs(30));
    drop(s3);

    // The console log keeps what was typed and printed, also once the VM is stopped.
    let log = d.ok(&["console", "c1", "--log", "--lines", "400"]);
    assert!(log.contains("ssh-42") && log.contains(READY), "{log}");
    let three = d.ok(&["console", "c1", "--log", "--lines", "3"]);
    assert_eq!(three.lines().count(), 3, "{three}");
    d.ok(&["destroy", "c1"]);
    let log = d.ok(&["console", "c1", "--log"]);
    assert!(log.contains("again-25"), "{log}");
    let err = d.fails(&["console", "c1", "--log", "--lines", "999999999"]);
    assert!(err.contains("at most 100000"), "{err}");
}

/// Taking a right away ends the consoles it opened, within a second or two and with a
/// message, through the SSH gateway and the API's websocket alike: a removed key, a
/// revoked token, leaving the owning group, a VM given away. The new owner does not read
/// the previous owner's console log.
#[tokio::test(flavor = "multi_thread")]
async fn revocation_ends_open_consoles() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let info = d.json(&["info"]);
    let port = d.ssh_port();
    let known = dir.join("known_hosts");
    std::fs::write(
        &known,
        format!(
            "[127.0.0.1]:{port} {}\n",
            info["ssh_host_key"].as_str().unwrap()
        ),
    )
    .unwrap();
    d.ok(&["user", "create", "dave"]);
    d.ok(&["user", "create", "erin"]);
    d.ok(&["group", "create", "crew"]);
    d.ok(&["group", "add-member", "crew", "dave"]);
    d.ok(&["create", "rv", "--image", "tiny", "--memory", "128M"]);
    d.ok(&["chown", "rv", "user:dave"]);
    let closed = "console closed";
    let mut admin = d.console("rv").await;
    admin.wait_for(READY, Duration::from_secs(180)).await;

    // A removed key ends the SSH session it opened; the connection cannot open another.
    let key = keygen(dir, "dave");
    d.ok(&[
        "key",
        "add",
        "laptop",
        key.with_extension("pub").to_str().unwrap(),
        "--user",
        "dave",
    ]);
    let mut s = Ssh::spawn(&d, &port, &key, &known, "rv", true);
    s.wait_for("console of rv", Duration::from_secs(20));
    s.send("echo dave-was-$((40+2))\r");
    s.wait_for("dave-was-42", Duration::from_secs(20));
    let t = Instant::now();
    d.ok(&["key", "remove", "laptop", "--user", "dave"]);
    s.wait_for(closed, Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let out = s.finish(Duration::from_secs(10));
    assert!(
        out.contains("SSH key this console was opened with was removed"),
        "{out}"
    );

    // A revoked token ends the API console it opened.
    let token = d
        .ok(&["token", "create", "cli", "--user", "dave"])
        .trim()
        .to_string();
    let stream = d.ns.connect(d.url.trim_start_matches("http://"));
    let mut c = Console::open(stream, &d.url, &token, "rv").await;
    c.send("\n").await;
    d.ok(&["token", "revoke", "cli", "--user", "dave"]);
    c.wait_for(closed, Duration::from_secs(5)).await;
    assert!(c.seen.contains("was revoked or expired"), "{}", c.tail());

    // Leaving the owning group ends the member's console.
    d.ok(&["chown", "rv", "group:crew"]);
    let token = d
        .ok(&["token", "create", "cli2", "--user", "dave"])
        .trim()
        .to_string();
    let stream = d.ns.connect(d.url.trim_start_matches("http://"));
    let mut c = Console::open(stream, &d.url, &token, "rv").await;
    c.send("\n").await;
    d.ok(&["group", "remove-member", "crew", "dave"]);
    c.wait_for(closed, Duration::from_secs(5)).await;
    assert!(c.seen.contains("may no longer operate rv"), "{}", c.tail());

    // A VM given away: the previous owner's console ends, and the new owner's log starts
    // clean.
    d.ok(&["group", "add-member", "crew", "dave"]);
    let stream = d.ns.connect(d.url.trim_start_matches("http://"));
    let mut c = Console::open(stream, &d.url, &token, "rv").await;
    c.send("echo crew-was-$((40+2))\n").await;
    c.wait_for("crew-was-42", Duration::from_secs(20)).await;
    let before = d.ok(&["console", "rv", "--log", "--lines", "1000"]);
    assert!(before.contains("crew-was-42"), "the log had it: {before}");
    d.ok(&["chown", "rv", "user:erin"]);
    c.wait_for(closed, Duration::from_secs(5)).await;
    let after = d.ok(&["console", "rv", "--log", "--lines", "1000"]);
    assert!(
        !after.contains("crew-was-42"),
        "the new owner reads the old owner's log: {after}"
    );
    admin.send("echo erin-$((6*7))\n").await;
    admin.wait_for("erin-42", Duration::from_secs(20)).await;
    d.ok(&["destroy", "rv"]);
}
