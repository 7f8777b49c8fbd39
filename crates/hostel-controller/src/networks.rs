//! Networks, NICs and port forwards: validated here, stored with unique constraints, and
//! pushed to every host as one desired state (`PUT /v1/networks`) after each change.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::agent::{self as wire, NetHost, NetworkSpec, NetworksState, NicSpec};
use hostel_api::public::*;
use hostel_model::net::{self as mnet, NetMode};
use hostel_model::{validate_name, Invalid, VmState};
use hostel_store::{new_id, now, ForwardRecord, NetworkRecord, NicRecord, VmRecord};
use std::collections::HashSet;

type Res<T> = crate::error::Result<T>;

/// The network `hostel up` creates so that a first VM has connectivity.
pub const DEFAULT_NETWORK: &str = "default";
pub const DEFAULT_CIDR: &str = "10.213.0.0/24";
pub const DEFAULT_DOMAIN: &str = "vm.hostel";

impl Controller {
    pub(crate) async fn network_named(&self, name: &str) -> Res<NetworkRecord> {
        self.store.network_by_name(name).await?.ok_or_else(|| {
            Error::not_found(
                "network",
                name,
                format!("there is no network named {name:?}: `hostel network list` shows them"),
            )
        })
    }

    /// Every network, with the VMs (the caller's) on it.
    pub async fn networks(&self, ctx: &Ctx) -> Res<Vec<Network>> {
        let all = self.store.networks().await?;
        let mut out = Vec::new();
        for n in &all {
            out.push(self.network_view(ctx, n, &all).await?);
        }
        Ok(out)
    }

    /// One network by name.
    pub async fn network(&self, ctx: &Ctx, name: &str) -> Res<Network> {
        let all = self.store.networks().await?;
        let n = all.iter().find(|n| n.name == name).ok_or_else(|| {
            Error::not_found(
                "network",
                name,
                format!("there is no network named {name:?}"),
            )
        })?;
        self.network_view(ctx, n, &all).await
    }

    /// `n` as the API shows it; `all` are every network (its links name them).
    pub async fn network_view(
        &self,
        ctx: &Ctx,
        n: &NetworkRecord,
        all: &[NetworkRecord],
    ) -> Res<Network> {
        let mut used_by = Vec::new();
        for nic in self.store.nics_on(&n.id).await? {
            if let Some(vm) = self.store.vm_by_id(&nic.vm_id).await? {
                // Users see only the VMs they may operate.
                if !ctx.may_operate(&vm) {
                    continue;
                }
                if !used_by.contains(&vm.name) {
                    used_by.push(vm.name);
                }
            }
        }
        used_by.sort();
        Ok(Network {
            policy: crate::net_policy::policy_view(n, all),
            bridge: mnet::bridge_name(&n.id),
            name: n.name.clone(),
            cidr: n.cidr.clone(),
            gateway: n.gateway.clone(),
            mode: n.mode,
            uplink: n.uplink.clone(),
            domain: n.domain.clone(),
            ipv6: n.ipv6_prefix.clone(),
            dns_forward: n.dns_forward.clone(),
            used_by,
            created_at: n.created_at.to_string(),
        })
    }

    pub async fn create_network(&self, ctx: &Ctx, req: CreateNetworkRequest) -> Res<Network> {
        ctx.target(&req.name, None);
        ctx.params(serde_json::json!({"cidr": req.cidr, "mode": req.mode}));
        ctx.require_admin_or(crate::context::Right::ManageNetworks)?;
        validate_name("name", &req.name)?;
        let cidr = mnet::parse_cidr("cidr", &req.cidr)?;
        let gateway = match &req.gateway {
            Some(g) => {
                let ip = mnet::parse_ip("gateway", g)?;
                if !cidr.contains(&ip) || ip == cidr.network() || ip == cidr.broadcast() {
                    return Err(Invalid::new(
                        "gateway",
                        format!("{ip} is not a host address of {cidr}"),
                    )
                    .into());
                }
                ip
            }
            None => mnet::default_gateway(cidr),
        };
        if let Some(p) = &req.ipv6 {
            mnet::parse_ipv6_prefix("ipv6", p)?;
        }
        if let Some(f) = &req.dns_forward {
            mnet::parse_ip("dns_forward", f)?;
        }
        if let Some(u) = &req.uplink {
            mnet::check_ifname("uplink", u)?;
        }
        if req.mode == NetMode::Bridged && req.uplink.is_none() {
            return Err(Invalid::new(
                "uplink",
                "a bridged network needs --uplink IFACE: the host interface to put on its bridge",
            )
            .into());
        }
        if let Some(d) = &req.domain {
            let ok = d.split('.').all(|l| validate_name("domain", l).is_ok());
            if !ok {
                return Err(Invalid::new(
                    "domain",
                    format!("{d:?} is not a DNS domain: use labels of lowercase letters, digits and '-', like vm.example.org"),
                )
                .into());
            }
        }
        for other in self.store.networks().await? {
            if other.name == req.name {
                return Err(Error::conflict_field(
                    "name",
                    format!("a network named {:?} exists already", req.name),
                ));
            }
            let o = mnet::parse_cidr("cidr", &other.cidr)?;
            if mnet::overlaps(o, cidr) {
                return Err(Error::conflict_field(
                    "cidr",
                    format!(
                        "{cidr} overlaps network {:?} ({o}): choose a range that does not",
                        other.name
                    ),
                ));
            }
        }
        let policy = self
            .policy_from_request(None, req.mode, &req.policy)
            .await?;
        let rec = NetworkRecord {
            policy,
            id: new_id("net"),
            name: req.name.clone(),
            cidr: cidr.to_string(),
            gateway: gateway.to_string(),
            mode: req.mode,
            uplink: req.uplink.clone(),
            domain: req.domain.clone(),
            ipv6_prefix: req.ipv6.clone(),
            created_at: now(),
            dns_forward: req.dns_forward.clone(),
        };
        self.store.insert_network(&rec).await.map_err(|e| {
            if hostel_store::is_unique_violation(&e) {
                Error::conflict_field(
                    "name",
                    format!("a network named {:?} exists already", req.name),
                )
            } else {
                e.into()
            }
        })?;
        // The hosts are told the whole desired state at every (re)connection: a crash
        // here leaves a network the next start sets up.
        hostel_faults::point("controller.network-create.row-written").await;
        if let Err(e) = self.sync_networks().await {
            // The host could not run it: take the record back so nothing points at nothing.
            let _ = self.store.delete_network_if_unused(&rec.id).await;
            let _ = self.sync_networks().await;
            return Err(
                e.context("the network could not be set up on the host, so it was not kept")
            );
        }
        let all = self.store.networks().await?;
        self.network_view(ctx, &rec, &all).await
    }

    pub async fn delete_network(&self, ctx: &Ctx, name: &str) -> Res<()> {
        ctx.require_admin()?;
        let n = self.store.network_by_name(name).await?.ok_or_else(|| {
            Error::not_found(
                "network",
                name,
                format!("there is no network named {name:?}"),
            )
        })?;
        let users = self.store.delete_network_if_unused(&n.id).await?;
        if !users.is_empty() {
            return Err(Error::conflict(format!(
                "network {name:?} is in use by {}: remove their NICs (`hostel nic remove`) or \
                 delete those VMs first",
                users.join(", ")
            )));
        }
        hostel_faults::point("controller.network-delete.rows-deleted").await;
        self.sync_networks().await
    }

    /// The desired network state of the hosts, from the database.
    pub(crate) async fn networks_state(&self) -> Res<NetworksState> {
        let names = self.store.names_of_vms_with_nics().await?;
        let name_of = |id: &str| names.get(id).cloned();
        let mut networks = Vec::new();
        let all = self.store.networks().await?;
        for n in all.iter().cloned() {
            let hosts = self
                .store
                .nics_on(&n.id)
                .await?
                .into_iter()
                .filter_map(|nic| {
                    Some(NetHost {
                        name: name_of(&nic.vm_id)?,
                        mac: nic.mac,
                        ipv4: nic.ip,
                        ipv6: nic.ipv6,
                    })
                })
                .collect();
            let links = crate::net_policy::linked(&n, &all)
                .map(|o| mnet::bridge_name(&o.id))
                .collect();
            networks.push(NetworkSpec {
                host_ports: n.policy.host_ports.clone(),
                links,
                allow_to: n.policy.allow_to.clone(),
                bridge: mnet::bridge_name(&n.id),
                mode: n.mode,
                id: n.id,
                name: n.name,
                cidr: n.cidr,
                gateway: n.gateway,
                uplink: n.uplink,
                domain: n.domain,
                ipv6_prefix: n.ipv6_prefix,
                dns_forward: n.dns_forward,
                hosts,
            });
        }
        let nics = self.store.all_nics().await?;
        let forwards = self
            .store
            .forwards()
            .await?
            .into_iter()
            .filter_map(|f| {
                let nic = nics.iter().find(|n| n.id == f.nic_id)?;
                Some(wire::ForwardSpec {
                    proto: f.proto,
                    host_port: f.host_port,
                    ip: nic.ip.clone(),
                    guest_port: f.guest_port,
                })
            })
            .collect();
        Ok(NetworksState { networks, forwards })
    }

    /// Pushes the desired network state to every connected host.
    pub async fn sync_networks(&self) -> Res<()> {
        self.sync_networks_reporting().await.map(|_| ())
    }

    /// Pushes the desired network state to every connected host, and returns the port
    /// forwards some host skipped (a host service holds the port). Every host gets the
    /// state even when one fails; the first failure is the answer then.
    pub(crate) async fn sync_networks_reporting(&self) -> Res<Vec<wire::SkippedForward>> {
        // Built and sent under one lock, so an older state never lands after a newer one.
        let _in_order = self.net_sync.lock().await;
        let state = self.networks_state().await?;
        let mut skipped = Vec::new();
        let mut first_error = None;
        for (host, agent) in self.agents() {
            match agent.put_networks(state.clone()).await {
                Ok(applied) => {
                    for s in &applied.skipped {
                        tracing::warn!(%host, "port forward skipped: {}", s.reason);
                    }
                    skipped.extend(applied.skipped);
                }
                Err(e) => {
                    let e = Error::from(e);
                    tracing::warn!(%host, "the host could not apply the network state: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(skipped),
        }
    }

    pub(crate) fn nic_spec(nic: &NicRecord) -> NicSpec {
        NicSpec {
            id: nic.id.clone(),
            index: nic.idx,
            mac: nic.mac.clone(),
            ipv4: nic.ip.clone(),
            ipv6: nic.ipv6.clone(),
            bridge: mnet::bridge_name(&nic.network_id),
            tap: mnet::tap_name(&nic.id),
        }
    }

    /// Plans a NIC on a network: validates or allocates its IP and MAC. Not stored yet.
    pub(crate) async fn plan_nic(
        &self,
        ctx: &Ctx,
        vm_id: &str,
        idx: u32,
        req: &NicRequest,
        taken: &[NicRecord],
    ) -> Res<NicRecord> {
        let net = self.network_named(&req.network).await?;
        self.check_attach(ctx, &net, req).await?;
        let cidr = mnet::parse_cidr("cidr", &net.cidr)?;
        let gateway = mnet::parse_ip("gateway", &net.gateway)?;
        let mut used: HashSet<std::net::Ipv4Addr> = self
            .store
            .nics_on(&net.id)
            .await?
            .iter()
            .chain(taken.iter().filter(|n| n.network_id == net.id))
            .filter_map(|n| n.ip.parse().ok())
            .collect();
        let ip = match &req.ip {
            Some(text) => {
                let ip = mnet::parse_ip("ip", text)?;
                mnet::check_vm_ip("ip", cidr, gateway, ip)?;
                if used.contains(&ip) {
                    return Err(Error::conflict_field(
                        "ip",
                        format!("{ip} is already taken on network {:?}: choose another, or leave --ip out to get a free one", net.name),
                    ));
                }
                ip
            }
            None => mnet::allocate(cidr, gateway, &used).ok_or_else(|| {
                Error::conflict_field(
                    "ip",
                    format!("network {:?} ({cidr}) has no free address left", net.name),
                )
            })?,
        };
        used.insert(ip);
        let all_macs: HashSet<String> = self
            .store
            .all_nics()
            .await?
            .into_iter()
            .chain(taken.iter().cloned())
            .map(|n| n.mac)
            .collect();
        let mac = match &req.mac {
            Some(text) => {
                let m = mnet::format_mac(mnet::parse_mac("mac", text)?);
                if all_macs.contains(&m) {
                    return Err(Error::conflict_field(
                        "mac",
                        format!("MAC {m} is already used by another NIC: MACs are unique across the cluster"),
                    ));
                }
                m
            }
            None => loop {
                let u = uuid::Uuid::new_v4();
                let b = u.as_bytes();
                let m = mnet::mac_from([b[0], b[1], b[2]]);
                if !all_macs.contains(&m) {
                    break m;
                }
            },
        };
        let ipv6 = match &net.ipv6_prefix {
            Some(p) => {
                let prefix = mnet::parse_ipv6_prefix("ipv6", p)?;
                let m = mnet::parse_mac("mac", &mac)?;
                Some(mnet::ipv6_with_mac(prefix.network(), m).to_string())
            }
            None => None,
        };
        Ok(NicRecord {
            id: new_id("nic"),
            vm_id: vm_id.to_string(),
            network_id: net.id,
            idx,
            mac,
            ip: ip.to_string(),
            ipv6,
        })
    }

    pub(crate) async fn nic_views(
        &self,
        vm: &VmRecord,
        status: Option<&wire::VmStatus>,
    ) -> Res<Vec<Nic>> {
        let mut out = Vec::new();
        for nic in self.store.nics_of(&vm.id).await? {
            let net = self.store.network_by_id(&nic.network_id).await?;
            let drops = status
                .and_then(|s| s.nics.iter().find(|n| n.id == nic.id))
                .and_then(|n| n.drops);
            out.push(Nic {
                tap: mnet::tap_name(&nic.id),
                id: nic.id,
                index: nic.idx,
                network: net.as_ref().map(|n| n.name.clone()).unwrap_or_default(),
                mac: nic.mac,
                ip: nic.ip,
                ipv6: nic.ipv6,
                dns_name: net
                    .and_then(|n| n.domain)
                    .map(|d| format!("{}.{d}", vm.name)),
                drops,
            });
        }
        Ok(out)
    }

    pub async fn list_nics(&self, ctx: &Ctx, name: &str) -> Res<Vec<Nic>> {
        let vm = self.vm_named(ctx, name).await?;
        let status = match vm.host_id.as_deref().and_then(|h| self.agent(h)) {
            Some(a) => a.get_vm(&vm.id).await.ok(),
            None => None,
        };
        self.nic_views(&vm, status.as_ref()).await
    }

    pub async fn add_nic(&self, ctx: &Ctx, name: &str, req: NicRequest) -> Res<Nic> {
        ctx.params(serde_json::json!({"network": req.network, "ip": req.ip, "mac": req.mac}));
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        if vm.state == VmState::Saved {
            return Err(Invalid::new(
                "state",
                "a saved VM cannot change its devices (its saved state would no longer fit): restore it first",
            )
            .into());
        }
        let _quota = self.charge_nic(&vm).await?;
        let existing = self.store.nics_of(&vm.id).await?;
        let idx = existing.iter().map(|n| n.idx + 1).max().unwrap_or(0);
        let nic = self.plan_nic(ctx, &vm.id, idx, &req, &[]).await?;
        // Journaled from before its row: a NIC row on a running VM whose agent does not
        // have it is one this left half-made (`journal.rs` takes it out).
        let op = self.journal_simple(ctx, "nic-add", name, Some(&vm)).await?;
        let result = async {
            self.store.insert_nic(&nic).await.map_err(|e| {
                if hostel_store::is_unique_violation(&e) {
                    Error::conflict("the IP or MAC was taken meanwhile: try again")
                } else {
                    Error::from(e)
                }
            })?;
            self.plug_nic(&vm, &nic, &op).await
        }
        .await;
        op.end(&result).await;
        result?;
        let views = self.list_nics(ctx, name).await?;
        Ok(views
            .into_iter()
            .find(|n| n.id == nic.id)
            .expect("just added"))
    }

    /// The rest of `add_nic` once its row is written: DHCP and DNS, then the guest.
    async fn plug_nic(
        &self,
        vm: &hostel_store::VmRecord,
        nic: &hostel_store::NicRecord,
        op: &crate::journal::OpLog,
    ) -> Res<()> {
        op.step("row-written").await?;
        // DHCP and DNS learn the NIC before the guest sees it.
        self.sync_networks().await?;
        let state = vm.state;
        if state.has_process() {
            let agent = self.host_agent(vm)?;
            if let Err(e) = agent.add_nic(&vm.id, Self::nic_spec(nic)).await {
                self.store.delete_nic(&nic.id).await?;
                let _ = self.sync_networks().await;
                return Err(
                    Error::from(e).context("hot-plugging the NIC failed, so it was not kept")
                );
            }
        }
        Ok(())
    }

    pub async fn remove_nic(&self, ctx: &Ctx, name: &str, which: &str) -> Res<()> {
        let (_g, vm) = self.locked_vm(ctx, name).await?;
        let nics = self.store.nics_of(&vm.id).await?;
        let nic = nics
            .iter()
            .find(|n| n.mac.eq_ignore_ascii_case(which) || n.idx.to_string() == which)
            .ok_or_else(|| {
                Error::not_found("nic", which, format!(
                    "VM {name:?} has no NIC {which:?}: give its MAC or index (`hostel nic list {name}`)"
                ))
            })?;
        let state = vm.state;
        let op = self
            .journal_simple(ctx, "nic-remove", name, Some(&vm))
            .await?;
        let result: Res<()> = async {
            if state.has_process() {
                let agent = self.host_agent(&vm)?;
                agent
                    .remove_nic(
                        &vm.id,
                        hostel_api::agent::RemoveNicRequest { id: nic.id.clone() },
                    )
                    .await?;
            }
            op.step("detached").await?;
            self.store.delete_nic(&nic.id).await?;
            self.sync_networks().await
        }
        .await;
        op.end(&result).await;
        result
    }

    /// The port forwards of the VM `name`: its own NICs and forwards, not every VM's.
    pub async fn forwards(&self, ctx: &Ctx, name: &str) -> Res<Vec<PortForward>> {
        let vm = self.vm_named(ctx, name).await?;
        let nics = self.store.nics_of(&vm.id).await?;
        Ok(self
            .store
            .forwards()
            .await?
            .into_iter()
            .filter(|f| f.vm_id == vm.id)
            .map(|f| PortForward {
                vm: vm.name.clone(),
                ip: nics
                    .iter()
                    .find(|n| n.id == f.nic_id)
                    .map(|n| n.ip.clone())
                    .unwrap_or_default(),
                proto: f.proto,
                host_port: f.host_port,
                guest_port: f.guest_port,
            })
            .collect())
    }

    pub async fn add_forward(
        &self,
        ctx: &Ctx,
        name: &str,
        req: PortForwardRequest,
    ) -> Res<PortForward> {
        ctx.params(serde_json::json!({"host_port": req.host_port, "guest_port": req.guest_port, "proto": req.proto}));
        let vm = self.vm_named(ctx, name).await?;
        if req.proto != "tcp" && req.proto != "udp" {
            return Err(Invalid::new(
                "proto",
                format!("{:?} is not a protocol: use tcp or udp", req.proto),
            )
            .into());
        }
        for (field, port) in [("host_port", req.host_port), ("guest_port", req.guest_port)] {
            if port == 0 {
                return Err(Invalid::new(field, "port 0 is not a port: use 1 to 65535").into());
            }
        }
        if req.host_port < 1024 && !ctx.is_admin() {
            return Err(Invalid::new(
                "host_port",
                format!(
                    "{} is a privileged port, for admins: use a host port from 1024 up",
                    req.host_port
                ),
            )
            .into());
        }
        self.check_forward_port(&req.proto, req.host_port).await?;
        let nics = self.store.nics_of(&vm.id).await?;
        let mut nic = None;
        for n in &nics {
            if let Some(net) = self.store.network_by_id(&n.network_id).await? {
                if net.mode == NetMode::Nat {
                    nic = Some(n.clone());
                    break;
                }
            }
        }
        let nic = nic.ok_or_else(|| {
            Error::from(Invalid::new(
                "vm",
                format!("VM {name:?} has no NIC on a NAT network: port forwards reach VMs behind NAT only"),
            ))
        })?;
        let _quota = self.charge_port_forward(&vm).await?;
        let rec = ForwardRecord {
            id: new_id("fwd"),
            vm_id: vm.id.clone(),
            nic_id: nic.id.clone(),
            proto: req.proto.clone(),
            host_port: req.host_port,
            guest_port: req.guest_port,
        };
        self.store.insert_forward(&rec).await.map_err(|e| {
            if hostel_store::is_unique_violation(&e) {
                Error::conflict_field(
                    "host_port",
                    format!(
                        "host port {}/{} is already forwarded: choose another",
                        req.host_port, req.proto
                    ),
                )
            } else {
                e.into()
            }
        })?;
        // A host that could not apply it, or skipped it (a host service holds the port):
        // taken back, so that no row names a forward no host runs.
        let ours = |f: &wire::ForwardSpec| f.proto == rec.proto && f.host_port == rec.host_port;
        let refused = match self.sync_networks_reporting().await {
            Ok(skipped) => match skipped.iter().find(|s| ours(&s.forward)) {
                Some(s) => Some(
                    self.forward_port_taken(&rec.proto, rec.host_port, &s.reason)
                        .await,
                ),
                None => None,
            },
            Err(e) => Some(e),
        };
        if let Some(e) = refused {
            self.store.delete_forward(&rec.id).await?;
            let _ = self.sync_networks().await;
            return Err(e);
        }
        Ok(PortForward {
            vm: vm.name,
            proto: rec.proto,
            host_port: rec.host_port,
            guest_port: rec.guest_port,
            ip: nic.ip,
        })
    }

    pub async fn remove_forward(&self, ctx: &Ctx, name: &str, req: PortForwardRequest) -> Res<()> {
        ctx.params(serde_json::json!({"host_port": req.host_port, "guest_port": req.guest_port, "proto": req.proto}));
        let vm = self.vm_named(ctx, name).await?;
        let f = self
            .store
            .forwards()
            .await?
            .into_iter()
            .find(|f| {
                f.vm_id == vm.id
                    && f.host_port == req.host_port
                    && f.guest_port == req.guest_port
                    && f.proto == req.proto
            })
            .ok_or_else(|| {
                Error::not_found(
                    "port-forward",
                    req.host_port.to_string(),
                    format!(
                        "VM {name:?} has no port forward {}:{}/{}",
                        req.host_port, req.guest_port, req.proto
                    ),
                )
            })?;
        self.store.delete_forward(&f.id).await?;
        self.sync_networks().await
    }

    /// Creates the default NAT network on first start.
    pub async fn ensure_default_network(&self, ctx: &Ctx) -> Res<()> {
        if self.store.network_by_name(DEFAULT_NETWORK).await?.is_some() {
            return self.sync_networks().await;
        }
        self.create_network(
            ctx,
            CreateNetworkRequest {
                name: DEFAULT_NETWORK.into(),
                cidr: DEFAULT_CIDR.into(),
                gateway: None,
                mode: NetMode::Nat,
                uplink: None,
                domain: Some(DEFAULT_DOMAIN.into()),
                ipv6: None,
                dns_forward: None,
                policy: Default::default(),
            },
        )
        .await
        .map(|_| ())
    }
}
