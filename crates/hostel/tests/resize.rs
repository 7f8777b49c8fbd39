//! mem-set (balloon) and vcpu-set (hotplug), as the guest sees them.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn memory_and_vcpus_change_inside_the_guest() {
    let d = Daemon::start();
    d.ok(&[
        "create",
        "big",
        "--image",
        "tiny",
        "--memory",
        "256M",
        "--max-memory",
        "512M",
        "--vcpus",
        "1",
        "--max-vcpus",
        "3",
    ]);
    let mut c = d.console("big").await;
    c.wait_for(READY, Duration::from_secs(180)).await;

    // The guest boots with its max memory and the balloon takes it down to --memory.
    let kb = |s: &str| -> u64 {
        s.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    c.wait_until(
        "grep MemTotal /proc/meminfo",
        |o| kb(o) > 0 && kb(o) < 270_000,
        "balloon to 256M",
    )
    .await;
    let desc = d.describe("big");
    assert_eq!(desc["memory"]["max_mib"], 512);
    assert_eq!(desc["memory"]["target_mib"], 256);

    d.ok(&["mem-set", "big", "400M"]);
    let out = c
        .wait_until(
            "grep MemTotal /proc/meminfo",
            |o| kb(o) > 330_000 && kb(o) < 420_000,
            "mem-set 400M",
        )
        .await;
    assert!(kb(&out) < 512 * 1024);
    let desc = d.describe("big");
    assert_eq!(desc["memory"]["target_mib"], 400);
    // The balloon reports its actual size as the guest gives memory back: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let current = d.describe("big")["memory"]["current_mib"].as_u64().unwrap();
        if (390..=410).contains(&current) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "balloon reports {current}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let err = d.fails(&["mem-set", "big", "1G"]);
    assert!(
        err.contains("memory") && err.contains("max memory 512M"),
        "{err}"
    );

    d.ok(&["vcpu-set", "big", "3"]);
    c.wait_until(
        "cat /sys/devices/system/cpu/online",
        |o| o == "0-2",
        "vcpu-set 3",
    )
    .await;
    assert_eq!(d.describe("big")["vcpus"]["current"], 3);
    d.ok(&["vcpu-set", "big", "1"]);
    c.wait_until(
        "cat /sys/devices/system/cpu/online",
        |o| o == "0",
        "vcpu-set 1",
    )
    .await;
    assert_eq!(d.describe("big")["vcpus"]["current"], 1);
    let err = d.fails(&["vcpu-set", "big", "4"]);
    assert!(
        err.contains("vcpus") && err.contains("max vCPUs 3"),
        "{err}"
    );

    // Under TCG a QEMU run starts at most max-vcpus vCPU threads (a QEMU limitation):
    // plugging in again after an unplug is refused cleanly, and the VM goes on.
    let accel = d.describe("big")["accel"].as_str().unwrap().to_string();
    if accel == "tcg" {
        let err = d.fails(&["vcpu-set", "big", "2"]);
        assert!(
            err.contains("cannot plug in 1 more vCPU") && err.contains("hostel reboot"),
            "{err}"
        );
        assert_eq!(d.describe("big")["vcpus"]["current"], 1);
        assert_eq!(c.run("cat /sys/devices/system/cpu/online").await, "0");
    }

    // A stopped VM keeps the new sizes for its next start.
    d.ok(&["destroy", "big"]);
    d.ok(&["vcpu-set", "big", "2"]);
    d.ok(&["mem-set", "big", "300M"]);
    // The console session stays attached across QEMU's restart.
    let n = c.seen.matches(READY).count();
    d.ok(&["start", "big"]);
    let desc = d.describe("big");
    assert_eq!(desc["vcpus"]["current"], 2);
    assert_eq!(desc["memory"]["target_mib"], 300);
    c.wait_count(READY, n + 1, Duration::from_secs(180)).await;
    c.wait_until(
        "cat /sys/devices/system/cpu/online",
        |o| o == "0-1",
        "2 vCPUs at boot",
    )
    .await;
    d.ok(&["destroy", "big"]);
}
