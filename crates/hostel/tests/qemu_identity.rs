//! Each VM's QEMU runs as a uid of its own, which alone owns that VM's disks and runtime
//! files: one escaped QEMU cannot open another VM's disk.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A process's (real) uid or gid from /proc/PID/status ("Uid:" or "Gid:").
fn id_of(pid: u64, field: &str) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// Can a process running as `uid` (and gid `uid`, no other group) open `path`?
fn opens_as(uid: u32, path: &Path) -> bool {
    let program = if path.is_dir() { "ls" } else { "cat" };
    Command::new(program)
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .uid(uid)
        .gid(uid)
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_vm_runs_as_its_own_uid_and_cannot_open_anothers_files() {
    let mut d = Daemon::start();
    let vms = ["own-a", "own-b"];
    for vm in vms {
        d.ok(&[
            "create",
            vm,
            "--image",
            "tiny",
            "--disk",
            "16M",
            "--no-network",
        ]);
    }
    for vm in vms {
        let mut c = d.console(vm).await;
        c.wait_for(READY, Duration::from_secs(180)).await;
    }
    let desc: Vec<serde_json::Value> = vms.iter().map(|v| d.describe(v)).collect();
    let pid = |i: usize| desc[i]["qemu"]["pid"].as_u64().unwrap();
    let uid = |i: usize| id_of(pid(i), "Uid:");
    let (a, b) = (uid(0), uid(1));
    assert_ne!(a, b, "two VMs, two uids");
    for (i, u) in [a, b].into_iter().enumerate() {
        assert!((2_000_000_000..2_000_065_536).contains(&u), "uid {u}");
        assert_eq!(id_of(pid(i), "Gid:"), u, "the gid is the VM's own too");
    }
    let disk = |i: usize| std::path::PathBuf::from(desc[i]["disks"][0]["path"].as_str().unwrap());
    let run = |i: usize| {
        d.data_dir()
            .join("run")
            .join(desc[i]["id"].as_str().unwrap())
    };
    for (i, u) in [a, b].into_iter().enumerate() {
        let m = std::fs::metadata(disk(i)).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o777),
            (u, 0o600),
            "{}",
            disk(i).display()
        );
        let m = std::fs::metadata(run(i)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (u, 0o700));
    }
    // A's uid opens its own disk, not B's disk or runtime dir, and the other way round.
    assert!(opens_as(a, &disk(0)));
    assert!(!opens_as(a, &disk(1)), "A's uid opened B's disk");
    assert!(!opens_as(a, &run(1)), "A's uid listed B's runtime dir");
    assert!(!opens_as(b, &disk(0)), "B's uid opened A's disk");
    // The image both boot from stays readable by both (and is not theirs).
    let kernel = d.data_dir().join("images").join("tiny").join("vmlinuz");
    assert!(opens_as(a, &kernel) && opens_as(b, &kernel));
    assert_eq!(std::fs::metadata(&kernel).unwrap().uid(), 0);

    // A VM keeps its uid from one start to the next.
    d.ok(&["destroy", "own-a"]);
    d.ok(&["start", "own-a"]);
    let pid = d.describe("own-a")["qemu"]["pid"].as_u64().unwrap();
    assert_eq!(id_of(pid, "Uid:"), a);
    let mut c = d.console("own-a").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    // And across a restart of the daemon: the re-adopted QEMU and the next start too.
    d.kill9();
    d.launch();
    let pid = d.describe("own-b")["qemu"]["pid"].as_u64().unwrap();
    assert_eq!(id_of(pid, "Uid:"), b);
    d.ok(&["destroy", "own-b"]);
    d.ok(&["start", "own-b"]);
    let pid = d.describe("own-b")["qemu"]["pid"].as_u64().unwrap();
    assert_eq!(id_of(pid, "Uid:"), b);
    for vm in vms {
        d.ok(&["destroy", vm]);
    }
}
