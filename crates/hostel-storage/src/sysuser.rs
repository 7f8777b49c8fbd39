//! System users Hostel runs things as (QEMU's user, the image build user), made on first
//! use. Two daemons starting at once on a fresh host (the test suite does) would both see
//! the user missing and race in `useradd`, the loser failing with "group exists": the
//! check and the creation happen under one host-wide lock.

use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

const LOCK: &str = "/run/lock/hostel-useradd.lock";

fn exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Makes the system user `name` (login shell nologin) unless it exists. `home` is made
/// when given; otherwise the user has no home (`/nonexistent`).
pub fn ensure_system_user(name: &str, home: Option<&str>) -> Result<()> {
    if exists(name) {
        return Ok(());
    }
    let dir = std::path::Path::new(LOCK)
        .parent()
        .expect("lock has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .with_context(|| format!("opening {LOCK}"))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {LOCK}: {}", std::io::Error::last_os_error());
    }
    if exists(name) {
        return Ok(());
    }
    let mut cmd = Command::new("useradd");
    cmd.arg("--system");
    match home {
        Some(h) => cmd.args(["--create-home", "--home-dir", h]),
        None => cmd.args(["--no-create-home", "--home-dir", "/nonexistent"]),
    };
    // A group of that name left by an earlier, interrupted useradd becomes its group.
    if group_exists(name) {
        cmd.args(["--gid", name]);
    }
    let out = cmd
        .args(["--shell", "/usr/sbin/nologin", name])
        .output()
        .context("running useradd")?;
    if !out.status.success() {
        bail!(
            "could not create the system user {name}: useradd: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn group_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["group", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Daemons starting together on a fresh host all get the user, none an error.
    #[test]
    fn concurrent_callers_all_get_the_user() {
        if !nix_is_root() {
            eprintln!("skipped: needs root to add users");
            return;
        }
        let name = format!("hostel-t{}", std::process::id() % 100_000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let n = name.clone();
                std::thread::spawn(move || ensure_system_user(&n, None))
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let made = exists(&name);
        let _ = Command::new("userdel").arg(&name).status();
        for r in results {
            r.expect("every caller gets the user");
        }
        assert!(made, "the user exists afterwards");
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
