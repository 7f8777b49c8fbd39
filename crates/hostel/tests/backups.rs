//! Backups as a user takes them: data written in a running guest, a full backup, more
//! data, an incremental one (about the size of what changed, not of the disk), both
//! restored as new VMs, each holding exactly the bytes of its moment; a restore over the
//! stopped VM itself; a backup of a stopped VM; chains that cannot lose a link; the
//! space charged to the owner's quota.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

/// The checksum of the disk's first 40 MiB, read in the guest.
async fn sum(c: &mut Console) -> String {
    let out = c
        .run("dd if=/dev/vda bs=1M count=40 2>/dev/null | md5sum")
        .await;
    // The sum is the one 32-digit hex word (a line may carry console noise before it).
    out.split_whitespace()
        .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no md5sum in {out:?}"))
        .to_string()
}

/// The VM's console once its shell is up (its prompt seen: what is typed earlier may be
/// lost while the shell starts).
async fn console_of(d: &Daemon, vm: &str) -> Console {
    let mut c = d.console(vm).await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    c.wait_for("tiny# ", Duration::from_secs(60)).await;
    c
}

fn backups(d: &Daemon, vm: &str) -> Vec<Value> {
    d.json(&["backup", "list", vm]).as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn full_and_incremental_backups_restore_to_their_moments() {
    let d = Daemon::start();
    let target = tempfile::Builder::new()
        .prefix("hostel-backups-")
        .tempdir()
        .unwrap();
    let dir = target.path().to_str().unwrap();
    // Nothing to back up to yet: said so.
    d.ok(&[
        "create", "b1", "--image", "tiny", "--memory", "128M", "--disk", "64M",
    ]);
    let err = d.fails(&["backup", "create", "b1"]);
    assert!(err.contains("backup-target add"), "{err}");
    d.ok(&["backup-target", "add", "main", dir]);

    let mut c = console_of(&d, "b1").await;
    c.run("dd if=/dev/urandom of=/dev/vda bs=1M count=8 conv=fsync 2>/dev/null")
        .await;
    let first = sum(&mut c).await;
    let out = d.ok(&["backup", "create", "b1"]);
    assert!(out.contains("vm-backup b1"), "{out}");

    // More data while it runs, then an incremental backup.
    c.run("dd if=/dev/urandom of=/dev/vda bs=1M seek=32 count=4 conv=fsync 2>/dev/null")
        .await;
    let second = sum(&mut c).await;
    assert_ne!(first, second);
    d.ok(&["backup", "create", "b1"]);
    drop(c);

    let list = backups(&d, "b1");
    assert_eq!(list.len(), 2, "{list:?}");
    let (incr, full) = (&list[0], &list[1]);
    assert_eq!(full["kind"], "full", "{full}");
    assert_eq!(incr["kind"], "incremental", "{incr}");
    assert_eq!(incr["parent"], full["name"]);
    let full_bytes = full["size_bytes"].as_u64().unwrap();
    let incr_bytes = incr["size_bytes"].as_u64().unwrap();
    // The full one holds the 8 MiB written; the incremental about the 4 MiB changed.
    assert!(full_bytes > 8 << 20, "full: {full_bytes}");
    assert!(
        incr_bytes > 4 << 20 && incr_bytes < 6 << 20,
        "incremental: {incr_bytes} bytes for 4 MiB changed"
    );
    for b in &list {
        let disk = &b["disks"][0];
        assert_eq!(disk["sha256"].as_str().unwrap().len(), 64, "{b}");
        let file = target.path().join(disk["file"].as_str().unwrap());
        // A whole disk: root's alone.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let quota = d.json(&["quota", "show"]);
    assert!(
        quota["used"]["backups_mib"].as_u64().unwrap() >= (full_bytes + incr_bytes) >> 20,
        "{quota}"
    );

    // Each restores as a new VM with exactly its moment's bytes.
    let full_name = full["name"].as_str().unwrap().to_string();
    let incr_name = incr["name"].as_str().unwrap().to_string();
    d.ok(&["backup", "restore", &full_name, "--as", "r1", "--start"]);
    d.ok(&["backup", "restore", &incr_name, "--as", "r2", "--start"]);
    let mut r1 = console_of(&d, "r1").await;
    assert_eq!(sum(&mut r1).await, first, "the full backup's moment");
    drop(r1);
    let mut r2 = console_of(&d, "r2").await;
    assert_eq!(
        sum(&mut r2).await,
        second,
        "the incremental backup's moment"
    );
    drop(r2);
    d.ok(&["destroy", "r1"]);
    d.ok(&["delete", "r1"]);
    d.ok(&["destroy", "r2"]);
    d.ok(&["delete", "r2"]);

    // Over the VM itself: refused while it runs, then its disk is the backup's.
    let err = d.fails(&["backup", "restore", &full_name]);
    assert!(err.contains("stop it"), "{err}");
    d.ok(&["destroy", "b1"]);
    d.ok(&["backup", "restore", &full_name, "--start"]);
    let mut c = console_of(&d, "b1").await;
    assert_eq!(sum(&mut c).await, first, "restored over itself");
    drop(c);
    assert_eq!(d.describe("b1")["disks"].as_array().unwrap().len(), 1);
    // Its disks' file names no longer follow their indexes: a new disk still finds a
    // free one, and so does a second restore over it.
    d.ok(&["disk", "add", "b1", "--size", "8M"]);
    let disks = d.describe("b1")["disks"].as_array().unwrap().clone();
    assert_eq!(disks.len(), 2);
    let added = disks[1]["index"].as_u64().unwrap().to_string();
    d.ok(&["disk", "remove", "b1", &added]);

    // A stopped VM is backed up whole.
    d.ok(&["destroy", "b1"]);
    d.ok(&["backup", "create", "b1"]);
    let list = backups(&d, "b1");
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["kind"], "full", "{}", list[0]);
    assert_eq!(list[0]["parent"], Value::Null, "{}", list[0]);
    assert_eq!(
        list[1]["name"],
        incr_name.as_str(),
        "newest first: {list:?}"
    );

    // A backup a later one builds on stays until that one goes.
    let err = d.fails(&["backup", "delete", &full_name]);
    assert!(err.contains(&incr_name), "{err}");
    d.ok(&["backup", "delete", &incr_name]);
    d.ok(&["backup", "delete", &full_name]);
    assert_eq!(backups(&d, "b1").len(), 1);
    let left: Vec<String> = file_names(target.path());
    assert_eq!(left.len(), 1, "{left:?}");
    let err = d.fails(&["backup-target", "delete", "main"]);
    assert!(err.contains("holds 1 backups"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_backs_up_on_its_own_and_prunes_by_its_retention() {
    let d = Daemon::start();
    let target = tempfile::Builder::new()
        .prefix("hostel-backups-")
        .tempdir()
        .unwrap();
    d.ok(&[
        "backup-target",
        "add",
        "main",
        target.path().to_str().unwrap(),
    ]);
    d.ok(&[
        "create", "s1", "--image", "tiny", "--memory", "128M", "--disk", "32M",
    ]);
    let err = d.fails(&["backup", "schedule", "s1"]);
    assert!(err.contains("no backup schedule"), "{err}");
    let err = d.fails(&["backup", "schedule", "s1", "--every", "often"]);
    assert!(err.contains("hourly, daily, weekly"), "{err}");
    let s = d.json(&[
        "backup",
        "schedule",
        "s1",
        "--every",
        "1m",
        "--keep-last",
        "2",
        "--full-every",
        "2",
    ]);
    assert_eq!(s["every_minutes"], 1, "{s}");
    assert_eq!(s["target"], "main", "{s}");

    // Four runs: full, incremental, full (the chain holds 2), incremental; the last two
    // are kept, and the full one the newest builds on.
    for _ in 0..4 {
        d.ok(&["backup", "schedule", "s1", "--run-now"]);
    }
    let list = backups(&d, "s1");
    let kinds: Vec<&str> = list.iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["incremental", "full"], "{list:?}");
    assert_eq!(list[0]["parent"], list[1]["name"]);
    assert_eq!(file_names(target.path()).len(), 2);

    // The leader takes the next one by itself once a minute has passed.
    let newest = list[0]["name"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let list = loop {
        let list = backups(&d, "s1");
        if list[0]["name"] != newest.as_str() {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled backup within 2 minutes: {list:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // It ended a chain of 2, so it is full; the previous two stay (one is the newest
    // but one, the other what it builds on).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut list = list;
    while list.len() != 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        list = backups(&d, "s1");
    }
    let kinds: Vec<&str> = list.iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "incremental", "full"], "{list:?}");

    d.ok(&["backup", "schedule", "s1", "--off"]);
    assert!(d
        .fails(&["backup", "schedule", "s1"])
        .contains("no backup schedule"));
    assert_eq!(backups(&d, "s1").len(), 3, "its backups stay");
}
