//! One dnsmasq per network: static DHCP leases and DNS names from the database, and
//! nothing else. It listens only on its bridge and answers no unknown MAC.

use anyhow::{Context, Result};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub name: String,
    pub mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub bridge: String,
    pub network: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub domain: Option<String>,
    /// The /64 prefix to advertise for SLAAC, if the network has IPv6.
    pub ipv6_prefix: Option<String>,
    /// Where to send queries for names the network does not own (none: refuse them).
    pub forward: Option<std::net::Ipv4Addr>,
    pub hosts: Vec<Host>,
}

/// The files of one network's dnsmasq.
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Files {
        Files {
            dir: dir.to_path_buf(),
        }
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.join("dnsmasq.conf")
    }
    pub fn dhcp_hosts(&self) -> PathBuf {
        self.dir.join("dhcp-hosts")
    }
    pub fn dns_hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn leases(&self) -> PathBuf {
        self.dir.join("leases")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }
}

pub fn render_conf(c: &Config, f: &Files) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("interface={}", c.bridge));
    line("bind-interfaces".into());
    line("except-interface=lo".into());
    line("no-resolv".into());
    line("no-hosts".into());
    line("no-poll".into());
    if let Some(up) = c.forward {
        line(format!("server={up}"));
    }
    line(format!("addn-hosts={}", f.dns_hosts().display()));
    if let Some(d) = &c.domain {
        line(format!("domain={d}"));
        line(format!("local=/{d}/"));
        line("expand-hosts".into());
    }
    line(format!("dhcp-range={},static,{},12h", c.network, c.netmask));
    line(format!("dhcp-hostsfile={}", f.dhcp_hosts().display()));
    line("dhcp-ignore=tag:!known".into());
    line("dhcp-authoritative".into());
    line(format!("dhcp-option=option:router,{}", c.gateway));
    line(format!("dhcp-option=option:dns-server,{}", c.gateway));
    if let Some(d) = &c.domain {
        line(format!("dhcp-option=option:domain-name,{d}"));
    }
    if let Some(p) = &c.ipv6_prefix {
        let base = p.split('/').next().unwrap_or(p);
        line("enable-ra".into());
        line(format!("dhcp-range={base},ra-only,64,12h"));
    }
    line(format!("dhcp-leasefile={}", f.leases().display()));
    line(format!("pid-file={}", f.pidfile().display()));
    line(format!("log-facility={}", f.log().display()));
    line("log-dhcp".into());
    s
}

pub fn render_dhcp_hosts(c: &Config) -> String {
    c.hosts
        .iter()
        .map(|h| format!("{},{},{}\n", h.mac, h.ipv4, h.name))
        .collect()
}

pub fn render_dns_hosts(c: &Config) -> String {
    let mut s = String::new();
    for h in &c.hosts {
        let names = match &c.domain {
            Some(d) => format!("{}.{d} {}", h.name, h.name),
            None => h.name.clone(),
        };
        s.push_str(&format!("{} {names}\n", h.ipv4));
        if let Some(v6) = h.ipv6 {
            s.push_str(&format!("{v6} {names}\n"));
        }
    }
    s
}

/// Writes a file only if its content changed; returns whether it did.
fn write_if_changed(path: &Path, content: &str) -> Result<bool> {
    if std::fs::read_to_string(path)
        .map(|c| c == content)
        .unwrap_or(false)
    {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

fn running_pid(f: &Files) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(f.pidfile())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&cmdline);
    (text.contains("dnsmasq") && text.contains(&*f.conf().to_string_lossy())).then_some(pid)
}

/// Makes the network's dnsmasq run with `c`: starts it, reloads its host lists (SIGHUP)
/// when only they changed, or restarts it when its configuration changed.
pub fn ensure(c: &Config, f: &Files) -> Result<()> {
    std::fs::create_dir_all(&f.dir)?;
    let conf_changed = write_if_changed(&f.conf(), &render_conf(c, f))?;
    let hosts_changed = write_if_changed(&f.dhcp_hosts(), &render_dhcp_hosts(c))?
        | write_if_changed(&f.dns_hosts(), &render_dns_hosts(c))?;
    let pid = running_pid(f);
    match pid {
        Some(pid) if !conf_changed => {
            if hosts_changed {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                )?;
            }
            Ok(())
        }
        _ => {
            if let Some(pid) = pid {
                stop_pid(pid);
            }
            start(f)
        }
    }
}

fn start(f: &Files) -> Result<()> {
    // dnsmasq daemonizes itself (a new session, so it outlives the agent) and writes its
    // pid file; it exits non-zero if it cannot bind.
    let out = std::process::Command::new("dnsmasq")
        .arg(format!("--conf-file={}", f.conf().display()))
        .output()
        .context("cannot run dnsmasq (apt-get install dnsmasq-base)")?;
    if !out.status.success() {
        anyhow::bail!(
            "dnsmasq failed to start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn stop_pid(pid: i32) {
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..200 {
        if nix::sys::signal::kill(p, None).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
}

/// Stops the network's dnsmasq and removes its files (leases included).
pub fn remove(f: &Files) -> Result<()> {
    if let Some(pid) = running_pid(f) {
        stop_pid(pid);
    }
    if f.dir.exists() {
        std::fs::remove_dir_all(&f.dir)?;
    }
    Ok(())
}

pub fn is_running(f: &Files) -> bool {
    running_pid(f).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_static_leases_and_names() {
        let c = Config {
            bridge: "hbr1".into(),
            network: "10.9.0.0".parse().unwrap(),
            netmask: "255.255.255.0".parse().unwrap(),
            gateway: "10.9.0.1".parse().unwrap(),
            domain: Some("vm.test".into()),
            ipv6_prefix: None,
            forward: None,
            hosts: vec![Host {
                name: "web".into(),
                mac: "52:54:00:00:00:01".into(),
                ipv4: "10.9.0.2".parse().unwrap(),
                ipv6: None,
            }],
        };
        let f = Files::new(Path::new("/x"));
        let conf = render_conf(&c, &f);
        assert!(conf.contains("interface=hbr1\nbind-interfaces"));
        assert!(conf.contains("dhcp-range=10.9.0.0,static,255.255.255.0,12h"));
        assert!(conf.contains("dhcp-ignore=tag:!known"));
        assert!(conf.contains("no-resolv") && conf.contains("local=/vm.test/"));
        assert_eq!(render_dhcp_hosts(&c), "52:54:00:00:00:01,10.9.0.2,web\n");
        assert_eq!(render_dns_hosts(&c), "10.9.0.2 web.vm.test web\n");
        assert!(!conf.contains("server="), "no forwarding unless configured");
        let fwd = Config {
            forward: Some("10.0.0.53".parse().unwrap()),
            ..c
        };
        assert!(render_conf(&fwd, &f).contains("server=10.0.0.53\n"));
    }
}
