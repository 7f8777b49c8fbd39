//! `hostel import-xen` as an admin moving off a Xen host uses it: an `xm` config of a
//! PV guest (kernel, ramdisk, two disks in two formats, a vif with MAC, IP and bridge,
//! on_* policies, a setting Hostel lacks), the disks made here with a marker each. The
//! VM that comes out boots the kernel, has both disks with their bytes, the MAC and IP;
//! a dry run makes nothing; an import whose disk is missing leaves nothing behind.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A raw disk of 8 MiB starting with `marker`.
fn raw_disk(path: &Path, marker: &str) {
    let mut bytes = marker.as_bytes().to_vec();
    bytes.resize(8 << 20, 0);
    std::fs::write(path, bytes).unwrap();
}

fn config(disk2: &str) -> String {
    // As the seeds write them: xm syntax, typographic quotes and all.
    format!(
        r#"# /etc/xen/legacy.cfg
kernel = "/boot/vmlinuz-2.6.32-xen"
ramdisk = "/boot/initrd-2.6.32-xen.img"
memory = 128
maxmem = 256
name = "legacy"
vcpus = 1
vif = [ 'mac=00:16:3E:0A:0B:0C, ip=10.79.0.50, bridge=xenbr0' ]
disk = [ 'file:/srv/xen/legacy-root.img,xvda1,w',
         {disk2} ]
extra = ‘console=hvc0 loglevel=4 panic=0 cryptomgr.notests’
on_poweroff = 'destroy'
on_reboot = 'restart'
on_crash = 'restart'
cpu_weight = 512
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_xen_guest_comes_over_with_its_disks_nics_and_kernel() {
    let d = Daemon::start();
    d.ok(&["network", "create", "xennet", "--cidr", "10.79.0.0/24"]);
    // The guest's files as copied off the Xen host: its kernel and ramdisk (the tiny
    // image's, under the names the config gives), a raw disk and a qcow2 one.
    let moved = tempfile::Builder::new()
        .prefix("hostel-xen-")
        .tempdir()
        .unwrap();
    let dir = moved.path();
    std::fs::set_permissions(dir, PermissionsExt::from_mode(0o755)).unwrap();
    let tiny = d.data_dir().join("images/tiny");
    std::fs::copy(tiny.join("vmlinuz"), dir.join("vmlinuz-2.6.32-xen")).unwrap();
    std::fs::copy(tiny.join("initrd.img"), dir.join("initrd-2.6.32-xen.img")).unwrap();
    raw_disk(&dir.join("legacy-root.img"), "XENDISK-ROOT-OK");
    raw_disk(&dir.join("data.raw"), "XENDISK-DATA-OK");
    let ok = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(dir.join("data.raw"))
        .arg(dir.join("legacy-data.qcow2"))
        .status()
        .unwrap();
    assert!(ok.success());
    let cfg = dir.join("legacy.cfg");
    std::fs::write(
        &cfg,
        config("'tap:qcow2:/srv/xen/legacy-data.qcow2,xvdb,w'"),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let dir_s = dir.to_str().unwrap();
    let base = [
        "import-xen",
        cfg_s,
        "--disk-dir",
        dir_s,
        "--network",
        "xennet",
    ];
    let import = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend(extra);
        d.cli(&args)
    };
    let said = |o: std::process::Output| {
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };

    // A dry run says what it would make and what it cannot carry over, and makes nothing.
    let o = import(&["--dry-run"]);
    assert!(o.status.success());
    let dry = said(o);
    assert!(dry.contains("would make VM legacy"), "{dry}");
    assert!(dry.contains("line 15: cpu_weight = 512"), "{dry}");
    assert!(dry.contains("bridge=xenbr0"), "{dry}");
    assert!(dry.contains("/dev/vdX"), "{dry}");
    assert!(d.fails(&["describe", "legacy"]).contains("legacy"));

    let o = import(&[]);
    assert!(o.status.success(), "{}", said(o));
    let out = said(o);
    assert!(out.contains("xen-import legacy"), "{out}");
    let vm = d.wait_state("legacy", "running", Duration::from_secs(60));
    assert_eq!(vm["memory"]["target_mib"], 128, "{vm}");
    assert_eq!(vm["memory"]["max_mib"], 256, "{vm}");
    assert_eq!(vm["policies"]["on_crash"], "restart", "{vm}");
    assert_eq!(vm["boot"]["method"], "direct-kernel", "{vm}");
    assert_eq!(vm["nics"][0]["mac"], "00:16:3e:0a:0b:0c", "{vm}");
    assert_eq!(vm["nics"][0]["ip"], "10.79.0.50", "{vm}");
    assert_eq!(vm["nics"][0]["network"], "xennet", "{vm}");
    assert_eq!(vm["disks"].as_array().unwrap().len(), 2, "{vm}");

    // It boots the Xen kernel's command line (hvc0 made ttyS0) and has both disks' bytes.
    let mut c = d.console("legacy").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    assert_eq!(
        c.run("dd if=/dev/vda bs=15 count=1 2>/dev/null").await,
        "XENDISK-ROOT-OK"
    );
    assert_eq!(
        c.run("dd if=/dev/vdb bs=15 count=1 2>/dev/null").await,
        "XENDISK-DATA-OK"
    );
    drop(c);

    // A disk that is not there: the import fails saying which, and leaves no VM, no
    // disk file and no charge behind.
    let quota_before = d.json(&["quota", "show"]);
    let files_before = file_names(&d.data_dir().join("disks"));
    // The same guest under another name, IP and MAC, with `disk2`.
    let another = |name: &str, last: u8, disk2: &str| {
        let text = config(disk2)
            .replace("\"legacy\"", &format!("{name:?}"))
            .replace("10.79.0.50", &format!("10.79.0.{}", 50 + last))
            .replace("0B:0C", &format!("0B:{:02X}", 0x0C + last));
        std::fs::write(&cfg, text).unwrap();
    };
    another("broken", 1, "'file:/srv/xen/missing.img,xvdb,w'");
    let o = import(&[]);
    assert!(!o.status.success());
    let err = said(o);
    assert!(
        err.contains("missing.img") && err.contains("removed again"),
        "{err}"
    );
    assert!(d.fails(&["describe", "broken"]).contains("broken"));
    assert_eq!(file_names(&d.data_dir().join("disks")), files_before);
    assert_eq!(d.json(&["quota", "show"]), quota_before);

    // An import a crash cuts after its first disk of two leaves no half-made VM: it is
    // removed at the next start, with the disk it got.
    another("cut", 2, "'tap:qcow2:/srv/xen/legacy-data.qcow2,xvdb,w'");
    let mut d = d;
    crash_at(&mut d, "controller.create.disk-copied", &base);
    assert!(d.fails(&["describe", "cut"]).contains("cut"));
    assert_eq!(file_names(&d.data_dir().join("disks")), files_before);
    assert_eq!(d.json(&["quota", "show"]), quota_before);
}
