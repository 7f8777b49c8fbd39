//! Storage pools: a btrfs pool on a loop device the test makes (reflink clones of an
//! image, subvolume snapshots and revert seen by a running guest, free space, refusals),
//! and the dir pool's listing.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A btrfs filesystem on a loop device, mounted on a fresh directory; all of it undone
/// on drop.
struct LoopBtrfs {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dev: String,
    mnt: PathBuf,
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl LoopBtrfs {
    fn new(size_mib: u64) -> LoopBtrfs {
        let dir = tempfile::Builder::new()
            .prefix("hostel-btrfs-")
            .tempdir()
            .unwrap();
        let file = dir.path().join("fs.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let dev = sh(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file))
        .trim()
        .to_string();
        sh(Command::new("mkfs.btrfs").args(["-q", &dev]));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        sh(Command::new("mount").arg(&dev).arg(&mnt));
        // QEMU's user reaches the pool through it.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        LoopBtrfs {
            _dir: dir,
            file,
            dev,
            mnt,
        }
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// (exclusive, shared) bytes of a file on btrfs.
fn btrfs_du(path: &Path) -> (u64, u64) {
    let out = sh(Command::new("btrfs")
        .args(["filesystem", "du", "-s", "--raw"])
        .arg(path));
    let nums: Vec<u64> = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    (nums[1], nums[2])
}

fn subvolumes(mnt: &Path) -> Vec<String> {
    sh(Command::new("btrfs")
        .args(["subvolume", "list", "-o"])
        .arg(mnt))
    .lines()
    .filter_map(|l| l.split_whitespace().last().map(String::from))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn btrfs_pool_clones_snapshots_and_space() {
    let fs = LoopBtrfs::new(400);
    let d = Daemon::start();
    let mnt = fs.mnt.display().to_string();

    // An image with 32 MiB of data and a marker at its start.
    let raw = d.dir.path().join("data.raw");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&raw)
        .arg("64M"));
    sh(Command::new("sh").arg("-c").arg(format!(
        "dd if=/dev/urandom of={0} bs=1M count=32 seek=1 conv=notrunc status=none && \
         printf image-marker | dd of={0} conv=notrunc status=none",
        raw.display()
    )));
    d.ok(&["image", "import", "data", raw.to_str().unwrap()]);

    // Bad pools change nothing.
    let plain = fs.mnt.parent().unwrap().display().to_string();
    let err = d.fails(&["pool", "create", "x", "--driver", "btrfs", "--path", &plain]);
    assert!(err.contains("not on a btrfs filesystem"), "{err}");
    let err = d.fails(&["pool", "create", "x", "--driver", "lvm", "--path", &mnt]);
    assert!(err.contains("not a pool driver"), "{err}");
    let err = d.fails(&["pool", "create", "x", "--path", "/nonexistent/dir"]);
    assert!(err.contains("does not exist"), "{err}");
    let err = d.fails(&["pool", "create", "default", "--path", &mnt]);
    assert!(err.contains("already"), "{err}");
    let err = d.fails(&["pool", "create", "x", "--path", "/tmp"]);
    assert!(err.contains("overlaps the host's default pool"), "{err}");
    assert_eq!(d.json(&["pool", "list"]).as_array().unwrap().len(), 1);

    d.ok(&[
        "pool", "create", "fast", "--driver", "btrfs", "--path", &mnt,
    ]);
    let p = d.json(&["pool", "describe", "fast"]);
    assert_eq!(p["driver"], "btrfs");
    let total = p["total_bytes"].as_u64().unwrap();
    assert!(total > 300 << 20 && total <= 400 << 20, "{p}");
    assert!(p["free_bytes"].as_u64().unwrap() > 200 << 20, "{p}");
    let list = d.ok(&["pool", "list"]);
    assert!(list.contains("fast") && list.contains("default"), "{list}");

    d.ok(&[
        "create",
        "b",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
        "--disk",
        "16M",
        "--pool",
        "fast",
    ]);
    let mut c = d.console("b").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    // Hot-plug a clone of the image from the pool: a reflink, sharing every extent.
    d.ok(&["disk", "add", "b", "--image", "data", "--pool", "fast"]);
    let disks = d.json(&["disk", "list", "b"]);
    let clone = &disks[1];
    assert_eq!(clone["pool"], "fast");
    assert_eq!(clone["format"], "raw");
    let clone_path = PathBuf::from(clone["path"].as_str().unwrap());
    assert!(clone_path.starts_with(&fs.mnt), "{clone}");
    let (exclusive, shared) = btrfs_du(&clone_path);
    assert_eq!(exclusive, 0, "a clone shares all its extents");
    assert!(shared >= 32 << 20, "shared {shared}");
    c.wait_until(
        "head -c 12 /dev/vdb",
        |o| o == "image-marker",
        "the clone shows the image's content",
    )
    .await;

    // A snapshot while running, a write, then revert: the old content is back.
    c.run("echo version-one | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        .await;
    d.ok(&["snapshot", "create", "b", "s1"]);
    assert_eq!(d.state("b"), "running");
    let subs = subvolumes(&fs.mnt);
    assert!(
        subs.iter()
            .any(|s| s.contains(".snapshots/") && s.ends_with("@s1")),
        "{subs:?}"
    );
    let err = d.fails(&["snapshot", "create", "b", "m1", "--memory"]);
    assert!(err.contains("btrfs"), "{err}");
    c.run("echo version-two | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        .await;
    d.ok(&["destroy", "b"]);
    d.ok(&["snapshot", "revert", "b", "s1"]);
    let n = c.seen.matches(READY).count();
    d.ok(&["start", "b"]);
    c.wait_count(READY, n + 1, Duration::from_secs(180)).await;
    assert_eq!(c.run("head -c 11 /dev/vda").await, "version-one");

    // Out of space: an image bigger than the pool's free space is refused up front,
    // and nothing is left behind.
    let big = d.dir.path().join("big.raw");
    sh(Command::new("sh").arg("-c").arg(format!(
        "dd if=/dev/urandom of={} bs=1M count=420 status=none",
        big.display()
    )));
    d.ok(&["image", "import", "big", big.to_str().unwrap()]);
    let before = subvolumes(&fs.mnt);
    let err = d.fails(&["disk", "add", "b", "--image", "big", "--pool", "fast"]);
    assert!(err.contains("out of space"), "{err}");
    assert!(err.contains("fast"), "{err}");
    assert_eq!(subvolumes(&fs.mnt), before);
    assert_eq!(d.json(&["disk", "list", "b"]).as_array().unwrap().len(), 2);
    let cached = file_names(&fs.mnt.join(".images"));
    assert_eq!(cached.len(), 1, "only the data image's copy: {cached:?}");

    // The doctor sees the pool's disks as the VM's, and a stray subvolume as an orphan.
    let rep = d.json(&["doctor"]);
    assert!(rep["problems"].as_array().unwrap().is_empty(), "{rep}");
    sh(Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(fs.mnt.join("stray")));
    let out = d.cli(&["doctor", "-o", "json"]);
    assert!(
        !out.status.success(),
        "the doctor fails when it finds a problem"
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rep["problems"].to_string().contains("stray/disk.raw"),
        "{rep}"
    );
    sh(Command::new("btrfs")
        .args(["-q", "subvolume", "delete"])
        .arg(fs.mnt.join("stray")));
    let p = d.json(&["pool", "describe", "fast"]);
    assert_eq!(p["disks"], 2);
    let err = d.fails(&["pool", "delete", "fast"]);
    assert!(err.contains("holds disks of b"), "{err}");

    // The guest wrote a qcow2 header naming a host file on its raw disk (written here
    // from the host, as the guest would through /dev/vda): an offline resize reads the
    // disk as the raw file its record says, never as that qcow2. The named file is a
    // FIFO, so a qemu-img that opened it would hang there.
    d.ok(&["destroy", "b"]);
    let fifo = d.dir.path().join("host.fifo");
    let header = d.dir.path().join("header.qcow2");
    std::fs::write(&fifo, vec![0u8; 1 << 20]).unwrap();
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&fifo)
        .arg(&header));
    std::fs::remove_file(&fifo).unwrap();
    sh(Command::new("mkfifo").arg(&fifo));
    let vda = PathBuf::from(disks[0]["path"].as_str().unwrap());
    sh(Command::new("dd")
        .arg(format!("if={}", header.display()))
        .arg(format!("of={}", vda.display()))
        .args(["conv=notrunc", "status=none"]));
    d.ok(&["disk", "resize", "b", "0", "24M"]);
    assert_eq!(std::fs::metadata(&vda).unwrap().len(), 24 << 20);
    assert_eq!(
        &std::fs::read(&vda).unwrap()[..4],
        b"QFI\xfb",
        "the guest's bytes are untouched"
    );

    // Deleting the VM removes its subvolumes and their snapshots.
    d.ok(&["delete", "b"]);
    let left: Vec<String> = subvolumes(&fs.mnt);
    assert!(left.is_empty(), "subvolumes left: {left:?}");
    d.ok(&["pool", "delete", "fast"]);
    assert!(file_names(&fs.mnt.join(".images")).is_empty());
    drop(d);
}
