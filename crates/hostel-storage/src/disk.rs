//! Disk files and image files, through `qemu-img`.
//!
//! Images are read-only bases; a VM's disk is a qcow2 overlay on its image (created in
//! milliseconds whatever the image's size) or a blank qcow2. Nothing here ever
//! overwrites an existing file.
//!
//! Every `qemu-img` here is told the file's format (`-f`, `-F`): root must never let
//! qemu-img probe a file a guest wrote. A raw disk whose guest wrote a qcow2 header
//! naming a backing file or a data file on the host would otherwise be opened as that
//! qcow2, and the named host file with it. Files of unknown origin (an import) have their
//! format recognised here by magic, then are refused if they name any other file.

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
    /// Format details: a qcow2's `data-file`, a vmdk's `extents`.
    #[serde(rename = "format-specific", default)]
    pub format_specific: Option<serde_json::Value>,
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

/// `qemu-img info` on a file of the given format (never probed; see the module's doc).
pub fn info(path: &Path, format: &str) -> Result<ImgInfo> {
    check_format_name(format)?;
    let out = run(
        Command::new("qemu-img")
            .args(["info", "--output=json", "-U", "-f", format])
            .arg(path),
        &format!("reading {}", path.display()),
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// A format name goes to qemu-img as an argument: only plain driver names.
fn check_format_name(format: &str) -> Result<()> {
    if format.is_empty()
        || !format
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        bail!("{format:?} is not a disk format name");
    }
    Ok(())
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

/// Grows a disk file of `format` (never shrinks: that would cut off what the guest wrote).
pub fn resize(path: &Path, format: &str, size_mib: u64) -> Result<()> {
    let current = info(path, format)?.virtual_size;
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
pub fn snapshot(path: &Path, format: &str, action: &str, name: &str) -> Result<()> {
    let flag = match action {
        "create" => "-c",
        "revert" => "-a",
        "delete" => "-d",
        _ => bail!("{action:?} is not a snapshot action"),
    };
    if format != "qcow2" {
        bail!(
            "{} is a {format} disk: snapshots inside the file need qcow2",
            path.display()
        );
    }
    run(
        Command::new("qemu-img")
            .args(["snapshot", "-f", "qcow2", flag, name])
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
    let format = recognise_format(source)?;
    if !IMPORT_FORMATS.contains(&format) {
        bail!(
            "{} is in {format} format, which import does not take: convert it to raw, qcow2, vmdk, vdi or vhdx first \
             (qemu-img convert -O qcow2 ...)",
            source.display(),
        );
    }
    let src = info(source, format)?;
    refuse_other_files(source, &src)?;
    let tmp = dest.with_extension("importing");
    let _ = std::fs::remove_file(&tmp);
    let res = convert_with_progress(&src.format, source, &tmp, progress)
        .with_context(|| format!("converting {}", source.display()))
        .and_then(|_| Ok(std::fs::rename(&tmp, dest)?));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|_| format.to_string())
}

/// The format of a file of unknown origin, by its magic (qemu-img's own probe is what
/// must not run as root; see the module's doc). What is none of the known formats is raw:
/// read as raw, any content is only data.
pub fn recognise_format(path: &Path) -> Result<&'static str> {
    let mut head = [0u8; 512];
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let be64 = |off: usize| {
        head.get(off..off + 8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
    };
    let le64 = |off: usize| {
        head.get(off..off + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let shown = path.display();
    Ok(if at(0, b"QFI\xfb") {
        // Refused here, before qemu-img opens the file at all: a backing file (offset 8)
        // or an external data file (incompatible feature bit 2 of version 3, offset 72).
        if hostel_model::qcow2::names_backing(head) == Some(true) {
            bail!(
                "{shown} has a backing file; import a standalone image (qemu-img convert \
                 flattens it)"
            );
        }
        if at(4, &[0, 0, 0, 3]) && be64(72).is_some_and(|f| f & 4 != 0) {
            bail!(
                "{shown} keeps its data in another file (a qcow2 data file); import a \
                 standalone image (qemu-img convert -O qcow2 without data_file)"
            );
        }
        // qcow (version 1) shares qcow2's magic.
        match head.get(4..8) {
            Some([0, 0, 0, 1]) => "qcow",
            _ => "qcow2",
        }
    } else if at(0, b"QFI\0") {
        "qed"
    } else if at(0, b"KDMV") {
        // A sparse vmdk of capacity 0 is only a pointer to its descriptor, whose extents
        // are other files.
        if le64(12) == Some(0) {
            bail!(
                "{shown} is a vmdk whose data is in other files (extents): import a \
                 monolithic vmdk or convert it to qcow2 first"
            );
        }
        "vmdk"
    } else if at(0, b"COWD") {
        "vmdk"
    } else if at(0, b"# Disk DescriptorFile") {
        // A text descriptor is nothing but references to other files.
        bail!(
            "{} is a vmdk descriptor, whose data is in other files (extents): import a \
             monolithic vmdk (qemu-img convert -O vmdk -o subformat=monolithicSparse ...) or \
             convert it to qcow2 first",
            path.display()
        )
    } else if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        "vdi"
    } else if at(0, b"vhdxfile") {
        "vhdx"
    } else if at(0, b"conectix") {
        "vpc"
    } else if at(0, b"LUKS\xba\xbe") {
        "luks"
    } else {
        "raw"
    })
}

/// Refuses an image that names another file: a backing file (any format), a qcow2 data
/// file, a vmdk extent other than itself. Converting it would read that file as root.
pub fn refuse_other_files(source: &Path, src: &ImgInfo) -> Result<()> {
    let shown = source.display();
    if let Some(b) = &src.backing_filename {
        bail!(
            "{shown} has a backing file ({b}) and does not stand alone without it; import a \
             standalone image (qemu-img convert flattens it)"
        );
    }
    refuse_data_files(source, src)
}

/// Refuses an image that keeps its data in another file (a qcow2 data file, a vmdk
/// extent other than itself); a backing file is the caller's to judge.
pub fn refuse_data_files(source: &Path, src: &ImgInfo) -> Result<()> {
    let shown = source.display();
    let data = src.format_specific.as_ref().and_then(|f| f.get("data"));
    if let Some(file) = data
        .and_then(|d| d.get("data-file"))
        .and_then(|f| f.as_str())
    {
        bail!(
            "{shown} keeps its data in another file ({file}, a qcow2 data file); import a \
             standalone image (qemu-img convert -O qcow2 without data_file)"
        );
    }
    if let Some(extents) = data
        .and_then(|d| d.get("extents"))
        .and_then(|e| e.as_array())
    {
        for e in extents {
            let file = e.get("filename").and_then(|f| f.as_str()).unwrap_or("");
            if Path::new(file) != source {
                bail!(
                    "{shown} has an extent in another file ({file}); import a monolithic \
                     image (qemu-img convert -O qcow2 flattens it)"
                );
            }
        }
    }
    Ok(())
}

/// Copies a guest's disk of the known `format` (a Xen guest's, whose config says it:
/// never probed, see the module's doc) from a regular file or a block device into a new
/// file of `out_format` at `dest`, through a temporary name: a failure leaves nothing.
/// `chain`: the source may have backing files (a backup's, checked by the caller), read
/// through.
pub fn copy_guest_disk(
    source: &Path,
    format: &str,
    dest: &Path,
    out_format: &str,
    chain: bool,
    progress: &mut dyn FnMut(f64),
) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    check_format_name(format)?;
    refuse_existing(dest)?;
    let meta =
        std::fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
    if !meta.is_file() && !meta.file_type().is_block_device() {
        bail!("{} is neither a file nor a block device", source.display());
    }
    if !IMPORT_FORMATS.contains(&format) {
        bail!(
            "{}: {format} disks cannot be imported; convert it to raw or qcow2 first",
            source.display()
        );
    }
    if format != "raw" && !chain {
        refuse_other_files(source, &info(source, format)?)?;
    }
    let tmp = dest.with_extension("importing");
    let _ = std::fs::remove_file(&tmp);
    let res = convert_to(format, source, &tmp, out_format, progress)
        .with_context(|| format!("converting {}", source.display()))
        .and_then(|_| Ok(std::fs::rename(&tmp, dest)?));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// `qemu-img convert -p` to qcow2, reading its progress (`(12.34/100%)`, `\r`-separated).
fn convert_with_progress(
    format: &str,
    source: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(f64),
) -> Result<()> {
    convert_to(format, source, dest, "qcow2", progress)
}

fn convert_to(
    format: &str,
    source: &Path,
    dest: &Path,
    out_format: &str,
    progress: &mut dyn FnMut(f64),
) -> Result<()> {
    use std::process::Stdio;
    check_format_name(out_format)?;
    let mut child = Command::new("qemu-img")
        .args(["convert", "-p", "-f", format, "-O", out_format])
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
        assert_eq!(info(&img, "qcow2").unwrap().format, "qcow2");
        assert!(import(&raw, &img)
            .unwrap_err()
            .to_string()
            .contains("refusing to overwrite"));
        let sum = sha256_file(&img).unwrap();
        let ov = dir.join("ov.qcow2");
        create_overlay(&ov, &img, "qcow2", 64).unwrap();
        let i = info(&ov, "qcow2").unwrap();
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

    fn qemu_img(args: &[&str], path: &Path) {
        run(Command::new("qemu-img").args(args).arg(path), "test").unwrap();
    }

    fn mkfifo(path: &Path) {
        assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
    }

    /// Runs `f` on a thread: a qemu-img that opened a FIFO would block, so a timeout is
    /// the proof that it did.
    fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("qemu-img blocked: it opened the FIFO the guest's header names")
    }

    /// A raw disk whose guest wrote a qcow2 header naming a file on the host: a backing
    /// file, or a data file. The named files are FIFOs, which block whoever opens them.
    #[test]
    fn guest_written_headers_open_no_host_file() {
        let dir = std::env::temp_dir().join(format!("hostel-header-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let backing_fifo = dir.join("backing.fifo");
        let data_fifo = dir.join("data.fifo");
        // The headers, made with real files first, which then become FIFOs.
        let backing_header = dir.join("backing-header.qcow2");
        std::fs::write(&backing_fifo, vec![0u8; 1 << 20]).unwrap();
        qemu_img(
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                backing_fifo.to_str().unwrap(),
            ],
            &backing_header,
        );
        let data_header = dir.join("data-header.qcow2");
        let opt = format!("data_file={},data_file_raw=on", data_fifo.display());
        run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-o", &opt])
                .arg(&data_header)
                .arg("1M"),
            "test",
        )
        .unwrap();
        std::fs::remove_file(&backing_fifo).unwrap();
        std::fs::remove_file(&data_fifo).unwrap();
        mkfifo(&backing_fifo);
        mkfifo(&data_fifo);

        for header in [&backing_header, &data_header] {
            // The guest's raw disk: 1 MiB starting with that header.
            let disk = header.with_extension("raw");
            let mut bytes = std::fs::read(header).unwrap();
            bytes.resize(1 << 20, 0);
            std::fs::write(&disk, &bytes).unwrap();

            // Offline resize, as the agent does it, with the format from the record.
            let d = disk.clone();
            within_seconds(move || resize(&d, "raw", 2)).unwrap();
            assert_eq!(std::fs::metadata(&disk).unwrap().len(), 2 << 20);
            assert_eq!(
                &std::fs::read(&disk).unwrap()[..4],
                b"QFI\xfb",
                "the guest's data is untouched"
            );
            let d = disk.clone();
            let i = within_seconds(move || info(&d, "raw")).unwrap();
            assert_eq!((i.format.as_str(), i.virtual_size), ("raw", 2 << 20));

            // Import of the same file (or of the header as a qcow2) is refused.
            for source in [disk.clone(), header.clone()] {
                let dest = dir.join("imported.qcow2");
                let e = within_seconds(move || import(&source, &dest))
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("backing file") || e.contains("data file"), "{e}");
                assert!(!dir.join("imported.qcow2").exists());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn import_takes_a_monolithic_vmdk_and_refuses_extents() {
        let dir = std::env::temp_dir().join(format!("hostel-vmdk-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mono = dir.join("mono.vmdk");
        run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "vmdk"])
                .arg(&mono)
                .arg("1M"),
            "test",
        )
        .unwrap();
        assert_eq!(import(&mono, &dir.join("mono.qcow2")).unwrap(), "vmdk");
        // The other formats import takes are recognised by their magic too.
        for format in ["vdi", "vhdx", "qcow2"] {
            let src = dir.join(format!("src.{format}"));
            run(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", format])
                    .arg(&src)
                    .arg("1M"),
                "test",
            )
            .unwrap();
            let dest = dir.join(format!("from-{format}.qcow2"));
            assert_eq!(import(&src, &dest).unwrap(), format);
        }
        let split = dir.join("split.vmdk");
        run(
            Command::new("qemu-img")
                .args([
                    "create",
                    "-q",
                    "-f",
                    "vmdk",
                    "-o",
                    "subformat=twoGbMaxExtentSparse",
                ])
                .arg(&split)
                .arg("1M"),
            "test",
        )
        .unwrap();
        let e = import(&split, &dir.join("split.qcow2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("extents"), "{e}");
        // A descriptor written by hand, naming a host file as its extent.
        let evil = dir.join("evil.vmdk");
        std::fs::write(
            &evil,
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/passwd\" 0\n",
        )
        .unwrap();
        let e = import(&evil, &dir.join("evil.qcow2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("extents"), "{e}");
        assert!(!dir.join("evil.qcow2").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
