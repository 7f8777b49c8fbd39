//! Extractors that answer a request they cannot read with the API's JSON error body
//! (`hostel_api::ErrorBody`) instead of axum's plain-text rejections: a bad path
//! parameter, query string or JSON body is a 400 `invalid` naming the field when it can,
//! a body that is not JSON a 415, and a websocket route reached without the upgrade
//! headers a 400 (or 426).
//!
//! Each wraps the axum extractor of the same name: `ApiJson(req): ApiJson<T>` where a
//! handler had `ApiJson(req): ApiJson<T>`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hostel_api::ErrorBody;
use serde::de::DeserializeOwned;

/// A request the extractors could not read: its status and the JSON error body.
#[derive(Debug)]
pub struct Unreadable {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl Unreadable {
    fn new(status: StatusCode, what: &str, text: String) -> Self {
        let field = field_of(&text);
        // Server-side failures keep their status, and so do a body too large, of the
        // wrong type, or a websocket route asked over a connection that cannot upgrade;
        // anything else is a request that does not fit.
        let status = match status {
            s if s.is_server_error() => s,
            StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UPGRADE_REQUIRED => status,
            _ => StatusCode::BAD_REQUEST,
        };
        let code = if status.is_server_error() {
            "internal"
        } else {
            "invalid"
        };
        Unreadable {
            status,
            body: ErrorBody {
                error: code.into(),
                message: format!("{what}: {text}"),
                field,
            },
        }
    }
}

impl IntoResponse for Unreadable {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The field serde named in its message (`name: invalid type ...` or
/// `missing field \`name\``), if it did.
fn field_of(text: &str) -> Option<String> {
    if let Some(rest) = text.split("missing field `").nth(1) {
        return rest.split('`').next().map(String::from);
    }
    if let Some(rest) = text.split("unknown field `").nth(1) {
        return rest.split('`').next().map(String::from);
    }
    // "Failed to deserialize ...: PATH: message": PATH is a dotted field path.
    let mut parts = text.splitn(3, ": ");
    let (_, path, _) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = !path.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.[]".contains(&b));
    ok.then(|| path.to_string())
}

impl From<JsonRejection> for Unreadable {
    fn from(r: JsonRejection) -> Self {
        let what = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "the body must be JSON, sent with `Content-Type: application/json`"
            }
            _ => "the JSON body does not fit",
        };
        Unreadable::new(r.status(), what, r.body_text())
    }
}

impl From<QueryRejection> for Unreadable {
    fn from(r: QueryRejection) -> Self {
        Unreadable::new(r.status(), "the query string does not fit", r.body_text())
    }
}

impl From<PathRejection> for Unreadable {
    fn from(r: PathRejection) -> Self {
        Unreadable::new(r.status(), "the path does not fit", r.body_text())
    }
}

impl From<WebSocketUpgradeRejection> for Unreadable {
    fn from(r: WebSocketUpgradeRejection) -> Self {
        Unreadable::new(
            r.status(),
            "this route is a websocket: connect with a websocket client",
            r.body_text(),
        )
    }
}

/// `axum::Json`, with rejections as JSON errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Unreadable;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(mut v) = Json::<serde_json::Value>::from_request(req, state).await?;
        // Every request body the API takes is an object; serde would also read a struct
        // from an array of its fields, which the document does not allow.
        if !v.is_object() {
            return Err(Unreadable::new(
                StatusCode::BAD_REQUEST,
                "the JSON body does not fit",
                "the body must be a JSON object".into(),
            ));
        }
        integers(&mut v);
        let bytes = serde_json::to_vec(&v).map_err(|e| {
            Unreadable::new(
                StatusCode::BAD_REQUEST,
                "the JSON body does not fit",
                e.to_string(),
            )
        })?;
        let Json(v) = Json::<T>::from_bytes(&bytes)?;
        Ok(ApiJson(v))
    }
}

/// JSON Schema's integers include `1.0`: makes integral numbers integers for serde. And
/// every integer the document gives is an int64: a larger one is made a float, which an
/// integer field refuses (and a field the request type does not have ignores).
fn integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    *n = (f as i64).into();
                }
            } else if let Some(u) = n.as_u64().filter(|u| *u > i64::MAX as u64) {
                if let Some(f) = serde_json::Number::from_f64(u as f64) {
                    *n = f;
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integers),
        Value::Object(fields) => fields.values_mut().for_each(integers),
        _ => {}
    }
}

/// `axum::extract::Query`, with rejections as JSON errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Unreadable;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// `axum::extract::Path`, with rejections as JSON errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Unreadable;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// `WebSocketUpgrade`, with rejections as JSON errors.
pub struct ApiWebSocket(pub WebSocketUpgrade);

impl<S> FromRequestParts<S> for ApiWebSocket
where
    S: Send + Sync,
{
    type Rejection = Unreadable;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiWebSocket(
            WebSocketUpgrade::from_request_parts(parts, state).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_fields_are_named() {
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: memory_mib: invalid type: string \"x\", expected u64 at line 1 column 20").as_deref(),
            Some("memory_mib")
        );
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: missing field `name` at line 1 column 2").as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of(
                "Failed to deserialize query string: limit: cannot parse integer from empty string"
            )
            .as_deref(),
            Some("limit")
        );
        assert_eq!(
            field_of("Expected request with `Content-Type: application/json`"),
            None
        );
    }

    #[test]
    fn integral_numbers_are_integers_up_to_int64() {
        let mut v = serde_json::json!({"a": 56.0, "b": [1.5, -3.0], "c": {"d": 7}});
        integers(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": 56, "b": [1.5, -3], "c": {"d": 7}})
        );
        let mut big = serde_json::json!({"vms_total": 9223372036854775808u64});
        integers(&mut big);
        assert!(big["vms_total"].is_f64());
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Limits {
            vms_total: u64,
        }
        assert!(serde_json::from_value::<Limits>(big).is_err());
    }
}
