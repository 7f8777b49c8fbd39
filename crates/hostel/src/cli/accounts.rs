//! Accounts and who may do what: `login`, `whoami`, users, groups, tokens, SSH keys,
//! `chown`, quotas and the audit trail.

use super::files::first_line;
use super::output::{self, Column, Format};
use super::parse;
use crate::client::{self, vm_path, Api};
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use hostel_api::public::*;
use hostel_model::format_mib;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Log in with a user name and password: gets a new API token and writes the client
    /// config (URL and token) for the commands that follow.
    Login {
        user: String,
        /// The API's URL, like http://127.0.0.1:8470 (default: the config's).
        #[arg(long)]
        url: Option<String>,
        /// Read the password from this file's first line (default: ask on the terminal).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Days the token lasts.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Who the client config's token belongs to.
    Whoami {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// User accounts (admins).
    #[command(subcommand)]
    User(UserCmd),
    /// Groups of users that may own or administer VMs.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Your API tokens (admins: anyone's, with --user).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Your SSH public keys, put into the guests of the VMs you own (admins: --user).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Give a VM to a user or a group, and set its administrator group.
    Chown {
        vm: String,
        /// user:NAME or group:NAME.
        owner: String,
        /// A group whose members may operate the VM too ("" removes it).
        #[arg(long)]
        admin_group: Option<String>,
    },
    /// Quotas: use against limits.
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// The audit trail: every action that changed something, or was refused (`-o json`
    /// shows each one's parameters); `retention` and `prune` manage how long it is kept.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        manage: Option<super::audit::AuditCmd>,
        #[arg(long)]
        vm: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// RFC 3339 time, like 2026-11-22T00:00:00Z.
        #[arg(long)]
        since: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The operations journal: what each multi-step operation did, how far it got and
    /// how it ended (one a crash interrupted ends failed, saying what was undone).
    Operations {
        /// Only those running, succeeded or failed.
        #[arg(long, value_parser = ["running", "succeeded", "failed"])]
        state: Option<String>,
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
pub enum QuotaCmd {
    /// Use against limit: yours, or OWNER's (user:NAME, group:NAME, default).
    Show {
        owner: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Set an owner's limits, or the defaults (`default`); admins. Sizes like 8G.
    Set {
        owner: String,
        #[arg(long, value_parser = parse::size_mib)]
        ram_total: Option<u64>,
        #[arg(long, value_parser = parse::size_mib)]
        ram_per_vm: Option<u64>,
        #[arg(long, value_parser = parse::size_mib)]
        disk_total: Option<u64>,
        #[arg(long, value_parser = parse::size_mib)]
        disk_per_vm: Option<u64>,
        #[arg(long)]
        vms_total: Option<u64>,
        #[arg(long)]
        vms_running: Option<u64>,
        #[arg(long)]
        vcpus_total: Option<u64>,
        /// NICs of all the owner's VMs.
        #[arg(long)]
        nics_total: Option<u64>,
        /// Port forwards of all the owner's VMs.
        #[arg(long)]
        port_forwards_total: Option<u64>,
        /// Snapshots of all the owner's VMs.
        #[arg(long)]
        snapshots_total: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    Create {
        name: String,
        #[arg(long)]
        admin: bool,
        /// Read the password from this file's first line (none: tokens only).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    Delete {
        name: String,
    },
    /// Set a password: your own without NAME (give the current one too), or, for admins,
    /// another user's.
    Passwd {
        name: Option<String>,
        /// A file whose first line is the new password.
        #[arg(long)]
        password_file: PathBuf,
        /// A file whose first line is your current password (to change your own).
        #[arg(long)]
        current_password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum GroupCmd {
    Create {
        name: String,
    },
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    Delete {
        name: String,
    },
    AddMember {
        group: String,
        user: String,
    },
    RemoveMember {
        group: String,
        user: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a token; its secret is printed once.
    Create {
        name: String,
        #[arg(long)]
        read_only: bool,
        /// Days until it expires (none: until revoked).
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// An exact end, RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    Revoke {
        name: String,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Add a public key (a key, or a file such as ~/.ssh/id_ed25519.pub).
    Add {
        name: String,
        key: String,
        #[arg(long)]
        user: Option<String>,
    },
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    Remove {
        name: String,
        #[arg(long)]
        user: Option<String>,
    },
}

const USER_COLUMNS: &[Column<User>] = &[
    ("NAME", |u| u.name.clone()),
    ("ADMIN", |u| u.admin.to_string()),
    ("GROUPS", |u| u.groups.join(",")),
    ("CREATED", |u| u.created_at.clone()),
];

const GROUP_COLUMNS: &[Column<Group>] = &[
    ("NAME", |g| g.name.clone()),
    ("MEMBERS", |g| g.members.join(",")),
];

const TOKEN_COLUMNS: &[Column<TokenInfo>] = &[
    ("NAME", |k| k.name.clone()),
    ("ACCESS", |k| {
        if k.read_only { "read-only" } else { "full" }.into()
    }),
    ("EXPIRES", |k| {
        k.expires_at.clone().unwrap_or_else(|| "never".into())
    }),
    ("REVOKED", |k| k.revoked.to_string()),
    ("LAST USED", |k| k.last_used_at.clone().unwrap_or_default()),
];

const AUDIT_COLUMNS: &[Column<AuditEntry>] = &[
    ("AT", |e| e.at.clone()),
    ("USER", |e| e.user.clone().unwrap_or_else(|| "-".into())),
    ("FROM", |e| e.source.clone()),
    ("ACTION", |e| e.action.clone()),
    ("TARGET", |e| e.target.clone().unwrap_or_else(|| "-".into())),
    ("RESULT", |e| e.result.clone()),
    ("ERROR", |e| e.error.clone().unwrap_or_default()),
];

const OPERATION_COLUMNS: &[Column<Operation>] = &[
    ("STARTED", |o| o.started_at.clone()),
    ("KIND", |o| o.kind.clone()),
    ("TARGET", |o| o.target.clone()),
    ("STATE", |o| o.state.as_str().into()),
    ("STEP", |o| o.step.clone().unwrap_or_else(|| "-".into())),
    ("ERROR", |o| o.error.clone().unwrap_or_default()),
];

/// `?user=NAME` when a user is given.
fn user_q(user: &Option<String>) -> String {
    user.as_ref()
        .map(|u| format!("?user={u}"))
        .unwrap_or_default()
}

pub async fn run(cmd: Cmd) -> Result<()> {
    if let Cmd::Login {
        user,
        url,
        password_file,
        days,
    } = cmd
    {
        return login(user, url, password_file, days).await;
    }
    let api = Api::new()?;
    match cmd {
        Cmd::Login { .. } => unreachable!("handled above"),
        Cmd::Whoami { output } => {
            let w: WhoAmI = api.get("/api/v1/whoami").await?;
            output::show(output, &w, |w| {
                println!(
                    "{}{} (token {}{}); groups: {}",
                    w.user,
                    if w.admin { ", admin" } else { "" },
                    w.token,
                    if w.read_only { ", read-only" } else { "" },
                    if w.groups.is_empty() {
                        "none".into()
                    } else {
                        w.groups.join(", ")
                    }
                )
            })
        }
        Cmd::User(cmd) => user(&api, cmd).await,
        Cmd::Group(cmd) => group(&api, cmd).await,
        Cmd::Token(cmd) => token(&api, cmd).await,
        Cmd::Key(cmd) => key(&api, cmd).await,
        Cmd::Chown {
            vm,
            owner,
            admin_group,
        } => {
            let v: Vm = api
                .post(
                    &format!("{}/owner", vm_path(&vm)),
                    &SetOwnerRequest { owner, admin_group },
                )
                .await?;
            println!(
                "{}: owner {}, administrator group {}",
                v.name,
                v.owner.unwrap_or_else(|| "none".into()),
                v.admin_group.unwrap_or_else(|| "none".into())
            );
            Ok(())
        }
        Cmd::Quota(cmd) => quota(&api, cmd).await,
        Cmd::Audit {
            manage: Some(cmd), ..
        } => super::audit::run(&api, cmd).await,
        Cmd::Audit {
            manage: None,
            vm,
            user,
            since,
            output,
        } => {
            let mut q = Vec::new();
            for (k, v) in [("vm", vm), ("user", user), ("since", since)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            let entries: Vec<AuditEntry> =
                api.get(&format!("/api/v1/audit?{}", q.join("&"))).await?;
            output::list(output, &entries, AUDIT_COLUMNS)
        }
        Cmd::Operations {
            state,
            vm,
            limit,
            output,
        } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [("state", state), ("vm", vm)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            let list: OperationList = api
                .get(&format!("/api/v1/operations?{}", q.join("&")))
                .await?;
            output::list(output, &list.operations, OPERATION_COLUMNS)
        }
    }
}

async fn user(api: &Api, cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Create {
            name,
            admin,
            password_file,
        } => {
            let password = password_file.map(|f| first_line(&f)).transpose()?;
            let req = CreateUserRequest {
                name,
                password,
                admin,
            };
            let u: User = api.post("/api/v1/users", &req).await?;
            println!(
                "created user {}{}",
                u.name,
                if u.admin { " (admin)" } else { "" }
            );
        }
        UserCmd::List { output } => {
            let users: Vec<User> = api.get("/api/v1/users").await?;
            output::list(output, &users, USER_COLUMNS)?;
        }
        UserCmd::Delete { name } => {
            api.delete(&format!("/api/v1/users/{name}")).await?;
            println!("deleted user {name}");
        }
        UserCmd::Passwd {
            name,
            password_file,
            current_password_file,
        } => {
            let password = first_line(&password_file)?;
            let current_password = current_password_file
                .as_deref()
                .map(first_line)
                .transpose()?;
            let path = match &name {
                Some(n) => format!("/api/v1/users/{n}/password"),
                None => "/api/v1/me/password".into(),
            };
            let req = PasswordRequest {
                password,
                current_password,
            };
            let _: serde_json::Value = api.post(&path, &req).await?;
            println!("password set");
        }
    }
    Ok(())
}

async fn group(api: &Api, cmd: GroupCmd) -> Result<()> {
    let g: Group = match cmd {
        GroupCmd::Create { name } => {
            let g: Group = api
                .post("/api/v1/groups", &CreateGroupRequest { name })
                .await?;
            println!("created group {}", g.name);
            return Ok(());
        }
        GroupCmd::List { output } => {
            let groups: Vec<Group> = api.get("/api/v1/groups").await?;
            return output::list(output, &groups, GROUP_COLUMNS);
        }
        GroupCmd::Delete { name } => {
            api.delete(&format!("/api/v1/groups/{name}")).await?;
            println!("deleted group {name}");
            return Ok(());
        }
        GroupCmd::AddMember { group, user } => {
            api.post(
                &format!("/api/v1/groups/{group}/members"),
                &MemberRequest { user },
            )
            .await?
        }
        GroupCmd::RemoveMember { group, user } => {
            api.post(
                &format!("/api/v1/groups/{group}/members/remove"),
                &MemberRequest { user },
            )
            .await?
        }
    };
    println!("{}: {}", g.name, g.members.join(", "));
    Ok(())
}

async fn token(api: &Api, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            name,
            read_only,
            expires_in_days,
            expires_at,
            user,
        } => {
            let req = CreateTokenRequest {
                name,
                read_only,
                expires_in_days,
                expires_at,
                password: None,
            };
            let t: NewToken = api
                .post(&format!("/api/v1/me/tokens{}", user_q(&user)), &req)
                .await?;
            println!("{}", t.token);
            let expiry = match (&t.expires_at, t.expiry_inherited) {
                (Some(e), true) => format!(", expires at {e} (the expiry of the token you used)"),
                (Some(e), false) => format!(", expires at {e}"),
                (None, _) => String::new(),
            };
            eprintln!(
                "token {} made{}{expiry}; this is the only time it is shown",
                t.name,
                if t.read_only { ", read-only" } else { "" },
            );
            Ok(())
        }
        TokenCmd::List { user, output } => {
            let tokens: Vec<TokenInfo> = api
                .get(&format!("/api/v1/me/tokens{}", user_q(&user)))
                .await?;
            output::list(output, &tokens, TOKEN_COLUMNS)
        }
        TokenCmd::Revoke { name, user } => {
            api.delete(&format!("/api/v1/me/tokens/{name}{}", user_q(&user)))
                .await?;
            println!("revoked token {name}");
            Ok(())
        }
    }
}

async fn key(api: &Api, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Add { name, key, user } => {
            let p = std::path::Path::new(&key);
            let public_key = if !key.contains(' ') && p.is_file() {
                first_line(p)?
            } else {
                key
            };
            let k: SshKey = api
                .post(
                    &format!("/api/v1/me/keys{}", user_q(&user)),
                    &AddKeyRequest { name, public_key },
                )
                .await?;
            println!("added key {}", k.name);
            Ok(())
        }
        KeyCmd::List { user, output } => {
            let keys: Vec<SshKey> = api
                .get(&format!("/api/v1/me/keys{}", user_q(&user)))
                .await?;
            output::show(output, &keys, |keys| {
                for k in keys {
                    println!("{}\t{}", k.name, k.public_key);
                }
            })
        }
        KeyCmd::Remove { name, user } => {
            api.delete(&format!("/api/v1/me/keys/{name}{}", user_q(&user)))
                .await?;
            println!("removed key {name}");
            Ok(())
        }
    }
}

async fn quota(api: &Api, cmd: QuotaCmd) -> Result<()> {
    match cmd {
        QuotaCmd::Show { owner, output } => {
            let q: Quota = api
                .get(&match &owner {
                    Some(o) => format!("/api/v1/quotas?owner={o}"),
                    None => "/api/v1/quotas".into(),
                })
                .await?;
            output::show(output, &q, print_quota)
        }
        QuotaCmd::Set {
            owner,
            ram_total,
            ram_per_vm,
            disk_total,
            disk_per_vm,
            vms_total,
            vms_running,
            vcpus_total,
            nics_total,
            port_forwards_total,
            snapshots_total,
        } => {
            let limits = QuotaLimits {
                ram_total_mib: ram_total,
                ram_per_vm_mib: ram_per_vm,
                disk_total_mib: disk_total,
                disk_per_vm_mib: disk_per_vm,
                vms_total,
                vms_running,
                vcpus_total,
                nics_total,
                port_forwards_total,
                snapshots_total,
            };
            let q: Quota = api.put(&format!("/api/v1/quotas/{owner}"), &limits).await?;
            println!("quota of {} set", q.owner);
            Ok(())
        }
    }
}

/// The owner, then use against limit, one row per limit.
fn print_quota(q: &Quota) {
    let (l, u) = (&q.limits, &q.used);
    let lim = |v: Option<u64>, mib: bool| match v {
        None => "none".to_string(),
        Some(v) if mib => format_mib(v),
        Some(v) => v.to_string(),
    };
    let rows = [
        [
            "max memory (running)",
            &format_mib(u.ram_mib),
            &lim(l.ram_total_mib, true),
        ],
        ["memory per VM", "", &lim(l.ram_per_vm_mib, true)],
        [
            "disk space",
            &format_mib(u.disk_mib),
            &lim(l.disk_total_mib, true),
        ],
        ["  of it snapshots", &format_mib(u.snapshots_mib), ""],
        ["  of it save files", &format_mib(u.saves_mib), ""],
        ["disks per VM", "", &lim(l.disk_per_vm_mib, true)],
        ["VMs", &u.vms.to_string(), &lim(l.vms_total, false)],
        [
            "running VMs",
            &u.vms_running.to_string(),
            &lim(l.vms_running, false),
        ],
        [
            "vCPUs (running)",
            &u.vcpus.to_string(),
            &lim(l.vcpus_total, false),
        ],
        ["NICs", &u.nics.to_string(), &lim(l.nics_total, false)],
        [
            "port forwards",
            &u.port_forwards.to_string(),
            &lim(l.port_forwards_total, false),
        ],
        [
            "snapshots",
            &u.snapshots.to_string(),
            &lim(l.snapshots_total, false),
        ],
    ];
    println!(
        "{}{}",
        q.owner,
        if q.exempt {
            " (admin: not limited)"
        } else {
            ""
        }
    );
    output::print_grid(
        ["", "USED", "LIMIT"],
        rows.iter()
            .map(|r| r.iter().map(|c| c.to_string()).collect()),
    );
}

async fn login(
    user: String,
    url: Option<String>,
    password_file: Option<PathBuf>,
    days: u32,
) -> Result<()> {
    let url = match url {
        Some(u) => u,
        None => client::ClientConfig::load().map(|c| c.url).map_err(|_| {
            anyhow!("give the API's URL with --url (there is no client config yet)")
        })?,
    };
    let password = match password_file {
        Some(f) => first_line(&f)?,
        None => rpassword_prompt(&format!("password for {user}: "))?,
    };
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/login", url.trim_end_matches('/')))
        .json(&LoginRequest {
            user: user.clone(),
            password,
            token_name: None,
            expires_in_days: Some(days),
            browser: None,
        })
        .send()
        .await
        .with_context(|| format!("cannot reach Hostel at {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        let msg = serde_json::from_str::<hostel_api::ErrorBody>(&text)
            .map(|e| e.message)
            .unwrap_or(text);
        bail!("{msg}");
    }
    let t: NewToken = serde_json::from_str(&text)?;
    let path = client::config_path();
    client::ClientConfig {
        url: url.trim_end_matches('/').to_string(),
        token: t.token,
    }
    .write(&path)?;
    println!(
        "logged in as {user}; token {} (expires {}) written to {}",
        t.name,
        t.expires_at.unwrap_or_else(|| "never".into()),
        path.display()
    );
    Ok(())
}

/// Reads a password from the terminal without echoing it.
fn rpassword_prompt(prompt: &str) -> Result<String> {
    use std::io::{BufRead, Write};
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let stdin = std::io::stdin();
    let fd = std::os::fd::AsFd::as_fd(&stdin);
    let old = nix::sys::termios::tcgetattr(fd).ok();
    if let Some(t) = &old {
        let mut quiet = t.clone();
        quiet
            .local_flags
            .remove(nix::sys::termios::LocalFlags::ECHO);
        let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = &old {
        let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, t);
    }
    eprintln!();
    r?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
