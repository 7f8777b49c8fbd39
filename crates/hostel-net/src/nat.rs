//! NAT networks: masquerading to the uplink, and port forwards from host ports to VMs.
//! The whole table is rendered from the agent's state and replaced atomically.

use crate::nft;
use anyhow::Result;
use std::net::Ipv4Addr;

pub const TABLE: &str = "hostel_nat";

#[derive(Debug, Clone, PartialEq)]
pub struct NatNet {
    pub cidr: String,
    pub bridge: String,
    /// Masquerade only out of this interface; any interface but Hostel's bridges when None.
    pub uplink: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub proto: String,
    pub host_port: u16,
    pub ip: Ipv4Addr,
    pub guest_port: u16,
}

pub fn script(nets: &[NatNet], forwards: &[Forward]) -> String {
    let mut post = Vec::new();
    for n in nets {
        let out = match &n.uplink {
            Some(u) => format!("oifname \"{u}\""),
            // Never into another Hostel network: that traffic is dropped by the filter,
            // or, for linked networks, goes unmasqueraded so VMs see each other's addresses.
            None => "oifname != \"hbr*\"".to_string(),
        };
        post.push(format!("ip saddr {} {out} masquerade", n.cidr));
    }
    let mut pre = Vec::new();
    let mut out = Vec::new();
    for f in forwards {
        let rule = format!(
            "fib daddr type local {} dport {} dnat to {}:{}",
            f.proto, f.host_port, f.ip, f.guest_port
        );
        // Loopback cannot be routed to a VM (martian): local clients use a host address.
        out.push(format!("ip daddr != 127.0.0.0/8 {rule}"));
        pre.push(rule);
    }
    let chain = |name: &str, hook: &str, prio: &str, rules: &[String]| {
        let mut s = format!(
            "  chain {name} {{\n    type nat hook {hook} priority {prio}; policy accept;\n"
        );
        for r in rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
        s
    };
    format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n{}{}{}}}\n",
        chain("post", "postrouting", "srcnat", &post),
        chain("pre", "prerouting", "dstnat", &pre),
        chain("out", "output", "-100", &out),
    )
}

/// True if a socket on this host (in this network namespace) listens on the port, so a
/// forward would take it away from a host service (sshd, Hostel's own API, ...).
pub fn host_listens(proto: &str, port: u16) -> bool {
    let (files, state): (&[&str], &str) = match proto {
        "udp" => (&["/proc/net/udp", "/proc/net/udp6"], "07"),
        _ => (&["/proc/net/tcp", "/proc/net/tcp6"], "0A"),
    };
    files.iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3
                    && cols[3] == state
                    && cols[1]
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                        == Some(port)
            })
    })
}

/// Replaces the NAT table. Forwarding must be on first (`link::enable_forwarding`), and
/// the filter (`filter.rs`) in place.
pub fn apply(nets: &[NatNet], forwards: &[Forward]) -> Result<()> {
    if nets.is_empty() && forwards.is_empty() {
        return nft(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"));
    }
    nft(&script(nets, forwards))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_masquerade_and_forwards() {
        let s = script(
            &[NatNet {
                cidr: "10.9.0.0/24".into(),
                bridge: "hbr1".into(),
                uplink: None,
            }],
            &[Forward {
                proto: "tcp".into(),
                host_port: 8080,
                ip: "10.9.0.2".parse().unwrap(),
                guest_port: 80,
            }],
        );
        assert!(s.contains("ip saddr 10.9.0.0/24 oifname != \"hbr*\" masquerade"));
        assert!(s.contains("fib daddr type local tcp dport 8080 dnat to 10.9.0.2:80"));
        assert_eq!(s.matches("dnat to").count(), 2, "prerouting and output");
        assert!(s.contains("ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080"));
    }

    #[test]
    fn sees_listening_ports() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(host_listens("tcp", port));
        drop(l);
        assert!(!host_listens("tcp", port));
    }
}
