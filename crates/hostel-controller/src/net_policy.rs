//! What a network's VMs may reach and who may attach to it (the policy an admin sets,
//! rendered by each host into its nftables filter), and the host ports a port forward
//! may never take (Hostel's own listeners).

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::public::{NetworkPolicy, NicRequest, UpdateNetworkRequest};
use hostel_model::net::{self as mnet, NetMode, NetPolicy};
use hostel_model::Invalid;
use hostel_store::NetworkRecord;

type Res<T> = crate::error::Result<T>;

/// The port every `hostel agent` listens on unless told otherwise: a forward must not
/// take it from a host that runs, or will run, an agent.
pub const DEFAULT_AGENT_PORT: u16 = 8471;

const MAX_ENTRIES: usize = 64;

impl Controller {
    /// Checks a policy as a request gives it (names) and returns it as stored (ids).
    pub(crate) async fn policy_from_request(
        &self,
        network: Option<&NetworkRecord>,
        mode: NetMode,
        req: &NetworkPolicy,
    ) -> Res<NetPolicy> {
        for (field, list, max) in [
            ("host_ports", &req.host_ports, MAX_ENTRIES),
            ("links", &req.links, MAX_ENTRIES),
            ("allow_to", &req.allow_to, MAX_ENTRIES),
            ("attach", &req.attach, MAX_ENTRIES),
        ] {
            if list.len() > max {
                return Err(Invalid::new(field, format!("at most {max} entries")).into());
            }
        }
        let mut host_ports = Vec::new();
        for p in &req.host_ports {
            let (proto, port) = mnet::parse_host_port("host_ports", p)?;
            let p = format!("{proto}/{port}");
            if !host_ports.contains(&p) {
                host_ports.push(p);
            }
        }
        let mut links = Vec::new();
        for name in &req.links {
            let other = self.network_named(name).await?;
            if Some(&other.id) == network.map(|n| &n.id) {
                return Err(Error::conflict_field(
                    "links",
                    format!("{name:?} is this network: a network always reaches itself"),
                ));
            }
            if !links.contains(&other.id) {
                links.push(other.id);
            }
        }
        let mut allow_to = Vec::new();
        for c in &req.allow_to {
            let net: ipnet::Ipv4Net = c.parse().map_err(|_| {
                Invalid::new(
                    "allow_to",
                    format!("{c:?} is not an IPv4 network: write it like 192.168.1.0/24"),
                )
            })?;
            // 192.168.1.7/24 means its network, as `ip route` reads it.
            let net = net.trunc();
            let link_local: ipnet::Ipv4Net = mnet::LINK_LOCAL_V4.parse().expect("a CIDR");
            // Refusals that depend on what the network is, not on the value's form: 409.
            if mnet::overlaps(net, link_local) {
                return Err(Error::conflict_field(
                    "allow_to",
                    format!(
                        "{c} overlaps {}: link-local addresses (cloud metadata) stay closed",
                        mnet::LINK_LOCAL_V4
                    ),
                ));
            }
            if mode == NetMode::Bridged {
                return Err(Error::conflict_field(
                    "allow_to",
                    "a bridged network's VMs are on the LAN already: allow_to is for NAT networks",
                ));
            }
            allow_to.push(net.to_string());
        }
        let mut attach = Vec::new();
        for who in &req.attach {
            let known = self.store.user_by_name(who).await?.is_some()
                || self.store.group_by_name(who).await?.is_some();
            if !known {
                return Err(Error::not_found(
                    "user",
                    who,
                    format!("attach: there is no user or group named {who:?}"),
                ));
            }
            if !attach.contains(who) {
                attach.push(who.clone());
            }
        }
        if !attach.is_empty() && mode != NetMode::Bridged {
            return Err(Error::conflict_field(
                "attach",
                "anyone may attach to a NAT network: attach lists are for bridged networks",
            ));
        }
        Ok(NetPolicy {
            host_ports,
            links,
            allow_to,
            attach,
        })
    }

    /// Changes a network's policy (admins): each list given replaces the one it names.
    pub async fn update_network(
        &self,
        ctx: &Ctx,
        name: &str,
        req: UpdateNetworkRequest,
    ) -> Res<hostel_api::public::Network> {
        ctx.target(name, None);
        ctx.params(serde_json::to_value(&req).unwrap_or_default());
        ctx.require_admin()?;
        let n = self.network_named(name).await?;
        let before: Vec<NetworkRecord> = self.store.networks().await?;
        let shown = policy_view(&n, &before);
        let links_given = req.links.is_some();
        let wanted = NetworkPolicy {
            host_ports: req.host_ports.unwrap_or(shown.host_ports),
            links: req.links.unwrap_or(shown.links),
            allow_to: req.allow_to.unwrap_or(shown.allow_to),
            attach: req.attach.unwrap_or(shown.attach),
        };
        let new = self.policy_from_request(Some(&n), n.mode, &wanted).await?;
        self.store.set_network_policy(&n.id, &new).await?;
        if links_given {
            // Links live on both sides; one that was dropped here is dropped there too.
            for o in before.iter().filter(|o| o.id != n.id) {
                if o.policy.links.contains(&n.id) && !new.links.contains(&o.id) {
                    let mut p = o.policy.clone();
                    p.links.retain(|l| l != &n.id);
                    self.store.set_network_policy(&o.id, &p).await?;
                }
            }
        }
        if let Err(e) = self.sync_networks().await {
            for o in &before {
                self.store.set_network_policy(&o.id, &o.policy).await?;
            }
            let _ = self.sync_networks().await;
            return Err(e.context("the hosts could not apply the policy, so it was not kept"));
        }
        self.network(ctx, name).await
    }

    /// Who may put a NIC on `net`, and choose its address: anyone on a NAT network;
    /// on a bridged network (a real segment, where an address could be the LAN's
    /// router) only admins and those its attach list names, and only admins pick IPs
    /// and MACs.
    pub(crate) async fn check_attach(
        &self,
        ctx: &Ctx,
        net: &NetworkRecord,
        req: &NicRequest,
    ) -> Res<()> {
        if net.mode != NetMode::Bridged || ctx.is_admin() {
            return Ok(());
        }
        let caller = ctx.caller()?;
        let mut listed = net.policy.attach.contains(&caller.user_name);
        for who in &net.policy.attach {
            if listed {
                break;
            }
            if let Some(g) = self.store.group_by_name(who).await? {
                listed = caller.group_ids.contains(&g.id);
            }
        }
        if !listed {
            return Err(Error::forbidden(format!(
                "network {:?} is bridged onto a real segment: only admins and the users and \
                 groups on its attach list may put a NIC on it (ask an admin: `hostel network \
                 set {} --attach ...`)",
                net.name, net.name
            )));
        }
        if req.ip.is_some() || req.mac.is_some() {
            return Err(Error::forbidden(format!(
                "on bridged network {:?} only admins choose IPs and MACs: leave --ip and --mac out \
                 and Hostel picks a free address",
                net.name
            )));
        }
        Ok(())
    }

    /// Host ports no port forward may take: Hostel's own listeners on any host.
    pub(crate) async fn reserved_ports(&self) -> Res<Vec<(u16, String)>> {
        let mut out: Vec<(u16, String)> = self
            .own_ports
            .lock()
            .unwrap()
            .iter()
            .map(|(p, what)| (*p, what.to_string()))
            .collect();
        out.push((
            DEFAULT_AGENT_PORT,
            "Hostel's agent (its default port)".into(),
        ));
        for h in self.store.hosts().await? {
            let port = h
                .url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
            if let Some(p) = port {
                out.push((p, format!("the agent of host {:?}", h.name)));
            }
        }
        Ok(out)
    }

    /// Refuses a host port Hostel needs, suggesting the nearest free one.
    pub(crate) async fn check_forward_port(&self, proto: &str, host_port: u16) -> Res<()> {
        let reserved = self.reserved_ports().await?;
        match reserved.iter().find(|(p, _)| *p == host_port) {
            None => Ok(()),
            Some((_, what)) => Err(self
                .forward_port_taken(
                    proto,
                    host_port,
                    &format!("host port {host_port} is reserved for {what}"),
                )
                .await),
        }
    }

    /// Refuses a forward's host port for `why`, suggesting the next port that no forward
    /// of `proto` and no Hostel listener holds.
    pub(crate) async fn forward_port_taken(&self, proto: &str, host_port: u16, why: &str) -> Error {
        let reserved = self.reserved_ports().await.unwrap_or_default();
        let forwarded: Vec<u16> = self
            .store
            .forwards()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f.proto == proto)
            .map(|f| f.host_port)
            .collect();
        let free = (host_port.saturating_add(1)..=u16::MAX)
            .find(|p| !reserved.iter().any(|(r, _)| r == p) && !forwarded.contains(p));
        let hint = match free {
            Some(p) => format!(": try {p}"),
            None => String::new(),
        };
        Error::conflict_field("host_port", format!("{why}{hint}"))
    }
}

/// The networks `n`'s VMs reach, and that reach them: a link set on either side opens
/// both ways.
pub(crate) fn linked<'a>(
    n: &'a NetworkRecord,
    all: &'a [NetworkRecord],
) -> impl Iterator<Item = &'a NetworkRecord> {
    all.iter()
        .filter(move |o| o.id != n.id)
        .filter(move |o| n.policy.links.contains(&o.id) || o.policy.links.contains(&n.id))
}

/// The policy as the API shows it: names, with links from either side.
pub(crate) fn policy_view(n: &NetworkRecord, all: &[NetworkRecord]) -> NetworkPolicy {
    let mut links: Vec<String> = linked(n, all).map(|o| o.name.clone()).collect();
    links.sort();
    NetworkPolicy {
        host_ports: n.policy.host_ports.clone(),
        links,
        allow_to: n.policy.allow_to.clone(),
        attach: n.policy.attach.clone(),
    }
}
