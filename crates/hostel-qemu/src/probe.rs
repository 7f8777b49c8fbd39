//! Deciding between KVM and TCG by a real probe.
//!
//! `/dev/kvm` existing proves nothing: on these machines it is a nested KVM that hangs on
//! standard guest kernels (DESIGN.md). So KVM is used only if a test guest actually boots
//! under it to its ready marker within a deadline. The answer is cached per host boot.

use hostel_model::Accel;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeResult {
    pub accel: Accel,
    pub reason: String,
    /// The host boot and QEMU version the answer holds for.
    pub boot_id: String,
    pub qemu_version: String,
}

pub struct ProbeGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub ready_marker: String,
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `qemu-system-x86_64 --version`'s first line's version number.
pub async fn qemu_version(binary: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {binary}: {e}; install QEMU with \
                 `apt-get install -t bookworm-backports qemu-system-x86`"
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    Ok(first
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or(first)
        .to_string())
}

/// The cached answer, if it holds for this host boot and QEMU version.
pub fn cached(cache: &Path, qemu_version: &str) -> Option<ProbeResult> {
    let r: ProbeResult = serde_json::from_str(&std::fs::read_to_string(cache).ok()?).ok()?;
    (r.boot_id == boot_id() && r.qemu_version == qemu_version).then_some(r)
}

/// Returns the cached answer for this boot and QEMU version, or probes and caches.
pub async fn probe_cached(
    cache: &Path,
    qemu_binary: &str,
    qemu_version: &str,
    guest: &ProbeGuest,
    deadline: Duration,
) -> ProbeResult {
    if let Some(r) = cached(cache, qemu_version) {
        return r;
    }
    let boot = boot_id();
    let (accel, reason) = probe(qemu_binary, guest, deadline).await;
    let r = ProbeResult {
        accel,
        reason,
        boot_id: boot,
        qemu_version: qemu_version.to_string(),
    };
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(cache, serde_json::to_vec_pretty(&r).unwrap_or_default());
    r
}

/// Boots the guest under KVM and waits for its ready marker.
pub async fn probe(qemu_binary: &str, guest: &ProbeGuest, deadline: Duration) -> (Accel, String) {
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return (Accel::Tcg, format!("KVM unavailable: /dev/kvm: {e}"));
    }
    let mut child = match tokio::process::Command::new(qemu_binary)
        .args(["-accel", "kvm", "-cpu", "host", "-m", "128M", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args(["-append", &guest.cmdline])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (Accel::Tcg, format!("KVM probe could not start QEMU: {e}")),
    };
    let mut out = child.stdout.take().expect("piped");
    let marker = guest.ready_marker.clone();
    let watch = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&seen).contains(&marker) {
                        return true;
                    }
                    if seen.len() > 1 << 20 {
                        seen.drain(..seen.len() - 4096);
                    }
                }
            }
        }
    };
    let booted = tokio::time::timeout(deadline, watch).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    match booted {
        Ok(true) => (
            Accel::Kvm,
            "a test guest booted under KVM to its ready marker".to_string(),
        ),
        Ok(false) => (
            Accel::Tcg,
            "KVM present but a test guest under it exited before booting; using TCG".to_string(),
        ),
        Err(_) => (
            Accel::Tcg,
            format!(
                "KVM present but a test guest under it did not boot within {} s \
                 (a nested KVM that hangs); using TCG",
                deadline.as_secs()
            ),
        ),
    }
}
