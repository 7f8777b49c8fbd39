//! The create form: what the quota leaves for each limit, choices that do not fit
//! disabled with the reason, the API's errors beside their fields, and the equivalent
//! `hostel create` command line.

use super::{mib, Layout};
use crate::api::{query, Api};
use crate::session::{back, Flash, Form, Session};
use askama::Template;
use axum::http::HeaderMap;
use axum::response::Response;
use hostel_api::public::{CreateVmRequest, Image, Network, NicRequest, Quota, SshKey, Vm};
use hostel_model::ImageKind;
use serde::Deserialize;

/// The form's fields, as typed (text), so that a refused form comes back as it was.
#[derive(Deserialize, Default, Clone)]
pub struct CreateForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub memory_mib: String,
    #[serde(default)]
    pub vcpus: String,
    #[serde(default)]
    pub disk_mib: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub owner: String,
    /// Names of the user's SSH keys to put in the guest.
    #[serde(default)]
    pub key: Vec<String>,
    /// Further keys, one per line.
    #[serde(default)]
    pub ssh_keys: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub lease_days: String,
    /// Host tags the VM's host must have, comma-separated.
    #[serde(default)]
    pub host_tags: String,
    #[serde(default)]
    pub anti_affinity: String,
    #[serde(default)]
    pub cpu_model: String,
    #[serde(default)]
    pub start: Option<String>,
}

/// One limit of the owner's quota, as the form shows it.
pub struct Limit {
    pub what: &'static str,
    pub left: Option<u64>,
    pub total: Option<u64>,
    pub unit: &'static str,
}

impl Limit {
    pub fn text(&self) -> String {
        let show = |v: u64| {
            if self.unit == "MiB" {
                mib(&v)
            } else {
                v.to_string()
            }
        };
        match (self.left, self.total) {
            (Some(l), Some(t)) => format!("{} of {} {} left", show(l), show(t), self.what),
            _ => format!("no limit on {}", self.what),
        }
    }
}

pub struct Choice {
    pub value: String,
    pub label: String,
    /// Why it cannot be chosen, if it cannot.
    pub disabled: Option<String>,
}

#[derive(Template)]
#[template(path = "create.html")]
struct CreatePage {
    layout: Layout,
    f: CreateForm,
    images: Vec<Choice>,
    networks: Vec<Choice>,
    owners: Vec<Choice>,
    keys: Vec<SshKey>,
    limits: Vec<Limit>,
    memory_left: Option<u64>,
    vcpus_left: Option<u64>,
    disk_left: Option<u64>,
    /// The field the API refused, and why; or a refusal of the whole form.
    error_field: String,
    error: Option<String>,
    cli: String,
}

impl CreatePage {
    pub fn err_for(&self, field: &str) -> Option<&str> {
        (self.error_field == field)
            .then_some(self.error.as_deref())
            .flatten()
    }
    pub fn general_error(&self) -> Option<&str> {
        const FIELDS: &[&str] = &[
            "name",
            "image",
            "memory_mib",
            "vcpus",
            "disk_mib",
            "network",
            "owner",
            "ssh_keys",
            "password",
            "lease_days",
            "anti_affinity",
            "cpu_model",
        ];
        if FIELDS.contains(&self.error_field.as_str()) {
            None
        } else {
            self.error.as_deref()
        }
    }
    pub fn checked(&self, key: &str) -> bool {
        self.f.key.iter().any(|k| k == key)
    }
}

pub async fn form(s: Session, headers: HeaderMap) -> Response {
    let f = CreateForm {
        memory_mib: "512".into(),
        vcpus: "1".into(),
        start: Some("on".into()),
        ..CreateForm::default()
    };
    let layout = Layout::new(&s, &headers, "Create a VM", "create");
    render(&s, layout, f, None).await
}

async fn render(
    s: &Session,
    layout: Layout,
    mut f: CreateForm,
    error: Option<(String, String)>,
) -> Response {
    let api = &s.api;
    let images: Vec<Image> = api.get("/api/v1/images").await.unwrap_or_default();
    let networks: Vec<Network> = api.get("/api/v1/networks").await.unwrap_or_default();
    let keys: Vec<SshKey> = api.get("/api/v1/me/keys").await.unwrap_or_default();
    let owner = if f.owner.is_empty() {
        None
    } else {
        Some(f.owner.clone())
    };
    let quota = quota_of(api, owner.as_deref()).await;
    let (limits, memory_left, vcpus_left, disk_left) = limits_of(quota.as_ref());
    if f.image.is_empty() {
        f.image = images
            .iter()
            .find(|i| i.name == "tiny")
            .or(images.first())
            .map(|i| i.name.clone())
            .unwrap_or_default();
    }
    if f.network.is_empty() {
        f.network = networks
            .iter()
            .find(|n| n.name == "default")
            .or(networks.first())
            .map(|n| n.name.clone())
            .unwrap_or_default();
    }
    let images = images
        .iter()
        .map(|i| Choice {
            value: i.name.clone(),
            label: format!("{} ({}, {})", i.name, i.kind.as_str(), size(i.size_bytes)),
            disabled: match disk_left {
                Some(left)
                    if i.kind == ImageKind::Disk && i.size_bytes.div_ceil(1 << 20) > left =>
                {
                    Some(format!(
                        "needs {} of disk; your quota has {} left",
                        size(i.size_bytes),
                        mib(&left)
                    ))
                }
                _ => None,
            },
        })
        .collect();
    let nets = networks
        .iter()
        .map(|n| Choice {
            value: n.name.clone(),
            label: format!("{} ({}, {})", n.name, n.cidr, n.mode.as_str()),
            disabled: None,
        })
        .collect();
    let mut owners = vec![Choice {
        value: String::new(),
        label: format!("me ({})", s.me.user),
        disabled: None,
    }];
    owners.extend(s.me.groups.iter().map(|g| Choice {
        value: format!("group:{g}"),
        label: format!("group {g}"),
        disabled: None,
    }));
    let (error_field, error) = match error {
        Some((f, m)) => (f, Some(m)),
        None => (String::new(), None),
    };
    let cli = cli_line(&f, &keys);
    let p = CreatePage {
        images,
        networks: nets,
        owners,
        keys,
        limits,
        memory_left,
        vcpus_left,
        disk_left,
        error_field,
        error,
        cli,
        f,
        layout,
    };
    let status = if p.error.is_some() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        axum::http::StatusCode::OK
    };
    super::render(status, &p.layout, &p, super::CSP)
}

fn size(bytes: u64) -> String {
    mib(&bytes.div_ceil(1 << 20))
}

async fn quota_of(api: &Api, owner: Option<&str>) -> Option<Quota> {
    let path = format!("/api/v1/quotas{}", query(&[("owner", owner)]));
    api.get(&path).await.ok()
}

type Limits = (Vec<Limit>, Option<u64>, Option<u64>, Option<u64>);

/// What each limit leaves (none: no limit, or the owner is exempt).
fn limits_of(q: Option<&Quota>) -> Limits {
    let Some(q) = q.filter(|q| !q.exempt) else {
        return (Vec::new(), None, None, None);
    };
    let l = &q.limits;
    let u = &q.used;
    let left = |limit: Option<u64>, used: u64| limit.map(|t| t.saturating_sub(used));
    let memory_left = match (left(l.ram_total_mib, u.ram_mib), l.ram_per_vm_mib) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let disk_left = match (left(l.disk_total_mib, u.disk_mib), l.disk_per_vm_mib) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let vcpus_left = left(l.vcpus_total, u.vcpus);
    let limits = vec![
        Limit {
            what: "memory",
            left: left(l.ram_total_mib, u.ram_mib),
            total: l.ram_total_mib,
            unit: "MiB",
        },
        Limit {
            what: "vCPUs",
            left: vcpus_left,
            total: l.vcpus_total,
            unit: "",
        },
        Limit {
            what: "disk",
            left: left(l.disk_total_mib, u.disk_mib),
            total: l.disk_total_mib,
            unit: "MiB",
        },
        Limit {
            what: "VMs",
            left: left(l.vms_total, u.vms),
            total: l.vms_total,
            unit: "",
        },
        Limit {
            what: "running VMs",
            left: left(l.vms_running, u.vms_running),
            total: l.vms_running,
            unit: "",
        },
    ];
    (limits, memory_left, vcpus_left, disk_left)
}

/// The `hostel create` command line that asks for what the form asks for.
fn cli_line(f: &CreateForm, keys: &[SshKey]) -> String {
    let mut parts = vec![
        "hostel create".to_string(),
        shell(if f.name.is_empty() { "NAME" } else { &f.name }),
    ];
    let mut opt = |flag: &str, v: &str| {
        if !v.trim().is_empty() {
            parts.push(format!("--{flag} {}", shell(v.trim())));
        }
    };
    opt("image", &f.image);
    opt("memory", &f.memory_mib);
    opt("vcpus", &f.vcpus);
    opt("disk", &f.disk_mib);
    opt("network", &f.network);
    opt("owner", &f.owner);
    opt("lease-days", &f.lease_days);
    for t in f
        .host_tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        opt("host-tag", t);
    }
    opt("anti-affinity", &f.anti_affinity);
    opt("cpu-model", &f.cpu_model);
    for k in keys.iter().filter(|k| f.key.contains(&k.name)) {
        opt("ssh-key", &k.public_key);
    }
    for line in f.ssh_keys.lines() {
        opt("ssh-key", line);
    }
    if !f.password.is_empty() {
        parts.push("--password-file FILE".into());
    }
    if f.start.is_none() {
        parts.push("--no-start".into());
    }
    parts.join(" ")
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@=+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A number field: empty is "not given"; anything else must be a whole number.
fn number<T: std::str::FromStr>(field: &str, v: &str) -> Result<Option<T>, (String, String)> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| (field.to_string(), format!("{v:?} is not a whole number")))
}

fn request(f: &CreateForm, keys: &[SshKey]) -> Result<CreateVmRequest, (String, String)> {
    let mut ssh_keys: Vec<String> = keys
        .iter()
        .filter(|k| f.key.contains(&k.name))
        .map(|k| k.public_key.clone())
        .collect();
    ssh_keys.extend(
        f.ssh_keys
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from),
    );
    let mut req: CreateVmRequest =
        serde_json::from_value(serde_json::json!({"name": f.name.trim()}))
            .expect("a create request from its name");
    req.image = Some(f.image.clone()).filter(|i| !i.is_empty());
    if let Some(m) = number("memory_mib", &f.memory_mib)? {
        req.memory_mib = m;
    }
    if let Some(v) = number("vcpus", &f.vcpus)? {
        req.vcpus = v;
    }
    req.disk_mib = number("disk_mib", &f.disk_mib)?;
    req.lease_days = number("lease_days", &f.lease_days)?;
    req.nics = (!f.network.is_empty()).then(|| {
        vec![NicRequest {
            network: f.network.clone(),
            ip: None,
            mac: None,
        }]
    });
    req.ssh_keys = ssh_keys;
    req.password = Some(f.password.clone()).filter(|p| !p.is_empty());
    req.owner = Some(f.owner.clone()).filter(|o| !o.is_empty());
    req.host_tags = f
        .host_tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    req.anti_affinity = Some(f.anti_affinity.trim().to_string()).filter(|g| !g.is_empty());
    req.cpu_model = Some(f.cpu_model.trim().to_string()).filter(|m| !m.is_empty());
    req.start = f.start.is_some();
    Ok(req)
}

pub async fn submit(headers: HeaderMap, f: Form<CreateForm>) -> Response {
    let Form { session: s, data } = f;
    let keys: Vec<SshKey> = s.api.get("/api/v1/me/keys").await.unwrap_or_default();
    let layout = Layout::new(&s, &headers, "Create a VM", "create");
    let req = match request(&data, &keys) {
        Ok(r) => r,
        Err(e) => return render(&s, layout, data, Some(e)).await,
    };
    match s.api.post::<_, Vm>("/api/v1/vms", &req).await {
        Ok(vm) => back(
            &format!("/vms/{}", crate::api::seg(&vm.name)),
            Flash::ok(format!(
                "{} is created{}.",
                vm.name,
                if req.start { " and starting" } else { "" }
            )),
        ),
        Err(e) => {
            let field = e.body.field.clone().unwrap_or_default();
            let field = match field.as_str() {
                "nics" => "network".to_string(),
                "max_memory_mib" => "memory_mib".to_string(),
                _ => field,
            };
            render(&s, layout, data, Some((field, e.body.message))).await
        }
    }
}

/// The form as it would be with these values: the quota of the chosen owner and the
/// command line (the page's script swaps in its side panel as the user types).
pub async fn preview(headers: HeaderMap, f: Form<CreateForm>) -> Response {
    let Form { session: s, data } = f;
    let layout = Layout::new(&s, &headers, "Create a VM", "create");
    render(&s, layout, data, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_placement_and_cpu_fields_reach_the_request_and_the_command_line() {
        let f = CreateForm {
            name: "web".into(),
            image: "tiny".into(),
            anti_affinity: " front ".into(),
            cpu_model: " Westmere-v1 ".into(),
            ..Default::default()
        };
        let req = request(&f, &[]).unwrap();
        assert_eq!(req.cpu_model.as_deref(), Some("Westmere-v1"));
        assert_eq!(req.anti_affinity.as_deref(), Some("front"));
        let line = cli_line(&f, &[]);
        assert!(
            line.contains("--cpu-model Westmere-v1") && line.contains("--anti-affinity front"),
            "{line}"
        );
        let empty = request(&CreateForm::default(), &[]).unwrap();
        assert_eq!(empty.cpu_model, None, "empty: the cluster's default");
    }
}
