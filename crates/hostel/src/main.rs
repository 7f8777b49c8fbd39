//! `hostel`: the daemon roles and the command-line client of the REST API.

mod client;
mod console;
mod daemon;
mod pki;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use client::Api;
use comfy_table::{presets::NOTHING, Table};
use hostel_api::public::*;
use hostel_model::{format_mib, parse_size_mib, Policy};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hostel",
    version,
    about = "Self-service virtual machine hosting"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Table2Json {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Yaml2Json {
    Yaml,
    Json,
}

// Parsed once per run: the size of its largest variant (create's many flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run everything on this machine: controller, local agent, SQLite, API.
    Up {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        qemu: daemon::QemuOptions,
        /// Do not create the `default` NAT network.
        #[arg(long)]
        no_default_network: bool,
        /// Give new VMs a lease of this many days (they are shut down when it ends,
        /// until renewed). Default: no leases.
        #[arg(long)]
        default_lease_days: Option<u32>,
        /// Where the SSH console gateway listens (`ssh -p PORT VMNAME@HOST`).
        #[arg(long, default_value = "127.0.0.1:2222")]
        ssh_listen: std::net::SocketAddr,
        /// The npm packages the browser consoles load (xterm.js, noVNC): a node_modules
        /// made by `npm ci` in the source tree's web/. Default: that one, when present.
        #[arg(long)]
        web_dir: Option<PathBuf>,
    },
    /// List the VMs you may operate (all of them for admins), in name order.
    List {
        /// Only the VMs on this host.
        #[arg(long)]
        host: Option<String>,
        /// Only the VMs in this state (running, stopped, paused, saved, crashed, ...).
        #[arg(long)]
        state: Option<String>,
        /// How many VMs each request asks for (1 to 1000); the list is whole either way.
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Create a VM from an image, and start it unless --no-start.
    Create {
        name: String,
        /// The image to boot (leave out with --cdrom or --kernel).
        #[arg(long)]
        image: Option<String>,
        #[arg(long, default_value = "512M")]
        memory: String,
        /// What mem-set may grow the VM to (default: --memory).
        #[arg(long)]
        max_memory: Option<String>,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// What vcpu-set may grow the VM to (default: --vcpus).
        #[arg(long)]
        max_vcpus: Option<u32>,
        /// Disk size: an overlay of a disk image, or a blank disk for a kernel image.
        #[arg(long)]
        disk: Option<String>,
        #[arg(long)]
        no_start: bool,
        #[arg(long, default_value = "destroy")]
        on_poweroff: String,
        #[arg(long, default_value = "restart")]
        on_reboot: String,
        #[arg(long, default_value = "destroy")]
        on_crash: String,
        /// A NIC on this network (repeatable). Without it: one NIC on `default`.
        #[arg(long = "network")]
        networks: Vec<String>,
        /// The IP of the NIC given by the --network in the same position.
        #[arg(long = "ip")]
        ips: Vec<String>,
        /// The MAC of the NIC given by the --network in the same position.
        #[arg(long = "mac")]
        macs: Vec<String>,
        /// No NIC at all.
        #[arg(long, conflicts_with = "networks")]
        no_network: bool,
        /// bios (SeaBIOS) or uefi (OVMF).
        #[arg(long, default_value = "bios")]
        firmware: String,
        /// Boot and install from an ISO: an image's name or a file on the host.
        #[arg(long)]
        cdrom: Option<String>,
        /// Boot this kernel directly (a file on the host), like a Xen `kernel=`.
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long)]
        initrd: Option<String>,
        #[arg(long)]
        cmdline: Option<String>,
        /// An SSH public key for the guest, or a file holding keys (repeatable).
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
        /// A file whose first line is the guest's root password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Attach no first-boot (NoCloud) seed.
        #[arg(long)]
        no_seed: bool,
        /// The storage pool for the VM's disk.
        #[arg(long)]
        pool: Option<String>,
        /// A lease in days (default: the cluster's).
        #[arg(long)]
        lease_days: Option<u32>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Start a stopped VM.
    Start { name: String },
    /// Reboot cleanly (ACPI power-off, then start again).
    Reboot { name: String },
    /// Pause a VM's vCPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Unpause { name: String },
    /// Stop a VM at once, like pulling the plug.
    Destroy { name: String },
    /// Delete a stopped VM and its disks.
    Delete {
        name: String,
        /// Keep the disk files (their paths are printed).
        #[arg(long)]
        keep_disks: bool,
    },
    /// Ask the guest to power off (ACPI).
    Shutdown {
        name: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Stop it hard if it has not powered off by the timeout.
        #[arg(long)]
        force: bool,
    },
    /// Set a VM's memory (balloon), up to its max memory.
    MemSet { name: String, size: String },
    /// Set a VM's vCPU count (hotplug), up to its max vCPUs.
    VcpuSet { name: String, vcpus: u32 },
    /// Show a VM: definition, live state, host, accelerator, QEMU command line.
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Yaml2Json,
    },
    /// Attach to a VM's serial console (Ctrl-] detaches), or print its log.
    Console {
        name: String,
        /// Print the end of the console log (kept, size-bounded and rotated, while the VM
        /// is stopped too) instead of attaching.
        #[arg(long)]
        log: bool,
        /// With --log: how many lines.
        #[arg(long, default_value_t = 50, requires = "log")]
        lines: usize,
        /// Print the address of a browser page for the console instead of attaching: the
        /// serial console in xterm.js, or with --vga the display in noVNC. The address
        /// holds a ticket good for one connection within 30 s.
        #[arg(long, conflicts_with = "log")]
        web: bool,
        /// With --web: the VGA display rather than the serial console.
        #[arg(long, requires = "web")]
        vga: bool,
        /// With --web: `-o json` prints the whole ticket.
        #[arg(short, long, value_enum, requires = "web")]
        output: Option<Table2Json>,
    },
    /// Save a VM's memory state to FILE (on its host) and stop it.
    Save { name: String, file: PathBuf },
    /// Resume a VM from a file written by `save`.
    Restore { file: PathBuf },
    /// The host(s): CPUs, memory, accelerator, QEMU version, VMs running.
    Info {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// The daemon's log tail.
    Dmesg {
        #[arg(long, default_value_t = 50)]
        lines: usize,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Images VMs boot from.
    #[command(subcommand)]
    Image(ImageCmd),
    /// A VM's disks.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Snapshots of a VM's disks (and optionally memory).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Storage pools VM disks live in (dir, btrfs).
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Hosts (admins): list them, add one whose agent runs elsewhere, remove an empty one.
    #[command(subcommand)]
    Host(HostCmd),
    /// Run one host's agent on its own, for a controller elsewhere to add (`hostel host
    /// add`). Prints its address.
    Agent {
        #[arg(long, default_value = "/var/lib/hostel-agent")]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:8471")]
        listen: std::net::SocketAddr,
        /// The directory `hostel agent-cert --out` wrote (agent.pem, agent.key, ca.pem).
        #[arg(long)]
        tls_dir: PathBuf,
        /// The host's name in the cluster (default: its hostname).
        #[arg(long)]
        name: Option<String>,
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
    /// Networks VMs attach to (DHCP, DNS, NAT, port guards).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// A VM's network interfaces.
    #[command(subcommand)]
    Nic(NicCmd),
    /// Host ports forwarded to a VM on a NAT network.
    #[command(subcommand, name = "port-forward")]
    PortForward(ForwardCmd),
    /// Check that the database and the hosts' files agree (orphans, missing files).
    Doctor {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Print the OpenAPI document of the REST API.
    Openapi,
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
        output: Table2Json,
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
    /// Extend a VM's lease (from now).
    Renew {
        name: String,
        #[arg(long)]
        days: Option<u32>,
        /// An exact end, RFC 3339 (admins).
        #[arg(long)]
        until: Option<String>,
    },
    /// Quotas: use against limits.
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// The audit trail: every request that changed something, or was refused.
    Audit {
        #[arg(long)]
        vm: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// RFC 3339 time, like 2026-11-22T00:00:00Z.
        #[arg(long)]
        since: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
}

#[derive(Subcommand)]
enum QuotaCmd {
    /// Use against limit: yours, or OWNER's (user:NAME, group:NAME, default).
    Show {
        owner: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Set an owner's limits, or the defaults (`default`); admins. Sizes like 8G.
    Set {
        owner: String,
        #[arg(long)]
        ram_total: Option<String>,
        #[arg(long)]
        ram_per_vm: Option<String>,
        #[arg(long)]
        disk_total: Option<String>,
        #[arg(long)]
        disk_per_vm: Option<String>,
        #[arg(long)]
        vms_total: Option<u64>,
        #[arg(long)]
        vms_running: Option<u64>,
        #[arg(long)]
        vcpus_total: Option<u64>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
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
        output: Table2Json,
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
enum GroupCmd {
    Create {
        name: String,
    },
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
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
enum TokenCmd {
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
        output: Table2Json,
    },
    Revoke {
        name: String,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
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
        output: Table2Json,
    },
    Remove {
        name: String,
        #[arg(long)]
        user: Option<String>,
    },
}

fn read_secret_file(f: &std::path::Path) -> Result<String> {
    Ok(std::fs::read_to_string(f)
        .with_context(|| format!("reading {}", f.display()))?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn user_q(user: &Option<String>) -> String {
    user.as_ref()
        .map(|u| format!("?user={u}"))
        .unwrap_or_default()
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
        Some(f) => read_secret_file(&f)?,
        None => rpassword_prompt(&format!("password for {user}: "))?,
    };
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/login", url.trim_end_matches('/')))
        .json(&LoginRequest {
            user: user.clone(),
            password,
            token_name: None,
            expires_in_days: Some(days),
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

#[derive(Subcommand)]
enum NetworkCmd {
    Create {
        name: String,
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long, default_value = "nat")]
        mode: String,
        #[arg(long)]
        uplink: Option<String>,
        #[arg(long)]
        domain: Option<String>,
        /// An IPv6 /64 prefix.
        #[arg(long)]
        ipv6: Option<String>,
        /// Upstream DNS server for names outside the network (default: none answered).
        #[arg(long)]
        dns_forward: Option<String>,
    },
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Yaml2Json,
    },
    /// Delete a network no NIC uses.
    Delete { name: String },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Snapshot all disks at one instant (crash-consistent while running).
    Create {
        vm: String,
        name: Option<String>,
        /// Include the memory state (running VMs); revert then resumes there.
        #[arg(long)]
        memory: bool,
    },
    List {
        vm: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Bring the disks back to a snapshot (the VM must be stopped).
    Revert {
        vm: String,
        name: String,
    },
    Delete {
        vm: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    /// Every host, whether its agent is connected, and what runs on it.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Add the host whose agent (`hostel agent`) answers at URL (https://ADDRESS:PORT).
    Add {
        url: String,
        /// A recorded host (same name) now at this address: take its record over.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a host that has no VMs, images or pools left.
    Remove { name: String },
}

#[derive(Subcommand)]
enum PoolCmd {
    /// Record a pool: a directory on a host (for btrfs: on a mounted btrfs filesystem).
    Create {
        name: String,
        #[arg(long, default_value = "dir")]
        driver: String,
        #[arg(long)]
        path: String,
        #[arg(long)]
        host: Option<String>,
    },
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Yaml2Json,
    },
    /// Forget a pool that holds no disks (its directory stays).
    Delete { name: String },
}

fn opt_mib(b: Option<u64>) -> String {
    b.map(|b| format_mib(b >> 20)).unwrap_or_else(|| "?".into())
}

#[derive(Subcommand)]
enum DiskCmd {
    /// Add a disk, blank or an overlay of a disk image (hot-plugged when running).
    Add {
        vm: String,
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        image: Option<String>,
        /// The storage pool (default: the host's `default` pool).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Remove a disk by index, and its file (hot-unplugged when running).
    Remove { vm: String, disk: u32 },
    /// Grow a disk (online when running).
    Resize { vm: String, disk: u32, size: String },
    List {
        vm: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
}

fn disk_table(disks: &[DiskView]) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(["INDEX", "SIZE", "FORMAT", "IMAGE", "PATH"]);
    for d in disks {
        t.add_row([
            d.index.to_string(),
            format_mib(d.size_mib),
            d.format.clone(),
            d.backing_image.clone().unwrap_or_default(),
            d.path.clone(),
        ]);
    }
    println!("{t}");
}

#[derive(Subcommand)]
enum NicCmd {
    /// Add a NIC (hot-plugged when the VM runs).
    Add {
        vm: String,
        #[arg(long)]
        network: String,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        mac: Option<String>,
    },
    /// Remove a NIC, given by MAC or index (hot-unplugged when the VM runs).
    Remove { vm: String, nic: String },
    /// NICs with MAC, IP, DNS name and the port guard's drop counter.
    List {
        vm: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
}

#[derive(Subcommand)]
enum ForwardCmd {
    /// HOSTPORT:GUESTPORT[/tcp|udp]
    Add {
        vm: String,
        spec: String,
    },
    Remove {
        vm: String,
        spec: String,
    },
    List {
        vm: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
}

fn parse_forward(spec: &str) -> Result<PortForwardRequest> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_string()),
        None => (spec, "tcp".to_string()),
    };
    let bad = || {
        anyhow::anyhow!(
            "{spec:?} is not a port forward: write HOSTPORT:GUESTPORT[/tcp|udp], like 8080:80/tcp"
        )
    };
    let (h, g) = ports.split_once(':').ok_or_else(bad)?;
    Ok(PortForwardRequest {
        host_port: h.parse().map_err(|_| bad())?,
        guest_port: g.parse().map_err(|_| bad())?,
        proto,
    })
}

#[derive(Subcommand)]
enum ImageCmd {
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Build an image from a recipe: `tiny` (Debian's cloud kernel + a busybox
    /// initramfs) or `debian` (a bootable Debian from the mirror, with cloud-init).
    Build {
        recipe: String,
        #[arg(long)]
        name: Option<String>,
        /// Debian suite (debian recipe).
        #[arg(long)]
        suite: Option<String>,
        /// Extra packages, comma-separated (debian recipe).
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// Disk size, like 4G (debian recipe).
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Import a raw, qcow2, vmdk, vdi or vhdx file (a path on the host, or an http(s)
    /// URL) as an image.
    Import { name: String, file: String },
    /// One image, whole.
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Yaml2Json,
    },
    /// Delete an image no VM uses.
    Delete { name: String },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    // Do not wait for the console's stdin thread.
    rt.shutdown_background();
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn absolute(p: &std::path::Path) -> Result<String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(abs.display().to_string())
}

fn vm_table(vms: &[VmSummary]) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header([
        "NAME", "STATE", "MEMORY", "VCPUS", "HOST", "IMAGE", "OWNER", "LEASE", "PID",
    ]);
    for v in vms {
        t.add_row([
            v.name.clone(),
            v.state.to_string(),
            format!(
                "{}/{}",
                format_mib(v.memory_mib),
                format_mib(v.max_memory_mib)
            ),
            format!("{}/{}", v.vcpus, v.max_vcpus),
            v.host.clone().unwrap_or_default(),
            v.image.clone().unwrap_or_default(),
            v.owner.clone().unwrap_or_default(),
            v.lease_expires_at
                .as_deref()
                .map(|l| l.get(..16).unwrap_or(l).replace('T', " "))
                .unwrap_or_default(),
            v.pid.map(|p| p.to_string()).unwrap_or_default(),
        ]);
    }
    println!("{t}");
    for v in vms {
        if let Some(w) = &v.lease_warning {
            println!("warning: {}: {w}", v.name);
        }
    }
}

fn show_vm(v: &Vm, output: Table2Json) -> Result<()> {
    match output {
        Table2Json::Json => print_json(v),
        Table2Json::Table => {
            vm_table(&[VmSummary::from(v)]);
            Ok(())
        }
    }
}

async fn wait_task(api: &Api, task: Task) -> Result<()> {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {percent:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut t = task;
    loop {
        bar.set_position((t.progress * 100.0) as u64);
        bar.set_message(t.message.clone());
        match t.state {
            TaskState::Running => {}
            TaskState::Succeeded => {
                let done = format!("{} {}: done", t.kind, t.target);
                if bar.is_hidden() {
                    // Not a terminal: no bar was drawn, so say it in plain words.
                    println!("{done}");
                }
                bar.finish_with_message(done);
                return Ok(());
            }
            TaskState::Failed => {
                bar.abandon();
                bail!(
                    "{} {} failed: {}",
                    t.kind,
                    t.target,
                    t.error.unwrap_or_default()
                );
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        t = api.get(&format!("/api/v1/tasks/{}", t.id)).await?;
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Cmd::Up {
        data_dir,
        listen,
        qemu,
        no_default_network,
        default_lease_days,
        ssh_listen,
        web_dir,
    } = cli.cmd
    {
        return daemon::up(daemon::UpOptions {
            data_dir: data_dir.unwrap_or_else(daemon::default_data_dir),
            listen,
            qemu,
            client_config: client::config_path(),
            default_network: !no_default_network,
            default_lease_days,
            ssh_listen,
            web_dir: web_dir
                .map(|d| absolute(&d))
                .transpose()?
                .map(PathBuf::from),
        })
        .await;
    }
    if let Cmd::Agent {
        data_dir,
        listen,
        tls_dir,
        name,
        qemu,
    } = cli.cmd
    {
        let name = match name {
            Some(n) => n,
            None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
        };
        return daemon::agent(daemon::AgentOptions {
            data_dir,
            listen,
            tls_dir,
            name,
            qemu,
        })
        .await;
    }
    if let Cmd::AgentCert {
        name,
        sans,
        data_dir,
        out,
    } = &cli.cmd
    {
        let data_dir = data_dir.clone().unwrap_or_else(daemon::default_data_dir);
        daemon::agent_cert(&data_dir, name, sans, out)?;
        println!(
            "wrote {0}/agent.pem, {0}/agent.key and {0}/ca.pem: copy them to the host and run \
             `hostel agent --name {name} --tls-dir DIR` there",
            out.display()
        );
        return Ok(());
    }
    if let Cmd::Openapi = cli.cmd {
        println!("{}", hostel_controller::openapi_json());
        return Ok(());
    }
    if let Cmd::Login {
        user,
        url,
        password_file,
        days,
    } = cli.cmd
    {
        return login(user, url, password_file, days).await;
    }
    let api = Api::new()?;
    let vm_path = |name: &str| format!("/api/v1/vms/{name}");
    let empty = serde_json::json!({});
    match cli.cmd {
        Cmd::Up { .. }
        | Cmd::Openapi
        | Cmd::Login { .. }
        | Cmd::Agent { .. }
        | Cmd::AgentCert { .. } => unreachable!(),
        Cmd::Host(cmd) => match cmd {
            HostCmd::List { output } => {
                let hosts: Vec<HostInfo> = api.get("/api/v1/hosts").await?;
                match output {
                    Table2Json::Json => print_json(&hosts)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header([
                            "NAME",
                            "STATE",
                            "CPUS",
                            "MEMORY",
                            "PROMISED",
                            "VMS",
                            "RUNNING",
                            "ACCEL",
                            "LAST SEEN",
                            "URL",
                        ]);
                        for h in hosts {
                            t.add_row([
                                h.name,
                                if h.online { "online" } else { "offline" }.into(),
                                h.cpus.to_string(),
                                format_mib(h.memory_total_mib),
                                format_mib(h.memory_vms_mib),
                                h.vms_total.to_string(),
                                h.vms_running.to_string(),
                                h.accel.as_str().into(),
                                h.last_seen
                                    .get(..19)
                                    .unwrap_or(&h.last_seen)
                                    .replace('T', " "),
                                h.url,
                            ]);
                        }
                        println!("{t}");
                    }
                }
            }
            HostCmd::Add { url, replace } => {
                let h: HostInfo = api
                    .post("/api/v1/hosts", &AddHostRequest { url, replace })
                    .await?;
                println!(
                    "added host {} ({} CPUs, {}, {}), {}",
                    h.name,
                    h.cpus,
                    format_mib(h.memory_total_mib),
                    h.accel.as_str(),
                    if h.online { "online" } else { "offline" }
                );
            }
            HostCmd::Remove { name } => {
                api.delete(&format!("/api/v1/hosts/{name}")).await?;
                println!("removed host {name}");
            }
        },
        Cmd::Whoami { output } => {
            let w: WhoAmI = api.get("/api/v1/whoami").await?;
            match output {
                Table2Json::Json => print_json(&w)?,
                Table2Json::Table => println!(
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
                ),
            }
        }
        Cmd::User(cmd) => match cmd {
            UserCmd::Create {
                name,
                admin,
                password_file,
            } => {
                let password = password_file.map(|f| read_secret_file(&f)).transpose()?;
                let u: User = api
                    .post(
                        "/api/v1/users",
                        &CreateUserRequest {
                            name,
                            password,
                            admin,
                        },
                    )
                    .await?;
                println!(
                    "created user {}{}",
                    u.name,
                    if u.admin { " (admin)" } else { "" }
                );
            }
            UserCmd::List { output } => {
                let users: Vec<User> = api.get("/api/v1/users").await?;
                match output {
                    Table2Json::Json => print_json(&users)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header(["NAME", "ADMIN", "GROUPS", "CREATED"]);
                        for u in users {
                            t.add_row([
                                u.name,
                                u.admin.to_string(),
                                u.groups.join(","),
                                u.created_at,
                            ]);
                        }
                        println!("{t}");
                    }
                }
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
                let password = read_secret_file(&password_file)?;
                let current_password = current_password_file
                    .as_deref()
                    .map(read_secret_file)
                    .transpose()?;
                let path = match &name {
                    Some(n) => format!("/api/v1/users/{n}/password"),
                    None => "/api/v1/me/password".into(),
                };
                let _: serde_json::Value = api
                    .post(
                        &path,
                        &PasswordRequest {
                            password,
                            current_password,
                        },
                    )
                    .await?;
                println!("password set");
            }
        },
        Cmd::Group(cmd) => match cmd {
            GroupCmd::Create { name } => {
                let g: Group = api
                    .post("/api/v1/groups", &CreateGroupRequest { name })
                    .await?;
                println!("created group {}", g.name);
            }
            GroupCmd::List { output } => {
                let groups: Vec<Group> = api.get("/api/v1/groups").await?;
                match output {
                    Table2Json::Json => print_json(&groups)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header(["NAME", "MEMBERS"]);
                        for g in groups {
                            t.add_row([g.name, g.members.join(",")]);
                        }
                        println!("{t}");
                    }
                }
            }
            GroupCmd::Delete { name } => {
                api.delete(&format!("/api/v1/groups/{name}")).await?;
                println!("deleted group {name}");
            }
            GroupCmd::AddMember { group, user } => {
                let g: Group = api
                    .post(
                        &format!("/api/v1/groups/{group}/members"),
                        &MemberRequest { user },
                    )
                    .await?;
                println!("{}: {}", g.name, g.members.join(", "));
            }
            GroupCmd::RemoveMember { group, user } => {
                let g: Group = api
                    .post(
                        &format!("/api/v1/groups/{group}/members/remove"),
                        &MemberRequest { user },
                    )
                    .await?;
                println!("{}: {}", g.name, g.members.join(", "));
            }
        },
        Cmd::Token(cmd) => match cmd {
            TokenCmd::Create {
                name,
                read_only,
                expires_in_days,
                expires_at,
                user,
            } => {
                let t: NewToken = api
                    .post(
                        &format!("/api/v1/me/tokens{}", user_q(&user)),
                        &CreateTokenRequest {
                            name,
                            read_only,
                            expires_in_days,
                            expires_at,
                        },
                    )
                    .await?;
                println!("{}", t.token);
                eprintln!(
                    "token {} made{}{}; this is the only time it is shown",
                    t.name,
                    if t.read_only { ", read-only" } else { "" },
                    t.expires_at
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default()
                );
            }
            TokenCmd::List { user, output } => {
                let tokens: Vec<TokenInfo> = api
                    .get(&format!("/api/v1/me/tokens{}", user_q(&user)))
                    .await?;
                match output {
                    Table2Json::Json => print_json(&tokens)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header(["NAME", "ACCESS", "EXPIRES", "REVOKED", "LAST USED"]);
                        for k in tokens {
                            t.add_row([
                                k.name,
                                if k.read_only { "read-only" } else { "full" }.into(),
                                k.expires_at.unwrap_or_else(|| "never".into()),
                                k.revoked.to_string(),
                                k.last_used_at.unwrap_or_default(),
                            ]);
                        }
                        println!("{t}");
                    }
                }
            }
            TokenCmd::Revoke { name, user } => {
                api.delete(&format!("/api/v1/me/tokens/{name}{}", user_q(&user)))
                    .await?;
                println!("revoked token {name}");
            }
        },
        Cmd::Key(cmd) => match cmd {
            KeyCmd::Add { name, key, user } => {
                let p = std::path::Path::new(&key);
                let public_key = if !key.contains(' ') && p.is_file() {
                    read_secret_file(p)?
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
            }
            KeyCmd::List { user, output } => {
                let keys: Vec<SshKey> = api
                    .get(&format!("/api/v1/me/keys{}", user_q(&user)))
                    .await?;
                match output {
                    Table2Json::Json => print_json(&keys)?,
                    Table2Json::Table => {
                        for k in keys {
                            println!("{}\t{}", k.name, k.public_key);
                        }
                    }
                }
            }
            KeyCmd::Remove { name, user } => {
                api.delete(&format!("/api/v1/me/keys/{name}{}", user_q(&user)))
                    .await?;
                println!("removed key {name}");
            }
        },
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
        }
        Cmd::Renew { name, days, until } => {
            let v: Vm = api
                .post(
                    &format!("{}/renew", vm_path(&name)),
                    &RenewRequest { days, until },
                )
                .await?;
            println!(
                "{}: lease ends {}",
                v.name,
                v.lease_expires_at.unwrap_or_else(|| "never".into())
            );
        }
        Cmd::Quota(QuotaCmd::Show { owner, output }) => {
            let q: Quota = api
                .get(&match &owner {
                    Some(o) => format!("/api/v1/quotas?owner={o}"),
                    None => "/api/v1/quotas".into(),
                })
                .await?;
            match output {
                Table2Json::Json => print_json(&q)?,
                Table2Json::Table => {
                    let l = &q.limits;
                    let u = &q.used;
                    let lim = |v: Option<u64>, mib: bool| match v {
                        None => "none".to_string(),
                        Some(v) if mib => format_mib(v),
                        Some(v) => v.to_string(),
                    };
                    let mut t = Table::new();
                    t.load_preset(NOTHING);
                    t.set_header(["", "USED", "LIMIT"]);
                    t.add_row([
                        "memory (running)".to_string(),
                        format_mib(u.ram_mib),
                        lim(l.ram_total_mib, true),
                    ]);
                    t.add_row([
                        "memory per VM".to_string(),
                        "".into(),
                        lim(l.ram_per_vm_mib, true),
                    ]);
                    t.add_row([
                        "disks".to_string(),
                        format_mib(u.disk_mib),
                        lim(l.disk_total_mib, true),
                    ]);
                    t.add_row([
                        "disks per VM".to_string(),
                        "".into(),
                        lim(l.disk_per_vm_mib, true),
                    ]);
                    t.add_row([
                        "VMs".to_string(),
                        u.vms.to_string(),
                        lim(l.vms_total, false),
                    ]);
                    t.add_row([
                        "running VMs".to_string(),
                        u.vms_running.to_string(),
                        lim(l.vms_running, false),
                    ]);
                    t.add_row([
                        "vCPUs (running)".to_string(),
                        u.vcpus.to_string(),
                        lim(l.vcpus_total, false),
                    ]);
                    println!(
                        "{}{}",
                        q.owner,
                        if q.exempt {
                            " (admin: not limited)"
                        } else {
                            ""
                        }
                    );
                    println!("{t}");
                }
            }
        }
        Cmd::Quota(QuotaCmd::Set {
            owner,
            ram_total,
            ram_per_vm,
            disk_total,
            disk_per_vm,
            vms_total,
            vms_running,
            vcpus_total,
        }) => {
            let mib = |f: &str, v: Option<String>| v.map(|v| parse_size_mib(f, &v)).transpose();
            let limits = QuotaLimits {
                ram_total_mib: mib("ram_total", ram_total)?,
                ram_per_vm_mib: mib("ram_per_vm", ram_per_vm)?,
                disk_total_mib: mib("disk_total", disk_total)?,
                disk_per_vm_mib: mib("disk_per_vm", disk_per_vm)?,
                vms_total,
                vms_running,
                vcpus_total,
            };
            let q: Quota = api.put(&format!("/api/v1/quotas/{owner}"), &limits).await?;
            println!("quota of {} set", q.owner);
        }
        Cmd::Audit {
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
            match output {
                Table2Json::Json => print_json(&entries)?,
                Table2Json::Table => {
                    let mut t = Table::new();
                    t.load_preset(NOTHING);
                    t.set_header(["AT", "USER", "FROM", "ACTION", "RESULT", "ERROR"]);
                    for e in entries {
                        t.add_row([
                            e.at,
                            e.user.unwrap_or_else(|| "-".into()),
                            e.source,
                            e.action,
                            e.result,
                            e.error.unwrap_or_default(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        Cmd::List {
            host,
            state,
            page_size,
            output,
        } => {
            let mut url = reqwest::Url::parse("http://hostel/api/v1/vms")?;
            let limit = Some(page_size.to_string());
            for (k, v) in [("host", &host), ("state", &state), ("limit", &limit)] {
                if let Some(v) = v {
                    url.query_pairs_mut().append_pair(k, v);
                }
            }
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let mut vms: Vec<VmSummary> = Vec::new();
            api.get_pages(&path, |page| {
                vms.extend(page);
                Ok(())
            })
            .await?;
            match output {
                Table2Json::Json => print_json(&vms)?,
                Table2Json::Table => vm_table(&vms),
            }
        }
        Cmd::Create {
            name,
            image,
            memory,
            max_memory,
            vcpus,
            max_vcpus,
            disk,
            no_start,
            on_poweroff,
            on_reboot,
            on_crash,
            networks,
            ips,
            macs,
            no_network,
            firmware,
            cdrom,
            kernel,
            initrd,
            cmdline,
            ssh_keys,
            password_file,
            no_seed,
            pool,
            lease_days,
            output,
        } => {
            let firmware = match firmware.as_str() {
                "bios" => Firmware::Bios,
                "uefi" => Firmware::Uefi,
                other => bail!("--firmware: {other:?} is not a firmware: use bios or uefi"),
            };
            let mut keys = Vec::new();
            for k in ssh_keys {
                let p = std::path::Path::new(&k);
                if !k.starts_with("ssh-")
                    && !k.starts_with("ecdsa-")
                    && !k.starts_with("sk-")
                    && p.is_file()
                {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("--ssh-key: reading {k}"))?;
                    keys.extend(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(String::from),
                    );
                } else {
                    keys.push(k);
                }
            }
            let password = match password_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("--password-file: reading {}", f.display()))?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                ),
                None => None,
            };
            let cdrom = match cdrom {
                Some(c) if c.contains('/') => Some(absolute(std::path::Path::new(&c))?),
                other => other,
            };
            if ips.len() > networks.len() || macs.len() > networks.len() {
                bail!("each --ip and --mac belongs to a --network before it: give one --network per NIC");
            }
            let nics = if no_network {
                Some(Vec::new())
            } else if networks.is_empty() {
                None
            } else {
                Some(
                    networks
                        .iter()
                        .enumerate()
                        .map(|(i, n)| NicRequest {
                            network: n.clone(),
                            ip: ips.get(i).cloned(),
                            mac: macs.get(i).cloned(),
                        })
                        .collect(),
                )
            };
            let req = CreateVmRequest {
                nics,
                name,
                image,
                memory_mib: parse_size_mib("memory", &memory)?,
                max_memory_mib: max_memory
                    .map(|m| parse_size_mib("max_memory", &m))
                    .transpose()?,
                vcpus,
                max_vcpus,
                disk_mib: disk.map(|d| parse_size_mib("disk", &d)).transpose()?,
                start: !no_start,
                on_poweroff: Policy::parse("on_poweroff", &on_poweroff)?,
                on_reboot: Policy::parse("on_reboot", &on_reboot)?,
                on_crash: Policy::parse("on_crash", &on_crash)?,
                firmware,
                cdrom,
                kernel,
                initrd,
                cmdline,
                ssh_keys: keys,
                password,
                seed: if no_seed { Some(false) } else { None },
                pool,
                lease_days,
            };
            let vm: Vm = api.post("/api/v1/vms", &req).await?;
            show_vm(&vm, output)?;
        }
        Cmd::Start { name } => {
            let vm: Vm = api
                .post(&format!("{}/start", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Reboot { name } => {
            let vm: Vm = api
                .post(&format!("{}/reboot", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Pause { name } => {
            let vm: Vm = api
                .post(&format!("{}/pause", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Unpause { name } => {
            let vm: Vm = api
                .post(&format!("{}/unpause", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Destroy { name } => {
            let vm: Vm = api
                .post(&format!("{}/destroy", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Delete { name, keep_disks } => {
            let kept: Vec<String> = api
                .delete_json(&format!("{}?keep_disks={keep_disks}", vm_path(&name)))
                .await?;
            println!("deleted {name}");
            for p in kept {
                println!("kept disk {p}");
            }
        }
        Cmd::Shutdown {
            name,
            timeout,
            force,
        } => {
            let vm: Vm = api
                .post(
                    &format!("{}/shutdown", vm_path(&name)),
                    &ShutdownRequest {
                        timeout_secs: timeout,
                        force,
                    },
                )
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::MemSet { name, size } => {
            let memory_mib = parse_size_mib("memory", &size)?;
            let vm: Vm = api
                .post(
                    &format!("{}/memory", vm_path(&name)),
                    &MemSetRequest { memory_mib },
                )
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::VcpuSet { name, vcpus } => {
            let vm: Vm = api
                .post(
                    &format!("{}/vcpus", vm_path(&name)),
                    &VcpuSetRequest { vcpus },
                )
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Describe { name, output } => {
            let vm: Vm = api.get(&vm_path(&name)).await?;
            match output {
                Yaml2Json::Json => print_json(&vm)?,
                Yaml2Json::Yaml => print!("{}", serde_yaml::to_string(&vm)?),
            }
        }
        Cmd::Console {
            name,
            log: false,
            web: false,
            ..
        } => console::attach(&api, &name).await?,
        Cmd::Console {
            name,
            web: true,
            vga,
            output,
            ..
        } => {
            let t: ConsoleTicket = api
                .post(
                    &format!("{}/console/ticket", vm_path(&name)),
                    &ConsoleTicketRequest {
                        console: if vga {
                            ConsoleKind::Vga
                        } else {
                            ConsoleKind::Serial
                        },
                        ttl_seconds: None,
                    },
                )
                .await?;
            if output == Some(Table2Json::Json) {
                print_json(&t)?;
            } else {
                println!("{}{}", api.cfg.url.trim_end_matches('/'), t.page);
                eprintln!(
                    "open it within {} s; it is good for one connection",
                    t.expires_in_seconds
                );
            }
        }
        Cmd::Console { name, lines, .. } => {
            let log: LogLines = api
                .get(&format!("{}/console/log?lines={lines}", vm_path(&name)))
                .await?;
            log.lines.iter().for_each(|l| println!("{l}"));
        }
        Cmd::Save { name, file } => {
            let path = absolute(&file)?;
            let vm: Vm = api
                .post(
                    &format!("{}/save", vm_path(&name)),
                    &SaveRequest { path: path.clone() },
                )
                .await?;
            println!(
                "saved {} to {path}; `hostel restore {path}` resumes it",
                vm.name
            );
        }
        Cmd::Restore { file } => {
            let vm: Vm = api
                .post(
                    "/api/v1/restore",
                    &RestoreRequest {
                        path: absolute(&file)?,
                    },
                )
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Info { output } => {
            let info: Info = api.get("/api/v1/info").await?;
            match output {
                Table2Json::Json => print_json(&info)?,
                Table2Json::Table => {
                    if info.data_dir.is_empty() {
                        println!("hostel {}", info.version);
                    } else {
                        println!("hostel {}  data dir {}", info.version, info.data_dir);
                    }
                    for h in &info.hosts {
                        println!("host {}", h.name);
                        println!("  cpus:         {}", h.cpus);
                        println!(
                            "  memory:       {} total, {} given to VMs",
                            format_mib(h.memory_total_mib),
                            format_mib(h.memory_vms_mib)
                        );
                        println!("  accel:        {} ({})", h.accel.as_str(), h.accel_reason);
                        println!("  qemu:         {}", h.qemu_version);
                        println!("  kernel:       {}", h.kernel);
                        println!("  vms running:  {} of {}", h.vms_running, h.vms_total);
                    }
                    if let (Some(a), Some(f)) = (&info.ssh_console, &info.ssh_host_key_fingerprint)
                    {
                        println!(
                            "ssh console:    ssh -p {} VMNAME@HOST (host key {f})",
                            a.rsplit(':').next().unwrap_or(a)
                        );
                    }
                }
            }
        }
        Cmd::Dmesg { lines, output } => {
            let log: LogLines = api.get(&format!("/api/v1/dmesg?lines={lines}")).await?;
            match output {
                Table2Json::Json => print_json(&log)?,
                Table2Json::Table => log.lines.iter().for_each(|l| println!("{l}")),
            }
        }
        Cmd::Doctor { output } => {
            let r: DoctorReport = api.get("/api/v1/doctor").await?;
            match output {
                Table2Json::Json => print_json(&r)?,
                Table2Json::Table => {
                    r.checked.iter().for_each(|c| println!("checked: {c}"));
                    r.problems.iter().for_each(|p| println!("problem: {p}"));
                    if r.problems.is_empty() {
                        println!("no problems found");
                    }
                }
            }
            if !r.problems.is_empty() {
                bail!("{} problem(s) found", r.problems.len());
            }
        }
        Cmd::Snapshot(cmd) => match cmd {
            SnapshotCmd::Create { vm, name, memory } => {
                let snap: Snapshot = api
                    .post(
                        &format!("{}/snapshots", vm_path(&vm)),
                        &CreateSnapshotRequest { name, memory },
                    )
                    .await?;
                println!("created snapshot {} of {vm}", snap.name);
            }
            SnapshotCmd::List { vm, output } => {
                let snaps: Vec<Snapshot> = api.get(&format!("{}/snapshots", vm_path(&vm))).await?;
                match output {
                    Table2Json::Json => print_json(&snaps)?,
                    Table2Json::Table => {
                        for s in snaps {
                            let mem = if s.with_memory { " (with memory)" } else { "" };
                            println!("{}  {}{mem}", s.name, s.created_at);
                        }
                    }
                }
            }
            SnapshotCmd::Revert { vm, name } => {
                let v: Vm = api
                    .post(
                        &format!("{}/snapshots/revert", vm_path(&vm)),
                        &SnapshotName { name: name.clone() },
                    )
                    .await?;
                println!("reverted {vm} to {name}; it is {}", v.state);
            }
            SnapshotCmd::Delete { vm, name } => {
                let _: serde_json::Value = api
                    .post(
                        &format!("{}/snapshots/delete", vm_path(&vm)),
                        &SnapshotName { name: name.clone() },
                    )
                    .await?;
                println!("deleted snapshot {name} of {vm}");
            }
        },
        Cmd::Disk(cmd) => match cmd {
            DiskCmd::Add {
                vm,
                size,
                image,
                pool,
            } => {
                let size_mib = size.map(|s| parse_size_mib("size", &s)).transpose()?;
                let d: DiskView = api
                    .post(
                        &format!("{}/disks", vm_path(&vm)),
                        &AddDiskRequest {
                            size_mib,
                            image,
                            pool,
                        },
                    )
                    .await?;
                disk_table(&[d]);
            }
            DiskCmd::Remove { vm, disk } => {
                let _: serde_json::Value = api
                    .post(
                        &format!("{}/disks/remove", vm_path(&vm)),
                        &RemoveDiskRequest { disk },
                    )
                    .await?;
                println!("removed disk {disk} of {vm}");
            }
            DiskCmd::Resize { vm, disk, size } => {
                let size_mib = parse_size_mib("size", &size)?;
                let d: DiskView = api
                    .post(
                        &format!("{}/disks/resize", vm_path(&vm)),
                        &ResizeDiskRequest { disk, size_mib },
                    )
                    .await?;
                disk_table(&[d]);
            }
            DiskCmd::List { vm, output } => {
                let disks: Vec<DiskView> = api.get(&format!("{}/disks", vm_path(&vm))).await?;
                match output {
                    Table2Json::Json => print_json(&disks)?,
                    Table2Json::Table => disk_table(&disks),
                }
            }
        },
        Cmd::Pool(cmd) => match cmd {
            PoolCmd::Create {
                name,
                driver,
                path,
                host,
            } => {
                let p: Pool = api
                    .post(
                        "/api/v1/pools",
                        &CreatePoolRequest {
                            name,
                            driver,
                            path,
                            host,
                        },
                    )
                    .await?;
                println!(
                    "created pool {} ({}, {}): {} free of {}",
                    p.name,
                    p.driver,
                    p.path,
                    opt_mib(p.free_bytes),
                    opt_mib(p.total_bytes)
                );
            }
            PoolCmd::List { output } => {
                let pools: Vec<Pool> = api.get("/api/v1/pools").await?;
                match output {
                    Table2Json::Json => print_json(&pools)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header([
                            "NAME", "DRIVER", "HOST", "SIZE", "USED", "FREE", "DISKS", "PATH",
                        ]);
                        for p in pools {
                            t.add_row([
                                p.name.clone(),
                                p.driver.clone(),
                                p.host.clone(),
                                opt_mib(p.total_bytes),
                                opt_mib(p.used_bytes),
                                opt_mib(p.free_bytes),
                                p.disks.to_string(),
                                p.path.clone(),
                            ]);
                        }
                        println!("{t}");
                    }
                }
            }
            PoolCmd::Describe { name, output } => {
                let p: Pool = api.get(&format!("/api/v1/pools/{name}")).await?;
                match output {
                    Yaml2Json::Json => print_json(&p)?,
                    Yaml2Json::Yaml => print!("{}", serde_yaml::to_string(&p)?),
                }
            }
            PoolCmd::Delete { name } => {
                api.delete(&format!("/api/v1/pools/{name}")).await?;
                println!("deleted pool {name}");
            }
        },
        Cmd::Network(cmd) => match cmd {
            NetworkCmd::Create {
                name,
                cidr,
                gateway,
                mode,
                uplink,
                domain,
                ipv6,
                dns_forward,
            } => {
                let n: Network = api
                    .post(
                        "/api/v1/networks",
                        &CreateNetworkRequest {
                            name,
                            cidr,
                            gateway,
                            mode: hostel_model::net::NetMode::parse("mode", &mode)?,
                            uplink,
                            domain,
                            ipv6,
                            dns_forward,
                        },
                    )
                    .await?;
                println!(
                    "created network {} ({}, bridge {})",
                    n.name, n.cidr, n.bridge
                );
            }
            NetworkCmd::List { output } => {
                let nets: Vec<Network> = api.get("/api/v1/networks").await?;
                match output {
                    Table2Json::Json => print_json(&nets)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header([
                            "NAME", "CIDR", "GATEWAY", "MODE", "DOMAIN", "BRIDGE", "USED BY",
                        ]);
                        for n in nets {
                            t.add_row([
                                n.name,
                                n.cidr,
                                n.gateway,
                                n.mode.as_str().to_string(),
                                n.domain.unwrap_or_default(),
                                n.bridge,
                                n.used_by.join(","),
                            ]);
                        }
                        println!("{t}");
                    }
                }
            }
            NetworkCmd::Describe { name, output } => {
                let n: Network = api.get(&format!("/api/v1/networks/{name}")).await?;
                match output {
                    Yaml2Json::Json => print_json(&n)?,
                    Yaml2Json::Yaml => print!("{}", serde_yaml::to_string(&n)?),
                }
            }
            NetworkCmd::Delete { name } => {
                api.delete(&format!("/api/v1/networks/{name}")).await?;
                println!("deleted network {name}");
            }
        },
        Cmd::Nic(cmd) => match cmd {
            NicCmd::Add {
                vm,
                network,
                ip,
                mac,
            } => {
                let n: Nic = api
                    .post(
                        &format!("{}/nics", vm_path(&vm)),
                        &NicRequest { network, ip, mac },
                    )
                    .await?;
                println!("added NIC {} ({}) to {vm}", n.mac, n.ip);
            }
            NicCmd::Remove { vm, nic } => {
                let _: serde_json::Value = api
                    .post(
                        &format!("{}/nics/remove", vm_path(&vm)),
                        &RemoveNicRequest { nic: nic.clone() },
                    )
                    .await?;
                println!("removed NIC {nic} from {vm}");
            }
            NicCmd::List { vm, output } => {
                let nics: Vec<Nic> = api.get(&format!("{}/nics", vm_path(&vm))).await?;
                match output {
                    Table2Json::Json => print_json(&nics)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header([
                            "INDEX", "NETWORK", "MAC", "IP", "IPV6", "DNS NAME", "TAP", "DROPS",
                        ]);
                        for n in nics {
                            t.add_row([
                                n.index.to_string(),
                                n.network,
                                n.mac,
                                n.ip,
                                n.ipv6.unwrap_or_default(),
                                n.dns_name.unwrap_or_default(),
                                n.tap,
                                n.drops.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                            ]);
                        }
                        println!("{t}");
                    }
                }
            }
        },
        Cmd::PortForward(cmd) => match cmd {
            ForwardCmd::Add { vm, spec } => {
                let f: PortForward = api
                    .post(
                        &format!("{}/port-forwards", vm_path(&vm)),
                        &parse_forward(&spec)?,
                    )
                    .await?;
                println!(
                    "forwarding host port {}/{} to {}:{}",
                    f.host_port, f.proto, f.ip, f.guest_port
                );
            }
            ForwardCmd::Remove { vm, spec } => {
                let _: serde_json::Value = api
                    .post(
                        &format!("{}/port-forwards/remove", vm_path(&vm)),
                        &parse_forward(&spec)?,
                    )
                    .await?;
                println!("removed port forward {spec} of {vm}");
            }
            ForwardCmd::List { vm, output } => {
                let fs: Vec<PortForward> =
                    api.get(&format!("{}/port-forwards", vm_path(&vm))).await?;
                match output {
                    Table2Json::Json => print_json(&fs)?,
                    Table2Json::Table => {
                        for f in fs {
                            println!(
                                "{}:{}/{} -> {}:{}",
                                f.vm, f.host_port, f.proto, f.ip, f.guest_port
                            );
                        }
                    }
                }
            }
        },
        Cmd::Image(cmd) => match cmd {
            ImageCmd::List { output } => {
                let images: Vec<Image> = api.get("/api/v1/images").await?;
                match output {
                    Table2Json::Json => print_json(&images)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header(["NAME", "KIND", "FORMAT", "SIZE", "SHA256", "USED BY"]);
                        for i in images {
                            t.add_row([
                                i.name,
                                i.kind.as_str().to_string(),
                                i.format,
                                format_mib(i.size_bytes.div_ceil(1 << 20)),
                                i.sha256.chars().take(12).collect(),
                                i.used_by.join(","),
                            ]);
                        }
                        println!("{t}");
                    }
                }
            }
            ImageCmd::Build {
                recipe,
                name,
                suite,
                packages,
                size,
                mirror,
            } => {
                let size_mib = size.map(|s| parse_size_mib("size", &s)).transpose()?;
                let t: Task = api
                    .post(
                        "/api/v1/images/build",
                        &BuildImageRequest {
                            recipe,
                            name,
                            suite,
                            packages,
                            size_mib,
                            mirror,
                        },
                    )
                    .await?;
                wait_task(&api, t).await?;
            }
            ImageCmd::Describe { name, output } => {
                let images: Vec<Image> = api.get("/api/v1/images").await?;
                let img = images
                    .into_iter()
                    .find(|i| i.name == name)
                    .ok_or_else(|| anyhow!("there is no image named {name:?}"))?;
                match output {
                    Yaml2Json::Json => print_json(&img)?,
                    Yaml2Json::Yaml => print!("{}", serde_yaml::to_string(&img)?),
                }
            }
            ImageCmd::Import { name, file } => {
                if file.contains("://")
                    && !file.starts_with("http://")
                    && !file.starts_with("https://")
                {
                    bail!("{file}: only http and https URLs can be imported from; or give a file's path");
                }
                let t: Task = api
                    .post(
                        "/api/v1/images/import",
                        &ImportImageRequest {
                            name,
                            path: if file.starts_with("http://") || file.starts_with("https://") {
                                file
                            } else {
                                absolute(std::path::Path::new(&file))?
                            },
                        },
                    )
                    .await?;
                wait_task(&api, t).await?;
            }
            ImageCmd::Delete { name } => {
                api.delete(&format!("/api/v1/images/{name}")).await?;
                println!("deleted image {name}");
            }
        },
    }
    Ok(())
}
