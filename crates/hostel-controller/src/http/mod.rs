//! The public REST API (`/api/v1`): a thin adapter over the controller's operations.
//! Each handler turns a request into an operation's arguments and its answer into JSON;
//! the middleware here turns the bearer token into the operation's context and writes
//! the audit trail. Domain errors become statuses in one place, `error.rs`.

mod accounts;
mod admin;
mod audit;
mod backups;
mod consoles;
mod devices;
mod error;
mod extract;
mod openapi_errors;
mod vms;

use crate::context::Ctx;
use crate::error::Error;
use crate::throttle::{Admission, Requester};
use crate::Controller;
use accounts::*;
use admin::*;
use audit::*;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use backups::*;
use consoles::*;
use devices::*;
use hostel_api::ErrorBody;
use openapi_errors::StandardErrors;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::OpenApi;
use vms::*;

pub use error::ErrorMessage;

type S = State<Arc<Controller>>;
/// The context of the operation a request asks for, made by [`auth`].
type X = Extension<Arc<Ctx>>;
type R<T> = Result<Json<T>, Error>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Hostel API", description = "Self-service virtual machine hosting."),
    paths(
        info, metrics, list_vms, create_vm, get_vm, vm_stats, usage, delete_vm, start_vm, reboot_vm, pause_vm,
        unpause_vm, destroy_vm, shutdown_vm, mem_set, vcpu_set, save_vm, restore_vm,
        console, console_log, console_ticket, dmesg, list_images, build_image, import_image, import_xen, delete_image,
        list_backup_targets, create_backup_target, delete_backup_target, create_backup, list_backups,
        get_backup, delete_backup, restore_backup, get_backup_schedule, set_backup_schedule,
        delete_backup_schedule, run_backup_schedule, push_image, migrate_vm, get_task, cancel_task,
        list_networks, create_network, get_network, update_network, delete_network, list_nics, add_nic,
        remove_nic, list_forwards, add_forward, remove_forward, list_disks, add_disk,
        remove_disk, resize_disk, list_snapshots, create_snapshot, revert_snapshot,
        delete_snapshot, doctor, list_pools, create_pool, get_pool, delete_pool, login, whoami,
        list_users, create_user, delete_user, user_password, my_password, list_tokens,
        create_token, revoke_token, list_keys, add_key, remove_key, list_groups, create_group,
        delete_group, add_member, remove_member, set_owner, audit, operations, audit_retention,
        set_audit_retention, prune_audit, show_quota, set_quota, list_default_limits,
        show_default_limits, set_default_limits,
        renew_vm, set_cpu_model, set_limits, export_vm, import_vm, list_hosts, add_host, set_host, drain_host, undrain_host, rebalance, remove_host, events
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth, &StandardErrors),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, as served at `/api/openapi.json` and checked into the repo.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

pub fn router(c: Arc<Controller>) -> Router {
    let api = Router::new()
        .route("/api/v1/info", get(info))
        .route("/api/v1/hosts", get(list_hosts).post(add_host))
        .route("/api/v1/hosts/{name}", delete(remove_host).put(set_host))
        .route("/api/v1/hosts/{name}/drain", post(drain_host))
        .route("/api/v1/hosts/{name}/undrain", post(undrain_host))
        .route("/api/v1/rebalance", post(rebalance))
        .route("/api/v1/vms", get(list_vms).post(create_vm))
        .route("/api/v1/events", get(events))
        .route("/api/v1/vms/{name}", get(get_vm).delete(delete_vm))
        .route("/api/v1/vms/{name}/stats", get(vm_stats))
        .route("/api/v1/usage", get(usage))
        .route("/metrics", get(metrics))
        .route("/api/v1/vms/{name}/start", post(start_vm))
        .route("/api/v1/vms/{name}/reboot", post(reboot_vm))
        .route("/api/v1/vms/{name}/pause", post(pause_vm))
        .route("/api/v1/vms/{name}/unpause", post(unpause_vm))
        .route("/api/v1/vms/{name}/destroy", post(destroy_vm))
        .route("/api/v1/vms/{name}/shutdown", post(shutdown_vm))
        .route("/api/v1/vms/{name}/memory", post(mem_set))
        .route("/api/v1/vms/{name}/vcpus", post(vcpu_set))
        .route("/api/v1/vms/{name}/save", post(save_vm))
        .route("/api/v1/vms/{name}/console", get(console))
        .route("/api/v1/vms/{name}/console/log", get(console_log))
        .route("/api/v1/vms/{name}/console/ticket", post(console_ticket))
        .route("/api/v1/restore", post(restore_vm))
        .route("/api/v1/dmesg", get(dmesg))
        .route("/api/v1/doctor", get(doctor))
        .route("/api/v1/images", get(list_images))
        .route("/api/v1/images/build", post(build_image))
        .route("/api/v1/images/import", post(import_image))
        .route("/api/v1/import/xen", post(import_xen))
        .route(
            "/api/v1/backup-targets",
            get(list_backup_targets).post(create_backup_target),
        )
        .route(
            "/api/v1/backup-targets/{name}",
            delete(delete_backup_target),
        )
        .route("/api/v1/vms/{name}/backups", post(create_backup))
        .route(
            "/api/v1/vms/{name}/backup-schedule",
            get(get_backup_schedule)
                .put(set_backup_schedule)
                .delete(delete_backup_schedule),
        )
        .route(
            "/api/v1/vms/{name}/backup-schedule/run",
            post(run_backup_schedule),
        )
        .route("/api/v1/backups", get(list_backups))
        .route(
            "/api/v1/backups/{name}",
            get(get_backup).delete(delete_backup),
        )
        .route("/api/v1/backups/{name}/restore", post(restore_backup))
        .route("/api/v1/images/{name}", delete(delete_image))
        .route("/api/v1/images/{name}/push", post(push_image))
        .route("/api/v1/vms/{name}/migrate", post(migrate_vm))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", delete(delete_user))
        .route("/api/v1/users/{name}/password", post(user_password))
        .route("/api/v1/me/password", post(my_password))
        .route("/api/v1/me/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/me/tokens/{name}", delete(revoke_token))
        .route("/api/v1/me/keys", get(list_keys).post(add_key))
        .route("/api/v1/me/keys/{name}", delete(remove_key))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route("/api/v1/groups/{name}", delete(delete_group))
        .route("/api/v1/groups/{name}/members", post(add_member))
        .route("/api/v1/groups/{name}/members/remove", post(remove_member))
        .route("/api/v1/vms/{name}/owner", post(set_owner))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/operations", get(operations))
        .route(
            "/api/v1/audit/retention",
            get(audit_retention).put(set_audit_retention),
        )
        .route("/api/v1/audit/prune", post(prune_audit))
        .route("/api/v1/quotas", get(show_quota))
        .route("/api/v1/quotas/{owner}", put(set_quota))
        .route("/api/v1/default-limits", get(list_default_limits))
        .route(
            "/api/v1/default-limits/{owner}",
            get(show_default_limits).put(set_default_limits),
        )
        .route("/api/v1/vms/{name}/renew", post(renew_vm))
        .route("/api/v1/vms/{name}/cpu-model", post(set_cpu_model))
        .route("/api/v1/vms/{name}/limits", put(set_limits))
        .route("/api/v1/vms/{name}/export", get(export_vm))
        .route("/api/v1/import/vm", post(import_vm))
        .route("/api/v1/pools", get(list_pools).post(create_pool))
        .route("/api/v1/pools/{name}", get(get_pool).delete(delete_pool))
        .route("/api/v1/networks", get(list_networks).post(create_network))
        .route(
            "/api/v1/networks/{name}",
            get(get_network)
                .patch(update_network)
                .delete(delete_network),
        )
        .route("/api/v1/vms/{name}/nics", get(list_nics).post(add_nic))
        .route("/api/v1/vms/{name}/disks", get(list_disks).post(add_disk))
        .route("/api/v1/vms/{name}/disks/remove", post(remove_disk))
        .route("/api/v1/vms/{name}/disks/resize", post(resize_disk))
        .route(
            "/api/v1/vms/{name}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route("/api/v1/vms/{name}/snapshots/revert", post(revert_snapshot))
        .route("/api/v1/vms/{name}/snapshots/delete", post(delete_snapshot))
        .route("/api/v1/vms/{name}/nics/remove", post(remove_nic))
        .route(
            "/api/v1/vms/{name}/port-forwards",
            get(list_forwards).post(add_forward),
        )
        .route(
            "/api/v1/vms/{name}/port-forwards/remove",
            post(remove_forward),
        )
        .route_layer(axum::middleware::from_fn_with_state(c.clone(), auth));
    Router::new()
        .route(
            "/api/openapi.json",
            get(|| async { ([("content-type", "application/json")], openapi_json()) }),
        )
        .route("/api/v1/login", post(login))
        // Browser consoles: the pages and the packages they load are public; the
        // websocket takes a ticket from the console/ticket route instead of a token.
        .route("/console/ws", get(console_ws))
        .route("/console/serial.html", get(|| page(SERIAL_PAGE)))
        .route("/console/vga.html", get(|| page(VGA_PAGE)))
        .route("/web/{*path}", get(web_asset))
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            c.clone(),
            count_request,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(to_the_end))
        .with_state(c)
}

/// Runs each request as a task of its own, to its end, whoever hangs up. hyper drops a
/// request's future when its client's connection closes: a user's Ctrl-C (or a web
/// page left) in the middle of an operation would stop it between two steps, its
/// journal entry left running and its half-made disk file left until the controller's
/// next start. (A streamed answer's body still ends with its connection.) The web UI's
/// router runs its requests so too.
pub async fn to_the_end(req: Request, next: Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `/metrics` alone, for a separate address (`hostel up --metrics-listen`): no token,
/// whoever reaches the address reads the metrics (and nothing else).
pub fn metrics_router(c: Arc<Controller>) -> Router {
    let scraper = Arc::new(Ctx::system(crate::context::SystemActor::MetricsScraper));
    Router::new()
        .route("/metrics", get(metrics))
        .layer(Extension(scraper))
        .with_state(c)
}

/// Counts each answered request by method, route pattern and status, with its time
/// (`/metrics`); a path no route matched counts under `(unmatched)`.
async fn count_request(State(c): S, req: Request, next: Next) -> Response {
    // A method no route takes counts as `other`: a client cannot grow the series.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".into());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    c.requests
        .record(&method, &route, resp.status().as_u16(), started.elapsed());
    resp
}

/// The largest request body read. The largest valid one (a VM with many SSH keys and a
/// kernel command line) is a few kilobytes; a larger body only costs memory and time.
pub const BODY_LIMIT: usize = 256 * 1024;

/// Routes only admins may use, whatever the method, and routes only admins may change.
/// (The operations check this too; refusing here first keeps a non-admin from learning
/// whether a name exists.)
fn admin_only(method: &Method, route: &str) -> bool {
    let mutating = method != Method::GET && method != Method::HEAD;
    let under = |p: &str| route == p || route.starts_with(&format!("{p}/"));
    under("/api/v1/doctor")
        || under("/api/v1/import/xen")
        || under("/metrics")
        || under("/api/v1/dmesg")
        || under("/api/v1/audit/retention")
        || under("/api/v1/audit/prune")
        || under("/api/v1/hosts")
        || under("/api/v1/rebalance")
        || under("/api/v1/users")
        || route == "/api/v1/default-limits"
        || (mutating && route.starts_with("/api/v1/tasks/") && route.ends_with("/cancel"))
        || (mutating
            && (under("/api/v1/networks")
                || under("/api/v1/backup-targets")
                || under("/api/v1/images")
                || under("/api/v1/pools")
                || under("/api/v1/groups")
                || under("/api/v1/quotas")
                || under("/api/v1/default-limits")))
}

/// The domain action a route asks for, as the audit trail names it.
fn action_of(method: &Method, route: &str) -> &'static str {
    let m = method.as_str();
    match (m, route) {
        ("POST", "/api/v1/vms") => "vm.create",
        ("DELETE", "/api/v1/vms/{name}") => "vm.delete",
        ("POST", "/api/v1/vms/{name}/start") => "vm.start",
        ("POST", "/api/v1/vms/{name}/reboot") => "vm.reboot",
        ("POST", "/api/v1/vms/{name}/pause") => "vm.pause",
        ("POST", "/api/v1/vms/{name}/unpause") => "vm.unpause",
        ("POST", "/api/v1/vms/{name}/destroy") => "vm.destroy",
        ("POST", "/api/v1/vms/{name}/shutdown") => "vm.shutdown",
        ("POST", "/api/v1/vms/{name}/memory") => "vm.mem-set",
        ("POST", "/api/v1/vms/{name}/vcpus") => "vm.vcpu-set",
        ("POST", "/api/v1/vms/{name}/save") => "vm.save",
        ("POST", "/api/v1/restore") => "vm.restore",
        ("POST", "/api/v1/vms/{name}/owner") => "vm.chown",
        ("POST", "/api/v1/vms/{name}/renew") => "vm.renew",
        ("POST", "/api/v1/vms/{name}/cpu-model") => "vm.cpu-model",
        ("PUT", "/api/v1/vms/{name}/limits") => "vm.limits",
        ("GET", "/api/v1/vms/{name}/export") => "vm.export",
        ("POST", "/api/v1/import/vm") => "vm.import",
        ("GET", "/api/v1/vms/{name}/console") => "console.attach",
        ("POST", "/api/v1/vms/{name}/console/ticket") => "console.ticket",
        ("POST", "/api/v1/vms/{name}/nics") => "nic.add",
        ("POST", "/api/v1/vms/{name}/nics/remove") => "nic.remove",
        ("POST", "/api/v1/vms/{name}/port-forwards") => "port-forward.add",
        ("POST", "/api/v1/vms/{name}/port-forwards/remove") => "port-forward.remove",
        ("POST", "/api/v1/vms/{name}/disks") => "disk.add",
        ("POST", "/api/v1/vms/{name}/disks/remove") => "disk.remove",
        ("POST", "/api/v1/vms/{name}/disks/resize") => "disk.resize",
        ("POST", "/api/v1/vms/{name}/snapshots") => "snapshot.create",
        ("POST", "/api/v1/vms/{name}/snapshots/revert") => "snapshot.revert",
        ("POST", "/api/v1/vms/{name}/snapshots/delete") => "snapshot.delete",
        ("POST", "/api/v1/images/build") => "image.build",
        ("POST", "/api/v1/images/import") => "image.import",
        ("POST", "/api/v1/import/xen") => "vm.import-xen",
        ("POST", "/api/v1/backup-targets") => "backup-target.add",
        ("DELETE", "/api/v1/backup-targets/{name}") => "backup-target.delete",
        ("POST", "/api/v1/vms/{name}/backups") => "backup.create",
        ("DELETE", "/api/v1/backups/{name}") => "backup.delete",
        ("PUT", "/api/v1/vms/{name}/backup-schedule") => "backup.schedule",
        ("DELETE", "/api/v1/vms/{name}/backup-schedule") => "backup.unschedule",
        ("POST", "/api/v1/vms/{name}/backup-schedule/run") => "backup.run-schedule",
        ("POST", "/api/v1/backups/{name}/restore") => "backup.restore",
        ("DELETE", "/api/v1/images/{name}") => "image.delete",
        ("POST", "/api/v1/images/{name}/push") => "image.push",
        ("POST", "/api/v1/vms/{name}/migrate") => "vm.migrate",
        ("POST", "/api/v1/networks") => "network.create",
        ("DELETE", "/api/v1/networks/{name}") => "network.delete",
        ("PATCH", "/api/v1/networks/{name}") => "network.update",
        ("POST", "/api/v1/pools") => "pool.create",
        ("DELETE", "/api/v1/pools/{name}") => "pool.delete",
        ("POST", "/api/v1/hosts") => "host.add",
        ("DELETE", "/api/v1/hosts/{name}") => "host.remove",
        ("PUT", "/api/v1/hosts/{name}") => "host.set",
        ("POST", "/api/v1/hosts/{name}/drain") => "host.drain",
        ("POST", "/api/v1/hosts/{name}/undrain") => "host.undrain",
        ("POST", "/api/v1/rebalance") => "host.rebalance",
        ("POST", "/api/v1/tasks/{id}/cancel") => "task.cancel",
        ("POST", "/api/v1/users") => "user.create",
        ("DELETE", "/api/v1/users/{name}") => "user.delete",
        ("POST", "/api/v1/users/{name}/password") => "user.password",
        ("POST", "/api/v1/me/password") => "user.password",
        ("POST", "/api/v1/me/tokens") => "token.create",
        ("DELETE", "/api/v1/me/tokens/{name}") => "token.revoke",
        ("POST", "/api/v1/me/keys") => "key.add",
        ("DELETE", "/api/v1/me/keys/{name}") => "key.remove",
        ("POST", "/api/v1/groups") => "group.create",
        ("DELETE", "/api/v1/groups/{name}") => "group.delete",
        ("POST", "/api/v1/groups/{name}/members") => "group.add-member",
        ("POST", "/api/v1/groups/{name}/members/remove") => "group.remove-member",
        ("PUT", "/api/v1/quotas/{owner}") => "quota.set",
        ("PUT", "/api/v1/default-limits/{owner}") => "default-limits.set",
        ("PUT", "/api/v1/audit/retention") => "audit.retention-set",
        ("POST", "/api/v1/audit/prune") => "audit.prune",
        _ => "api.request",
    }
}

/// The name in a route's path (`{name}` or `{owner}`), which is what most actions act on.
fn target_in_path(route: &str, path: &str) -> Option<String> {
    let r: Vec<&str> = route.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    r.iter()
        .zip(&p)
        .find(|(r, _)| **r == "{name}" || **r == "{owner}")
        .map(|(_, p)| crate::audit::short(p))
}

/// Authenticates every API request, refuses what the caller's token or role does not
/// allow, serves the rest with the caller's context, and records every state-changing
/// request (allowed or not) in the audit trail as the domain action it asked for.
///
/// Refusals spend their requester's budget (`throttle.rs`): an address over budget gets
/// 429 for any request without a well-formed token, before any lookup; a logged-in
/// user's allowed requests are never slowed. Refusals over budget are tallied for the
/// minute's summary instead of written one by one.
async fn auth(State(c): S, mut req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|ci| ci.0.ip().to_string())
        .unwrap_or_else(|| "local".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let console = route == "/api/v1/vms/{name}/console";
    // Opening a console and exporting a VM read, but are actions on it.
    let audited = (method != Method::GET && method != Method::HEAD)
        || console
        || route == "/api/v1/vms/{name}/export";
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let trail = Trail {
        action: action_of(&method, &route),
        target: target_in_path(&route, &path),
        vm_route: route.starts_with("/api/v1/vms/{name}"),
        source: source.clone(),
    };
    let anonymous = Requester::Address(&source);
    let spent = match c.throttle.admission(anonymous) {
        Admission::Open => None,
        Admission::Spent { retry_after_secs } => Some(retry_after_secs),
    };
    let too_many = |wait: u64| c.throttle.over_budget(&source, wait).into_response();
    // Over budget, only a request that may hold a valid token is looked at.
    if let Some(wait) = spent.filter(|_| crate::auth::parse_token(&token).is_none()) {
        return too_many(wait);
    }
    let caller = match c.caller_for(&token).await {
        Ok(caller) => caller,
        Err(e) => {
            c.throttle.charge(anonymous);
            if let Some(wait) = spent {
                return too_many(wait);
            }
            let resp = e.into_response();
            if audited {
                trail.write(&c, None, None, &resp).await;
            }
            return resp;
        }
    };
    let refusal = if caller.read_only && audited {
        Some(Error::forbidden(
            "this token is read-only: use a full token to change anything or to attach a console",
        ))
    } else if !caller.is_admin && admin_only(&method, &route) {
        Some(Error::forbidden("only an admin may do this"))
    } else {
        None
    };
    let user = caller.user_name.clone();
    if let Some(e) = refusal {
        let resp = e.into_response();
        if audited {
            trail.write_unless_over_budget(&c, user, None, &resp).await;
        }
        return resp;
    }
    let ctx = Arc::new(Ctx::user(caller, source));
    req.extensions_mut().insert(ctx.clone());
    let resp = next.run(req).await;
    if audited && !console {
        trail
            .write_unless_over_budget(&c, user, Some(&ctx), &resp)
            .await;
    }
    resp
}

/// Is this answer a refusal (who asked, or what they may see)?
fn refused(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 404 | 429)
}

/// What the middleware knows of a request for its audit entry.
struct Trail {
    action: &'static str,
    target: Option<String>,
    /// A route under `/api/v1/vms/{name}`: its target is a VM's name.
    vm_route: bool,
    source: String,
}

impl Trail {
    /// Writes a logged-in user's entry, but a refusal over the user's budget only
    /// counts towards the minute's summary.
    fn write_unless_over_budget<'a>(
        self,
        c: &'a Controller,
        user: String,
        ctx: Option<&'a Ctx>,
        resp: &Response,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        let over = refused(resp.status()) && {
            let who = Requester::User(&user);
            let over = c.throttle.admission(who) != Admission::Open;
            c.throttle.charge(who);
            if over {
                c.throttle.tally(who);
            }
            over
        };
        let entry = (!over).then(|| self.write(c, Some(user), ctx, resp));
        async move {
            if let Some(entry) = entry {
                entry.await
            }
        }
    }

    /// Writes the entry: the route's action and target, or what the operation noted.
    fn write<'a>(
        self,
        c: &'a Controller,
        user: Option<String>,
        ctx: Option<&'a Ctx>,
        resp: &Response,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        let status = resp.status();
        let error = resp.extensions().get::<ErrorMessage>().map(|m| m.0.clone());
        self.record(c, user, ctx, status, error)
    }

    async fn record(
        self,
        c: &Controller,
        user: Option<String>,
        ctx: Option<&Ctx>,
        status: StatusCode,
        error: Option<String>,
    ) {
        let result = if status.is_success() {
            "ok"
        } else if refused(status) {
            "denied"
        } else {
            "failed"
        };
        let note = ctx.map(|x| x.note()).unwrap_or_default();
        // The operation noted the VM it found; a request refused before that (no token,
        // read-only, or a VM the caller may not see) is filed under the VM its path names,
        // so that the VM's owner sees the attempt.
        let vm_id = match (note.vm_id, &self.target) {
            (Some(id), _) => Some(id),
            (None, Some(name)) if self.vm_route => {
                c.store.vm_by_name(name).await.ok().flatten().map(|v| v.id)
            }
            _ => None,
        };
        c.record_audit(hostel_store::AuditRecord {
            id: hostel_store::new_id("aud"),
            at: hostel_store::now(),
            user_name: user,
            source: self.source,
            action: note.action.unwrap_or(self.action).to_string(),
            target: note.target.or(self.target),
            vm_id,
            params: note.params.map(|p| p.to_string()),
            result: result.into(),
            error,
        })
        .await;
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LinesQuery {
    /// How many lines from the end (default 50).
    #[param(minimum = 0, maximum = 100000)]
    lines: Option<usize>,
}
