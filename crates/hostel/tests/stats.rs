//! Usage statistics from a real QEMU: the agent's counters of a running tiny VM (CPU
//! time, memory, disk and network bytes) move with what the guest does, and the
//! controller turns them into the points `hostel stats` shows, to the VM's users only.

mod common;
use common::*;
use hostel_api::agent::{AgentApi, VmCounters};
use hostel_controller::agent_client::{AgentClient, ClientTls};
use std::time::{Duration, Instant};

/// The counters the daemon's own agent reports for `vm_id`, asked through the typed
/// client from inside the daemon's namespace with the controller's certificate (the
/// only one an agent accepts).
fn agent_counters(d: &Daemon, vm_id: &str) -> VmCounters {
    let url = d.json(&["host", "list"])[0]["url"]
        .as_str()
        .expect("the host's agent URL")
        .to_string();
    let pki = d.data_dir().join("pki");
    let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
    let tls = ClientTls {
        ca_pem: read("ca.pem"),
        cert_pem: read("controller-client.pem"),
        key_pem: read("controller-client.key"),
    };
    let ns = format!("/run/netns/{}", d.ns.name);
    let all = std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move { AgentClient::new(&url, &tls).unwrap().vm_stats().await })
    })
    .join()
    .unwrap()
    .expect("the agent answers VmStats");
    all.into_iter()
        .find(|c| c.id == vm_id)
        .unwrap_or_else(|| panic!("the agent does not count the running VM {vm_id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_vm_s_counters_follow_the_guest() {
    let d = Daemon::start();
    d.ok(&[
        "create", "meter", "--image", "tiny", "--memory", "128M", "--disk", "16M",
    ]);
    let vm = d.describe("meter");
    let id = vm["id"].as_str().unwrap().to_string();
    let mut c = d.console("meter").await;
    c.wait_for(READY, Duration::from_secs(180)).await;

    // A booted guest has used CPU time and holds memory, in the QEMU it was started in.
    let booted = agent_counters(&d, &id);
    assert!(booted.cpu_ns > 0 && booted.memory_bytes > 0, "{booted:?}");
    assert_eq!(Some(booted.pid as u64), vm["qemu"]["pid"].as_u64());

    // 4 MiB written, then 1 MiB read from a part of the disk nothing has cached.
    c.run("dd if=/dev/zero of=/dev/vda bs=64k count=64 conv=fsync 2>/dev/null; sync")
        .await;
    let wrote = agent_counters(&d, &id);
    assert!(
        wrote.disk_write_bytes >= booted.disk_write_bytes + (4 << 20),
        "4 MiB written: {booted:?} then {wrote:?}"
    );
    assert!(wrote.cpu_ns > booted.cpu_ns && wrote.at_ms > booted.at_ms);
    c.run("dd if=/dev/vda of=/dev/null bs=64k skip=128 count=16 2>/dev/null")
        .await;
    let read = agent_counters(&d, &id);
    assert!(
        read.disk_read_bytes >= wrote.disk_read_bytes + (1 << 20),
        "1 MiB read: {wrote:?} then {read:?}"
    );

    // Seen from the guest: 20 large pings sent into the void (beyond the NAT gateway,
    // nothing answers them but the odd ICMP error) are bytes sent, not received.
    c.wait_until(
        "ip -4 addr show eth0 | grep -c 'inet '",
        |o| o == "1",
        "a DHCP lease",
    )
    .await;
    let before = agent_counters(&d, &id);
    c.run("ping -c 20 -i 0.2 -s 1400 -W 1 192.0.2.77 >/dev/null 2>&1")
        .await;
    let after = agent_counters(&d, &id);
    let sent = after.net_tx_bytes - before.net_tx_bytes;
    let received = after.net_rx_bytes - before.net_rx_bytes;
    assert!(
        sent >= 20 * 1400 && received < sent,
        "the guest sent {sent} and received {received} bytes"
    );

    // The controller's sampler makes points of them: `hostel stats` shows one within
    // two intervals.
    let deadline = Instant::now() + Duration::from_secs(45);
    let stats = loop {
        let s = d.json(&["stats", "meter"]);
        if !s["points"].as_array().unwrap().is_empty() {
            break s;
        }
        assert!(Instant::now() < deadline, "no usage point in 45 s: {s}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(stats["interval_seconds"], 10);
    let p = stats["points"].as_array().unwrap().last().unwrap().clone();
    assert!(p["memory_bytes"].as_u64().unwrap() > 0, "{p}");
    assert!(p["cpu_percent"].as_f64().unwrap() > 0.0, "{p}");
    let table = d.ok(&["stats", "meter"]);
    assert!(table.contains("CPU") && table.contains(" from "), "{table}");

    // Someone else's VM has no statistics: it does not exist for them.
    d.ok(&["user", "create", "stranger"]);
    let token = d.ok(&["token", "create", "t", "--user", "stranger"]);
    let (status, body) = d.http_get("/api/v1/vms/meter/stats", Some(token.trim()));
    assert_eq!(status, 404, "{body}");
    let (status, _) = d.http_get("/api/v1/vms/meter/stats", Some(&d.token));
    assert_eq!(status, 200);
}
