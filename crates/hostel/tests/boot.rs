//! Boot methods: a kernel given on the command line, an install ISO (from a file and from
//! the image library) under SeaBIOS and under OVMF (UEFI), the NoCloud seed a disk
//! image's VM gets, and the refusals.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hybrid ISO that boots the tiny image's kernel with isolinux (BIOS) and with
/// systemd-boot from an El Torito EFI image (UEFI), built with the distribution's tools.
fn tiny_iso(dir: &Path, kernel: &Path, initrd: &Path) -> PathBuf {
    let root = dir.join("iso");
    std::fs::create_dir_all(root.join("isolinux")).unwrap();
    std::fs::copy(
        "/usr/lib/ISOLINUX/isolinux.bin",
        root.join("isolinux/isolinux.bin"),
    )
    .unwrap();
    std::fs::copy(
        "/usr/lib/syslinux/modules/bios/ldlinux.c32",
        root.join("isolinux/ldlinux.c32"),
    )
    .unwrap();
    std::fs::copy(kernel, root.join("vmlinuz")).unwrap();
    std::fs::copy(initrd, root.join("initrd.img")).unwrap();
    let args = "console=ttyS0 loglevel=4 panic=0 hostel.name=from-iso";
    std::fs::write(
        root.join("isolinux/isolinux.cfg"),
        format!("DEFAULT t\nLABEL t\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {args}\n"),
    )
    .unwrap();
    let efi = root.join("efiboot.img");
    let size = std::fs::metadata(kernel).unwrap().len() + std::fs::metadata(initrd).unwrap().len();
    std::fs::File::create(&efi)
        .unwrap()
        .set_len(size + (4 << 20))
        .unwrap();
    sh(Command::new("mkfs.vfat").args(["-n", "EFIBOOT"]).arg(&efi));
    let img = efi.to_str().unwrap();
    sh(Command::new("mmd").args([
        "-i",
        img,
        "::/EFI",
        "::/EFI/BOOT",
        "::/loader",
        "::/loader/entries",
    ]));
    let put = |src: &Path, dst: &str| {
        sh(Command::new("mcopy").args(["-i", img]).arg(src).arg(dst));
    };
    put(
        Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        "::/EFI/BOOT/BOOTX64.EFI",
    );
    put(kernel, "::/vmlinuz");
    put(initrd, "::/initrd.img");
    let loader = dir.join("loader.conf");
    std::fs::write(&loader, "default t.conf\ntimeout 0\n").unwrap();
    put(&loader, "::/loader/loader.conf");
    let entry = dir.join("t.conf");
    std::fs::write(
        &entry,
        format!("title t\nlinux /vmlinuz\ninitrd /initrd.img\noptions {args}\n"),
    )
    .unwrap();
    put(&entry, "::/loader/entries/t.conf");
    let iso = dir.join("tiny.iso");
    sh(Command::new("genisoimage")
        .args(["-quiet", "-o"])
        .arg(&iso)
        .args([
            "-V",
            "TINY",
            "-J",
            "-R",
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "-eltorito-alt-boot",
            "-e",
            "efiboot.img",
            "-no-emul-boot",
        ])
        .arg(&root));
    std::fs::set_permissions(&iso, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    iso
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_cdrom_uefi_and_seed() {
    let d = Daemon::start();
    let tiny = d.data_dir().join("images/tiny");
    let (kernel, initrd) = (tiny.join("vmlinuz"), tiny.join("initrd.img"));
    let iso = tiny_iso(d.dir.path(), &kernel, &initrd);
    let iso_s = iso.to_str().unwrap();

    // Nothing to boot, or boot options that do not go together: refused, nothing made.
    let bad: &[(&[&str], &str)] = &[
        (&["create", "x", "--no-network"], "nothing to boot"),
        (
            &["create", "x", "--cdrom", "nosuch", "--no-network"],
            "no image named \"nosuch\"",
        ),
        (
            &[
                "create",
                "x",
                "--kernel",
                "/k",
                "--firmware",
                "uefi",
                "--no-network",
            ],
            "leave --firmware out",
        ),
        (
            &["create", "x", "--image", "tiny", "--initrd", "/i"],
            "go with --kernel",
        ),
        (
            &["create", "x", "--image", "tiny", "--firmware", "uefi"],
            "--firmware does not apply",
        ),
        (
            &["create", "x", "--image", "tiny", "--firmware", "efi"],
            "use bios or uefi",
        ),
        (
            &["create", "x", "--image", "tiny", "--ssh-key", "hello"],
            "OpenSSH public key",
        ),
        (
            &["create", "x", "--cdrom", "tiny", "--no-network"],
            "kernel image",
        ),
        (
            &["create", "x", "--image", "tiny", "--pool", "nosuch"],
            "no pool named",
        ),
    ];
    for (args, want) in bad {
        let err = d.fails(args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(d.json(&["list"]).as_array().unwrap().is_empty());

    // A kernel of one's own, like a Xen config's kernel= / ramdisk= / extra=.
    d.ok(&[
        "create",
        "own",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 panic=0 marker=own-cmdline",
        "--memory",
        "128M",
        "--no-network",
    ]);
    let mut c = d.console("own").await;
    c.wait_for("HOSTEL-READY host=own", Duration::from_secs(180))
        .await;
    assert!(c
        .run("cat /proc/cmdline")
        .await
        .contains("marker=own-cmdline"));
    let boot = &d.describe("own")["boot"];
    assert_eq!(boot["method"], "direct-kernel");
    assert_eq!(boot["kernel"], kernel.to_str().unwrap());
    assert_eq!(boot["seed"], false);
    d.ok(&["destroy", "own"]);

    // An ISO file under SeaBIOS: the blank disk does not boot, the CD-ROM does.
    d.ok(&[
        "create",
        "inst",
        "--cdrom",
        iso_s,
        "--disk",
        "16M",
        "--memory",
        "128M",
        "--no-network",
    ]);
    let mut c = d.console("inst").await;
    c.wait_for("HOSTEL-READY host=from-iso", Duration::from_secs(180))
        .await;
    assert!(c
        .run("ls /dev/vda && echo has-disk")
        .await
        .contains("has-disk"));
    let desc = d.describe("inst");
    assert_eq!(desc["boot"]["method"], "bios");
    assert_eq!(desc["boot"]["cdrom"], iso_s);
    assert!(desc["image"].is_null());
    d.ok(&["destroy", "inst"]);

    // The same ISO from the image library, under OVMF: UEFI variables are the VM's own.
    d.ok(&["image", "import", "tiny-iso", iso_s]);
    d.ok(&[
        "create",
        "efi",
        "--cdrom",
        "tiny-iso",
        "--firmware",
        "uefi",
        "--disk",
        "16M",
        "--memory",
        "256M",
        "--no-network",
    ]);
    let mut c = d.console("efi").await;
    c.wait_for("HOSTEL-READY host=from-iso", Duration::from_secs(240))
        .await;
    assert_eq!(
        c.run("test -d /sys/firmware/efi && echo uefi").await,
        "uefi"
    );
    let desc = d.describe("efi");
    assert_eq!(desc["boot"]["method"], "uefi");
    assert_eq!(desc["boot"]["cdrom"], "tiny-iso");
    let id = desc["id"].as_str().unwrap().to_string();
    let vars = d.data_dir().join("run").join(&id).join("efivars.fd");
    assert!(vars.exists(), "the VM's UEFI variables are kept");
    let err = d.fails(&["image", "delete", "tiny-iso"]);
    assert!(err.contains("in use by efi"), "{err}");

    // A VM from a disk image gets a NoCloud seed: cidata, its name, keys, password hash.
    let raw = d.dir.path().join("blank.raw");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&raw)
        .arg("32M"));
    d.ok(&["image", "import", "blank", raw.to_str().unwrap()]);
    let pw = d.dir.path().join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPnqbY2Mdw8s8m0aXXzJ3t0oVJq3X8pYb3l1 t@test";
    d.ok(&[
        "create",
        "cloud",
        "--image",
        "blank",
        "--ssh-key",
        key,
        "--password-file",
        pw.to_str().unwrap(),
        "--memory",
        "128M",
    ]);
    let desc = d.describe("cloud");
    assert_eq!(desc["boot"]["seed"], true);
    let id = desc["id"].as_str().unwrap();
    let seed = std::fs::read(d.data_dir().join("run").join(id).join("seed.iso")).unwrap();
    assert_eq!(&seed[16 * 2048 + 40..16 * 2048 + 46], b"cidata");
    let text = String::from_utf8_lossy(&seed);
    assert!(text.contains("local-hostname: \"cloud\""), "meta-data");
    assert!(text.contains(key), "user-data carries the key");
    assert!(text.contains("password: \"$6$"), "a SHA-512 crypt hash");
    assert!(!text.contains("correct horse"), "never the password itself");
    let mac = desc["nics"][0]["mac"].as_str().unwrap();
    assert!(
        text.contains(&format!("macaddress: \"{mac}\"")),
        "network-config"
    );
    assert!(desc["qemu"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().contains("seed.iso")));
    d.ok(&["destroy", "cloud"]);
    d.ok(&["destroy", "efi"]);
    d.ok(&["delete", "efi"]);
    assert!(!vars.exists(), "deleting the VM deletes its UEFI variables");
    d.ok(&["image", "delete", "tiny-iso"]);
}
