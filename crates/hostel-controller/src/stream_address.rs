//! Where a migration stream goes: the address the source host's QEMU connects to, for
//! the first stream and for a post-copy resumed over a new one.

/// The address part of an agent's `https://ADDRESS:PORT`, where the host's QEMU listens
/// for a migration stream.
fn host_address(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let hostport = rest.split('/').next()?;
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => hostport
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(hostport),
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The address the source host sends a migration stream to: the target agent's, unless
/// that is a loopback address (the agent inside `hostel up`, reached by the controller on
/// its own machine), whose machine is then reached at the address it uses itself to
/// reach the source.
pub(crate) fn stream_address(target_url: &str, source_url: &str) -> Option<String> {
    let target = host_address(target_url)?;
    let loopback = target
        .parse::<std::net::IpAddr>()
        .map(|a| a.is_loopback())
        .unwrap_or(target == "localhost");
    if !loopback {
        return Some(target);
    }
    let source: std::net::IpAddr = host_address(source_url)?.parse().ok()?;
    if source.is_loopback() {
        // Both agents on this machine: loopback reaches the target.
        return Some(target);
    }
    let any: std::net::IpAddr = if source.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    // A datagram socket "connected" sends nothing; it only picks the route's address.
    let sock = std::net::UdpSocket::bind((any, 0)).ok()?;
    sock.connect((source, 9)).ok()?;
    let me = sock.local_addr().ok()?.ip();
    (!me.is_loopback()).then(|| me.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_addresses() {
        use super::host_address;
        assert_eq!(
            host_address("https://10.0.0.2:8471").as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            host_address("https://[fd00::2]:8471").as_deref(),
            Some("fd00::2")
        );
        assert_eq!(
            host_address("https://node2:8471/").as_deref(),
            Some("node2")
        );
        assert_eq!(host_address("http://x:1"), None);
    }

    #[test]
    fn stream_addresses() {
        use super::stream_address;
        let at = |t: &str, s: &str| stream_address(t, s);
        assert_eq!(
            at("https://10.0.0.2:1", "https://10.0.0.3:1").as_deref(),
            Some("10.0.0.2")
        );
        // Two agents on one machine.
        assert_eq!(
            at("https://127.0.0.1:1", "https://127.0.0.1:2").as_deref(),
            Some("127.0.0.1")
        );
    }
}
