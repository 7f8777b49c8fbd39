//! Networks (their addresses, mode, domain, bridge, the VMs on each and the isolation
//! policy, which can be edited) and storage pools (their space and disks), each with
//! create and delete.

use super::super::fields::{done, refused, Fields};
use super::super::{error_page, mib, page, when, Layout};
use super::bytes;
use crate::api::seg;
use crate::session::{Form, Session};
use askama::Template;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;
use hostel_api::public::{
    BackupTarget, CreateBackupTargetRequest, CreateNetworkRequest, CreatePoolRequest, HostInfo,
    Network, NetworkPolicy, Pool, UpdateNetworkRequest,
};
use hostel_model::net::NetMode;

#[derive(Template)]
#[template(path = "admin_networks.html")]
struct NetworksPage {
    layout: Layout,
    networks: Vec<Network>,
}

impl NetworksPage {
    pub fn lines(&self, l: &[String]) -> String {
        l.join("\n")
    }
    pub fn list(&self, l: &[String]) -> String {
        if l.is_empty() {
            "none".into()
        } else {
            l.join(", ")
        }
    }
}

pub async fn networks(s: Session, headers: HeaderMap) -> Response {
    let networks = match s.api.get::<Vec<Network>>("/api/v1/networks").await {
        Ok(n) => n,
        Err(e) => return error_page(&e),
    };
    let layout = Layout::new(&s, &headers, "Networks", "networks");
    let p = NetworksPage { networks, layout };
    page(&p.layout, &p)
}

pub struct PoolRow {
    pub p: Pool,
}

impl PoolRow {
    pub fn space(&self) -> String {
        match (self.p.free_bytes, self.p.total_bytes) {
            (Some(f), Some(t)) => format!("{} free of {}", bytes(f), bytes(t)),
            _ => "unknown: the host does not answer".into(),
        }
    }
    /// The filesystem's used and total space in MiB, for the meter.
    pub fn meter(&self) -> Option<(u64, u64)> {
        let (t, f) = (self.p.total_bytes?, self.p.free_bytes?);
        let t = (t >> 20).max(1);
        Some((t.saturating_sub(f >> 20), t))
    }
    pub fn provisioned(&self) -> String {
        mib(&self.p.provisioned_mib)
    }
    pub fn created(&self) -> String {
        when(&self.p.created_at)
    }
}

#[derive(Template)]
#[template(path = "admin_pools.html")]
struct PoolsPage {
    layout: Layout,
    pools: Vec<PoolRow>,
    hosts: Vec<String>,
    targets: Vec<BackupTarget>,
}

impl PoolsPage {
    pub fn bytes(&self, b: &u64) -> String {
        super::bytes(*b)
    }
}

pub async fn pools(s: Session, headers: HeaderMap) -> Response {
    let (pools, hosts) = tokio::join!(
        s.api.get::<Vec<Pool>>("/api/v1/pools"),
        s.api.get::<Vec<HostInfo>>("/api/v1/hosts"),
    );
    // The hosts a pool may be made on: a list only admins may read, and so this page.
    let (pools, hosts) = match (pools, hosts) {
        (Ok(p), Ok(h)) => (p, h),
        (Err(e), _) | (_, Err(e)) => return error_page(&e),
    };
    let targets = s
        .api
        .get::<Vec<BackupTarget>>("/api/v1/backup-targets")
        .await
        .unwrap_or_default();
    let layout = Layout::new(&s, &headers, "Storage pools", "pools");
    let p = PoolsPage {
        targets,
        pools: pools.into_iter().map(|p| PoolRow { p }).collect(),
        hosts: hosts.into_iter().map(|h| h.name).collect(),
        layout,
    };
    page(&p.layout, &p)
}

pub async fn act(Path(action): Path<String>, f: Form<Fields>) -> Response {
    let Form {
        session: s,
        data: f,
    } = f;
    const NETWORKS: &str = "/admin/networks";
    const POOLS: &str = "/admin/pools";
    let api = &s.api;
    match action.as_str() {
        "create-network" => {
            let mode = match f.get("mode") {
                "bridged" => NetMode::Bridged,
                _ => NetMode::Nat,
            };
            let req = CreateNetworkRequest {
                name: f.get("name").into(),
                cidr: f.get("cidr").into(),
                gateway: f.opt("gateway"),
                mode,
                uplink: f.opt("uplink"),
                domain: f.opt("domain"),
                ipv6: f.opt("ipv6"),
                dns_forward: f.opt("dns_forward"),
                policy: NetworkPolicy::default(),
            };
            let r = api.post::<_, Network>("/api/v1/networks", &req).await;
            done(NETWORKS, r, |n| {
                format!(
                    "Network {} ({}) is made, on bridge {}.",
                    n.name, n.cidr, n.bridge
                )
            })
        }
        "policy" => {
            let name = f.get("name");
            let req = UpdateNetworkRequest {
                host_ports: Some(f.list("host_ports")),
                links: Some(f.list("links")),
                allow_to: Some(f.list("allow_to")),
                attach: Some(f.list("attach")),
            };
            let path = format!("/api/v1/networks/{}", seg(name));
            let r = api.patch::<_, Network>(&path, &req).await;
            done(NETWORKS, r, |n| {
                format!("The policy of {} is saved.", n.name)
            })
        }
        "delete-network" => {
            let name = f.get("name");
            let r = api
                .delete::<serde_json::Value>(&format!("/api/v1/networks/{}", seg(name)))
                .await;
            done(NETWORKS, r, |_| format!("Network {name} is deleted."))
        }
        "create-pool" => {
            let req = CreatePoolRequest {
                name: f.get("name").into(),
                driver: f.opt("driver").unwrap_or_else(|| "dir".into()),
                path: f.get("path").into(),
                host: f.opt("host"),
                shared: f.on("shared"),
            };
            let r = api.post::<_, Pool>("/api/v1/pools", &req).await;
            done(POOLS, r, |p| {
                format!("Pool {} is made on {}.", p.name, p.host)
            })
        }
        "delete-pool" => {
            let name = f.get("name");
            let r = api
                .delete::<serde_json::Value>(&format!("/api/v1/pools/{}", seg(name)))
                .await;
            done(POOLS, r, |_| format!("Pool {name} is deleted."))
        }
        "create-target" => {
            let req = CreateBackupTargetRequest {
                name: f.get("name").into(),
                dir: f.get("dir").into(),
            };
            let r = api
                .post::<_, BackupTarget>("/api/v1/backup-targets", &req)
                .await;
            done(POOLS, r, |t| {
                format!("Backup target {} ({}) is added.", t.name, t.dir)
            })
        }
        "delete-target" => {
            let name = f.get("name");
            let r = api
                .delete::<serde_json::Value>(&format!("/api/v1/backup-targets/{}", seg(name)))
                .await;
            done(POOLS, r, |_| format!("Backup target {name} is deleted."))
        }
        other => refused(
            NETWORKS,
            format!("{other:?} is not something this page does"),
        ),
    }
}
