//! Port guards: nftables rules (bridge family) on every frame a VM's tap sends into the
//! bridge. A NIC may send only with its own MAC, its own IPv4 address, its link-local
//! and assigned IPv6 addresses; ARP and neighbour advertisements only for its own
//! addresses; and DHCP discovery from 0.0.0.0. Everything else is dropped and counted.
//!
//! Each NIC has its own chain and named counter; a verdict map sends each tap's frames
//! to its chain. Adding or removing one NIC never touches another's counter. A tap with
//! no entry in the map (a guard lost to a flushed ruleset, say) has its frames dropped:
//! the guards fail closed.

use crate::nft;
use anyhow::Result;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const TABLE: &str = "hostel";

#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    pub tap: String,
    pub mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub link_local: Ipv6Addr,
    /// The most the NIC may send, in Mbit/s: beyond it, frames are dropped (policing;
    /// what it receives is shaped on its tap instead, `link::shape`).
    pub rate_mbps: Option<u32>,
}

fn base() -> String {
    format!(
        "add table bridge {TABLE}\n\
         add map bridge {TABLE} nics {{ type ifname : verdict ; }}\n\
         add chain bridge {TABLE} pre {{ type filter hook prerouting priority -200 ; policy accept ; }}\n\
         flush chain bridge {TABLE} pre\n\
         add rule bridge {TABLE} pre iifname vmap @nics\n\
         add rule bridge {TABLE} pre iifname \"htp*\" counter drop\n"
    )
}

fn counter(tap: &str) -> String {
    format!("drop-{tap}")
}

/// The nft commands that (re)define one NIC's chain.
pub fn chain_script(g: &Guard) -> String {
    let c = counter(&g.tap);
    let ch = format!("nic-{}", g.tap);
    let mut own6: Vec<Ipv6Addr> = vec![g.link_local];
    own6.extend(g.ipv6);
    let mut v6: Vec<String> = own6.iter().map(|a| a.to_string()).collect();
    v6.insert(1, "::".to_string());
    // Policing first: a VM over its rate gets nothing further looked at.
    let limit = g.rate_mbps.map(|m| {
        // nft's kbytes are 1024 bytes; a Mbit is 10^6 bits, as tc's.
        let kbytes = u64::from(m) * 1_000_000 / 8 / 1024;
        // A tenth of a second's worth of burst, at least 64 KiB (a few full frames).
        let burst = (kbytes / 10).max(64);
        format!("limit rate over {kbytes} kbytes/second burst {burst} kbytes drop")
    });
    let rules = [
        format!("ether saddr != {} counter name \"{c}\" drop", g.mac),
        format!("arp saddr ether != {} counter name \"{c}\" drop", g.mac),
        format!(
            "arp saddr ip != {{ {}, 0.0.0.0 }} counter name \"{c}\" drop",
            g.ipv4
        ),
        // A VM is never a DHCP server for the others.
        format!("udp sport {{ 67, 547 }} counter name \"{c}\" drop"),
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept".to_string(),
        // The unspecified address is only for duplicate address detection and MLD.
        format!(
            "ip6 saddr :: icmpv6 type != {{ nd-neighbor-solicit, mld2-listener-report }} counter name \"{c}\" drop"
        ),
        format!("ip saddr != {} counter name \"{c}\" drop", g.ipv4),
        format!(
            "ip6 saddr != {{ {} }} counter name \"{c}\" drop",
            v6.join(", ")
        ),
        // A neighbour advertisement may only announce the NIC's own addresses (IPv6's
        // ARP spoofing): the target field sits 8 bytes into the ICMPv6 header.
        format!(
            "icmpv6 type nd-neighbor-advert @th,64,128 != {{ {} }} counter name \"{c}\" drop",
            own6.iter()
                .map(|a| format!("0x{:032x}", u128::from(*a)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("icmpv6 type nd-router-advert counter name \"{c}\" drop"),
        "ether type { ip, ip6, arp } accept".to_string(),
        format!("counter name \"{c}\" drop"),
    ];
    let mut s = format!(
        "add counter bridge {TABLE} {c}\nadd chain bridge {TABLE} {ch}\nflush chain bridge {TABLE} {ch}\n"
    );
    for r in limit.into_iter().chain(rules) {
        s.push_str(&format!("add rule bridge {TABLE} {ch} {r}\n"));
    }
    s
}

fn map_script(all: &[Guard]) -> String {
    let mut s = format!("flush map bridge {TABLE} nics\n");
    if !all.is_empty() {
        let elems: Vec<String> = all
            .iter()
            .map(|g| format!("\"{}\" : jump nic-{}", g.tap, g.tap))
            .collect();
        s.push_str(&format!(
            "add element bridge {TABLE} nics {{ {} }}\n",
            elems.join(", ")
        ));
    }
    s
}

/// Installs `g` (keeping its counter if it existed), with `all` the guards that should
/// be active afterwards (including `g`).
pub fn install(g: &Guard, all: &[Guard]) -> Result<()> {
    nft(&format!("{}{}{}", base(), chain_script(g), map_script(all)))
}

/// Installs every guard in `all` again (after a flushed ruleset took them away).
pub fn reinstall(all: &[Guard]) -> Result<()> {
    let mut s = base();
    for g in all {
        s.push_str(&chain_script(g));
    }
    s.push_str(&map_script(all));
    nft(&s)
}

/// The guards' table as [`crate::tables`] names it.
pub fn table() -> String {
    format!("bridge {TABLE}")
}

/// Removes the guard of `tap`; `rest` are the guards that stay.
pub fn remove(tap: &str, rest: &[Guard]) -> Result<()> {
    let exists = crate::run(std::process::Command::new("nft").args([
        "list",
        "chain",
        "bridge",
        TABLE,
        &format!("nic-{tap}"),
    ]))
    .is_ok();
    let mut s = format!("{}{}", base(), map_script(rest));
    if exists {
        s.push_str(&format!(
            "delete chain bridge {TABLE} nic-{tap}\ndelete counter bridge {TABLE} {}\n",
            counter(tap)
        ));
    }
    nft(&s)
}

/// Frames dropped for `tap` so far (None if it has no guard).
pub fn drops(tap: &str) -> Option<u64> {
    let out = crate::run(std::process::Command::new("nft").args([
        "-j",
        "list",
        "counter",
        "bridge",
        TABLE,
        &counter(tap),
    ]))
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["nftables"]
        .as_array()?
        .iter()
        .find_map(|o| o.get("counter"))
        .and_then(|c| c["packets"].as_u64())
}

/// Frames dropped so far for every guarded tap, by tap, in one `nft` call (the usage
/// counters read them all at each sample). Empty when there is no table.
pub fn all_drops() -> std::collections::HashMap<String, u64> {
    let Ok(out) = crate::run(
        std::process::Command::new("nft")
            .args(["-j", "list", "counters", "table", "bridge", TABLE]),
    ) else {
        return Default::default();
    };
    parse_counters(&out)
}

/// The `drop-TAP` counters' packets of `nft -j list counters` output, by tap.
fn parse_counters(json: &str) -> std::collections::HashMap<String, u64> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| {
            let c = o.get("counter")?;
            let tap = c["name"].as_str()?.strip_prefix("drop-")?;
            Some((tap.to_string(), c["packets"].as_u64()?))
        })
        .collect()
}

/// Removes the whole table (when the agent's last network goes).
pub fn remove_all() -> Result<()> {
    nft(&format!(
        "add table bridge {TABLE}\ndelete table bridge {TABLE}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counters_are_read_by_tap() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "bridge", "name": "drop-htp1", "table": "hostel",
              "handle": 3, "packets": 7, "bytes": 420}},
            {"counter": {"family": "bridge", "name": "other", "table": "hostel",
              "handle": 4, "packets": 1, "bytes": 1}}]}"#;
        let m = parse_counters(out);
        assert_eq!(m.len(), 1);
        assert_eq!(m["htp1"], 7);
        assert!(parse_counters("not json").is_empty());
    }

    #[test]
    fn chain_names_the_nics_own_addresses() {
        let g = Guard {
            tap: "htpabc".into(),
            mac: "52:54:00:01:02:03".into(),
            ipv4: "10.0.0.5".parse().unwrap(),
            ipv6: Some("fd00::5054:ff:fe01:203".parse().unwrap()),
            link_local: "fe80::5054:ff:fe01:203".parse().unwrap(),
            rate_mbps: None,
        };
        let s = chain_script(&g);
        assert!(!s.contains("limit rate"));
        let limited = chain_script(&Guard {
            rate_mbps: Some(8),
            ..g.clone()
        });
        let first = limited.lines().find(|l| l.starts_with("add rule")).unwrap();
        assert!(
            first.ends_with("nic-htpabc limit rate over 976 kbytes/second burst 97 kbytes drop"),
            "{first}"
        );
        assert!(s.contains("ether saddr != 52:54:00:01:02:03 counter name \"drop-htpabc\" drop"));
        assert!(s.contains("arp saddr ip != { 10.0.0.5, 0.0.0.0 }"));
        assert!(s.contains("ip saddr != 10.0.0.5 counter"));
        assert!(s.contains("fe80::5054:ff:fe01:203, ::, fd00::5054:ff:fe01:203"));
        assert!(s.contains(
            "nd-neighbor-advert @th,64,128 != { 0xfe80000000000000505400fffe010203, \
             0xfd00000000000000505400fffe010203 }"
        ));
        let m = map_script(std::slice::from_ref(&g));
        assert!(m.contains("\"htpabc\" : jump nic-htpabc"));
        assert_eq!(map_script(&[]), "flush map bridge hostel nics\n");
    }
}
