//! The web UI in a real browser against a real `hostel up`: Debian's Chromium, driven by
//! playwright-core (`web/tests/ui.mjs`), inside the daemon's network namespace. A new
//! user logs in, creates a VM in the form, watches it start without a reload, uses both
//! consoles, resizes it, snapshots and reverts it, shares it with a group whose member
//! sees it in a second browser, and deletes it; every page passes an axe WCAG 2.1 AA
//! audit and loads without a CSP violation. Screenshots land in
//! `test-artifacts/screenshots` (`docs/screenshots` holds a copy for the README).

mod common;
use common::*;

fn password_file(d: &Daemon, name: &str, password: &str) -> String {
    let p = d.dir.path().join(format!("{name}.pw"));
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p.to_str().unwrap().to_string()
}

/// Runs `web/tests/SCRIPT` in Chromium against the daemon, inside its namespace, with
/// `env`; panics with its log unless every step passed. Gives the screenshots' directory.
fn browser_test(d: &Daemon, script: &str, env: &[(&str, &str)]) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = root.join("test-artifacts/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out =
        d.ns.cmd("node")
            .arg(root.join("web/tests").join(script))
            .arg(&d.url)
            .arg(&shots)
            .envs(env.iter().copied())
            .output()
            .expect("run node");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{log}");
    assert!(
        out.status.success(),
        "the browser test {script} failed:\n{log}"
    );
    assert!(log.contains("all steps passed"), "{log}");
    shots
}

#[test]
fn a_new_user_does_a_day_of_work_in_the_browser() {
    let d = Daemon::start();
    let alice_pw = password_file(&d, "alice", "correct-horse-7");
    let bob_pw = password_file(&d, "bob", "battery-staple-9");
    d.ok(&["user", "create", "alice", "--password-file", &alice_pw]);
    d.ok(&["user", "create", "bob", "--password-file", &bob_pw]);
    d.ok(&["group", "create", "team"]);
    d.ok(&["group", "add-member", "team", "alice"]);
    d.ok(&["group", "add-member", "team", "bob"]);

    let shots = browser_test(
        &d,
        "ui.mjs",
        &[
            ("ALICE", "alice:correct-horse-7"),
            ("BOB", "bob:battery-staple-9"),
            ("VM", "webvm"),
        ],
    );

    // What the browser did went through the API: the audit trail has it, as alice, from
    // the browser's address, and the VM is gone.
    let audit = d.json(&["audit", "--user", "alice"]);
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "webvm")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["user"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for want in [
        "vm.create",
        "vm.start",
        "console.attach",
        "vm.mem-set",
        "snapshot.create",
        "snapshot.revert",
        "vm.chown",
        "vm.delete",
    ] {
        assert!(
            actions.iter().any(|(a, u)| *a == want && *u == "alice"),
            "no {want} by alice in {actions:?}"
        );
    }
    // The form posted without its CSRF token changed nothing and reached no operation:
    // alice started the VM once (bob, once more, without JavaScript).
    let starts = actions.iter().filter(|(a, _)| *a == "vm.start").count();
    assert_eq!(starts, 1, "{actions:?}");
    let bobs = d.json(&["audit", "--user", "bob"]);
    assert!(
        bobs.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "vm.start" && e["target"] == "webvm" && e["result"] == "ok"),
        "{bobs}"
    );
    let list = d.json(&["list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|v| v["name"] != "webvm"),
        "{list}"
    );
    // Logging out revoked alice's browser session on the server.
    let sessions = d.json(&["token", "list", "--user", "alice"]);
    let web: Vec<_> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["session"].is_string())
        .collect();
    assert!(!web.is_empty(), "no browser session recorded: {sessions}");
    assert!(
        web.iter().all(|t| t["revoked"] == true),
        "a logged-out session is still valid: {sessions}"
    );
    for page in [
        "create",
        "vms",
        "vm",
        "console-serial",
        "console-vga",
        "usage",
        "login",
    ] {
        for size in ["desktop", "phone"] {
            let f = shots.join(format!("{page}-{size}.png"));
            assert!(
                std::fs::metadata(&f)
                    .map(|m| m.len() > 5000)
                    .unwrap_or(false),
                "no screenshot {}",
                f.display()
            );
        }
    }
}

#[test]
fn an_admin_sees_a_host_go_stale_and_a_quota_change_the_create_form() {
    let mut d = Daemon::unstarted();
    d.env.push(("HOSTEL_STALE_AFTER_SECS".into(), "4".into()));
    d.launch();
    let alice_pw = password_file(&d, "alice", "correct-horse-7");
    d.ok(&["user", "create", "alice", "--password-file", &alice_pw]);
    // A VM on the local host (made before node2 is), for its limits.
    d.ok(&[
        "create",
        "capped",
        "--image",
        "tiny",
        "--memory",
        "64M",
        "--disk",
        "16M",
        "--no-start",
        "--no-network",
    ]);
    // The admin's first password, as `hostel up` left it for root.
    let first = d.data_dir().join("initial-admin-password");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&first).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the first password is for root only");
    let admin_pw = std::fs::read_to_string(&first).unwrap().trim().to_string();

    // A second host, to be stopped.
    let (node, _dev) = linked_node(&d);
    let tls = d.dir.path().join("tls");
    d.ok(&[
        "agent-cert",
        "node2",
        "--data-dir",
        d.data_dir().to_str().unwrap(),
        "--san",
        "10.254.0.2",
        "--out",
        tls.to_str().unwrap(),
    ]);
    let (mut agent, url) = start_agent(&node, d.dir.path(), "10.254.0.2");
    d.ok(&["host", "add", &url]);

    let admin = format!("admin:{admin_pw}");
    let pid = agent.id().to_string();
    let backups = d.dir.path().join("backups");
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        browser_test(
            &d,
            "admin.mjs",
            &[
                ("ADMIN", admin.as_str()),
                ("ALICE", "alice:correct-horse-7"),
                ("AGENT_PID", pid.as_str()),
                ("HOST", "node2"),
                ("BACKUP_DIR", backups.to_str().unwrap()),
            ],
        )
    }));
    let _ = agent.kill();
    let _ = agent.wait();
    if let Err(e) = ran {
        std::panic::resume_unwind(e);
    }
    // What the browser saw is what the API says.
    let hosts = d.json(&["host", "list"]);
    let node2 = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "node2")
        .unwrap();
    assert_eq!(node2["stale"], true, "{node2}");
    let quota = d.json(&["quota", "show", "user:alice"]);
    assert_eq!(quota["limits"]["vcpus_total"], 5, "{quota}");
    let limits = &d.describe("capped")["limits"];
    assert_eq!(limits["cpu_weight"], 50, "{limits}");
    assert_eq!(limits["disk_bps"], 4 << 20, "{limits}");
}
