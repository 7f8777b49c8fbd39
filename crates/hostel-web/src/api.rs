//! The REST API, called in-process: every page reads and acts through the same routes,
//! authorisation, throttling and audit as `hostel` and scripts, with the session's token
//! as the bearer. Nothing is checked here that the API does not check, and nothing only
//! here. Requests and answers are the public wire types (`hostel_api::public`).

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use hostel_api::ErrorBody;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use tower::ServiceExt;

/// The API as one session calls it.
#[derive(Clone)]
pub struct Api {
    router: Router,
    token: String,
    peer: SocketAddr,
}

/// A refusal or failure from the API: its status and its body, in the API's words.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn message(&self) -> &str {
        &self.body.message
    }
    pub fn unauthorized(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Encodes one path segment (a name typed by a user may hold anything).
pub use hostel_api::agent::endpoints::encode_segment as seg;

/// Encodes a query string from pairs, leaving out empty values.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", seg(v)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

impl Api {
    pub fn new(router: Router, token: String, peer: SocketAddr) -> Api {
        Api {
            router,
            token,
            peer,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> ApiResult<T> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> ApiResult<T> {
        self.call(Method::POST, path, Some(json(body))).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> ApiResult<T> {
        self.call(Method::PUT, path, Some(json(body))).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> ApiResult<T> {
        self.call(Method::PATCH, path, Some(json(body))).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> ApiResult<T> {
        self.call(Method::DELETE, path, None).await
    }

    /// The raw answer to a GET, for streams (the event stream is passed through).
    pub async fn stream(&self, path: &str) -> axum::response::Response {
        let req = self.request(Method::GET, path, None);
        match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Request<Body> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let mut req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("a request built from a path and a body");
        // The audit trail names the browser's address, as it does the CLI's.
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req
    }

    /// A POST of a stream (`body`, of `content_type`) as it arrives: an archive's upload.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Body,
    ) -> ApiResult<T> {
        let mut req = self.request(Method::POST, path, None);
        *req.body_mut() = body;
        req.headers_mut().insert(
            "content-type",
            content_type.parse().expect("a content type"),
        );
        self.answer(req, path).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> ApiResult<T> {
        let req = self.request(method, path, body);
        self.answer(req, path).await
    }

    /// Sends `req`; its answer as `T`, or the API's refusal.
    async fn answer<T: DeserializeOwned>(&self, req: Request<Body>, path: &str) -> ApiResult<T> {
        let resp = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if !status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
                error: "internal".into(),
                message: format!(
                    "the API answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
                field: None,
            });
            return Err(ApiError { status, body });
        }
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: ErrorBody {
                error: "internal".into(),
                message: format!("the API's answer to {path} did not read: {e}"),
                field: None,
            },
        })
    }
}

fn json<B: Serialize>(body: &B) -> Vec<u8> {
    serde_json::to_vec(body).expect("request bodies serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(seg("web-1"), "web-1");
        assert_eq!(seg("a/../b c"), "a%2F..%2Fb%20c");
        assert_eq!(
            query(&[("state", Some("running")), ("host", None), ("q", Some(""))]),
            "?state=running"
        );
        assert_eq!(query(&[]), "");
    }
}
