//! The `tiny` guest image: Debian's cloud kernel plus a busybox initramfs.
//!
//! Long because most of it is the guest's own init script and its tests, kept beside
//! the builder so that the contract below and the guest that keeps it change together.
//!
//! Hostel boots this guest in its own tests (and offers it to users as a
//! smoke-test VM), so nothing has to be downloaded: everything comes from
//! packages on the host (`linux-image-cloud-amd64`, `busybox-static`,
//! `qemu-guest-agent`).
//!
//! What the guest does is a contract the rest of Hostel relies on:
//! - serial console on ttyS0; once modules are loaded it prints a line with
//!   [`READY_MARKER`] (`HOSTEL-READY host=NAME`, NAME from the kernel
//!   parameter `hostel.name=`, else `tiny`), then runs a root shell whose
//!   prompt is [`PROMPT`], respawned when it exits;
//! - the ACPI power button powers off, `reboot`/`poweroff` work;
//! - virtio-balloon, vCPU hotplug (new CPUs come online by themselves),
//!   pvpanic (panics are reported, never auto-rebooted), virtio disks and NICs
//!   (DHCP in the background on every `eth*`), tmpfs on /tmp;
//! - the QEMU guest agent (`qemu-ga`, from the host's `qemu-guest-agent` with the
//!   libraries it loads) on the `org.qemu.guest_agent.0` port when the VM has one, its
//!   pid in /run/qemu-ga.pid once it runs.
//!
//! The shell scripts that implement this live in `assets/tiny/`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// Where and from what to build the image.
#[derive(Debug, Clone)]
pub struct TinyBuildOptions {
    /// Created if missing; receives `vmlinuz` and `initrd.img`.
    pub out_dir: PathBuf,
    /// Default: the newest `/boot/vmlinuz-*-cloud-amd64` that has modules.
    pub kernel: Option<PathBuf>,
    /// Default: `/bin/busybox` (Debian's `busybox-static`).
    pub busybox: Option<PathBuf>,
}

/// A built image, ready for `qemu -kernel K -initrd I -append CMDLINE`.
#[derive(Debug, Clone)]
pub struct TinyImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line; Hostel appends `hostel.name=NAME`.
    pub cmdline: String,
    /// `uname -r` of the guest kernel.
    pub kernel_version: String,
}

/// Printed on the serial console when the guest is ready.
pub const READY_MARKER: &str = "HOSTEL-READY";
/// Prompt of the root shell on the serial console.
pub const PROMPT: &str = "tiny# ";

/// `loglevel=4` keeps the console quiet (and boot fast: every printk costs
/// under TCG) while still showing warnings. `panic=0` waits forever after a
/// panic, so that Hostel (which sees `GUEST_PANICKED` via pvpanic) decides what
/// happens next. `cryptomgr.notests` skips the crypto self-tests, ~0.5 s of
/// a ~4 s boot under TCG, for a guest that never relies on kernel crypto.
const CMDLINE: &str = "console=ttyS0 loglevel=4 panic=0 cryptomgr.notests";

const BOOT_DIR: &str = "/boot";
const MODULES_ROOT: &str = "/lib/modules";
const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// Only Debian's cloud flavour is known to boot fast and carry the virtio
/// drivers as small modules.
const CLOUD_KERNEL_SUFFIX: &str = "-cloud-amd64";

/// Modules the guest cannot do its job without (`virtio_net` pulls in
/// `net_failover` and `failover` through modules.dep).
const REQUIRED_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon"];
/// Modules loaded when the kernel has them. `button` (ACPI power button) and
/// `evdev` (its /dev/input/event node, which acpid reads) make
/// `system_powerdown` work; the `pvpanic_*` flavours cover ISA, MMIO and PCI.
const OPTIONAL_MODULES: &[&str] = &[
    "virtio_console",
    "virtio_rng",
    "pvpanic",
    "pvpanic_mmio",
    "pvpanic_pci",
    "button",
    "evdev",
    "virtio_input",
];

/// Files of the guest's root file system, taken from `assets/tiny/`.
const ASSETS: &[(&str, u32, &str)] = &[
    ("etc/inittab", 0o644, include_str!("../assets/tiny/inittab")),
    ("etc/init.d/rcS", 0o755, include_str!("../assets/tiny/rcS")),
    ("etc/init.d/rcK", 0o755, include_str!("../assets/tiny/rcK")),
    ("etc/profile", 0o644, include_str!("../assets/tiny/profile")),
    (
        "etc/acpid.conf",
        0o644,
        include_str!("../assets/tiny/acpid.conf"),
    ),
    (
        "etc/acpi/power-button",
        0o755,
        include_str!("../assets/tiny/power-button"),
    ),
    (
        "etc/udhcpc.script",
        0o755,
        include_str!("../assets/tiny/udhcpc.script"),
    ),
    (
        "sbin/tiny-hotplug",
        0o755,
        include_str!("../assets/tiny/tiny-hotplug"),
    ),
    (
        "sbin/tiny-dhcp",
        0o755,
        include_str!("../assets/tiny/tiny-dhcp"),
    ),
    ("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"),
    ("etc/group", 0o644, "root:x:0:\n"),
    ("etc/hosts", 0o644, "127.0.0.1\tlocalhost\n"),
];

/// Builds the tiny image into `opts.out_dir`. Everything is made in a
/// temporary directory inside `out_dir` and renamed into place at the end,
/// so a failed build leaves no half-made files behind.
///
/// # Errors
///
/// When the kernel, its modules (including any of the required virtio
/// drivers), busybox or gzip are missing or unusable, or `out_dir` cannot be
/// written. Each message says what to install or fix.
pub fn build_tiny(opts: &TinyBuildOptions, progress: &mut dyn FnMut(&str)) -> Result<TinyImage> {
    let kernel_path = match &opts.kernel {
        Some(path) => path.clone(),
        None => find_cloud_kernel(Path::new(BOOT_DIR), Path::new(MODULES_ROOT))?,
    };
    let kernel = fs::read(&kernel_path).map_err(|err| {
        let hint = if err.kind() == std::io::ErrorKind::PermissionDenied {
            " (kernels in /boot may be mode 0600: build as root or pass a readable copy)"
        } else {
            ""
        };
        anyhow!("cannot read kernel {}: {err}{hint}", kernel_path.display())
    })?;
    let kernel_version = match bzimage_version(&kernel) {
        Some(version) => version,
        None => version_from_file_name(&kernel_path).ok_or_else(|| {
            anyhow!(
                "{} is not a bzImage kernel and its name is not vmlinuz-VERSION",
                kernel_path.display()
            )
        })?,
    };
    progress(&format!(
        "kernel {} ({kernel_version})",
        kernel_path.display()
    ));

    let modules_dir = Path::new(MODULES_ROOT).join(&kernel_version);
    let load_order = ModuleIndex::load(&modules_dir)?.plan(REQUIRED_MODULES, OPTIONAL_MODULES)?;
    let names: Vec<String> = load_order.iter().map(|path| module_name(path)).collect();
    progress(&format!(
        "{} modules to load: {}",
        names.len(),
        names.join(" ")
    ));

    let busybox = opts
        .busybox
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BUSYBOX));
    progress("packing the initramfs");
    let mut root = Initramfs::default();
    add_base_system(&mut root, &busybox)?;
    add_modules(&mut root, &modules_dir, &kernel_version, &load_order)?;
    match add_guest_agent(&mut root)? {
        Some(files) => progress(&format!("QEMU guest agent with {files} libraries")),
        None => progress("no QEMU guest agent on this host (apt-get install qemu-guest-agent)"),
    }
    let archive = root.to_newc()?;

    let staging = Staging::create(&opts.out_dir)?;
    write_file(&staging.path("vmlinuz"), &kernel)?;
    gzip_to(&archive, &staging.path("initrd.img"))?;
    staging.commit(&["initrd.img", "vmlinuz"])?;
    progress(&format!("tiny image ready in {}", opts.out_dir.display()));

    Ok(TinyImage {
        kernel: opts.out_dir.join("vmlinuz"),
        initrd: opts.out_dir.join("initrd.img"),
        cmdline: CMDLINE.to_string(),
        kernel_version,
    })
}

/// Busybox with its applet links, the init scripts and the few files every
/// Unix program expects.
fn add_base_system(root: &mut Initramfs, busybox_path: &Path) -> Result<()> {
    let busybox = fs::read(busybox_path).with_context(|| {
        format!(
            "cannot read busybox {}: apt-get install busybox-static",
            busybox_path.display()
        )
    })?;
    if let Err(why) = check_static_x86_64(&busybox) {
        bail!(
            "{} cannot be the guest's busybox ({why}): apt-get install busybox-static",
            busybox_path.display()
        );
    }
    let applets = busybox_applets(busybox_path)?;

    for dir in [
        "dev", "proc", "sys", "tmp", "run", "root", "mnt", "var/log", "etc/tiny",
    ] {
        root.dir(dir);
    }
    // The kernel opens /dev/console for init before anything is mounted.
    root.char_device("dev/console", 0o600, 5, 1);
    root.file("bin/busybox", 0o755, busybox);
    for applet in &applets {
        root.symlink(applet, "/bin/busybox");
    }
    // The kernel runs /init from an initramfs; busybox picks its applet from
    // argv[0], so this is busybox init, which reads /etc/inittab.
    root.symlink("init", "/bin/busybox");
    for (path, mode, text) in ASSETS {
        root.file(path, *mode, text.as_bytes().to_vec());
    }
    Ok(())
}

/// The modules, uncompressed, at their usual paths, and /etc/tiny/modules:
/// the list rcS loads, in order.
fn add_modules(
    root: &mut Initramfs,
    modules_dir: &Path,
    kernel_version: &str,
    load_order: &[String],
) -> Result<()> {
    let mut load_list = String::new();
    for rel in load_order {
        let (data, rel_ko) = read_module(&modules_dir.join(rel), rel)?;
        let guest_path = format!("lib/modules/{kernel_version}/{rel_ko}");
        load_list.push('/');
        load_list.push_str(&guest_path);
        load_list.push('\n');
        root.file(&guest_path, 0o644, data);
    }
    root.file("etc/tiny/modules", 0o644, load_list.into_bytes());
    Ok(())
}

/// The newest `vmlinuz-*-cloud-amd64` in `boot` whose modules are installed.
fn find_cloud_kernel(boot: &Path, modules_root: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(boot).with_context(|| format!("cannot list {}", boot.display()))?;
    let mut versions = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(version) = name
            .to_str()
            .and_then(|name| name.strip_prefix("vmlinuz-"))
            .filter(|version| version.ends_with(CLOUD_KERNEL_SUFFIX))
        {
            versions.push(version.to_string());
        }
    }
    if versions.is_empty() {
        bail!(
            "no Debian cloud kernel in {} (vmlinuz-*{CLOUD_KERNEL_SUFFIX}): apt-get install linux-image-cloud-amd64",
            boot.display()
        );
    }
    versions.sort_by(|a, b| compare_versions(b, a));
    versions
        .iter()
        .find(|version| modules_root.join(version).join("modules.dep").is_file())
        .map(|version| boot.join(format!("vmlinuz-{version}")))
        .ok_or_else(|| {
            anyhow!(
                "cloud kernels {} in {} have no modules under {}: reinstall linux-image-{}",
                versions.join(", "),
                boot.display(),
                modules_root.display(),
                versions[0]
            )
        })
}

/// Orders kernel versions the way humans do: digit runs compare as numbers
/// (`6.1.0-10` is newer than `6.1.0-9`).
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (a, b) = (chunks(a), chunks(b));
    for ((a_num, a), (b_num, b)) in a.iter().zip(&b) {
        let order = if *a_num && *b_num {
            let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
            a.len().cmp(&b.len()).then_with(|| a.cmp(b))
        } else {
            a.cmp(b)
        };
        if order.is_ne() {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// The release string a bzImage carries in its setup header (what `uname -r`
/// will say), so a kernel passed by path finds its modules whatever its name.
fn bzimage_version(image: &[u8]) -> Option<String> {
    // x86 boot protocol: "HdrS" at 0x202, and at 0x20e the offset (minus
    // 0x200) of a NUL-terminated "VERSION (builder) #1 SMP ..." string.
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let offset = usize::from(u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]));
    let text = image.get(offset + 0x200..)?;
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    let version = std::str::from_utf8(text).ok()?.split_whitespace().next()?;
    Some(version.to_string())
}

fn version_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    Some(name.strip_prefix("vmlinuz-")?.to_string())
}

/// The kernel's module table: modules.dep (paths and dependencies) and
/// modules.builtin (drivers compiled in, nothing to load).
#[derive(Debug, Default)]
struct ModuleIndex {
    /// module name -> path relative to the modules directory
    paths: HashMap<String, String>,
    /// path -> dependency paths
    deps: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    fn load(modules_dir: &Path) -> Result<ModuleIndex> {
        let dep_file = modules_dir.join("modules.dep");
        let dep = fs::read_to_string(&dep_file).with_context(|| {
            format!(
                "cannot read {}: the kernel's modules are not installed (reinstall its linux-image package)",
                dep_file.display()
            )
        })?;
        // modules.builtin is optional: an old or custom kernel may lack it.
        let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
        ModuleIndex::parse(&dep, &builtin)
            .with_context(|| format!("cannot parse {}", dep_file.display()))
    }

    fn parse(modules_dep: &str, modules_builtin: &str) -> Result<ModuleIndex> {
        let mut index = ModuleIndex::default();
        for (number, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (path, deps) = line
                .split_once(':')
                .ok_or_else(|| anyhow!("line {}: no ':' in {line:?}", number + 1))?;
            let path = path.trim().to_string();
            index.paths.insert(module_name(&path), path.clone());
            index
                .deps
                .insert(path, deps.split_whitespace().map(str::to_string).collect());
        }
        index.builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(module_name)
            .collect();
        Ok(index)
    }

    /// Resolves `required` (error if absent) and `optional` (skipped if
    /// absent) modules and all their dependencies into a load order: paths
    /// relative to the modules directory, dependencies first.
    fn plan(&self, required: &[&str], optional: &[&str]) -> Result<Vec<String>> {
        let mut load_order = Vec::new();
        let mut seen = HashSet::new();
        for (name, is_required) in required
            .iter()
            .map(|name| (*name, true))
            .chain(optional.iter().map(|name| (*name, false)))
        {
            let name = normalize_module_name(name);
            if let Some(path) = self.paths.get(&name) {
                self.visit(path, &mut seen, &mut load_order)?;
            } else if !self.builtin.contains(&name) && is_required {
                bail!("the kernel has no module {name} (neither in modules.dep nor built in)");
            }
        }
        Ok(load_order)
    }

    /// Depth-first, dependencies before dependents. modules.dep already lists
    /// the transitive closure, but its order is not something to rely on.
    fn visit(&self, path: &str, seen: &mut HashSet<String>, out: &mut Vec<String>) -> Result<()> {
        if !seen.insert(path.to_string()) {
            return Ok(());
        }
        let deps = self.deps.get(path).ok_or_else(|| {
            anyhow!("modules.dep names {path} as a dependency but has no entry for it")
        })?;
        for dep in deps {
            self.visit(dep, seen, out)?;
        }
        out.push(path.to_string());
        Ok(())
    }
}

/// `kernel/drivers/char/hw_random/virtio-rng.ko.xz` -> `virtio_rng`: the
/// kernel treats `-` and `_` in module names as the same character.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(stem, _)| stem);
    normalize_module_name(stem)
}

fn normalize_module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Reads a module, decompressing it. busybox 1.35's insmod calls
/// `finit_module()` without the flag that lets the kernel decompress, then
/// falls back to its own decompressors, which know no zstd (Debian's newer
/// kernels ship `.ko.xz` or `.ko.zst`). Uncompressed modules always load and
/// cost nothing: the whole initramfs is gzip'd anyway. Returns the data and
/// the `.ko` path.
fn read_module(file: &Path, rel: &str) -> Result<(Vec<u8>, String)> {
    let (stem, tool) = if let Some(stem) = rel.strip_suffix(".ko") {
        (stem, None)
    } else if let Some(stem) = rel.strip_suffix(".ko.xz") {
        (stem, Some(("xz", "xz-utils")))
    } else if let Some(stem) = rel.strip_suffix(".ko.zst") {
        (stem, Some(("zstd", "zstd")))
    } else if let Some(stem) = rel.strip_suffix(".ko.gz") {
        (stem, Some(("gzip", "gzip")))
    } else {
        bail!("unknown module file type: {}", file.display());
    };
    let data = match tool {
        None => fs::read(file).with_context(|| format!("cannot read module {}", file.display()))?,
        Some((tool, package)) => {
            let output = Command::new(tool)
                .arg("-dc")
                .arg(file)
                .stderr(Stdio::piped())
                .output()
                .with_context(|| {
                    format!(
                        "cannot run {tool} to decompress {}: apt-get install {package}",
                        file.display()
                    )
                })?;
            if !output.status.success() {
                bail!(
                    "{tool} -dc {} failed: {}",
                    file.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            output.stdout
        }
    };
    Ok((data, format!("{stem}.ko")))
}

/// The guest runs busybox as its only program, before any library exists,
/// so it must be a static x86-64 executable (Debian's `busybox` package is
/// dynamic; `busybox-static` is what works).
fn check_static_x86_64(elf: &[u8]) -> Result<()> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        bail!("not an ELF executable");
    }
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // ELFCLASS64, little endian, x86-64.
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) || u16_at(0x12) != Some(EM_X86_64) {
        bail!("not an x86-64 executable");
    }
    let truncated = || anyhow!("truncated ELF header");
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(truncated)?)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(truncated)?);
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).ok_or_else(truncated)?;
        if p_type == PT_INTERP {
            bail!("it is dynamically linked");
        }
    }
    Ok(())
}

/// Applet links as busybox itself lists them (`bin/sh`, `usr/bin/awk`, ...),
/// so the guest has exactly the applets this build has.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("cannot run {} --list-full", busybox.display()))?;
    if !output.status.success() {
        bail!("{} --list-full failed", busybox.display());
    }
    let list = String::from_utf8(output.stdout).context("busybox --list-full is not UTF-8")?;
    let applets: Vec<String> = list
        .lines()
        .map(str::trim)
        // `linuxrc` sits at the root and /init is ours; never let a listed
        // name escape the image or replace busybox itself.
        .filter(|path| path.contains('/') && !path.starts_with('/') && !path.contains(".."))
        .filter(|path| *path != "bin/busybox")
        .map(str::to_string)
        .collect();
    for needed in [
        "bin/sh",
        "sbin/init",
        "sbin/insmod",
        "sbin/acpid",
        "sbin/udhcpc",
        "sbin/uevent",
    ] {
        if !applets.iter().any(|applet| applet == needed) {
            bail!(
                "{} has no {needed} applet: use Debian's busybox-static",
                busybox.display()
            );
        }
    }
    Ok(applets)
}

/// Where Debian's qemu-guest-agent puts its program.
const GUEST_AGENT: &str = "/usr/sbin/qemu-ga";

/// The host's QEMU guest agent and the shared libraries it loads (as `ldd` names them,
/// at the same paths), when the host has it; how many libraries.
fn add_guest_agent(root: &mut Initramfs) -> Result<Option<usize>> {
    let ga = Path::new(GUEST_AGENT);
    if !ga.exists() {
        return Ok(None);
    }
    let out = Command::new("ldd")
        .arg(ga)
        .output()
        .context("running ldd on the guest agent")?;
    if !out.status.success() {
        bail!(
            "ldd {GUEST_AGENT}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let libs = ldd_paths(&String::from_utf8_lossy(&out.stdout));
    for lib in &libs {
        let data = fs::read(lib).with_context(|| format!("reading {lib}"))?;
        root.file(lib.trim_start_matches('/'), 0o755, data);
    }
    let data = fs::read(ga).with_context(|| format!("reading {GUEST_AGENT}"))?;
    root.file(GUEST_AGENT.trim_start_matches('/'), 0o755, data);
    Ok(Some(libs.len()))
}

/// The files `ldd` says a program loads: `NAME => PATH (ADDR)` and the loader's
/// `PATH (ADDR)`; the vDSO has no file.
fn ldd_paths(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// An initramfs being assembled in memory. Paths have no leading `/`.
#[derive(Default)]
struct Initramfs {
    // Sorted, so every directory comes before what it contains.
    nodes: BTreeMap<String, Node>,
}

enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
    CharDevice { mode: u32, major: u32, minor: u32 },
}

impl Initramfs {
    fn dir(&mut self, path: &str) {
        self.insert(path, Node::Dir);
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, Node::File { mode, data });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Node::Symlink(target.to_string()));
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, Node::CharDevice { mode, major, minor });
    }

    fn insert(&mut self, path: &str, node: Node) {
        let mut parent = path;
        while let Some((dir, _)) = parent.rsplit_once('/') {
            self.nodes.entry(dir.to_string()).or_insert(Node::Dir);
            parent = dir;
        }
        self.nodes.insert(path.to_string(), node);
    }

    /// The "newc" cpio format the kernel unpacks, owned by root, with zero
    /// timestamps so the same inputs give the same bytes.
    fn to_newc(&self) -> Result<Vec<u8>> {
        const S_IFDIR: u32 = 0o040000;
        const S_IFREG: u32 = 0o100000;
        const S_IFLNK: u32 = 0o120000;
        const S_IFCHR: u32 = 0o020000;
        let mut out = Vec::new();
        for (ino, (path, node)) in (1..).zip(&self.nodes) {
            let (mode, data, rdev) = match node {
                Node::Dir => (S_IFDIR | 0o755, &[][..], (0, 0)),
                Node::File { mode, data } => (S_IFREG | mode, data.as_slice(), (0, 0)),
                Node::Symlink(target) => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Node::CharDevice { mode, major, minor } => {
                    (S_IFCHR | mode, &[][..], (*major, *minor))
                }
            };
            // Every directory is 0755: the ones that need other modes
            // (/tmp) are tmpfs mounts made at boot.
            let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
            write_newc_entry(&mut out, ino, mode, nlink, rdev, path, data)?;
        }
        write_newc_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        Ok(out)
    }
}

fn write_newc_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
    data: &[u8],
) -> Result<()> {
    let too_big = |_| anyhow!("{name} does not fit in a newc cpio archive (4 GiB limit)");
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).map_err(too_big)?,
        0, // devmajor
        0, // devminor
        rdev_major,
        rdev_minor,
        u32::try_from(name.len() + 1).map_err(too_big)?,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn gzip_to(data: &[u8], dest: &Path) -> Result<()> {
    let file =
        fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    // -n: no name or timestamp in the header, so builds are reproducible.
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(file.try_clone()?)
        .spawn()
        .context("cannot run gzip: apt-get install gzip")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(data);
    drop(stdin);
    let status = child.wait().context("gzip did not finish")?;
    written.context("cannot feed gzip")?;
    if !status.success() {
        bail!("gzip failed with {status}");
    }
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.sync_all()?;
    Ok(())
}

/// Writes a world-readable copy: QEMU may run as an unprivileged user, while
/// kernels in /boot may be mode 0600.
fn write_file(dest: &Path, data: &[u8]) -> Result<()> {
    let mut file =
        fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    file.write_all(data)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.sync_all()?;
    Ok(())
}

/// A temporary directory inside the output directory (same file system, so
/// renames are atomic), removed unless the build commits.
struct Staging {
    out_dir: PathBuf,
    dir: PathBuf,
}

impl Staging {
    fn create(out_dir: &Path) -> Result<Staging> {
        fs::create_dir_all(out_dir)
            .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = out_dir.join(format!(".tiny-build-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Staging {
            out_dir: out_dir.to_path_buf(),
            dir,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Moves the named files into the output directory. Kernel and initramfs
    /// only work as a pair (modules match one kernel), so if a later rename
    /// fails the earlier ones are undone rather than leaving a mixed pair.
    fn commit(self, names: &[&str]) -> Result<()> {
        let mut done: Vec<PathBuf> = Vec::new();
        for name in names {
            let dest = self.out_dir.join(name);
            if let Err(err) = fs::rename(self.path(name), &dest) {
                for path in &done {
                    let _ = fs::remove_file(path);
                }
                return Err(err)
                    .with_context(|| format!("cannot move {} into place", dest.display()));
            }
            done.push(dest);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_files_to_copy() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibglib-2.0.so.0 => /lib/x86_64-linux-gnu/libglib-2.0.so.0 (0x00007f1)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f2)\n";
        assert_eq!(
            ldd_paths(out),
            [
                "/lib/x86_64-linux-gnu/libglib-2.0.so.0",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
    use std::io::Read;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko.zst:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko.zst
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko.zst kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";
    const BUILTIN: &str =
        "kernel/drivers/virtio/virtio_balloon.ko\nkernel/drivers/misc/pvpanic/pvpanic.ko\n";

    fn position(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|path| module_name(path) == name)
            .unwrap_or_else(|| panic!("{name} not in {order:?}"))
    }

    #[test]
    fn module_names_ignore_compression_and_dashes() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
        assert_eq!(module_name("kernel/net/core/failover.ko.zst"), "failover");
        assert_eq!(
            module_name("kernel/drivers/block/virtio_blk.ko.xz"),
            "virtio_blk"
        );
        assert_eq!(module_name("pvpanic-mmio.ko.gz"), "pvpanic_mmio");
    }

    #[test]
    fn plan_puts_dependencies_first_and_loads_each_once() {
        let index = ModuleIndex::parse(DEP, BUILTIN).unwrap();
        let plan = index
            .plan(
                &["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon"],
                &["virtio-rng"],
            )
            .unwrap();
        let order = &plan;
        let unique: HashSet<_> = order.iter().collect();
        assert_eq!(unique.len(), order.len(), "duplicates in {order:?}");
        assert_eq!(order.len(), 10, "{order:?}");
        assert!(position(order, "virtio") < position(order, "virtio_pci"));
        assert!(position(order, "virtio_ring") < position(order, "virtio_blk"));
        assert!(position(order, "failover") < position(order, "net_failover"));
        assert!(position(order, "net_failover") < position(order, "virtio_net"));
        // Built in: nothing to load, and not an error either.
        assert!(!order.iter().any(|path| path.contains("virtio_balloon")));
        assert!(order.contains(&"kernel/drivers/char/hw_random/virtio-rng.ko".to_string()));
    }

    #[test]
    fn plan_skips_missing_optional_but_fails_on_missing_required() {
        let index = ModuleIndex::parse(DEP, BUILTIN).unwrap();
        let plan = index
            .plan(&["virtio_blk"], &["pvpanic_pci", "evdev"])
            .unwrap();
        assert_eq!(plan.len(), 3, "{plan:?}");
        let err = index.plan(&["virtio_scsi"], &[]).unwrap_err().to_string();
        assert!(err.contains("virtio_scsi"), "{err}");
    }

    #[test]
    fn plan_rejects_dangling_dependency() {
        let index = ModuleIndex::parse("a.ko: b.ko\n", "").unwrap();
        let err = index.plan(&["a"], &[]).unwrap_err().to_string();
        assert!(err.contains("b.ko"), "{err}");
    }

    #[test]
    fn modules_dep_without_colon_is_an_error() {
        assert!(ModuleIndex::parse("kernel/a.ko\n", "").is_err());
    }

    #[test]
    fn modules_are_decompressed_on_the_host() {
        let dir = scratch_dir("modules");
        let original = b"\x7fELF fake module body".repeat(100);
        let plain = dir.join("m.ko");
        fs::write(&plain, &original).unwrap();
        assert_eq!(
            read_module(&plain, "kernel/m.ko").unwrap(),
            (original.clone(), "kernel/m.ko".to_string())
        );
        // gzip is required to build at all; xz and zstd only on kernels
        // whose modules use them.
        for (tool, ext) in [("gzip", "gz"), ("xz", "xz"), ("zstd", "zst")] {
            let compressed = dir.join(format!("m.ko.{ext}"));
            let Ok(status) = Command::new(tool)
                .args(["-c", "-q"])
                .arg(&plain)
                .stdout(fs::File::create(&compressed).unwrap())
                .status()
            else {
                eprintln!("{tool} is not installed: .ko.{ext} not tested");
                continue;
            };
            assert!(status.success(), "{tool} failed");
            let (data, rel) = read_module(&compressed, &format!("kernel/m.ko.{ext}")).unwrap();
            assert_eq!(rel, "kernel/m.ko");
            assert!(data == original, "{tool} round trip differs");
        }
        assert!(read_module(&plain, "kernel/m.o").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(
            compare_versions("6.1.0-10-cloud-amd64", "6.1.0-9-cloud-amd64"),
            Greater
        );
        assert_eq!(
            compare_versions("6.12.0-1-cloud-amd64", "6.1.0-56-cloud-amd64"),
            Greater
        );
        assert_eq!(
            compare_versions("6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64"),
            Equal
        );
        assert_eq!(
            compare_versions("5.10.0-30-cloud-amd64", "6.1.0-1-cloud-amd64"),
            Less
        );
    }

    #[test]
    fn finds_newest_cloud_kernel_with_modules() {
        let dir = scratch_dir("find-kernel");
        let (boot, modules) = (dir.join("boot"), dir.join("modules"));
        fs::create_dir_all(&boot).unwrap();
        let err = find_cloud_kernel(&boot, &modules).unwrap_err().to_string();
        assert!(
            err.contains("apt-get install linux-image-cloud-amd64"),
            "{err}"
        );
        for name in [
            "vmlinuz-6.1.0-9-cloud-amd64",
            "vmlinuz-6.1.0-10-cloud-amd64",
            "vmlinuz-6.1.0-11-cloud-amd64",
            "vmlinuz-6.1.0-12-amd64",
            "vmlinuz-6.1.0-13-cloud-amd64.dpkg-new",
        ] {
            fs::write(boot.join(name), b"").unwrap();
        }
        let err = find_cloud_kernel(&boot, &modules).unwrap_err().to_string();
        assert!(err.contains("no modules"), "{err}");
        for version in ["6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"] {
            fs::create_dir_all(modules.join(version)).unwrap();
            fs::write(modules.join(version).join("modules.dep"), b"").unwrap();
        }
        // -11 has no modules: the newest usable one is -10.
        assert_eq!(
            find_cloud_kernel(&boot, &modules).unwrap(),
            boot.join("vmlinuz-6.1.0-10-cloud-amd64")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_version_from_bzimage_header() {
        let mut image = vec![0u8; 0x600];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let text = b"6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        image[0x500..0x500 + text.len()].copy_from_slice(text);
        assert_eq!(
            bzimage_version(&image).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(bzimage_version(b"not a kernel"), None);
        assert_eq!(
            version_from_file_name(Path::new("/boot/vmlinuz-6.1.0-56-cloud-amd64")).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn rejects_dynamic_or_foreign_busybox() {
        fn elf(machine: u16, interp: bool) -> Vec<u8> {
            let mut elf = vec![0u8; 0x40 + 2 * 0x38];
            elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
            elf[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
            elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
            elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
            elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
            elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            let second = if interp { 3u32 } else { 1 };
            elf[0x78..0x7c].copy_from_slice(&second.to_le_bytes());
            elf
        }
        check_static_x86_64(&elf(62, false)).unwrap();
        let err = check_static_x86_64(&elf(62, true)).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(check_static_x86_64(&elf(183, false)).is_err());
        assert!(check_static_x86_64(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn newc_archive_layout() {
        let mut root = Initramfs::default();
        root.file("etc/init.d/rcS", 0o755, b"abc".to_vec());
        root.symlink("init", "/bin/busybox");
        root.char_device("dev/console", 0o600, 5, 1);
        let archive = root.to_newc().unwrap();
        assert_eq!(archive.len(), archive.len().next_multiple_of(4));

        // Walk the archive back: names in order, parents before children.
        let mut names = Vec::new();
        let mut at = 0;
        loop {
            let header = std::str::from_utf8(&archive[at..at + 110]).unwrap();
            assert!(header.starts_with("070701"), "{header}");
            let field =
                |i: usize| usize::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&archive[at + 110..at + 110 + namesize - 1]).unwrap();
            let data_at = (at + 110 + namesize).next_multiple_of(4);
            let data = &archive[data_at..data_at + size];
            match name {
                "etc/init.d/rcS" => {
                    assert_eq!(mode, 0o100755);
                    assert_eq!(data, b"abc");
                }
                "init" => assert_eq!((mode, data), (0o120777, b"/bin/busybox".as_slice())),
                "dev/console" => assert_eq!((mode, field(9), field(10)), (0o020600, 5, 1)),
                "TRAILER!!!" => break,
                _ => assert_eq!(mode, 0o040755, "{name}"),
            }
            assert_eq!(field(2), 0, "uid of {name}");
            names.push(name.to_string());
            at = (data_at + size).next_multiple_of(4);
        }
        assert_eq!(
            archive.len(),
            (at + 110 + "TRAILER!!!".len() + 1).next_multiple_of(4)
        );
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "etc",
                "etc/init.d",
                "etc/init.d/rcS",
                "init"
            ]
        );
    }

    #[test]
    fn cmdline_and_assets_agree_with_the_contract() {
        for param in ["console=ttyS0", "panic=0"] {
            assert!(CMDLINE.split(' ').any(|p| p == param), "{CMDLINE}");
        }
        let asset = |path: &str| ASSETS.iter().find(|(p, _, _)| *p == path).unwrap().2;
        assert!(asset("etc/init.d/rcS").contains(&format!("echo \"{READY_MARKER} host=")));
        assert!(asset("etc/profile").contains(&format!("PS1='{PROMPT}'")));
        // acpid runs ./ACTION from /etc/acpi: the action must be a bare name
        // that exists there.
        let action = asset("etc/acpid.conf")
            .lines()
            .find(|line| line.starts_with("PWRF"))
            .and_then(|line| line.split_whitespace().nth(1))
            .unwrap();
        assert!(!action.contains('/'));
        assert!(ASSETS
            .iter()
            .any(|(path, mode, _)| *path == format!("etc/acpi/{action}") && mode & 0o111 != 0));
        // Every script the init scripts call is shipped and executable.
        for (path, mode, text) in ASSETS {
            if text.starts_with("#!") {
                assert_eq!(mode & 0o755, 0o755, "{path}");
            }
        }
    }

    fn scratch_dir(what: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("hostel-tiny-{what}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Builds the real image from this host's packages and boots it under
    /// TCG. Fails (does not skip) when the kernel, busybox or QEMU are
    /// missing: the rest of Hostel's tests depend on this guest.
    #[test]
    fn builds_and_boots_under_tcg() {
        let out_dir = scratch_dir("boot");
        // Removes the 15 MB image even when an assertion fails.
        struct RemoveOnDrop(PathBuf);
        impl Drop for RemoveOnDrop {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = RemoveOnDrop(out_dir.clone());
        let mut log = Vec::new();
        let image = build_tiny(
            &TinyBuildOptions {
                out_dir: out_dir.clone(),
                kernel: None,
                busybox: None,
            },
            &mut |line| log.push(line.to_string()),
        )
        .unwrap_or_else(|err| panic!("building the tiny image failed: {err:#}"));
        assert!(!log.is_empty());
        for path in [&image.kernel, &image.initrd] {
            let mode = fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{}", path.display());
        }
        let leftovers: Vec<_> = fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with(".tiny-build"))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

        // Serial console on stdio; -no-reboot so a crash ends QEMU instead of
        // looping.
        let fixed = "-accel tcg -m 512 -smp 1,maxcpus=4 -cpu max \
                     -nodefaults -display none -serial stdio -no-reboot \
                     -device virtio-balloon-pci -device pvpanic";
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(fixed.split_whitespace())
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .arg("-append")
            .arg(format!("{} hostel.name=unit-test", image.cmdline))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86): {err}")
            });
        let pid = qemu.id();

        let mut stdout = qemu.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut serial = Vec::new();
        let mut wait_for =
            |needle: &str, timeout: Duration| -> std::result::Result<Duration, String> {
                let start = Instant::now();
                loop {
                    if String::from_utf8_lossy(&serial).contains(needle) {
                        return Ok(start.elapsed());
                    }
                    let left = timeout.checked_sub(start.elapsed()).unwrap_or_default();
                    match rx.recv_timeout(left) {
                        Ok(chunk) => serial.extend_from_slice(&chunk),
                        Err(_) => {
                            return Err(format!(
                                "no {needle:?} within {timeout:?}; serial output:\n{}",
                                String::from_utf8_lossy(&serial)
                            ))
                        }
                    }
                }
            };
        let result = wait_for(
            &format!("{READY_MARKER} host=unit-test"),
            Duration::from_secs(60),
        )
        .and_then(|boot| {
            eprintln!("tiny guest ready after {boot:?}");
            wait_for(PROMPT, Duration::from_secs(10))
        })
        .and_then(|_| {
            let stdin = qemu.stdin.as_mut().unwrap();
            stdin.write_all(b"grep MemTotal /proc/meminfo\n").unwrap();
            stdin.flush().unwrap();
            wait_for("MemTotal:", Duration::from_secs(10))
        });
        // Kill QEMU (SIGKILL to its pid) whatever happened, then report.
        qemu.kill()
            .unwrap_or_else(|err| panic!("cannot kill qemu (pid {pid}): {err}"));
        let _ = qemu.wait();
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }
}
