//! Hosts: each with its agent's state (online, offline, stale: greyed with the age of
//! its last report), its capacity and what is promised of it, its VMs, accelerator and
//! QEMU. The table re-reads itself every 5 s (htmx), so a host going away shows.

use super::super::fields::{done, Fields};
use super::super::{mib, page, Layout};
use super::ago;
use crate::api::seg;
use crate::session::{Form, Session};
use askama::Template;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;
use hostel_api::public::{
    AddHostRequest, ControllerInfo, DrainRequest, HostInfo, Info, RebalancePlan, RebalanceRequest,
    SetHostRequest, Task, UndrainRequest, VmSummary,
};
use std::collections::HashMap;

/// The VMs read to add up each host's vCPUs (one page of the VM list).
const VM_PAGE: usize = 1000;

pub struct HostRow {
    pub h: HostInfo,
    /// vCPUs of the host's VMs that have a QEMU process.
    pub vcpus: u64,
}

impl HostRow {
    pub fn state(&self) -> &'static str {
        if self.h.online {
            "online"
        } else if self.h.stale {
            "stale"
        } else {
            "offline"
        }
    }
    pub fn age(&self) -> String {
        ago(self.h.last_seen_age_seconds)
    }
    pub fn memory(&self) -> String {
        format!(
            "{} of {} promised",
            mib(&self.h.memory_vms_mib),
            mib(&self.h.memory_total_mib)
        )
    }
    pub fn memory_max(&self) -> u64 {
        self.h.memory_total_mib.max(self.h.memory_vms_mib).max(1)
    }
    pub fn memory_high(&self) -> u64 {
        self.memory_max() * 9 / 10
    }
}

#[derive(Template)]
#[template(path = "admin_hosts.html")]
struct HostsPage {
    layout: Layout,
    rows: Vec<HostRow>,
    /// The vCPU sums are from the first `VM_PAGE` VMs only.
    partial: bool,
    /// The controllers sharing the database (with PostgreSQL, maybe more than one).
    controllers: Vec<ControllerInfo>,
    /// The one that served this page.
    this: String,
}

pub async fn show(s: Session, headers: HeaderMap) -> Response {
    let path = format!("/api/v1/vms?limit={VM_PAGE}");
    let (hosts, vms) = tokio::join!(
        s.api.get::<Vec<HostInfo>>("/api/v1/hosts"),
        s.api.get::<Vec<VmSummary>>(&path),
    );
    let hosts = match hosts {
        Ok(h) => h,
        Err(e) => return super::super::error_page(&e),
    };
    let vms = vms.unwrap_or_default();
    let partial = vms.len() >= VM_PAGE;
    let mut vcpus: HashMap<String, u64> = HashMap::new();
    for v in vms.iter().filter(|v| v.state.has_process()) {
        if let Some(h) = &v.host {
            *vcpus.entry(h.clone()).or_default() += u64::from(v.vcpus);
        }
    }
    let rows = hosts
        .into_iter()
        .map(|h| HostRow {
            vcpus: vcpus.get(&h.name).copied().unwrap_or(0),
            h,
        })
        .collect();
    let info = s.api.get::<Info>("/api/v1/info").await.ok();
    let layout = Layout::new(&s, &headers, "Hosts", "hosts");
    let p = HostsPage {
        rows,
        partial,
        controllers: info
            .as_ref()
            .map(|i| i.controllers.clone())
            .unwrap_or_default(),
        this: info.map(|i| i.controller).unwrap_or_default(),
        layout,
    };
    page(&p.layout, &p)
}

pub async fn act(Path(action): Path<String>, f: Form<Fields>) -> Response {
    let Form {
        session: s,
        data: f,
    } = f;
    const HERE: &str = "/admin/hosts";
    match action.as_str() {
        "add" => {
            let req = AddHostRequest {
                url: f.get("url").into(),
                replace: f.on("replace"),
            };
            let r = s.api.post::<_, HostInfo>("/api/v1/hosts", &req).await;
            done(HERE, r, |h| {
                format!(
                    "Host {} is added: {} CPUs, {}, {}.",
                    h.name,
                    h.cpus,
                    mib(&h.memory_total_mib),
                    if h.online { "online" } else { "offline" }
                )
            })
        }
        "tags" => {
            let name = f.get("name");
            let req = SetHostRequest {
                tags: f.list("tags"),
            };
            let r = s
                .api
                .put::<_, HostInfo>(&format!("/api/v1/hosts/{}", seg(name)), &req)
                .await;
            done(HERE, r, |h| {
                if h.tags.is_empty() {
                    format!("Host {} has no tags now.", h.name)
                } else {
                    format!("Host {} is tagged {}.", h.name, h.tags.join(", "))
                }
            })
        }
        "drain" => {
            let name = f.get("name");
            let concurrency = match f.num::<u32>("concurrency", "VMs moved at once") {
                Ok(n) => n,
                Err(why) => return super::super::fields::refused(HERE, why),
            };
            let req = DrainRequest {
                concurrency,
                allow_offline: f.on("allow_offline"),
            };
            let r = s
                .api
                .post::<_, Task>(&format!("/api/v1/hosts/{}/drain", seg(name)), &req)
                .await;
            follow_or_back(HERE, r, "The drain of host")
        }
        "undrain" => {
            let name = f.get("name");
            let req = UndrainRequest {
                return_vms: f.on("return"),
            };
            let r = s
                .api
                .post::<_, Task>(&format!("/api/v1/hosts/{}/undrain", seg(name)), &req)
                .await;
            follow_or_back(HERE, r, "The undrain of host")
        }
        "rebalance" => {
            let req = RebalanceRequest {
                dry_run: f.on("dry_run"),
                min_gain: None,
            };
            let r = s
                .api
                .post::<_, RebalancePlan>("/api/v1/rebalance", &req)
                .await;
            match r {
                Ok(RebalancePlan { task: Some(t), .. }) => super::images::follow(t, "Rebalancing"),
                r => done(HERE, r, |p| {
                    let moves: Vec<String> = p
                        .moves
                        .iter()
                        .map(|m| format!("{} from {} to {}", m.vm, m.from, m.to))
                        .collect();
                    if moves.is_empty() {
                        format!(
                            "The hosts are balanced (score {:.3}): nothing to move.",
                            p.score_before
                        )
                    } else {
                        format!(
                            "The plan (not applied), score {:.3} → {:.3}: {}.",
                            p.score_before,
                            p.score_after,
                            moves.join("; ")
                        )
                    }
                }),
            }
        }
        "remove" => {
            let name = f.get("name");
            let r = s
                .api
                .delete::<serde_json::Value>(&format!("/api/v1/hosts/{}", seg(name)))
                .await;
            done(HERE, r, |_| format!("Host {name} is removed."))
        }
        other => super::super::fields::refused(
            HERE,
            format!("{other:?} is not something this page does"),
        ),
    }
}

/// A task's page once it started, or this page with why it did not.
fn follow_or_back(here: &str, r: crate::api::ApiResult<Task>, what: &str) -> Response {
    match r {
        Ok(t) => super::images::follow(t, what),
        Err(e) => crate::session::back_err(here, &e),
    }
}
