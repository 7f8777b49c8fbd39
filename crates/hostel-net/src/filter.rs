//! Host and tenant isolation: an nftables table (inet family) that decides what a VM's
//! traffic may reach once it leaves its bridge for the host.
//!
//! By default a guest reaches only:
//! - the host's DHCP (v4 and v6) and DNS (dnsmasq on its gateway), ICMP echo and the
//!   neighbour discovery IPv6 needs;
//! - for a NAT network, the world beyond the host: not the host's own LAN (the subnets of
//!   its other interfaces), not another Hostel network, not link-local addresses (where
//!   clouds serve instance metadata at 169.254.169.254).
//!
//! An admin widens this per network: host ports (`tcp/22`), links to other networks
//! (both ways), and CIDRs on the LAN it may reach. Traffic into a network from outside
//! is only what a port forward opened (DNAT) or a reply.
//!
//! The table fails closed: a frame from any Hostel bridge that no rule names is dropped
//! (`hbr*`, whatever the network), so a bridge that exists before its network's rules
//! does not leak; the agent installs the table before it creates a bridge or a tap, and
//! puts it back if it disappears. Port guards (`guard.rs`, bridge family) stop spoofing
//! below this: the addresses matched here are the NIC's own.

use crate::nft;
use anyhow::Result;

pub const TABLE: &str = "hostel_filter";

/// One Hostel network as the filter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterNet {
    pub bridge: String,
    /// Masqueraded to the world (NAT) or sitting on a real segment (bridged: its VMs'
    /// traffic does not pass through the host's IP stack except to the host itself).
    pub nat: bool,
    /// The interface a NAT network may leave by; any non-Hostel interface when None.
    pub uplink: Option<String>,
    /// `(proto, port)` of host services its VMs may reach.
    pub host_ports: Vec<(String, u16)>,
    /// Bridges of the networks its VMs may reach.
    pub links: Vec<String>,
    /// IPv4 CIDRs its VMs may reach although they are on the host's LAN.
    pub allow_to: Vec<String>,
}

/// Everything the filter is rendered from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub nets: Vec<FilterNet>,
    /// The IPv4 subnets of the host's own interfaces other than Hostel's (its LAN).
    pub host_lan: Vec<String>,
    /// Forwarding was off before Hostel turned it on: forward nothing but VM traffic, so
    /// the host does not become a router for its other interfaces.
    pub forward_only_vms: bool,
}

fn rule_list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The nft script that replaces the whole table atomically.
pub fn script(f: &Filter) -> String {
    let mut to_host = vec![
        "ct state established,related accept".to_string(),
        "ct state invalid counter drop".to_string(),
        // Only the addresses of the VM's own bridge (its gateway): not the host's LAN
        // address, not another network's gateway.
        "fib daddr . iif type != { local, broadcast, multicast } counter name \"to-host\" drop"
            .to_string(),
        // DHCPv4 and DHCPv6 from dnsmasq, DNS from dnsmasq.
        "udp dport { 67, 547 } accept".to_string(),
        "meta l4proto { tcp, udp } th dport 53 accept".to_string(),
        "icmp type { echo-request } accept".to_string(),
        "icmpv6 type { echo-request, nd-neighbor-solicit, nd-neighbor-advert, \
         nd-router-solicit, mld-listener-report, mld2-listener-report } accept"
            .to_string(),
    ];
    for n in &f.nets {
        for proto in ["tcp", "udp"] {
            let ports: Vec<u16> = n
                .host_ports
                .iter()
                .filter(|(p, _)| p == proto)
                .map(|(_, port)| *port)
                .collect();
            if !ports.is_empty() {
                to_host.push(format!(
                    "iifname \"{}\" {proto} dport {{ {} }} accept",
                    n.bridge,
                    rule_list(&ports)
                ));
            }
        }
    }
    to_host.push("counter name \"to-host\" drop".to_string());

    let mut from_vm = vec![
        "ct state established,related accept".to_string(),
        "ct state invalid counter drop".to_string(),
        format!(
            "ip daddr {} counter name \"to-link-local\" drop",
            hostel_model::net::LINK_LOCAL_V4
        ),
        "ip6 daddr fe80::/10 counter name \"to-link-local\" drop".to_string(),
        // A port forward is a public service: other VMs may use it too (hairpin).
        "ct status dnat accept".to_string(),
    ];
    for n in &f.nets {
        // A network reaches itself. Frames that stay on one bridge meet this chain only
        // where br_netfilter hands bridged IPv4 to the IP hooks (in and out = the bridge).
        from_vm.push(format!(
            "iifname \"{b}\" oifname \"{b}\" accept",
            b = n.bridge
        ));
        for l in &n.links {
            from_vm.push(format!("iifname \"{}\" oifname \"{l}\" accept", n.bridge));
        }
    }
    from_vm.push("oifname \"hbr*\" counter name \"to-other-network\" drop".to_string());
    for n in f.nets.iter().filter(|n| n.nat) {
        if !n.allow_to.is_empty() {
            from_vm.push(format!(
                "iifname \"{}\" ip daddr {{ {} }} accept",
                n.bridge,
                rule_list(&n.allow_to)
            ));
        }
    }
    if !f.host_lan.is_empty() {
        from_vm.push(format!(
            "ip daddr {{ {} }} counter name \"to-host-lan\" drop",
            rule_list(&f.host_lan)
        ));
    }
    for n in f.nets.iter().filter(|n| n.nat) {
        let out = match &n.uplink {
            Some(u) => format!("oifname \"{u}\" "),
            None => String::new(),
        };
        // NAT is IPv4 only: a network's IPv6 prefix stays on its bridge.
        from_vm.push(format!(
            "iifname \"{}\" {out}meta nfproto ipv4 accept",
            n.bridge
        ));
    }
    from_vm.push("counter name \"from-vm\" drop".to_string());

    let to_vm = [
        "ct state established,related accept".to_string(),
        "ct status dnat accept".to_string(),
        "counter name \"to-vm\" drop".to_string(),
    ];

    let mut forward = vec![
        "iifname \"hbr*\" jump from_vm".to_string(),
        "oifname \"hbr*\" jump to_vm".to_string(),
    ];
    if f.forward_only_vms {
        forward.push("counter name \"not-vm-traffic\" drop".to_string());
    }
    let input = ["iifname \"hbr*\" jump to_host".to_string()];

    let chain = |name: &str, hook: Option<&str>, rules: &[String]| {
        let mut s = format!("  chain {name} {{\n");
        if let Some(h) = hook {
            // Before the default filter priority, so a host firewall that accepts
            // everything cannot undo a drop here (a drop is final in any table).
            s.push_str(&format!(
                "    type filter hook {h} priority filter - 10; policy accept;\n"
            ));
        }
        for r in rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
        s
    };
    let counters = [
        "to-host",
        "to-link-local",
        "to-other-network",
        "to-host-lan",
        "from-vm",
        "to-vm",
        "not-vm-traffic",
    ]
    .iter()
    .map(|c| format!("  counter {c} {{ }}\n"))
    .collect::<String>();
    format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{counters}{}{}{}{}{}}}\n",
        chain("input", Some("input"), &input),
        chain("forward", Some("forward"), &forward),
        chain("to_host", None, &to_host),
        chain("from_vm", None, &from_vm),
        chain("to_vm", None, &to_vm),
    )
}

/// Replaces the filter table (one nft transaction: never a moment without rules).
pub fn apply(f: &Filter) -> Result<()> {
    nft(&script(f))
}

/// The filter's table as [`crate::tables`] names it.
pub fn table() -> String {
    format!("inet {TABLE}")
}

/// True if the table is in the kernel (a flushed ruleset took it away otherwise).
pub fn installed() -> bool {
    crate::tables().contains(&table())
}

/// Removes the table (the agent's last network went, and no VM runs).
pub fn remove() -> Result<()> {
    nft(&format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n"
    ))
}

/// Packets the filter dropped, by counter name (for `hostel network describe` and tests).
pub fn drops() -> Vec<(String, u64)> {
    let Ok(out) = crate::run(
        std::process::Command::new("nft").args(["-j", "list", "counters", "table", "inet", TABLE]),
    ) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return Vec::new();
    };
    v["nftables"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o.get("counter"))
                .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The IPv4 subnets of this host's interfaces that are not Hostel's (nor loopback):
/// its LAN, which guests may not reach unless an admin allows it.
pub fn host_lan() -> Result<Vec<String>> {
    let out = crate::run(std::process::Command::new("ip").args(["-j", "-4", "addr", "show"]))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let mut nets = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        let name = link["ifname"].as_str().unwrap_or("");
        if name == "lo" || name.starts_with("hbr") || name.starts_with("htp") {
            continue;
        }
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(ip), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
                continue;
            };
            if let Ok(net) = format!("{ip}/{len}").parse::<ipnet::Ipv4Net>() {
                let net = net.trunc().to_string();
                if !nets.contains(&net) {
                    nets.push(net);
                }
            }
        }
    }
    nets.sort();
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, nat: bool) -> FilterNet {
        FilterNet {
            bridge: bridge.into(),
            nat,
            uplink: None,
            host_ports: vec![],
            links: vec![],
            allow_to: vec![],
        }
    }

    #[test]
    fn by_default_guests_reach_only_dhcp_dns_and_the_world() {
        let s = script(&Filter {
            nets: vec![net("hbra", true), net("hbrb", false)],
            host_lan: vec!["192.0.2.0/24".into()],
            forward_only_vms: true,
        });
        assert!(s.contains("iifname \"hbr*\" jump to_host"), "{s}");
        assert!(s.contains("iifname \"hbrb\" oifname \"hbrb\" accept"));
        assert!(s.contains("fib daddr . iif type != { local, broadcast, multicast }"));
        assert!(s.contains("udp dport { 67, 547 } accept"));
        assert!(s.contains("th dport 53 accept"));
        assert!(s.contains("counter name \"to-host\" drop"));
        assert!(!s.contains("tcp dport {"), "no host port by default: {s}");
        assert!(s.contains("ip daddr 169.254.0.0/16 counter name \"to-link-local\" drop"));
        assert!(s.contains("oifname \"hbr*\" counter name \"to-other-network\" drop"));
        assert!(s.contains("ip daddr { 192.0.2.0/24 } counter name \"to-host-lan\" drop"));
        assert!(s.contains("iifname \"hbra\" meta nfproto ipv4 accept"));
        assert!(
            !s.contains("iifname \"hbrb\" meta nfproto ipv4 accept"),
            "a bridged network is not routed by the host: {s}"
        );
        assert!(s.contains("counter name \"not-vm-traffic\" drop"));
        // The world comes after every drop that protects the host and its neighbours.
        let world = s.find("iifname \"hbra\" meta nfproto ipv4 accept").unwrap();
        for drop in [
            "to-link-local\" drop",
            "to-other-network\" drop",
            "to-host-lan\" drop",
        ] {
            assert!(s.find(drop).unwrap() < world, "{drop} before the world");
        }
    }

    #[test]
    fn admins_open_host_ports_links_and_lan_destinations() {
        let mut a = net("hbra", true);
        a.host_ports = vec![("tcp".into(), 22), ("tcp".into(), 443), ("udp".into(), 123)];
        a.links = vec!["hbrb".into()];
        a.allow_to = vec!["192.0.2.10/32".into()];
        a.uplink = Some("eth0".into());
        let s = script(&Filter {
            nets: vec![a],
            host_lan: vec!["192.0.2.0/24".into()],
            forward_only_vms: false,
        });
        assert!(
            s.contains("iifname \"hbra\" tcp dport { 22, 443 } accept"),
            "{s}"
        );
        assert!(s.contains("iifname \"hbra\" udp dport { 123 } accept"));
        assert!(s.contains("iifname \"hbra\" oifname \"hbrb\" accept"));
        assert!(s.contains("iifname \"hbra\" ip daddr { 192.0.2.10/32 } accept"));
        assert!(s.contains("iifname \"hbra\" oifname \"eth0\" meta nfproto ipv4 accept"));
        assert!(!s.contains("not-vm-traffic\" drop"));
        let link = s.find("oifname \"hbrb\" accept").unwrap();
        assert!(link < s.find("to-other-network\" drop").unwrap());
        let lan = s.find("ip daddr { 192.0.2.10/32 } accept").unwrap();
        assert!(lan < s.find("to-host-lan\" drop").unwrap());
    }
}
