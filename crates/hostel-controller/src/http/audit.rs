//! The audit trail's retention: how long entries stay in the database, and pruning it
//! now (admins).

use super::extract::ApiJson;
use super::{R, S, X};
use axum::extract::State;
use axum::Extension;
use axum::Json;
use hostel_api::public::{AuditPruneReport, AuditRetention};

/// The audit trail's retention (admins): entries older than `days` are removed every
/// hour, those of changes that were not refused exported to the archive first.
#[utoipa::path(get, path = "/api/v1/audit/retention", responses((status = 200, body = AuditRetention)))]
pub(super) async fn audit_retention(State(c): S, Extension(ctx): X) -> R<AuditRetention> {
    Ok(Json(c.audit_retention(&ctx).await?))
}

/// Sets the audit trail's retention (admins); `days: null` keeps entries for ever.
#[utoipa::path(put, path = "/api/v1/audit/retention", request_body = AuditRetention,
    responses((status = 200, body = AuditRetention)))]
pub(super) async fn set_audit_retention(
    State(c): S,
    Extension(ctx): X,
    ApiJson(r): ApiJson<AuditRetention>,
) -> R<AuditRetention> {
    Ok(Json(c.set_audit_retention(&ctx, r).await?))
}

/// Applies the retention now (admins): exports, then removes, the entries older than it.
#[utoipa::path(post, path = "/api/v1/audit/prune", responses((status = 200, body = AuditPruneReport)))]
pub(super) async fn prune_audit(State(c): S, Extension(ctx): X) -> R<AuditPruneReport> {
    Ok(Json(c.prune_audit(&ctx).await?))
}
