//! VM networking inside the test's own network namespace: DHCP and DNS from the
//! database, port guards against spoofing, bad input, and clean removal.

mod common;
use common::*;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

/// A process of the test's, ended when the test ends (pass or fail).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dhcp_dns_guards_and_cleanup() {
    let d = Daemon::start();
    let nets = d.json(&["network", "list"]);
    assert_eq!(
        nets[0]["name"], "default",
        "hostel up creates a default network: {nets}"
    );
    assert_eq!(nets[0]["mode"], "nat");

    d.ok(&[
        "network",
        "create",
        "lab",
        "--cidr",
        "10.77.0.0/24",
        "--domain",
        "lab.test",
        "--ipv6",
        "fd00:77::/64",
    ]);
    let lab = d.json(&["network", "describe", "lab"]);
    let bridge = lab["bridge"].as_str().unwrap().to_string();
    let lab_id = std::fs::read_dir(d.data_dir().join("net"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|id| {
            std::fs::read_to_string(d.data_dir().join("net").join(id).join("dnsmasq.conf"))
                .map(|c| c.contains(&format!("interface={bridge}")))
                .unwrap_or(false)
        })
        .expect("the lab network's dnsmasq files");
    let links = String::from_utf8(
        d.ns.cmd("ip")
            .args(["link", "show", &bridge])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(links.contains(&bridge), "the bridge exists: {links}");

    // Bad input changes nothing.
    let err = d.fails(&["network", "create", "clash", "--cidr", "10.77.0.128/25"]);
    assert!(err.contains("overlaps network \"lab\""), "{err}");
    let err = d.fails(&[
        "create",
        "x",
        "--image",
        "tiny",
        "--network",
        "lab",
        "--ip",
        "10.78.0.5",
    ]);
    assert!(err.contains("outside the network"), "{err}");
    let err = d.fails(&[
        "create",
        "x",
        "--image",
        "tiny",
        "--network",
        "lab",
        "--ip",
        "10.77.0.1",
    ]);
    assert!(err.contains("gateway"), "{err}");
    let err = d.fails(&["create", "x", "--image", "tiny", "--network", "nosuch"]);
    assert!(err.contains("no network named"), "{err}");

    d.ok(&[
        "create",
        "alpha",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--network",
        "lab",
        "--ip",
        "10.77.0.10",
    ]);
    let err = d.fails(&[
        "create",
        "x",
        "--image",
        "tiny",
        "--network",
        "lab",
        "--ip",
        "10.77.0.10",
    ]);
    assert!(err.contains("already taken"), "{err}");
    let alpha_mac = d.describe("alpha")["nics"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let err = d.fails(&[
        "create",
        "x",
        "--image",
        "tiny",
        "--network",
        "lab",
        "--mac",
        &alpha_mac,
    ]);
    assert!(err.contains("already used"), "{err}");
    assert_eq!(
        d.json(&["list"]).as_array().unwrap().len(),
        1,
        "no half-created VM"
    );
    let err = d.fails(&["network", "delete", "lab"]);
    assert!(err.contains("in use by alpha"), "{err}");

    d.ok(&[
        "create",
        "beta",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--network",
        "lab",
    ]);
    let beta = d.describe("beta");
    let beta_ip = beta["nics"][0]["ip"].as_str().unwrap().to_string();
    assert_eq!(beta_ip, "10.77.0.2", "the lowest free address");
    assert_eq!(beta["nics"][0]["dns_name"], "beta.lab.test");

    let mut a = d.console("alpha").await;
    a.wait_for(READY, BOOT).await;
    let mut b = d.console("beta").await;
    b.wait_for(READY, BOOT).await;
    a.wait_until(
        "ip -4 addr show eth0",
        |o| o.contains("10.77.0.10/24"),
        "alpha's DHCP lease",
    )
    .await;
    b.wait_until(
        "ip -4 addr show eth0",
        |o| o.contains("10.77.0.2/24"),
        "beta's DHCP lease",
    )
    .await;
    let out = a.run("nslookup beta.lab.test").await;
    assert!(out.contains(&beta_ip), "DNS from the database: {out}");
    let out = a.run("nslookup alpha.lab.test").await;
    assert!(out.contains("10.77.0.10"), "{out}");
    let out = a.run(&format!("nslookup {beta_ip}")).await;
    assert!(out.contains("beta.lab.test"), "PTR records: {out}");
    let out = a
        .run("nslookup nosuch.lab.test >/dev/null 2>&1; echo rc=$?")
        .await;
    assert!(out.ends_with("rc=1"), "unknown names do not resolve: {out}");
    let out = a
        .run(&format!("ping -c 2 -W 5 {beta_ip} >/dev/null; echo rc=$?"))
        .await;
    assert!(out.ends_with("rc=0"), "alpha reaches beta: {out}");

    // IPv6: the address SLAAC derives from the MAC, and nothing else.
    let alpha6 = d.describe("alpha")["nics"][0]["ipv6"]
        .as_str()
        .unwrap()
        .to_string();
    let beta6 = d.describe("beta")["nics"][0]["ipv6"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(alpha6.starts_with("fd00:77::"), "{alpha6}");
    a.wait_until(
        "ip -6 addr show eth0",
        |o| o.contains(&alpha6) && !o.contains("tentative"),
        "alpha's SLAAC address",
    )
    .await;
    b.wait_until(
        "ip -6 addr show eth0",
        |o| o.contains(&beta6) && !o.contains("tentative"),
        "beta's SLAAC address",
    )
    .await;
    let out = a
        .run(&format!("ping -c 2 -W 5 {beta6} >/dev/null; echo rc=$?"))
        .await;
    assert!(out.ends_with("rc=0"), "alpha reaches beta over IPv6: {out}");
    let out = a.run("nslookup -type=AAAA beta.lab.test").await;
    assert!(out.contains(&beta6), "AAAA records: {out}");

    // Spoofing another address is cut off and counted; going back restores it.
    let before = d.json(&["nic", "list", "alpha"])[0]["drops"]
        .as_u64()
        .unwrap();
    a.run("ip addr del 10.77.0.10/24 dev eth0; ip addr add 10.77.0.99/24 dev eth0")
        .await;
    let out = a
        .run(&format!("ping -c 2 -W 2 {beta_ip} >/dev/null; echo rc=$?"))
        .await;
    assert!(out.ends_with("rc=1"), "a spoofed source is dropped: {out}");
    let after = d.json(&["nic", "list", "alpha"])[0]["drops"]
        .as_u64()
        .unwrap();
    assert!(
        after > before,
        "the drop counter rises ({before} -> {after})"
    );
    a.run("ip addr del 10.77.0.99/24 dev eth0; ip addr add 10.77.0.10/24 dev eth0")
        .await;
    let out = a
        .run(&format!("ping -c 2 -W 5 {beta_ip} >/dev/null; echo rc=$?"))
        .await;
    assert!(out.ends_with("rc=0"), "its own address works again: {out}");

    // So is another MAC.
    let before = after;
    a.run("ip link set eth0 address 52:54:00:de:ad:01").await;
    let out = a
        .run(&format!("ping -c 2 -W 2 {beta_ip} >/dev/null; echo rc=$?"))
        .await;
    assert!(out.ends_with("rc=1"), "a spoofed MAC is dropped: {out}");
    let after = d.json(&["nic", "list", "alpha"])[0]["drops"]
        .as_u64()
        .unwrap();
    assert!(
        after > before,
        "the drop counter rises ({before} -> {after})"
    );
    a.run(&format!("ip link set eth0 address {alpha_mac}"))
        .await;
    let out = a
        .run(&format!("ping -c 2 -W 5 {beta_ip} >/dev/null; echo rc=$?"))
        .await;
    assert!(out.ends_with("rc=0"), "its own MAC works again: {out}");

    // A bridged network puts its uplink on the bridge.
    assert!(d
        .ns
        .cmd("ip")
        .args(["link", "add", "up0", "type", "veth", "peer", "name", "up0p"])
        .status()
        .unwrap()
        .success());
    let err = d.fails(&[
        "network",
        "create",
        "flat",
        "--cidr",
        "10.79.0.0/24",
        "--mode",
        "bridged",
    ]);
    assert!(err.contains("--uplink"), "{err}");
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
    let flat_bridge = d.json(&["network", "describe", "flat"])["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    let up0 = String::from_utf8(
        d.ns.cmd("ip")
            .args(["-o", "link", "show", "up0"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(up0.contains(&format!("master {flat_bridge}")), "{up0}");
    d.ok(&["network", "delete", "flat"]);

    // The agent supervises dnsmasq: killed, it comes back.
    let dnsmasq_pid = |d: &Daemon| {
        d.ns.pids().into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .map(|c| c.contains("dnsmasq") && c.contains(&lab_id))
                .unwrap_or(false)
        })
    };
    let old = dnsmasq_pid(&d).expect("the lab network's dnsmasq runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match dnsmasq_pid(&d) {
            Some(p) if p != old => break,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "dnsmasq was not restarted"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Deleting VMs and the network leaves nothing behind.
    for vm in ["alpha", "beta"] {
        d.ok(&["destroy", vm]);
        d.ok(&["delete", vm]);
    }
    d.ok(&["network", "delete", "lab"]);
    let links =
        String::from_utf8(d.ns.cmd("ip").args(["-o", "link"]).output().unwrap().stdout).unwrap();
    assert!(
        !links.contains(&bridge) && !links.contains("htp"),
        "{links}"
    );
    let rules = String::from_utf8(
        d.ns.cmd("nft")
            .args(["list", "ruleset"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!rules.contains("chain nic-"), "{rules}");
    let net_dirs = file_names(&d.data_dir().join("net"));
    assert_eq!(
        net_dirs.len(),
        1,
        "only the default network's files remain: {net_dirs:?}"
    );
    let dnsmasqs =
        d.ns.pids()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| c.trim() == "dnsmasq")
                    .unwrap_or(false)
            })
            .count();
    assert_eq!(dnsmasqs, 1, "only the default network's dnsmasq runs");
}

/// A VM on the default NAT network: a port forward reaches its web server from another
/// host (a second namespace), a NIC is hot-plugged and unplugged, and a daemon restart
/// keeps connectivity and guards.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_hotplug_and_restart() {
    let mut d = Daemon::start();
    d.ok(&["create", "web", "--image", "tiny", "--memory", "128M"]);
    let nic = d.describe("web")["nics"][0].clone();
    assert_eq!(
        nic["network"], "default",
        "a new VM gets a NIC on the default network"
    );
    let ip = nic["ip"].as_str().unwrap().to_string();
    let mut c = d.console("web").await;
    c.wait_for(READY, BOOT).await;
    c.wait_until(
        "ip -4 addr show eth0",
        |o| o.contains(&format!("{ip}/24")),
        "DHCP on default",
    )
    .await;
    c.run(
        "mkdir -p /tmp/www && echo served-by-web > /tmp/www/index.html && httpd -p 80 -h /tmp/www",
    )
    .await;

    // Another host: a namespace linked to the Hostel host by a veth pair.
    let client = Netns::new();
    let veth_host = format!("hv{}", std::process::id() % 100000);
    let ok =
        d.ns.cmd("ip")
            .args([
                "link",
                "add",
                &veth_host,
                "type",
                "veth",
                "peer",
                "name",
                "eth9",
                "netns",
                &client.name,
            ])
            .status()
            .unwrap();
    assert!(ok.success());
    for (ns, dev, addr) in [
        (&d.ns, veth_host.as_str(), "192.0.2.1/24"),
        (&client, "eth9", "192.0.2.2/24"),
    ] {
        assert!(ns
            .cmd("ip")
            .args(["addr", "add", addr, "dev", dev])
            .status()
            .unwrap()
            .success());
        assert!(ns
            .cmd("ip")
            .args(["link", "set", dev, "up"])
            .status()
            .unwrap()
            .success());
    }

    let err = d.fails(&["port-forward", "add", "web", "8080"]);
    assert!(err.contains("HOSTPORT:GUESTPORT"), "{err}");
    d.ok(&["port-forward", "add", "web", "8080:80/tcp"]);
    let err = d.fails(&["port-forward", "add", "web", "8080:81"]);
    assert!(err.contains("already forwarded"), "{err}");
    // A host port a host service listens on is not taken (Hostel's own are reserved
    // outright: tests/isolation.rs).
    let service = std::process::Command::new("ip")
        .args([
            "netns", "exec", &d.ns.name, "busybox", "httpd", "-f", "-p", "8090", "-h", "/",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let service = KillOnDrop(service);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.ns.try_connect("127.0.0.1:8090").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "httpd on 8090 did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = d.fails(&["port-forward", "add", "web", "8090:80"]);
    assert!(err.contains("in use by a service on the host"), "{err}");
    drop(service);
    let list = d.json(&["port-forward", "list", "web"]);
    assert_eq!(list[0]["host_port"], 8080);
    let fetch = |client: &Netns| client.http_body("192.0.2.1:8080");
    assert_eq!(
        fetch(&client).trim(),
        "served-by-web",
        "the forward reaches the guest"
    );

    // Hot-plug a second NIC on another network and unplug it again.
    d.ok(&["network", "create", "side", "--cidr", "10.78.0.0/24"]);
    d.ok(&[
        "nic",
        "add",
        "web",
        "--network",
        "side",
        "--ip",
        "10.78.0.5",
    ]);
    c.wait_until(
        "ip -4 addr show eth1",
        |o| o.contains("10.78.0.5/24"),
        "hot-plugged NIC",
    )
    .await;
    let nics = d.json(&["nic", "list", "web"]);
    assert_eq!(nics.as_array().unwrap().len(), 2);
    let state_file = d.dir.path().join("web.state");
    let err = d.fails(&["save", "web", state_file.to_str().unwrap()]);
    assert!(
        err.contains("hostel reboot"),
        "a hot-plugged VM is not saved: {err}"
    );
    assert!(!state_file.exists());
    let mac = nics[1]["mac"].as_str().unwrap().to_string();
    d.ok(&["nic", "remove", "web", &mac]);
    c.wait_until(
        "ls /sys/class/net",
        |o| !o.contains("eth1"),
        "unplugged NIC",
    )
    .await;
    assert_eq!(d.json(&["nic", "list", "web"]).as_array().unwrap().len(), 1);
    d.ok(&["network", "delete", "side"]);

    // The daemon dies and comes back: connectivity and guards stay.
    d.kill9();
    assert_eq!(
        fetch(&client).trim(),
        "served-by-web",
        "VMs keep their network without the daemon"
    );
    d.launch();
    assert_eq!(fetch(&client).trim(), "served-by-web");
    let drops = d.json(&["nic", "list", "web"])[0]["drops"].clone();
    assert!(drops.is_u64(), "the guard is still there: {drops}");

    d.ok(&["port-forward", "remove", "web", "8080:80/tcp"]);
    assert_eq!(
        fetch(&client).trim(),
        "",
        "a removed forward no longer reaches the guest"
    );
    d.ok(&["destroy", "web"]);
}
