//! Logging in and out. A login makes a session token (`Controller::login_session`):
//! failures count towards the same lock-out as the CLI's, and the audit trail has
//! each attempt. After a login the browser goes to the page it asked for.

use super::{page, Layout, W};
use crate::session::{self, back, peer_of, session_cookie, Flash, Form};
use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
    why: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    next: String,
    user: String,
    error: Option<String>,
}

/// Only a path on this site is a place to go after login (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/vms".into(),
    }
}

pub async fn form(headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let mut layout = Layout::anonymous(&headers, "Log in");
    if let Some(why) = q.why {
        layout.flash = Some(Flash::err(why));
    }
    let p = LoginPage {
        next: safe_next(q.next.as_deref()),
        user: String::new(),
        error: None,
        layout,
    };
    page(&p.layout, &p)
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

pub async fn submit(State(web): W, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers.clone();
    let peer = peer_of(&parts);
    let bytes = match axum::body::to_bytes(body, crate::FORM_LIMIT).await {
        Ok(b) => b,
        Err(_) => return super::refusal(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"),
    };
    let Ok(f) = serde_html_form::from_bytes::<LoginForm>(&bytes) else {
        return super::refusal(StatusCode::BAD_REQUEST, "give a user name and a password");
    };
    let next = safe_next(f.next.as_deref());
    let client = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(browser_name)
        .unwrap_or("a browser");
    let source = peer.ip().to_string();
    match web
        .c
        .login_session(&f.user, &f.password, &source, client)
        .await
    {
        Ok(t) => {
            let mut r = Redirect::to(&next).into_response();
            r.headers_mut().append(
                "set-cookie",
                session_cookie(&headers, Some(&t.token))
                    .parse()
                    .expect("ASCII"),
            );
            r
        }
        Err(e) => {
            let status = match e {
                hostel_controller::error::Error::RateLimited { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                _ => StatusCode::UNAUTHORIZED,
            };
            let layout = Layout::anonymous(&HeaderMap::new(), "Log in");
            let p = LoginPage {
                next,
                user: f.user,
                error: Some(e.message()),
                layout,
            };
            super::render(status, &p.layout, &p, super::CSP)
        }
    }
}

/// A short name for the browser a session was made from, for the sessions list.
fn browser_name(ua: &str) -> &'static str {
    let has = |s: &str| ua.contains(s);
    if has("Firefox/") {
        "Firefox"
    } else if has("Edg/") {
        "Edge"
    } else if has("Chrome/") || has("HeadlessChrome/") {
        "Chromium"
    } else if has("Safari/") {
        "Safari"
    } else if has("curl/") {
        "curl"
    } else {
        "a browser"
    }
}

/// Ends the session on the server (its token is revoked), then forgets the cookie.
pub async fn logout(headers: HeaderMap, f: Form<serde::de::IgnoredAny>) -> Response {
    let s = f.session;
    let path = format!("/api/v1/me/tokens/{}", crate::api::seg(&s.me.token));
    let result = s.api.delete::<serde_json::Value>(&path).await;
    let mut r = match result {
        Ok(_) => back("/login", Flash::ok("You are logged out.")),
        Err(e) => session::back_err("/login", &e),
    };
    r.headers_mut().append(
        "set-cookie",
        session_cookie(&headers, None).parse().expect("ASCII"),
    );
    r
}
