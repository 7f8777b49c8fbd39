//! A VM's page: overview, actions, consoles, snapshots, backups, disks, NICs, port forwards,
//! sharing, its operations and audit rows; and every action on it, each one API call.

use super::{mib, page, when, Layout};
use crate::api::{seg, ApiResult};
use crate::session::{back, back_err, Flash, Form, Session};
use askama::Template;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;
use hostel_api::public::*;
use hostel_model::{Op, VmState};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Template)]
#[template(path = "vm.html")]
struct VmPage {
    layout: Layout,
    vm: Vm,
    snapshots: Vec<Snapshot>,
    backups: Vec<Backup>,
    targets: Vec<String>,
    forwards: Vec<PortForward>,
    audit: Vec<AuditEntry>,
    operations: Vec<Operation>,
    networks: Vec<String>,
    images: Vec<String>,
    groups: Vec<String>,
    save_dir: String,
    graphs: Option<super::graphs::Graphs>,
}

impl VmPage {
    /// Whether the VM's state allows an operation now (the API says so too, and why).
    pub fn can(&self, op: &str) -> bool {
        let op = match op {
            "start" => Op::Start,
            "shutdown" => Op::Shutdown,
            "destroy" => Op::Destroy,
            "reboot" => Op::Reboot,
            "pause" => Op::Pause,
            "unpause" => Op::Unpause,
            "save" => Op::Save,
            "restore" => Op::Restore,
            "delete" => Op::Delete,
            _ => return true,
        };
        op.check(self.vm.state).is_ok()
    }
    pub fn state(&self) -> &'static str {
        self.vm.state.as_str()
    }
    /// The limits it is held to, each marked where it comes from an owner's default.
    pub fn limits_held(&self) -> String {
        limits_text(&self.vm.limits_in_force, &self.vm.limits)
    }
    pub fn running(&self) -> bool {
        matches!(self.vm.state, VmState::Running | VmState::Paused)
    }
    pub fn memory(&self) -> String {
        mib(&self.vm.memory.current_mib)
    }
    pub fn max_memory(&self) -> String {
        mib(&self.vm.memory.max_mib)
    }
    pub fn lease(&self) -> String {
        self.vm
            .lease_expires_at
            .as_deref()
            .map(when)
            .unwrap_or_else(|| "none".into())
    }
    pub fn created(&self) -> String {
        when(&self.vm.created_at)
    }
    pub fn at(&self, t: &str) -> String {
        when(t)
    }
    pub fn bytes(&self, b: &u64) -> String {
        super::admin::bytes(*b)
    }
    pub fn params(&self, e: &AuditEntry) -> String {
        e.params.as_ref().map(|p| p.to_string()).unwrap_or_default()
    }
    pub fn size(&self, m: &u64) -> String {
        mib(m)
    }
}

pub async fn show(s: Session, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let api = &s.api;
    let n = seg(&name);
    let vm: Vm = match api.get(&format!("/api/v1/vms/{n}")).await {
        Ok(v) => v,
        Err(e) => return super::error_page(&e),
    };
    let snapshots = api
        .get(&format!("/api/v1/vms/{n}/snapshots"))
        .await
        .unwrap_or_default();
    let backups = api
        .get(&format!("/api/v1/backups?vm={n}"))
        .await
        .unwrap_or_default();
    let targets = api
        .get::<Vec<BackupTarget>>("/api/v1/backup-targets")
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.name)
        .collect();
    let forwards = api
        .get(&format!("/api/v1/vms/{n}/port-forwards"))
        .await
        .unwrap_or_default();
    let mut audit: Vec<AuditEntry> = api
        .get(&format!("/api/v1/audit?vm={n}"))
        .await
        .unwrap_or_default();
    audit.reverse();
    audit.truncate(100);
    let operations = api
        .get::<OperationList>(&format!("/api/v1/operations?vm={n}&limit=20"))
        .await
        .map(|l| l.operations)
        .unwrap_or_default();
    let networks = api
        .get::<Vec<Network>>("/api/v1/networks")
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|n| n.name)
        .collect();
    let images = api
        .get::<Vec<Image>>("/api/v1/images")
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.kind == hostel_model::ImageKind::Disk)
        .map(|i| i.name)
        .collect();
    let groups = if s.me.admin {
        api.get::<Vec<Group>>("/api/v1/groups")
            .await
            .map(|g| g.into_iter().map(|g| g.name).collect())
            .unwrap_or_else(|_| s.me.groups.clone())
    } else {
        s.me.groups.clone()
    };
    let layout = Layout::new(&s, &headers, format!("VM {}", vm.name), "vms");
    let data_dir = api
        .get::<Info>("/api/v1/info")
        .await
        .map(|i| i.data_dir)
        .unwrap_or_default();
    let save_dir = format!("{data_dir}/saves/{}", s.me.user);
    let graphs = super::graphs::Graphs::load(api, &vm.name, false).await;
    let p = VmPage {
        graphs,
        vm,
        snapshots,
        backups,
        targets,
        forwards,
        audit,
        operations,
        networks,
        images,
        groups,
        save_dir,
        layout,
    };
    page(&p.layout, &p)
}

/// Every field any action's form has; each action reads its own.
#[derive(Deserialize, Default)]
pub struct ActionForm {
    #[serde(default)]
    memory_mib: String,
    #[serde(default)]
    vcpus: String,
    #[serde(default)]
    cpu_model: String,
    #[serde(default)]
    cpu_weight: String,
    #[serde(default)]
    cpu_max_percent: String,
    #[serde(default)]
    disk_iops: String,
    #[serde(default)]
    disk_mibps: String,
    #[serde(default)]
    net_mbps: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    days: String,
    #[serde(default)]
    snapshot: String,
    #[serde(default)]
    with_memory: Option<String>,
    #[serde(default)]
    disk: String,
    #[serde(default)]
    size_mib: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    nic: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    host_port: String,
    #[serde(default)]
    guest_port: String,
    #[serde(default)]
    proto: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    admin_group: String,
    /// The administrator group the page showed: sent on only when changed.
    #[serde(default)]
    admin_group_was: String,
    #[serde(default)]
    force: Option<String>,
    /// A migration's target host (empty: placement's choice).
    #[serde(default)]
    to: String,
    #[serde(default)]
    max_downtime: String,
    #[serde(default)]
    force_complete: Option<String>,
    #[serde(default)]
    unencrypted: Option<String>,
    #[serde(default)]
    no_postcopy: Option<String>,
    /// A backup's target, name, the new VM a restore makes, and its checkboxes.
    #[serde(default)]
    target: String,
    #[serde(default)]
    full: Option<String>,
    #[serde(default)]
    backup: String,
    #[serde(default)]
    as_name: String,
    #[serde(default)]
    start: Option<String>,
}

fn num<T: std::str::FromStr>(what: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{what}: {:?} is not a whole number", v.trim()))
}

fn opt_num<T: std::str::FromStr>(what: &str, v: &str) -> Result<Option<T>, String> {
    if v.trim().is_empty() {
        Ok(None)
    } else {
        num(what, v).map(Some)
    }
}

/// What an action asks of the API: the method's path under the VM and its body.
enum Call {
    Post(&'static str, Value),
    /// A PUT under the VM's route (its limits, all at once).
    Put(&'static str, Value),
    /// A route not under the VM's own (restore names the save file, not the VM).
    Top(String, Value),
    /// A DELETE of a route not under the VM's own (one of its backups).
    DeleteTop(String),
    Delete,
}

fn call_for(action: &str, f: &ActionForm) -> Result<(Call, String), String> {
    let empty = json!({});
    Ok(match action {
        "start" => (Call::Post("start", empty), "is starting".into()),
        "shutdown" => (
            Call::Post(
                "shutdown",
                json!({"timeout_secs": 60, "force": f.force.is_some()}),
            ),
            "has shut down".into(),
        ),
        "destroy" => (
            Call::Post("destroy", empty),
            "was stopped (powered off)".into(),
        ),
        "reboot" => (Call::Post("reboot", empty), "is rebooting".into()),
        "pause" => (Call::Post("pause", empty), "is paused".into()),
        "unpause" => (Call::Post("unpause", empty), "runs again".into()),
        "save" => (
            Call::Post("save", json!({"path": f.path.trim()})),
            "was saved".into(),
        ),
        "restore" => (
            Call::Top("/api/v1/restore".into(), json!({"path": f.path.trim()})),
            "was restored and runs".into(),
        ),
        "memory" => {
            let m: u64 = num("memory", &f.memory_mib)?;
            (
                Call::Post("memory", json!({"memory_mib": m})),
                format!("now has {} of memory", mib(&m)),
            )
        }
        "vcpus" => {
            let v: u32 = num("vCPUs", &f.vcpus)?;
            (
                Call::Post("vcpus", json!({"vcpus": v})),
                format!("now has {v} vCPUs"),
            )
        }
        "limits" => {
            let l = hostel_api::public::Limits {
                cpu_weight: opt_num("CPU weight", &f.cpu_weight)?,
                cpu_max_percent: opt_num("CPU cap", &f.cpu_max_percent)?,
                disk_iops: opt_num("disk requests", &f.disk_iops)?,
                // The form asks for MiB/s.
                disk_bps: opt_num::<u64>("disk rate", &f.disk_mibps)?.map(|m| m << 20),
                net_mbps: opt_num("network rate", &f.net_mbps)?,
            };
            let done = if l.is_empty() {
                "has no limits".to_string()
            } else {
                "has its new limits".to_string()
            };
            (Call::Put("limits", json!(l)), done)
        }
        "cpu-model" => (
            Call::Post("cpu-model", json!({"cpu_model": f.cpu_model.trim()})),
            format!("gets CPU model {} from its next start", f.cpu_model.trim()),
        ),
        "renew" => {
            let d: Option<u32> = opt_num("days", &f.days)?;
            (
                Call::Post("renew", json!({"days": d})),
                "has its lease renewed".into(),
            )
        }
        "snapshot" => {
            let name = Some(f.snapshot.trim()).filter(|n| !n.is_empty());
            (
                Call::Post(
                    "snapshots",
                    json!({"name": name, "memory": f.with_memory.is_some()}),
                ),
                "has a new snapshot".into(),
            )
        }
        "revert" => (
            Call::Post("snapshots/revert", json!({"name": f.snapshot})),
            format!("is back at snapshot {}", f.snapshot),
        ),
        "delete-snapshot" => (
            Call::Post("snapshots/delete", json!({"name": f.snapshot})),
            format!("no longer has snapshot {}", f.snapshot),
        ),
        "add-disk" => {
            let size: Option<u64> = opt_num("size", &f.size_mib)?;
            let image = Some(f.image.as_str()).filter(|i| !i.is_empty());
            (
                Call::Post("disks", json!({"size_mib": size, "image": image})),
                "has a new disk".into(),
            )
        }
        "resize-disk" => {
            let disk: u32 = num("disk", &f.disk)?;
            let size: u64 = num("size", &f.size_mib)?;
            (
                Call::Post("disks/resize", json!({"disk": disk, "size_mib": size})),
                format!("has disk {disk} at {}", mib(&size)),
            )
        }
        "remove-disk" => {
            let disk: u32 = num("disk", &f.disk)?;
            (
                Call::Post("disks/remove", json!({"disk": disk})),
                format!("no longer has disk {disk}"),
            )
        }
        "add-nic" => (
            Call::Post("nics", json!({"network": f.network})),
            format!("has a new NIC on {}", f.network),
        ),
        "remove-nic" => (
            Call::Post("nics/remove", json!({"nic": f.nic})),
            "lost a NIC".into(),
        ),
        "add-forward" => {
            let host: u16 = num("host port", &f.host_port)?;
            let guest: u16 = num("guest port", &f.guest_port)?;
            let proto = if f.proto.is_empty() {
                "tcp"
            } else {
                f.proto.as_str()
            };
            (
                Call::Post(
                    "port-forwards",
                    json!({"host_port": host, "guest_port": guest, "proto": proto}),
                ),
                format!("is reached on host port {host}/{proto}"),
            )
        }
        "remove-forward" => {
            let host: u16 = num("host port", &f.host_port)?;
            let proto = if f.proto.is_empty() {
                "tcp"
            } else {
                f.proto.as_str()
            };
            (
                Call::Post(
                    "port-forwards/remove",
                    json!({"host_port": host, "proto": proto}),
                ),
                format!("no longer has host port {host}/{proto}"),
            )
        }
        "share" => (
            Call::Post(
                "owner",
                json!({
                    "owner": f.owner,
                    "admin_group": (f.admin_group != f.admin_group_was).then_some(&f.admin_group),
                }),
            ),
            "has its sharing changed".into(),
        ),
        "migrate" | "move-offline" => {
            let to = Some(f.to.trim()).filter(|t| !t.is_empty());
            let downtime: Option<u64> = opt_num("downtime", &f.max_downtime)?;
            (
                Call::Post(
                    "migrate",
                    json!({"to": to, "max_downtime_ms": downtime,
                        "force_complete": f.force_complete.is_some(),
                        "unencrypted": f.unencrypted.is_some(),
                        "no_postcopy": f.no_postcopy.is_some(),
                        "offline": action == "move-offline"}),
                ),
                "is moving to another host".into(),
            )
        }
        "backup" => {
            let target = Some(f.target.trim()).filter(|t| !t.is_empty());
            (
                Call::Post(
                    "backups",
                    json!({"target": target, "full": f.full.is_some()}),
                ),
                "is being backed up".into(),
            )
        }
        "restore-backup" => {
            let as_name = Some(f.as_name.trim()).filter(|n| !n.is_empty());
            (
                Call::Top(
                    format!("/api/v1/backups/{}/restore", seg(&f.backup)),
                    json!({"as_name": as_name, "start": f.start.is_some()}),
                ),
                match as_name {
                    Some(n) => format!("is being restored from {} as {n}", f.backup),
                    None => format!("is being restored from {}", f.backup),
                },
            )
        }
        "delete-backup" => (
            Call::DeleteTop(format!("/api/v1/backups/{}", seg(&f.backup))),
            format!("no longer has backup {}", f.backup),
        ),
        "delete" => (Call::Delete, "was deleted".into()),
        other => return Err(format!("{other:?} is not something a VM's page does")),
    })
}

/// One action on a VM, through the API; back to the VM's page (the list after a
/// delete) with what happened.
pub async fn act(Path((name, action)): Path<(String, String)>, f: Form<ActionForm>) -> Response {
    let Form { session: s, data } = f;
    let page_path = format!("/vms/{}", seg(&name));
    let (call, done) = match call_for(&action, &data) {
        Ok(c) => c,
        Err(why) => return back(&page_path, Flash::err(why)),
    };
    let base = format!("/api/v1/vms/{}", seg(&name));
    let result: ApiResult<Value> = match &call {
        Call::Post(sub, body) => s.api.post(&format!("{base}/{sub}"), body).await,
        Call::Put(sub, body) => s.api.put(&format!("{base}/{sub}"), body).await,
        Call::Top(path, body) => s.api.post(path, body).await,
        Call::DeleteTop(path) => s.api.delete(path).await,
        Call::Delete => s.api.delete(&base).await,
    };
    match (result, call) {
        (Ok(_), Call::Delete) => back("/vms", Flash::ok(format!("{name} {done}."))),
        // A migration, a backup and a restore are tasks: their page follows them.
        (Ok(t), _)
            if ["migrate", "move-offline", "backup", "restore-backup"]
                .contains(&action.as_str()) =>
        {
            back(
                &format!("/admin/tasks/{}", seg(t["id"].as_str().unwrap_or_default())),
                Flash::ok(format!("{name} {done}.")),
            )
        }
        (Ok(_), _) => back(&page_path, Flash::ok(format!("{name} {done}."))),
        (Err(e), _) => back_err(&page_path, &e),
    }
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage {
    layout: Layout,
    vm: String,
    kind: &'static str,
}

fn console_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "serial" => Some("serial"),
        "vga" => Some("vga"),
        _ => None,
    }
}

/// A console's page. It attaches nothing by itself (a link from another site must not
/// open a console): its script asks for a ticket with the page's CSRF token
/// ([`console_ticket`]), then opens the websocket.
pub async fn console(
    s: Session,
    headers: HeaderMap,
    Path((name, kind)): Path<(String, String)>,
) -> Response {
    let Some(kind) = console_kind(&kind) else {
        return super::refusal(
            axum::http::StatusCode::NOT_FOUND,
            "a VM has a serial and a VGA console",
        );
    };
    // The VM must be one the user may operate (else the same 404 as any missing VM).
    if let Err(e) = s
        .api
        .get::<Value>(&format!("/api/v1/vms/{}", seg(&name)))
        .await
    {
        return super::error_page(&e);
    }
    let title = format!(
        "{} console of {name}",
        if kind == "vga" { "VGA" } else { "Serial" }
    );
    let layout = Layout::new(&s, &headers, title, "vms");
    let p = ConsolePage {
        vm: name,
        kind,
        layout,
    };
    super::render(
        axum::http::StatusCode::OK,
        &p.layout,
        &p,
        super::CONSOLE_CSP,
    )
}

/// A single-use console ticket for the page's script (a CSRF-checked POST): the API's
/// answer as JSON, or its error with its status.
pub async fn console_ticket(
    Path((name, kind)): Path<(String, String)>,
    f: Form<serde::de::IgnoredAny>,
) -> Response {
    use axum::response::IntoResponse;
    let Some(kind) = console_kind(&kind) else {
        return (axum::http::StatusCode::NOT_FOUND, "no such console").into_response();
    };
    let path = format!("/api/v1/vms/{}/console/ticket", seg(&name));
    match f
        .session
        .api
        .post::<_, ConsoleTicket>(&path, &json!({"console": kind}))
        .await
    {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => (e.status, axum::Json(e.body)).into_response(),
    }
}

/// Limits in force as one line ("none" if none), each not in `own` marked "(default)".
pub fn limits_text(l: &hostel_api::public::Limits, own: &hostel_api::public::Limits) -> String {
    let mut parts = Vec::new();
    let mut add = |v: Option<String>, here: bool| {
        if let Some(v) = v {
            parts.push(if here { v } else { format!("{v} (default)") });
        }
    };
    add(
        l.cpu_weight.map(|w| format!("CPU weight {w}")),
        own.cpu_weight.is_some(),
    );
    add(
        l.cpu_max_percent
            .map(|p| format!("CPU cap {p}% of one CPU")),
        own.cpu_max_percent.is_some(),
    );
    add(
        l.disk_iops.map(|n| format!("{n} disk requests/s")),
        own.disk_iops.is_some(),
    );
    add(
        l.disk_bps
            .map(|b| format!("disk {} MiB/s", b as f64 / 1048576.0)),
        own.disk_bps.is_some(),
    );
    add(
        l.net_mbps.map(|m| format!("network {m} Mbit/s")),
        own.net_mbps.is_some(),
    );
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}
