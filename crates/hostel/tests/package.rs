//! The Debian package as an admin meets it. `scripts/package.sh` builds two versions;
//! the first installs into a throwaway copy of this machine's root (an overlay over `/`
//! in mount and network namespaces of the test's own, so nothing of the host changes),
//! its unit runs `hostel up` from /etc/hostel/hostel.toml, and installing the second
//! restarts the daemon while a VM runs on: re-adopted, the same QEMU, its guest's uptime
//! continuing. This machine has no systemd, so the package's `hostel-service` runs the
//! unit's own command, as the package does wherever systemd is not the init.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A copy-on-write root: an overlay over `/`, chrooted into by a process that holds its
/// mount namespace; commands enter it with nsenter.
struct Root {
    // Dropped first: kills every process in the namespace (the holder, the daemon, its
    // QEMUs), which unmounts the overlay; then the directory goes.
    ns: Netns,
    holder: Child,
    _dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let ns = Netns::new();
        let dir = tempfile::Builder::new()
            .prefix("hostel-root-")
            .tempdir()
            .unwrap();
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let p = |d: &str| dir.path().join(d).display().to_string();
        let (upper, work, merged) = (p("upper"), p("work"), p("merged"));
        let script = format!(
            "set -e; mount -t overlay overlay -o lowerdir=/,upperdir={upper},workdir={work} {merged}; \
             for d in proc sys dev; do mount --rbind /$d {merged}/$d; done; \
             mount -t tmpfs tmpfs {merged}/run; \
             exec chroot {merged} sleep 100000"
        );
        let holder = ns
            .cmd("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let root = Root {
            ns,
            holder,
            _dir: dir,
        };
        // Ready once the holder is `sleep` inside the overlay.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid = root.holder.id();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let in_root = std::fs::read_link(format!("/proc/{pid}/root"))
                .is_ok_and(|r| r == Path::new(&merged));
            if comm.trim() == "sleep" && in_root {
                break;
            }
            assert!(Instant::now() < deadline, "the overlay root was not made");
            std::thread::sleep(Duration::from_millis(20));
        }
        root
    }

    /// A shell command run as root inside.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "-n", "-r", "-w"])
            .args(["--", "/bin/sh", "-c", script])
            .env("HOME", "/root")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Its stdout; panics with what it said if it failed.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, cli: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&format!("hostel {cli} -o json"))).unwrap()
    }

    /// A path inside, as seen from outside.
    fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.holder.id()))
    }

    fn daemon_pid(&self) -> u32 {
        std::fs::read_to_string(self.path("/run/hostel/hostel.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until the daemon answers the CLI.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !self.sh("hostel list").status.success() {
            assert!(
                Instant::now() < deadline,
                "hostel up did not answer within 180 s: {}",
                std::fs::read_to_string(self.path("/var/log/hostel/hostel.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    async fn console(&self, vm: &str) -> Console {
        let cfg = std::fs::read_to_string(self.path("/root/.config/hostel/client.toml")).unwrap();
        let v: toml::Value = toml::from_str(&cfg).unwrap();
        let url = v["url"].as_str().unwrap();
        let stream = self.ns.connect(url.trim_start_matches("http://"));
        Console::open(stream, url, v["token"].as_str().unwrap(), vm).await
    }
}

fn package(out: &Path, version: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/package.sh");
    let o = Command::new("bash")
        .arg(script)
        .args(["--binary", bin(), "--version", version, "--fast", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "package.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
}

async fn uptime(c: &mut Console) -> f64 {
    let out = c.run("cat /proc/uptime").await;
    out.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("uptime: {out:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_package_installs_runs_and_upgrades_with_vms_running() {
    let debs = tempfile::tempdir().unwrap();
    let v1 = package(debs.path(), "0.1.0~test1");
    let v2 = package(debs.path(), "0.1.1~test2");
    let root = Root::new();

    // Install: the users, the units (systemd finds nothing wrong in them), completions,
    // man pages, the settings file; nothing starts without an init system.
    root.ok(&format!("dpkg -i {}", v1.display()));
    root.ok("getent passwd hostel-qemu && getent passwd hostel-build");
    let verify = root.sh("systemd-analyze verify --man=no /lib/systemd/system/hostel*.service");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !said.contains("hostel"),
        "systemd-analyze verify: {said}"
    );
    for f in [
        "/usr/share/bash-completion/completions/hostel",
        "/usr/share/zsh/vendor-completions/_hostel",
        "/usr/share/man/man1/hostel-up.1.gz",
        "/usr/share/hostel/web/@novnc/novnc/package.json",
        "/etc/logrotate.d/hostel",
    ] {
        assert!(root.path(f).exists(), "{f}");
    }
    assert!(
        root.ok("bash -c '. /usr/share/bash-completion/completions/hostel; complete -p hostel'")
            .contains("hostel"),
        "the bash completion registers"
    );
    assert_eq!(
        root.ok("dpkg-query -W -f '${Version}' hostel"),
        "0.1.0~test1"
    );
    assert!(!root.path("/run/hostel/hostel.pid").exists());

    // The admin sets something in the settings file, then starts the unit.
    root.ok(
        "sed -i 's/^# metrics-listen = \"127.0.0.1:9464\"/metrics-listen = \"127.0.0.1:9464\"/' \
         /etc/hostel/hostel.toml",
    );
    root.ok("/usr/lib/hostel/hostel-service start hostel");
    root.wait_ready();
    let info = root.json("info");
    assert_eq!(info["metrics_listen"], "127.0.0.1:9464", "{info}");
    assert!(root.path("/var/lib/hostel/hostel.db").exists());
    let first = root.daemon_pid();

    root.ok("hostel create web --image tiny --memory 128M");
    let mut c = root.console("web").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    let qemu = root.json("describe web")["qemu"]["pid"].as_u64().unwrap() as u32;
    let before = uptime(&mut c).await;
    drop(c);

    // The upgrade: postinst restarts the daemon; the VM runs on and is re-adopted.
    let upgrade = root.ok(&format!("dpkg -i {}", v2.display()));
    assert!(
        upgrade.contains("hostel: stopped") || upgrade.contains("started"),
        "{upgrade}"
    );
    assert_eq!(
        root.ok("dpkg-query -W -f '${Version}' hostel"),
        "0.1.1~test2"
    );
    let second = root.daemon_pid();
    assert_ne!(first, second, "the daemon restarted");
    assert!(!pid_alive(first), "the old daemon is gone");
    root.wait_ready();
    let web = root.json("describe web");
    assert_eq!(web["state"], "running", "{web}");
    assert_eq!(
        web["qemu"]["pid"].as_u64().unwrap() as u32,
        qemu,
        "the same QEMU"
    );
    assert!(is_alive_qemu(qemu));
    let mut c = root.console("web").await;
    let after = uptime(&mut c).await;
    assert!(
        after > before,
        "the guest's uptime continues across the upgrade: {before} s, then {after} s"
    );
    drop(c);
    // The admin's setting survived the upgrade (an unchanged conffile keeps the edit).
    assert_eq!(root.json("info")["metrics_listen"], "127.0.0.1:9464");

    // Removing the package stops the daemon and leaves the VM running.
    root.ok("dpkg -r hostel");
    assert!(!pid_alive(second), "prerm stopped the daemon");
    assert!(is_alive_qemu(qemu), "the VM outlives the daemon's removal");
}
