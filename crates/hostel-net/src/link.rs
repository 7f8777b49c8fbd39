//! Bridges and link settings through iproute2.

use crate::run;
use anyhow::Result;
use std::process::Command;

pub fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Makes sure the bridge exists, carries `addr` (e.g. `10.20.0.1/24`) and is up.
pub fn ensure_bridge(name: &str, addr: Option<&str>) -> Result<()> {
    if !exists(name) {
        run(Command::new("ip").args(["link", "add", name, "type", "bridge"]))?;
    }
    if let Some(addr) = addr {
        let shown = run(Command::new("ip").args(["-o", "addr", "show", "dev", name]))?;
        if !shown.contains(&format!(" {addr} ")) {
            run(Command::new("ip").args(["addr", "replace", addr, "dev", name]))?;
        }
    }
    run(Command::new("ip").args(["link", "set", name, "up"]))?;
    Ok(())
}

pub fn add_ipv6(dev: &str, addr: &str) -> Result<()> {
    run(Command::new("ip").args(["-6", "addr", "replace", addr, "dev", dev, "nodad"]))?;
    Ok(())
}

/// Puts `port` on `bridge` and brings it up.
pub fn attach(port: &str, bridge: &str) -> Result<()> {
    run(Command::new("ip").args(["link", "set", port, "master", bridge, "up"]))?;
    Ok(())
}

/// Shapes what `dev` sends (for a VM's tap: what its guest receives) to `mbps` Mbit/s
/// with a token bucket filter, or lifts the shaping (none).
pub fn shape(dev: &str, mbps: Option<u32>) -> Result<()> {
    match mbps {
        Some(m) => {
            // The bucket holds at least a tenth of a second at the rate (and 32 KiB), as
            // the timer's granularity wants.
            let burst = (u64::from(m) * 1_000_000 / 8 / 10).max(32 * 1024);
            run(Command::new("tc").args([
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                &format!("{m}mbit"),
                "burst",
                &burst.to_string(),
                "latency",
                "100ms",
            ]))?;
        }
        None => {
            // Nothing to lift is no error.
            let _ = run(Command::new("tc").args(["qdisc", "del", "dev", dev, "root"]));
        }
    }
    Ok(())
}

pub fn delete(name: &str) -> Result<()> {
    if exists(name) {
        run(Command::new("ip").args(["link", "del", name]))?;
    }
    Ok(())
}

/// Turns on IPv4 forwarding, which NAT needs (in the agent's network namespace).
/// Returns true if it was off: Hostel turned it on, so the filter forwards only VM
/// traffic and the host does not become a router for its other interfaces.
pub fn enable_forwarding() -> Result<bool> {
    const KNOB: &str = "/proc/sys/net/ipv4/ip_forward";
    let was_on = std::fs::read_to_string(KNOB)?.trim() == "1";
    if !was_on {
        std::fs::write(KNOB, "1")?;
    }
    Ok(!was_on)
}
