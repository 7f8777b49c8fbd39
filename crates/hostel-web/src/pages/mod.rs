//! The pages: one module per family. Each handler asks the API (as the session's user)
//! for what it shows, renders a template, and for a form, calls the API and redirects
//! back with the API's answer as the next page's message.

pub mod account;
pub mod admin;
pub mod archive;
pub mod create;
pub mod fields;
pub mod graphs;
pub mod login;
pub mod usage;
pub mod vm;
pub mod vms;

use crate::api::ApiError;
use crate::session::{Flash, Session};
use crate::Web;
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;

pub type W = State<Arc<Web>>;

/// Nothing from elsewhere, and no inline script or style: the pages' scripts and
/// stylesheet are files of Hostel's own.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console pages: xterm.js sets its own styles at run time.
pub const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; \
     font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// What the frame around every page shows.
pub struct Layout {
    pub title: String,
    /// The navigation entry to mark current.
    pub nav: &'static str,
    pub user: String,
    pub admin: bool,
    pub csrf: String,
    pub flash: Option<Flash>,
}

impl Layout {
    pub fn new(
        s: &Session,
        headers: &HeaderMap,
        title: impl Into<String>,
        nav: &'static str,
    ) -> Layout {
        Layout {
            title: title.into(),
            nav,
            user: s.me.user.clone(),
            admin: s.me.admin,
            csrf: s.csrf.clone(),
            flash: shown_flash(headers),
        }
    }

    /// A page for someone not logged in.
    pub fn anonymous(headers: &HeaderMap, title: impl Into<String>) -> Layout {
        Layout {
            title: title.into(),
            nav: "",
            user: String::new(),
            admin: false,
            csrf: String::new(),
            flash: shown_flash(headers),
        }
    }
}

/// The one-shot message for a page the browser shows as a page: a poll or a preview
/// (htmx, not boosted) neither shows nor spends it.
fn shown_flash(headers: &HeaderMap) -> Option<Flash> {
    let fragment = headers.contains_key("hx-request") && !headers.contains_key("hx-boosted");
    if fragment {
        None
    } else {
        Flash::from_headers(headers)
    }
}

/// Renders a page with its security headers; a message shown is cleared.
pub fn page<T: Template>(layout: &Layout, t: &T) -> Response {
    render(StatusCode::OK, layout, t, CSP)
}

pub fn render<T: Template>(status: StatusCode, layout: &Layout, t: &T, csp: &str) -> Response {
    let body = match t.render() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("rendering {}: {e}", layout.title);
            return (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render").into_response();
        }
    };
    let mut r = (
        status,
        [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", csp),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "same-origin"),
        ],
        body,
    )
        .into_response();
    if layout.flash.is_some() {
        r.headers_mut()
            .append("set-cookie", Flash::clear_cookie().parse().expect("ASCII"));
    }
    r
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    status: u16,
    message: &'a str,
}

/// A page that only says what went wrong (an API error the page cannot show in place).
pub fn error_page(e: &ApiError) -> Response {
    refusal(e.status, e.message())
}

pub fn refusal(status: StatusCode, message: &str) -> Response {
    let p = ErrorPage {
        status: status.as_u16(),
        message,
        layout: Layout {
            title: format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            nav: "",
            user: String::new(),
            admin: false,
            csrf: String::new(),
            flash: None,
        },
    };
    render(status, &p.layout, &p, CSP)
}

impl IntoResponse for crate::session::Refusal {
    fn into_response(self) -> Response {
        refusal(self.status, &self.message)
    }
}

pub async fn not_found(uri: Uri) -> Response {
    refusal(
        StatusCode::NOT_FOUND,
        &format!("there is no page at {}", uri.path()),
    )
}

pub async fn home() -> Redirect {
    Redirect::to("/vms")
}

/// The live VM changes, as the API streams them to this session's user (the page's
/// script follows them; see `assets/app.js`).
pub async fn events(s: Session) -> Response {
    s.api.stream("/api/v1/events").await
}

/// Formats MiB as people read it.
pub fn mib(v: &u64) -> String {
    let v = *v;
    if v >= 1024 && v.is_multiple_of(1024) {
        format!("{} GiB", v / 1024)
    } else if v >= 1024 {
        format!("{:.1} GiB", v as f64 / 1024.0)
    } else {
        format!("{v} MiB")
    }
}

/// A timestamp as `2026-12-02 21:04 UTC`.
pub fn when(t: &str) -> String {
    if t.len() >= 16 && t.as_bytes()[10] == b'T' {
        format!("{} {} UTC", &t[..10], &t[11..16])
    } else {
        t.to_string()
    }
}
