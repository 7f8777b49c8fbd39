//! The `debian` image recipe: a bootable Debian disk image built from the mirror by
//! `assets/debian/build.sh`, run as an unprivileged build user (never as root over the
//! host's filesystem: mmdebstrap works inside a user namespace made from the user's
//! /etc/subuid and /etc/subgid ranges, and nothing is mounted).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SCRIPT: &str = include_str!("../assets/debian/build.sh");

/// The user builds run as; made (with subordinate id ranges) on first use.
pub const BUILD_USER: &str = "hostel-build";
const BUILD_HOME: &str = "/var/lib/hostel-build";
/// Subordinate ids for the build user's namespace: 65536 of them, above what
/// `useradd` hands out by default (100000 upward, 65536 per user).
const SUB_START: u64 = 1_879_048_192;
const SUB_COUNT: u64 = 65_536;

pub struct DebianOptions {
    pub suite: String,
    pub mirror: String,
    pub size_mib: u64,
    pub packages: Vec<String>,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run it"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Adds `user:start:count` to a subordinate id file unless the user has a range there.
fn ensure_subids(file: &Path, user: &str) -> Result<()> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    if text.lines().any(|l| l.split(':').next() == Some(user)) {
        return Ok(());
    }
    let mut s = text;
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(&format!("{user}:{SUB_START}:{SUB_COUNT}\n"));
    let tmp = file.with_extension("hostel-tmp");
    std::fs::write(&tmp, s)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

/// Makes the build user and its subordinate id ranges if they are missing.
pub fn ensure_build_user() -> Result<()> {
    crate::sysuser::ensure_system_user(BUILD_USER, Some(BUILD_HOME))?;
    ensure_subids(Path::new("/etc/subuid"), BUILD_USER)?;
    ensure_subids(Path::new("/etc/subgid"), BUILD_USER)?;
    for tool in [
        "mmdebstrap",
        "newuidmap",
        "syslinux",
        "mcopy",
        "mkfs.vfat",
        "sfdisk",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            bail!(
                "{tool} is missing: apt-get install mmdebstrap uidmap syslinux syslinux-common \
                 systemd-boot-efi mtools dosfstools fdisk (scripts/install-deps.sh does)"
            );
        }
    }
    Ok(())
}

/// Builds the image into `work` (made here, owned by the build user) and returns the
/// qcow2 file. `progress` gets the fraction done and what is happening.
pub fn build(
    opts: &DebianOptions,
    work: &Path,
    progress: &mut dyn FnMut(f64, &str),
) -> Result<PathBuf> {
    ensure_build_user()?;
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    run(
        Command::new("chown")
            .arg(format!("{BUILD_USER}:"))
            .arg(work),
        "handing the build directory to the build user",
    )?;
    // mmdebstrap's namespace runs its hooks as the first subordinate id, not as the build
    // user: they must be able to reach the build directory and read the hook scripts.
    std::fs::set_permissions(BUILD_HOME, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))?;
    let script = work.join("build.sh");
    std::fs::write(&script, SCRIPT)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))?;
    let mut child = Command::new("runuser")
        .args(["-u", BUILD_USER, "--", "env", "-i"])
        .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("HOME={BUILD_HOME}"))
        .arg(format!("OUT={}", work.display()))
        .arg(format!("SUITE={}", opts.suite))
        .arg(format!("MIRROR={}", opts.mirror))
        .arg(format!("SIZE_MB={}", opts.size_mib))
        .arg(format!("PACKAGES={}", opts.packages.join(" ")))
        // A host behind a proxy: the daemon's http_proxy reaches the mirror.
        .args(
            ["http_proxy", "https_proxy", "no_proxy"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}"))),
        )
        .arg("bash")
        .arg(&script)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run runuser (util-linux)")?;
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("PROGRESS ") {
            let (f, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Ok(f) = f.parse::<f64>() {
                progress(f, msg);
            }
        }
    }
    let status = child.wait()?;
    let err = errors.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("the Debian build failed: {}", tail.join(" | "));
    }
    let disk = work.join("disk.qcow2");
    if !disk.exists() {
        bail!("the Debian build ended without a disk image");
    }
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_added_once() {
        let dir = std::env::temp_dir().join(format!("hostel-subid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("subuid");
        std::fs::write(&f, "alice:100000:65536").unwrap();
        ensure_subids(&f, "hostel-build").unwrap();
        ensure_subids(&f, "hostel-build").unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            format!("alice:100000:65536\nhostel-build:{SUB_START}:{SUB_COUNT}\n")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_script_never_asks_for_root() {
        assert!(SCRIPT.contains("mmdebstrap --mode=unshare"));
        assert!(!SCRIPT.contains("sudo "));
        assert!(!SCRIPT.contains("mount "));
        assert!(!SCRIPT.contains("losetup"));
    }
}
