//! Backups as a user takes them: data written in a running guest, a full backup, more
//! data, an incremental one (about the size of what changed, not of the disk), both
//! restored as new VMs, each holding exactly the bytes of its moment; a restore over the
//! stopped VM itself; a backup of a stopped VM; chains that cannot lose a link; the
//! space charged to the owner's quota; a live backup quiesced by the guest agent.

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

/// The VM's console once it is up (`Console::run` then waits for its shell's prompt).
async fn console_of(d: &Daemon, vm: &str) -> Console {
    let mut c = d.console(vm).await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    c
}

/// A daemon with a backup target `main` in a directory of its own.
fn with_target() -> (Daemon, tempfile::TempDir) {
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
    (d, target)
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
    // Its owner pays for the restored disk only what it adds to the one it replaces: a
    // quota with room for half a disk more lets the restore through.
    d.ok(&["user", "create", "bea"]);
    d.ok(&["chown", "b1", "user:bea"]);
    let used = d.json(&["quota", "show", "user:bea"])["used"]["disk_mib"]
        .as_u64()
        .unwrap();
    let room = format!("{}M", used + 32);
    d.ok(&["quota", "set", "user:bea", "--disk-total", &room]);
    d.ok(&["backup", "restore", &full_name, "--start"]);
    let after = d.json(&["quota", "show", "user:bea"])["used"]["disk_mib"].clone();
    assert_eq!(
        after, used,
        "the restore over b1 changed what bea is charged"
    );
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
    let (d, target) = with_target();
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

/// The file `name`'s text in the ext2 file system of backup file `file` (qcow2), read on
/// the host with debugfs.
fn file_in_backup(file: &std::path::Path, name: &str) -> String {
    let raw = file.with_extension("raw");
    let ok = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(file)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat /{name}")])
        .arg(&raw)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&raw);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A live backup of a guest whose agent answers is taken with its file systems frozen:
/// what the guest wrote but had not flushed is in it, and the guest writes on after.
/// Without an answer, the backup is crash-consistent and says why.
#[tokio::test(flavor = "multi_thread")]
async fn the_guest_agent_freezes_the_file_systems_for_a_live_backup() {
    let (d, target) = with_target();
    d.ok(&[
        "create", "q1", "--image", "tiny", "--memory", "128M", "--disk", "64M",
    ]);
    let mut c = console_of(&d, "q1").await;
    c.wait_until(
        "cat /run/qemu-ga.pid 2>/dev/null || echo none",
        |o| !o.contains("none"),
        "the guest agent to start",
    )
    .await;
    // Written, not flushed: in the guest's page cache only (it writes back after 30 s).
    let made = c
        .run("mke2fs -q /dev/vda && mkdir -p /mnt && mount /dev/vda /mnt && sync && echo frozen-in > /mnt/a && echo written")
        .await;
    assert!(made.ends_with("written"), "{made}");
    let out = d.ok(&["backup", "create", "q1"]);
    assert!(
        out.contains("the guest agent froze 1 file system(s)"),
        "{out}"
    );
    let b = backups(&d, "q1")[0].clone();
    assert_eq!(
        b["quiesce"], "the guest agent froze 1 file system(s)",
        "{b}"
    );
    let file = target.path().join(b["disks"][0]["file"].as_str().unwrap());
    assert_eq!(file_in_backup(&file, "a").trim(), "frozen-in");
    // Thawed: the guest writes on.
    assert_eq!(
        c.run("echo after > /mnt/b && sync && echo wrote").await,
        "wrote"
    );

    // No agent answering: crash-consistent, and said so.
    c.run("kill $(cat /run/qemu-ga.pid); echo stopped").await;
    let out = d.ok(&["backup", "create", "q1"]);
    assert!(
        out.contains("crash-consistent: no guest agent answered"),
        "{out}"
    );
    drop(c);
    d.ok(&["destroy", "q1"]);
    let out = d.ok(&["backup", "create", "q1"]);
    assert!(out.contains("at rest"), "{out}");
}

/// A restore a crash cuts leaves nothing half made: as a new VM it is gone with the
/// disks it got; over a VM before the swap, the VM keeps its own disks and the copies
/// go; during the swap, it is finished.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_cut_by_a_crash_is_undone_or_finished() {
    let (mut d, _target) = with_target();
    d.ok(&[
        "create",
        "r",
        "--image",
        "tiny",
        "--memory",
        "64M",
        "--disk",
        "16M",
        "--no-network",
        "--no-start",
    ]);
    d.ok(&["disk", "add", "r", "--size", "8M"]);
    d.ok(&["user", "create", "cy"]);
    d.ok(&["chown", "r", "user:cy"]);
    let paths = |d: &Daemon| -> Vec<String> {
        d.json(&["disk", "list", "r"])
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["path"].as_str().unwrap().to_string())
            .collect()
    };
    let before = paths(&d);
    for p in &before {
        qemu_io(p, "write -P 17 1M 64k");
    }
    d.ok(&["backup", "create", "r"]);
    let backup = backups(&d, "r")[0]["name"].as_str().unwrap().to_string();
    for p in &before {
        qemu_io(p, "write -P 34 1M 64k");
    }
    let pool_files = |d: &Daemon| -> Vec<String> {
        file_names(&d.data_dir().join("disks"))
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    let files = pool_files(&d);
    let used = d.json(&["quota", "show", "user:cy"])["used"].clone();

    // As a new VM, cut after its first disk of two: gone, with that disk.
    crash_at(
        &mut d,
        "controller.create.disk-copied",
        &["backup", "restore", &backup, "--as", "r2"],
    );
    let names: Vec<Value> = d.json(&["list"]).as_array().unwrap().clone();
    assert!(names.iter().all(|v| v["name"] != "r2"), "{names:?}");
    assert_eq!(pool_files(&d), files);
    assert_eq!(d.json(&["quota", "show", "user:cy"])["used"], used);
    let ops = d.json(&["operations"]);
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "create" && o["target"] == "r2" && o["state"] == "failed"),
        "{ops}"
    );

    // Over the VM, cut after one disk copied in: the VM keeps its own disks.
    crash_at(
        &mut d,
        "controller.restore-over.disk-copied",
        &["backup", "restore", &backup],
    );
    assert_eq!(paths(&d), before);
    assert!(before.iter().all(|p| holds(p, 34, "1M", "64k")));
    assert_eq!(pool_files(&d), files);

    // Over the VM, cut as a copy's row is written, before the restore named it as
    // copied: that copy goes too.
    crash_at(
        &mut d,
        "controller.disk-add.row-written",
        &["backup", "restore", &backup],
    );
    assert_eq!(paths(&d), before);
    assert_eq!(pool_files(&d), files);
    assert_eq!(d.json(&["quota", "show", "user:cy"])["used"], used);

    // Over the VM, cut as the swap begins: finished, the backup's disks in their places.
    crash_at(
        &mut d,
        "controller.restore-over.swapping",
        &["backup", "restore", &backup],
    );
    let after = paths(&d);
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)), "{after:?}");
    assert!(after.iter().all(|p| holds(p, 17, "1M", "64k")));
    let disks = d.json(&["disk", "list", "r"]);
    let idx: Vec<u64> = disks
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1], "{disks}");
    assert_eq!(pool_files(&d).len(), files.len());
    assert_eq!(d.json(&["quota", "show", "user:cy"])["used"], used);

    // A restore over a VM is held to the per-VM limit by what the VM has once it is
    // done (its 24 MiB), not by its old disks and the copies together.
    d.ok(&["quota", "set", "user:cy", "--disk-per-vm", "30M"]);
    d.ok(&["backup", "restore", &backup]);
    assert_eq!(d.json(&["quota", "show", "user:cy"])["used"], used);
}
