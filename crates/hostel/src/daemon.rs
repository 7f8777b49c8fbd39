//! `hostel up`: controller + local agent + embedded SQLite in one process. The two talk
//! over the agent API (HTTPS, mutual TLS) exactly as they do across hosts.

use crate::client::ClientConfig;
use anyhow::{bail, Context, Result};
use hostel_agent::{AccelChoice, AgentConfig, TlsFiles};
use hostel_controller::agent_client::ClientTls;
use hostel_controller::context::{Ctx, SystemActor};
use hostel_controller::pki::{Pki, Role};
use hostel_controller::{Controller, ControllerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How the daemons log (to stderr and to the data dir's log file).
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object a line (time, level, target, message and fields), for journald
    /// and log shippers.
    Json,
}

/// How a host runs QEMU: the same for `hostel up` and `hostel agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct QemuOptions {
    /// auto: KVM only if a test guest really boots under it, else TCG.
    #[arg(long, default_value = "auto")]
    pub accel: AccelChoice,
    /// The unprivileged user whose supplementary groups (`kvm`) every QEMU gets when the
    /// daemon runs as root.
    #[arg(long, default_value = "hostel-qemu")]
    pub qemu_user: String,
    /// When the daemon runs as root, each VM's QEMU runs as a uid (and gid) of its own
    /// from this reserved range: the first uid...
    #[arg(long, default_value_t = hostel_agent::uids::UidRange::DEFAULT.first)]
    pub qemu_uid_first: u32,
    /// ... and how many (at most this many VMs on the host). The range must not overlap
    /// a user of /etc/passwd or a range of /etc/subuid or /etc/subgid.
    #[arg(long, default_value_t = hostel_agent::uids::UidRange::DEFAULT.count)]
    pub qemu_uid_count: u32,
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu_binary: String,
}

pub struct UpOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The local agent's QEMU; none: a controller alone (`hostel controller`), one of
    /// several on one PostgreSQL database, for agents elsewhere.
    pub qemu: Option<QemuOptions>,
    pub client_config: PathBuf,
    /// Create (and run) the `default` NAT network.
    pub default_network: bool,
    pub default_lease_days: Option<u32>,
    /// Where the SSH console gateway listens.
    pub ssh_listen: SocketAddr,
    /// Where `/metrics` is served without a token, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// The npm packages of the browser consoles (a `node_modules`); default: the source
    /// tree's `web/node_modules`, else /usr/local/share/hostel/web.
    pub web_dir: Option<PathBuf>,
    pub min_free_space: hostel_controller::FreeSpaceFloor,
    pub refusal_budget: u32,
    /// A host offline this long is shown as stale.
    pub stale_after: std::time::Duration,
    /// The controller's database: none, SQLite in the data directory (`hostel.db`);
    /// else a `postgres://` URL.
    pub database: Option<String>,
}

/// Where the browser consoles' packages are: the flag, else the source tree this binary
/// was built from (scripts/install-deps.sh runs `npm ci` there), else the package's copy
/// (/usr/share/hostel/web), else an older install's.
fn web_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    let candidates = [
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../web/node_modules"
        )),
        PathBuf::from("/usr/share/hostel/web"),
        PathBuf::from("/usr/local/share/hostel/web"),
    ];
    let complete = |d: &Path| d.join("@novnc/novnc").is_dir() && d.join("@xterm/xterm").is_dir();
    let dir = flag.or_else(|| candidates.into_iter().find(|d| complete(d)));
    match &dir {
        Some(d) if complete(d) => {}
        Some(d) => tracing::warn!(
            "{} lacks @novnc/novnc or @xterm/xterm: the browser consoles will not load \
             (run `npm ci` in the source tree's web/)",
            d.display()
        ),
        None => tracing::warn!(
            "no web directory with noVNC and xterm.js: the browser consoles will not load \
             (run `npm ci` in the source tree's web/, or pass --web-dir)"
        ),
    }
    dir
}

pub fn default_data_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        PathBuf::from("/var/lib/hostel")
    } else {
        dirs_home().join(".local/share/hostel")
    }
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn init_logging(log_file: &Path, format: LogFormat) -> Result<()> {
    use tracing_subscriber::prelude::*;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_file)
        .with_context(|| format!("opening {}", log_file.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOSTEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = format == LogFormat::Json;
    let text_out = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json_out = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    // One of the two file layers has the file.
    let mut file = Some(std::sync::Mutex::new(file));
    let text_file = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(file.take().expect("the log file, once"))
    });
    let json_file = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(file.take().expect("the log file, once"))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text_out)
        .with(json_out)
        .with(text_file)
        .with(json_file)
        .init();
    Ok(())
}

/// Makes `path` (if it is not there) readable by its owner only, before anything is
/// written to it: the database holds password and token hashes and the audit trail.
/// SQLite gives its -wal, -shm and -journal files the database file's mode. Files an
/// older Hostel made readable by others are made private too.
fn create_private(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if let Ok(meta) = std::fs::metadata(&file) {
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Holds an exclusive lock on the data dir, so two daemons never manage the same VMs.
fn lock_data_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("hostel.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut l) => {
            l.set_len(0)?;
            writeln!(l, "{}", std::process::id())?;
            Ok(l)
        }
        Err((_, e)) => bail!(
            "another hostel daemon is using {} ({e}): stop it first, or use another --data-dir",
            dir.display()
        ),
    }
}

/// Makes sure the unprivileged user QEMU runs as exists and, where /dev/kvm belongs to
/// group `kvm` (Debian's udev rule), is in that group.
fn ensure_qemu_user(name: &str) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    hostel_storage::sysuser::ensure_system_user(name, None)?;
    if let Some(kvm) = nix::unistd::Group::from_name("kvm")? {
        if !kvm.mem.iter().any(|m| m == name) {
            let status = std::process::Command::new("usermod")
                .args(["-a", "-G", "kvm", name])
                .status()
                .context("running usermod")?;
            if !status.success() {
                bail!("could not add {name} to group kvm (usermod failed)");
            }
        }
    }
    Ok(())
}

/// The admin user's token (`hostel-tok-admin.SECRET`), made on first start.
fn read_or_make_token(path: &Path) -> Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim();
        if hostel_controller::auth::parse_token(t).is_some() {
            return Ok(t.to_string());
        }
    }
    let token = hostel_controller::auth::format_token(
        hostel_controller::accounts::ADMIN_TOKEN_ID,
        &hostel_controller::auth::new_secret(),
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

/// Makes (if needed), locks and logs into a daemon's data dir: its canonical path and the
/// lock, held for as long as the daemon runs.
fn open_data_dir(
    dir: &Path,
    log: &str,
    format: LogFormat,
) -> Result<(PathBuf, nix::fcntl::Flock<std::fs::File>)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let data_dir = dir.canonicalize()?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o711))?;
    let lock = lock_data_dir(&data_dir)?;
    init_logging(&data_dir.join(log), format)?;
    Ok((data_dir, lock))
}

/// Starts this host's agent (QEMU as `qemu.qemu_user`, the accelerator probed once per
/// boot of the host).
async fn start_agent(
    data_dir: &Path,
    host_name: String,
    qemu: QemuOptions,
) -> Result<Arc<hostel_agent::Shared>> {
    ensure_qemu_user(&qemu.qemu_user)?;
    let probe_cache = if nix::unistd::Uid::effective().is_root() {
        PathBuf::from("/run/hostel/accel-probe.json")
    } else {
        data_dir.join("accel-probe.json")
    };
    hostel_agent::start(AgentConfig {
        data_dir: data_dir.to_path_buf(),
        host_name,
        qemu_binary: qemu.qemu_binary,
        accel: qemu.accel,
        qemu_user: qemu.qemu_user,
        qemu_uids: hostel_agent::uids::UidRange {
            first: qemu.qemu_uid_first,
            count: qemu.qemu_uid_count,
        },
        probe_cache,
    })
    .await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("stopping; VMs keep running and are re-adopted at the next start");
    Ok(())
}

/// `hostel db copy`: every record of the database at `from` into the empty one at `to`.
/// A SQLite file is used only if it exists and no daemon holds its data dir.
pub async fn copy_database(from: &str, to: &str) -> Result<()> {
    let mut _locks = Vec::new();
    for url in [from, to] {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = Path::new(path.split('?').next().unwrap_or(path));
            if url == from && !path.is_file() {
                bail!("{}: no such database file", path.display());
            }
            if let Some(dir) = path.parent().filter(|d| d.is_dir()) {
                _locks.push(lock_data_dir(dir)?);
            }
        } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!(
                "{}: give a postgres:// URL or sqlite:///PATH",
                hostel_store::redact_url(url)
            );
        }
    }
    let open = |url: &str| {
        let url = url.to_string();
        async move {
            hostel_store::Store::open(&url)
                .await
                .with_context(|| format!("opening {}", hostel_store::redact_url(&url)))
        }
    };
    let (src, dst) = (open(from).await?, open(to).await?);
    let copied = src.copy_into(&dst).await?;
    let rows: u64 = copied.iter().map(|(_, n)| n).sum();
    for (t, n) in &copied {
        println!("{t:<14} {n}");
    }
    println!(
        "copied {rows} rows of {} tables into {}",
        copied.len(),
        hostel_store::redact_url(to)
    );
    Ok(())
}

/// The controller's database: SQLite in the data directory, or the PostgreSQL named.
async fn open_store(data_dir: &Path, database: Option<&str>) -> Result<hostel_store::Store> {
    let Some(url) = database else {
        let db = data_dir.join("hostel.db");
        create_private(&db)?;
        return hostel_store::Store::open(&format!("sqlite://{}", db.display())).await;
    };
    let shown = hostel_store::redact_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!(
            "--database {shown}: give a postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE URL \
             (leave --database out for SQLite in the data directory)"
        );
    }
    let store = hostel_store::Store::open(url).await.with_context(|| {
        format!(
            "cannot use the PostgreSQL database {shown}: is the server up, does the database \
             exist (createdb), and may its user connect and create tables?"
        )
    })?;
    tracing::info!(database = %shown, "the controller's database is PostgreSQL");
    Ok(store)
}

/// `hostel up` (a controller and its local agent), or `hostel controller` (a controller
/// alone: no `qemu`).
pub async fn up(opts: UpOptions) -> Result<()> {
    let alone = opts.qemu.is_none();
    if alone && opts.database.is_none() {
        bail!(
            "hostel controller needs --database postgres://USER[:PASSWORD]@HOST/DATABASE: the \
             controllers share one PostgreSQL database (run `hostel up` for one machine on SQLite)"
        );
    }
    let (data_dir, _lock) = open_data_dir(&opts.data_dir, "hostel.log", opts.log_format)?;
    let log_file = data_dir.join("hostel.log");
    tracing::info!(data_dir = %data_dir.display(), role = if alone { "controller" } else { "up" }, "hostel starting");

    let pki = Pki::open(&data_dir.join("pki"))?;
    let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    // Each with its one role (see `Role`); the stems changed when roles came in, so that
    // certificates made before, good for both, are not used again.
    let agent_pair = pki.node("local-agent", &sans, Role::Agent)?;
    let ctl_pair = pki.node(
        "controller-client",
        &["controller".to_string()],
        Role::Controller,
    )?;
    let admin_token = read_or_make_token(&data_dir.join("admin.token"))?;

    let store = open_store(&data_dir, opts.database.as_deref()).await?;

    // Hostel's own ports are bound before any network state (with its port forwards) is
    // applied, so a forward can never take them; they are served further down.
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let api_addr = listener.local_addr()?;
    let ssh_listener = tokio::net::TcpListener::bind(opts.ssh_listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} for the SSH console gateway (--ssh-listen)",
                opts.ssh_listen
            )
        })?;
    let metrics_listener = match opts.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} for /metrics (--metrics-listen)"))?,
        ),
        None => None,
    };

    let host_name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The local agent (`hostel up`), serving on a loopback port of its own.
    let local = match &opts.qemu {
        Some(qemu) => {
            let shared = start_agent(&data_dir, host_name.clone(), qemu.clone()).await?;
            let agent_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let agent_addr = agent_listener.local_addr()?;
            let mut rx = stop_rx.clone();
            let task = tokio::spawn(hostel_agent::serve(
                shared.clone(),
                agent_listener,
                TlsFiles {
                    cert_pem: agent_pair.cert_pem,
                    key_pem: agent_pair.key_pem,
                    client_ca_pem: pki.ca_pem()?,
                },
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ));
            Some((agent_addr, task))
        }
        None => None,
    };

    let controller = Controller::new(
        store,
        ControllerConfig {
            data_dir: data_dir.clone(),
            admin_token: admin_token.clone(),
            log_file: log_file.clone(),
            default_lease_days: opts.default_lease_days,
            web_dir: web_dir(opts.web_dir.clone()),
            min_free_space: opts.min_free_space,
            refusal_budgets: hostel_controller::throttle::Budgets::scaled(opts.refusal_budget),
            stale_after: opts.stale_after,
        },
    );
    controller.reserve_own_port(api_addr.port(), "Hostel's API");
    controller.reserve_own_port(
        ssh_listener.local_addr()?.port(),
        "Hostel's SSH console gateway",
    );
    // Consoles whose token expires while open end within this.
    controller.spawn_console_watch(std::time::Duration::from_secs(5));
    // The VMs' usage graphs (in memory only).
    controller.spawn_usage_sampler(hostel_controller::stats::STATS_INTERVAL);
    controller.set_agent_tls(ClientTls {
        ca_pem: pki.ca_pem()?,
        cert_pem: ctl_pair.cert_pem,
        key_pem: ctl_pair.key_pem,
    })?;
    controller
        .bootstrap_admin(&admin_token)
        .await
        .context("registering the admin user's token")?;
    controller.set_pki(Pki::open(&data_dir.join("pki"))?);
    controller.spawn_heartbeat(host_name.clone(), format!("http://{api_addr}"));
    // Held for as long as this process runs (`hostel up` leads alone).
    let mut _lead = None;
    match &local {
        Some((agent_addr, _)) => {
            // The only controller: if another leads this database, it stops here.
            _lead = Some(controller.lead_alone().await?);
            // Before any host's state is read: VMs whose migration was under way wait
            // for it to be settled.
            controller
                .resume_migrations()
                .await
                .context("reading the migrations under way")?;
            let n = controller.store.fail_interrupted_tasks().await?;
            if n > 0 {
                tracing::warn!(n, "marked tasks interrupted by the last stop as failed");
            }
            let agent = controller.agent_client(&format!("https://{agent_addr}"))?;
            let host = controller.add_host(agent).await?;
            controller.set_local_host(&host);
            tracing::info!(%host, agent = %agent_addr, "local agent registered");
            // The lease reaper, the audit upkeep, the hosts added with `hostel host add`
            // (back by themselves), and the operations a crash interrupted.
            controller.start_leader_work();
            if opts.default_network {
                let startup = Ctx::system(SystemActor::Startup);
                if let Err(e) = controller.ensure_default_network(&startup).await {
                    tracing::error!("cannot set up the default network: {e}");
                }
            }
        }
        None => {
            // One of several: it stands by and leads when it can; a lead lost ends it.
            let c = controller.clone();
            tokio::spawn(async move {
                let e = c.contend().await;
                tracing::error!("{e:#}");
                eprintln!("hostel controller: {e:#}");
                std::process::exit(3);
            });
        }
    }

    let mut rx = stop_rx.clone();
    let api = hostel_controller::router(controller.clone());
    let app = hostel_web::router(api.clone()).merge(api);
    // TCP_NODELAY, so that a response's last small segment does not wait for an ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |s| {
        let _ = s.set_nodelay(true);
    });
    let api_task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await
    });
    tracing::info!(%api_addr, "API listening");
    if let Some(l) = metrics_listener {
        let addr = l.local_addr()?;
        *controller.metrics_listen.lock().unwrap() = Some(addr.to_string());
        let app = hostel_controller::metrics_router(controller.clone());
        tokio::spawn(async move { axum::serve(l, app).await });
        tracing::info!(%addr, "metrics listening (/metrics, no token)");
    }
    let host_key =
        hostel_controller::sshgw::host_key(&data_dir.join("pki").join("ssh_host_ed25519_key"))?;
    tracing::info!(addr = %ssh_listener.local_addr()?, "SSH console gateway listening");
    controller.spawn_ssh_gateway(ssh_listener, host_key);

    if local.is_some() {
        ensure_tiny_image(&controller).await;
    }

    let url = format!("http://{api_addr}");
    ClientConfig {
        url: url.clone(),
        token: admin_token,
    }
    .write(&opts.client_config)?;
    tracing::info!(%url, config = %opts.client_config.display(), "hostel is ready");
    let first_password = opts
        .data_dir
        .join(hostel_controller::accounts::INITIAL_ADMIN_PASSWORD);
    if first_password.exists() {
        tracing::info!(
            web = %format!("{url}/"),
            password_file = %first_password.display(),
            "the web UI: log in as admin with the password in the file (then change it)"
        );
    }

    stop_signal().await?;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    if let Some((_, agent_task)) = local {
        let _ = tokio::time::timeout(Duration::from_secs(5), agent_task).await;
    }
    Ok(())
}

/// Builds the `tiny` image on first start, so a new user has a bootable image at once.
async fn ensure_tiny_image(c: &std::sync::Arc<Controller>) {
    match c.store.image_by_name("tiny").await {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!("cannot check for the tiny image: {e:#}");
            return;
        }
    }
    tracing::info!("building the tiny image (first start)");
    let req = hostel_api::public::BuildImageRequest {
        recipe: "tiny".into(),
        name: Some("tiny".into()),
        suite: None,
        packages: Vec::new(),
        size_mib: None,
        mirror: None,
    };
    let startup = Ctx::system(SystemActor::Startup);
    let task = match c.build_image(&startup, req).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("cannot build the tiny image: {e}");
            return;
        }
    };
    loop {
        match c.task(&startup, &task.id).await {
            Ok(t) if t.state != hostel_api::public::TaskState::Running => {
                match t.error {
                    Some(e) => tracing::error!("building the tiny image failed: {e}"),
                    None => tracing::info!("the tiny image is ready"),
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct AgentOptions {
    pub log_format: LogFormat,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Holds agent.pem, agent.key and ca.pem from `hostel agent-cert`.
    pub tls_dir: PathBuf,
    pub name: String,
    pub qemu: QemuOptions,
}

/// `hostel agent`: one host's agent on its own, for a controller elsewhere to add with
/// `hostel host add`. Only clients with a certificate from the cluster CA get through.
pub async fn agent(opts: AgentOptions) -> Result<()> {
    hostel_model::validate_name("--name", &opts.name).map_err(|e| {
        anyhow::anyhow!("{e} (the hostname is the default name: give --name when it is not one)")
    })?;
    let (data_dir, _lock) = open_data_dir(&opts.data_dir, "agent.log", opts.log_format)?;
    let read = |f: &str| {
        let p = opts.tls_dir.join(f);
        std::fs::read(&p).with_context(|| {
            format!(
                "reading {} (make the agent's certificate with `hostel agent-cert` on the \
                 controller's machine)",
                p.display()
            )
        })
    };
    let tls = TlsFiles {
        cert_pem: read("agent.pem")?,
        key_pem: read("agent.key")?,
        client_ca_pem: read("ca.pem")?,
    };
    let shared = start_agent(&data_dir, opts.name.clone(), opts.qemu).await?;
    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(name = %opts.name, %addr, "agent listening");
    // The address, on stdout, for whoever started it (and `hostel host add`).
    println!("https://{addr}");
    if addr.ip().is_unspecified() {
        eprintln!(
            "listening on every address: add the host with https://ADDRESS:{} for an address \
             its certificate names (hostel agent-cert --san)",
            addr.port()
        );
    }
    let stop = async move {
        let _ = stop_signal().await;
    };
    hostel_agent::serve(shared, listener, tls, stop).await
}

/// `hostel agent-cert`: a certificate from this controller's CA for an agent named
/// `name`, valid for `sans` (its addresses), written with the CA's certificate to `out`.
pub fn agent_cert(data_dir: &Path, name: &str, sans: &[String], out: &Path) -> Result<()> {
    hostel_model::validate_name("name", name).map_err(|e| anyhow::anyhow!("{e}"))?;
    if sans.is_empty() {
        anyhow::bail!("give the agent's addresses (--san IP or DNS name, once or more)");
    }
    let pki_dir = data_dir.join("pki");
    if !pki_dir.join("ca.key").exists() {
        anyhow::bail!(
            "{} has no cluster CA: run this on the controller's machine, with its --data-dir",
            pki_dir.display()
        );
    }
    let pki = Pki::open(&pki_dir)?;
    // Always a new certificate, for the addresses given now.
    let pair = pki.issue(&format!("node-{name}"), sans, Role::Agent)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("agent.pem"), &pair.cert_pem)?;
    hostel_controller::pki::write_private(&out.join("agent.key"), &pair.key_pem)?;
    std::fs::write(out.join("ca.pem"), pki.ca_pem()?)?;
    Ok(())
}
