//! The public REST API (`/api/v1`), its bearer-token check, and its OpenAPI document.

use crate::agent_client::AgentRefusal;
use crate::http_extract::{ApiJson, ApiPath, ApiQuery, ApiWebSocket};
use crate::openapi_errors::StandardErrors;
use crate::Controller;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use hostel_api::public::*;
use hostel_api::ErrorBody;
use hostel_model::{Invalid, Op};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::OpenApi;

/// An API failure: an HTTP status and the JSON body every error has.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: String, field: Option<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: code.into(),
                message,
                field,
            },
        }
    }
    pub fn not_found(message: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message, None)
    }
    pub fn conflict(message: String) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message, None)
    }
    pub fn conflict_field(field: &str, message: String) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "conflict",
            message,
            Some(field.into()),
        )
    }
    pub fn unavailable(message: String) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            None,
        )
    }
    pub fn forbidden(message: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message, None)
    }
    pub fn too_many(message: String) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", message, None)
    }
    pub fn unauthorized_because(why: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            why.to_string(),
            None,
        )
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token: send `Authorization: Bearer TOKEN` (the CLI reads it \
             from its client config)"
                .into(),
            None,
        )
    }
    pub(crate) fn from_agent(r: AgentRefusal) -> Self {
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
        ApiError {
            status,
            body: r.body,
        }
    }
    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: &str) -> Self {
        self.body.message = format!("{what}: {}", self.body.message);
        self
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        // A state that does not allow the operation is a conflict, not bad input.
        let status = if e.field == "state" {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        let code = if e.field == "state" {
            "conflict"
        } else {
            "invalid"
        };
        Self::new(status, code, e.to_string(), Some(e.field))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<AgentRefusal>() {
            Ok(r) => ApiError::from_agent(r),
            Err(e) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{e:#}"),
                None,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type S = State<Arc<Controller>>;

/// The Debian suites the `debian` recipe builds.
const DEBIAN_SUITES: &[&str] = &["bookworm", "trixie"];
type R<T> = Result<Json<T>, ApiError>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Hostel API", description = "Self-service virtual machine hosting."),
    paths(
        info, list_vms, create_vm, get_vm, delete_vm, start_vm, reboot_vm, pause_vm,
        unpause_vm, destroy_vm, shutdown_vm, mem_set, vcpu_set, save_vm, restore_vm,
        console, console_log, console_ticket, dmesg, list_images, build_image, import_image, delete_image, get_task,
        list_networks, create_network, get_network, delete_network, list_nics, add_nic,
        remove_nic, list_forwards, add_forward, remove_forward, list_disks, add_disk,
        remove_disk, resize_disk, list_snapshots, create_snapshot, revert_snapshot,
        delete_snapshot, doctor, list_pools, create_pool, get_pool, delete_pool, login, whoami,
        list_users, create_user, delete_user, user_password, my_password, list_tokens,
        create_token, revoke_token, list_keys, add_key, remove_key, list_groups, create_group,
        delete_group, add_member, remove_member, set_owner, audit, show_quota, set_quota,
        renew_vm, list_hosts, add_host, remove_host
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
        .route("/api/v1/hosts/{name}", axum::routing::delete(remove_host))
        .route("/api/v1/vms", get(list_vms).post(create_vm))
        .route("/api/v1/vms/{name}", get(get_vm).delete(delete_vm))
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
        .route("/api/v1/images/{name}", axum::routing::delete(delete_image))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", axum::routing::delete(delete_user))
        .route("/api/v1/users/{name}/password", post(user_password))
        .route("/api/v1/me/password", post(my_password))
        .route("/api/v1/me/tokens", get(list_tokens).post(create_token))
        .route(
            "/api/v1/me/tokens/{name}",
            axum::routing::delete(revoke_token),
        )
        .route("/api/v1/me/keys", get(list_keys).post(add_key))
        .route("/api/v1/me/keys/{name}", axum::routing::delete(remove_key))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route("/api/v1/groups/{name}", axum::routing::delete(delete_group))
        .route("/api/v1/groups/{name}/members", post(add_member))
        .route("/api/v1/groups/{name}/members/remove", post(remove_member))
        .route("/api/v1/vms/{name}/owner", post(set_owner))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/quotas", get(show_quota))
        .route("/api/v1/quotas/{owner}", axum::routing::put(set_quota))
        .route("/api/v1/vms/{name}/renew", post(renew_vm))
        .route("/api/v1/pools", get(list_pools).post(create_pool))
        .route("/api/v1/pools/{name}", get(get_pool).delete(delete_pool))
        .route("/api/v1/networks", get(list_networks).post(create_network))
        .route(
            "/api/v1/networks/{name}",
            get(get_network).delete(delete_network),
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
        .with_state(c)
}

/// Routes only admins may use, whatever the method, and routes only admins may change.
fn admin_only(method: &axum::http::Method, path: &str) -> bool {
    let mutating = method != axum::http::Method::GET && method != axum::http::Method::HEAD;
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    under("/api/v1/doctor")
        || under("/api/v1/dmesg")
        || under("/api/v1/hosts")
        || under("/api/v1/users")
        || (mutating
            && (under("/api/v1/networks")
                || under("/api/v1/images")
                || under("/api/v1/pools")
                || under("/api/v1/groups")))
}

/// The VM a request is about, by the `{name}` in `/api/v1/vms/{name}/...`.
fn vm_in_path(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/vms/")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .filter(|n| !n.is_empty())
}

/// Authenticates every API request, refuses what the caller's token or role does not
/// allow, serves the rest as that caller, and records every state-changing request
/// (allowed or not) in the audit trail.
async fn auth(State(c): S, req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|ci| ci.0.ip().to_string())
        .unwrap_or_else(|| "local".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mutating = method != axum::http::Method::GET && method != axum::http::Method::HEAD;
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let target = vm_in_path(&path).map(String::from);
    let vm_id = match &target {
        Some(n) => c.store.vm_by_name(n).await.ok().flatten().map(|v| v.id),
        None => None,
    };
    let audit = |user: Option<String>, status: StatusCode, error: Option<String>| {
        let result = if status.is_success() {
            "ok"
        } else if matches!(status.as_u16(), 401 | 403 | 404 | 429) {
            "denied"
        } else {
            "failed"
        };
        hostel_store::AuditRecord {
            id: hostel_store::new_id("aud"),
            at: hostel_store::now(),
            user_name: user,
            source: source.clone(),
            action: format!("{method} {path}"),
            target: target.clone(),
            vm_id: vm_id.clone(),
            result: result.into(),
            error,
        }
    };
    let caller = match c.caller_for(&token).await {
        Ok(caller) => caller,
        Err(e) => {
            if mutating {
                c.record_audit(audit(None, e.status, Some(e.body.message.clone())))
                    .await;
            }
            return e.into_response();
        }
    };
    let refusal = if caller.read_only && (mutating || path.ends_with("/console")) {
        Some(ApiError::forbidden(
            "this token is read-only: use a full token to change anything or to attach a console"
                .into(),
        ))
    } else if !caller.is_admin
        && (admin_only(&method, &path) || (mutating && path.starts_with("/api/v1/quotas")))
    {
        Some(ApiError::forbidden("only an admin may do this".into()))
    } else {
        None
    };
    if let Some(e) = refusal {
        if mutating || path.ends_with("/console") {
            c.record_audit(audit(
                Some(caller.user_name.clone()),
                e.status,
                Some(e.body.message.clone()),
            ))
            .await;
        }
        return e.into_response();
    }
    let user = caller.user_name.clone();
    let resp = crate::auth::CALLER.scope(caller, next.run(req)).await;
    if !mutating {
        return resp;
    }
    let status = resp.status();
    if status.is_success() {
        c.record_audit(audit(Some(user), status, None)).await;
        return resp;
    }
    // Keep the error's message for the trail, and give the response back whole.
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|b| b.message)
        .ok();
    c.record_audit(audit(Some(user), status, message)).await;
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

#[utoipa::path(post, path = "/api/v1/login", request_body = LoginRequest,
    responses((status = 201, body = NewToken), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn login(
    State(c): S,
    axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let source = addr.ip().to_string();
    let user = req.user.clone();
    let r = c.login(req, &source).await;
    let (status, error) = match &r {
        Ok(_) => (StatusCode::CREATED, None),
        Err(e) => (e.status, Some(e.body.message.clone())),
    };
    c.record_audit(hostel_store::AuditRecord {
        id: hostel_store::new_id("aud"),
        at: hostel_store::now(),
        user_name: Some(user),
        source,
        action: "POST /api/v1/login".into(),
        target: None,
        vm_id: None,
        result: if status.is_success() { "ok" } else { "denied" }.into(),
        error,
    })
    .await;
    Ok((StatusCode::CREATED, Json(r?)))
}

#[utoipa::path(get, path = "/api/v1/whoami", responses((status = 200, body = WhoAmI)))]
async fn whoami(State(c): S) -> R<WhoAmI> {
    Ok(Json(c.whoami().await?))
}

#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = Vec<User>), (status = 403, body = ErrorBody)))]
async fn list_users(State(c): S) -> R<Vec<User>> {
    Ok(Json(c.users().await?))
}

#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_user(
    State(c): S,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.create_user(req).await?)))
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_user(State(c): S, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    c.delete_user(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/users/{name}/password", params(("name" = String, Path)), request_body = PasswordRequest,
    responses((status = 204), (status = 400, body = ErrorBody)))]
async fn user_password(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PasswordRequest>,
) -> Result<StatusCode, ApiError> {
    c.set_password(Some(&name), req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/me/password", request_body = PasswordRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn my_password(
    State(c): S,
    ApiJson(req): ApiJson<PasswordRequest>,
) -> Result<StatusCode, ApiError> {
    c.set_password(None, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UserQuery {
    /// Another user's (admins only).
    user: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/me/tokens", params(UserQuery), responses((status = 200, body = Vec<TokenInfo>), (status = 404, body = ErrorBody)))]
async fn list_tokens(State(c): S, ApiQuery(q): ApiQuery<UserQuery>) -> R<Vec<TokenInfo>> {
    Ok(Json(c.tokens(q.user.as_deref()).await?))
}

#[utoipa::path(post, path = "/api/v1/me/tokens", params(UserQuery), request_body = CreateTokenRequest,
    responses((status = 201, body = NewToken), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_token(
    State(c): S,
    ApiQuery(q): ApiQuery<UserQuery>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(c.create_token(q.user.as_deref(), req).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/me/tokens/{name}", params(("name" = String, Path), UserQuery),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<StatusCode, ApiError> {
    c.revoke_token(q.user.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/me/keys", params(UserQuery), responses((status = 200, body = Vec<SshKey>), (status = 404, body = ErrorBody)))]
async fn list_keys(State(c): S, ApiQuery(q): ApiQuery<UserQuery>) -> R<Vec<SshKey>> {
    Ok(Json(c.keys(q.user.as_deref()).await?))
}

#[utoipa::path(post, path = "/api/v1/me/keys", params(UserQuery), request_body = AddKeyRequest,
    responses((status = 201, body = SshKey), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_key(
    State(c): S,
    ApiQuery(q): ApiQuery<UserQuery>,
    ApiJson(req): ApiJson<AddKeyRequest>,
) -> Result<(StatusCode, Json<SshKey>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(c.add_key(q.user.as_deref(), req).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/me/keys/{name}", params(("name" = String, Path), UserQuery),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove_key(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<StatusCode, ApiError> {
    c.remove_key(q.user.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/groups", responses((status = 200, body = Vec<Group>)))]
async fn list_groups(State(c): S) -> R<Vec<Group>> {
    Ok(Json(c.groups().await?))
}

#[utoipa::path(post, path = "/api/v1/groups", request_body = CreateGroupRequest,
    responses((status = 201, body = Group), (status = 409, body = ErrorBody)))]
async fn create_group(
    State(c): S,
    ApiJson(req): ApiJson<CreateGroupRequest>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.create_group(req).await?)))
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_group(State(c): S, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    c.delete_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/members", params(("name" = String, Path)), request_body = MemberRequest,
    responses((status = 200, body = Group), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_member(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> R<Group> {
    Ok(Json(c.add_member(&name, req).await?))
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/members/remove", params(("name" = String, Path)), request_body = MemberRequest,
    responses((status = 200, body = Group), (status = 400, body = ErrorBody)))]
async fn remove_member(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> R<Group> {
    Ok(Json(c.remove_member(&name, req).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/owner", params(("name" = String, Path)), request_body = SetOwnerRequest,
    responses((status = 200, body = Vm), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_owner(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetOwnerRequest>,
) -> R<Vm> {
    Ok(Json(c.set_owner(&name, req).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    vm: Option<String>,
    user: Option<String>,
    /// RFC 3339 time: entries at or after it.
    since: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, body = Vec<AuditEntry>), (status = 404, body = ErrorBody)))]
async fn audit(State(c): S, ApiQuery(q): ApiQuery<AuditQuery>) -> R<Vec<AuditEntry>> {
    Ok(Json(c.audit(q.vm, q.user, q.since).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct QuotaQuery {
    /// `user:NAME`, `group:NAME` or `default`; yours when absent.
    #[param(pattern = "^(user:.*|group:.*|[^:]*)$")]
    owner: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/quotas", params(QuotaQuery), responses((status = 200, body = Quota), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_quota(State(c): S, ApiQuery(q): ApiQuery<QuotaQuery>) -> R<Quota> {
    Ok(Json(c.quota_show(q.owner.as_deref()).await?))
}

#[utoipa::path(put, path = "/api/v1/quotas/{owner}", params(("owner" = String, Path, pattern = "^(user:.*|group:.*|[^:]*)$")), request_body = QuotaLimits,
    responses((status = 200, body = Quota), (status = 403, body = ErrorBody)))]
async fn set_quota(
    State(c): S,
    ApiPath(owner): ApiPath<String>,
    ApiJson(limits): ApiJson<QuotaLimits>,
) -> R<Quota> {
    Ok(Json(c.quota_set(&owner, limits).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/renew", params(("name" = String, Path)), request_body = RenewRequest,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn renew_vm(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> R<Vm> {
    Ok(Json(c.renew(&name, req).await?))
}

/// The hosts (admins only), each with whether its agent is connected now.
#[utoipa::path(get, path = "/api/v1/hosts", responses((status = 200, body = Vec<HostInfo>)))]
async fn list_hosts(State(c): S) -> R<Vec<HostInfo>> {
    Ok(Json(c.hosts_info(None).await?))
}

/// Adds a host by its agent's address (admins only).
#[utoipa::path(post, path = "/api/v1/hosts", request_body = AddHostRequest,
    responses((status = 201, body = HostInfo), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn add_host(
    State(c): S,
    ApiJson(req): ApiJson<AddHostRequest>,
) -> Result<(StatusCode, Json<HostInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.add_remote_host(req).await?)))
}

/// Removes a host with no VMs, images or pools left (admins only).
#[utoipa::path(delete, path = "/api/v1/hosts/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_host(State(c): S, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    c.remove_host(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/info", responses((status = 200, body = Info)))]
async fn info(State(c): S) -> R<Info> {
    Ok(Json(c.info().await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// How many VMs a page holds: 1 to 1000 (the default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Start after the VM of this name (the `Link` header of a page names the next one).
    after: Option<String>,
    /// Only the VMs on this host.
    host: Option<String>,
    /// Only the VMs in this state.
    #[param(value_type = Option<hostel_model::VmState>)]
    state: Option<String>,
}

/// The VMs the caller may operate, in name order, a page at a time: when more follow, the
/// `Link` header has the next page's address (`rel="next"`).
#[utoipa::path(get, path = "/api/v1/vms", params(ListQuery),
    responses((status = 200, body = Vec<VmSummary>,
        headers(("Link" = String, description = "`<URL>; rel=\"next\"` when another page follows"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_vms(State(c): S, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(crate::ops::MAX_PAGE);
    let (vms, next) = c
        .list_vms(
            limit,
            q.after.as_deref(),
            q.host.as_deref(),
            q.state.as_deref(),
        )
        .await?;
    let mut resp = Json(vms).into_response();
    if let Some(after) = next {
        let mut url = reqwest::Url::parse("http://hostel/api/v1/vms").expect("a valid URL");
        {
            let mut p = url.query_pairs_mut();
            p.append_pair("limit", &limit.to_string());
            p.append_pair("after", &after);
            if let Some(h) = &q.host {
                p.append_pair("host", h);
            }
            if let Some(s) = &q.state {
                p.append_pair("state", s);
            }
        }
        let link = format!(
            "<{}?{}>; rel=\"next\"",
            url.path(),
            url.query().unwrap_or("")
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&link) {
            resp.headers_mut().insert(axum::http::header::LINK, v);
        }
    }
    Ok(resp)
}

#[utoipa::path(post, path = "/api/v1/vms", request_body = CreateVmRequest,
    responses((status = 201, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_vm(
    State(c): S,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> Result<(StatusCode, Json<Vm>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.create_vm(req).await?)))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
async fn get_vm(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vm> {
    let vm = c.vm_named(&name).await?;
    Ok(Json(c.view(&vm, true).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// Keep the VM's disk files (their paths come back); they are no longer Hostel's.
    #[serde(default)]
    keep_disks: bool,
}

#[utoipa::path(delete, path = "/api/v1/vms/{name}", params(("name" = String, Path), DeleteQuery),
    responses((status = 200, body = Vec<String>, description = "paths of kept disk files"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_vm(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> R<Vec<String>> {
    Ok(Json(c.delete_vm_keeping(&name, q.keep_disks).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/start", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn start_vm(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vm> {
    Ok(Json(c.start_vm(&name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/reboot", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn reboot_vm(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vm> {
    Ok(Json(c.simple_action(&name, Op::Reboot).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/pause", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn pause_vm(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vm> {
    Ok(Json(c.simple_action(&name, Op::Pause).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/unpause", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn unpause_vm(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vm> {
    Ok(Json(c.simple_action(&name, Op::Unpause).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/destroy", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn destroy_vm(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vm> {
    Ok(Json(c.simple_action(&name, Op::Destroy).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/shutdown", params(("name" = String, Path)),
    request_body = ShutdownRequest,
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 504, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn shutdown_vm(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ShutdownRequest>,
) -> R<Vm> {
    Ok(Json(c.shutdown_vm(&name, req).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/memory", params(("name" = String, Path)),
    request_body = MemSetRequest, responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn mem_set(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MemSetRequest>,
) -> R<Vm> {
    Ok(Json(c.mem_set(&name, req.memory_mib).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/vcpus", params(("name" = String, Path)),
    request_body = VcpuSetRequest, responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn vcpu_set(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<VcpuSetRequest>,
) -> R<Vm> {
    Ok(Json(c.vcpu_set(&name, req.vcpus).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/save", params(("name" = String, Path)),
    request_body = SaveRequest, responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn save_vm(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SaveRequest>,
) -> R<Vm> {
    Ok(Json(c.save_vm(&name, req.path).await?))
}

#[utoipa::path(post, path = "/api/v1/restore", request_body = RestoreRequest,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn restore_vm(State(c): S, ApiJson(req): ApiJson<RestoreRequest>) -> R<Vm> {
    Ok(Json(c.restore_vm(req.path).await?))
}

/// The serial console as a websocket: binary frames both ways. Recent output is
/// replayed first.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console", params(("name" = String, Path)),
    responses((status = 101, description = "websocket"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 400, body = ErrorBody), (status = 426, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn console(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiWebSocket(ws): ApiWebSocket,
) -> Result<Response, ApiError> {
    let vm = c.vm_named(&name).await?;
    let state = hostel_model::VmState::parse(&vm.state).unwrap_or(hostel_model::VmState::Crashed);
    Op::Console.check(state)?;
    let agent = c.host_agent(&vm)?;
    let upstream = agent.websocket(&vm.id, "console").await?;
    let user = crate::auth::current().map(|c| c.user_name);
    let source = peer.ip().to_string();
    let what = "serial console";
    c.record_audit(crate::accounts::event_record(
        user.clone(),
        &source,
        format!("{what} attach"),
        Some((&vm.id, &vm.name)),
        "ok",
        None,
    ))
    .await;
    let target = (vm.id, vm.name);
    Ok(
        ws.on_upgrade(move |socket| {
            bridge_audited(c, socket, upstream, user, source, what, target)
        }),
    )
}

async fn bridge<S>(client: WebSocket, upstream: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_tungstenite::tungstenite::Message as T;
    let (mut ctx, mut crx) = client.split();
    let (mut utx, mut urx) = upstream.split();
    let down = async {
        while let Some(Ok(m)) = urx.next().await {
            let out = match m {
                T::Binary(b) => Message::Binary(b),
                T::Text(t) => Message::Text(t.as_str().into()),
                T::Close(_) => break,
                _ => continue,
            };
            if ctx.send(out).await.is_err() {
                break;
            }
        }
        let _ = ctx.send(Message::Close(None)).await;
    };
    let up = async {
        while let Some(Ok(m)) = crx.next().await {
            let out = match m {
                Message::Binary(b) => T::Binary(b),
                Message::Text(t) => T::Text(t.as_str().into()),
                Message::Close(_) => break,
                _ => continue,
            };
            if utx.send(out).await.is_err() {
                break;
            }
        }
        let _ = utx.send(T::Close(None)).await;
    };
    tokio::select! {
        _ = down => {},
        _ = up => {},
    }
}

/// The last lines of the VM's serial console log, which is kept (size-bounded, rotated)
/// while the VM is stopped too.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console/log", params(("name" = String, Path), LinesQuery),
    responses((status = 200, body = LogLines), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn console_log(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<LinesQuery>,
) -> R<LogLines> {
    let lines = q.lines.unwrap_or(50);
    if lines > 100_000 {
        return Err(hostel_model::Invalid::new(
            "lines",
            "--lines is at most 100000 (the log keeps about 2 MiB)",
        )
        .into());
    }
    let vm = c.vm_named(&name).await?;
    let agent = c.host_agent(&vm)?;
    let lines: Vec<String> = agent
        .get(&format!("/v1/vms/{}/console-log?lines={lines}", vm.id))
        .await?;
    Ok(Json(LogLines { lines }))
}

/// A single-use ticket for a browser console (serial through xterm.js, VGA through
/// noVNC). Open `page` (or the websocket at `websocket`) on the API's address within
/// `expires_in_seconds`; the first connection spends it.
#[utoipa::path(post, path = "/api/v1/vms/{name}/console/ticket", params(("name" = String, Path)),
    request_body = ConsoleTicketRequest,
    responses((status = 200, body = ConsoleTicket), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn console_ticket(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ConsoleTicketRequest>,
) -> R<ConsoleTicket> {
    Ok(Json(c.console_ticket(&name, req).await?))
}

const SERIAL_PAGE: &str = include_str!("../../../web/pages/serial.html");
const VGA_PAGE: &str = include_str!("../../../web/pages/vga.html");

async fn page(html: &'static str) -> Response {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            // Nothing but Hostel itself: no script, style or socket from elsewhere.
            (
                "content-security-policy",
                "default-src 'self'; script-src 'self' 'unsafe-inline'; \
                 style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data: blob:",
            ),
            ("cache-control", "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The npm packages the console pages load (xterm.js, its fit addon, noVNC).
async fn web_asset(State(c): S, ApiPath(path): ApiPath<String>) -> Response {
    let Some(dir) = c.cfg.web_dir.clone() else {
        return ApiError::not_found(
            "this daemon has no web directory: run `npm ci` in the source tree's web/ and \
             start `hostel up --web-dir web/node_modules`"
                .into(),
        )
        .into_response();
    };
    let Some(file) = crate::webconsole::web_file(&dir, &path) else {
        return ApiError::not_found(format!("no such file /web/{path}")).into_response();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => (
            [("content-type", crate::webconsole::content_type(&file))],
            bytes,
        )
            .into_response(),
        Err(_) => ApiError::not_found(format!("no such file /web/{path}")).into_response(),
    }
}

/// Bridges a console websocket to its upstream, then records the detach and how long the
/// attach lasted.
async fn bridge_audited<S>(
    c: Arc<Controller>,
    client: WebSocket,
    upstream: tokio_tungstenite::WebSocketStream<S>,
    user: Option<String>,
    source: String,
    what: &str,
    vm: (String, String),
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let since = std::time::Instant::now();
    bridge(client, upstream).await;
    let action = format!("{what} detach after {} s", since.elapsed().as_secs());
    c.record_audit(crate::accounts::event_record(
        user,
        &source,
        action,
        Some((&vm.0, &vm.1)),
        "ok",
        None,
    ))
    .await;
}

#[derive(Deserialize)]
struct TicketQuery {
    ticket: String,
}

/// The browser console websocket: spends the ticket, then bridges to the VM's serial
/// console hub or to its VNC socket, through the VM's agent.
async fn console_ws(
    State(c): S,
    ApiQuery(q): ApiQuery<TicketQuery>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiWebSocket(ws): ApiWebSocket,
) -> Result<Response, ApiError> {
    let source = peer.ip().to_string();
    let Some(t) = c.tickets.take(&q.ticket) else {
        let why = "the console ticket is unknown, already used or expired: a ticket opens one \
                   connection within 30 s; ask for a new one (`hostel console NAME --web`)";
        c.record_audit(crate::accounts::event_record(
            None,
            &source,
            "console websocket".into(),
            None,
            "denied",
            Some(why.into()),
        ))
        .await;
        return Err(ApiError::forbidden(why.into()));
    };
    let what = match t.kind {
        ConsoleKind::Serial => "web serial console",
        ConsoleKind::Vga => "vga console",
    };
    let attach = async {
        let vm = c
            .store
            .vm_by_id(&t.vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("the VM {} is gone", t.vm_name)))?;
        let state =
            hostel_model::VmState::parse(&vm.state).unwrap_or(hostel_model::VmState::Crashed);
        Op::Console.check(state)?;
        let agent = c.host_agent(&vm)?;
        let upstream = match t.kind {
            ConsoleKind::Serial => agent.websocket(&vm.id, "console").await?,
            ConsoleKind::Vga => agent.websocket(&vm.id, "vnc").await?,
        };
        Ok::<_, ApiError>(upstream)
    };
    let attached = attach.await;
    c.record_audit(crate::accounts::event_record(
        Some(t.user_name.clone()),
        &source,
        format!("{what} attach"),
        Some((&t.vm_id, &t.vm_name)),
        if attached.is_ok() { "ok" } else { "failed" },
        attached.as_ref().err().map(|e| e.body.message.clone()),
    ))
    .await;
    let upstream = attached?;
    let target = (t.vm_id, t.vm_name);
    Ok(ws.protocols(["binary"]).on_upgrade(move |socket| {
        bridge_audited(c, socket, upstream, Some(t.user_name), source, what, target)
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LinesQuery {
    /// How many lines from the end (default 50).
    #[param(minimum = 0, maximum = 100000)]
    lines: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/dmesg", params(LinesQuery), responses((status = 200, body = LogLines)))]
async fn dmesg(State(c): S, ApiQuery(q): ApiQuery<LinesQuery>) -> R<LogLines> {
    if q.lines.is_some_and(|n| n > 100_000) {
        return Err(Invalid::new("lines", "--lines is at most 100000").into());
    }
    let text = std::fs::read_to_string(&c.cfg.log_file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let n = q.lines.unwrap_or(50).min(all.len());
    Ok(Json(LogLines {
        lines: all[all.len() - n..].iter().map(|s| s.to_string()).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/images", responses((status = 200, body = Vec<Image>)))]
async fn list_images(State(c): S) -> R<Vec<Image>> {
    let mut out = Vec::new();
    for i in c.store.images().await? {
        out.push(c.image_view(i).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/images/build", request_body = BuildImageRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn build_image(
    State(c): S,
    ApiJson(req): ApiJson<BuildImageRequest>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let name = match req.recipe.as_str() {
        "tiny" => req.name.clone().unwrap_or_else(|| "tiny".into()),
        "debian" => {
            let suite = req.suite.clone().unwrap_or_else(|| "bookworm".into());
            if !DEBIAN_SUITES.contains(&suite.as_str()) {
                return Err(Invalid::new(
                    "suite",
                    format!(
                        "{suite:?} is not a Debian suite Hostel builds: use one of {}",
                        DEBIAN_SUITES.join(", ")
                    ),
                )
                .into());
            }
            for p in &req.packages {
                let ok = !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b)
                    });
                if !ok {
                    return Err(Invalid::new(
                        "packages",
                        format!("{p:?} is not a Debian package name"),
                    )
                    .into());
                }
            }
            if let Some(size) = req.size_mib {
                if !(1024..=hostel_model::MAX_DISK_MIB).contains(&size) {
                    return Err(Invalid::new(
                        "size",
                        format!(
                            "{} is too small or too large: a Debian image needs at least 1G",
                            hostel_model::format_mib(size)
                        ),
                    )
                    .into());
                }
            }
            if let Some(m) = &req.mirror {
                if !(m.starts_with("http://") || m.starts_with("https://")) || m.contains(' ') {
                    return Err(Invalid::new(
                        "mirror",
                        format!("{m:?} is not an http(s) URL of a Debian mirror"),
                    )
                    .into());
                }
            }
            req.name
                .clone()
                .unwrap_or_else(|| format!("debian-{suite}"))
        }
        other => {
            return Err(Invalid::new(
                "recipe",
                format!("{other:?} is not a recipe Hostel can build: use \"tiny\" or \"debian\""),
            )
            .into())
        }
    };
    let body = serde_json::json!({
        "recipe": req.recipe,
        "name": name,
        "suite": req.suite,
        "packages": req.packages,
        "size_mib": req.size_mib,
        "mirror": req.mirror,
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(c.image_task("image-build", name, body).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/images/import", request_body = ImportImageRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn import_image(
    State(c): S,
    ApiJson(req): ApiJson<ImportImageRequest>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let url = req.path.starts_with("http://") || req.path.starts_with("https://");
    if !url && !std::path::Path::new(&req.path).is_absolute() {
        return Err(Invalid::new(
            "path",
            format!(
                "{:?} is neither an absolute path nor an http(s) URL: give the image file's \
                 full path on the host, or its URL",
                req.path
            ),
        )
        .into());
    }
    let body = serde_json::json!({"name": req.name, "source": req.path});
    Ok((
        StatusCode::ACCEPTED,
        Json(c.image_task("image-import", req.name, body).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/images/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_image(State(c): S, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    c.delete_image(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = ErrorBody)))]
async fn get_task(State(c): S, ApiPath(id): ApiPath<String>) -> R<Task> {
    Ok(Json(c.task(&id).await?))
}

#[utoipa::path(get, path = "/api/v1/networks", responses((status = 200, body = Vec<Network>)))]
async fn list_networks(State(c): S) -> R<Vec<Network>> {
    let mut out = Vec::new();
    for n in c.store.networks().await? {
        out.push(c.network_view(n).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/networks", request_body = CreateNetworkRequest,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_network(
    State(c): S,
    ApiJson(req): ApiJson<CreateNetworkRequest>,
) -> Result<(StatusCode, Json<Network>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.create_network(req).await?)))
}

#[utoipa::path(get, path = "/api/v1/networks/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
async fn get_network(State(c): S, ApiPath(name): ApiPath<String>) -> R<Network> {
    let n = c
        .store
        .network_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no network named {name:?}")))?;
    Ok(Json(c.network_view(n).await?))
}

#[utoipa::path(delete, path = "/api/v1/networks/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_network(
    State(c): S,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/nics", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Nic>), (status = 404, body = ErrorBody)))]
async fn list_nics(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vec<Nic>> {
    Ok(Json(c.list_nics(&name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/nics", params(("name" = String, Path)), request_body = NicRequest,
    responses((status = 201, body = Nic), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn add_nic(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<NicRequest>,
) -> Result<(StatusCode, Json<Nic>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.add_nic(&name, req).await?)))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/nics/remove", params(("name" = String, Path)), request_body = RemoveNicRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn remove_nic(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RemoveNicRequest>,
) -> Result<StatusCode, ApiError> {
    c.remove_nic(&name, &req.nic).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/port-forwards", params(("name" = String, Path)),
    responses((status = 200, body = Vec<PortForward>)))]
async fn list_forwards(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vec<PortForward>> {
    c.vm_named(&name).await?;
    Ok(Json(c.forwards(Some(&name)).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/port-forwards", params(("name" = String, Path)), request_body = PortForwardRequest,
    responses((status = 201, body = PortForward), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_forward(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PortForwardRequest>,
) -> Result<(StatusCode, Json<PortForward>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.add_forward(&name, req).await?)))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/port-forwards/remove", params(("name" = String, Path)), request_body = PortForwardRequest,
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove_forward(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PortForwardRequest>,
) -> Result<StatusCode, ApiError> {
    c.remove_forward(&name, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/disks", params(("name" = String, Path)),
    responses((status = 200, body = Vec<DiskView>), (status = 404, body = ErrorBody)))]
async fn list_disks(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vec<DiskView>> {
    Ok(Json(c.disk_views(&name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/disks", params(("name" = String, Path)), request_body = AddDiskRequest,
    responses((status = 201, body = DiskView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn add_disk(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<AddDiskRequest>,
) -> Result<(StatusCode, Json<DiskView>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.add_disk(&name, req).await?)))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/disks/remove", params(("name" = String, Path)), request_body = RemoveDiskRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn remove_disk(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RemoveDiskRequest>,
) -> Result<StatusCode, ApiError> {
    c.remove_disk(&name, req.disk).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/disks/resize", params(("name" = String, Path)), request_body = ResizeDiskRequest,
    responses((status = 200, body = DiskView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn resize_disk(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ResizeDiskRequest>,
) -> R<DiskView> {
    Ok(Json(c.resize_disk(&name, req).await?))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/snapshots", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Snapshot>), (status = 404, body = ErrorBody)))]
async fn list_snapshots(State(c): S, ApiPath(name): ApiPath<String>) -> R<Vec<Snapshot>> {
    Ok(Json(c.snapshots(&name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots", params(("name" = String, Path)), request_body = CreateSnapshotRequest,
    responses((status = 201, body = Snapshot), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_snapshot(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(c.create_snapshot(&name, req).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/revert", params(("name" = String, Path)), request_body = SnapshotName,
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn revert_snapshot(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SnapshotName>,
) -> R<Vm> {
    Ok(Json(c.revert_snapshot(&name, &req.name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/delete", params(("name" = String, Path)), request_body = SnapshotName,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_snapshot(
    State(c): S,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SnapshotName>,
) -> Result<StatusCode, ApiError> {
    c.delete_snapshot(&name, &req.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/doctor", responses((status = 200, body = DoctorReport)))]
async fn doctor(State(c): S) -> R<DoctorReport> {
    Ok(Json(c.doctor().await?))
}

#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = Vec<Pool>)))]
async fn list_pools(State(c): S) -> R<Vec<Pool>> {
    Ok(Json(c.pools().await?))
}

#[utoipa::path(post, path = "/api/v1/pools", request_body = CreatePoolRequest,
    responses((status = 201, body = Pool), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_pool(
    State(c): S,
    ApiJson(req): ApiJson<CreatePoolRequest>,
) -> Result<(StatusCode, Json<Pool>), ApiError> {
    Ok((StatusCode::CREATED, Json(c.create_pool(req).await?)))
}

#[utoipa::path(get, path = "/api/v1/pools/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Pool), (status = 404, body = ErrorBody)))]
async fn get_pool(State(c): S, ApiPath(name): ApiPath<String>) -> R<Pool> {
    Ok(Json(c.pool(&name).await?))
}

#[utoipa::path(delete, path = "/api/v1/pools/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_pool(State(c): S, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    c.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
