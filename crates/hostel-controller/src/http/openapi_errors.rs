//! The error responses every operation of the OpenAPI document shares, added in one
//! place: each with the JSON error body (`ErrorBody`) and a description of when it
//! happens. What only some routes answer (409, 429, 503, 504, ...) stays on their
//! `#[utoipa::path]` annotations; this fills in those responses' descriptions and body
//! where the annotation left them out.
//!
//! - 400 where the request has a path parameter, a query string or a body (the
//!   extractors of `http_extract` answer a request they cannot read with it);
//! - 401 and 403 on every route that takes a token (all but `PUBLIC`): the token is
//!   missing or wrong; the token is read-only, or the caller is not allowed;
//! - 404 where a path parameter names something;
//! - 413 and 415 where there is a JSON body: too large, or not sent as JSON;
//! - 429 everywhere, with `Retry-After`: a request without a valid token from an address
//!   refused too often (`throttle.rs`);
//! - 500 everywhere: the server failed (a database error, say).
//!
//! `PUBLIC` routes also get `security: []`: they take no token.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};

/// Routes that take no token.
pub const PUBLIC: &[&str] = &["/api/v1/login"];

/// When each standard status is answered.
fn description(status: &str) -> Option<&'static str> {
    Some(match status {
        "400" => {
            "invalid: a parameter or the body does not fit (the `field` names it), or the \
             request is not possible as asked"
        }
        "401" => "unauthorized: the bearer token is missing, wrong, expired or revoked",
        "403" => {
            "forbidden: the token is read-only, or the caller is not allowed to do this \
             (only admins may)"
        }
        "404" => "not-found: what the path names does not exist (or is not the caller's)",
        "409" => "conflict: the state of what is named does not allow it, or the name is taken",
        "413" => "invalid: the body is too large (over 256 KiB)",
        "415" => "invalid: the body must be JSON, sent with `Content-Type: application/json`",
        "426" => "invalid: the connection cannot be upgraded to a websocket",
        "429" => {
            "rate-limited: too many refused requests or failed logins from this address (or \
             from all addresses together), or too many wrong passwords for this user; try \
             again after the seconds the `Retry-After` header gives. Requests with a valid \
             token are not limited"
        }
        "500" => "internal: the server failed (the message says how)",
        "502" => "the host's agent answered something the controller could not read",
        "503" => {
            "unavailable: the host that would do it has no connected agent; or, for what \
             takes disk space (a VM, a disk, a resize, a snapshot, an image, a save), the \
             data filesystem is under its free-space floor (`hostel up --min-free-space`)"
        }
        "504" => "the guest did not do it in time",
        _ => return None,
    })
}

fn error_response(status: &str) -> Response {
    let mut response = ResponseBuilder::new()
        .description(description(status).unwrap_or("error"))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        );
    if status == "429" {
        response = response.header("Retry-After", retry_after());
    }
    response.build()
}

/// The `Retry-After` header of a 429: whole seconds to wait.
fn retry_after() -> utoipa::openapi::header::Header {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    utoipa::openapi::header::HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        )
        .description(Some("Seconds to wait before trying again."))
        .build()
}

/// Adds the standard error responses to every operation.
pub struct StandardErrors;

impl utoipa::Modify for StandardErrors {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = PUBLIC.contains(&path.as_str());
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_errors(op, public);
            }
        }
    }
}

fn add_errors(op: &mut Operation, public: bool) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
    let has_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
    let has_body = op.request_body.is_some();
    // Any request may be answered 429: without a valid token, once its address has
    // been refused too often.
    let mut statuses = vec!["500", "429"];
    if has_path || has_query || has_body {
        statuses.push("400");
    }
    if has_path {
        statuses.push("404");
    }
    if has_body {
        statuses.extend(["413", "415"]);
    }
    if public {
        op.security = Some(Vec::new());
    } else {
        statuses.extend(["401", "403"]);
    }
    let responses = &mut op.responses.responses;
    for status in statuses {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(error_response(status)));
    }
    // Error statuses an annotation gave without words or body get the standard ones.
    for (status, r) in responses.iter_mut() {
        let RefOr::T(r) = r else { continue };
        let is_error = status.starts_with('4') || status.starts_with('5');
        if !is_error {
            continue;
        }
        let standard = error_response(status);
        if r.description.is_empty() {
            r.description = standard.description;
        }
        if r.content.is_empty() {
            r.content = standard.content;
        }
        if r.headers.is_empty() {
            r.headers = standard.headers;
        }
    }
}
