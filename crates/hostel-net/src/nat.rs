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
    /// Masquerade only out of this interface; any other interface when None.
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
            None => format!("oifname != \"{}\"", n.bridge),
        };
        post.push(format!("ip saddr {} {out} masquerade", n.cidr));
    }
    let mut pre = Vec::new();
    for f in forwards {
        pre.push(format!(
            "fib daddr type local {} dport {} dnat to {}:{}",
            f.proto, f.host_port, f.ip, f.guest_port
        ));
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
        chain("out", "output", "-100", &pre),
    )
}

pub fn apply(nets: &[NatNet], forwards: &[Forward]) -> Result<()> {
    if nets.is_empty() && forwards.is_empty() {
        return nft(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"));
    }
    crate::link::enable_forwarding()?;
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
        assert!(s.contains("ip saddr 10.9.0.0/24 oifname != \"hbr1\" masquerade"));
        assert!(s.contains("fib daddr type local tcp dport 8080 dnat to 10.9.0.2:80"));
        assert_eq!(s.matches("dnat to").count(), 2, "prerouting and output");
    }
}
