//! A VM's archive: downloaded from its page (`hostel export`), uploaded on the create
//! page (`hostel import-vm`). Both pass the bytes through to the API as they come; the
//! upload is sent by `assets/app.js` with its progress shown, and carries the CSRF
//! token in its header.

use crate::api::{query, seg};
use crate::session::{back, from_elsewhere, Flash, Session};
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use hostel_api::public::ImportedVm;
use serde::Deserialize;

/// Streams the VM's archive to the browser, or goes back to its page saying why not.
pub async fn export(s: Session, Path(name): Path<String>) -> Response {
    let resp = s
        .api
        .stream(&format!("/api/v1/vms/{}/export", seg(&name)))
        .await;
    if resp.status().is_success() {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let why = serde_json::from_slice::<hostel_api::ErrorBody>(&bytes)
        .map(|e| e.message)
        .unwrap_or_else(|_| "the export failed".into());
    back(&format!("/vms/{}", seg(&name)), Flash::err(why))
}

#[derive(Deserialize)]
pub struct ImportForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    start: Option<String>,
}

/// Where the page sent by `app.js` goes next (`to`), the message for it set as the one
/// flash: a redirect would be followed by the upload's request itself, which would show
/// the message and spend it.
fn go(to: &str, flash: Flash) -> Response {
    let mut r = axum::Json(serde_json::json!({ "to": to })).into_response();
    r.headers_mut().append(
        "set-cookie",
        flash.cookie().parse().expect("an encoded cookie"),
    );
    r
}

/// Makes the VM of an uploaded archive; then its page, else the create page, says how
/// it went.
pub async fn import(
    s: Session,
    headers: HeaderMap,
    Query(f): Query<ImportForm>,
    body: Body,
) -> Response {
    const HERE: &str = "/vms/new";
    let csrf_ok = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| hostel_controller::auth::same(t.as_bytes(), s.csrf.as_bytes()));
    if from_elsewhere(&headers) || !csrf_ok {
        return go(
            HERE,
            Flash::err(
                "the upload's CSRF token is missing or wrong: reload the page and try again",
            ),
        );
    }
    let start = f.start.is_some().then_some("true");
    let path = format!(
        "/api/v1/import/vm{}",
        query(&[("name", Some(f.name.trim())), ("start", start)])
    );
    match s
        .api
        .upload::<ImportedVm>(&path, "application/octet-stream", body)
        .await
    {
        Ok(made) => {
            let mut said = format!("VM {} is imported.", made.vm.name);
            for n in &made.notes {
                said.push_str(&format!(" {n}."));
            }
            go(&format!("/vms/{}", seg(&made.vm.name)), Flash::ok(said))
        }
        Err(e) => go(HERE, Flash::err(e.message())),
    }
}
