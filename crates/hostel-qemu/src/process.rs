//! Starting QEMU with no more privilege than it needs, and finding it again later.
//!
//! QEMU runs in its own session (so a Ctrl-C or a SIGTERM to the daemon's process group
//! never reaches it) and, when the daemon is root, as an unprivileged user set before
//! exec, which lets the strict seccomp sandbox stay on.

use anyhow::Context;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

/// The file descriptor number a restore's state file is handed to QEMU on.
pub const INCOMING_FD: i32 = 3;

#[derive(Debug, Clone)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`kvm`, for /dev/kvm).
    pub groups: Vec<u32>,
}

/// Looks up the user QEMU should run as.
pub fn lookup_user(name: &str) -> anyhow::Result<RunAs> {
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("looking up user {name}"))?
        .with_context(|| {
            format!(
                "there is no user {name:?} for QEMU to run as: create it with \
                 `useradd --system --no-create-home --shell /usr/sbin/nologin {name}`"
            )
        })?;
    let cname = std::ffi::CString::new(name)?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()]);
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
    })
}

pub struct Launch<'a> {
    pub argv: &'a [String],
    pub log: &'a Path,
    pub run_as: Option<RunAs>,
    /// Handed to QEMU as fd 3 (for `-incoming fd:3`).
    pub incoming: Option<OwnedFd>,
    /// Tap descriptors, handed to QEMU as fds FIRST_NIC_FD, FIRST_NIC_FD + 1, ...
    pub taps: Vec<OwnedFd>,
}

/// A started QEMU: its pid and a future that resolves with its exit status.
pub struct Started {
    pub pid: u32,
    pub exit: tokio::sync::oneshot::Receiver<String>,
}

/// Starts QEMU and reaps it on a blocking thread; `exit` says how it ended.
pub fn spawn(l: Launch<'_>) -> anyhow::Result<Started> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(l.log)
        .with_context(|| format!("opening {}", l.log.display()))?;
    let mut cmd = std::process::Command::new(&l.argv[0]);
    cmd.args(&l.argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir("/");
    let incoming = l.incoming.as_ref().map(|f| f.as_raw_fd());
    let taps: Vec<i32> = l.taps.iter().map(|f| f.as_raw_fd()).collect();
    let run_as = l.run_as.clone();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Move every descriptor QEMU gets above the target numbers first, so that
            // placing one never overwrites another, then put each in place.
            let mut sources = [-1i32; 65];
            let mut targets = [-1i32; 65];
            let mut n = 0;
            if let Some(fd) = incoming {
                sources[n] = fd;
                targets[n] = INCOMING_FD;
                n += 1;
            }
            for (i, fd) in taps.iter().enumerate().take(64) {
                sources[n] = *fd;
                targets[n] = crate::argv::FIRST_NIC_FD + i as i32;
                n += 1;
            }
            for src in sources.iter_mut().take(n) {
                *src = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 100);
                if *src < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..n {
                // dup2 clears FD_CLOEXEC on the new descriptor.
                if libc::dup2(sources[i], targets[i]) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(u) = &run_as {
                if libc::setgroups(u.groups.len(), u.groups.as_ptr()) < 0
                    || libc::setgid(u.gid) < 0
                    || libc::setuid(u.uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", l.argv[0]))?;
    drop(l.incoming);
    drop(l.taps);
    let pid = child.id();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let how = match child.wait() {
                Ok(status) => describe_exit(status),
                Err(e) => format!("could not wait for QEMU: {e}"),
            };
            let _ = tx.send(how);
        })?;
    Ok(Started { pid, exit: rx })
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| sig.to_string());
        format!("QEMU was killed by signal {name}")
    } else {
        format!("QEMU exited with status {}", status.code().unwrap_or(-1))
    }
}

/// True if `pid` is a live QEMU whose command line mentions `marker` (its QMP socket path),
/// so that a recycled pid is never mistaken for our VM.
pub fn is_our_qemu(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited already.
        if let Some(rest) = stat.rsplit(')').next() {
            if rest.trim_start().starts_with('Z') {
                return false;
            }
        }
    }
    let text = String::from_utf8_lossy(&cmdline);
    text.contains("qemu-system") && text.contains(marker)
}

/// Every live QEMU whose command line names a directory under `run_dir` (the agent's
/// runtime directories), with that directory's name (the VM's id).
pub fn qemus_under(run_dir: &Path) -> Vec<(u32, String)> {
    let marker = format!("{}/", run_dir.display());
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline);
        let Some(at) = text.find(&marker) else {
            continue;
        };
        let id: String = text[at + marker.len()..]
            .chars()
            .take_while(|c| *c != '/' && *c != '\0' && *c != ',')
            .collect();
        if !id.is_empty() && is_our_qemu(pid, &marker) {
            out.push((pid, id));
        }
    }
    out
}

pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends SIGKILL to a QEMU we started (checked by [`is_our_qemu`] first).
pub fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}
