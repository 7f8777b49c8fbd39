//! Usage statistics from a real QEMU: the agent's counters of a running tiny VM (CPU
//! time, memory, balloon, disk and network bytes and requests) move with what the guest
//! does, and the controller turns them into the points `hostel stats` shows (the hour,
//! the day), what `hostel top` lists, and what `/metrics` serves: each to those who may
//! see it only.

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
    let mut d = Daemon::unstarted();
    d.args
        .extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
    d.launch();
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
    assert!(
        wrote.disk_write_ops > booted.disk_write_ops,
        "write requests counted: {booted:?} then {wrote:?}"
    );
    // The balloon says the guest has its 128 MiB.
    assert_eq!(wrote.balloon_bytes, Some(128 << 20), "{wrote:?}");
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
    assert!(
        after.net_tx_packets >= before.net_tx_packets + 20,
        "20 pings are 20 packets or more: {before:?} then {after:?}"
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

    // The day: a point a minute (the minute under way, averaged so far).
    let day = d.json(&["stats", "meter", "--day"]);
    assert_eq!(day["interval_seconds"], 60, "{day}");
    assert!(!day["points"].as_array().unwrap().is_empty(), "{day}");
    let (status, body) = d.http_get("/api/v1/vms/meter/stats?range=week", Some(&d.token));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("hour") && body.contains("day"), "{body}");

    // `hostel top`: the running VM with its use; a stopped one without; nothing of
    // anyone else's for a stranger.
    d.ok(&[
        "create",
        "idle",
        "--image",
        "tiny",
        "--memory",
        "64M",
        "--no-start",
        "--no-network",
    ]);
    let top = d.json(&["top"]);
    let row = |name: &str| {
        top.as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap_or_else(|| panic!("{name} in top: {top}"))
            .clone()
    };
    assert!(
        row("meter")["last"]["cpu_percent"].as_f64().unwrap() > 0.0,
        "{top}"
    );
    assert!(row("idle")["last"].is_null(), "{top}");
    assert_eq!(top[0]["name"], "meter", "busiest first: {top}");
    let frame = d.ok(&["top", "--once"]);
    assert!(
        frame.contains("2 VMs, 1 running") && frame.contains("meter") && frame.contains('%'),
        "{frame}"
    );
    let stranger_cfg = d.dir.path().join("stranger.toml");
    std::fs::write(
        &stranger_cfg,
        format!("url = {:?}\ntoken = {:?}\n", d.url, token.trim()),
    )
    .unwrap();
    let theirs =
        d.ns.cmd(bin())
            .args(["top", "-o", "json"])
            .env("HOSTEL_CONFIG", &stranger_cfg)
            .output()
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&theirs.stdout).trim(), "[]");

    // /metrics: admins only on the API's address.
    let (status, _) = d.http_get("/metrics", None);
    assert_eq!(status, 401);
    let (status, _) = d.http_get("/metrics", Some(token.trim()));
    assert_eq!(status, 403);
    let (status, headers, text) = d.http_get_headers("/metrics", Some(&d.token));
    assert_eq!(status, 200, "{text}");
    assert!(headers.contains("text/plain; version=0.0.4"), "{headers}");
    let value = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let vm_labels = "{vm=\"meter\",owner=\"user:admin\",host=\"";
    assert!(value(&text, &format!("hostel_vm_cpu_seconds_total{vm_labels}")) > 0.0);
    assert!(
        value(
            &text,
            &format!("hostel_vm_disk_written_bytes_total{vm_labels}")
        ) >= (4 << 20) as f64
    );
    assert!(
        value(
            &text,
            &format!("hostel_vm_network_transmit_packets_total{vm_labels}")
        ) >= 20.0
    );
    assert_eq!(
        value(&text, &format!("hostel_vm_balloon_bytes{vm_labels}")),
        (128u64 << 20) as f64
    );
    assert!(
        value(
            &text,
            &format!("hostel_vm_memory_resident_bytes{vm_labels}")
        ) > 0.0
    );
    assert!(
        text.contains("hostel_vm_port_guard_drops_total{vm=\"meter\""),
        "{text}"
    );
    assert!(
        !text.contains("vm=\"idle\""),
        "a stopped VM has no counters: {text}"
    );
    assert_eq!(
        value(
            &text,
            "hostel_tasks{kind=\"image-build\",state=\"succeeded\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "hostel_vms{host=\""), 1.0, "{text}");
    assert!(value(&text, "hostel_host_memory_bytes{host=\"") > 0.0);
    assert_eq!(value(&text, "hostel_host_online{host=\""), 1.0);
    // The stranger's refused read of the stats was counted under its route.
    assert_eq!(
        value(
            &text,
            "hostel_api_requests_total{method=\"GET\",route=\"/api/v1/vms/{name}/stats\",status=\"404\"}"
        ),
        1.0
    );
    assert!(text.contains("hostel_api_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/vms/{name}/stats\",le=\"+Inf\"}"));
    // `hostel metrics` prints the same, for admins.
    assert!(d
        .ok(&["metrics"])
        .contains("# TYPE hostel_vm_cpu_seconds_total counter"));

    // The separate address serves /metrics without a token, and nothing else.
    let at = d.json(&["info"])["metrics_listen"]
        .as_str()
        .expect("hostel info names the metrics address")
        .to_string();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = d.ns.connect(&at);
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let open = get("/metrics");
    assert!(open.starts_with("HTTP/1.1 200"), "{open}");
    assert!(
        open.contains("hostel_vm_cpu_seconds_total{vm=\"meter\""),
        "{open}"
    );
    assert!(get("/api/v1/vms").starts_with("HTTP/1.1 404"));
}

/// `HOSTEL_LOG_FORMAT=json` (or `--log-format json`): the daemon logs one JSON object a
/// line, on stderr and in its log file, for journald and log shippers.
#[test]
fn the_daemon_logs_json_when_asked() {
    let mut d = Daemon::unstarted();
    d.env.push(("HOSTEL_LOG_FORMAT".into(), "json".into()));
    d.launch();
    d.ok(&["list"]);
    for (what, text) in [
        (
            "the log file",
            std::fs::read_to_string(d.data_dir().join("hostel.log")).unwrap(),
        ),
        ("stderr", d.daemon_output()),
    ] {
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
            .collect();
        assert!(lines.len() >= 3, "{what}: {text}");
        let ready = lines
            .iter()
            .find(|l| l["fields"]["message"] == "hostel is ready")
            .unwrap_or_else(|| panic!("{what}: no ready line in {text}"));
        assert_eq!(ready["level"], "INFO");
        assert!(ready["timestamp"].as_str().unwrap().starts_with("20"));
        assert!(ready["fields"]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://"));
        // Every line is JSON (a panic's text aside, none is expected here).
        assert!(
            text.lines()
                .all(|l| l.trim().is_empty() || l.starts_with('{')),
            "{what}: a line that is not JSON in {text}"
        );
    }
}
