//! `hostel console NAME` on a real terminal (a pty): type a command, read its output,
//! detach with Ctrl-], and attach again.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    seen: String,
}

impl Pty {
    fn spawn(d: &Daemon, vm: &str) -> Pty {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave =
            |fd: &OwnedFd| unsafe { Stdio::from_raw_fd(nix::unistd::dup(fd.as_raw_fd()).unwrap()) };
        let child =
            d.ns.cmd(bin())
                .args(["console", vm])
                .env("HOSTEL_CONFIG", d.config())
                .stdin(slave(&pty.slave))
                .stdout(slave(&pty.slave))
                .stderr(slave(&pty.slave))
                .spawn()
                .unwrap();
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        Pty {
            master,
            child,
            seen: String::new(),
        }
    }

    fn expect(&mut self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 4096];
        while self.seen.matches(needle).count() < count {
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the terminal; saw:\n{}",
                self.seen
            );
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Collect what it wrote just before exiting.
                let mut buf = [0u8; 4096];
                while let Ok(n) = self.master.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                return s;
            }
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.master.read(&mut buf) {
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            assert!(
                Instant::now() < deadline,
                "hostel console did not exit:\n{}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn console_attach_detach_reattach() {
    let d = Daemon::start();
    d.ok(&["create", "term", "--image", "tiny", "--memory", "128M"]);

    let mut p = Pty::spawn(&d, "term");
    p.expect("Ctrl-] detaches", 1);
    p.expect(READY, 1);
    p.master.write_all(b"\necho one-$((40+2))\n").unwrap();
    p.expect("one-42", 1);
    p.master.write_all(&[0x1d]).unwrap();
    let status = p.wait_exit();
    assert!(status.success(), "{status}: {}", p.seen);
    assert!(p.seen.contains("detached from term"), "{}", p.seen);
    assert_eq!(
        d.state("term"),
        "running",
        "detaching leaves the VM running"
    );

    // Attaching again works, and so does a second watcher at the same time.
    let mut p = Pty::spawn(&d, "term");
    let mut watcher = d.console("term").await;
    p.expect("Ctrl-] detaches", 1);
    p.master.write_all(b"echo two-$((40+2))\n").unwrap();
    p.expect("two-42", 1);
    watcher.wait_for("two-42", Duration::from_secs(60)).await;
    p.master.write_all(&[0x1d]).unwrap();
    assert!(p.wait_exit().success());
    d.ok(&["destroy", "term"]);
}
