//! `hostel up --database postgres://…`: the controller on a real PostgreSQL server, its
//! VMs kept across a restart; a URL that cannot work refused with what to do, its
//! password never shown.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn hostel_up_runs_on_postgresql_and_keeps_its_vms_across_a_restart() {
    // Bad URLs first: each refused at once, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let up = |url: &str| {
        let out = std::process::Command::new(bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--ssh-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--database", url])
            .env("HOSTEL_CONFIG", dir.path().join("client.toml"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "hostel up --database {url} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = up("mysql://u@h/db");
    assert!(err.contains("give a postgres://"), "{err}");
    let err = up("postgres://hostel:s3cret@127.0.0.1:1/nodb");
    assert!(
        err.contains("cannot use the PostgreSQL database postgres://hostel:***@127.0.0.1:1/nodb"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "the password is shown: {err}");

    // An installation on SQLite moves over: refused while its daemon runs, then copied
    // whole into an empty PostgreSQL database, where the daemon finds it all.
    let mut d = Daemon::unstarted();
    d.args.clear();
    d.pg = None;
    d.launch();
    d.ok(&[
        "create",
        "moved",
        "--image",
        "tiny",
        "--memory",
        "64M",
        "--no-network",
        "--no-start",
    ]);
    d.ok(&["user", "create", "alice"]);
    let file = d.data_dir().join("hostel.db");
    let file = file.to_str().unwrap();
    let server = hostel_store::testing::PgServer::start();
    let url = server.database("moved").await;
    let err = d.fails(&["db", "migrate-from-sqlite", file, "--to", &url]);
    assert!(err.contains("another hostel daemon is using"), "{err}");
    assert!(d.sigterm().success());
    let out = d.ok(&["db", "migrate-from-sqlite", file, "--to", &url]);
    assert!(out.contains("copied") && out.contains("vms"), "{out}");
    let err = d.fails(&["db", "migrate-from-sqlite", file, "--to", &url]);
    assert!(err.contains("not empty"), "{err}");
    d.args = vec!["--database".into(), url.clone()];
    d.pg = Some(server);
    d.launch();
    d.ok(&[
        "create",
        "pg1",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
    ]);
    let mut con = d.console("pg1").await;
    con.wait_for(READY, Duration::from_secs(180)).await;
    con.run("echo kept > /tmp/mark").await;
    drop(con);
    let pid = d.describe("pg1")["qemu"]["pid"].as_u64().unwrap();
    // Killed and started again: what PostgreSQL holds is all there, and the running
    // guest is the same one, re-adopted.
    d.kill9();
    d.launch();
    let v = d.describe("pg1");
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["qemu"]["pid"].as_u64(), Some(pid), "the same QEMU: {v}");
    let mut con = d.console("pg1").await;
    assert_eq!(con.run("cat /tmp/mark").await, "kept");
    drop(con);
    d.ok(&["destroy", "pg1"]);
    d.ok(&["delete", "pg1"]);
    let names: Vec<String> = d
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["moved"], "the VM made on SQLite");
    assert!(d.ok(&["user", "list"]).contains("alice"));
    // And back: the records copied into a new SQLite file.
    assert!(d.sigterm().success());
    let back = dir.path().join("back").join("hostel.db");
    std::fs::create_dir_all(back.parent().unwrap()).unwrap();
    let out = d.ok(&[
        "db",
        "copy",
        "--from",
        &url,
        "--to",
        &format!("sqlite://{}", back.display()),
    ]);
    assert!(out.contains("copied"), "{out}");
    assert!(back.exists());
}
