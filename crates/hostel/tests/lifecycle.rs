//! The whole life of a tiny guest through the CLI, against real QEMU.

mod common;
use common::*;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn full_lifecycle_through_the_cli() {
    let d = Daemon::start();

    let info = d.json(&["info"]);
    let host = &info["hosts"][0];
    let accel = host["accel"].as_str().unwrap();
    assert!(accel == "tcg" || accel == "kvm", "{info}");
    assert!(!host["accel_reason"].as_str().unwrap().is_empty());
    assert!(
        host["qemu_version"].as_str().unwrap().starts_with("10."),
        "{info}"
    );
    assert_eq!(host["vms_running"], 0);
    let images = d.json(&["image", "list"]);
    assert_eq!(
        images[0]["name"], "tiny",
        "hostel up builds the tiny image: {images}"
    );

    let vm = d.json(&[
        "create",
        "life",
        "--image",
        "tiny",
        "--memory",
        "256M",
        "--disk",
        "64M",
        "--no-start",
    ]);
    assert_eq!(vm["state"], "stopped");
    assert_eq!(vm["disks"][0]["size_mib"], 64);
    let disk = vm["disks"][0]["path"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&disk).exists());
    assert!(d.qemu_pids().is_empty(), "--no-start starts nothing");
    let argv = d.describe("life")["qemu"]["argv"].clone();
    assert!(
        argv.to_string().contains("hostel.name=life"),
        "a stopped VM shows what it would run: {argv}"
    );

    d.ok(&["start", "life"]);
    let desc = d.describe("life");
    assert_eq!(desc["state"], "running");
    assert_eq!(desc["name"], "life");
    assert_eq!(desc["accel"], accel);
    assert_eq!(desc["memory"]["max_mib"], 256);
    assert_eq!(desc["vcpus"]["current"], 1);
    assert_eq!(desc["vcpus"]["max"], 1);
    let pid = desc["qemu"]["pid"]
        .as_u64()
        .expect("a running VM has a QEMU pid") as u32;
    assert!(is_alive_qemu(pid));
    let argv: Vec<String> = serde_json::from_value(desc["qemu"]["argv"].clone()).unwrap();
    assert!(
        argv.iter().any(|a| a.starts_with("on,obsolete=deny")),
        "{argv:?}"
    );
    assert!(
        argv.windows(2).any(|w| w[0] == "-accel" && w[1] == accel),
        "{argv:?}"
    );
    let yaml = d.ok(&["describe", "life"]);
    assert!(yaml.contains("state: running"), "{yaml}");
    let list = d.json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(d.ok(&["list"]).contains("life"));

    let mut c = d.console("life").await;
    c.wait_for(READY, BOOT).await;
    assert!(
        c.run("ls /dev/vda").await.contains("/dev/vda"),
        "the disk is attached"
    );
    assert_eq!(c.run("hostname").await, "life");

    d.ok(&["pause", "life"]);
    assert_eq!(d.state("life"), "paused");
    let err = d.fails(&["pause", "life"]);
    assert!(err.contains("cannot pause a VM that is paused"), "{err}");
    d.ok(&["unpause", "life"]);
    assert_eq!(d.state("life"), "running");
    assert_eq!(c.run("echo still-here").await, "still-here");

    let readies = c.seen.matches(READY).count();
    d.ok(&["reboot", "life"]);
    c.wait_count(READY, readies + 1, BOOT).await;
    let after = d.describe("life");
    assert_eq!(after["state"], "running");
    assert_ne!(
        after["qemu"]["pid"], desc["qemu"]["pid"],
        "a reboot starts a fresh QEMU"
    );
    assert!(!is_alive_qemu(pid));

    // ACPI power-off, answered by the guest.
    d.ok(&["shutdown", "life", "--timeout", "120"]);
    let off = d.describe("life");
    assert_eq!(off["state"], "stopped");
    assert!(off["qemu"]["pid"].is_null());
    assert!(d.qemu_pids().is_empty());

    d.ok(&["start", "life"]);
    let running = d.json(&["info"]);
    assert_eq!(running["hosts"][0]["vms_running"], 1);
    assert_eq!(running["hosts"][0]["memory_vms_mib"], 256);
    d.ok(&["destroy", "life"]);
    let destroyed = d.describe("life");
    assert_eq!(destroyed["state"], "stopped");
    assert_eq!(destroyed["state_reason"], "destroyed");
    assert!(d.qemu_pids().is_empty());

    d.ok(&["delete", "life"]);
    assert_eq!(d.json(&["list"]), serde_json::json!([]));
    assert!(
        !std::path::Path::new(&disk).exists(),
        "delete removes the VM's disk"
    );
    assert!(file_names(&d.data_dir().join("run")).is_empty());
    let err = d.fails(&["describe", "life"]);
    assert!(err.contains("no VM named"), "{err}");

    let log = d.json(&["dmesg", "--lines", "500"]);
    let lines = log["lines"].as_array().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.as_str().unwrap().contains("hostel is ready")),
        "{log}"
    );
    assert!(d.ok(&["dmesg", "--lines", "3"]).lines().count() <= 3);
}

/// Operations on one VM are serialized: of several concurrent starts exactly one
/// wins, and only one QEMU ever runs.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_starts_run_one_qemu() {
    let d = std::sync::Arc::new(Daemon::start());
    d.ok(&[
        "create",
        "once",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-start",
    ]);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || d.cli(&["start", "once"]).status.success())
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(wins, 1, "exactly one start succeeds");
    assert_eq!(d.qemu_pids().len(), 1);
    let err = d.fails(&["start", "once"]);
    assert!(err.contains("cannot start a VM that is running"), "{err}");
    d.ok(&["destroy", "once"]);
}
