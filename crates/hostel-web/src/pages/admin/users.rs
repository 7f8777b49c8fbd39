//! Accounts, on three pages linked from one another: users (create with a password and
//! the admin flag, reset a password, delete), groups and their members, and quotas per
//! owner (`user:NAME`, `group:NAME`, `default`), every limit editable.

use super::super::account::{quota_lines, QuotaLine};
use super::super::fields::{done, refused, Fields};
use super::super::{error_page, page, when, Layout};
use crate::api::{query, seg, Api, ApiError};
use crate::session::{back, back_err, Flash, Form, Session};
use askama::Template;
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::response::Response;
use hostel_api::public::{
    CreateGroupRequest, CreateUserRequest, DefaultLimits, Group, Limits, MemberRequest,
    PasswordRequest, Quota, QuotaLimits, User,
};
use serde::Deserialize;
use serde_json::Value;

/// The users and groups, both needed by every page here (the API refuses the list of
/// users to anyone but an admin, and so these pages).
async fn accounts(api: &Api) -> Result<(Vec<User>, Vec<Group>), ApiError> {
    let (users, groups) = tokio::join!(
        api.get::<Vec<User>>("/api/v1/users"),
        api.get::<Vec<Group>>("/api/v1/groups"),
    );
    Ok((users?, groups?))
}

#[derive(Template)]
#[template(path = "admin_users.html")]
struct UsersPage {
    layout: Layout,
    users: Vec<User>,
}

impl UsersPage {
    pub fn at(&self, t: &str) -> String {
        when(t)
    }
}

pub async fn users(s: Session, headers: HeaderMap) -> Response {
    let (users, _) = match accounts(&s.api).await {
        Ok(a) => a,
        Err(e) => return error_page(&e),
    };
    let layout = Layout::new(&s, &headers, "Users", "users");
    let p = UsersPage { users, layout };
    page(&p.layout, &p)
}

#[derive(Template)]
#[template(path = "admin_groups.html")]
struct GroupsPage {
    layout: Layout,
    users: Vec<User>,
    groups: Vec<Group>,
}

impl GroupsPage {
    /// Users not yet in the group, to add.
    pub fn outside(&self, g: &Group) -> Vec<&str> {
        self.users
            .iter()
            .map(|u| u.name.as_str())
            .filter(|u| !g.members.iter().any(|m| m == u))
            .collect()
    }
}

pub async fn groups(s: Session, headers: HeaderMap) -> Response {
    let (users, groups) = match accounts(&s.api).await {
        Ok(a) => a,
        Err(e) => return error_page(&e),
    };
    let layout = Layout::new(&s, &headers, "Groups", "users");
    let p = GroupsPage {
        users,
        groups,
        layout,
    };
    page(&p.layout, &p)
}

#[derive(Deserialize, Default)]
pub struct QuotaQuery {
    #[serde(default)]
    owner: String,
}

/// One limit's field in the quota form.
pub struct LimitField {
    pub name: &'static str,
    pub label: &'static str,
    pub value: Option<u64>,
    pub used: String,
}

#[derive(Template)]
#[template(path = "admin_quotas.html")]
struct QuotasPage {
    layout: Layout,
    owners: Vec<String>,
    owner: String,
    quota: Quota,
    fields: Vec<LimitField>,
    lines: Vec<QuotaLine>,
    /// The resource limits its VMs get where they set none.
    defaults: DefaultLimits,
}

/// The quota form's fields: every `QuotaLimits` field, with what the owner uses of it.
fn limit_fields(q: &Quota) -> Vec<LimitField> {
    let (l, u) = (&q.limits, &q.used);
    let mib = |v: u64| format!("{v} MiB");
    let field = |name, label, value, used: String| LimitField {
        name,
        label,
        value,
        used,
    };
    vec![
        field(
            "vcpus_total",
            "vCPUs of running VMs",
            l.vcpus_total,
            u.vcpus.to_string(),
        ),
        field(
            "ram_total_mib",
            "Memory of running VMs (MiB)",
            l.ram_total_mib,
            mib(u.ram_mib),
        ),
        field(
            "ram_per_vm_mib",
            "Memory of one VM (MiB)",
            l.ram_per_vm_mib,
            String::new(),
        ),
        field(
            "disk_total_mib",
            "Disk space (MiB)",
            l.disk_total_mib,
            mib(u.disk_mib),
        ),
        field(
            "disk_per_vm_mib",
            "Disk of one VM (MiB)",
            l.disk_per_vm_mib,
            String::new(),
        ),
        field("vms_total", "VMs", l.vms_total, u.vms.to_string()),
        field(
            "vms_running",
            "Running VMs",
            l.vms_running,
            u.vms_running.to_string(),
        ),
        field("nics_total", "NICs", l.nics_total, u.nics.to_string()),
        field(
            "port_forwards_total",
            "Port forwards",
            l.port_forwards_total,
            u.port_forwards.to_string(),
        ),
        field(
            "snapshots_total",
            "Snapshots",
            l.snapshots_total,
            u.snapshots.to_string(),
        ),
    ]
}

pub async fn quotas(s: Session, headers: HeaderMap, Query(q): Query<QuotaQuery>) -> Response {
    let (users, groups) = match accounts(&s.api).await {
        Ok(a) => a,
        Err(e) => return error_page(&e),
    };
    let owner = if q.owner.trim().is_empty() {
        "default".to_string()
    } else {
        q.owner.trim().to_string()
    };
    let path = format!("/api/v1/quotas{}", query(&[("owner", Some(&owner))]));
    let quota: Quota = match s.api.get(&path).await {
        Ok(q) => q,
        Err(e) => return error_page(&e),
    };
    let path = format!("/api/v1/default-limits/{}", seg(&owner));
    let defaults: DefaultLimits = match s.api.get(&path).await {
        Ok(d) => d,
        Err(e) => return error_page(&e),
    };
    let mut owners = vec!["default".to_string()];
    owners.extend(users.iter().map(|u| format!("user:{}", u.name)));
    owners.extend(groups.iter().map(|g| format!("group:{}", g.name)));
    let layout = Layout::new(&s, &headers, format!("Quota of {owner}"), "users");
    let p = QuotasPage {
        fields: limit_fields(&quota),
        lines: quota_lines(&quota.limits, &quota.used),
        defaults,
        owners,
        owner,
        quota,
        layout,
    };
    page(&p.layout, &p)
}

/// The limits typed in the quota form (empty: no limit).
fn limits_from(f: &Fields) -> Result<QuotaLimits, String> {
    let n = |k: &str, what: &str| f.num::<u64>(k, what);
    Ok(QuotaLimits {
        ram_total_mib: n("ram_total_mib", "memory of running VMs")?,
        ram_per_vm_mib: n("ram_per_vm_mib", "memory of one VM")?,
        disk_total_mib: n("disk_total_mib", "disk space")?,
        disk_per_vm_mib: n("disk_per_vm_mib", "disk of one VM")?,
        vms_total: n("vms_total", "VMs")?,
        vms_running: n("vms_running", "running VMs")?,
        vcpus_total: n("vcpus_total", "vCPUs")?,
        nics_total: n("nics_total", "NICs")?,
        port_forwards_total: n("port_forwards_total", "port forwards")?,
        snapshots_total: n("snapshots_total", "snapshots")?,
    })
}

/// The default resource limits typed in their form (empty: none).
fn resource_limits_from(f: &Fields) -> Result<Limits, String> {
    Ok(Limits {
        cpu_weight: f.num("cpu_weight", "CPU weight")?,
        cpu_max_percent: f.num("cpu_max_percent", "CPU cap")?,
        disk_iops: f.num("disk_iops", "disk requests")?,
        // The form asks for MiB/s.
        disk_bps: f.num::<u64>("disk_mibps", "disk rate")?.map(|m| m << 20),
        net_mbps: f.num("net_mbps", "network rate")?,
    })
}

pub async fn act(Path(action): Path<String>, f: Form<Fields>) -> Response {
    let Form {
        session: s,
        data: f,
    } = f;
    let api = &s.api;
    const USERS: &str = "/admin/users";
    const GROUPS: &str = "/admin/groups";
    match action.as_str() {
        "create-user" => {
            let req = CreateUserRequest {
                name: f.get("name").into(),
                password: Some(f.raw("password").to_string()).filter(|p| !p.is_empty()),
                admin: f.on("admin"),
            };
            let r = api.post::<_, User>("/api/v1/users", &req).await;
            done(USERS, r, |u| {
                format!(
                    "User {} is made{}.",
                    u.name,
                    if u.admin { ", an admin" } else { "" }
                )
            })
        }
        "delete-user" => {
            let name = f.get("name");
            let r = api
                .delete::<Value>(&format!("/api/v1/users/{}", seg(name)))
                .await;
            done(USERS, r, |_| format!("User {name} is deleted."))
        }
        "set-password" => {
            let name = f.get("name");
            let req = PasswordRequest {
                password: f.raw("password").into(),
                current_password: None,
            };
            let path = format!("/api/v1/users/{}/password", seg(name));
            let r = api.post::<_, Value>(&path, &req).await;
            done(USERS, r, |_| format!("{name} has a new password."))
        }
        "create-group" => {
            let req = CreateGroupRequest {
                name: f.get("name").into(),
            };
            let r = api.post::<_, Group>("/api/v1/groups", &req).await;
            done(GROUPS, r, |g| format!("Group {} is made.", g.name))
        }
        "delete-group" => {
            let name = f.get("name");
            let r = api
                .delete::<Value>(&format!("/api/v1/groups/{}", seg(name)))
                .await;
            done(GROUPS, r, |_| format!("Group {name} is deleted."))
        }
        "add-member" | "remove-member" => {
            let (group, user) = (f.get("group"), f.get("user"));
            let req = MemberRequest { user: user.into() };
            let adding = action == "add-member";
            let path = format!(
                "/api/v1/groups/{}/members{}",
                seg(group),
                if adding { "" } else { "/remove" }
            );
            let r = api.post::<_, Value>(&path, &req).await;
            done(GROUPS, r, |_| {
                if adding {
                    format!("{user} is in {group} now.")
                } else {
                    format!("{user} is no longer in {group}.")
                }
            })
        }
        "set-quota" => {
            let owner = f.get("owner");
            let here = format!("/admin/quotas{}", query(&[("owner", Some(owner))]));
            let limits = match limits_from(&f) {
                Ok(l) => l,
                Err(why) => return refused(&here, why),
            };
            let path = format!("/api/v1/quotas/{}", seg(owner));
            match api.put::<_, Quota>(&path, &limits).await {
                Ok(q) => back(
                    &here,
                    Flash::ok(format!("The quota of {} is saved.", q.owner)),
                ),
                Err(e) => back_err(&here, &e),
            }
        }
        "set-default-limits" => {
            let owner = f.get("owner");
            let here = format!("/admin/quotas{}", query(&[("owner", Some(owner))]));
            let limits = match resource_limits_from(&f) {
                Ok(l) => l,
                Err(why) => return refused(&here, why),
            };
            let path = format!("/api/v1/default-limits/{}", seg(owner));
            match api.put::<_, DefaultLimits>(&path, &limits).await {
                Ok(d) => {
                    let mut said = format!("The default limits of {} are saved.", d.owner);
                    if !d.applied_to.is_empty() {
                        said += &format!(" Given at once to {}.", d.applied_to.join(", "));
                    }
                    if !d.not_applied.is_empty() {
                        said += &format!(
                            " Not given yet (they get them at their next start): {}.",
                            d.not_applied.join("; ")
                        );
                    }
                    back(&here, Flash::ok(said))
                }
                Err(e) => back_err(&here, &e),
            }
        }
        other => refused(USERS, format!("{other:?} is not something this page does")),
    }
}
