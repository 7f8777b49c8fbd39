//! `save` writes a running VM's memory to a file and stops it; `restore` resumes it.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn save_and_restore_keep_guest_memory() {
    let d = Daemon::start();
    d.ok(&["create", "keeper", "--image", "tiny", "--memory", "192M"]);
    let mut c = d.console("keeper").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    // /tmp is a tmpfs in the tiny guest: this value lives only in guest RAM.
    let value = format!("kept-{}", std::process::id());
    c.run(&format!("echo {value} > /tmp/value")).await;
    assert_eq!(c.run("cat /tmp/value").await, value);

    let file = d.dir.path().join("keeper.state");
    let f = file.to_str().unwrap();
    d.ok(&["save", "keeper", f]);
    let desc = d.describe("keeper");
    assert_eq!(desc["state"], "saved");
    assert!(desc["qemu"]["pid"].is_null());
    assert_eq!(desc["saved_to"], f);
    assert!(d.qemu_pids().is_empty(), "save stops QEMU");
    assert!(std::fs::metadata(&file).unwrap().len() > 1 << 20);

    let err = d.fails(&["start", "keeper"]);
    assert!(err.contains("hostel restore"), "{err}");
    let err = d.fails(&["save", "keeper", f]);
    assert!(err.contains("cannot save a VM that is saved"), "{err}");

    let junk = d.dir.path().join("junk.state");
    std::fs::write(&junk, b"not a state file\n").unwrap();
    let err = d.fails(&["restore", junk.to_str().unwrap()]);
    assert!(err.contains("not a Hostel save file"), "{err}");

    d.ok(&["restore", f]);
    let desc = d.describe("keeper");
    assert_eq!(desc["state"], "running");
    assert!(desc["saved_to"].is_null());
    let mut c = d.console("keeper").await;
    assert_eq!(
        c.run("cat /tmp/value").await,
        value,
        "guest RAM survived save/restore"
    );

    assert!(
        !file.exists(),
        "a restore consumes its save file (its disks moved on; its quota charge ended)"
    );

    // Saving over an existing file is refused and loses nothing.
    std::fs::write(&file, b"someone's file\n").unwrap();
    let err = d.fails(&["save", "keeper", f]);
    assert!(err.contains("save never overwrites"), "{err}");
    assert_eq!(d.state("keeper"), "running");
    d.ok(&["destroy", "keeper"]);
}
