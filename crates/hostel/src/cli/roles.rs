//! The daemon roles' command lines: `up`, `agent`, `agent-cert`, `db`, and `openapi`.
//! What they run is in `daemon.rs` and `pki.rs`.

use super::files::absolute;
use crate::{client, daemon};
use anyhow::Result;
use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Run everything on this machine: controller, local agent, SQLite, API.
    Up {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        qemu: daemon::QemuOptions,
        /// Do not create the `default` NAT network.
        #[arg(long)]
        no_default_network: bool,
    },
    /// Run a controller alone (API, web UI, SSH console gateway), one of several sharing
    /// one PostgreSQL database (--database), for agents elsewhere (`hostel host add`).
    /// One of them leads: it follows the hosts and runs the background work; another
    /// takes over within seconds when it dies. Copy the first one's DATA/pki and
    /// DATA/admin.token into the others' data directories.
    Controller {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run one host's agent on its own, for a controller elsewhere to add (`hostel host
    /// add`). Prints its address.
    Agent {
        /// Read settings from this TOML file's [agent] table (keys are these flags);
        /// flags and their environment variables win over it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, default_value = "/var/lib/hostel-agent")]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:8471")]
        listen: SocketAddr,
        /// The directory `hostel agent-cert --out` wrote (agent.pem, agent.key, ca.pem).
        #[arg(long)]
        tls_dir: PathBuf,
        /// The host's name in the cluster (default: its hostname).
        #[arg(long)]
        name: Option<String>,
        /// `text`, or `json`: one JSON object a line, for journald and log shippers.
        #[arg(long, env = "HOSTEL_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: daemon::LogFormat,
        #[command(flatten)]
        qemu: daemon::QemuOptions,
    },
    /// On the controller's machine: a certificate from its cluster CA for an agent, to
    /// copy to that host and give `hostel agent --tls-dir`.
    AgentCert {
        /// The agent's host name (as `hostel agent --name` will give it).
        name: String,
        /// An address the controller reaches the agent at (IP or DNS name); repeatable.
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// The controller's data directory (where its `pki/` is).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where to write agent.pem, agent.key and ca.pem.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the OpenAPI document of the REST API.
    Openapi,
    /// The controller's database, with `hostel up` stopped: move an installation from
    /// SQLite to PostgreSQL, or copy it between any two.
    #[command(subcommand)]
    Db(DbCmd),
}

/// What a controller serves, and from where: `hostel up`'s and `hostel controller`'s.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file's [up] or [controller] table (keys are these
    /// flags, as in /etc/hostel/hostel.toml); flags and their environment variables
    /// win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the database (SQLite), the VMs' disks, the PKI and the log live. Default:
    /// /var/lib/hostel as root, else ~/.local/share/hostel.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8470")]
    pub listen: SocketAddr,
    /// Give new VMs a lease of this many days (they are shut down when it ends,
    /// until renewed). Default: no leases.
    #[arg(long)]
    pub default_lease_days: Option<u32>,
    /// Where the SSH console gateway listens (`ssh -p PORT VMNAME@HOST`).
    #[arg(long, default_value = "127.0.0.1:2222")]
    pub ssh_listen: SocketAddr,
    /// Also serve `/metrics` (Prometheus text format) here, without a token: for a
    /// scraper on a private network. On the API's address it needs an admin's token.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// `text`, or `json`: one JSON object a line, for journald and log shippers.
    #[arg(long, env = "HOSTEL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: daemon::LogFormat,
    /// The npm packages the browser consoles load (xterm.js, noVNC): a node_modules
    /// made by `npm ci` in the source tree's web/. Default: that one, when present.
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
    /// Free space the data directory's filesystem keeps for the VMs' disks: below
    /// it, new VMs, disks, resizes, snapshots, images and saves are refused. A share
    /// (5%) or an amount (2GiB); 0: no floor.
    #[arg(long, default_value = "5%", value_parser = parse_floor)]
    pub min_free_space: hostel_controller::FreeSpaceFloor,
    /// Refused requests (bad logins, wrong or missing tokens) an address may have in
    /// a burst before it is answered 429; it gets one back every 20/N s, and the
    /// budgets of users and of all addresses together scale with it (see
    /// docs/operations.md). Raise it when every user comes through one proxy.
    #[arg(long, env = "HOSTEL_REFUSAL_BUDGET", default_value_t = hostel_controller::throttle::DEFAULT_ADDRESS_BURST)]
    pub refusal_budget: u32,
    /// Seconds a host may be offline before `hostel info` and the web UI show it as
    /// stale (greyed, with the age of its last report).
    #[arg(long, env = "HOSTEL_STALE_AFTER_SECS", value_name = "SECS", default_value_t = hostel_controller::DEFAULT_STALE_AFTER.as_secs())]
    pub stale_after: u64,
    /// The controller's database: a postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE
    /// URL (the database must exist; its tables are made). Default: SQLite in the
    /// data directory.
    #[arg(long, env = "HOSTEL_DATABASE", value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Subcommand)]
pub enum DbCmd {
    /// Copy an installation's records from its SQLite file (DATA/hostel.db) into an
    /// empty PostgreSQL database; then run `hostel up --database URL` on the same
    /// data dir. Stop `hostel up` first.
    MigrateFromSqlite {
        file: PathBuf,
        /// The PostgreSQL database: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Copy every record from one database into another, empty one: each a
    /// postgres:// URL or sqlite:///PATH (back to SQLite, say).
    Copy {
        #[arg(long, value_name = "URL")]
        from: String,
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

/// What `hostel up` (with its agent's QEMU) and `hostel controller` (without) run.
fn up_options(
    serve: ServeArgs,
    qemu: Option<daemon::QemuOptions>,
    default_network: bool,
) -> Result<daemon::UpOptions> {
    Ok(daemon::UpOptions {
        database: serve.database,
        min_free_space: serve.min_free_space,
        refusal_budget: serve.refusal_budget,
        stale_after: std::time::Duration::from_secs(serve.stale_after),
        data_dir: serve.data_dir.unwrap_or_else(daemon::default_data_dir),
        listen: serve.listen,
        qemu,
        client_config: client::config_path(),
        default_network,
        default_lease_days: serve.default_lease_days,
        ssh_listen: serve.ssh_listen,
        metrics_listen: serve.metrics_listen,
        log_format: serve.log_format,
        web_dir: serve
            .web_dir
            .map(|d| absolute(&d))
            .transpose()?
            .map(PathBuf::from),
    })
}

fn parse_floor(s: &str) -> Result<hostel_controller::FreeSpaceFloor, String> {
    s.parse()
}

pub async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Up {
            serve,
            qemu,
            no_default_network,
        } => daemon::up(up_options(serve, Some(qemu), !no_default_network)?).await,
        Cmd::Controller { serve } => daemon::up(up_options(serve, None, false)?).await,
        Cmd::Agent {
            data_dir,
            listen,
            tls_dir,
            name,
            log_format,
            qemu,
            config: _,
        } => {
            let name = match name {
                Some(n) => n,
                None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
            };
            daemon::agent(daemon::AgentOptions {
                log_format,
                data_dir,
                listen,
                tls_dir,
                name,
                qemu,
            })
            .await
        }
        Cmd::AgentCert {
            name,
            sans,
            data_dir,
            out,
        } => {
            let data_dir = data_dir.unwrap_or_else(daemon::default_data_dir);
            daemon::agent_cert(&data_dir, &name, &sans, &out)?;
            println!(
                "wrote {0}/agent.pem, {0}/agent.key and {0}/ca.pem: copy them to the host and \
                 run `hostel agent --name {name} --tls-dir DIR` there",
                out.display()
            );
            Ok(())
        }
        Cmd::Db(DbCmd::MigrateFromSqlite { file, to }) => {
            if !to.starts_with("postgres://") && !to.starts_with("postgresql://") {
                anyhow::bail!(
                    "--to {}: give the PostgreSQL database as postgres://USER[:PASSWORD]@HOST/DATABASE",
                    hostel_store::redact_url(&to)
                );
            }
            daemon::copy_database(&format!("sqlite://{}", absolute(&file)?), &to).await
        }
        Cmd::Db(DbCmd::Copy { from, to }) => daemon::copy_database(&from, &to).await,
        Cmd::Openapi => {
            println!("{}", hostel_controller::openapi_json());
            Ok(())
        }
    }
}
