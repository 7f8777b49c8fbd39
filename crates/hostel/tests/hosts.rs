//! A second host: a real `hostel agent` in a network namespace of its own, reached from
//! the controller's namespace over a veth pair, with a certificate from `hostel
//! agent-cert`. Added, used (a pool and a real QEMU on it), seen going offline and coming
//! back (after the agent's restart and after the controller's), removed.

mod common;
use common::*;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
}

/// `GET URL/v1/host` from inside `ns`, presenting `cert` and `key` (PEM files) and
/// trusting `ca`: the HTTP status, or the TLS or connection error.
fn agent_get(ns: &Netns, url: &str, cert: &Path, key: &Path, ca: &Path) -> Result<u16, String> {
    let mut identity = std::fs::read(cert).unwrap();
    identity.extend(std::fs::read(key).unwrap());
    let ca = std::fs::read(ca).unwrap();
    let (path, url) = (format!("/run/netns/{}", ns.name), format!("{url}/v1/host"));
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .identity(reqwest::Identity::from_pem(&identity).unwrap())
                .build()
                .unwrap();
            match client.get(&url).send().await {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) => Err(format!("{e:?}")),
            }
        })
    })
    .join()
    .unwrap()
}

/// Waits until `hostel host list` shows node2 `online` (or not).
fn wait_online(d: &Daemon, want: bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = d.json(&["host", "list"]);
        let node2 = hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "node2")
            .cloned()
            .expect("node2 is listed");
        if node2["online"] == want {
            return node2;
        }
        assert!(
            Instant::now() < deadline,
            "node2 not online={want} within 30 s: {node2}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_host_is_added_used_lost_regained_and_removed() {
    let mut d = Daemon::start();
    let (node, b) = linked_node(&d);
    let dir = d.dir.path().to_path_buf();
    let data = d.data_dir();
    let tls = dir.join("tls");
    let cert = |sans: &[&str]| {
        let mut args = vec!["agent-cert", "node2", "--data-dir", data.to_str().unwrap()];
        for s in sans {
            args.extend(["--san", s]);
        }
        args.extend(["--out", tls.to_str().unwrap()]);
        d.cli(&args)
    };
    let o = cert(&[]);
    assert!(!o.status.success(), "agent-cert without an address");
    assert!(cert(&["10.254.0.2"]).status.success());
    let (agent, url) = start_agent(&node, &dir, "10.254.0.2");

    // Bad input first: clear errors, nothing recorded.
    let err = d.fails(&["host", "add", "http://10.254.0.2:1"]);
    assert!(err.contains("give https://ADDRESS:PORT"), "{err}");
    let err = d.fails(&["host", "add", "https://10.254.0.2:1"]);
    assert!(err.contains("does not answer"), "{err}");
    assert_eq!(d.json(&["host", "list"]).as_array().unwrap().len(), 1);

    // Only the controller's certificate opens an agent: one agent's own (from
    // agent-cert, on that host's disk) does not open another, nor itself.
    let pki = data.join("pki");
    let as_controller = agent_get(
        &d.ns,
        &url,
        &pki.join("controller-client.pem"),
        &pki.join("controller-client.key"),
        &pki.join("ca.pem"),
    );
    assert_eq!(as_controller, Ok(200));
    let as_agent = agent_get(
        &d.ns,
        &url,
        &tls.join("agent.pem"),
        &tls.join("agent.key"),
        &tls.join("ca.pem"),
    );
    assert!(
        as_agent.is_err(),
        "an agent's certificate opened an agent: {as_agent:?}"
    );

    let out = d.ok(&["host", "add", &url]);
    assert!(
        out.contains("added host node2") && out.contains("online"),
        "{out}"
    );
    let node2 = wait_online(&d, true);
    assert_eq!(node2["url"], url.as_str());
    let local = d.json(&["info"])["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] != "node2")
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();

    // Tags steer placement: a VM asking for the local host's tag goes there (running, it
    // leaves the local host with less memory free than node2); one with nothing
    // host-bound goes where most memory is free, node2; one in node2's pool runs on
    // node2, in a real QEMU that node2's agent started in node2's namespace.
    let err = d.fails(&["host", "set", "nosuch", "--tags", "x"]);
    assert!(err.contains("no host is named"), "{err}");
    let out = d.ok(&["host", "set", &local, "--tags", "first,local"]);
    assert!(out.contains("tags first,local"), "{out}");
    d.ok(&["host", "set", "node2", "--tags", "second"]);
    let err = d.fails(&[
        "create",
        "nowhere",
        "--image",
        "tiny",
        "--host-tag",
        "third",
        "--no-network",
    ]);
    assert!(err.contains("lacks tag third"), "{err}");
    let o = d.cli(&[
        "create",
        "here",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
        "--host-tag",
        "first",
        "--explain",
    ]);
    assert!(o.status.success(), "{o:?}");
    let why = String::from_utf8_lossy(&o.stderr);
    assert!(
        why.contains(&format!("placed on {local}")) && why.contains("lacks tag first"),
        "{why}"
    );
    assert_eq!(d.describe("here")["host"], local.as_str());
    let pool_dir = dir.join("pool2");
    std::fs::create_dir_all(&pool_dir).unwrap();
    let pool_path = pool_dir.to_str().unwrap();
    d.ok(&[
        "pool", "create", "p2", "--host", "node2", "--path", pool_path,
    ]);
    // The tiny guest's kernel and initrd, as files (the two hosts share this machine's
    // filesystem), so that node2 boots a guest that says when it is ready.
    let boot = d.describe("here")["boot"].clone();
    let kernel = [
        "--kernel",
        boot["kernel"].as_str().unwrap(),
        "--initrd",
        boot["initrd"].as_str().unwrap(),
        "--cmdline",
        boot["cmdline"].as_str().unwrap(),
    ];
    let small = ["--memory", "128M", "--no-network", "--no-start"];
    d.ok(&[&["create", "free"][..], &small, &kernel].concat());
    assert_eq!(d.describe("free")["host"], "node2");
    d.ok(&["delete", "free"]);
    // An image made on the local host is used on node2: copied there by the two agents
    // (through the controller, checked by its SHA-256) when the first VM there needs it,
    // and node2 boots it from its own copy.
    d.ok(&[
        "create",
        "mixed",
        "--image",
        "tiny",
        "--pool",
        "p2",
        "--memory",
        "128M",
        "--no-network",
    ]);
    let mixed = d.describe("mixed");
    assert_eq!(mixed["host"], "node2");
    let kernel2 = mixed["boot"]["kernel"].as_str().unwrap().to_string();
    assert_ne!(
        kernel2,
        boot["kernel"].as_str().unwrap(),
        "node2's own copy"
    );
    assert!(std::path::Path::new(&kernel2).exists(), "{kernel2}");
    let mut con = d.console("mixed").await;
    con.wait_for(READY, Duration::from_secs(180)).await;
    // With two hosts, a VM gets the cluster's named baseline CPU and the machine type its
    // host's QEMU has, pinned in its record: the guest sees that CPU, on either host.
    assert_eq!(mixed["qemu"]["cpu_model"], "Westmere-v1", "{mixed}");
    let machine = mixed["qemu"]["machine"].as_str().unwrap().to_string();
    assert!(machine.starts_with("pc-q35-"), "{machine}");
    let argv: Vec<String> = serde_json::from_value(mixed["qemu"]["argv"].clone()).unwrap();
    let after_flag = |f: &str| argv.iter().skip_while(|a| *a != f).nth(1).cloned();
    assert_eq!(
        after_flag("-cpu").as_deref(),
        Some("Westmere-v1"),
        "{argv:?}"
    );
    assert_eq!(after_flag("-machine").as_deref(), Some(machine.as_str()));
    let cpu = con.run("grep -m1 'model name' /proc/cpuinfo").await;
    assert!(cpu.contains("Westmere"), "the guest's CPU: {cpu}");
    let shown = d.ok(&["host", "show", "node2"]);
    assert!(
        shown.contains("Westmere-v1") && shown.contains(&machine),
        "{shown}"
    );
    let err = d.fails(&[
        "create",
        "fancy",
        "--image",
        "tiny",
        "--cpu-model",
        "Skylake-Client-v4",
        "--host-tag",
        "second",
        "--no-network",
        "--no-start",
    ]);
    assert!(err.contains("does not run CPU model"), "{err}");
    let images = d.json(&["image", "list"]);
    let hosts: Vec<String> = images[0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c["host"].as_str().unwrap(),
                c["state"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        hosts.contains(&"node2=ready".to_string()) && hosts.contains(&format!("{local}=ready")),
        "{hosts:?}"
    );
    let out = d.ok(&["image", "push", "tiny", "--all"]);
    assert!(out.contains("has a copy already"), "{out}");

    // Live migration: the running guest moves from node2 to the local host, its memory
    // with it: a counter it keeps in a file goes on counting, from where it was.
    con.run("(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done) & true")
        .await;
    let count = |s: String| s.trim().parse::<u64>().unwrap_or(0);
    let before = count(con.run("cat /tmp/count").await);
    assert!(before > 0, "the guest counts");
    drop(con);
    let err = d.fails(&["migrate", "mixed", "--to", "node2"]);
    assert!(err.contains("on host node2 already"), "{err}");
    let err = d.fails(&["migrate", "mixed", "--to", "nosuch"]);
    assert!(err.contains("no host is named"), "{err}");
    let err = d.fails(&["migrate", "mixed", "--max-downtime", "0"]);
    assert!(err.contains("max_downtime_ms"), "{err}");
    let out = d.ok(&["migrate", "mixed", "--to", &local]);
    assert!(out.contains("ms downtime"), "{out}");
    let moved = d.describe("mixed");
    assert_eq!(moved["host"], local.as_str());
    assert_eq!(moved["state"], "running");
    let pid = moved["qemu"]["pid"].as_u64().unwrap() as u32;
    assert!(
        !node.pids().contains(&pid),
        "QEMU {pid} runs on the local host now"
    );
    assert_eq!(moved["qemu"]["cpu_model"], "Westmere-v1");
    assert_eq!(moved["qemu"]["machine"], machine.as_str());
    let mut con = d.console("mixed").await;
    let cpu = con.run("grep -m1 'model name' /proc/cpuinfo").await;
    assert!(
        cpu.contains("Westmere"),
        "the guest's CPU after the move: {cpu}"
    );
    let after = count(con.run("cat /tmp/count").await);
    assert!(after > before, "the counter went on: {before} then {after}");
    let later = count(con.run("sleep 0.5; cat /tmp/count").await);
    assert!(later > after, "and goes on counting: {after} then {later}");
    drop(con);
    let task = d.json(&["audit", "--vm", "mixed"]);
    assert!(
        task.to_string().contains("vm.migrate"),
        "the migration is in the VM's audit trail: {task}"
    );
    // A VM with a disk on node2's own storage moves too: its disk is mirrored into a new
    // file on the local host (NBD), and what the guest wrote is there.
    d.ok(&[
        "create",
        "disky",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--disk",
        "64M",
        "--no-network",
        "--host-tag",
        "second",
    ]);
    let old_disk = d.describe("disky")["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let mut dc = d.console("disky").await;
    dc.wait_for(READY, Duration::from_secs(180)).await;
    dc.run("echo disk-went-along | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
        .await;
    drop(dc);
    let out = d.ok(&["migrate", "disky", "--to", &local]);
    assert!(out.contains("ms downtime"), "{out}");
    let moved = d.describe("disky");
    assert_eq!(moved["host"], local.as_str());
    let new_disk = moved["disks"][0]["path"].as_str().unwrap().to_string();
    assert_ne!(new_disk, old_disk);
    assert!(std::path::Path::new(&new_disk).exists(), "{new_disk}");
    assert!(
        !std::path::Path::new(&old_disk).exists(),
        "node2's file {old_disk} went once the VM ran on the local host"
    );
    let mut dc = d.console("disky").await;
    assert_eq!(
        dc.run("echo 3 > /proc/sys/vm/drop_caches; head -c 15 /dev/vda")
            .await,
        "disk-went-along"
    );
    drop(dc);
    d.ok(&["destroy", "disky"]);
    d.ok(&["delete", "disky"]);

    // Draining node2 with three VMs on it (two running, one stopped): all three go to the
    // local host, node2 is drained and gets no new VM; undrained with --return, they
    // come back, the running ones still running.
    for (n, start) in [("r1", true), ("r2", true), ("r3", false)] {
        let mut args = vec![
            "create",
            n,
            "--image",
            "tiny",
            "--memory",
            "96M",
            "--no-network",
            "--host-tag",
            "second",
        ];
        if !start {
            args.push("--no-start");
        }
        d.ok(&args);
        assert_eq!(d.describe(n)["host"], "node2");
    }
    let out = d.ok(&["host", "drain", "node2", "--allow-offline"]);
    for n in ["r1", "r2", "r3"] {
        assert!(out.contains(&format!("{n}: ")), "{out}");
        assert_eq!(d.describe(n)["host"], local.as_str(), "{n}: {out}");
    }
    assert_eq!(d.describe("r1")["state"], "running");
    let hosts = d.json(&["host", "list"]);
    let n2 = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "node2")
        .unwrap()
        .clone();
    assert_eq!(n2["drain"], "drained", "{n2}");
    let err = d.fails(&[
        "create",
        "late2",
        "--image",
        "tiny",
        "--no-network",
        "--host-tag",
        "second",
    ]);
    assert!(err.contains("drained (no new VMs)"), "{err}");
    d.ok(&["host", "undrain", "node2", "--return"]);
    for n in ["r1", "r2", "r3"] {
        assert_eq!(d.describe(n)["host"], "node2", "{n} came back");
    }
    assert_eq!(d.describe("r2")["state"], "running");
    for n in ["r1", "r2"] {
        d.ok(&["destroy", n]);
    }
    for n in ["r1", "r2", "r3"] {
        d.ok(&["delete", n]);
    }

    // Uneven now: two running VMs on the local host, none on node2. A dry run plans one
    // move and moves nothing; applied, that VM runs on node2.
    let plan = d.json(&["rebalance", "--dry-run"]);
    let moves = plan["moves"].as_array().unwrap().clone();
    assert_eq!(moves.len(), 1, "{plan}");
    let vm = moves[0]["vm"].as_str().unwrap().to_string();
    assert!(vm == "here" || vm == "mixed", "{plan}");
    assert_eq!(moves[0]["to"], "node2");
    assert!(plan["score_after"].as_f64() < plan["score_before"].as_f64());
    assert_eq!(
        d.describe(&vm)["host"],
        local.as_str(),
        "a dry run moves nothing"
    );
    let out = d.ok(&["rebalance"]);
    assert!(out.contains(&format!("{vm}: to node2")), "{out}");
    assert_eq!(d.describe(&vm)["host"], "node2");
    assert_eq!(d.describe(&vm)["state"], "running");
    let again = d.json(&["rebalance", "--dry-run"]);
    assert!(again["moves"].as_array().unwrap().is_empty(), "{again}");
    if vm == "here" {
        d.ok(&["migrate", "here", "--to", &local]);
    }

    // A stopped VM does not migrate live.
    d.ok(&["destroy", "mixed"]);
    let err = d.fails(&["migrate", "mixed"]);
    assert!(err.contains("only a running or paused VM"), "{err}");
    d.ok(&["delete", "mixed"]);
    d.ok(&[
        &["create", "there", "--pool", "p2", "--disk", "64M"][..],
        &small,
        &kernel,
    ]
    .concat());
    let there = d.describe("there");
    assert_eq!(there["host"], "node2");
    let disk = there["disks"][0]["path"].as_str().unwrap().to_string();
    assert!(disk.starts_with(pool_dir.to_str().unwrap()), "{disk}");
    assert!(
        std::path::Path::new(&disk).exists(),
        "node2's agent made {disk}"
    );
    d.ok(&["start", "there"]);
    d.console("there")
        .await
        .wait_for(READY, Duration::from_secs(180))
        .await;
    let pid = d.describe("there")["qemu"]["pid"].as_u64().unwrap();
    assert!(
        node.pids().contains(&(pid as u32)),
        "QEMU {pid} runs in node2's namespace"
    );
    let listed = d.json(&["list", "--host", "node2"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "there");
    let h = wait_online(&d, true);
    assert_eq!(
        (h["vms_total"].as_u64(), h["vms_running"].as_u64()),
        (Some(1), Some(1))
    );
    let err = d.fails(&["host", "remove", "node2"]);
    assert!(err.contains("still has 1 VM(s)"), "{err}");
    d.ok(&["destroy", "there"]);
    d.ok(&["delete", "there"]);
    assert!(
        !std::path::Path::new(&disk).exists(),
        "the disk went with its VM"
    );

    // The agent goes: node2 shows offline and gets no VMs; it comes back by itself.
    d.ok(&[
        "create",
        "r3",
        "--image",
        "tiny",
        "--no-network",
        "--no-start",
        "--host-tag",
        "second",
    ]);
    stop(agent);
    wait_online(&d, false);
    // The list says how fresh each VM's state is: live for the local host's, as old as
    // node2's last report for r3 (stopped there).
    std::thread::sleep(Duration::from_millis(1100));
    let list = d.json(&["list"]);
    let row = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(row("here")["state_age_seconds"], 0);
    assert!(
        row("r3")["state_age_seconds"].as_u64().unwrap() >= 1,
        "{list}"
    );
    assert_eq!(row("r3")["host_stale"], false, "offline, not yet stale");
    let table = d.ok(&["list"]);
    assert!(
        table.contains("CONFIRMED") && table.contains("s ago"),
        "{table}"
    );
    let err = d.fails(&[
        "create",
        "late",
        "--pool",
        "p2",
        "--disk",
        "64M",
        "--no-network",
        "--no-start",
    ]);
    assert!(err.contains("not connected"), "{err}");
    let (agent, url2) = start_agent(&node, &dir, "10.254.0.2");
    assert_eq!(url2, url);
    wait_online(&d, true);
    d.ok(&["delete", "r3"]);

    // A controller restart reconnects to the recorded host without anyone adding it.
    assert!(d.sigterm().success());
    d.launch();
    wait_online(&d, true);

    // A cut link sends no FIN: the agent's silence takes node2 offline; it comes back
    // once the link does.
    let link = |state: &str| {
        let ok = Command::new("ip")
            .args(["-n", &node.name, "link", "set", &b, state])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    link("down");
    wait_online(&d, false);
    link("up");
    wait_online(&d, true);

    // Removal: refused while a pool is there, and for the controller's own host.
    let err = d.fails(&["host", "remove", "node2"]);
    assert!(err.contains("1 pool(s)"), "{err}");
    d.ok(&["pool", "delete", "p2"]);
    let err = d.fails(&["host", "remove", &local]);
    assert!(err.contains("cannot be removed"), "{err}");
    let err = d.fails(&["host", "remove", "nosuch"]);
    assert!(err.contains("no host is named"), "{err}");
    d.ok(&["host", "remove", "node2"]);
    d.ok(&["destroy", "here"]);
    let hosts = d.json(&["host", "list"]);
    assert_eq!(hosts.as_array().unwrap().len(), 1, "{hosts}");
    stop(agent);
}
