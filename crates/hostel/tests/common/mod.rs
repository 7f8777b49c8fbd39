//! The harness of the integration tests: a real `hostel up` in a temporary data dir,
//! the real CLI, and the guest's serial console read through the API's websocket.
//! Guests say they are ready with a marker on the console; nothing here sleeps and hopes.

#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub mod workload;

pub const READY: &str = "HOSTEL-READY";
/// The `tiny` image's shell prompt (`hostel_storage::tiny::PROMPT`).
pub const PROMPT: &str = "tiny# ";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hostel")
}

/// Every daemon runs in a network namespace of its own, made by the test and deleted
/// after it, so bridges, taps, nftables rules and dnsmasq never touch the host's network.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("hostel-t{}-{n}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(ok.success());
        Netns { name }
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A TCP connection made from inside the namespace.
    pub fn connect(&self, addr: &str) -> std::net::TcpStream {
        self.try_connect(addr).unwrap()
    }

    pub fn try_connect(&self, addr: &str) -> std::io::Result<std::net::TcpStream> {
        let path = format!("/run/netns/{}", self.name);
        let addr = addr.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sa: std::net::SocketAddr = addr.parse().unwrap();
            std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        })
        .join()
        .unwrap()
    }

    /// The body of `GET http://ADDR/` fetched from inside the namespace ("" on failure).
    pub fn http_body(&self, addr: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = self.try_connect(addr) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // What still runs in the namespace was started by this test (dnsmasq, say).
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub ns: Netns,
    pub child: Option<Child>,
    pub url: String,
    pub token: String,
    /// Extra environment for `hostel up`.
    pub env: Vec<(String, String)>,
    /// Extra arguments for `hostel up`.
    pub args: Vec<String>,
    /// The PostgreSQL server the daemon's database is on, if not SQLite (dropped after
    /// the daemon: fields drop after `Drop::drop`).
    pub pg: Option<hostel_store::testing::PgServer>,
}

impl Daemon {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("client.toml")
    }

    /// Starts `hostel up` and waits until it has written its client config (it does so
    /// once the API serves and the tiny image is ready).
    pub fn start() -> Daemon {
        let mut d = Self::unstarted();
        d.launch();
        d
    }

    /// A daemon's directory and namespace, not launched yet (set `env`, then `launch`).
    pub fn unstarted() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("hostel-test-")
            .tempdir()
            .unwrap();
        // QEMU runs as an unprivileged user, which must be able to reach the data dir.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Daemon {
            ns: Netns::new(),
            dir,
            child: None,
            url: String::new(),
            token: String::new(),
            env: Vec::new(),
            args: Vec::new(),
            pg: None,
        }
        .on_postgres_if_asked()
    }

    /// `HOSTEL_TEST_DATABASE=postgres`: every test daemon runs on a PostgreSQL server of
    /// its own instead of SQLite (the whole suite can run so).
    fn on_postgres_if_asked(mut self) -> Daemon {
        if std::env::var("HOSTEL_TEST_DATABASE").is_ok_and(|v| v == "postgres") {
            self.use_postgres();
        }
        self
    }

    /// Runs the daemon on a real PostgreSQL server of its own (`--database`).
    pub fn use_postgres(&mut self) {
        if self.pg.is_some() {
            return;
        }
        let server = hostel_store::testing::PgServer::start();
        // Its own runtime on its own thread: a test's runtime may not block.
        let url = std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(server.database("hostel"))
            })
            .join()
            .unwrap()
        });
        self.args.extend(["--database".to_string(), url]);
        self.pg = Some(server);
    }

    pub fn launch(&mut self) {
        let _ = std::fs::remove_file(self.config());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.out"))
            .unwrap();
        let child = self
            .ns
            .cmd(bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--ssh-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(self.data_dir())
            .args(&self.args)
            .env("HOSTEL_CONFIG", self.config())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start hostel up");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(180);
        while !self.config().exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hostel up exited with {status}: {}", self.daemon_output());
            }
            assert!(
                Instant::now() < deadline,
                "hostel up was not ready within 180 s: {}",
                self.daemon_output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let cfg = std::fs::read_to_string(self.config()).unwrap();
        let v: toml::Value = toml::from_str(&cfg).unwrap();
        self.url = v["url"].as_str().unwrap().to_string();
        self.token = v["token"].as_str().unwrap().to_string();
    }

    pub fn daemon_output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.out")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILLs the daemon (not its VMs) and reaps it.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.ns
            .cmd(bin())
            .args(args)
            .env("HOSTEL_CONFIG", self.config())
            .stdin(Stdio::null())
            .output()
            .expect("run hostel")
    }

    /// Runs the CLI and returns its stdout; panics with its stderr if it failed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "hostel {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI expecting failure; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "hostel {args:?} should have failed but printed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }

    pub fn describe(&self, vm: &str) -> Value {
        self.json(&["describe", vm])
    }

    pub fn state(&self, vm: &str) -> String {
        self.describe(vm)["state"].as_str().unwrap().to_string()
    }

    /// Waits until the VM's state is `want` (states change on QEMU's events).
    pub fn wait_state(&self, vm: &str, want: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.describe(vm);
            if d["state"] == want {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "{vm} did not become {want} within {timeout:?}; it is {}",
                d
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// QEMU pids started under this data dir (from the agent's runtime files).
    pub fn qemu_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.data_dir().join("run")) {
            for e in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(e.path().join("qemu.pid")) {
                    if let Ok(pid) = text.trim().parse::<u32>() {
                        if is_alive_qemu(pid) {
                            pids.push(pid);
                        }
                    }
                }
            }
        }
        pids
    }

    /// The port of the SSH console gateway, as `hostel info` tells it.
    pub fn ssh_port(&self) -> String {
        let info = self.json(&["info"]);
        info["ssh_console"]
            .as_str()
            .expect("hostel info names the SSH console gateway")
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    }

    pub async fn console(&self, vm: &str) -> Console {
        let stream = self.ns.connect(self.url.trim_start_matches("http://"));
        Console::open(stream, &self.url, &self.token, vm).await
    }

    /// A plain HTTP/1.1 POST of a JSON body with the admin token: (status, body).
    pub fn http_post(&self, path: &str, json: &str) -> (u16, String) {
        let (status, _, body) = self.http("POST", path, Some(&self.token), json);
        (status, body)
    }

    /// A plain HTTP/1.1 PUT of a JSON body with `token`: (status, body).
    pub fn http_put(&self, path: &str, token: Option<&str>, json: &str) -> (u16, String) {
        let (status, _, body) = self.http("PUT", path, token, json);
        (status, body)
    }

    /// A plain HTTP/1.1 GET from inside the namespace: (status, body).
    pub fn http_get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let (status, _, body) = self.http("GET", path, token, "");
        (status, body)
    }

    /// A GET's status, response headers (one `name: value` a line) and body.
    pub fn http_get_headers(&self, path: &str, token: Option<&str>) -> (u16, String, String) {
        self.http("GET", path, token, "")
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String, String) {
        use std::io::{Read, Write};
        let host = self.url.trim_start_matches("http://");
        let mut s = self.ns.connect(host);
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        (status, head.to_string(), body.to_string())
    }
}

pub fn is_alive_qemu(pid: u32) -> bool {
    pid_alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
            .unwrap_or(false)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // End only what this test started: its daemon and the QEMUs of its data dir.
        let pids = self.qemu_pids();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::thread::panicking() {
            eprintln!("--- daemon output ---\n{}", self.daemon_output());
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A serial console session through the API, accumulating everything it has seen.
pub struct Console {
    ws: Ws,
    pub seen: String,
}

impl Console {
    pub async fn open(stream: std::net::TcpStream, url: &str, token: &str, vm: &str) -> Console {
        let ws_url = format!(
            "{}/api/v1/vms/{vm}/console",
            url.replacen("http://", "ws://", 1)
        );
        let mut req = ws_url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        stream.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
        let (ws, _) =
            tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .expect("console websocket");
        Console {
            ws,
            seen: String::new(),
        }
    }

    /// Waits until `needle` has been seen `count` times in total.
    pub async fn wait_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.seen.matches(needle).count() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    self.seen.push_str(&String::from_utf8_lossy(&b))
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!(
                    "console closed while waiting for {needle:?} ({other:?}); saw:\n{}",
                    self.tail()
                ),
                Err(_) => panic!(
                    "{needle:?} did not appear {count} time(s) within {timeout:?}; saw:\n{}",
                    self.tail()
                ),
            }
        }
    }

    /// Once the guest said READY on this console, waits for the shell's first prompt
    /// after it: a line typed while the shell sets its terminal up can be lost (seen
    /// under load in CI: a command that never answered).
    async fn shell_up(&mut self) {
        let Some(at) = self.seen.rfind(READY) else {
            return;
        };
        if !self.seen[at..].contains(PROMPT) {
            let n = self.seen.matches(PROMPT).count();
            self.wait_count(PROMPT, n + 1, Duration::from_secs(60))
                .await;
        }
    }

    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let n = self.seen.matches(needle).count();
        self.wait_count(needle, n.max(1), timeout).await
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Binary(text.as_bytes().to_vec().into()))
            .await
            .unwrap();
    }

    /// Runs a shell command and returns what it printed between two markers, so that
    /// the echoed command line never counts as its output.
    pub async fn run(&mut self, cmd: &str) -> String {
        self.shell_up().await;
        let tag = format!("{:x}", rand_u64());
        let begin = format!("B{tag}E");
        let end = format!("D{tag}E");
        let before = self.seen.len();
        self.send(&format!("echo B{tag}\"E\"; {cmd}; echo D{tag}\"E\"\n"))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let fresh = &self.seen[before..];
            if let (Some(b), Some(e)) = (fresh.find(&begin), fresh.rfind(&end)) {
                if e > b {
                    return fresh[b + begin.len()..e].trim().replace('\r', "");
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    self.seen.push_str(&String::from_utf8_lossy(&b))
                }
                Ok(Some(Ok(_))) => {}
                _ => panic!("no answer to {cmd:?}; saw:\n{}", self.tail()),
            }
        }
    }

    /// Runs `cmd` in the guest until `ok` accepts its output (for changes the guest makes
    /// on its own time: a DHCP lease, a hot-plugged device coming online).
    pub async fn wait_until(&mut self, cmd: &str, ok: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.run(cmd).await;
            if ok(&out) {
                return out;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the guest still says {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn tail(&self) -> &str {
        let start = self.seen.len().saturating_sub(3000);
        let mut s = start;
        while !self.seen.is_char_boundary(s) {
            s += 1;
        }
        &self.seen[s..]
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// Reads `/proc/meminfo`'s MemTotal inside the guest, in kB.
pub async fn guest_memtotal_kb(c: &mut Console) -> u64 {
    let out = c.run("grep MemTotal /proc/meminfo").await;
    out.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out:?}"))
}

pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A second namespace, joined to the daemon's by a veth pair: the daemon's side is
/// 10.254.0.1, the node's 10.254.0.2 (the namespaces are the test's own). Gives the
/// namespace and the node's end of the pair.
pub fn linked_node(d: &Daemon) -> (Netns, String) {
    let node = Netns::new();
    let id = std::process::id() % 100_000;
    let (a, b) = (format!("hva{id}"), format!("hvb{id}"));
    for args in [
        vec!["link", "add", &a, "type", "veth", "peer", "name", &b],
        vec!["link", "set", &a, "netns", &d.ns.name],
        vec!["link", "set", &b, "netns", &node.name],
    ] {
        assert!(Command::new("ip").args(&args).status().unwrap().success());
    }
    for (ns, dev, ip) in [(&d.ns, &a, "10.254.0.1/30"), (&node, &b, "10.254.0.2/30")] {
        for args in [
            vec!["addr", "add", ip, "dev", dev],
            vec!["link", "set", dev, "up"],
        ] {
            let ok = Command::new("ip")
                .arg("-n")
                .arg(&ns.name)
                .args(&args)
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }
    (node, b)
}

/// `hostel agent` in `ns`, listening on `ip` at a fixed port (the namespace is the
/// test's own, and a restarted agent must be found where it was); gives its process and
/// its URL.
pub fn start_agent(ns: &Netns, dir: &std::path::Path, ip: &str) -> (Child, String) {
    start_agent_as(
        ns,
        &AgentAt {
            name: "node2",
            listen: format!("{ip}:8471"),
            tls: dir.join("tls"),
            data: dir.join("agent2"),
            env: Vec::new(),
        },
    )
}

/// Where and as what a `hostel agent` runs.
#[derive(Clone)]
pub struct AgentAt {
    pub name: &'static str,
    /// ADDRESS:PORT.
    pub listen: String,
    /// Its certificate's directory (from `hostel agent-cert --out`).
    pub tls: PathBuf,
    pub data: PathBuf,
    pub env: Vec<(String, String)>,
}

pub fn start_agent_as(ns: &Netns, at: &AgentAt) -> (Child, String) {
    let mut child = ns
        .cmd(bin())
        .args(["agent", "--name", at.name, "--listen", &at.listen])
        .arg("--tls-dir")
        .arg(&at.tls)
        .arg("--data-dir")
        .arg(&at.data)
        .envs(at.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(at.data.with_extension("log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("https://"), "the agent printed {line:?}");
    (child, line.trim().to_string())
}

/// The live QEMU processes whose command line names a directory under `run_dir` (an
/// agent's runtime directory, `DATA/run`), counted by that directory's name: the VM id.
pub fn qemus_under(run_dir: &Path) -> std::collections::BTreeMap<String, usize> {
    let run = format!("{}/", run_dir.display());
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("qemu-system") || !is_alive_qemu(pid) {
            continue;
        }
        if let Some(at) = cmd.find(&run) {
            let id: String = cmd[at + run.len()..]
                .chars()
                .take_while(|c| *c != '/' && *c != ' ' && *c != ',')
                .collect();
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

/// Whether process `pid` lives (and is no zombie).
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Runs qemu-io's `cmd` on a qcow2 file; its output.
pub fn qemu_io(file: &str, cmd: &str) -> String {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd, file])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("Pattern verification failed"),
        "qemu-io {cmd} on {file}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Whether `file` holds `pattern` over `len` bytes at `at`.
pub fn holds(file: &str, pattern: u8, at: &str, len: &str) -> bool {
    let out = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("read -P {pattern} {at} {len}"),
            file,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("verification failed")
}

/// The daemon started again armed to die at `point`; `args` run (the CLI sees the
/// daemon go); then started again clean, and waited for until it has settled what the
/// crash cut (no operation left running).
pub fn crash_at(d: &mut Daemon, point: &str, args: &[&str]) {
    d.kill9();
    d.env = vec![("HOSTEL_CRASH_AT".into(), point.into())];
    d.launch();
    let out = d.cli(args);
    assert!(!out.status.success(), "hostel {args:?} got through");
    let status = d.child.as_mut().unwrap().wait().unwrap();
    assert!(!status.success(), "the daemon died at {point}");
    d.child = None;
    d.env.clear();
    d.launch();
    let t = std::time::Instant::now();
    while !d
        .json(&["operations", "--state", "running"])
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "nothing settled {point}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let doctor = d.json(&["doctor"]);
    assert!(
        doctor["problems"].as_array().unwrap().is_empty(),
        "after a crash at {point}: {doctor}"
    );
}
