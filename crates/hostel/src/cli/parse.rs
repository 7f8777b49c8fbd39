//! clap value parsers: a bad size, policy, firmware, mode, VM state, duration or port
//! forward fails while the command line is parsed, and clap names the flag in front of
//! the model's message
//! (`invalid value '12X' for '--memory <MEMORY>': "12X" is not a size: ...`).

use hostel_api::public::{Firmware, PortForwardRequest};
use hostel_model::net::NetMode;
use hostel_model::{Invalid, Policy, VmState};

/// A value refused by one of these parsers. Such values were checked after parsing
/// before clap did it, and exited 1; `main` keeps that exit status for them.
#[derive(Debug)]
pub struct BadValue(pub String);

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadValue {}

/// The model's message without its field name: clap's prefix names the flag.
fn bad(e: Invalid) -> BadValue {
    BadValue(e.message)
}

/// A size such as 512M, 2G or 20GiB, in whole MiB.
pub fn size_mib(s: &str) -> Result<u64, BadValue> {
    hostel_model::parse_size_mib("size", s).map_err(bad)
}

/// A limit's change: a new value, or `none` (no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Set(u64),
    None,
}

/// A count (`100`) or `none`.
pub fn limit_count(s: &str) -> Result<Limit, BadValue> {
    if s == "none" {
        return Ok(Limit::None);
    }
    match s.parse::<u64>() {
        Ok(n) => Ok(Limit::Set(n)),
        Err(_) => Err(BadValue(format!(
            "{s:?} is not a number: give a whole number, or none to remove the limit"
        ))),
    }
}

/// A rate in bytes per second: a size a second (`4M` is 4 MiB/s, `512K`, a bare number
/// is MiB), or `none`.
pub fn limit_rate(s: &str) -> Result<Limit, BadValue> {
    if s == "none" {
        return Ok(Limit::None);
    }
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| {
        BadValue(format!(
            "{s:?} is not a rate: give bytes per second as 512K, 4M or 1G, or none"
        ))
    })?;
    let mult = match unit
        .trim_end_matches("/s")
        .trim_end_matches("iB")
        .trim_end_matches('B')
    {
        "" | "M" | "m" => 1 << 20,
        "K" | "k" => 1 << 10,
        "G" | "g" => 1 << 30,
        _ => {
            return Err(BadValue(format!(
                "{s:?} is not a rate: give bytes per second as 512K, 4M or 1G, or none"
            )))
        }
    };
    Ok(Limit::Set(n * mult))
}

/// What happens on power-off, reboot or crash: destroy or restart.
pub fn policy(s: &str) -> Result<Policy, BadValue> {
    Policy::parse("policy", s).map_err(bad)
}

pub fn firmware(s: &str) -> Result<Firmware, BadValue> {
    match s {
        "bios" => Ok(Firmware::Bios),
        "uefi" => Ok(Firmware::Uefi),
        other => Err(BadValue(format!(
            "{other:?} is not a firmware: use bios or uefi"
        ))),
    }
}

/// A network's mode: nat or bridged.
pub fn net_mode(s: &str) -> Result<NetMode, BadValue> {
    NetMode::parse("mode", s).map_err(bad)
}

/// A VM state, with the controller's words for a wrong one.
pub fn vm_state(s: &str) -> Result<VmState, BadValue> {
    VmState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
        BadValue(format!(
            "{s:?} is not a VM state: use one of {}",
            names.join(", ")
        ))
    })
}

/// A duration in whole seconds: a number of seconds, or one with a unit (90s, 5m, 1h).
/// A plain `String` error, not [`BadValue`]: these flags were clap integers before, and
/// a bad one exits 2 as it did.
pub fn secs(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit {
        "" | "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        _ => None,
    };
    match (num.parse::<u64>(), mult) {
        (Ok(n), Some(m)) => n
            .checked_mul(m)
            .ok_or_else(|| format!("{s:?} is too long a duration")),
        _ => Err(format!(
            "{s:?} is not a duration: write seconds, or a whole number with a unit, like 90, \
             90s, 5m or 1h"
        )),
    }
}

/// A port forward as written (for messages) and as the API takes it.
#[derive(Clone, Debug)]
pub struct Forward {
    pub text: String,
    pub request: PortForwardRequest,
}

/// HOSTPORT:GUESTPORT[/tcp|udp]; the protocol is tcp when left out.
pub fn forward(spec: &str) -> Result<Forward, BadValue> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_string()),
        None => (spec, "tcp".to_string()),
    };
    let bad = || {
        BadValue(format!(
            "{spec:?} is not a port forward: write HOSTPORT:GUESTPORT[/tcp|udp], like 8080:80/tcp"
        ))
    };
    let (h, g) = ports.split_once(':').ok_or_else(bad)?;
    Ok(Forward {
        text: spec.to_string(),
        request: PortForwardRequest {
            host_port: h.parse().map_err(|_| bad())?,
            guest_port: g.parse().map_err(|_| bad())?,
            proto,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size_mib("512M").unwrap(), 512);
        assert_eq!(size_mib("2G").unwrap(), 2048);
        assert_eq!(size_mib("64").unwrap(), 64);
        let e = size_mib("12X").unwrap_err().to_string();
        assert!(
            e.contains("\"12X\" is not a size") && e.contains("512M"),
            "{e}"
        );
        let e = size_mib("1.5M").unwrap_err().to_string();
        assert!(e.contains("not a whole number of MiB"), "{e}");
    }

    #[test]
    fn enums() {
        assert_eq!(policy("restart").unwrap(), Policy::Restart);
        let e = policy("reboot").unwrap_err().to_string();
        assert!(
            e.contains("\"reboot\" is not a policy") && e.contains("destroy"),
            "{e}"
        );
        assert_eq!(firmware("uefi").unwrap(), Firmware::Uefi);
        let e = firmware("efi").unwrap_err().to_string();
        assert!(e.contains("use bios or uefi"), "{e}");
        assert_eq!(net_mode("bridged").unwrap(), NetMode::Bridged);
        assert!(net_mode("routed").unwrap_err().to_string().contains("nat"));
        assert_eq!(vm_state("shutting-down").unwrap(), VmState::ShuttingDown);
        let e = vm_state("sleeping").unwrap_err().to_string();
        assert!(
            e.contains("\"sleeping\" is not a VM state: use one of stopped"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(secs("60").unwrap(), 60);
        assert_eq!(secs("90s").unwrap(), 90);
        assert_eq!(secs("5m").unwrap(), 300);
        assert_eq!(secs("1h").unwrap(), 3600);
        for bad in ["", "m", "1.5m", "10d", "-1"] {
            assert!(secs(bad).unwrap_err().contains("not a duration"), "{bad}");
        }
    }

    #[test]
    fn forwards() {
        let f = forward("8080:80").unwrap();
        assert_eq!(
            (
                f.request.host_port,
                f.request.guest_port,
                f.request.proto.as_str()
            ),
            (8080, 80, "tcp")
        );
        assert_eq!(forward("53:53/udp").unwrap().request.proto, "udp");
        let e = forward("8080").unwrap_err().to_string();
        assert!(e.contains("HOSTPORT:GUESTPORT"), "{e}");
    }
}
