//! The host side of VM networking: the controller sends the whole desired network state
//! (`PUT /v1/networks`) and the agent converges the filter, bridges, dnsmasq and NAT to it; a VM's
//! taps and port guards come and go with its QEMU.

use crate::{AgentError, Shared};
use anyhow::{anyhow, Context};
use hostel_api::agent::{NetworksApplied, NetworksState, NicSpec, SkippedForward, VmSpec};
use hostel_model::net::{bridge_name, link_local, parse_host_port, parse_mac, NetMode};
use hostel_net::{dnsmasq, filter, guard, link, nat, tap};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

impl Shared {
    fn net_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("net")
    }

    /// Converges this host's filter, bridges, dnsmasqs and NAT rules to `state`. A port
    /// forward whose host port a host service holds is skipped and named in the answer;
    /// the rest is applied.
    pub fn apply_networks(&self, state: &NetworksState) -> anyhow::Result<NetworksApplied> {
        let _one_at_a_time = self.net_apply.lock().unwrap();
        self.apply_locked(state)
    }

    /// Set when this agent turned IPv4 forwarding on (it was off): then the host forwards
    /// VM traffic only. Kept on disk so a restarted agent remembers.
    fn forwarding_marker(&self) -> PathBuf {
        self.cfg.data_dir.join("forwarding-enabled-by-hostel")
    }

    /// The filter for `state` (`hostel-net/src/filter.rs`): what VMs may reach.
    fn filter_of(&self, state: &NetworksState) -> anyhow::Result<filter::Filter> {
        let nets = state
            .networks
            .iter()
            .map(|n| {
                Ok(filter::FilterNet {
                    bridge: n.bridge.clone(),
                    nat: n.mode == NetMode::Nat,
                    uplink: if n.mode == NetMode::Nat {
                        n.uplink.clone()
                    } else {
                        None
                    },
                    host_ports: n
                        .host_ports
                        .iter()
                        .map(|p| parse_host_port("host_ports", p).map_err(|e| anyhow!(e)))
                        .collect::<anyhow::Result<_>>()?,
                    links: n.links.clone(),
                    allow_to: n
                        .allow_to
                        .iter()
                        .map(|c| {
                            c.parse::<ipnet::Ipv4Net>()
                                .map(|c| c.trunc().to_string())
                                .with_context(|| format!("allow_to: {c:?} is not an IPv4 CIDR"))
                        })
                        .collect::<anyhow::Result<_>>()?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(filter::Filter {
            nets,
            host_lan: filter::host_lan()?,
            forward_only_vms: self.forwarding_marker().exists(),
        })
    }

    fn apply_locked(&self, state: &NetworksState) -> anyhow::Result<NetworksApplied> {
        let ran_any = std::fs::read_dir(self.net_dir())
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if state.networks.is_empty() && state.forwards.is_empty() && !ran_any {
            // Nothing to run and nothing to take down: leave the host's networking alone.
            *self.networks.lock().unwrap() = state.clone();
            return Ok(NetworksApplied::default());
        }
        // The filter first: no bridge exists, and no tap joins one, without it.
        let f = self.filter_of(state)?;
        filter::apply(&f).context("installing the network filter")?;
        *self.filtered_lan.lock().unwrap() = f.host_lan.clone();
        std::fs::create_dir_all(self.net_dir())?;
        for n in &state.networks {
            let cidr: ipnet::Ipv4Net = n.cidr.parse().context("network cidr")?;
            link::ensure_bridge(
                &n.bridge,
                Some(&format!("{}/{}", n.gateway, cidr.prefix_len())),
            )?;
            if let Some(p) = &n.ipv6_prefix {
                let base = p.split('/').next().unwrap_or(p);
                link::add_ipv6(&n.bridge, &format!("{base}1/64"))?;
            }
            if n.mode == NetMode::Bridged {
                if let Some(up) = &n.uplink {
                    link::attach(up, &n.bridge)?;
                }
            }
            let conf = dnsmasq::Config {
                bridge: n.bridge.clone(),
                network: cidr.network(),
                netmask: cidr.netmask(),
                gateway: n.gateway.parse()?,
                domain: n.domain.clone(),
                ipv6_prefix: n.ipv6_prefix.clone(),
                forward: n.dns_forward.as_deref().map(|a| a.parse()).transpose()?,
                hosts: n
                    .hosts
                    .iter()
                    .map(|h| {
                        Ok(dnsmasq::Host {
                            name: h.name.clone(),
                            mac: h.mac.clone(),
                            ipv4: h.ipv4.parse()?,
                            ipv6: h.ipv6.as_deref().map(|a| a.parse()).transpose()?,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            dnsmasq::ensure(&conf, &dnsmasq::Files::new(&self.net_dir().join(&n.id)))?;
        }
        // Networks this host ran that are gone now.
        for e in std::fs::read_dir(self.net_dir())?.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if state.networks.iter().any(|n| n.id == id) {
                continue;
            }
            dnsmasq::remove(&dnsmasq::Files::new(&e.path()))?;
            link::delete(&bridge_name(&id))?;
        }
        let nats: Vec<nat::NatNet> = state
            .networks
            .iter()
            .filter(|n| n.mode == NetMode::Nat)
            .map(|n| nat::NatNet {
                cidr: n.cidr.clone(),
                bridge: n.bridge.clone(),
                uplink: n.uplink.clone(),
            })
            .collect();
        // A forward on a port a host service holds (say a second host's agent) is
        // skipped and reported; it does not take every other user's forwards down.
        let applied = self.networks.lock().unwrap().forwards.clone();
        let mut kept = Vec::new();
        let mut answer = NetworksApplied::default();
        for f in &state.forwards {
            let ours = applied
                .iter()
                .any(|a| a.proto == f.proto && a.host_port == f.host_port);
            if !ours && nat::host_listens(&f.proto, f.host_port) {
                answer.skipped.push(SkippedForward {
                    forward: f.clone(),
                    reason: format!(
                        "{}/{} is in use by a service on the host",
                        f.host_port, f.proto
                    ),
                });
                continue;
            }
            kept.push(nat::Forward {
                proto: f.proto.clone(),
                host_port: f.host_port,
                ip: f.ip.parse()?,
                guest_port: f.guest_port,
            });
        }
        if (!nats.is_empty() || !kept.is_empty()) && link::enable_forwarding()? {
            std::fs::write(self.forwarding_marker(), "")?;
            filter::apply(&filter::Filter {
                forward_only_vms: true,
                ..f
            })?;
        }
        nat::apply(&nats, &kept)?;
        if state.networks.is_empty() && self.guards.lock().unwrap().is_empty() {
            let _ = guard::remove_all();
            let _ = filter::remove();
        }
        let mut now = state.clone();
        now.forwards
            .retain(|f| !answer.skipped.iter().any(|s| &s.forward == f));
        *self.networks.lock().unwrap() = now;
        for s in &answer.skipped {
            tracing::warn!("port forward skipped: {}", s.reason);
        }
        Ok(answer)
    }

    /// Restarts any network's dnsmasq that died, and puts back a filter or port guards a
    /// flushed ruleset took away, for ever (nothing else would notice).
    pub fn supervise_dnsmasq(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let m = me.clone();
                let r = tokio::task::spawn_blocking(move || {
                    // Under the apply lock, so a network removed meanwhile stays removed.
                    let _one_at_a_time = m.net_apply.lock().unwrap();
                    let state = m.networks.lock().unwrap().clone();
                    let dead = state.networks.iter().any(|n| {
                        !dnsmasq::is_running(&dnsmasq::Files::new(&m.net_dir().join(&n.id)))
                    });
                    // A flushed ruleset takes the filter and the guards with it: put
                    // them back at once. (One look at the kernel's tables for both.)
                    let tables = hostel_net::tables();
                    {
                        let guards = m.guards.lock().unwrap();
                        if !guards.is_empty() && !tables.contains(&guard::table()) {
                            tracing::warn!(
                                "the port guards are gone from the kernel; installing them again"
                            );
                            let all: Vec<guard::Guard> = guards.values().cloned().collect();
                            if let Err(e) = guard::reinstall(&all) {
                                tracing::error!("installing the port guards again failed: {e:#}");
                            }
                        }
                    }
                    let unfiltered =
                        !state.networks.is_empty() && !tables.contains(&filter::table());
                    // The host's LAN is what its own interfaces say: an address added
                    // or changed since (DHCP on the host, a new link) is closed too.
                    let lan_moved = !state.networks.is_empty()
                        && filter::host_lan().is_ok_and(|l| *m.filtered_lan.lock().unwrap() != l);
                    if !dead && !unfiltered && !lan_moved {
                        return Ok(());
                    }
                    if lan_moved && !unfiltered {
                        tracing::info!(
                            "the host's own addresses changed; rendering the network filter again"
                        );
                    } else if unfiltered {
                        tracing::warn!(
                            "the network filter is gone from the kernel; installing it again"
                        );
                    } else {
                        tracing::warn!("a network's dnsmasq is not running; starting it again");
                    }
                    m.apply_locked(&state).map(|_| ())
                })
                .await;
                if let Ok(Err(e)) = r {
                    tracing::warn!("restarting dnsmasq failed: {e:#}");
                }
            }
        });
    }

    fn guard_of(nic: &NicSpec, rate_mbps: Option<u32>) -> anyhow::Result<guard::Guard> {
        let mac = parse_mac("mac", &nic.mac).map_err(|e| anyhow!(e))?;
        Ok(guard::Guard {
            rate_mbps,
            tap: nic.tap.clone(),
            mac: nic.mac.clone(),
            ipv4: nic.ipv4.parse()?,
            ipv6: nic.ipv6.as_deref().map(|a| a.parse()).transpose()?,
            link_local: link_local(mac),
        })
    }

    /// Creates one NIC's tap on its bridge, behind its guard (and, with a rate, shaped
    /// and policed to it); returns the descriptor QEMU gets.
    pub fn plug_nic(&self, nic: &NicSpec, rate_mbps: Option<u32>) -> Result<OwnedFd, AgentError> {
        if !link::exists(&nic.bridge) {
            return Err(AgentError::Conflict(format!(
                "the bridge {} of NIC {} does not exist on this host (its network is not set up)",
                nic.bridge, nic.mac
            )));
        }
        // Fail closed: no tap joins a bridge unless the filter is in the kernel.
        if !filter::installed() {
            return Err(AgentError::Conflict(format!(
                "the network filter is not installed on this host, so NIC {} is not plugged: \
                 the agent installs it with the networks; check the agent's log",
                nic.mac
            )));
        }
        let g = Self::guard_of(nic, rate_mbps)?;
        {
            // Held across nft: the verdict map is rewritten whole, so two changes must
            // not interleave (an older snapshot applied last would unguard a tap).
            let mut guards = self.guards.lock().unwrap();
            guards.insert(nic.tap.clone(), g.clone());
            let all: Vec<guard::Guard> = guards.values().cloned().collect();
            // The guard is in place before the tap carries a single frame.
            if let Err(e) = guard::install(&g, &all) {
                guards.remove(&nic.tap);
                return Err(e.into());
            }
        }
        let fd = tap::open(&nic.tap)?;
        if rate_mbps.is_some() {
            link::shape(&nic.tap, rate_mbps)?;
        }
        link::attach(&nic.tap, &nic.bridge)?;
        Ok(fd)
    }

    pub fn plug_nics(&self, spec: &VmSpec) -> Result<Vec<OwnedFd>, AgentError> {
        let mut fds = Vec::new();
        for nic in &spec.nics {
            match self.plug_nic(nic, spec.limits.net_mbps) {
                Ok(fd) => fds.push(fd),
                Err(e) => {
                    self.unplug_guards(spec);
                    return Err(e);
                }
            }
        }
        Ok(fds)
    }

    pub fn unplug_guard(&self, tap: &str) {
        let mut guards = self.guards.lock().unwrap();
        guards.remove(tap);
        let rest: Vec<guard::Guard> = guards.values().cloned().collect();
        if let Err(e) = guard::remove(tap, &rest) {
            tracing::warn!(%tap, "removing a port guard failed: {e:#}");
        }
    }

    /// Removes the guards of a VM whose QEMU ended (its taps went with QEMU).
    pub fn unplug_guards(&self, spec: &VmSpec) {
        for nic in &spec.nics {
            self.unplug_guard(&nic.tap);
        }
    }

    /// Sets the rate of a running VM's NICs (none: unlimited): each guard's policing
    /// and each tap's shaping.
    pub fn set_nic_rates(&self, nics: &[NicSpec], rate_mbps: Option<u32>) -> anyhow::Result<()> {
        for nic in nics {
            let g = Self::guard_of(nic, rate_mbps)?;
            {
                let mut guards = self.guards.lock().unwrap();
                guards.insert(nic.tap.clone(), g.clone());
                let all: Vec<guard::Guard> = guards.values().cloned().collect();
                guard::install(&g, &all)?;
            }
            link::shape(&nic.tap, rate_mbps)?;
        }
        Ok(())
    }

    /// Re-registers the guards of a re-adopted VM (the rules survived in the kernel).
    pub fn adopt_guards(&self, spec: &VmSpec) {
        for nic in &spec.nics {
            if let Ok(g) = Self::guard_of(nic, spec.limits.net_mbps) {
                self.guards.lock().unwrap().insert(nic.tap.clone(), g);
            }
        }
    }
}
