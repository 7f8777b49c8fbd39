//! Resource limits on a real guest: a disk bandwidth cap holds the guest's `dd` to it
//! (within 10 %), a CPU cap holds its busy QEMU to it, a network rate shapes its tap and
//! polices its guard; set while it runs, kept for its next start (applied before its
//! first instruction), shown in `describe`; admins only.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// User plus system CPU seconds of process `pid`.
fn cpu_seconds(pid: u64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The share of one CPU QEMU `pid` used over `wall`.
fn cpu_share(pid: u64, wall: Duration) -> f64 {
    let (t0, c0) = (Instant::now(), cpu_seconds(pid));
    std::thread::sleep(wall);
    (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64()
}

/// The audit trail has `action` done.
fn audited(d: &Daemon, action: &str) {
    let audit = d.json(&["audit"]);
    let found = audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == action && e["result"] == "ok");
    assert!(found, "no {action} in {audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_the_guest_to_them() {
    let d = Daemon::start();
    d.ok(&[
        "create", "lim", "--image", "tiny", "--memory", "128M", "--disk", "64M",
    ]);
    let mut c = d.console("lim").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    assert_eq!(d.ok(&["limits", "lim"]).trim(), "no limits");

    // Only admins set limits.
    d.ok(&["user", "create", "ulla"]);
    d.ok(&["chown", "lim", "user:ulla"]);
    let token = d.ok(&["token", "create", "t", "--user", "ulla"]);
    let (status, body) = d.http_put(
        "/api/v1/vms/lim/limits",
        Some(token.trim()),
        r#"{"disk_bps": 4194304}"#,
    );
    assert_eq!(status, 403, "{body}");
    let bad = d.fails(&["limits", "lim", "--cpu-weight", "0"]);
    assert!(bad.contains("1 to 10,000"), "{bad}");

    // Disk: 24 MiB written and flushed, unlimited, then at 4 MiB/s.
    let write = "dd if=/dev/zero of=/dev/vda bs=1M count=24 conv=fsync 2>/dev/null; echo wrote";
    let t = Instant::now();
    assert_eq!(c.run(write).await, "wrote");
    let free = 24.0 / t.elapsed().as_secs_f64();
    d.ok(&["limits", "lim", "--disk-bps", "4M"]);
    let t = Instant::now();
    assert_eq!(c.run(write).await, "wrote");
    let capped = 24.0 / t.elapsed().as_secs_f64();
    eprintln!("disk: {free:.1} MiB/s unlimited, {capped:.2} MiB/s capped at 4");
    assert!(
        (3.6..=4.4).contains(&capped),
        "the guest wrote at {capped:.2} MiB/s under a 4 MiB/s cap (unlimited: {free:.1})"
    );
    assert!(
        free > 8.0,
        "unlimited, the guest wrote at only {free:.1} MiB/s"
    );

    // CPU: a busy guest's QEMU held to 30 % of one CPU.
    let pid = d.describe("lim")["qemu"]["pid"].as_u64().unwrap();
    c.run("(while :; do :; done) & echo $! > /tmp/busy; echo spinning")
        .await;
    let busy = cpu_share(pid, Duration::from_secs(3));
    d.ok(&["limits", "lim", "--cpu-max", "30"]);
    let held = cpu_share(pid, Duration::from_secs(5));
    eprintln!(
        "cpu: {:.0} % busy, {:.0} % capped at 30",
        busy * 100.0,
        held * 100.0
    );
    assert!(busy > 0.6, "the busy guest used only {:.0} %", busy * 100.0);
    assert!(
        (0.27..=0.33).contains(&held),
        "the capped guest used {:.1} % of a CPU, not 30 %",
        held * 100.0
    );
    c.run("kill $(cat /tmp/busy); echo stopped").await;

    // Network: the tap shaped, the guard policing, both lifted again.
    let tap = d.json(&["nic", "list", "lim"])[0]["tap"]
        .as_str()
        .unwrap()
        .to_string();
    d.ok(&["limits", "lim", "--net-mbps", "8"]);
    let qdisc = |d: &Daemon| {
        let o =
            d.ns.cmd("tc")
                .args(["qdisc", "show", "dev", &tap])
                .output()
                .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let chain = |d: &Daemon| {
        let o =
            d.ns.cmd("nft")
                .args(["list", "chain", "bridge", "hostel", &format!("nic-{tap}")])
                .output()
                .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(
        qdisc(&d).contains("tbf") && qdisc(&d).contains("rate 8Mbit"),
        "{}",
        qdisc(&d)
    );
    assert!(
        chain(&d).contains("limit rate over 976 kbytes/second"),
        "{}",
        chain(&d)
    );
    // Shown, and kept as a whole: the other limits stay.
    let shown = d.ok(&["limits", "lim"]);
    assert!(
        shown.contains("4.0 MiB/s each disk") && shown.contains("30% of one CPU"),
        "{shown}"
    );
    assert_eq!(d.describe("lim")["limits"]["net_mbps"], 8);
    d.ok(&["limits", "lim", "--net-mbps", "none"]);
    assert!(!qdisc(&d).contains("tbf"), "{}", qdisc(&d));
    assert!(!chain(&d).contains("limit rate"), "{}", chain(&d));

    // The next start applies them before the guest's first instruction: QEMU starts held
    // (-S), in its cgroup with its cap, and is then let run.
    drop(c);
    d.ok(&["destroy", "lim"]);
    d.ok(&["start", "lim"]);
    let vm = d.describe("lim");
    let argv: Vec<&str> = vm["qemu"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv.contains(&"-S"), "{argv:?}");
    let id = vm["id"].as_str().unwrap();
    let pid = vm["qemu"]["pid"].as_u64().unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("hostel/{id}")), "{cgroup}");
    let mut c = d.console("lim").await;
    c.wait_for(READY, Duration::from_secs(180)).await;
    // The shell up first (a command answered): its start is not timed.
    assert_eq!(c.run("echo up").await, "up");
    let t = Instant::now();
    assert_eq!(c.run(write).await, "wrote");
    let again = 24.0 / t.elapsed().as_secs_f64();
    assert!(
        (3.6..=4.4).contains(&again),
        "after a restart the guest wrote at {again:.2} MiB/s under a 4 MiB/s cap"
    );

    // Cleared: none left, and the audit trail has who set them.
    d.ok(&["limits", "lim", "--clear"]);
    assert_eq!(d.ok(&["limits", "lim"]).trim(), "no limits");
    audited(&d, "vm.limits");
    drop(c);
    d.ok(&["destroy", "lim"]);
    d.ok(&["delete", "lim"]);
}

/// Owners' defaults: a VM without limits of its own is held to its owner's, else to
/// everybody's; its own win; a change reaches running VMs at once and the next start;
/// users see theirs, only admins change them; a deleted user's go with them.
#[tokio::test(flavor = "multi_thread")]
async fn owners_default_limits_fill_in_where_a_vm_sets_none() {
    let d = Daemon::start();
    d.ok(&["user", "create", "dora"]);
    d.ok(&[
        "create", "dl", "--image", "tiny", "--memory", "128M", "--disk", "64M",
    ]);
    d.ok(&["chown", "dl", "user:dora"]);
    let tap = d.json(&["nic", "list", "dl"])[0]["tap"]
        .as_str()
        .unwrap()
        .to_string();
    let rate = |d: &Daemon| {
        let o =
            d.ns.cmd("tc")
                .args(["qdisc", "show", "dev", &tap])
                .output()
                .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "rate")
            .nth(1)
            .map(str::to_string)
    };
    assert_eq!(rate(&d), None);

    // Bad input names what is wrong and changes nothing.
    let bad = d.fails(&["default-limits", "user:nobody", "--net-mbps", "8"]);
    assert!(bad.contains("no user named \"nobody\""), "{bad}");
    let bad = d.fails(&["default-limits", "default", "--cpu-weight", "0"]);
    assert!(bad.contains("1 to 10,000"), "{bad}");

    // The owner's default reaches the running VM at once.
    let said = d.ok(&[
        "default-limits",
        "user:dora",
        "--net-mbps",
        "8",
        "--cpu-weight",
        "50",
    ]);
    assert!(said.contains("given at once to: dl"), "{said}");
    assert_eq!(rate(&d).as_deref(), Some("8Mbit"));
    let vm = d.describe("dl");
    assert_eq!(vm["limits"], serde_json::json!({}), "{vm}");
    assert_eq!(vm["limits_in_force"]["net_mbps"], 8, "{vm}");
    assert_eq!(vm["limits_in_force"]["cpu_weight"], 50, "{vm}");
    let shown = d.ok(&["limits", "dl"]);
    assert!(
        shown.contains("8 Mbit/s each way, each NIC (default)"),
        "{shown}"
    );

    // Everybody's fills in what the owner's leaves; the owner's wins over it.
    d.ok(&[
        "default-limits",
        "default",
        "--net-mbps",
        "16",
        "--disk-iops",
        "500",
    ]);
    let inforce = &d.describe("dl")["limits_in_force"];
    assert_eq!(inforce["net_mbps"], 8, "{inforce}");
    assert_eq!(inforce["disk_iops"], 500, "{inforce}");
    let all = d.json(&["default-limits"]);
    let owners: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["default", "user:dora"], "{all}");

    // The VM's own win, and when cleared the default holds it again.
    d.ok(&["limits", "dl", "--net-mbps", "4"]);
    assert_eq!(rate(&d).as_deref(), Some("4Mbit"));
    d.ok(&["limits", "dl", "--clear"]);
    assert_eq!(rate(&d).as_deref(), Some("8Mbit"));

    // Given to another owner, it is held to theirs (none here) at once; given back, to
    // dora's again.
    d.ok(&["chown", "dl", "user:admin"]);
    assert_eq!(rate(&d).as_deref(), Some("16Mbit"));
    d.ok(&["chown", "dl", "user:dora"]);
    assert_eq!(rate(&d).as_deref(), Some("8Mbit"));

    // Applied at the next start, before the first instruction.
    d.ok(&["destroy", "dl"]);
    d.ok(&["start", "dl"]);
    let tap_now = d.json(&["nic", "list", "dl"])[0]["tap"].clone();
    assert_eq!(tap_now.as_str(), Some(tap.as_str()));
    assert_eq!(rate(&d).as_deref(), Some("8Mbit"));

    // Users see their own and everybody's, and change none.
    let token = d.ok(&["token", "create", "t", "--user", "dora"]);
    let token = Some(token.trim());
    let (status, body) = d.http_get("/api/v1/default-limits/user:dora", token);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"net_mbps\":8"), "{body}");
    let (status, _) = d.http_get("/api/v1/default-limits/default", token);
    assert_eq!(status, 200);
    let (status, body) = d.http_put("/api/v1/default-limits/user:dora", token, "{}");
    assert_eq!(status, 403, "{body}");
    let (status, _) = d.http_get("/api/v1/default-limits", token);
    assert_eq!(status, 403);
    // Nobody else's, and a name nobody has is refused alike.
    let (status, _) = d.http_get("/api/v1/default-limits/user:admin", token);
    assert_eq!(status, 403);
    let (status, _) = d.http_get("/api/v1/default-limits/user:nobody", token);
    assert_eq!(status, 403);

    // The owner's removed: everybody's holds it; everybody's removed: nothing does.
    let said = d.ok(&["default-limits", "user:dora", "--clear"]);
    assert!(said.contains("given at once to: dl"), "{said}");
    assert_eq!(rate(&d).as_deref(), Some("16Mbit"));
    d.ok(&["default-limits", "default", "--clear"]);
    assert_eq!(rate(&d), None);
    assert_eq!(d.ok(&["limits", "dl"]).trim(), "no limits");

    // A deleted user's defaults go with them.
    d.ok(&["default-limits", "user:dora", "--cpu-max", "50"]);
    d.ok(&["destroy", "dl"]);
    d.ok(&["delete", "dl"]);
    d.ok(&["user", "delete", "dora"]);
    let all = d.json(&["default-limits"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    audited(&d, "default-limits.set");
}
