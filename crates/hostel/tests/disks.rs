//! Extra disks: hot-plugged and unplugged, grown online and offline, kept on delete
//! when asked.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn disks_hotplug_resize_and_keep() {
    let d = Daemon::start();
    d.ok(&[
        "create",
        "store",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
    ]);
    let mut c = d.console("store").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    assert_eq!(c.run("ls /sys/block | grep -c vd").await, "0");

    d.ok(&["disk", "add", "store", "--size", "32M"]);
    c.wait_until(
        "cat /sys/block/vda/size 2>/dev/null",
        |o| o == "65536",
        "hot-plugged disk",
    )
    .await;
    c.run("echo kept-bytes | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        .await;

    let err = d.fails(&["disk", "resize", "store", "0", "16M"]);
    assert!(err.contains("not larger than the disk"), "{err}");
    d.ok(&["disk", "resize", "store", "0", "64M"]);
    c.wait_until(
        "cat /sys/block/vda/size",
        |o| o == "131072",
        "online resize",
    )
    .await;
    assert_eq!(
        c.run("head -c 10 /dev/vda").await,
        "kept-bytes",
        "resize keeps the data"
    );
    let disks = d.json(&["disk", "list", "store"]);
    assert_eq!(disks[0]["size_mib"], 64);

    d.ok(&["disk", "add", "store", "--size", "8M"]);
    c.wait_until(
        "cat /sys/block/vdb/size 2>/dev/null",
        |o| o == "16384",
        "second disk",
    )
    .await;
    let second = d.json(&["disk", "list", "store"])[1]["path"]
        .as_str()
        .unwrap()
        .to_string();
    d.ok(&["disk", "remove", "store", "1"]);
    c.wait_until("ls /sys/block", |o| !o.contains("vdb"), "unplugged disk")
        .await;
    assert!(
        !std::path::Path::new(&second).exists(),
        "a removed disk's file goes"
    );
    let err = d.fails(&["disk", "remove", "store", "7"]);
    assert!(err.contains("no disk 7"), "{err}");

    // Offline: the new size is there at the next boot.
    d.ok(&["destroy", "store"]);
    d.ok(&["disk", "resize", "store", "0", "96M"]);
    let n = c.seen.matches(READY).count();
    d.ok(&["start", "store"]);
    c.wait_count(READY, n + 1, Duration::from_secs(180)).await;
    assert_eq!(c.run("cat /sys/block/vda/size").await, "196608");
    assert_eq!(c.run("head -c 10 /dev/vda").await, "kept-bytes");

    d.ok(&["destroy", "store"]);
    let path = d.json(&["disk", "list", "store"])[0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let out = d.ok(&["delete", "store", "--keep-disks"]);
    assert!(out.contains(&path), "{out}");
    assert!(
        std::path::Path::new(&path).exists(),
        "--keep-disks keeps the file"
    );

    // `hostel doctor` finds the kept file, which no row points to any more.
    let err = d.fails(&["doctor"]);
    assert!(err.contains("1 problem"), "{err}");
    let out = d.cli(&["doctor", "-o", "json"]);
    assert!(!out.status.success(), "problems make doctor exit non-zero");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert!(problems[0].as_str().unwrap().contains(&path), "{report}");
    std::fs::remove_file(&path).unwrap();
    assert!(d.ok(&["doctor"]).contains("no problems found"));
}
