//! `hostel export` and `hostel import-vm`: a stopped VM (a disk over an image, a second
//! disk) leaves one installation as one archive that any tar reads and `sha256sum -c`
//! checks, its disks standing alone; another installation makes it again, each disk with
//! exactly its content, its MAC kept; a user's import is charged to their quota; a
//! damaged, cut or foreign archive, one whose manifest lies about a disk's size, or one
//! whose disk is an overlay, is refused and leaves nothing behind.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A client configuration that acts as the holder of `token`.
fn config_as(d: &Daemon, dir: &Path, token: &str) -> PathBuf {
    let text = std::fs::read_to_string(d.config()).unwrap();
    let mine: String = text
        .lines()
        .map(|l| {
            if l.starts_with("token") {
                format!("token = \"{token}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let p = dir.join(format!("client-{}.toml", &token[token.len() - 6..]));
    std::fs::write(&p, mine).unwrap();
    p
}

/// An archive made from the unpacked one in `unpacked` with its manifest changed by
/// `change` and its disk 0 by `disk0` (given its path), its sums made again to match (as
/// whoever forges one would), in `dir`.
fn forge(
    unpacked: &Path,
    dir: &Path,
    change: impl Fn(&mut serde_json::Value),
    disk0: impl Fn(&Path),
) -> PathBuf {
    std::fs::create_dir(dir).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("hostel-vm.json")).unwrap()).unwrap();
    change(&mut m);
    std::fs::write(dir.join("hostel-vm.json"), m.to_string()).unwrap();
    let files = ["hostel-vm.json", "disk-0.qcow2", "disk-1.qcow2"];
    for f in &files[1..] {
        std::fs::copy(unpacked.join(f), dir.join(f)).unwrap();
    }
    disk0(&dir.join(files[1]));
    let sums = Command::new("sha256sum")
        .args(files)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(sums.status.success());
    std::fs::write(dir.join("SHA256SUMS"), sums.stdout).unwrap();
    let tar = dir.with_extension("tar");
    let made = Command::new("tar")
        .args(["--format=ustar", "-cf", tar.to_str().unwrap(), "-C"])
        .arg(dir)
        .args(files)
        .arg("SHA256SUMS")
        .status()
        .unwrap();
    assert!(made.success());
    tar
}

/// The pool's disk files of a daemon.
fn disk_files(d: &Daemon) -> Vec<String> {
    file_names(&d.data_dir().join("disks"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_moves_between_installations_as_one_archive() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Daemon::start();

    // An image with a marker at its start; a VM whose first disk is over it.
    let raw = dir.path().join("base.raw");
    let mut img = vec![0u8; 8 << 20];
    img[..13].copy_from_slice(b"IMAGE-MARKER!");
    std::fs::write(&raw, &img).unwrap();
    a.ok(&["image", "import", "base", raw.to_str().unwrap()]);
    a.ok(&[
        "create",
        "arc",
        "--image",
        "base",
        "--memory",
        "128M",
        "--vcpus",
        "2",
        "--disk",
        "32M",
        "--no-start",
    ]);
    a.ok(&["disk", "add", "arc", "--size", "16M"]);
    let vm = a.describe("arc");
    let d0 = vm["disks"][0]["path"].as_str().unwrap().to_string();
    let d1 = vm["disks"][1]["path"].as_str().unwrap().to_string();
    assert_eq!(vm["disks"][0]["backing_image"], "base");
    qemu_io(&d0, "write -P 90 4M 64k");
    qemu_io(&d1, "write -P 119 1M 64k");
    let mac = a.json(&["nic", "list", "arc"])[0]["mac"]
        .as_str()
        .unwrap()
        .to_string();

    // Only at rest.
    a.ok(&["start", "arc"]);
    let err = a.fails(&["export", "arc", dir.path().join("no.tar").to_str().unwrap()]);
    assert!(err.contains("shut it down first"), "{err}");
    assert!(!dir.path().join("no.tar").exists());
    assert!(!dir.path().join("no.part").exists());
    a.ok(&["destroy", "arc"]);

    // The archive: any tar reads it, sha256sum checks it, its disks stand alone.
    let tar = dir.path().join("arc.tar");
    a.ok(&["export", "arc", tar.to_str().unwrap()]);
    let listed = Command::new("tar")
        .args(["tf", tar.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "hostel-vm.json\ndisk-0.qcow2\ndisk-1.qcow2\nSHA256SUMS\n"
    );
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let x = Command::new("tar")
        .args(["xf", tar.to_str().unwrap(), "-C", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(x.success());
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let flat = out.join("disk-0.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", flat.to_str().unwrap()])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert!(qemu_io(flat.to_str().unwrap(), "read -v 0 16").contains("IMAGE.MARKER"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("hostel-vm.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "hostel-vm");
    assert_eq!(manifest["vm"]["vcpus"], 2);
    assert_eq!(manifest["vm"]["nics"][0]["mac"], mac.as_str());
    // No temporary copy stays behind on the host.
    assert!(
        !disk_files(&a).iter().any(|f| f.starts_with(".export")),
        "{:?}",
        disk_files(&a)
    );

    // Another installation makes it again, as a user, charged to their quota.
    let b = Daemon::start();
    b.ok(&["user", "create", "ines"]);
    let token = b.ok(&["token", "create", "t", "--user", "ines"]);
    let ines = config_as(&b, dir.path(), token.trim());
    let as_ines = |args: &[&str]| {
        b.ns.cmd(bin())
            .args(args)
            .env("HOSTEL_CONFIG", &ines)
            .output()
            .unwrap()
    };
    let files_before = disk_files(&b);
    b.ok(&["quota", "set", "user:ines", "--disk-total", "40M"]);
    let refused = as_ines(&["import-vm", tar.to_str().unwrap()]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("quota"), "{why}");
    assert_eq!(b.json(&["list"]).as_array().unwrap().len(), 0);
    assert_eq!(disk_files(&b), files_before);
    b.ok(&["quota", "set", "user:ines", "--disk-total", "1G"]);
    // Archives whose manifest lies about a disk's size, their sums made to match: one
    // that says less than the disk holds (it would be charged less than it takes), one
    // that says far more than the quota (refused before a byte is stored, not after).
    // And one whose disk is an overlay of a file of the host (its content would be lost
    // without it, or worse, read from the host).
    let overlay = |p: &Path| {
        let made = Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                "/etc/hostname",
            ])
            .arg(p)
            .arg("32M")
            .status()
            .unwrap();
        assert!(made.success());
    };
    let keep = |_: &Path| {};
    type Case<'a> = (&'a str, usize, i32, &'a str, &'a dyn Fn(&Path));
    let cases: [Case; 3] = [
        (
            "small",
            1,
            1,
            "virtual size is 16 MiB, not the 1 MiB said",
            &keep,
        ),
        ("huge", 0, 1 << 20, "over quota", &keep),
        ("overlay", 0, 32, "does not stand alone", &overlay),
    ];
    for (name, index, size_mib, why, disk0) in cases {
        let forged = forge(
            &out,
            &dir.path().join(name),
            |m| m["disks"][index]["size_mib"] = size_mib.into(),
            disk0,
        );
        let refused = as_ines(&["import-vm", forged.to_str().unwrap(), "--name", name]);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && err.contains(why),
            "{name}: {err}"
        );
        assert_eq!(b.json(&["list"]).as_array().unwrap().len(), 0, "{name}");
        assert_eq!(disk_files(&b), files_before, "{name}");
    }
    let made = as_ines(&["import-vm", tar.to_str().unwrap(), "-o", "json"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(made["vm"]["name"], "arc");
    assert_eq!(made["vm"]["owner"], "user:ines");
    let vm = b.describe("arc");
    assert_eq!(vm["vcpus"]["current"], 2, "{vm}");
    assert_eq!(vm["memory"]["max_mib"], 128, "{vm}");
    assert_eq!(b.json(&["nic", "list", "arc"])[0]["mac"], mac.as_str());
    let n0 = vm["disks"][0]["path"].as_str().unwrap();
    let n1 = vm["disks"][1]["path"].as_str().unwrap();
    assert!(qemu_io(n0, "read -v 0 16").contains("IMAGE.MARKER"));
    assert!(holds(n0, 90, "4M", "64k"));
    assert!(holds(n1, 119, "1M", "64k"));
    assert!(!holds(n1, 90, "1M", "64k"));
    assert_eq!(vm["disks"][1]["size_mib"], 16);
    let q = b.json(&["quota", "show", "user:ines"]);
    assert_eq!(q["used"]["disk_mib"], 48, "{q}");
    // It boots where it landed.
    b.ok(&["start", "arc"]);
    assert_eq!(b.state("arc"), "running");
    b.ok(&["destroy", "arc"]);

    // On the installation it came from, its MAC is taken: the copy gets a new one.
    let again = a.json(&["import-vm", tar.to_str().unwrap(), "--name", "arc2"]);
    assert!(
        again["notes"][0].as_str().unwrap().contains(&mac),
        "{again}"
    );
    assert_ne!(a.json(&["nic", "list", "arc2"])[0]["mac"], mac.as_str());

    // Through a pipe, as between two machines over ssh.
    let piped =
        a.ns.cmd("sh")
            .args([
                "-c",
                &format!("{0} export arc - | {0} import-vm - --name piped", bin()),
            ])
            .env("HOSTEL_CONFIG", a.config())
            .output()
            .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let p0 = a.describe("piped")["disks"][1]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(holds(&p0, 119, "1M", "64k"));

    // A damaged archive, a cut one, and one that is no archive leave nothing behind.
    let good = std::fs::read(&tar).unwrap();
    let files_before = disk_files(&b);
    let vms_before = b.json(&["list"]).as_array().unwrap().len();
    let mut damaged = good.clone();
    // A byte of disk 1's data (its 64 KiB of 119s) flipped.
    let run = vec![119u8; 65536];
    let at = good
        .windows(run.len())
        .position(|w| w == run.as_slice())
        .expect("disk 1's data in the archive");
    damaged[at + 1000] ^= 0xff;
    let cut = good[..good.len() / 2].to_vec();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("damaged", damaged, "damaged"),
        ("cut", cut, "cut short"),
        (
            "foreign",
            b"not an archive at all".repeat(100),
            "hostel-vm.json",
        ),
    ];
    for (name, bytes, why) in cases {
        let f = dir.path().join(format!("{name}.tar"));
        std::fs::write(&f, bytes).unwrap();
        let err = b.fails(&["import-vm", f.to_str().unwrap(), "--name", name]);
        assert!(err.contains(why), "{name}: {err}");
        assert_eq!(b.json(&["list"]).as_array().unwrap().len(), vms_before);
        assert_eq!(disk_files(&b), files_before, "{name}");
    }
    let audit = a.json(&["audit"]);
    for action in ["vm.export", "vm.import"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action && e["result"] == "ok"),
            "no {action}: {audit}"
        );
    }

    // A large archive refused at once (its name is taken here) while the client still
    // sends: the client reads the refusal, not a broken connection.
    a.ok(&[
        "create",
        "big",
        "--image",
        "tiny",
        "--memory",
        "64M",
        "--disk",
        "128M",
        "--no-network",
        "--no-start",
    ]);
    let big = a.describe("big")["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    qemu_io(&big, "write -P 90 0 100M");
    let big_tar = dir.path().join("big.tar");
    a.ok(&["export", "big", big_tar.to_str().unwrap()]);
    let err = a.fails(&["import-vm", big_tar.to_str().unwrap()]);
    assert!(err.contains("a VM named \"big\" exists already"), "{err}");

    // A temporary copy an agent that died mid-export left is removed at its next start:
    // one in the default pool's directory, and one in another pool's, made by an export
    // the daemon is killed in (held where the copy is made).
    let stale = a.data_dir().join("disks/.export-999-0.qcow2");
    std::fs::write(&stale, b"half a copy").unwrap();
    let side = dir.path().join("side-pool");
    std::fs::create_dir(&side).unwrap();
    a.ok(&["pool", "create", "side", "--path", side.to_str().unwrap()]);
    a.ok(&[
        "create",
        "aside",
        "--image",
        "tiny",
        "--memory",
        "64M",
        "--disk",
        "16M",
        "--pool",
        "side",
        "--no-network",
        "--no-start",
    ]);
    let holds = dir.path().join("holds");
    std::fs::create_dir(&holds).unwrap();
    a.kill9();
    a.env
        .push(("HOSTEL_HOLD_DIR".into(), holds.display().to_string()));
    a.launch();
    let point = "agent.export.copied";
    std::fs::write(holds.join(point), "").unwrap();
    let mut export =
        a.ns.cmd(bin())
            .args(["export", "aside"])
            .arg(dir.path().join("aside.tar"))
            .env("HOSTEL_CONFIG", a.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let held = std::time::Instant::now();
    while !holds.join(format!("{point}.reached")).exists() {
        assert!(
            held.elapsed() < Duration::from_secs(60),
            "the export never made its copy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let copies = || -> Vec<String> {
        file_names(&side)
            .into_iter()
            .filter(|n| n.starts_with(".export-"))
            .collect()
    };
    assert_eq!(copies().len(), 1, "{:?}", file_names(&side));
    a.kill9();
    let _ = export.kill();
    let _ = export.wait();
    a.env.clear();
    a.launch();
    assert!(!stale.exists());
    assert_eq!(copies(), Vec::<String>::new());
    assert_eq!(a.describe("aside")["disks"].as_array().unwrap().len(), 1);

    // An import a crash cuts after its first disk of two leaves no half-made VM: it is
    // removed at the next start, with the disk it got.
    let files = disk_files(&a);
    crash_at(
        &mut a,
        "controller.create.disk-copied",
        &["import-vm", tar.to_str().unwrap(), "--name", "cut"],
    );
    let names = a.json(&["list"]);
    assert!(
        names.as_array().unwrap().iter().all(|v| v["name"] != "cut"),
        "{names}"
    );
    assert_eq!(disk_files(&a), files);
}
