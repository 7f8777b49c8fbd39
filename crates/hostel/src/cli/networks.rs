//! Networks (`hostel network`), a VM's NICs (`hostel nic`) and its port forwards
//! (`hostel port-forward`).

use super::output::{self, Column, DescribeFormat, Format};
use super::parse::{self, Forward};
use crate::client::{vm_path, Api};
use anyhow::Result;
use clap::Subcommand;
use hostel_api::public::*;
use hostel_model::net::NetMode;

#[derive(Subcommand)]
pub enum Cmd {
    /// Networks VMs attach to (DHCP, DNS, NAT, port guards).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// A VM's network interfaces.
    #[command(subcommand)]
    Nic(NicCmd),
    /// Host ports forwarded to a VM on a NAT network.
    #[command(subcommand, name = "port-forward")]
    PortForward(ForwardCmd),
}

#[derive(Subcommand)]
pub enum NetworkCmd {
    Create {
        name: String,
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long, default_value = "nat", value_parser = parse::net_mode)]
        mode: NetMode,
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
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Change what a network's VMs may reach, and who may attach (admins). Each option
    /// given replaces its list; an empty value (`--host-ports ''`) clears it.
    Set {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: DescribeFormat,
    },
    /// Delete a network no NIC uses.
    Delete { name: String },
}

/// A network's policy: by default its VMs reach DHCP and DNS on the host and, on a NAT
/// network, the world beyond the host's LAN; nothing else.
#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Host services its VMs may reach, as PROTO/PORT, comma-separated (tcp/22,udp/123).
    #[arg(long, value_delimiter = ',')]
    host_ports: Option<Vec<String>>,
    /// Networks its VMs may reach, and back, comma-separated.
    #[arg(long, value_delimiter = ',')]
    links: Option<Vec<String>>,
    /// IPv4 CIDRs on the host's LAN its VMs may reach (NAT networks), comma-separated.
    #[arg(long, value_delimiter = ',')]
    allow_to: Option<Vec<String>>,
    /// Users and groups who may attach NICs (bridged networks; others: admins only).
    #[arg(long, value_delimiter = ',')]
    attach: Option<Vec<String>>,
}

impl PolicyArgs {
    fn update(self) -> UpdateNetworkRequest {
        // `--links ''` is an empty list, not a list of one empty name.
        let clean =
            |v: Option<Vec<String>>| v.map(|v| v.into_iter().filter(|s| !s.is_empty()).collect());
        UpdateNetworkRequest {
            host_ports: clean(self.host_ports),
            links: clean(self.links),
            allow_to: clean(self.allow_to),
            attach: clean(self.attach),
        }
    }
}

#[derive(Subcommand)]
pub enum NicCmd {
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
        output: Format,
    },
}

#[derive(Subcommand)]
pub enum ForwardCmd {
    /// HOSTPORT:GUESTPORT[/tcp|udp]
    Add {
        vm: String,
        #[arg(value_parser = parse::forward)]
        spec: Forward,
    },
    Remove {
        vm: String,
        #[arg(value_parser = parse::forward)]
        spec: Forward,
    },
    List {
        vm: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

const NETWORK_COLUMNS: &[Column<Network>] = &[
    ("NAME", |n| n.name.clone()),
    ("CIDR", |n| n.cidr.clone()),
    ("GATEWAY", |n| n.gateway.clone()),
    ("MODE", |n| n.mode.as_str().to_string()),
    ("DOMAIN", |n| n.domain.clone().unwrap_or_default()),
    ("BRIDGE", |n| n.bridge.clone()),
    ("USED BY", |n| n.used_by.join(",")),
];

const NIC_COLUMNS: &[Column<Nic>] = &[
    ("INDEX", |n| n.index.to_string()),
    ("NETWORK", |n| n.network.clone()),
    ("MAC", |n| n.mac.clone()),
    ("IP", |n| n.ip.clone()),
    ("IPV6", |n| n.ipv6.clone().unwrap_or_default()),
    ("DNS NAME", |n| n.dns_name.clone().unwrap_or_default()),
    ("TAP", |n| n.tap.clone()),
    ("DROPS", |n| {
        n.drops.map(|d| d.to_string()).unwrap_or_else(|| "-".into())
    }),
];

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    match cmd {
        Cmd::Network(cmd) => network(&api, cmd).await,
        Cmd::Nic(cmd) => nic(&api, cmd).await,
        Cmd::PortForward(cmd) => port_forward(&api, cmd).await,
    }
}

async fn network(api: &Api, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create {
            name,
            cidr,
            gateway,
            mode,
            uplink,
            domain,
            ipv6,
            dns_forward,
            policy,
        } => {
            let p = policy.update();
            let req = CreateNetworkRequest {
                policy: NetworkPolicy {
                    host_ports: p.host_ports.unwrap_or_default(),
                    links: p.links.unwrap_or_default(),
                    allow_to: p.allow_to.unwrap_or_default(),
                    attach: p.attach.unwrap_or_default(),
                },
                name,
                cidr,
                gateway,
                mode,
                uplink,
                domain,
                ipv6,
                dns_forward,
            };
            let n: Network = api.post("/api/v1/networks", &req).await?;
            println!(
                "created network {} ({}, bridge {})",
                n.name, n.cidr, n.bridge
            );
            Ok(())
        }
        NetworkCmd::Set { name, policy } => {
            let n: Network = api
                .patch(&format!("/api/v1/networks/{name}"), &policy.update())
                .await?;
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(",")
                }
            };
            println!(
                "network {}: host ports {}; links {}; allow to {}; attach {}",
                n.name,
                list(&n.policy.host_ports),
                list(&n.policy.links),
                list(&n.policy.allow_to),
                list(&n.policy.attach)
            );
            Ok(())
        }
        NetworkCmd::List { output } => {
            let nets: Vec<Network> = api.get("/api/v1/networks").await?;
            output::list(output, &nets, NETWORK_COLUMNS)
        }
        NetworkCmd::Describe { name, output } => {
            let n: Network = api.get(&format!("/api/v1/networks/{name}")).await?;
            output::describe(output, &n)
        }
        NetworkCmd::Delete { name } => {
            api.delete(&format!("/api/v1/networks/{name}")).await?;
            println!("deleted network {name}");
            Ok(())
        }
    }
}

async fn nic(api: &Api, cmd: NicCmd) -> Result<()> {
    match cmd {
        NicCmd::Add {
            vm,
            network,
            ip,
            mac,
        } => {
            let req = NicRequest { network, ip, mac };
            let n: Nic = api.post(&format!("{}/nics", vm_path(&vm)), &req).await?;
            println!("added NIC {} ({}) to {vm}", n.mac, n.ip);
            Ok(())
        }
        NicCmd::Remove { vm, nic } => {
            let _: serde_json::Value = api
                .post(
                    &format!("{}/nics/remove", vm_path(&vm)),
                    &RemoveNicRequest { nic: nic.clone() },
                )
                .await?;
            println!("removed NIC {nic} from {vm}");
            Ok(())
        }
        NicCmd::List { vm, output } => {
            let nics: Vec<Nic> = api.get(&format!("{}/nics", vm_path(&vm))).await?;
            output::list(output, &nics, NIC_COLUMNS)
        }
    }
}

async fn port_forward(api: &Api, cmd: ForwardCmd) -> Result<()> {
    match cmd {
        ForwardCmd::Add { vm, spec } => {
            let f: PortForward = api
                .post(&format!("{}/port-forwards", vm_path(&vm)), &spec.request)
                .await?;
            println!(
                "forwarding host port {}/{} to {}:{}",
                f.host_port, f.proto, f.ip, f.guest_port
            );
            Ok(())
        }
        ForwardCmd::Remove { vm, spec } => {
            let _: serde_json::Value = api
                .post(
                    &format!("{}/port-forwards/remove", vm_path(&vm)),
                    &spec.request,
                )
                .await?;
            println!("removed port forward {} of {vm}", spec.text);
            Ok(())
        }
        ForwardCmd::List { vm, output } => {
            let fs: Vec<PortForward> = api.get(&format!("{}/port-forwards", vm_path(&vm))).await?;
            output::show(output, &fs, |fs| {
                for f in fs {
                    println!(
                        "{}:{}/{} -> {}:{}",
                        f.vm, f.host_port, f.proto, f.ip, f.guest_port
                    );
                }
            })
        }
    }
}
