//! Hosts, images and tasks, networks, pools, the doctor and the daemon's log.

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{LinesQuery, R, S, X};
use crate::error::Error;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use hostel_api::public::*;
use hostel_api::ErrorBody;

/// The hosts (admins only), each with whether its agent is connected now.
#[utoipa::path(get, path = "/api/v1/hosts", responses((status = 200, body = Vec<HostInfo>)))]
pub(super) async fn list_hosts(State(c): S, Extension(ctx): X) -> R<Vec<HostInfo>> {
    Ok(Json(c.list_hosts(&ctx).await?))
}

/// Adds a host by its agent's address (admins only).
#[utoipa::path(post, path = "/api/v1/hosts", request_body = AddHostRequest,
    responses((status = 201, body = HostInfo), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn add_host(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<AddHostRequest>,
) -> Result<(StatusCode, Json<HostInfo>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.add_remote_host(&ctx, req).await?),
    ))
}

/// Sets a host's tags (what a create's `host_tags` asks for).
#[utoipa::path(put, path = "/api/v1/hosts/{name}", params(("name" = String, Path)),
    request_body = SetHostRequest,
    responses((status = 200, body = HostInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn set_host(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetHostRequest>,
) -> R<HostInfo> {
    Ok(Json(c.set_host(&ctx, &name, req).await?))
}

/// Drains a host for maintenance (admins): no new VMs go there, its running VMs migrate
/// live to other hosts a few at a time; a task (`host-drain`) reports each VM.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/drain", params(("name" = String, Path)),
    request_body = DrainRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn drain_host(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<DrainRequest>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((
        StatusCode::ACCEPTED,
        Json(c.drain_host(&ctx, &name, req).await?),
    ))
}

/// Opens a drained host to new VMs again (admins); `return` moves its VMs back.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/undrain", params(("name" = String, Path)),
    request_body = UndrainRequest,
    responses((status = 202, body = Task), (status = 404, body = ErrorBody)))]
pub(super) async fn undrain_host(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UndrainRequest>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((
        StatusCode::ACCEPTED,
        Json(c.undrain_host(&ctx, &name, req).await?),
    ))
}

/// Plans moves that even out the hosts' memory and vCPU load (admins): the plan, and
/// unless `dry_run` the task applying it as live migrations.
#[utoipa::path(post, path = "/api/v1/rebalance", request_body = RebalanceRequest,
    responses((status = 200, body = RebalancePlan), (status = 400, body = ErrorBody)))]
pub(super) async fn rebalance(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<RebalanceRequest>,
) -> R<RebalancePlan> {
    Ok(Json(c.rebalance(&ctx, req).await?))
}

/// Removes a host with no VMs, images or pools left (admins only).
#[utoipa::path(delete, path = "/api/v1/hosts/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn remove_host(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.remove_host(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/info", responses((status = 200, body = Info)))]
pub(super) async fn info(State(c): S, Extension(ctx): X) -> R<Info> {
    Ok(Json(c.info(&ctx).await?))
}

#[utoipa::path(get, path = "/api/v1/dmesg", params(LinesQuery), responses((status = 200, body = LogLines)))]
pub(super) async fn dmesg(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<LinesQuery>,
) -> R<LogLines> {
    Ok(Json(LogLines {
        lines: c.dmesg(&ctx, q.lines.unwrap_or(50))?,
    }))
}

#[utoipa::path(get, path = "/api/v1/images", responses((status = 200, body = Vec<Image>)))]
pub(super) async fn list_images(State(c): S, Extension(ctx): X) -> R<Vec<Image>> {
    Ok(Json(c.images(&ctx).await?))
}

#[utoipa::path(post, path = "/api/v1/images/build", request_body = BuildImageRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn build_image(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<BuildImageRequest>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((StatusCode::ACCEPTED, Json(c.build_image(&ctx, req).await?)))
}

#[utoipa::path(post, path = "/api/v1/images/import", request_body = ImportImageRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn import_image(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<ImportImageRequest>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((StatusCode::ACCEPTED, Json(c.import_image(&ctx, req).await?)))
}

/// Brings a Xen guest over from its `xm`/`xl` config (see `ImportXenRequest`).
#[utoipa::path(post, path = "/api/v1/import/xen", request_body = ImportXenRequest,
    responses((status = 202, body = XenImport), (status = 200, body = XenImport, description = "a dry run"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn import_xen(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<ImportXenRequest>,
) -> Result<(StatusCode, Json<XenImport>), Error> {
    let dry = req.dry_run;
    let made = c.import_xen(&ctx, req).await?;
    let status = if dry {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(made)))
}

#[utoipa::path(delete, path = "/api/v1/images/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_image(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.delete_image(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Moves a running VM to another host while it runs (admins): checked up front, then a
/// task (`vm-migrate`) whose progress and result (the downtime) `GET /api/v1/tasks/{id}`
/// shows.
#[utoipa::path(post, path = "/api/v1/vms/{name}/migrate", params(("name" = String, Path)),
    request_body = MigrateRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(super) async fn migrate_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MigrateRequest>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((
        StatusCode::ACCEPTED,
        Json(c.migrate_vm(&ctx, &name, req).await?),
    ))
}

/// Copies an image ahead of its first use to one host (`host`) or every connected host
/// without a copy (`all`): one task per host, answered at once.
#[utoipa::path(post, path = "/api/v1/images/{name}/push", params(("name" = String, Path)),
    request_body = PushImageRequest,
    responses((status = 202, body = Vec<Task>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn push_image(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PushImageRequest>,
) -> Result<(StatusCode, Json<Vec<Task>>), Error> {
    Ok((
        StatusCode::ACCEPTED,
        Json(c.push_image(&ctx, &name, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = ErrorBody)))]
pub(super) async fn get_task(
    State(c): S,
    Extension(ctx): X,
    ApiPath(id): ApiPath<String>,
) -> R<Task> {
    Ok(Json(c.task(&ctx, &id).await?))
}

/// Cancels a task that can be cancelled (admins): a migration under way stops, and the
/// VM stays where it was unless the switch-over was already done. The task ends soon
/// after, as its `GET` shows.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", params(("id" = String, Path)),
    responses((status = 202, body = Task), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn cancel_task(
    State(c): S,
    Extension(ctx): X,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((StatusCode::ACCEPTED, Json(c.cancel_task(&ctx, &id).await?)))
}

#[utoipa::path(get, path = "/api/v1/networks", responses((status = 200, body = Vec<Network>)))]
pub(super) async fn list_networks(State(c): S, Extension(ctx): X) -> R<Vec<Network>> {
    Ok(Json(c.networks(&ctx).await?))
}

#[utoipa::path(post, path = "/api/v1/networks", request_body = CreateNetworkRequest,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "a user or group in `attach` does not exist"),
        (status = 409, body = ErrorBody)))]
pub(super) async fn create_network(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<CreateNetworkRequest>,
) -> Result<(StatusCode, Json<Network>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.create_network(&ctx, req).await?),
    ))
}

#[utoipa::path(patch, path = "/api/v1/networks/{name}", params(("name" = String, Path)),
    request_body = UpdateNetworkRequest,
    responses((status = 200, body = Network), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn update_network(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateNetworkRequest>,
) -> R<Network> {
    Ok(Json(c.update_network(&ctx, &name, req).await?))
}

#[utoipa::path(get, path = "/api/v1/networks/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
pub(super) async fn get_network(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Network> {
    Ok(Json(c.network(&ctx, &name).await?))
}

#[utoipa::path(delete, path = "/api/v1/networks/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_network(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.delete_network(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/doctor", responses((status = 200, body = DoctorReport)))]
pub(super) async fn doctor(State(c): S, Extension(ctx): X) -> R<DoctorReport> {
    Ok(Json(c.doctor(&ctx).await?))
}

#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = Vec<Pool>)))]
pub(super) async fn list_pools(State(c): S, Extension(ctx): X) -> R<Vec<Pool>> {
    Ok(Json(c.pools(&ctx).await?))
}

#[utoipa::path(post, path = "/api/v1/pools", request_body = CreatePoolRequest,
    responses((status = 201, body = Pool), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn create_pool(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<CreatePoolRequest>,
) -> Result<(StatusCode, Json<Pool>), Error> {
    Ok((StatusCode::CREATED, Json(c.create_pool(&ctx, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/pools/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Pool), (status = 404, body = ErrorBody)))]
pub(super) async fn get_pool(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Pool> {
    Ok(Json(c.pool(&ctx, &name).await?))
}

#[utoipa::path(delete, path = "/api/v1/pools/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_pool(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.delete_pool(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The controller's metrics in the Prometheus text format (admins; or, without a
/// token, on the separate address `hostel up --metrics-listen` gives).
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub(super) async fn metrics(
    State(c): S,
    Extension(ctx): X,
) -> Result<axum::response::Response, Error> {
    use axum::response::IntoResponse;
    let text = c.metrics_text(&ctx).await?;
    Ok((
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}
