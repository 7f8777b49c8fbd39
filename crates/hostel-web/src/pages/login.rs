//! Logging in and out. A login makes a session token (the API's login with `browser`):
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

/// Only a path on this site is a place to go after login (never another site): it
/// starts with one `/`, and holds only characters a URL path and query keep as they are
/// (browsers drop tabs and newlines, so `/\t/evil.example` would lead away).
fn safe_next(next: Option<&str>) -> String {
    let plain = |n: &str| {
        n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~%?&=+,:@!$'()*;".contains(&b))
    };
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && plain(n) => n.into(),
        _ => "/vms".into(),
    }
}

pub async fn form(headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let mut layout = Layout::anonymous(&headers, "Log in");
    // A code, never text from the link: the login page says only what Hostel says.
    if q.why.as_deref() == Some("ended") {
        layout.flash = Some(Flash::err(
            "Your session has ended (logged out, revoked, an hour unused, or twelve hours \
             old): log in again.",
        ));
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
    // Another site may not log this browser in (to an account of its choosing).
    if crate::session::from_elsewhere(&headers) {
        return super::refusal(
            StatusCode::FORBIDDEN,
            "this login was sent from another site: it was refused",
        );
    }
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
    // Through the API's login, as the CLI's: the same checks, lock-out and audit.
    let api = crate::api::Api::new(web.api.clone(), String::new(), peer);
    let req = hostel_api::public::LoginRequest {
        user: f.user.clone(),
        password: f.password,
        token_name: None,
        expires_in_days: None,
        browser: Some(client.to_string()),
    };
    match api
        .post::<_, hostel_api::public::NewToken>("/api/v1/login", &req)
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
            let layout = Layout::anonymous(&HeaderMap::new(), "Log in");
            let p = LoginPage {
                next,
                user: f.user,
                error: Some(e.message().to_string()),
                layout,
            };
            super::render(e.status, &p.layout, &p, super::CSP)
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

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn after_login_only_paths_of_this_site() {
        assert_eq!(safe_next(Some("/vms/web?x=1&y=%20")), "/vms/web?x=1&y=%20");
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\\evil",
            "https://evil.example",
            "/a\nb",
            "/ x",
            "vms",
        ] {
            assert_eq!(safe_next(Some(bad)), "/vms", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/vms");
    }
}
