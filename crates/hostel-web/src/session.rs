//! Browser sessions: the cookie, who it is (asked of the API), the CSRF token every
//! state-changing request carries, and the one-shot message a page shows after a form.
//!
//! The cookie holds a session token made by the API's login (with `browser`): an API token
//! that also ends after an hour idle and twelve hours after login, listed among the
//! user's tokens (with its browser) and revocable like one. It is `HttpOnly`,
//! `SameSite=Lax`, and `Secure` with the `__Host-` prefix wherever the browser treats the
//! origin as secure (HTTPS, or loopback); on plain HTTP elsewhere a browser would drop
//! such a cookie, so it is set without them there.

use crate::api::{Api, ApiError};
use crate::Web;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use hostel_api::public::WhoAmI;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;

pub const SECURE_COOKIE: &str = "__Host-hostel";
pub const PLAIN_COOKIE: &str = "hostel";
const FLASH_COOKIE: &str = "hostel-flash";

/// The logged-in user of a request, and the API as they call it.
pub struct Session {
    pub api: Api,
    pub me: WhoAmI,
    pub csrf: String,
}

/// The CSRF token of a session: derived from its secret, which the page never sees
/// (the cookie is HttpOnly), so another site can neither read nor make it.
pub fn csrf_of(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"hostel-csrf\0");
    h.update(token.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Whether the browser treats this origin as secure: HTTPS in front (a proxy says so),
/// or a loopback address.
pub fn secure_origin(headers: &HeaderMap) -> bool {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) => n,
        _ => host,
    };
    https || matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

/// The `Set-Cookie` value that stores (or, with `None`, clears) the session.
pub fn session_cookie(headers: &HeaderMap, token: Option<&str>) -> String {
    let secure = secure_origin(headers);
    let (name, attrs) = if secure {
        (SECURE_COOKIE, "; Secure")
    } else {
        (PLAIN_COOKIE, "")
    };
    match token {
        Some(t) => format!("{name}={t}; Path=/; HttpOnly; SameSite=Lax{attrs}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{attrs}"),
    }
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session token a request carries, if any.
pub fn token_of(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SECURE_COOKIE)
        .or_else(|| cookie(headers, PLAIN_COOKIE))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

pub fn peer_of(parts: &Parts) -> SocketAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Where a request that needs a login is sent: the login page, then back here.
fn to_login(parts: &Parts, ended: bool) -> Response {
    let here = if parts.method == Method::GET {
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    } else {
        // A form posted after the session ended: back to the page it came from.
        parts
            .headers
            .get("referer")
            .and_then(|r| r.to_str().ok())
            .and_then(|r| r.find("://").map(|i| &r[i + 3..]))
            .and_then(|r| r.find('/').map(|i| &r[i..]))
            .unwrap_or("/")
    };
    let mut to = format!("/login?next={}", crate::api::seg(here));
    if ended {
        to.push_str("&why=ended");
    }
    // An htmx request (a poll, a preview) is not followed to the login page into a
    // fragment: htmx is told to load it as the whole page.
    if parts.headers.contains_key("hx-request") {
        let mut r = axum::http::StatusCode::UNAUTHORIZED.into_response();
        r.headers_mut()
            .insert("hx-redirect", to.parse().expect("an ASCII path"));
        return r;
    }
    Redirect::to(&to).into_response()
}

impl<S> FromRequestParts<S> for Session
where
    Arc<Web>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let web = Arc::<Web>::from_ref(state);
        let Some(token) = token_of(&parts.headers) else {
            return Err(to_login(parts, false));
        };
        let api = Api::new(web.api.clone(), token.clone(), peer_of(parts));
        match api.get::<WhoAmI>("/api/v1/whoami").await {
            Ok(me) => Ok(Session {
                api,
                me,
                csrf: csrf_of(&token),
            }),
            Err(e) if e.unauthorized() => {
                let mut r = to_login(parts, true);
                r.headers_mut().append(
                    "set-cookie",
                    session_cookie(&parts.headers, None).parse().expect("ASCII"),
                );
                Err(r)
            }
            Err(e) => Err(Refusal::new(e.status, e.message()).into_response()),
        }
    }
}

/// A request refused before any page runs (no session, a form that does not pass):
/// its status and why. It is rendered as the error page (`pages`' `IntoResponse` for
/// it), so that this module needs nothing of the pages.
pub struct Refusal {
    pub status: axum::http::StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: axum::http::StatusCode, message: &str) -> Refusal {
        Refusal {
            status,
            message: message.to_string(),
        }
    }
}

/// Whether a request says it comes from a page of another site (its `Origin` is not
/// this `Host`). Browsers send `Origin` with every POST.
pub fn from_elsewhere(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|o| o.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    origin != "null" && origin_host != host
}

/// A form posted by a logged-in user, after its CSRF token (field `csrf` or header
/// `X-CSRF-Token`) and, when the browser sends one, its `Origin` were checked.
pub struct Form<T> {
    pub session: Session,
    pub data: T,
}

impl<S, T> FromRequest<S> for Form<T>
where
    Arc<Web>: FromRef<S>,
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let refuse =
            |why: &str| Refusal::new(axum::http::StatusCode::FORBIDDEN, why).into_response();
        if from_elsewhere(&parts.headers) {
            return Err(refuse(
                "this form was sent from another site: it was refused",
            ));
        }
        let bytes = axum::body::to_bytes(body, crate::FORM_LIMIT)
            .await
            .map_err(|_| refuse("the form is too large"))?;
        let fields: Vec<(String, String)> = serde_html_form::from_bytes(&bytes)
            .map_err(|_| refuse("the form did not read: reload the page and try again"))?;
        let sent = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                fields
                    .iter()
                    .find(|(k, _)| k == "csrf")
                    .map(|(_, v)| v.clone())
            });
        let ok = sent
            .is_some_and(|s| hostel_controller::auth::same(s.as_bytes(), session.csrf.as_bytes()));
        if !ok {
            return Err(refuse(
                "the form's CSRF token is missing or wrong (the page may be from an older \
                 session): reload the page and try again",
            ));
        }
        let data = serde_html_form::from_bytes(&bytes).map_err(|e| {
            Refusal::new(
                axum::http::StatusCode::BAD_REQUEST,
                &format!("the form did not read: {e}"),
            )
            .into_response()
        })?;
        Ok(Form { session, data })
    }
}

/// A message for the next page the browser shows (after a form's redirect): kept in a
/// short-lived cookie, shown once.
#[derive(Debug, Clone, PartialEq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Flash {
        Flash {
            ok: true,
            text: text.into(),
        }
    }
    pub fn err(text: impl Into<String>) -> Flash {
        Flash {
            ok: false,
            text: text.into(),
        }
    }

    pub fn cookie(&self) -> String {
        // A cookie holds about 4 KiB: the text is cut (at a character, with a mark) so
        // that its encoding fits.
        let mut v = crate::api::seg(&format!("{}{}", if self.ok { 'o' } else { 'e' }, self.text));
        if v.len() > 3000 {
            let (mut text, mut len) = (String::new(), 0);
            for c in self.text.chars() {
                len += crate::api::seg(c.encode_utf8(&mut [0u8; 4])).len();
                if len > 2980 {
                    break;
                }
                text.push(c);
            }
            v = crate::api::seg(&format!("{}{text}\n…", if self.ok { 'o' } else { 'e' }));
        }
        format!("{FLASH_COOKIE}={v}; Path=/; HttpOnly; SameSite=Lax; Max-Age=60")
    }

    pub fn clear_cookie() -> String {
        format!("{FLASH_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
    }

    pub fn from_headers(headers: &HeaderMap) -> Option<Flash> {
        let raw = cookie(headers, FLASH_COOKIE)?;
        let text = percent_decode(raw);
        let mut chars = text.chars();
        let ok = match chars.next()? {
            'o' => true,
            'e' => false,
            _ => return None,
        };
        Some(Flash {
            ok,
            text: chars.collect(),
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Redirects after a form (303: the browser then GETs), with a message for that page.
pub fn back(to: &str, flash: Flash) -> Response {
    let mut r = Redirect::to(to).into_response();
    r.headers_mut().append(
        "set-cookie",
        flash.cookie().parse().expect("an encoded cookie"),
    );
    r
}

/// An error from the API as a message on the page the form came from.
pub fn back_err(to: &str, e: &ApiError) -> Response {
    back(to, Flash::err(e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_round_trips_through_its_cookie() {
        let f = Flash::err("VM \"a;b\" is <running>: stop it first ✓");
        let set = f.cookie();
        let value = set.split(';').next().unwrap().to_string();
        let mut h = HeaderMap::new();
        h.insert("cookie", value.parse().unwrap());
        assert_eq!(Flash::from_headers(&h), Some(f));
    }

    #[test]
    fn a_long_flash_is_cut_to_fit_its_cookie() {
        let f = Flash::ok("vm-ä: started\n".repeat(400));
        let set = f.cookie();
        assert!(set.len() < 3200, "{}", set.len());
        let mut h = HeaderMap::new();
        h.insert("cookie", set.split(';').next().unwrap().parse().unwrap());
        let back = Flash::from_headers(&h).unwrap();
        assert!(back.text.ends_with('…') && back.text.starts_with("vm-ä: started\n"));
    }

    #[test]
    fn csrf_depends_on_the_session() {
        assert_ne!(csrf_of("hostel-a.b"), csrf_of("hostel-a.c"));
        assert_eq!(csrf_of("x").len(), 32);
    }

    #[test]
    fn the_secure_prefix_is_used_where_a_browser_keeps_it() {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        assert!(session_cookie(&h, Some("t"))
            .starts_with("__Host-hostel=t; Path=/; HttpOnly; SameSite=Lax; Secure"));
        h.insert("host", "10.0.0.1:8080".parse().unwrap());
        assert!(session_cookie(&h, Some("t")).starts_with("hostel=t;"));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(session_cookie(&h, Some("t")).contains("Secure"));
    }
}
