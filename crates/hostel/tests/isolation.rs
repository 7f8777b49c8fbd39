//! Host and tenant isolation, with real guests: what a VM can reach from its network by
//! default (DHCP, DNS, the world through NAT) and what it cannot (the host's services,
//! the host's LAN, another network, link-local metadata), what an admin may open per
//! network, who may attach to a bridged network, and port forwards that never take
//! Hostel's own ports. Every address involved belongs to a namespace this test makes:
//! the host's LAN neighbour (192.0.2.2), a server beyond it (203.0.113.10, "the
//! world") and a metadata server (169.254.169.254).

mod common;
use common::*;
use std::process::Stdio;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

fn sh(ns: &Netns, cmd: &str) {
    let ok = ns.cmd("sh").args(["-c", cmd]).status().unwrap();
    assert!(ok.success(), "in {}: {cmd}", ns.name);
}

/// A busybox web server inside `ns`, answering `body` on `addr`; ended with the test.
struct Httpd {
    child: std::process::Child,
    /// Holds the served file until the server ends.
    _dir: tempfile::TempDir,
}

impl Httpd {
    fn start(ns: &Netns, addr: &str, body: &str) -> Httpd {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), body).unwrap();
        let child = ns
            .cmd("busybox")
            .args(["httpd", "-f", "-p", addr, "-h"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Ready when it accepts a connection (from inside its namespace).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ns.try_connect(addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "httpd on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Httpd { child, _dir: dir }
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /` from the guest with busybox `nc` (its static `wget` crashes): the body, or
/// "FAILED" if no answer came within 3 s.
async fn fetch(c: &mut Console, url: &str) -> String {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let (host, port) = addr.split_once(':').unwrap_or((addr, "80"));
    let out = c
        .run(&format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port} 2>/dev/null | tail -n 1"
        ))
        .await;
    if out.is_empty() {
        "FAILED".into()
    } else {
        out
    }
}

/// A veth pair from the daemon's namespace to `peer`, with an address on each end.
fn link(d: &Daemon, host_if: &str, host_addr: &str, peer: &Netns, peer_addr: &str) {
    sh(
        &d.ns,
        &format!(
            "ip link add {host_if} type veth peer name eth0 netns {} && \
             ip addr add {host_addr} dev {host_if} && ip link set {host_if} up",
            peer.name
        ),
    );
    sh(
        peer,
        &format!("ip addr add {peer_addr} dev eth0 && ip link set eth0 up"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_reach_only_what_their_network_allows() {
    let d = Daemon::start();
    let tag = std::process::id() % 100000;

    // The host's LAN: a neighbour that also routes to "the world" (a /32 on its lo).
    let lan = Netns::new();
    link(
        &d,
        &format!("hl{tag}"),
        "192.0.2.1/24",
        &lan,
        "192.0.2.2/24",
    );
    sh(&lan, "ip addr add 203.0.113.10/32 dev lo");
    sh(&d.ns, "ip route add 203.0.113.0/24 via 192.0.2.2");
    // A cloud's metadata service, on a link of its own.
    let meta = Netns::new();
    link(
        &d,
        &format!("hm{tag}"),
        "169.254.169.1/16",
        &meta,
        "169.254.169.254/16",
    );
    let _neighbour = Httpd::start(&lan, "192.0.2.2:80", "lan-neighbour");
    let _world = Httpd::start(&lan, "203.0.113.10:80", "the-world");
    let _metadata = Httpd::start(&meta, "169.254.169.254:80", "metadata-secret");
    // A host service listening on every address, as sshd or PostgreSQL would.
    let _host_service = Httpd::start(&d.ns, "0.0.0.0:9999", "host-service");

    d.ok(&["network", "create", "other", "--cidr", "10.88.0.0/24"]);
    d.ok(&["create", "a", "--image", "tiny", "--memory", "128M"]);
    d.ok(&[
        "create",
        "b",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--network",
        "other",
    ]);
    let a_ip = d.describe("a")["nics"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let b_ip = d.describe("b")["nics"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let gateway = d.json(&["network", "describe", "default"])["gateway"]
        .as_str()
        .unwrap()
        .to_string();

    let mut b = d.console("b").await;
    b.wait_for(READY, BOOT).await;
    let mut a = d.console("a").await;
    a.wait_for(READY, BOOT).await;
    a.wait_until(
        "ip -4 addr show eth0",
        |o| o.contains(&format!("{a_ip}/24")),
        "a's DHCP lease",
    )
    .await;
    b.wait_until(
        "ip -4 addr show eth0",
        |o| o.contains(&format!("{b_ip}/24")),
        "b's DHCP lease",
    )
    .await;

    // What a guest still gets: DNS from the host, and the world through NAT.
    let out = a.run("nslookup a.vm.hostel").await;
    assert!(out.contains(&a_ip), "DNS from the host: {out}");
    assert_eq!(fetch(&mut a, "http://203.0.113.10/").await, "the-world");

    // What it does not get, each beside proof that the thing is there and answers.
    for (what, addr) in [
        (
            "a host service through the gateway",
            format!("{gateway}:9999"),
        ),
        (
            "a host service on the host's LAN address",
            "192.0.2.1:9999".into(),
        ),
        ("the host's LAN", "192.0.2.2:80".into()),
        ("link-local metadata", "169.254.169.254:80".into()),
    ] {
        assert!(
            !d.ns.http_body(&addr).is_empty(),
            "{what}: the host itself reaches {addr}"
        );
        assert_eq!(
            fetch(&mut a, &format!("http://{addr}/")).await,
            "FAILED",
            "{what} ({addr}) is out of a guest's reach"
        );
    }
    let ping = |ip: &str| format!("ping -c 1 -W 2 {ip} >/dev/null 2>&1; echo rc=$?");
    assert!(
        b.run(&ping(&gateway)).await.ends_with("rc=1"),
        "another network's gateway is not b's to reach"
    );
    assert!(
        a.run(&ping(&b_ip)).await.ends_with("rc=1"),
        "a VM on another network is out of reach"
    );
    let drops: u64 = {
        let out = String::from_utf8(
            d.ns.cmd("nft")
                .args(["-j", "list", "counters", "table", "inet", "hostel_filter"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("counter"))
            .filter_map(|c| c["packets"].as_u64())
            .sum()
    };
    assert!(drops > 0, "the filter counted what it dropped");

    // Bad policies change nothing.
    let err = d.fails(&["network", "set", "default", "--host-ports", "tcp/0"]);
    assert!(err.contains("PROTO/PORT"), "{err}");
    let err = d.fails(&["network", "set", "default", "--allow-to", "169.254.0.0/16"]);
    assert!(err.contains("link-local"), "{err}");
    let err = d.fails(&["network", "set", "default", "--links", "nosuch"]);
    assert!(err.contains("no network named"), "{err}");
    let err = d.fails(&["network", "set", "default", "--links", "default"]);
    assert!(err.contains("reaches itself"), "{err}");

    // An admin opens one host port, one LAN address and one link; each works, and
    // nothing else opens with it.
    d.ok(&[
        "network",
        "set",
        "default",
        "--host-ports",
        "tcp/9999",
        "--allow-to",
        "192.0.2.2/32",
        "--links",
        "other",
    ]);
    assert_eq!(
        fetch(&mut a, &format!("http://{gateway}:9999/")).await,
        "host-service"
    );
    assert_eq!(fetch(&mut a, "http://192.0.2.2/").await, "lan-neighbour");
    assert!(
        a.run(&ping(&b_ip)).await.ends_with("rc=0"),
        "a linked network is reachable"
    );
    assert!(
        b.run(&ping(&a_ip)).await.ends_with("rc=0"),
        "a link opens both ways"
    );
    assert_eq!(
        d.json(&["network", "describe", "other"])["links"][0],
        "default",
        "both networks show the link"
    );
    assert_eq!(
        fetch(&mut b, &format!("http://{gateway}:9999/")).await,
        "FAILED",
        "host ports are per network"
    );
    assert_eq!(
        fetch(&mut a, "http://169.254.169.254/").await,
        "FAILED",
        "metadata stays closed"
    );
    d.ok(&["network", "set", "other", "--links", ""]);
    assert!(
        a.run(&ping(&b_ip)).await.ends_with("rc=1"),
        "the link is gone from both sides"
    );

    // A flushed ruleset does not leave guests unfiltered: the agent puts it back.
    sh(&d.ns, "nft flush ruleset");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tables = String::from_utf8(
            d.ns.cmd("nft")
                .args(["list", "tables"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        if tables.contains("hostel_filter") && tables.contains("bridge hostel") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the filter and the port guards were not put back: {tables}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        fetch(&mut a, "http://192.0.2.1:9999/").await,
        "FAILED",
        "the host stays closed after the rules came back"
    );
    assert_eq!(fetch(&mut a, "http://203.0.113.10/").await, "the-world");

    // The host's LAN is what its interfaces say now: a subnet added later is closed too.
    sh(&d.ns, &format!("ip addr add 198.51.100.1/24 dev hl{tag}"));
    sh(&lan, "ip addr add 198.51.100.2/24 dev eth0");
    let _new_lan = Httpd::start(&lan, "198.51.100.2:80", "new-lan");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rules = String::from_utf8(
            d.ns.cmd("nft")
                .args(["list", "table", "inet", "hostel_filter"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        if rules.contains("198.51.100.0/24") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the filter did not learn the host's new subnet: {rules}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.ns.http_body("198.51.100.2:80"), "new-lan");
    assert_eq!(
        fetch(&mut a, "http://198.51.100.2/").await,
        "FAILED",
        "a LAN subnet the host gained later is out of reach"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_keep_off_hostels_ports_and_bridged_networks_keep_their_list() {
    let d = Daemon::start();
    d.ok(&["create", "web", "--image", "tiny", "--memory", "128M"]);

    // The README's example, on a default install: 2222 is the SSH console gateway's.
    let ssh_port = d.ssh_port();
    let err = d.fails(&["port-forward", "add", "web", &format!("{ssh_port}:22")]);
    assert!(
        err.contains("reserved for Hostel's SSH console gateway") && err.contains("try "),
        "{err}"
    );
    let api_port = d.url.rsplit(':').next().unwrap().to_string();
    let err = d.fails(&["port-forward", "add", "web", &format!("{api_port}:22")]);
    assert!(err.contains("reserved for Hostel's API"), "{err}");
    let err = d.fails(&["port-forward", "add", "web", "8471:22"]);
    assert!(err.contains("reserved for Hostel's agent"), "{err}");
    assert!(d
        .json(&["port-forward", "list", "web"])
        .as_array()
        .unwrap()
        .is_empty());
    d.ok(&["port-forward", "add", "web", "10022:22"]);

    // A bridged network: only admins, and those on its attach list, put NICs on it;
    // only admins choose addresses there.
    sh(
        &d.ns,
        "ip link add up0 type veth peer name up0p && ip link set up0 up",
    );
    d.ok(&[
        "network",
        "create",
        "flat",
        "--cidr",
        "10.79.0.0/24",
        "--mode",
        "bridged",
        "--uplink",
        "up0",
    ]);
    let err = d.fails(&["network", "set", "flat", "--attach", "nobody-here"]);
    assert!(err.contains("no user or group named"), "{err}");
    let err = d.fails(&["network", "set", "default", "--attach", "admin"]);
    assert!(err.contains("bridged networks"), "{err}");
    d.ok(&["user", "create", "carol"]);
    let token = d
        .ok(&["token", "create", "t", "--user", "carol"])
        .trim()
        .to_string();
    let carol = d.dir.path().join("carol.toml");
    std::fs::write(&carol, format!("url = {:?}\ntoken = {token:?}\n", d.url)).unwrap();
    let as_carol = |args: &[&str]| {
        d.ns.cmd(bin())
            .args(args)
            .env("HOSTEL_CONFIG", &carol)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = as_carol(&["create", "cvm", "--image", "tiny", "--network", "flat"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("attach list"), "{err}");
    assert!(
        d.json(&["list"]).as_array().unwrap().len() == 1,
        "no half-created VM"
    );
    let o = as_carol(&["network", "set", "flat", "--attach", "carol"]);
    assert!(!o.status.success(), "only admins change a policy");
    d.ok(&["network", "set", "flat", "--attach", "carol"]);
    let o = as_carol(&[
        "create",
        "cvm",
        "--image",
        "tiny",
        "--network",
        "flat",
        "--ip",
        "10.79.0.1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("only admins choose IPs and MACs"),
        "a VM could claim the LAN's router: {err}"
    );
    let o = as_carol(&["create", "cvm", "--image", "tiny", "--network", "flat"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    d.ok(&["destroy", "cvm"]);
    d.ok(&["destroy", "web"]);
}
