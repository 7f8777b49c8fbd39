//! The `debian` recipe end to end: built once from the Debian mirror by the unprivileged
//! build user, then a VM from it boots to `login:` under SeaBIOS with the hostname its
//! NoCloud seed set, takes the owner's SSH key (a real ssh client logs in), and a second
//! VM boots the same image under OVMF (UEFI).

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// An HTTP forward proxy listening inside `ns` that relays each connection to the
/// origin server from the test's own namespace: the only way out of the daemon's
/// namespace, and only to the hosts a request names on port 80 (the Debian mirror).
fn relay_proxy(ns: &Netns) -> String {
    use std::io::{BufRead, BufReader, Write};
    let path = format!("/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let listener = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        tx.send(listener.local_addr().unwrap().to_string()).unwrap();
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                // `GET http://host[:port]/path HTTP/1.1`: only plain http to port 80.
                let Some(url) = first.split_whitespace().nth(1) else {
                    return;
                };
                let Some(rest) = url.strip_prefix("http://") else {
                    return;
                };
                let host = rest.split('/').next().unwrap_or("");
                let host = host.strip_suffix(":80").unwrap_or(host);
                if host.contains(':') || host.is_empty() {
                    return;
                }
                let Ok(mut origin) = std::net::TcpStream::connect((host, 80)) else {
                    return;
                };
                let _ = origin.write_all(first.as_bytes());
                let buffered = reader.buffer().to_vec();
                let _ = origin.write_all(&buffered);
                let mut up = reader.into_inner();
                let mut o2 = origin.try_clone().unwrap();
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up, &mut o2);
                    let _ = o2.shutdown(std::net::Shutdown::Write);
                });
                let mut down = client;
                let _ = std::io::copy(&mut origin, &mut down);
                let _ = down.shutdown(std::net::Shutdown::Both);
                let _ = t.join();
            });
        }
    });
    rx.recv().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_image_boots_to_login_with_the_seed() {
    let mut d = Daemon::unstarted();
    let proxy = relay_proxy(&d.ns);
    d.env = vec![
        ("http_proxy".into(), format!("http://{proxy}")),
        ("no_proxy".into(), "127.0.0.1,localhost".into()),
    ];
    d.launch();

    let err = d.fails(&["image", "build", "debian", "--suite", "jessie"]);
    assert!(err.contains("not a Debian suite"), "{err}");
    let err = d.fails(&["image", "build", "debian", "--packages", "vim,Bad_Name"]);
    assert!(err.contains("not a Debian package name"), "{err}");
    let err = d.fails(&["image", "build", "debian", "--size", "512M"]);
    assert!(err.contains("at least 1G"), "{err}");

    let t = Instant::now();
    let out = d.ok(&["image", "build", "debian", "--size", "3G"]);
    let built = t.elapsed();
    assert!(out.contains("image-build debian-bookworm: done"), "{out}");
    let img = d.json(&["image", "describe", "debian-bookworm"]);
    assert_eq!(img["kind"], "disk");
    assert_eq!(img["format"], "qcow2");
    // The build ran as the unprivileged build user and left nothing behind.
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap();
    assert!(
        subuid.lines().any(|l| l.starts_with("hostel-build:")),
        "{subuid}"
    );
    assert!(!std::path::Path::new("/var/lib/hostel-build/build-debian-bookworm").exists());

    let key = d.dir.path().join("id");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "owner@test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let pubkey = key.with_extension("pub");

    let t = Instant::now();
    d.ok(&[
        "create",
        "deb1",
        "--image",
        "debian-bookworm",
        "--memory",
        "1G",
        "--vcpus",
        "2",
        "--ssh-key",
        pubkey.to_str().unwrap(),
    ]);
    let mut c = d.console("deb1").await;
    c.wait_for("deb1 login:", Duration::from_secs(420)).await;
    let booted = t.elapsed();
    eprintln!("debian: built in {built:?}, BIOS boot to login in {booted:?}");
    let desc = d.describe("deb1");
    assert_eq!(desc["boot"]["method"], "bios");
    assert_eq!(desc["boot"]["seed"], true);
    let ip = desc["nics"][0]["ip"].as_str().unwrap().to_string();

    // The owner's key logs in as root; the guest calls itself by the VM's name.
    let deadline = Instant::now() + Duration::from_secs(180);
    let hostname = loop {
        let out =
            d.ns.cmd("ssh")
                .args(["-i", key.to_str().unwrap()])
                .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
                .args([
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "ConnectTimeout=5",
                ])
                .arg(format!("root@{ip}"))
                .arg("hostname")
                .output()
                .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "ssh with the seed's key never worked: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert_eq!(hostname, "deb1");
    d.ok(&["destroy", "deb1"]);

    // The same image under UEFI: systemd-boot from the boot partition. One vCPU: under
    // TCG a two-vCPU Debian kernel sometimes stalls at boot (an RCU stall while a module's
    // init waits on the other vCPU, seen once in three full runs), which is QEMU's
    // emulation, not what this test is about.
    d.ok(&[
        "create",
        "deb2",
        "--image",
        "debian-bookworm",
        "--firmware",
        "uefi",
        "--memory",
        "1G",
    ]);
    let mut c = d.console("deb2").await;
    c.wait_for("deb2 login:", Duration::from_secs(420)).await;
    assert_eq!(d.describe("deb2")["boot"]["method"], "uefi");
    d.ok(&["destroy", "deb2"]);
}
