//! Users, groups, tokens, keys, logins, ownership, the audit trail, quotas and owners'
//! default resource limits.

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{R, S, X};
use crate::error::Error;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use hostel_api::public::*;
use hostel_api::ErrorBody;
use serde::Deserialize;

#[utoipa::path(post, path = "/api/v1/login", request_body = LoginRequest,
    responses((status = 201, body = NewToken), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(super) async fn login(
    State(c): S,
    axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<(StatusCode, Json<NewToken>), Error> {
    let source = addr.ip().to_string();
    Ok((StatusCode::CREATED, Json(c.login(req, &source).await?)))
}

#[utoipa::path(get, path = "/api/v1/whoami", responses((status = 200, body = WhoAmI)))]
pub(super) async fn whoami(State(c): S, Extension(ctx): X) -> R<WhoAmI> {
    Ok(Json(c.whoami(&ctx).await?))
}

#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = Vec<User>), (status = 403, body = ErrorBody)))]
pub(super) async fn list_users(State(c): S, Extension(ctx): X) -> R<Vec<User>> {
    Ok(Json(c.users(&ctx).await?))
}

#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_user(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<User>), Error> {
    Ok((StatusCode::CREATED, Json(c.create_user(&ctx, req).await?)))
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_user(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.delete_user(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets a user's password (admins). An admin changing their own gives the current one,
/// checked like a login (rate-limited: 429 after too many wrong ones).
#[utoipa::path(post, path = "/api/v1/users/{name}/password", params(("name" = String, Path)), request_body = PasswordRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(super) async fn user_password(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PasswordRequest>,
) -> Result<StatusCode, Error> {
    c.set_password(&ctx, Some(&name), req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/me/password", request_body = PasswordRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(super) async fn my_password(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<PasswordRequest>,
) -> Result<StatusCode, Error> {
    c.set_password(&ctx, None, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UserQuery {
    /// Another user's (admins only).
    user: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/me/tokens", params(UserQuery), responses((status = 200, body = Vec<TokenInfo>), (status = 404, body = ErrorBody)))]
pub(super) async fn list_tokens(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> R<Vec<TokenInfo>> {
    Ok(Json(c.tokens(&ctx, q.user.as_deref()).await?))
}

#[utoipa::path(post, path = "/api/v1/me/tokens", params(UserQuery), request_body = CreateTokenRequest,
    responses((status = 201, body = NewToken), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn create_token(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<UserQuery>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.create_token(&ctx, q.user.as_deref(), req).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/me/tokens/{name}", params(("name" = String, Path), UserQuery),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<StatusCode, Error> {
    c.revoke_token(&ctx, q.user.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/me/keys", params(UserQuery), responses((status = 200, body = Vec<SshKey>), (status = 404, body = ErrorBody)))]
pub(super) async fn list_keys(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> R<Vec<SshKey>> {
    Ok(Json(c.keys(&ctx, q.user.as_deref()).await?))
}

#[utoipa::path(post, path = "/api/v1/me/keys", params(UserQuery), request_body = AddKeyRequest,
    responses((status = 201, body = SshKey), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn add_key(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<UserQuery>,
    ApiJson(req): ApiJson<AddKeyRequest>,
) -> Result<(StatusCode, Json<SshKey>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.add_key(&ctx, q.user.as_deref(), req).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/me/keys/{name}", params(("name" = String, Path), UserQuery),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn remove_key(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<StatusCode, Error> {
    c.remove_key(&ctx, q.user.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/groups", responses((status = 200, body = Vec<Group>)))]
pub(super) async fn list_groups(State(c): S, Extension(ctx): X) -> R<Vec<Group>> {
    Ok(Json(c.groups(&ctx).await?))
}

#[utoipa::path(post, path = "/api/v1/groups", request_body = CreateGroupRequest,
    responses((status = 201, body = Group), (status = 409, body = ErrorBody)))]
pub(super) async fn create_group(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<CreateGroupRequest>,
) -> Result<(StatusCode, Json<Group>), Error> {
    Ok((StatusCode::CREATED, Json(c.create_group(&ctx, req).await?)))
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_group(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.delete_group(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/members", params(("name" = String, Path)), request_body = MemberRequest,
    responses((status = 200, body = Group), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn add_member(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> R<Group> {
    Ok(Json(c.add_member(&ctx, &name, req).await?))
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/members/remove", params(("name" = String, Path)), request_body = MemberRequest,
    responses((status = 200, body = Group), (status = 400, body = ErrorBody)))]
pub(super) async fn remove_member(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> R<Group> {
    Ok(Json(c.remove_member(&ctx, &name, req).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/owner", params(("name" = String, Path)), request_body = SetOwnerRequest,
    responses((status = 200, body = Vm), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_owner(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetOwnerRequest>,
) -> R<Vm> {
    Ok(Json(c.set_owner(&ctx, &name, req).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    vm: Option<String>,
    user: Option<String>,
    /// RFC 3339 time: entries at or after it.
    since: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, body = Vec<AuditEntry>), (status = 404, body = ErrorBody)))]
pub(super) async fn audit(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> R<Vec<AuditEntry>> {
    Ok(Json(c.audit(&ctx, q.vm, q.user, q.since).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct OperationsQuery {
    /// `running`, `succeeded` or `failed`.
    state: Option<TaskState>,
    /// Only this VM's.
    vm: Option<String>,
    /// At most this many, newest first (100 if absent).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/operations", params(OperationsQuery), responses((status = 200, body = OperationList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn operations(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<OperationsQuery>,
) -> R<OperationList> {
    Ok(Json(
        c.list_operations(&ctx, q.state, q.vm.as_deref(), q.limit.unwrap_or(100))
            .await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct QuotaQuery {
    /// `user:NAME`, `group:NAME` or `default`; yours when absent.
    #[param(pattern = "^(user:.*|group:.*|[^:]*)$")]
    owner: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/quotas", params(QuotaQuery), responses((status = 200, body = Quota), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show_quota(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<QuotaQuery>,
) -> R<Quota> {
    Ok(Json(c.quota_show(&ctx, q.owner.as_deref()).await?))
}

#[utoipa::path(put, path = "/api/v1/quotas/{owner}", params(("owner" = String, Path, pattern = "^(user:.*|group:.*|[^:]*)$")), request_body = QuotaLimits,
    responses((status = 200, body = Quota), (status = 403, body = ErrorBody)))]
pub(super) async fn set_quota(
    State(c): S,
    Extension(ctx): X,
    ApiPath(owner): ApiPath<String>,
    ApiJson(limits): ApiJson<QuotaLimits>,
) -> R<Quota> {
    Ok(Json(c.quota_set(&ctx, &owner, limits).await?))
}

/// Every owner with default limits of its own, `default` (everybody's) first; admins.
#[utoipa::path(get, path = "/api/v1/default-limits", responses((status = 200, body = Vec<DefaultLimits>), (status = 403, body = ErrorBody)))]
pub(super) async fn list_default_limits(State(c): S, Extension(ctx): X) -> R<Vec<DefaultLimits>> {
    Ok(Json(c.default_limits_list(&ctx).await?))
}

/// An owner's default limits and what its VMs without limits of their own get. Users
/// see their own (`user:NAME`), their groups' and `default`.
#[utoipa::path(get, path = "/api/v1/default-limits/{owner}", params(("owner" = String, Path, pattern = "^(user:.*|group:.*|[^:]*)$")),
    responses((status = 200, body = DefaultLimits), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show_default_limits(
    State(c): S,
    Extension(ctx): X,
    ApiPath(owner): ApiPath<String>,
) -> R<DefaultLimits> {
    Ok(Json(c.default_limits_show(&ctx, Some(&owner)).await?))
}

/// Sets an owner's default limits (admins), all at once as given: one left out is none,
/// `{}` removes them. Its running VMs whose limits in force change get them at once.
#[utoipa::path(put, path = "/api/v1/default-limits/{owner}", params(("owner" = String, Path, pattern = "^(user:.*|group:.*|[^:]*)$")), request_body = Limits,
    responses((status = 200, body = DefaultLimits), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_default_limits(
    State(c): S,
    Extension(ctx): X,
    ApiPath(owner): ApiPath<String>,
    ApiJson(limits): ApiJson<Limits>,
) -> R<DefaultLimits> {
    Ok(Json(c.default_limits_set(&ctx, &owner, limits).await?))
}
