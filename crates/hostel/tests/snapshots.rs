//! Snapshots: crash-consistent disk snapshots of a running VM, revert, snapshots with
//! memory that resume where they were taken, and refusals.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_revert_and_memory() {
    let d = Daemon::start();
    d.ok(&[
        "create",
        "nodisk",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
        "--no-start",
    ]);
    let err = d.fails(&["snapshot", "create", "nodisk", "s0"]);
    assert!(err.contains("no disk to snapshot"), "{err}");

    d.ok(&[
        "create",
        "snap",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--max-vcpus",
        "2",
        "--disk",
        "16M",
        "--no-network",
    ]);
    let mut c = d.console("snap").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    c.run("echo version-one | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        .await;
    d.ok(&["snapshot", "create", "snap", "s1"]);
    assert_eq!(
        d.state("snap"),
        "running",
        "a live snapshot leaves the VM running"
    );
    let err = d.fails(&["snapshot", "create", "snap", "s1"]);
    assert!(err.contains("already"), "{err}");
    c.run("echo version-two | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        .await;
    assert_eq!(c.run("head -c 11 /dev/vda").await, "version-two");
    let err = d.fails(&["snapshot", "revert", "snap", "s1"]);
    assert!(err.contains("stop it first"), "{err}");

    d.ok(&["destroy", "snap"]);
    let err = d.fails(&["snapshot", "create", "snap", "m0", "--memory"]);
    assert!(err.contains("needs a running VM"), "{err}");
    d.ok(&["snapshot", "revert", "snap", "s1"]);
    let n = c.seen.matches(READY).count();
    d.ok(&["start", "snap"]);
    c.wait_count(READY, n + 1, Duration::from_secs(180)).await;
    assert_eq!(
        c.run("head -c 11 /dev/vda").await,
        "version-one",
        "revert restores the disk"
    );

    // With memory: revert resumes the guest exactly where the snapshot was taken.
    c.run("echo in-memory-one > /tmp/state").await;
    d.ok(&["snapshot", "create", "snap", "m1", "--memory"]);
    c.run("echo in-memory-two > /tmp/state").await;
    d.ok(&["destroy", "snap"]);
    d.ok(&["snapshot", "revert", "snap", "m1"]);
    assert_eq!(d.state("snap"), "running");
    let mut c = d.console("snap").await;
    assert_eq!(c.run("cat /tmp/state").await, "in-memory-one");

    // Its memory loads only into the devices it was taken with: a vCPU count changed
    // since is set back; a disk added since is refused, saying which and how.
    d.ok(&["destroy", "snap"]);
    d.ok(&["vcpu-set", "snap", "2"]);
    d.ok(&["disk", "add", "snap", "--size", "8M"]);
    let err = d.fails(&["snapshot", "revert", "snap", "m1"]);
    assert!(
        err.contains("disk(s) 1 added since") && err.contains("hostel disk remove snap"),
        "{err}"
    );
    assert_eq!(d.state("snap"), "stopped");
    assert_eq!(d.describe("snap")["vcpus"]["current"], 2);
    d.ok(&["disk", "remove", "snap", "1"]);
    d.ok(&["snapshot", "revert", "snap", "m1"]);
    assert_eq!(d.state("snap"), "running");
    assert_eq!(d.describe("snap")["vcpus"]["current"], 1);
    let mut c = d.console("snap").await;
    assert_eq!(c.run("cat /tmp/state").await, "in-memory-one");

    let snaps = d.json(&["snapshot", "list", "snap"]);
    let names: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "m1"]);
    assert_eq!(snaps[1]["with_memory"], true);
    d.ok(&["snapshot", "delete", "snap", "s1"]);
    let err = d.fails(&["snapshot", "delete", "snap", "s1"]);
    assert!(err.contains("no snapshot"), "{err}");
    assert_eq!(
        d.json(&["snapshot", "list", "snap"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    d.ok(&["destroy", "snap"]);
}
