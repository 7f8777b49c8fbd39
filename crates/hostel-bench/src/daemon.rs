//! The `hostel up` the benchmark drives, in a network namespace of its own, and the small
//! process and file helpers every measurement uses.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::READY;

/// A `hostel up` in a network namespace of its own.
pub(crate) struct Daemon {
    pub(crate) ns: String,
    pub(crate) dir: PathBuf,
    pub(crate) child: Child,
    pub(crate) hostel: PathBuf,
    proxy: String,
    /// `--database`: the controller's PostgreSQL database; none: SQLite.
    pub(crate) database: Option<String>,
}

impl Daemon {
    pub(crate) fn start(hostel: &Path) -> Result<Daemon> {
        Self::start_on(hostel, None, "")
    }

    /// A daemon on the database given (none: SQLite), its namespace and directory named
    /// with `tag`.
    pub(crate) fn start_on(hostel: &Path, database: Option<&str>, tag: &str) -> Result<Daemon> {
        let ns = format!("hostel-bench-{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        // The namespace's only way out: a proxy to the Debian mirror, for image builds.
        let proxy = relay_proxy(&ns)?;
        let child = Self::spawn(&ns, &dir, hostel, &proxy, database)?;
        let d = Daemon {
            ns,
            dir,
            child,
            hostel: hostel.to_path_buf(),
            proxy,
            database: database.map(String::from),
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn spawn(
        ns: &str,
        dir: &Path,
        hostel: &Path,
        proxy: &str,
        database: Option<&str>,
    ) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.out"))?;
        Ok(Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(hostel)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--no-default-network",
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .args(database.map(|d| ["--database", d]).into_iter().flatten())
            .env("HOSTEL_CONFIG", dir.join("client.toml"))
            .env("http_proxy", format!("http://{proxy}"))
            .env("no_proxy", "127.0.0.1,localhost")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    }

    /// SIGTERM: the daemon stops, its VMs go on.
    pub(crate) fn stop(&mut self) -> Result<()> {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        self.child.wait()?;
        let _ = std::fs::remove_file(self.dir.join("client.toml"));
        Ok(())
    }

    pub(crate) fn restart(&mut self) -> Result<()> {
        self.child = Self::spawn(
            &self.ns,
            &self.dir,
            &self.hostel,
            &self.proxy,
            self.database.as_deref(),
        )?;
        self.wait_ready()
    }

    /// The API's address and the admin token, from the client config.
    /// One GET of `path` by curl in the daemon's namespace, with `client`'s token (what
    /// [`Self::client`] gave): its body and curl's own time for it (s).
    pub(crate) fn get_timed(&self, client: &(String, String), path: &str) -> Result<(String, f64)> {
        let (url, token) = client;
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "curl",
                "-sf",
                "-w",
                "\n%{time_total}",
            ])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{url}{path}"))
            .output()?;
        if !out.status.success() {
            anyhow::bail!("GET {path} failed");
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, secs) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        Ok((body.to_string(), secs.trim().parse()?))
    }

    pub(crate) fn client(&self) -> Result<(String, String)> {
        let cfg: toml::Value =
            toml::from_str(&std::fs::read_to_string(self.dir.join("client.toml"))?)?;
        Ok((
            cfg["url"]
                .as_str()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            cfg["token"].as_str().unwrap_or_default().to_string(),
        ))
    }

    pub(crate) fn wait_ready(&self) -> Result<()> {
        let d = self;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !d.dir.join("client.toml").exists() {
            if Instant::now() > deadline {
                bail!(
                    "hostel up was not ready in 300 s; see {}",
                    d.dir.join("daemon.out").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.hostel)
            .args(args)
            .env("HOSTEL_CONFIG", self.dir.join("client.toml"))
            .output()?;
        if !out.status.success() {
            bail!("hostel {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub(crate) fn vm_id(&self, name: &str) -> Result<String> {
        let v: serde_json::Value =
            serde_json::from_str(&self.cli(&["describe", name, "-o", "json"])?)?;
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        end(&mut self.child, &self.ns, &self.dir);
    }
}

/// Ends `child`, then everything left in namespace `ns` (all of it started by this
/// benchmark: QEMUs, virtlogd), removes the namespace and the directory `dir`.
pub(crate) fn end(child: &mut Child, ns: &str, dir: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let _ = std::fs::remove_dir_all(dir);
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status()?;
    if !st.success() {
        bail!("{cmd:?} failed");
    }
    Ok(())
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// An HTTP forward proxy listening inside namespace `ns` that relays each connection,
/// from the bench's own namespace, to the port-80 host its request names.
pub(crate) fn relay_proxy(ns: &str) -> Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let path = format!("/run/netns/{ns}");
    let listener = std::thread::spawn(move || -> Result<std::net::TcpListener> {
        let f = std::fs::File::open(&path)?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the proxy thread panicked"))??;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().ok()?);
                let mut first = String::new();
                reader.read_line(&mut first).ok()?;
                let rest = first.split_whitespace().nth(1)?.strip_prefix("http://")?;
                let host = rest.split('/').next()?;
                let host = host.strip_suffix(":80").unwrap_or(host).to_string();
                if host.contains(':') {
                    return None;
                }
                let mut origin = std::net::TcpStream::connect((host.as_str(), 80)).ok()?;
                origin.write_all(first.as_bytes()).ok()?;
                origin.write_all(reader.buffer()).ok()?;
                let mut up = reader.into_inner();
                let mut o2 = origin.try_clone().ok()?;
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up, &mut o2);
                    let _ = o2.shutdown(std::net::Shutdown::Write);
                });
                let mut down = client;
                let _ = std::io::copy(&mut origin, &mut down);
                let _ = down.shutdown(std::net::Shutdown::Both);
                let _ = t.join();
                Some(())
            });
        }
    });
    Ok(addr)
}

/// Waits until `file` contains `needle`.
pub(crate) fn wait_text(file: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read(file)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no {needle:?} in {} within {timeout:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn wait_marker(file: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read(file)
            .map(|b| String::from_utf8_lossy(&b).contains(READY))
            .unwrap_or(false)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no {READY} in {} within {timeout:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub(crate) fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}
