//! VMs: list, create, describe, delete, lifecycle actions, sizes, save and restore, leases.

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{R, S, X};
use crate::error::Error;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use hostel_api::public::*;
use hostel_api::ErrorBody;
use hostel_model::Op;
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
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
    /// Only the VMs whose name or an IP address of whose holds this text.
    #[param(max_length = 253)]
    q: Option<String>,
    /// Only the VMs of this owner: `user:NAME` or `group:NAME`.
    #[param(pattern = "^(user|group):.*$")]
    owner: Option<String>,
}

/// The VMs the caller may operate, in name order, a page at a time: when more follow, the
/// `Link` header has the next page's address (`rel="next"`).
#[utoipa::path(get, path = "/api/v1/vms", params(ListQuery),
    responses((status = 200, body = Vec<VmSummary>,
        headers(("Link" = String, description = "`<URL>; rel=\"next\"` when another page follows"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_vms(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Error> {
    let limit = q.limit.unwrap_or(crate::vms::MAX_PAGE);
    let (vms, next) = c
        .list_vms(
            &ctx,
            limit,
            q.after.as_deref(),
            &crate::vms::VmFilter {
                host: q.host.as_deref(),
                state: q.state.as_deref(),
                search: q.q.as_deref(),
                owner: q.owner.as_deref(),
            },
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
            if let Some(t) = &q.q {
                p.append_pair("q", t);
            }
            if let Some(o) = &q.owner {
                p.append_pair("owner", o);
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
pub(super) async fn create_vm(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> Result<(StatusCode, Json<Vm>), Error> {
    Ok((StatusCode::CREATED, Json(c.create_vm(&ctx, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
pub(super) async fn get_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vm> {
    let vm = c.vm_named(&ctx, &name).await?;
    Ok(Json(c.view(&vm, true).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatsQuery {
    /// `hour` (the default: a point per sampling interval) or `day` (a point per
    /// minute, the average of its samples).
    #[param(pattern = "^(hour|day)$")]
    range: Option<String>,
}

/// The VM's CPU, memory, disk and network use over the last hour or day (oldest first),
/// for graphs. Kept in the controller's memory only.
#[utoipa::path(get, path = "/api/v1/vms/{name}/stats", params(("name" = String, Path), StatsQuery),
    responses((status = 200, body = VmStats), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn vm_stats(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> R<VmStats> {
    let range = match q.range.as_deref() {
        None => crate::StatsRange::Hour,
        Some(r) => r.parse()?,
    };
    Ok(Json(c.vm_stats(&ctx, &name, range).await?))
}

/// Every VM the caller may see, with its latest use (the last sampling interval's):
/// what `hostel top` shows.
#[utoipa::path(get, path = "/api/v1/usage", responses((status = 200, body = [VmUsage])))]
pub(super) async fn usage(State(c): S, Extension(ctx): X) -> R<Vec<VmUsage>> {
    Ok(Json(c.usage_now(&ctx).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteQuery {
    /// Admins only: keep the VM's disk files and save file (their paths come back); they
    /// are no longer Hostel's, and no quota charges them.
    #[serde(default)]
    keep_disks: bool,
}

#[utoipa::path(delete, path = "/api/v1/vms/{name}", params(("name" = String, Path), DeleteQuery),
    responses((status = 200, body = Vec<String>, description = "paths of kept disk files"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn delete_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> R<Vec<String>> {
    Ok(Json(c.delete_vm_keeping(&ctx, &name, q.keep_disks).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/start", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn start_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vm> {
    Ok(Json(c.start_vm(&ctx, &name).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/reboot", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn reboot_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vm> {
    Ok(Json(c.simple_action(&ctx, &name, Op::Reboot).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/pause", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn pause_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vm> {
    Ok(Json(c.simple_action(&ctx, &name, Op::Pause).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/unpause", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn unpause_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vm> {
    Ok(Json(c.simple_action(&ctx, &name, Op::Unpause).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/destroy", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn destroy_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> R<Vm> {
    Ok(Json(c.simple_action(&ctx, &name, Op::Destroy).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/shutdown", params(("name" = String, Path)),
    request_body = ShutdownRequest,
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody), (status = 504, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn shutdown_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ShutdownRequest>,
) -> R<Vm> {
    Ok(Json(c.shutdown_vm(&ctx, &name, req).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/memory", params(("name" = String, Path)),
    request_body = MemSetRequest, responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn mem_set(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MemSetRequest>,
) -> R<Vm> {
    Ok(Json(c.mem_set(&ctx, &name, req.memory_mib).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/vcpus", params(("name" = String, Path)),
    request_body = VcpuSetRequest, responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn vcpu_set(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<VcpuSetRequest>,
) -> R<Vm> {
    Ok(Json(c.vcpu_set(&ctx, &name, req.vcpus).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/save", params(("name" = String, Path)),
    request_body = SaveRequest, responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn save_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SaveRequest>,
) -> R<Vm> {
    Ok(Json(c.save_vm(&ctx, &name, req.path).await?))
}

#[utoipa::path(post, path = "/api/v1/restore", request_body = RestoreRequest,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn restore_vm(
    State(c): S,
    Extension(ctx): X,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> R<Vm> {
    Ok(Json(c.restore_vm(&ctx, req.path).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/renew", params(("name" = String, Path)), request_body = RenewRequest,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn renew_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> R<Vm> {
    Ok(Json(c.renew(&ctx, &name, req).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/cpu-model", params(("name" = String, Path)), request_body = SetCpuModelRequest,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn set_cpu_model(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetCpuModelRequest>,
) -> R<Vm> {
    Ok(Json(c.set_cpu_model(&ctx, &name, req).await?))
}

/// Live changes to the caller's VMs, as server-sent events: each event's `data` is a
/// `VmEvent` (JSON). `changed` carries the VM's summary as it is now; `gone` a VM that
/// left the caller's view; `resync` asks the client to read the list again. A comment
/// line every 15 s keeps proxies from closing an idle stream.
#[utoipa::path(get, path = "/api/v1/events",
    responses((status = 200, description = "a stream of server-sent events, each one's data a VmEvent", content_type = "text/event-stream", body = VmEvent)))]
pub(super) async fn events(State(c): S, Extension(ctx): X) -> Result<Response, Error> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let stream = c.vm_events(ctx).await?.map(|e| {
        let name = match &e {
            VmEvent::Changed { .. } => "changed",
            VmEvent::Gone { .. } => "gone",
            VmEvent::Console { .. } => "console",
            VmEvent::Resync => "resync",
        };
        Event::default().event(name).json_data(&e)
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// Sets the VM's resource limits (admins), all at once as given: a limit left out is
/// none, `{}` removes them all. A running VM gets them at once.
#[utoipa::path(put, path = "/api/v1/vms/{name}/limits", params(("name" = String, Path)),
    request_body = Limits, responses((status = 200, body = Vm), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn set_limits(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<Limits>,
) -> R<Vm> {
    Ok(Json(c.set_limits(&ctx, &name, req).await?))
}

/// A stopped VM as one archive (`application/x-tar`): its definition, each disk standing
/// alone, and their SHA-256 (`hostel export`). `hostel import-vm` (`POST
/// /api/v1/import/vm`) makes it again on another installation.
#[utoipa::path(get, path = "/api/v1/vms/{name}/export", params(("name" = String, Path)),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn export_vm(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, Error> {
    let e = c.export_vm(&ctx, &name).await?;
    let disposition = format!("attachment; filename=\"{}\"", e.file_name);
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-tar".to_string(),
            ),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(e.bytes),
    )
        .into_response())
}

/// Makes the VM of an archive `hostel export` wrote (the body: the tar's bytes), as
/// a create would: charged to your quota, on this installation's networks. Its disks are
/// stored as they arrive; every SHA-256 is checked at the end, and on any failure the VM
/// is removed again.
#[utoipa::path(post, path = "/api/v1/import/vm", params(ImportVmQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ImportedVm), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(super) async fn import_vm(
    State(c): S,
    Extension(ctx): X,
    ApiQuery(q): ApiQuery<ImportVmQuery>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<ImportedVm>), Error> {
    let made = c.import_vm(&ctx, q, body.into_data_stream()).await?;
    Ok((StatusCode::CREATED, Json(made)))
}
