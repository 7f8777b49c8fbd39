//! A VM's devices: NICs, port forwards, disks and snapshots.

use super::extract::{ApiJson, ApiPath};
use super::{R, S, X};
use crate::error::Error;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use hostel_api::public::*;
use hostel_api::ErrorBody;

#[utoipa::path(get, path = "/api/v1/vms/{name}/nics", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Nic>), (status = 404, body = ErrorBody)))]
pub(super) async fn list_nics(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vec<Nic>> {
    Ok(Json(c.list_nics(&ctx, &name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/nics", params(("name" = String, Path)), request_body = NicRequest,
    responses((status = 201, body = Nic), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn add_nic(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<NicRequest>,
) -> Result<(StatusCode, Json<Nic>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.add_nic(&ctx, &name, req).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/nics/remove", params(("name" = String, Path)), request_body = RemoveNicRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn remove_nic(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RemoveNicRequest>,
) -> Result<StatusCode, Error> {
    c.remove_nic(&ctx, &name, &req.nic).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/port-forwards", params(("name" = String, Path)),
    responses((status = 200, body = Vec<PortForward>)))]
pub(super) async fn list_forwards(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vec<PortForward>> {
    Ok(Json(c.forwards(&ctx, &name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/port-forwards", params(("name" = String, Path)), request_body = PortForwardRequest,
    responses((status = 201, body = PortForward), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn add_forward(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PortForwardRequest>,
) -> Result<(StatusCode, Json<PortForward>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.add_forward(&ctx, &name, req).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/port-forwards/remove", params(("name" = String, Path)), request_body = PortForwardRequest,
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn remove_forward(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PortForwardRequest>,
) -> Result<StatusCode, Error> {
    c.remove_forward(&ctx, &name, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/disks", params(("name" = String, Path)),
    responses((status = 200, body = Vec<DiskView>), (status = 404, body = ErrorBody)))]
pub(super) async fn list_disks(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vec<DiskView>> {
    Ok(Json(c.disk_views(&ctx, &name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/disks", params(("name" = String, Path)), request_body = AddDiskRequest,
    responses((status = 201, body = DiskView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn add_disk(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<AddDiskRequest>,
) -> Result<(StatusCode, Json<DiskView>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.add_disk(&ctx, &name, req).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/disks/remove", params(("name" = String, Path)), request_body = RemoveDiskRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn remove_disk(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RemoveDiskRequest>,
) -> Result<StatusCode, Error> {
    c.remove_disk(&ctx, &name, req.disk).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/disks/resize", params(("name" = String, Path)), request_body = ResizeDiskRequest,
    responses((status = 200, body = DiskView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn resize_disk(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ResizeDiskRequest>,
) -> R<DiskView> {
    Ok(Json(c.resize_disk(&ctx, &name, req).await?))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/snapshots", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Snapshot>), (status = 404, body = ErrorBody)))]
pub(super) async fn list_snapshots(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vec<Snapshot>> {
    Ok(Json(c.snapshots(&ctx, &name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots", params(("name" = String, Path)), request_body = CreateSnapshotRequest,
    responses((status = 201, body = Snapshot), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn create_snapshot(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<Snapshot>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.create_snapshot(&ctx, &name, req).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/revert", params(("name" = String, Path)), request_body = SnapshotName,
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn revert_snapshot(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SnapshotName>,
) -> R<Vm> {
    Ok(Json(c.revert_snapshot(&ctx, &name, &req.name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/delete", params(("name" = String, Path)), request_body = SnapshotName,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn delete_snapshot(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SnapshotName>,
) -> Result<StatusCode, Error> {
    c.delete_snapshot(&ctx, &name, &req.name).await?;
    Ok(StatusCode::NO_CONTENT)
}
