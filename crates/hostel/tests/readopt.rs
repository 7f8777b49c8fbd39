//! The daemon can die at any time: its VMs go on, and the next `hostel up` re-adopts
//! them (same QEMU pid) instead of starting them twice.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_then_up_readopts_running_vms() {
    let mut d = Daemon::start();
    d.ok(&["create", "stay", "--image", "tiny", "--memory", "128M"]);
    d.ok(&["create", "idle", "--image", "tiny", "--memory", "128M"]);
    d.ok(&["pause", "idle"]);
    let mut c = d.console("stay").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    let pid = d.describe("stay")["qemu"]["pid"].as_u64().unwrap() as u32;
    let idle_pid = d.describe("idle")["qemu"]["pid"].as_u64().unwrap() as u32;
    drop(c);

    d.kill9();
    assert!(
        is_alive_qemu(pid) && is_alive_qemu(idle_pid),
        "VMs outlive the daemon"
    );

    d.launch();
    let desc = d.describe("stay");
    assert_eq!(desc["state"], "running");
    assert_eq!(
        desc["qemu"]["pid"].as_u64().unwrap() as u32,
        pid,
        "same QEMU, re-adopted"
    );
    assert_eq!(
        d.describe("idle")["state"],
        "paused",
        "a paused VM stays paused"
    );
    let mut pids = d.qemu_pids();
    pids.sort();
    let mut want = vec![pid, idle_pid];
    want.sort();
    assert_eq!(pids, want, "no VM runs twice");

    // It answers operations, and its console works again (with its scrollback).
    let mut c = d.console("stay").await;
    assert_eq!(c.run("echo re\"\"adopted").await, "readopted");
    assert!(c.seen.contains(READY), "scrollback is replayed on attach");
    d.ok(&["pause", "stay"]);
    d.ok(&["unpause", "idle"]);
    let err = d.fails(&["start", "stay"]);
    assert!(err.contains("cannot start"), "{err}");
    d.ok(&["unpause", "stay"]);
    assert_eq!(d.json(&["info"])["hosts"][0]["vms_running"], 2);

    // SIGTERM stops the daemon cleanly and leaves VMs running.
    let status = d.sigterm();
    assert!(status.success(), "{status}");
    assert!(is_alive_qemu(pid));
    d.launch();
    assert_eq!(
        d.describe("stay")["qemu"]["pid"].as_u64().unwrap() as u32,
        pid
    );

    // A VM whose QEMU died while no daemon ran shows as crashed, with the reason.
    d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(idle_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while is_alive_qemu(idle_pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    d.launch();
    let idle = d.describe("idle");
    assert_eq!(idle["state"], "crashed", "{idle}");
    assert!(
        idle["state_reason"]
            .as_str()
            .unwrap()
            .contains("not running"),
        "{idle}"
    );
    d.ok(&["start", "idle"]);
    d.ok(&["destroy", "idle"]);
    d.ok(&["destroy", "stay"]);
}
