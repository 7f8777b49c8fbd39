//! Image import (raw and qcow2), VM disks as overlays of images, and images in use.

mod common;
use common::*;
use std::process::Command;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(path: &str) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn import_overlay_and_delete() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, vec![0x5au8; 4 << 20]).unwrap();
    let qcow = dir.join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "48M"]);
    let vpc = dir.join("disk.vpc");
    qemu_img(&["create", "-q", "-f", "vpc", vpc.to_str().unwrap(), "8M"]);

    d.ok(&["image", "import", "rawimg", raw.to_str().unwrap()]);
    d.ok(&["image", "import", "qcowimg", qcow.to_str().unwrap()]);
    // VMware, VirtualBox and Hyper-V disks convert too (the seeds' qemu-img convert).
    for fmt in ["vmdk", "vdi", "vhdx"] {
        let f = dir.join(format!("disk.{fmt}"));
        qemu_img(&["create", "-q", "-f", fmt, f.to_str().unwrap(), "16M"]);
        d.ok(&[
            "image",
            "import",
            &format!("from-{fmt}"),
            f.to_str().unwrap(),
        ]);
        d.ok(&["image", "delete", &format!("from-{fmt}")]);
    }
    let err = d.fails(&["image", "import", "vpcimg", vpc.to_str().unwrap()]);
    assert!(err.contains("vpc format"), "{err}");
    let err = d.fails(&["image", "import", "rawimg", raw.to_str().unwrap()]);
    assert!(err.contains("exists already"), "{err}");
    let err = d.fails(&["image", "import", "missing", "/nonexistent/x.raw"]);
    assert!(err.contains("cannot read /nonexistent/x.raw"), "{err}");

    let images = d.json(&["image", "list"]);
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["qcowimg", "rawimg", "tiny"],
        "a failed import leaves no image"
    );
    let leftovers: Vec<String> = file_names(&d.data_dir().join("images"))
        .into_iter()
        .filter(|n| n.contains("vpcimg") || n.contains("missing") || n.ends_with(".importing"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for i in images.as_array().unwrap() {
        assert_eq!(i["sha256"].as_str().unwrap().len(), 64);
    }

    let base = d.data_dir().join("images/rawimg.qcow2");
    let before = sha256(base.to_str().unwrap());
    let vm = d.json(&[
        "create", "fromraw", "--image", "rawimg", "--memory", "128M", "--disk", "32M",
    ]);
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["boot"]["method"], "bios");
    assert_eq!(vm["disks"][0]["backing_image"], "rawimg");
    assert_eq!(vm["disks"][0]["format"], "qcow2");
    let overlay = vm["disks"][0]["path"].as_str().unwrap().to_string();
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", &overlay])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["backing-filename"],
        base.to_str().unwrap(),
        "the disk is an overlay"
    );
    assert_eq!(info["virtual-size"], 32u64 << 20);

    let err = d.fails(&["create", "tiny-disk", "--image", "qcowimg", "--disk", "8M"]);
    assert!(err.contains("smaller than the image"), "{err}");

    let err = d.fails(&["image", "delete", "rawimg"]);
    assert!(err.contains("in use by fromraw"), "{err}");
    d.ok(&["destroy", "fromraw"]);
    assert_eq!(
        sha256(base.to_str().unwrap()),
        before,
        "the base image is never written"
    );
    d.ok(&["delete", "fromraw"]);
    assert!(!std::path::Path::new(&overlay).exists());
    d.ok(&["image", "delete", "rawimg"]);
    assert!(!base.exists());
    let err = d.fails(&["image", "delete", "rawimg"]);
    assert!(err.contains("no image named"), "{err}");
}

/// Serves `files` (URL path → content) over HTTP/1.0 from inside the namespace; returns
/// the address. Unknown paths get 404.
fn serve_in(ns: &Netns, files: Vec<(&'static str, Vec<u8>)>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let path = format!("/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(l.local_addr().unwrap().to_string()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let want = line.split_whitespace().nth(1).unwrap_or("");
            match files.iter().find(|(p, _)| *p == want) {
                Some((_, body)) => {
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = write!(s, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
            }
        }
    });
    rx.recv().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn import_from_a_url() {
    let d = Daemon::start();
    let src = d.dir.path().join("web.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "24M"]);
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "vmdk",
        src.to_str().unwrap(),
        d.dir.path().join("web.vmdk").to_str().unwrap(),
    ]);
    let body = std::fs::read(d.dir.path().join("web.vmdk")).unwrap();
    let addr = serve_in(&d.ns, vec![("/images/web.vmdk", body)]);

    let out = d.ok(&[
        "image",
        "import",
        "web",
        &format!("http://{addr}/images/web.vmdk"),
    ]);
    assert!(out.contains("image-import web: done"), "{out}");
    let img = d.json(&["image", "describe", "web"]);
    assert_eq!(img["format"], "qcow2");
    assert_eq!(img["kind"], "disk");
    let stored = d.data_dir().join("images/web.qcow2");
    assert_eq!(
        sha256(stored.to_str().unwrap()),
        img["sha256"].as_str().unwrap()
    );
    let vm = d.json(&[
        "create",
        "w",
        "--image",
        "web",
        "--memory",
        "128M",
        "--no-start",
    ]);
    assert_eq!(vm["disks"][0]["size_mib"], 24);

    // A URL that does not answer with the file: a clear error, no image, no file left.
    let err = d.fails(&[
        "image",
        "import",
        "gone",
        &format!("http://{addr}/images/nothing.vmdk"),
    ]);
    assert!(err.contains("404"), "{err}");
    let err = d.fails(&["image", "import", "x", "ftp://example.org/x.img"]);
    assert!(err.contains("only http and https URLs"), "{err}");
    let left: Vec<String> = file_names(&d.data_dir().join("images"))
        .into_iter()
        .filter(|n| n.contains("gone") || n.ends_with(".part") || n.ends_with(".download"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let err = d.fails(&["image", "describe", "gone"]);
    assert!(err.contains("no image named"), "{err}");
}
