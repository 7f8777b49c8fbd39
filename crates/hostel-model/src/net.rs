//! Network addressing: CIDRs, IP allocation, MAC addresses and the host-side names of
//! bridges and taps. Pure functions; the database's unique constraints back them up.

use crate::Invalid;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use utoipa::ToSchema;

/// How a network reaches the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// The host masquerades the network's traffic to its uplink; port forwards open ports.
    #[default]
    Nat,
    /// The uplink is a port of the network's bridge: VMs sit on the uplink's segment.
    Bridged,
}

impl NetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Nat => "nat",
            NetMode::Bridged => "bridged",
        }
    }
    pub fn parse(field: &str, s: &str) -> Result<NetMode, Invalid> {
        match s {
            "nat" => Ok(NetMode::Nat),
            "bridged" => Ok(NetMode::Bridged),
            _ => Err(Invalid::new(
                field,
                format!("{s:?} is not a network mode: use \"nat\" or \"bridged\""),
            )),
        }
    }
}

/// Parses an IPv4 network such as `10.20.0.0/24`: a network address, /8 to /29.
pub fn parse_cidr(field: &str, s: &str) -> Result<Ipv4Net, Invalid> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        Invalid::new(
            field,
            format!("{s:?} is not an IPv4 network: write it like 10.20.0.0/24"),
        )
    })?;
    if net.trunc() != net {
        return Err(Invalid::new(
            field,
            format!("{s} has host bits set: the network is {}", net.trunc()),
        ));
    }
    if !(8..=29).contains(&net.prefix_len()) {
        return Err(Invalid::new(
            field,
            format!(
                "/{} is out of range: use a prefix between /8 and /29",
                net.prefix_len()
            ),
        ));
    }
    Ok(net)
}

pub fn parse_ipv6_prefix(field: &str, s: &str) -> Result<Ipv6Net, Invalid> {
    let net: Ipv6Net = s.parse().map_err(|_| {
        Invalid::new(
            field,
            format!("{s:?} is not an IPv6 prefix: write it like fd00:20::/64"),
        )
    })?;
    if net.prefix_len() != 64 || net.trunc() != net {
        return Err(Invalid::new(
            field,
            format!(
                "{s}: use a /64 network prefix (addresses are derived from MACs, as SLAAC does)"
            ),
        ));
    }
    Ok(net)
}

/// The first host address, the usual gateway.
pub fn default_gateway(net: Ipv4Net) -> Ipv4Addr {
    net.hosts().next().expect("a /29 or larger has hosts")
}

pub fn parse_ip(field: &str, s: &str) -> Result<Ipv4Addr, Invalid> {
    s.parse()
        .map_err(|_| Invalid::new(field, format!("{s:?} is not an IPv4 address")))
}

/// Checks that `ip` may be given to a VM on `net`.
pub fn check_vm_ip(
    field: &str,
    net: Ipv4Net,
    gateway: Ipv4Addr,
    ip: Ipv4Addr,
) -> Result<(), Invalid> {
    if !net.contains(&ip) {
        return Err(Invalid::new(
            field,
            format!("{ip} is outside the network {net}"),
        ));
    }
    if ip == net.network() {
        return Err(Invalid::new(
            field,
            format!("{ip} is the network address of {net}"),
        ));
    }
    if ip == net.broadcast() {
        return Err(Invalid::new(
            field,
            format!("{ip} is the broadcast address of {net}"),
        ));
    }
    if ip == gateway {
        return Err(Invalid::new(field, format!("{ip} is the gateway of {net}")));
    }
    Ok(())
}

/// The lowest free address for a VM, or None if the network is full.
pub fn allocate(net: Ipv4Net, gateway: Ipv4Addr, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    net.hosts().find(|ip| *ip != gateway && !used.contains(ip))
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses a MAC address; it must be a unicast one.
pub fn parse_mac(field: &str, s: &str) -> Result<[u8; 6], Invalid> {
    let bad = || {
        Invalid::new(
            field,
            format!("{s:?} is not a MAC address: write it like 52:54:00:12:34:56"),
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(Invalid::new(
            field,
            format!("{s} is a multicast address: a NIC needs a unicast one"),
        ));
    }
    if mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC in QEMU's 52:54:00 range from three random bytes.
pub fn mac_from(random: [u8; 3]) -> String {
    format_mac([0x52, 0x54, 0x00, random[0], random[1], random[2]])
}

/// The modified EUI-64 interface id of a MAC (what SLAAC and link-local addresses use).
pub fn eui64(mac: [u8; 6]) -> [u8; 8] {
    [
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

pub fn ipv6_with_mac(prefix: Ipv6Addr, mac: [u8; 6]) -> Ipv6Addr {
    let mut o = prefix.octets();
    o[8..].copy_from_slice(&eui64(mac));
    Ipv6Addr::from(o)
}

pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    ipv6_with_mac("fe80::".parse().expect("literal"), mac)
}

/// Checks a host interface name given by a user (an uplink): what the kernel allows,
/// and none of Hostel's own bridges and taps.
pub fn check_ifname(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !ok {
        return Err(Invalid::new(
            field,
            format!("{name:?} is not an interface name: 1 to 15 letters, digits, '_', '.' or '-'"),
        ));
    }
    if name.starts_with("hbr") || name.starts_with("htp") {
        return Err(Invalid::new(
            field,
            format!("{name} is one of Hostel's own bridges or taps, not an uplink"),
        ));
    }
    Ok(())
}

/// Host interface names are at most 15 bytes; these are derived from the object's id so
/// that a restarted agent finds the same ones.
pub fn bridge_name(network_id: &str) -> String {
    format!("hbr{}", short(network_id))
}

pub fn tap_name(nic_id: &str) -> String {
    format!("htp{}", short(nic_id))
}

fn short(id: &str) -> String {
    let tail: String = id
        .rsplit('-')
        .next()
        .unwrap_or(id)
        .chars()
        .take(10)
        .collect();
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let n = parse_cidr("cidr", "10.20.0.0/24").unwrap();
        assert_eq!(default_gateway(n), Ipv4Addr::new(10, 20, 0, 1));
        assert!(parse_cidr("cidr", "10.20.0.5/24")
            .unwrap_err()
            .message
            .contains("host bits"));
        assert!(parse_cidr("cidr", "10.20.0.0/30").is_err());
        assert!(parse_cidr("cidr", "nonsense").is_err());
        let m = parse_cidr("cidr", "10.20.0.128/25").unwrap();
        assert!(overlaps(n, m) && overlaps(m, n));
        assert!(!overlaps(n, parse_cidr("c", "10.21.0.0/24").unwrap()));
    }

    #[test]
    fn ips() {
        let n = parse_cidr("cidr", "10.0.0.0/29").unwrap();
        let gw = default_gateway(n);
        let mut used = HashSet::new();
        let mut got = Vec::new();
        while let Some(ip) = allocate(n, gw, &used) {
            used.insert(ip);
            got.push(ip.to_string());
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        for (bad, why) in [
            ("10.0.0.0", "network address"),
            ("10.0.0.7", "broadcast"),
            ("10.0.0.1", "gateway"),
            ("10.0.1.2", "outside"),
        ] {
            let e = check_vm_ip("ip", n, gw, bad.parse().unwrap()).unwrap_err();
            assert!(e.message.contains(why), "{bad}: {e}");
        }
        check_vm_ip("ip", n, gw, "10.0.0.4".parse().unwrap()).unwrap();
    }

    #[test]
    fn interface_names() {
        check_ifname("uplink", "eth0").unwrap();
        check_ifname("uplink", "enp0s31f6.100").unwrap();
        for bad in [
            "",
            "a\"; delete table",
            "averyveryverylongname",
            "hbr123",
            "eth 0",
        ] {
            assert!(check_ifname("uplink", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_and_names() {
        let mac = parse_mac("mac", "52:54:00:12:34:56").unwrap();
        assert_eq!(format_mac(mac), "52:54:00:12:34:56");
        assert!(parse_mac("mac", "01:00:5e:00:00:01")
            .unwrap_err()
            .message
            .contains("multicast"));
        assert!(parse_mac("mac", "52:54:00:12:34").is_err());
        assert!(parse_mac("mac", "zz:54:00:12:34:56").is_err());
        assert_eq!(link_local(mac).to_string(), "fe80::5054:ff:fe12:3456");
        assert_eq!(mac_from([1, 2, 3]), "52:54:00:01:02:03");
        assert!(bridge_name("net-0123456789ab").len() <= 15);
        assert_eq!(tap_name("nic-0123456789ab"), "htp0123456789");
    }
}

/// What an admin lets a network's VMs reach beyond the default (DHCP, DNS and, for a NAT
/// network, the world outside the host's own LAN), and who may attach to it. Kept with
/// the network; rendered into the hosts' nftables filter (`hostel-net/src/filter.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
pub struct NetPolicy {
    /// Host services the network's VMs may reach on the host, as `PROTO/PORT`
    /// (`tcp/22`). None by default.
    #[serde(default)]
    pub host_ports: Vec<String>,
    /// Ids of the networks whose VMs this network's VMs may reach, and back. A link is
    /// kept on both networks.
    #[serde(default)]
    pub links: Vec<String>,
    /// Destinations on the host's own LAN (or elsewhere otherwise dropped) that a NAT
    /// network's VMs may reach, as IPv4 CIDRs.
    #[serde(default)]
    pub allow_to: Vec<String>,
    /// Users and groups (by name) who may attach NICs. Bridged networks only: VMs there
    /// sit on a real segment, so nobody but an admin attaches unless listed here.
    #[serde(default)]
    pub attach: Vec<String>,
}

/// Parses `PROTO/PORT` (`tcp/22`, `udp/123`) for a host port a network may reach.
pub fn parse_host_port(field: &str, s: &str) -> Result<(String, u16), Invalid> {
    let bad = || {
        Invalid::new(
            field,
            format!("{s:?} is not a host port: write PROTO/PORT, like tcp/22 or udp/123"),
        )
    };
    let (proto, port) = s.split_once('/').ok_or_else(bad)?;
    if proto != "tcp" && proto != "udp" {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((proto.to_string(), port))
}

/// Addresses no guest may reach: link-local, where clouds serve instance metadata
/// (169.254.169.254) and where hosts talk to their own firmware.
pub const LINK_LOCAL_V4: &str = "169.254.0.0/16";
