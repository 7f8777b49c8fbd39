//! Backups and backup targets.

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

#[utoipa::path(get, path = "/api/v1/backup-targets", responses((status = 200, body = Vec<BackupTarget>)))]
pub(super) async fn list_backup_targets(State(c): S, Extension(ctx): X) -> R<Vec<BackupTarget>> {
    Ok(Json(c.backup_targets(&ctx).await?))
}

#[utoipa::path(post, path = "/api/v1/backup-targets", request_body = CreateBackupTargetRequest,
    responses((status = 201, body = BackupTarget), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_backup_target(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<CreateBackupTargetRequest>,
) -> Result<(StatusCode, Json<BackupTarget>), Error> {
    Ok((
        StatusCode::CREATED,
        Json(c.create_backup_target(&ctx, req).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/backup-targets/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_backup_target(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.delete_backup_target(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/backups", params(("name" = String, Path)),
    request_body = CreateBackupRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn create_backup(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<CreateBackupRequest>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((
        StatusCode::ACCEPTED,
        Json(c.create_backup(&ctx, &name, req).await?),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BackupQuery {
    /// Only this VM's (by name).
    vm: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/backups", params(BackupQuery), responses((status = 200, body = Vec<Backup>)))]
pub(super) async fn list_backups(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<BackupQuery>,
) -> R<Vec<Backup>> {
    Ok(Json(c.backups(&ctx, q.vm.as_deref()).await?))
}

#[utoipa::path(get, path = "/api/v1/backups/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Backup), (status = 404, body = ErrorBody)))]
pub(super) async fn get_backup(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Backup> {
    Ok(Json(c.backup(&ctx, &name).await?))
}

#[utoipa::path(delete, path = "/api/v1/backups/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn delete_backup(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.delete_backup(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/backups/{name}/restore", params(("name" = String, Path)),
    request_body = RestoreBackupRequest,
    responses((status = 202, body = Task), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn restore_backup(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RestoreBackupRequest>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((
        StatusCode::ACCEPTED,
        Json(c.restore_backup(&ctx, &name, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/backup-schedule", params(("name" = String, Path)),
    responses((status = 200, body = BackupSchedule), (status = 404, body = ErrorBody)))]
pub(super) async fn get_backup_schedule(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<BackupSchedule> {
    Ok(Json(c.backup_schedule(&ctx, &name).await?))
}

#[utoipa::path(put, path = "/api/v1/vms/{name}/backup-schedule", params(("name" = String, Path)),
    request_body = BackupSchedule,
    responses((status = 200, body = BackupSchedule), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn set_backup_schedule(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<BackupSchedule>,
) -> R<BackupSchedule> {
    Ok(Json(c.set_backup_schedule(&ctx, &name, req).await?))
}

#[utoipa::path(delete, path = "/api/v1/vms/{name}/backup-schedule", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_backup_schedule(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Error> {
    c.delete_backup_schedule(&ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes the scheduled backup now (and prunes by the schedule's retention).
#[utoipa::path(post, path = "/api/v1/vms/{name}/backup-schedule/run", params(("name" = String, Path)),
    responses((status = 202, body = Task), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn run_backup_schedule(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<(StatusCode, Json<Task>), Error> {
    Ok((
        StatusCode::ACCEPTED,
        Json(c.run_backup_schedule(&ctx, &name).await?),
    ))
}
