//! Users, groups, tokens and ownership: who may do what, through the real CLI, each
//! caller with a client config of its own; the audit trail; login rate limiting.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// A caller: the CLI with its own client config (URL + token).
struct As<'a> {
    d: &'a Daemon,
    config: PathBuf,
    token: String,
}

impl<'a> As<'a> {
    fn new(d: &'a Daemon, name: &str, token: &str) -> As<'a> {
        let config = d.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("url = {:?}\ntoken = {:?}\n", d.url, token)).unwrap();
        As {
            d,
            config,
            token: token.to_string(),
        }
    }
    fn run(&self, args: &[&str]) -> Output {
        self.d
            .ns
            .cmd(bin())
            .args(args)
            .env("HOSTEL_CONFIG", &self.config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{:?} {args:?}: {}",
            self.config.file_name().unwrap(),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "{:?} {args:?} should fail: {}",
            self.config.file_name().unwrap(),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

/// A full token for `user`, made by the admin.
fn token_for(d: &Daemon, user: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", name, "--user", user];
    args.extend_from_slice(extra);
    d.ok(&args).trim().to_string()
}

/// A daemon whose budget of refused requests per address (`--refusal-budget`) is far
/// above what a test of many refusals from one address makes.
fn lenient_daemon() -> Daemon {
    let mut d = Daemon::unstarted();
    d.env
        .push(("HOSTEL_REFUSAL_BUDGET".into(), "100000".into()));
    d.launch();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn who_may_do_what() {
    // Many refusals from one address, each checked for its message and its own audit
    // entry: a budget of refusals to match (tests/abuse.rs checks the default's).
    let d = lenient_daemon();
    let pw = d.dir.path().join("pw");
    std::fs::write(&pw, "alice's long passphrase\n").unwrap();
    let weak = d.dir.path().join("weak");
    std::fs::write(&weak, "abc\n").unwrap();

    // Bad input: clear errors, nothing made.
    let err = d.fails(&[
        "user",
        "create",
        "alice",
        "--password-file",
        weak.to_str().unwrap(),
    ]);
    assert!(err.contains("too weak"), "{err}");
    let err = d.fails(&["user", "create", "Alice"]);
    assert!(err.contains("lowercase"), "{err}");
    d.ok(&[
        "user",
        "create",
        "alice",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    for u in ["bob", "carol", "dave"] {
        d.ok(&["user", "create", u]);
    }
    let err = d.fails(&["user", "create", "bob"]);
    assert!(err.contains("exists already"), "{err}");
    d.ok(&["group", "create", "lab"]);
    d.ok(&["group", "create", "ops"]);
    let err = d.fails(&["group", "add-member", "lab", "nobody"]);
    assert!(err.contains("no user named \"nobody\""), "{err}");
    d.ok(&["group", "add-member", "lab", "bob"]);
    d.ok(&["group", "add-member", "ops", "carol"]);

    let alice = As::new(&d, "alice", &token_for(&d, "alice", "cli", &[]));
    let bob = As::new(&d, "bob", &token_for(&d, "bob", "cli", &[]));
    let carol = As::new(&d, "carol", &token_for(&d, "carol", "cli", &[]));
    let dave = As::new(&d, "dave", &token_for(&d, "dave", "cli", &[]));
    let ro = As::new(
        &d,
        "alice-ro",
        &token_for(&d, "alice", "ro", &["--read-only"]),
    );
    let revoked_token = token_for(&d, "alice", "old", &[]);
    d.ok(&["token", "revoke", "old", "--user", "alice"]);
    let revoked = As::new(&d, "revoked", &revoked_token);
    let nobody = As::new(&d, "nobody", "");
    let forged = As::new(
        &d,
        "forged",
        &format!("hostel-tok-admin.{}", "0".repeat(64)),
    );
    assert!(alice.ok(&["whoami"]).contains("alice (token cli)"));
    assert!(ro.ok(&["whoami"]).contains("read-only"));

    // Alice makes a VM: hers. An admin makes its administrator group `ops`; a VM of the
    // group `lab` is Bob's to operate too.
    let vm = alice.ok(&[
        "create",
        "a1",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
        "--no-start",
        "-o",
        "json",
    ]);
    let vm: serde_json::Value = serde_json::from_str(&vm).unwrap();
    assert_eq!(vm["owner"], "user:alice");
    let err = alice.fails(&["chown", "a1", "group:lab"]);
    assert!(err.contains("a group they are in"), "{err}");
    let err = d.fails(&["chown", "a1", "group:nosuch"]);
    assert!(err.contains("no group named"), "{err}");
    d.ok(&["chown", "a1", "user:alice", "--admin-group", "ops"]);
    d.ok(&[
        "create",
        "g1",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
        "--no-start",
    ]);
    d.ok(&["chown", "g1", "group:lab"]);

    // The matrix: each caller against reads and writes of a VM, and admin-only routes.
    // allowed = succeeds; "404" = the VM does not exist for them; else the error's words.
    let matrix: Vec<(&As, &str, [&str; 4])> = vec![
        // caller, VM, [read a1/g1, write, admin route, list shows it]
        (&alice, "a1", ["ok", "ok", "only an admin", "yes"]),
        (&bob, "g1", ["ok", "ok", "only an admin", "yes"]),
        (&carol, "a1", ["ok", "ok", "only an admin", "yes"]),
        (&dave, "a1", ["404", "404", "only an admin", "no"]),
        (&bob, "a1", ["404", "404", "only an admin", "no"]),
        (
            &ro,
            "a1",
            ["ok", "read-only", "only an admin|read-only", "yes"],
        ),
        (&revoked, "a1", ["revoked", "revoked", "revoked", "revoked"]),
        (
            &nobody,
            "a1",
            [
                "missing or wrong",
                "missing or wrong",
                "missing or wrong",
                "missing or wrong",
            ],
        ),
        (
            &forged,
            "a1",
            [
                "wrong API token",
                "wrong API token",
                "wrong API token",
                "wrong API token",
            ],
        ),
    ];
    for (who, vm, [read, write, admin, listed]) in &matrix {
        let name = who
            .config
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let check = |o: Output, want: &str, what: &str| {
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            match want {
                "ok" => assert!(o.status.success(), "{name} {what}: {err}"),
                "404" => {
                    assert!(!o.status.success(), "{name} {what} should fail");
                    assert!(
                        err.contains(&format!("no VM named \"{vm}\"")),
                        "{name} {what}: {err}"
                    );
                }
                w => {
                    assert!(!o.status.success(), "{name} {what} should fail");
                    assert!(
                        w.split('|').any(|w| err.contains(w)),
                        "{name} {what}: {err}"
                    );
                }
            }
        };
        for args in [
            vec!["describe", vm],
            vec!["disk", "list", vm],
            vec!["snapshot", "list", vm],
            vec!["nic", "list", vm],
            vec!["audit", "--vm", vm],
        ] {
            check(who.run(&args), read, &format!("{args:?}"));
        }
        let snap = format!("s-{}", name.trim_end_matches(".toml"));
        for args in [
            vec!["mem-set", vm, "100M"],
            vec!["disk", "add", vm, "--size", "8M"],
            vec!["snapshot", "create", vm, &snap],
        ] {
            check(who.run(&args), write, &format!("{args:?}"));
        }
        for args in [
            vec!["user", "list"],
            vec!["doctor"],
            vec!["network", "create", "x", "--cidr", "10.77.0.0/24"],
            vec!["image", "delete", "tiny"],
            vec!["pool", "create", "p", "--path", "/tmp"],
            vec!["group", "create", "x"],
        ] {
            check(who.run(&args), admin, &format!("{args:?}"));
        }
        let o = who.run(&["list", "-o", "json"]);
        match *listed {
            "yes" | "no" => {
                assert!(o.status.success(), "{name} list");
                let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                let names: Vec<&str> = l
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["name"].as_str().unwrap())
                    .collect();
                assert_eq!(
                    names.contains(vm),
                    *listed == "yes",
                    "{name} list: {names:?}"
                );
            }
            w => check(o, w, "list"),
        }
    }
    // The admin does everything, and sees every VM.
    d.ok(&["describe", "a1"]);
    d.ok(&["mem-set", "g1", "100M"]);
    assert_eq!(d.json(&["list"]).as_array().unwrap().len(), 2);

    // Users cannot boot (and so read) files of the host.
    for args in [
        vec!["create", "x", "--cdrom", "/etc/shadow", "--no-network"],
        vec!["create", "x", "--kernel", "/etc/shadow", "--no-network"],
    ] {
        let err = alice.fails(&args);
        assert!(
            err.contains("only an admin may boot files from the host"),
            "{err}"
        );
    }

    // Save files of users stay in their own directory.
    let err = alice.fails(&["save", "a1", "/tmp/anywhere.sav"]);
    assert!(err.contains("outside your save directory"), "{err}");

    // Ownership moves: Alice (now in lab) gives a1 to lab; Bob operates it, and Alice
    // still may as a member of lab.
    d.ok(&["group", "add-member", "lab", "alice"]);
    alice.ok(&["chown", "a1", "group:lab"]);
    bob.ok(&["describe", "a1"]);
    assert!(alice.ok(&["describe", "a1"]).contains("group:lab"));
    // Users with VMs and groups owning VMs cannot be deleted.
    let err = d.fails(&["group", "delete", "lab"]);
    assert!(err.contains("owns or administers"), "{err}");

    // An expiring token stops working when it expires.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let short = d.ok(&[
        "token",
        "create",
        "short",
        "--user",
        "dave",
        "--expires-at",
        &at,
    ]);
    let expiring = As::new(&d, "short", short.trim());
    assert!(expiring.ok(&["whoami"]).contains("dave"));
    // A token cannot make one that outlives it: one made without an expiry gets its
    // maker's, and says so; a later one is refused.
    let made = expiring.run(&["token", "create", "inherits"]);
    let said = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "{said}");
    assert!(
        said.contains("(the expiry of the token you used)"),
        "{said}"
    );
    let err = expiring.fails(&["token", "create", "forever", "--expires-in-days", "30"]);
    assert!(err.contains("must expire by then"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        let o = expiring.run(&["list"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        if err.contains("expired") {
            break err;
        }
        assert!(Instant::now() < deadline, "the token never expired: {err}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(err.contains("hostel login"), "{err}");
    let err = d.fails(&[
        "token",
        "create",
        "past",
        "--user",
        "dave",
        "--expires-at",
        "2001-01-01T00:00:00Z",
    ]);
    assert!(err.contains("in the past"), "{err}");
    let err = d.fails(&[
        "token",
        "create",
        "zero",
        "--user",
        "dave",
        "--expires-in-days",
        "0",
    ]);
    assert!(err.contains("at least one day"), "{err}");

    // The audit trail: allowed and refused requests, with who and why.
    let audit = d.json(&["audit", "--vm", "a1"]);
    let entries = audit.as_array().unwrap();
    let has = |user: Option<&str>, action: &str, result: &str| {
        entries.iter().any(|e| {
            e["user"].as_str() == user
                && e["action"].as_str().unwrap().contains(action)
                && e["result"] == result
        })
    };
    // Entries name the domain action, not the HTTP route.
    assert!(has(Some("alice"), "vm.mem-set", "ok"), "{audit}");
    assert!(has(Some("dave"), "vm.mem-set", "denied"), "{audit}");
    assert!(
        has(Some("alice"), "vm.mem-set", "denied"),
        "read-only: {audit}"
    );
    assert!(has(None, "vm.mem-set", "denied"), "no token: {audit}");
    assert!(has(Some("admin"), "vm.chown", "ok"), "{audit}");
    // The creation is found by the VM's name, with what mattered.
    assert!(
        entries.iter().any(|e| e["action"] == "vm.create"
            && e["target"] == "a1"
            && e["result"] == "ok"
            && e["params"]["memory_mib"].is_u64()),
        "{audit}"
    );
    let mem_set = entries
        .iter()
        .find(|e| e["action"] == "vm.mem-set" && e["result"] == "ok")
        .unwrap();
    assert!(mem_set["params"]["memory_mib"].is_u64(), "{mem_set}");
    // Alice sees a1's trail (hers through lab), Dave sees nothing of it.
    assert!(!alice.ok(&["audit", "--vm", "a1"]).is_empty());
    let dave_all = dave.ok(&["audit", "-o", "json"]);
    assert!(!dave_all.contains("a1"), "{dave_all}");
    // Secrets never reach the log or the trail.
    let log = std::fs::read_to_string(d.data_dir().join("hostel.log")).unwrap();
    let secret = alice_token_secret(&alice);
    assert!(!log.contains(&secret), "a token reached the log");
    assert!(!log.contains("alice's long passphrase"));

    // A password change: an admin sets bob's; bob changes his own only with the current.
    let bob_pw = d.dir.path().join("bob-pw");
    std::fs::write(&bob_pw, "bob's first passphrase\n").unwrap();
    let bob_new = d.dir.path().join("bob-new");
    std::fs::write(&bob_new, "bob's second passphrase\n").unwrap();
    d.ok(&[
        "user",
        "passwd",
        "bob",
        "--password-file",
        bob_pw.to_str().unwrap(),
    ]);
    let bob = As::new(&d, "bob-pw", &token_for(&d, "bob", "pw", &[]));
    let new = [
        "user",
        "passwd",
        "--password-file",
        bob_new.to_str().unwrap(),
    ];
    let err = bob.fails(&new);
    assert!(err.contains("takes the current one"), "{err}");
    let err = bob.fails(
        &[
            &new[..],
            &["--current-password-file", weak.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(err.contains("the current password is wrong"), "{err}");
    let err = bob.fails(&[
        "user",
        "passwd",
        "carol",
        "--password-file",
        bob_new.to_str().unwrap(),
    ]);
    assert!(err.contains("only an admin"), "{err}");
    bob.ok(&[
        &new[..],
        &["--current-password-file", bob_pw.to_str().unwrap()],
    ]
    .concat());
    let bob_cfg = d.dir.path().join("bob-login.toml");
    let bob_login = |pwfile: &std::path::Path| {
        d.ns.cmd(bin())
            .args(["login", "bob", "--url", &d.url, "--password-file"])
            .arg(pwfile)
            .env("HOSTEL_CONFIG", &bob_cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(bob_login(&bob_new), "the new password logs in");
    assert!(!bob_login(&bob_pw), "the old one no longer does");

    // Login: the right password gives a token; five wrong ones lock the account.
    let login_cfg = d.dir.path().join("login.toml");
    let login = |pwfile: &std::path::Path| {
        d.ns.cmd(bin())
            .args(["login", "alice", "--url", &d.url, "--password-file"])
            .arg(pwfile)
            .env("HOSTEL_CONFIG", &login_cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = login(&pw);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = std::fs::read_to_string(&login_cfg).unwrap();
    assert!(cfg.contains("hostel-tok-"), "{cfg}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..5 {
        let o = login(&weak);
        assert!(String::from_utf8_lossy(&o.stderr).contains("wrong user name or password"));
        assert!(Instant::now() < deadline);
    }
    let o = login(&pw);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("too many failed logins"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // SSH keys: checked, and the owner's go into the seed.
    let err = alice.fails(&["key", "add", "laptop", "ssh-rsa notakey"]);
    assert!(err.contains("OpenSSH public key"), "{err}");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceAliceAliceAliceAliceAliceAliceAlice alice@laptop";
    alice.ok(&["key", "add", "laptop", key]);
    let raw = d.dir.path().join("blank.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    d.ok(&["image", "import", "blank", raw.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&alice.ok(&[
        "create",
        "seeded",
        "--image",
        "blank",
        "--memory",
        "128M",
        "--no-network",
        "-o",
        "json",
    ]))
    .unwrap();
    let seed = std::fs::read(
        d.data_dir()
            .join("run")
            .join(v["id"].as_str().unwrap())
            .join("seed.iso"),
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&seed).contains(key),
        "the owner's key is in the seed"
    );
    alice.ok(&["destroy", "seeded"]);
}

/// The secret part of the token in a caller's config.
fn alice_token_secret(a: &As) -> String {
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    let v: toml::Value = toml::from_str(&cfg).unwrap();
    v["token"]
        .as_str()
        .unwrap()
        .split_once('.')
        .unwrap()
        .1
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_hold_under_races_and_leases_end() {
    let d = Daemon::start();
    d.ok(&["user", "create", "erin"]);
    let erin = As::new(&d, "erin", &token_for(&d, "erin", "cli", &[]));
    let err = erin.fails(&["quota", "set", "user:erin", "--vms-total", "100"]);
    assert!(err.contains("only an admin"), "{err}");
    d.ok(&[
        "quota",
        "set",
        "user:erin",
        "--vms-total",
        "3",
        "--vms-running",
        "2",
        "--ram-total",
        "1G",
        "--ram-per-vm",
        "256M",
    ]);

    // 50 creates at once: exactly 3 pass.
    let results: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|i| {
                let erin = &erin;
                s.spawn(move || {
                    erin.run(&[
                        "create",
                        &format!("q{i}"),
                        "--image",
                        "tiny",
                        "--memory",
                        "96M",
                        "--max-memory",
                        "192M",
                        "--disk",
                        "8M",
                        "--no-network",
                        "--no-start",
                    ])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 3, "exactly the quota's 3 VMs were created");
    for o in results.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("over quota: the number of VMs of user erin would be 4")
                && err.contains("the limit is 3 (over by 1)"),
            "{err}"
        );
    }
    let q: serde_json::Value =
        serde_json::from_str(&erin.ok(&["quota", "show", "-o", "json"])).unwrap();
    assert_eq!(q["used"]["vms"], 3);
    assert_eq!(q["limits"]["vms_total"], 3);
    let err = erin.fails(&[
        "create",
        "big",
        "--image",
        "tiny",
        "--memory",
        "512M",
        "--no-start",
    ]);
    assert!(err.contains("one VM's max memory"), "{err}");
    let names = names_in(&erin.ok(&["list", "-o", "json"]));
    assert_eq!(names.len(), 3);
    list_pages(&d, &erin, &names);

    // Three starts at once with 2 allowed running: exactly 2 pass.
    let starts: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .map(|n| {
                let erin = &erin;
                s.spawn(move || erin.run(&["start", n]))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(starts.iter().filter(|o| o.status.success()).count(), 2);
    let refused = starts.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the number of running VMs"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let running: Vec<String> = names
        .iter()
        .filter(|n| d.state(n) == "running")
        .cloned()
        .collect();
    assert_eq!(running.len(), 2);

    // Memory is charged at max memory (192M each), not at the balloon target (96M): QEMU
    // is given the max, and a guest without a balloon driver uses all of it.
    let q: serde_json::Value =
        serde_json::from_str(&erin.ok(&["quota", "show", "-o", "json"])).unwrap();
    assert_eq!(q["used"]["ram_mib"], 384);
    d.ok(&[
        "quota",
        "set",
        "user:erin",
        "--vms-total",
        "3",
        "--vms-running",
        "3",
        "--ram-total",
        "500M",
        "--ram-per-vm",
        "256M",
    ]);
    let stopped = names.iter().find(|n| !running.contains(n)).unwrap();
    let err = erin.fails(&["start", stopped]);
    assert!(
        err.contains("the max memory of running VMs of user erin would be 576M")
            && err.contains("over by 76M"),
        "{err}"
    );
    // A lower balloon target frees nothing, a higher one costs nothing.
    erin.ok(&["mem-set", &running[0], "144M"]);
    let q: serde_json::Value =
        serde_json::from_str(&erin.ok(&["quota", "show", "-o", "json"])).unwrap();
    assert_eq!(q["used"]["ram_mib"], 384);

    // A lease that ends: the VM is shut down and kept, disks and all.
    let vm = &running[0];
    let until = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let err = erin.fails(&["renew", vm, "--until", &until]);
    assert!(err.contains("only an admin"), "{err}");
    d.ok(&["renew", vm, "--until", &until]);
    let desc = d.wait_state(vm, "stopped", Duration::from_secs(90));
    assert!(
        desc["lease_warning"]
            .as_str()
            .unwrap()
            .contains("the lease ended"),
        "{desc}"
    );
    assert_eq!(
        desc["disks"].as_array().unwrap().len(),
        1,
        "its disk is kept"
    );
    assert!(std::path::Path::new(desc["disks"][0]["path"].as_str().unwrap()).exists());
    let err = erin.fails(&["start", vm]);
    assert!(err.contains("hostel renew"), "{err}");
    erin.ok(&["renew", vm, "--days", "3"]);
    let desc = d.describe(vm);
    assert!(
        desc["lease_warning"]
            .as_str()
            .unwrap()
            .contains("the lease ends"),
        "{desc}"
    );
    let list = erin.ok(&["list"]);
    assert!(
        list.contains(&format!("warning: {vm}: the lease ends")),
        "{list}"
    );
    erin.ok(&["start", vm]);
    // The lease reaper is named in the trail as the system actor it is.
    let audit = d.json(&["audit", "--vm", vm]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "vm.shutdown"
                && e["user"] == "system:lease-reaper"
                && e["params"]["reason"] == "lease expired"),
        "{audit}"
    );
    for n in &running {
        d.ok(&["destroy", n]);
    }
}

/// One raw HTTP request from inside the daemon's namespace: the status code.
fn status(d: &Daemon, method: &str, path: &str, token: Option<&str>) -> u16 {
    use std::io::Write;
    let host = d.url.trim_start_matches("http://");
    let mut s = d.ns.connect(host);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = if method == "GET" || method == "DELETE" {
        ""
    } else {
        "{}"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The status line is all that is asked (and the event stream never ends).
    let mut resp = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut resp).unwrap();
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Every route of the API (from the checked-in OpenAPI document, which a test keeps
/// equal to the server's) against callers that must be refused.
#[tokio::test(flavor = "multi_thread")]
async fn every_route_refuses_who_it_must() {
    // Every route is asked without a token, with a wrong one and a revoked one, and each
    // refused write must be in the trail on its own: a budget of refusals to match.
    let d = lenient_daemon();
    d.ok(&["user", "create", "dave"]);
    d.ok(&["group", "create", "lab"]);
    let dave = token_for(&d, "dave", "cli", &[]);
    let ro = token_for(&d, "dave", "ro", &["--read-only"]);
    let revoked = token_for(&d, "dave", "old", &[]);
    d.ok(&["token", "revoke", "old", "--user", "dave"]);
    d.ok(&[
        "create",
        "a1",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
        "--no-start",
    ]);
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let fill = |p: &str| {
        p.replace("/vms/{name}", "/vms/a1")
            .replace("/networks/{name}", "/networks/default")
            .replace("/images/{name}", "/images/tiny")
            .replace("/pools/{name}", "/pools/default")
            .replace("/users/{name}", "/users/dave")
            .replace("/groups/{name}", "/groups/lab")
            .replace("/tasks/{id}", "/tasks/task-none")
            .replace("/me/tokens/{name}", "/me/tokens/none")
            .replace("/me/keys/{name}", "/me/keys/none")
            .replace("/quotas/{owner}", "/quotas/default")
            .replace("/default-limits/{owner}", "/default-limits/default")
            .replace("/hosts/{name}", "/hosts/nosuch")
    };
    let admin_only = |m: &str, p: &str| {
        let under = |x: &str| p == x || p.starts_with(&format!("{x}/"));
        under("/api/v1/doctor")
            || under("/api/v1/import/xen")
            || under("/metrics")
            || under("/api/v1/dmesg")
            || under("/api/v1/users")
            || under("/api/v1/hosts")
            || under("/api/v1/rebalance")
            || p == "/api/v1/default-limits"
            || under("/api/v1/audit/retention")
            || under("/api/v1/audit/prune")
            || (m != "GET" && p.starts_with("/api/v1/tasks/") && p.ends_with("/cancel"))
            || (m != "GET"
                && (under("/api/v1/networks")
                    || under("/api/v1/backup-targets")
                    || under("/api/v1/images")
                    || under("/api/v1/pools")
                    || under("/api/v1/groups")
                    || under("/api/v1/quotas")
                    || under("/api/v1/default-limits")))
    };
    let mut checked = 0;
    let audit_before = d.json(&["audit"]).as_array().unwrap().len();
    let mut refused_writes = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            let p = fill(path);
            if p == "/api/v1/login" {
                continue;
            }
            checked += 1;
            let is_write = m != "GET";
            assert_eq!(status(&d, &m, &p, None), 401, "{m} {p} without a token");
            assert_eq!(status(&d, &m, &p, Some(&revoked)), 401, "{m} {p} revoked");
            assert_eq!(
                status(
                    &d,
                    &m,
                    &p,
                    Some("hostel-tok-x.0000000000000000000000000000000000")
                ),
                401,
                "{m} {p} unknown token"
            );
            if is_write {
                refused_writes += 3;
                assert_eq!(status(&d, &m, &p, Some(&ro)), 403, "{m} {p} read-only");
                refused_writes += 1;
            }
            let dave_status = status(&d, &m, &p, Some(&dave));
            if admin_only(&m, &p) {
                assert_eq!(dave_status, 403, "{m} {p} by a non-admin");
                refused_writes += is_write as usize;
            } else if p.starts_with("/api/v1/vms/a1") {
                // A stranger gets exactly what a VM that does not exist gets.
                let none = p.replacen("/vms/a1", "/vms/zz-none", 1);
                let none_status = status(&d, &m, &none, Some(&dave));
                assert_eq!(
                    dave_status, none_status,
                    "{m} {p}: a stranger learns nothing of a1"
                );
                if !is_write && !p.ends_with("/console") {
                    assert_eq!(dave_status, 404, "{m} {p}");
                }
                refused_writes += is_write as usize;
            } else {
                assert!(
                    ![401, 403].contains(&dave_status),
                    "{m} {p}: {dave_status} for a user"
                );
            }
            // The admin may read everything (writes with an empty body would act).
            if !is_write {
                let admin_status = status(&d, &m, &p, Some(&d.token));
                assert!(
                    ![401, 403].contains(&admin_status),
                    "{m} {p}: {admin_status} for the admin"
                );
            }
        }
    }
    assert!(checked > 60, "only {checked} routes checked");
    // Every refused write is in the trail.
    let after = d.json(&["audit"]).as_array().unwrap().len();
    assert!(
        after - audit_before >= refused_writes,
        "{} audit entries for {refused_writes} refused writes",
        after - audit_before
    );
}

/// The list comes a page at a time: the `Link` header leads from page to page, and the
/// CLI follows it; filters and bad paging parameters are answered as they should be.
fn list_pages(d: &Daemon, erin: &As, names: &[String]) {
    let mut seen = Vec::new();
    let mut path = Some("/api/v1/vms?limit=2".to_string());
    let mut pages = 0;
    while let Some(p) = path.take() {
        let (status, head, body) = d.http_get_headers(&p, Some(&erin.token));
        assert_eq!(status, 200, "{p}: {body}");
        assert!(names_in(&body).len() <= 2, "{body}");
        seen.extend(names_in(&body));
        path = head
            .lines()
            .find_map(|l| l.strip_prefix("link: ").or(l.strip_prefix("Link: ")))
            .map(|l| {
                assert!(l.ends_with(r#">; rel="next""#), "{l}");
                l[1..l.find('>').unwrap()].to_string()
            });
        pages += 1;
    }
    assert_eq!(pages, 2, "3 VMs in pages of 2");
    assert_eq!(seen, names, "every VM once, in name order");
    let cli = names_in(&erin.ok(&["list", "--page-size", "1", "-o", "json"]));
    assert_eq!(cli, names, "the CLI follows the pages");
    assert_eq!(
        erin.ok(&["list", "--state", "stopped", "-o", "json"])
            .matches("\"name\"")
            .count(),
        3
    );
    assert_eq!(
        erin.ok(&["list", "--state", "running", "-o", "json"])
            .trim(),
        "[]"
    );
    let err = erin.fails(&["list", "--state", "sleeping"]);
    assert!(err.contains("\"sleeping\" is not a VM state"), "{err}");
    let err = erin.fails(&["list", "--host", "nosuch"]);
    assert!(err.contains("no host is named \"nosuch\""), "{err}");
    let err = erin.fails(&["list", "--page-size", "0"]);
    assert!(err.contains("ask for 1 to 1000"), "{err}");
    // Search and owner filters go in the query, so the next page keeps them.
    let all_q = names_in(&erin.ok(&["list", "--search", "Q", "--page-size", "1", "-o", "json"]));
    assert_eq!(all_q, names, "every page of the search");
    let one = names_in(&erin.ok(&["list", "--search", &names[2], "-o", "json"]));
    assert!(
        one.contains(&names[2]) && one.iter().all(|n| n.contains(names[2].as_str())),
        "{one:?}"
    );
    let mine = names_in(&erin.ok(&["list", "--owner", "user:erin", "-o", "json"]));
    assert_eq!(mine, names);
    let none = erin.ok(&["list", "--owner", "group:nosuch", "-o", "json"]);
    assert_eq!(none.trim(), "[]");
    let err = erin.fails(&["list", "--owner", "erin"]);
    assert!(err.contains("user:NAME or group:NAME"), "{err}");
}

/// The names in a JSON list of VMs.
fn names_in(json: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(json)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}
