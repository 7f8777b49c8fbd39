//! Renders QEMU's command line from a VM's definition. It is rendered again at every
//! start, so the database record is the only configuration a VM has.

use hostel_api::agent::{Boot, VmSpec};
use hostel_model::{Accel, Policy};
use std::path::{Path, PathBuf};

/// Where a VM's runtime files live on its host: one directory per VM.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    pub dir: PathBuf,
}

/// Unix socket paths are limited to 107 bytes by the kernel.
pub const MAX_SOCKET_PATH: usize = 107;

impl RuntimePaths {
    pub fn new(run_dir: &Path, vm_id: &str) -> RuntimePaths {
        RuntimePaths {
            dir: run_dir.join(vm_id),
        }
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    /// The QEMU guest agent's port, when the VM has one.
    pub fn guest_agent(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    pub fn vnc(&self) -> PathBuf {
        self.dir.join("vnc.sock")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    /// The definition and argv the running QEMU was started with, for re-adoption.
    pub fn state(&self) -> PathBuf {
        self.dir.join("runtime.json")
    }
    /// The serial console's output, kept across daemon restarts.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The NoCloud seed ISO, written at every start from the VM's record.
    pub fn seed_iso(&self) -> PathBuf {
        self.dir.join("seed.iso")
    }
    /// The VM's UEFI variables (its NVRAM), kept for the VM's life.
    pub fn efivars(&self) -> PathBuf {
        self.dir.join("efivars.fd")
    }

    /// Fails with a clear message when a socket path would be too long for the kernel.
    pub fn check(&self) -> anyhow::Result<()> {
        let longest = self.serial();
        let len = longest.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            anyhow::bail!(
                "the runtime path {} is {len} bytes, more than the {MAX_SOCKET_PATH} a unix socket \
                 path may have: use a shorter --data-dir",
                longest.display()
            );
        }
        Ok(())
    }
}

/// Options that come from the host rather than the VM.
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub qemu_binary: String,
    pub accel: Accel,
    /// Use the strict seccomp sandbox. Only possible when QEMU is started directly as an
    /// unprivileged user (see DESIGN.md: with `-run-with user=` it dies with SIGSYS).
    pub strict_sandbox: bool,
}

/// OVMF's code (read-only) and the template of its variables (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How many devices can be hot-plugged into one QEMU run.
pub const HOTPLUG_PORTS: u32 = 4;

pub fn hotplug_port(i: u32) -> String {
    format!("hp{i}")
}

/// Tap descriptors are handed to QEMU from this number on, one per NIC in order.
pub const FIRST_NIC_FD: i32 = 4;

pub fn nic_device(nic: &hostel_api::agent::NicSpec) -> String {
    format!(
        "virtio-net-pci,netdev=net{},mac={},id=nic{}",
        nic.index, nic.mac, nic.index
    )
}

/// The kernel command line parameter that tells a Hostel guest its name.
pub const NAME_PARAM: &str = "hostel.name";

/// Where a QEMU that starts by receiving a VM's state reads it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A save file, open on this descriptor (a restore).
    Fd(i32),
    /// A migration stream, whose address QMP's `migrate-incoming` gives later.
    Defer,
}

pub fn render(
    spec: &VmSpec,
    paths: &RuntimePaths,
    host: &HostOptions,
    incoming: Option<Incoming>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&[&host.qemu_binary]);
    push(&["-name", &format!("guest={},debug-threads=on", spec.name)]);
    push(&["-no-user-config", "-nodefaults"]);
    push(&["-machine", spec.machine.as_deref().unwrap_or("q35")]);
    push(&["-accel", host.accel.as_str()]);
    push(&["-cpu", &cpu_model(host.accel, spec.cpu_model.as_deref())]);
    push(&["-m", &format!("{}M", spec.max_memory_mib)]);
    // One boot vCPU; the others are devices, so that every one of them can be unplugged
    // by `vcpu-set` and a restore recreates exactly the set that was saved.
    push(&[
        "-smp",
        &format!(
            "1,maxcpus={},sockets={},cores=1,threads=1",
            spec.max_vcpus, spec.max_vcpus
        ),
    ]);
    for socket in 1..spec.vcpus {
        push(&[
            "-device",
            &cpu_device(host.accel, spec.cpu_model.as_deref(), socket),
        ]);
    }
    let sandbox = if host.strict_sandbox {
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    } else {
        "on,obsolete=deny"
    };
    push(&["-sandbox", sandbox]);
    // Power-off always ends QEMU; the agent restarts it when the policy says so. A guest
    // reboot is a reset inside QEMU unless the policy is to destroy the VM.
    let reboot = match spec.on_reboot {
        Policy::Restart => "reset",
        Policy::Destroy => "shutdown",
    };
    push(&[
        "-action",
        &format!("reboot={reboot},shutdown=poweroff,panic=exit-failure"),
    ]);
    match &spec.boot {
        Boot::DirectKernel {
            kernel,
            initrd,
            cmdline,
        } => {
            push(&["-kernel", kernel]);
            if let Some(initrd) = initrd {
                push(&["-initrd", initrd]);
            }
            push(&["-append", &format!("{cmdline} {NAME_PARAM}={}", spec.name)]);
        }
        Boot::Bios => {}
        Boot::Uefi => {
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,readonly=on,file={}",
                    escape_opt(OVMF_CODE)
                ),
            ]);
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,file={}",
                    escape_opt(&paths.efivars().display().to_string())
                ),
            ]);
        }
    }
    // The install medium on q35's built-in AHCI, where every firmware and installer
    // finds it. The first disk boots first; a blank one falls through to the CD-ROM.
    if let Some(c) = &spec.cdrom {
        push(&[
            "-blockdev",
            &format!(
                "driver=file,filename={},node-name=cdfile0,read-only=on",
                escape_opt(&c.path)
            ),
        ]);
        push(&[
            "-blockdev",
            &format!(
                "driver={},file=cdfile0,node-name=cd0,read-only=on",
                c.format
            ),
        ]);
        push(&[
            "-device",
            "ide-cd,drive=cd0,bus=ide.0,id=cdrom0,bootindex=2",
        ]);
    }
    // Chassis numbers 1..=HOTPLUG_PORTS belong to the spare hotplug ports.
    let mut chassis = HOTPLUG_PORTS + 1;
    for d in &spec.disks {
        push(&[
            "-blockdev",
            &format!(
                "driver=file,filename={},node-name=file{},cache.direct=off,discard=unmap",
                escape_opt(&d.path),
                d.index
            ),
        ]);
        push(&[
            "-blockdev",
            &format!(
                "driver={},file=file{},node-name=disk{},discard=unmap",
                d.format, d.index, d.index
            ),
        ]);
        let boot = if d.index == 0 && !matches!(spec.boot, Boot::DirectKernel { .. }) {
            ",bootindex=1"
        } else {
            ""
        };
        // Each device on a root port of its own, so that any of them can be unplugged.
        let port = format!("rpd{}", d.index);
        push(&[
            "-device",
            &format!("pcie-root-port,id={port},chassis={chassis}"),
        ]);
        chassis += 1;
        push(&[
            "-device",
            &format!(
                "virtio-blk-pci,drive=disk{},id=virtio-disk{}{boot},bus={port}",
                d.index, d.index
            ),
        ]);
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        push(&[
            "-netdev",
            &format!(
                "tap,id=net{},fd={},vhost=off",
                nic.index,
                FIRST_NIC_FD + i as i32
            ),
        ]);
        let port = format!("rpn{}", nic.index);
        push(&[
            "-device",
            &format!("pcie-root-port,id={port},chassis={chassis}"),
        ]);
        chassis += 1;
        push(&["-device", &format!("{},bus={port}", nic_device(nic))]);
    }
    // The first-boot seed as a CD-ROM on virtio-scsi: cloud kernels (Debian's among
    // them) carry virtio-scsi and sr_mod but not always AHCI.
    if spec.seed.is_some() {
        push(&[
            "-blockdev",
            &format!(
                "driver=file,filename={},node-name=cdfile1,read-only=on",
                escape_opt(&paths.seed_iso().display().to_string())
            ),
        ]);
        push(&[
            "-blockdev",
            "driver=raw,file=cdfile1,node-name=cd1,read-only=on",
        ]);
        push(&[
            "-device",
            &format!("pcie-root-port,id=rps,chassis={chassis}"),
        ]);
        push(&["-device", "virtio-scsi-pci,id=scsi0,bus=rps"]);
        push(&["-device", "scsi-cd,drive=cd1,bus=scsi0.0,id=cdrom1"]);
    }
    // q35's root bus takes no hotplug: spare PCIe root ports give hot-plugged devices
    // (NICs, disks) a place.
    for i in 0..HOTPLUG_PORTS {
        push(&[
            "-device",
            &format!("pcie-root-port,id={},chassis={}", hotplug_port(i), i + 1),
        ]);
    }
    push(&["-device", "virtio-balloon-pci,id=balloon0"]);
    if spec.guest_agent {
        push(&["-device", "virtio-serial-pci,id=vserial0"]);
        push(&[
            "-chardev",
            &format!(
                "socket,id=qga0,path={},server=on,wait=off",
                paths.guest_agent().display()
            ),
        ]);
        push(&[
            "-device",
            "virtserialport,bus=vserial0.0,nr=1,chardev=qga0,name=org.qemu.guest_agent.0",
        ]);
    }
    push(&["-device", "pvpanic"]);
    push(&["-vga", "std"]);
    // An absolute pointer, so the pointer in a VNC viewer and the guest's agree.
    push(&["-device", "virtio-tablet-pci,id=tablet0"]);
    push(&["-vnc", &format!("unix:{}", paths.vnc().display())]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=serial0,path={},server=on,wait=off",
            paths.serial().display()
        ),
    ]);
    push(&["-serial", "chardev:serial0"]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", paths.qmp().display()),
    ]);
    push(&["-pidfile", &paths.pidfile().display().to_string()]);
    push(&["-msg", "timestamp=on"]);
    match incoming {
        Some(Incoming::Fd(fd)) => push(&["-incoming", &format!("fd:{fd}")]),
        Some(Incoming::Defer) => push(&["-incoming", "defer"]),
        None => {}
    }
    a
}

/// How many vCPU threads one QEMU run can ever start under multi-threaded TCG: each vCPU
/// takes a translation context that is never given back, and QEMU has `maxcpus` of them.
/// A vCPU plugged in once more than that aborts QEMU (`tcg_register_thread: assertion
/// failed: (n < tcg_max_ctxs)`, seen with QEMU 10.0; single-threaded TCG instead aborts on
/// unplug). KVM has no such limit.
pub fn vcpu_thread_budget(accel: Accel, max_vcpus: u32) -> Option<u32> {
    match accel {
        Accel::Kvm => None,
        Accel::Tcg => Some(max_vcpus),
    }
}

/// QEMU's `-cpu` for a VM's CPU model (none or `host`: all the accelerator offers).
pub fn cpu_model(accel: Accel, model: Option<&str>) -> String {
    match model.filter(|m| *m != hostel_model::CPU_HOST) {
        Some(m) => m.to_string(),
        None => match accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "max".into(),
        },
    }
}

/// The QOM type of a vCPU of the VM's `-cpu` model.
pub fn cpu_type(accel: Accel, model: Option<&str>) -> String {
    format!("{}-x86_64-cpu", cpu_model(accel, model))
}

/// The device id of the vCPU in `socket` (socket 0 is the boot vCPU and has none).
pub fn cpu_id(socket: u32) -> String {
    format!("vcpu{socket}")
}

pub fn cpu_device(accel: Accel, model: Option<&str>, socket: u32) -> String {
    format!(
        "{},id={},socket-id={socket},core-id=0,thread-id=0",
        cpu_type(accel, model),
        cpu_id(socket)
    )
}

/// QEMU option values use ',' as a separator; a literal comma is written twice.
fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostel_api::agent::DiskSpec;

    fn spec() -> VmSpec {
        VmSpec {
            limits: Default::default(),
            id: "vm-1".into(),
            name: "web".into(),
            memory_mib: 256,
            max_memory_mib: 512,
            vcpus: 2,
            max_vcpus: 4,
            boot: Boot::DirectKernel {
                kernel: "/img/vmlinuz".into(),
                initrd: Some("/img/initrd.img".into()),
                cmdline: "console=ttyS0".into(),
            },
            disks: vec![DiskSpec {
                index: 0,
                path: "/d/a,b.qcow2".into(),
                format: "qcow2".into(),
                pool: None,
            }],
            on_poweroff: Policy::Destroy,
            on_reboot: Policy::Restart,
            on_crash: Policy::Destroy,
            nics: vec![hostel_api::agent::NicSpec {
                id: "nic-1".into(),
                index: 0,
                mac: "52:54:00:00:00:01".into(),
                ipv4: "10.0.0.2".into(),
                ipv6: None,
                bridge: "hbr1".into(),
                tap: "htp1".into(),
            }],
            cdrom: None,
            seed: None,
            machine: None,
            cpu_model: None,
            guest_agent: true,
        }
    }

    fn host() -> HostOptions {
        HostOptions {
            qemu_binary: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            strict_sandbox: true,
        }
    }

    fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn renders_sizing_boot_and_sockets() {
        let p = RuntimePaths::new(Path::new("/run/h"), "vm-1");
        let argv = render(&spec(), &p, &host(), None);
        assert_eq!(after(&argv, "-m"), ["512M"]);
        assert_eq!(
            after(&argv, "-smp"),
            ["1,maxcpus=4,sockets=4,cores=1,threads=1"]
        );
        assert_eq!(
            after(&argv, "-device")[0],
            "max-x86_64-cpu,id=vcpu1,socket-id=1,core-id=0,thread-id=0"
        );
        assert_eq!(after(&argv, "-machine"), ["q35"]);
        assert_eq!(after(&argv, "-accel"), ["tcg"]);
        assert_eq!(after(&argv, "-cpu"), ["max"]);
        assert_eq!(after(&argv, "-append"), ["console=ttyS0 hostel.name=web"]);
        assert_eq!(
            after(&argv, "-qmp"),
            ["unix:/run/h/vm-1/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(after(&argv, "-vnc"), ["unix:/run/h/vm-1/vnc.sock"]);
        assert_eq!(after(&argv, "-netdev"), ["tap,id=net0,fd=4,vhost=off"]);
        let has = |x: &str| argv.iter().any(|a| a == x);
        assert!(has(
            "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic0,bus=rpn0"
        ));
        assert!(has("pcie-root-port,id=rpd0,chassis=5"));
        assert!(has("pcie-root-port,id=rpn0,chassis=6"));
        assert!(after(&argv, "-sandbox")[0].contains("elevateprivileges=deny"));
        assert!(after(&argv, "-blockdev")[0].contains("filename=/d/a,,b.qcow2"));
        assert!(!argv.iter().any(|a| a == "-incoming"));
        assert!(!argv.iter().any(|a| a.contains("bootindex")));
        assert_eq!(
            after(&argv, "-action"),
            ["reboot=reset,shutdown=poweroff,panic=exit-failure"]
        );
    }

    #[test]
    fn renders_policies_bios_and_incoming() {
        let mut s = spec();
        s.on_reboot = Policy::Destroy;
        s.boot = Boot::Bios;
        let mut h = host();
        h.accel = Accel::Kvm;
        h.strict_sandbox = false;
        let argv = render(
            &s,
            &RuntimePaths::new(Path::new("/r"), "x"),
            &h,
            Some(Incoming::Fd(3)),
        );
        assert_eq!(after(&argv, "-cpu"), ["host"]);
        assert_eq!(after(&argv, "-accel"), ["kvm"]);
        // A VM pinned to a machine type and a named CPU model gets them under any
        // accelerator, its hot-plugged vCPUs too.
        let mut pinned = spec();
        pinned.machine = Some("pc-q35-9.2".into());
        pinned.cpu_model = Some("Westmere-v1".into());
        let p = render(&pinned, &RuntimePaths::new(Path::new("/r"), "x"), &h, None);
        assert_eq!(after(&p, "-machine"), ["pc-q35-9.2"]);
        assert_eq!(after(&p, "-cpu"), ["Westmere-v1"]);
        assert!(after(&p, "-device")[0].starts_with("Westmere-v1-x86_64-cpu,id=vcpu1,"));
        assert!(after(&argv, "-action")[0].starts_with("reboot=shutdown"));
        assert_eq!(after(&argv, "-incoming"), ["fd:3"]);
        assert!(!argv.iter().any(|a| a == "-kernel"));
        assert!(after(&argv, "-device")[2].ends_with("bootindex=1,bus=rpd0"));
        assert_eq!(after(&argv, "-sandbox"), ["on,obsolete=deny"]);
    }

    #[test]
    fn renders_uefi_cdrom_and_seed() {
        let mut s = spec();
        s.boot = Boot::Uefi;
        s.cdrom = Some(DiskSpec {
            index: 0,
            path: "/iso/debian.iso".into(),
            format: "raw".into(),
            pool: None,
        });
        s.seed = Some(hostel_api::agent::Seed {
            meta_data: String::new(),
            user_data: String::new(),
            network_config: String::new(),
        });
        let argv = render(&s, &RuntimePaths::new(Path::new("/r"), "x"), &host(), None);
        let drives = after(&argv, "-drive");
        assert_eq!(
            drives[0],
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        );
        assert_eq!(drives[1], "if=pflash,format=raw,file=/r/x/efivars.fd");
        let has = |x: &str| argv.iter().any(|a| a == x);
        assert!(has("ide-cd,drive=cd0,bus=ide.0,id=cdrom0,bootindex=2"));
        assert!(has("virtio-scsi-pci,id=scsi0,bus=rps"));
        assert!(has("scsi-cd,drive=cd1,bus=scsi0.0,id=cdrom1"));
        assert!(has(
            "driver=file,filename=/r/x/seed.iso,node-name=cdfile1,read-only=on"
        ));
        assert!(has(
            "driver=file,filename=/iso/debian.iso,node-name=cdfile0,read-only=on"
        ));
        assert!(argv.iter().any(|a| a.ends_with("bootindex=1,bus=rpd0")));
        assert!(!has("-kernel"));
    }

    #[test]
    fn long_runtime_paths_are_refused() {
        let long = "/x".repeat(60);
        let e = RuntimePaths::new(Path::new(&long), "vm")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("shorter --data-dir"));
    }
}
