//! The VM list (a user's VMs; an admin's, every VM) with search, filters and bulk
//! actions. Rows change in place as the event stream reports (`assets/app.js`).

use super::{mib, page, when, Layout};
use crate::api::{query, seg, Api, ApiError};
use crate::session::{back, Flash, Form, Session};
use askama::Template;
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::response::Response;
use hostel_api::public::{HostInfo, Info, VmSummary};
use serde::Deserialize;

/// How many VMs one page of the list shows.
pub const PAGE: usize = 1000;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    /// Part of a name or an IP address.
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    after: String,
}

pub struct Row {
    pub vm: VmSummary,
}

impl Row {
    pub fn memory(&self) -> String {
        mib(&self.vm.memory_mib)
    }
    pub fn ips(&self) -> String {
        self.vm.ips.join(", ")
    }
    pub fn owner(&self) -> &str {
        self.vm.owner.as_deref().unwrap_or("")
    }
    pub fn host(&self) -> &str {
        self.vm.host.as_deref().unwrap_or("")
    }
    pub fn lease(&self) -> String {
        self.vm
            .lease_expires_at
            .as_deref()
            .map(when)
            .unwrap_or_default()
    }
    pub fn state(&self) -> &'static str {
        self.vm.state.as_str()
    }
}

#[derive(Template)]
#[template(path = "vms.html")]
struct VmsPage {
    layout: Layout,
    rows: Vec<Row>,
    q: ListQuery,
    states: Vec<&'static str>,
    hosts: Vec<String>,
    owners: Vec<String>,
    /// The link to the next page, when more VMs follow.
    next: Option<String>,
    /// This page with its filters (where a bulk action comes back to).
    here: String,
    total_shown: usize,
}

pub async fn list(s: Session, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let path = format!(
        "/api/v1/vms{}",
        query(&[
            ("limit", Some(&PAGE.to_string())),
            ("state", Some(&q.state)),
            ("host", Some(&q.host)),
            ("q", Some(q.q.trim())),
            ("owner", Some(&q.owner)),
            ("after", Some(&q.after)),
        ])
    );
    let vms: Vec<VmSummary> = match s.api.get(&path).await {
        Ok(v) => v,
        Err(e) => return super::error_page(&e),
    };
    let page_url = |after: &str| {
        format!(
            "/vms{}",
            query(&[
                ("q", Some(&q.q)),
                ("state", Some(&q.state)),
                ("host", Some(&q.host)),
                ("owner", Some(&q.owner)),
                ("after", Some(after)),
            ])
        )
    };
    let here = page_url(&q.after);
    let next = (vms.len() == PAGE)
        .then(|| vms.last().map(|v| page_url(&v.name)))
        .flatten();
    let owners = if s.me.admin {
        owner_names(&s.api).await
    } else {
        Vec::new()
    };
    let rows: Vec<Row> = vms.into_iter().map(|vm| Row { vm }).collect();
    let hosts = if s.me.admin {
        host_names(&s.api).await
    } else {
        Vec::new()
    };
    let layout = Layout::new(
        &s,
        &headers,
        if s.me.admin { "All VMs" } else { "My VMs" },
        "vms",
    );
    let p = VmsPage {
        total_shown: rows.len(),
        here,
        rows,
        q,
        states: hostel_model::VmState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect(),
        hosts,
        owners,
        next,
        layout,
    };
    page(&p.layout, &p)
}

/// Every user and group, as an owner filter names them (admins only).
async fn owner_names(api: &Api) -> Vec<String> {
    let users: Vec<hostel_api::public::User> = api.get("/api/v1/users").await.unwrap_or_default();
    let groups: Vec<hostel_api::public::Group> =
        api.get("/api/v1/groups").await.unwrap_or_default();
    users
        .into_iter()
        .map(|u| format!("user:{}", u.name))
        .chain(groups.into_iter().map(|g| format!("group:{}", g.name)))
        .collect()
}

async fn host_names(api: &Api) -> Vec<String> {
    match api.get::<Info>("/api/v1/info").await {
        Ok(i) => i.hosts.into_iter().map(|h: HostInfo| h.name).collect(),
        Err(_) => Vec::new(),
    }
}

#[derive(Deserialize)]
pub struct BulkForm {
    action: String,
    #[serde(default)]
    vm: Vec<String>,
    #[serde(default)]
    back: Option<String>,
}

/// Starts, stops or deletes each chosen VM (at once, each on its own), then says what
/// happened to each.
pub async fn bulk(f: Form<BulkForm>) -> Response {
    let Form { session: s, data } = f;
    let back_to = data
        .back
        .filter(|b| b.starts_with("/vms") && !b.starts_with("//"))
        .unwrap_or_else(|| "/vms".into());
    if data.vm.is_empty() {
        return back(&back_to, Flash::err("Choose at least one VM first."));
    }
    let verb = match data.action.as_str() {
        "start" => "started",
        "stop" => "stopped",
        "delete" => "deleted",
        other => {
            return back(
                &back_to,
                Flash::err(format!(
                    "{other:?} is not a bulk action: start, stop or delete"
                )),
            )
        }
    };
    let results = futures::future::join_all(data.vm.iter().map(|name| {
        let api = s.api.clone();
        let action = data.action.clone();
        async move {
            let r = one(&api, &action, name).await;
            (name.clone(), r)
        }
    }))
    .await;
    let ok = results.iter().all(|(_, r)| r.is_ok());
    let lines: Vec<String> = results
        .into_iter()
        .map(|(name, r)| match r {
            Ok(()) => format!("{name}: {verb}"),
            Err(e) => format!("{name}: {}", e.message()),
        })
        .collect();
    let text = lines.join("\n");
    back(
        &back_to,
        if ok {
            Flash::ok(text)
        } else {
            Flash::err(text)
        },
    )
}

async fn one(api: &Api, action: &str, name: &str) -> Result<(), ApiError> {
    let vm = seg(name);
    let empty = serde_json::json!({});
    match action {
        "start" => {
            api.post::<_, serde_json::Value>(&format!("/api/v1/vms/{vm}/start"), &empty)
                .await
        }
        "stop" => {
            let req = serde_json::json!({"timeout_secs": 30, "force": true});
            api.post::<_, serde_json::Value>(&format!("/api/v1/vms/{vm}/shutdown"), &req)
                .await
        }
        _ => {
            api.delete::<serde_json::Value>(&format!("/api/v1/vms/{vm}"))
                .await
        }
    }
    .map(|_| ())
}
