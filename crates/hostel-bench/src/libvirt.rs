//! libvirt, the peer: a private `libvirtd` and `virtlogd` and `virsh create` of the plain
//! QEMU guest.

use crate::daemon::{end, rss_kib, run, timed, wait_marker};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// libvirt, for comparison: its own `libvirtd` and `virtlogd`, started for the benchmark
/// in a network namespace and a private mount namespace of their own (so the host's
/// /etc/libvirt/qemu.conf, /run/libvirt and /var/lib/libvirt are not touched), as root
/// with `security_driver = "none"`; stopped and removed afterwards.
pub(crate) struct Libvirt {
    ns: String,
    pub(crate) dir: PathBuf,
    child: Child,
    pub(crate) uri: String,
}

impl Libvirt {
    pub(crate) fn start() -> Result<Libvirt> {
        for tool in ["libvirtd", "virtlogd", "virsh"] {
            if !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success()
            {
                bail!(
                    "{tool} is missing: bench/run installs libvirt-daemon, \
                     libvirt-daemon-driver-qemu and libvirt-clients from bookworm-backports"
                );
            }
        }
        let ns = format!("hostel-bench-lv-{}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        for sub in ["run", "lib", "cache", "log"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(
            dir.join("qemu.conf"),
            "security_driver = \"none\"\nuser = \"root\"\ngroup = \"root\"\n\
             dynamic_ownership = 0\nremember_owner = 0\n",
        )?;
        std::fs::write(
            dir.join("libvirtd.conf"),
            "unix_sock_rw_perms = \"0700\"\nauth_unix_rw = \"none\"\n",
        )?;
        let d = dir.display();
        std::fs::write(
            dir.join("inner.sh"),
            format!(
                "set -e\nmount --make-rprivate /\n\
                 mount --bind {d}/qemu.conf /etc/libvirt/qemu.conf\n\
                 mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt\n\
                 mount --bind {d}/run /run/libvirt\n\
                 mount --bind {d}/lib /var/lib/libvirt\n\
                 mount --bind {d}/cache /var/cache/libvirt\n\
                 mount --bind {d}/log /var/log/libvirt\n\
                 virtlogd -d\n\
                 exec libvirtd -f {d}/libvirtd.conf\n"
            ),
        )?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        let log = std::fs::File::create(dir.join("libvirtd.out"))?;
        // ip netns exec, unshare and sh all exec: the child's pid is libvirtd's.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "unshare", "-m", "sh"])
            .arg(dir.join("inner.sh"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let lv = Libvirt {
            uri: format!("qemu:///system?socket={d}/run/libvirt-sock"),
            ns,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while lv.virsh(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "libvirtd did not answer in 60 s; see {}",
                    lv.dir.join("libvirtd.out").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(lv)
    }

    pub(crate) fn virsh(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// A transient domain like the plain QEMU one: q35, TCG, `-cpu max`, 256 MiB, the
    /// tiny image's kernel and initrd, a serial console to a file, balloon and pvpanic.
    pub(crate) fn domain_xml(
        &self,
        name: &str,
        img: &Path,
        cmdline: &str,
        serial: &Path,
    ) -> String {
        format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>256</memory>\n  \
             <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    \
             <kernel>{k}</kernel>\n    <initrd>{i}</initrd>\n    <cmdline>{c} hostel.name={name}</cmdline>\n  \
             </os>\n  <cpu mode='maximum'/>\n  <devices>\n    \
             <emulator>/usr/bin/qemu-system-x86_64</emulator>\n    \
             <controller type='usb' model='none'/>\n    \
             <serial type='file'><source path='{s}'/><target port='0'/></serial>\n    \
             <memballoon model='virtio'/>\n    <panic model='pvpanic'/>\n  </devices>\n</domain>\n",
            k = img.join("vmlinuz").display(),
            i = img.join("initrd.img").display(),
            c = cmdline.trim(),
            s = serial.display(),
        )
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        end(&mut self.child, &self.ns, &self.dir);
    }
}

/// `virsh create` → ready marker, then `virsh destroy`: (boot s, destroy s).
pub(crate) fn libvirt_boot(
    lv: &Libvirt,
    img: &Path,
    cmdline: &str,
    i: usize,
) -> Result<(f64, f64)> {
    let name = format!("lv{i}");
    let serial = lv.dir.join(format!("{name}.serial"));
    let xml = lv.dir.join(format!("{name}.xml"));
    std::fs::write(&xml, lv.domain_xml(&name, img, cmdline, &serial))?;
    let t = Instant::now();
    lv.virsh(&["create", xml.to_str().unwrap_or_default()])?;
    wait_marker(&serial, Duration::from_secs(120))?;
    let boot = t.elapsed().as_secs_f64();
    let destroy = timed(|| lv.virsh(&["destroy", &name]).map(|_| ()))?;
    Ok((boot, destroy))
}
