//! The one place a domain error becomes an HTTP status and the JSON body every error
//! has (`hostel_api::ErrorBody`).

use crate::error::Error;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hostel_api::ErrorBody;

/// The error's message, kept on the response for the audit trail.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

/// The status and the stable code of each kind of error.
pub fn status_and_code(e: &Error) -> (StatusCode, &'static str) {
    match e {
        Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not-found"),
        Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
        Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
        // Bad input as far as the caller can tell: the request asks for more than the
        // owner may have.
        Error::Quota(_) => (StatusCode::BAD_REQUEST, "quota"),
        Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Error::Agent { .. } => (StatusCode::BAD_GATEWAY, "agent"),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

pub fn body(e: &Error) -> ErrorBody {
    let (_, code) = status_and_code(e);
    let field = match e {
        Error::Invalid { field, .. } => Some(field.clone()),
        Error::Conflict { field, .. } => field.clone(),
        Error::Quota(_) => Some("quota".into()),
        _ => None,
    };
    ErrorBody {
        error: code.into(),
        message: e.message(),
        field,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, _) = status_and_code(&self);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("internal error: {self:#}");
        }
        let body = body(&self);
        let message = body.message.clone();
        let mut resp = (status, Json(body)).into_response();
        resp.extensions_mut().insert(ErrorMessage(message));
        if let Error::RateLimited {
            retry_after_secs, ..
        } = self
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after_secs.into());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status_and_a_json_body() {
        let cases = [
            (Error::not_found("vm", "a", "no VM a"), 404, "not-found"),
            (Error::conflict_field("name", "taken"), 409, "conflict"),
            (Error::invalid("memory", "too small"), 400, "invalid"),
            (Error::forbidden("no"), 403, "forbidden"),
            (Error::Unauthorized("who?".into()), 401, "unauthorized"),
            (Error::rate_limited("wait", 2), 429, "rate-limited"),
            (Error::Quota("over".into()), 400, "quota"),
            (Error::unavailable("later"), 503, "unavailable"),
            (Error::Timeout("slow".into()), 504, "timeout"),
            (
                Error::Agent {
                    host: None,
                    message: "broke".into(),
                },
                502,
                "agent",
            ),
            (Error::internal("bug"), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let b = body(&e);
            assert_eq!(status_and_code(&e).0.as_u16(), status, "{e}");
            assert_eq!(b.error, code);
            assert!(!b.message.is_empty());
        }
        // A state that does not allow the operation is a conflict, by its type.
        let e: Error = hostel_model::Op::Pause
            .check(hostel_model::VmState::Stopped)
            .unwrap_err()
            .into();
        assert_eq!(status_and_code(&e).0, StatusCode::CONFLICT);
        assert_eq!(body(&e).field.as_deref(), Some("state"));
    }

    #[test]
    fn a_rate_limit_says_when_to_try_again() {
        let resp = Error::rate_limited("too many", 7).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "7");
    }
}
