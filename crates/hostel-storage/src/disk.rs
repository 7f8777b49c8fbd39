//! Disk files and image files, through `qemu-img`.
//!
//! Images are read-only bases; a VM's disk is a qcow2 overlay on its image (created in
//! milliseconds whatever the image's size) or a blank qcow2. Nothing here ever
//! overwrites an existing file.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, Deserialize)]
pub struct ImgInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run qemu-img (apt-get install qemu-utils)"))?;
    if !out.status.success() {
        bail!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("qemu-img: ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn info(path: &Path) -> Result<ImgInfo> {
    let out = run(
        Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(path),
        &format!("reading {}", path.display()),
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// Creates a qcow2 overlay of `backing` (read-only from then on) of `size_mib`.
pub fn create_overlay(
    path: &Path,
    backing: &Path,
    backing_format: &str,
    size_mib: u64,
) -> Result<()> {
    refuse_existing(path)?;
    run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
            .arg(backing)
            .arg(path)
            .arg(format!("{size_mib}M")),
        &format!("creating overlay {}", path.display()),
    )?;
    Ok(())
}

pub fn create_blank(path: &Path, size_mib: u64) -> Result<()> {
    refuse_existing(path)?;
    run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg(format!("{size_mib}M")),
        &format!("creating disk {}", path.display()),
    )?;
    Ok(())
}

/// Grows a disk file (never shrinks: that would cut off what the guest wrote).
pub fn resize(path: &Path, size_mib: u64) -> Result<()> {
    let format = info(path)?.format;
    resize_format(path, &format, size_mib)
}

/// [`resize`] for a file whose format is known.
pub fn resize_format(path: &Path, format: &str, size_mib: u64) -> Result<()> {
    let current = info(path)?.virtual_size;
    if size_mib << 20 < current {
        bail!(
            "the disk is {} MiB; shrinking it would lose data: give a larger size",
            current >> 20
        );
    }
    run(
        Command::new("qemu-img")
            .args(["resize", "-q", "-f", format])
            .arg(path)
            .arg(format!("{size_mib}M")),
        &format!("resizing {}", path.display()),
    )?;
    Ok(())
}

/// qcow2 internal snapshots of a disk no QEMU has open: `create`, `revert` or `delete`.
pub fn snapshot(path: &Path, action: &str, name: &str) -> Result<()> {
    let flag = match action {
        "create" => "-c",
        "revert" => "-a",
        "delete" => "-d",
        _ => bail!("{action:?} is not a snapshot action"),
    };
    run(
        Command::new("qemu-img")
            .args(["snapshot", flag, name])
            .arg(path),
        &format!("snapshot {action} {name} on {}", path.display()),
    )?;
    Ok(())
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        bail!(
            "{} exists already; refusing to overwrite it",
            path.display()
        );
    }
    Ok(())
}

/// Formats `import` accepts. `qemu-img` reads more; these are the ones tested.
pub const IMPORT_FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vdi", "vhdx"];

/// Converts `source` into a qcow2 image at `dest` (through a temporary name, so a
/// failed import leaves nothing behind). Returns the source's detected format.
pub fn import(source: &Path, dest: &Path) -> Result<String> {
    import_with_progress(source, dest, &mut |_| {})
}

/// [`import`], calling `progress` with the fraction done as `qemu-img convert -p` reports it.
pub fn import_with_progress(
    source: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(f64),
) -> Result<String> {
    refuse_existing(dest)?;
    let meta =
        std::fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", source.display());
    }
    let src = info(source)?;
    if !IMPORT_FORMATS.contains(&src.format.as_str()) {
        bail!(
            "{} is in {} format, which import does not take: convert it to raw, qcow2, vmdk, vdi or vhdx first \
             (qemu-img convert -O qcow2 ...)",
            source.display(),
            src.format
        );
    }
    if src.backing_filename.is_some() {
        bail!(
            "{} has a backing file; import a standalone image (qemu-img convert flattens it)",
            source.display()
        );
    }
    let tmp = dest.with_extension("importing");
    let _ = std::fs::remove_file(&tmp);
    let res = convert_with_progress(&src.format, source, &tmp, progress)
        .with_context(|| format!("converting {}", source.display()))
        .and_then(|_| Ok(std::fs::rename(&tmp, dest)?));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|_| src.format)
}

/// `qemu-img convert -p` to qcow2, reading its progress (`(12.34/100%)`, `\r`-separated).
fn convert_with_progress(
    format: &str,
    source: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(f64),
) -> Result<()> {
    use std::process::Stdio;
    let mut child = Command::new("qemu-img")
        .args(["convert", "-p", "-f", format, "-O", "qcow2"])
        .arg(source)
        .arg(dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run qemu-img (apt-get install qemu-utils)")?;
    let mut out = child.stdout.take().expect("piped");
    let mut buf = [0u8; 256];
    let mut line = Vec::new();
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                if let Some(f) = parse_progress(&String::from_utf8_lossy(&line)) {
                    progress(f);
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !child.wait()?.success() {
        bail!("{}", err.trim().trim_start_matches("qemu-img: "));
    }
    progress(1.0);
    Ok(())
}

/// The fraction in a `qemu-img -p` progress line like `    (42.00/100%)`.
fn parse_progress(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    inner
        .parse::<f64>()
        .ok()
        .map(|p| (p / 100.0).clamp(0.0, 1.0))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_files(&[path])
}

/// One SHA-256 over the files' contents in order (an image made of a kernel and an initrd).
pub fn sha256_files(paths: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in paths {
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (42.00/100%)"), Some(0.42));
        assert_eq!(parse_progress("(100.00/100%)"), Some(1.0));
        assert_eq!(parse_progress("garbage"), None);
    }

    #[test]
    fn overlay_import_and_refusals() {
        let dir = std::env::temp_dir().join(format!("hostel-disk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("src.raw");
        std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
        let img = dir.join("img.qcow2");
        assert_eq!(import(&raw, &img).unwrap(), "raw");
        assert_eq!(info(&img).unwrap().format, "qcow2");
        assert!(import(&raw, &img)
            .unwrap_err()
            .to_string()
            .contains("refusing to overwrite"));
        let sum = sha256_file(&img).unwrap();
        let ov = dir.join("ov.qcow2");
        create_overlay(&ov, &img, "qcow2", 64).unwrap();
        let i = info(&ov).unwrap();
        assert_eq!(i.virtual_size, 64 << 20);
        assert!(i.backing_filename.unwrap().ends_with("img.qcow2"));
        assert_eq!(sha256_file(&img).unwrap(), sum);
        let bad = dir.join("bad.vpc");
        run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "vpc"])
                .arg(&bad)
                .arg("1M"),
            "vpc",
        )
        .unwrap();
        let e = import(&bad, &dir.join("x.qcow2")).unwrap_err().to_string();
        assert!(e.contains("vpc format"), "{e}");
        assert!(!dir.join("x.qcow2").exists() && !dir.join("x.importing").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
