//! My account: what my quota leaves, my browser sessions and API tokens (a new token's
//! secret is shown once, on the page the form answers with), my SSH keys and my password.
//! Each list and action is one API call as the session's user.

use super::fields::{done, refused, Fields};
use super::{mib, page, when, Layout};
use crate::api::seg;
use crate::session::{back, back_err, session_cookie, Flash, Form, Session};
use crate::Web;
use askama::Template;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hostel_api::public::{
    AddKeyRequest, CreateTokenRequest, NewToken, PasswordRequest, Quota, QuotaLimits, QuotaUse,
    SshKey, TokenInfo,
};
use serde_json::Value;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/account", get(show))
        .route("/account/do/{action}", post(act))
}

/// One limit of a quota against its use: "2 of 8 vCPUs left" and a meter.
pub struct QuotaLine {
    pub what: &'static str,
    pub used: u64,
    pub limit: Option<u64>,
    pub mib: bool,
}

impl QuotaLine {
    fn show(&self, v: u64) -> String {
        if self.mib {
            mib(&v)
        } else {
            v.to_string()
        }
    }
    pub fn text(&self) -> String {
        match self.limit {
            Some(l) => format!(
                "{} of {} {} left",
                self.show(l.saturating_sub(self.used)),
                self.show(l),
                self.what
            ),
            None => format!("{} {} used, no limit", self.show(self.used), self.what),
        }
    }
    /// The meter's top: the limit (a use over it fills the meter).
    pub fn max(&self) -> u64 {
        self.limit.unwrap_or(0).max(self.used).max(1)
    }
    pub fn high(&self) -> u64 {
        self.max() * 9 / 10
    }
}

/// Every limit of a quota beside what it charges, in the order people think of them.
pub fn quota_lines(l: &QuotaLimits, u: &QuotaUse) -> Vec<QuotaLine> {
    let line = |what, used, limit, mib| QuotaLine {
        what,
        used,
        limit,
        mib,
    };
    vec![
        line("vCPUs", u.vcpus, l.vcpus_total, false),
        line("memory", u.ram_mib, l.ram_total_mib, true),
        line("disk space", u.disk_mib, l.disk_total_mib, true),
        line("VMs", u.vms, l.vms_total, false),
        line("running VMs", u.vms_running, l.vms_running, false),
        line("NICs", u.nics, l.nics_total, false),
        line(
            "port forwards",
            u.port_forwards,
            l.port_forwards_total,
            false,
        ),
        line("snapshots", u.snapshots, l.snapshots_total, false),
    ]
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    layout: Layout,
    quota: Option<Quota>,
    lines: Vec<QuotaLine>,
    sessions: Vec<TokenInfo>,
    tokens: Vec<TokenInfo>,
    keys: Vec<SshKey>,
    current: String,
    /// A token just made: its secret, shown this once.
    new_token: Option<NewToken>,
    /// The token form as typed, when it is shown again.
    token_name: String,
    token_days: String,
}

impl AccountPage {
    pub fn at(&self, t: &str) -> String {
        when(t)
    }
    pub fn opt_at(&self, t: &Option<String>) -> String {
        t.as_deref().map(when).unwrap_or_else(|| "never".into())
    }
    /// A key as people recognise it: its type and comment, and the start of its data.
    pub fn key_text(&self, k: &SshKey) -> String {
        let parts: Vec<&str> = k.public_key.split_whitespace().collect();
        match parts.as_slice() {
            [kind, data, comment @ ..] => {
                let start: String = data.chars().take(16).collect();
                format!("{kind} {start}… {}", comment.join(" "))
            }
            _ => k.public_key.chars().take(40).collect(),
        }
    }
}

pub async fn show(s: Session, headers: HeaderMap) -> Response {
    let layout = Layout::new(&s, &headers, "My account", "account");
    render(&s, layout, None, String::new(), "30".into()).await
}

async fn render(
    s: &Session,
    layout: Layout,
    new_token: Option<NewToken>,
    token_name: String,
    token_days: String,
) -> Response {
    let api = &s.api;
    let (quota, tokens, keys) = tokio::join!(
        api.get::<Quota>("/api/v1/quotas"),
        api.get::<Vec<TokenInfo>>("/api/v1/me/tokens"),
        api.get::<Vec<SshKey>>("/api/v1/me/keys"),
    );
    let tokens = match tokens {
        Ok(t) => t,
        Err(e) => return super::error_page(&e),
    };
    let quota = quota.ok();
    let lines = quota
        .as_ref()
        .map(|q| quota_lines(&q.limits, &q.used))
        .unwrap_or_default();
    let (sessions, tokens): (Vec<TokenInfo>, Vec<TokenInfo>) = tokens
        .into_iter()
        .filter(|t| !t.revoked)
        .partition(|t| t.session.is_some());
    let p = AccountPage {
        quota,
        lines,
        sessions,
        tokens,
        keys: keys.unwrap_or_default(),
        current: s.me.token.clone(),
        new_token,
        token_name,
        token_days,
        layout,
    };
    page(&p.layout, &p)
}

/// One action of the account page, through the API; back to the page with what
/// happened (a new token: the page itself, with its secret).
pub async fn act(headers: HeaderMap, Path(action): Path<String>, f: Form<Fields>) -> Response {
    let Form {
        session: s,
        data: f,
    } = f;
    const HERE: &str = "/account";
    let api = &s.api;
    match action.as_str() {
        "add-key" => {
            let req = AddKeyRequest {
                name: f.get("name").into(),
                public_key: f.get("public_key").into(),
            };
            let r = api.post::<_, SshKey>("/api/v1/me/keys", &req).await;
            done(HERE, r, |k| format!("Key {} is added.", k.name))
        }
        "remove-key" => {
            let name = f.get("name");
            let r = api
                .delete::<Value>(&format!("/api/v1/me/keys/{}", seg(name)))
                .await;
            done(HERE, r, |_| format!("Key {name} is removed."))
        }
        "create-token" => {
            let days = match f.num::<u32>("expires_in_days", "Expires in (days)") {
                Ok(d) => d,
                Err(why) => return refused(HERE, why),
            };
            let req = CreateTokenRequest {
                name: f.get("name").into(),
                read_only: f.get("access") != "full",
                expires_in_days: days,
                expires_at: None,
                password: Some(f.raw("password").to_string()).filter(|p| !p.is_empty()),
            };
            match api.post::<_, NewToken>("/api/v1/me/tokens", &req).await {
                Ok(t) => {
                    let mut layout = Layout::new(&s, &HeaderMap::new(), "My account", "account");
                    layout.flash = Some(Flash::ok(format!(
                        "Token {} is made: copy its secret now, it is not shown again.",
                        t.name
                    )));
                    render(&s, layout, Some(t), String::new(), "30".into()).await
                }
                Err(e) => {
                    // Shown again as typed (but the password), with the API's reason.
                    let mut layout = Layout::new(&s, &headers, "My account", "account");
                    layout.flash = Some(Flash::err(e.message()));
                    let days = f.get("expires_in_days").to_string();
                    render(&s, layout, None, f.get("name").into(), days).await
                }
            }
        }
        "revoke-token" | "revoke-session" => {
            let name = f.get("name");
            let r = api
                .delete::<Value>(&format!("/api/v1/me/tokens/{}", seg(name)))
                .await;
            match r {
                // This browser's own session: it is logged out.
                Ok(_) if name == s.me.token => {
                    let mut r = back(
                        "/login",
                        Flash::ok("This session is revoked: you are logged out."),
                    );
                    r.headers_mut().append(
                        "set-cookie",
                        session_cookie(&headers, None).parse().expect("ASCII"),
                    );
                    r
                }
                Ok(_) if action == "revoke-session" => back(
                    HERE,
                    Flash::ok(format!(
                        "Session {name} is revoked: that browser is logged out."
                    )),
                ),
                Ok(_) => back(HERE, Flash::ok(format!("Token {name} is revoked."))),
                Err(e) => back_err(HERE, &e),
            }
        }
        "password" => {
            let (new, again) = (f.raw("password"), f.raw("password_again"));
            if new != again {
                return refused(
                    HERE,
                    "The new password and its repetition differ: nothing was changed.".into(),
                );
            }
            let req = PasswordRequest {
                password: new.into(),
                current_password: Some(f.raw("current_password").to_string())
                    .filter(|p| !p.is_empty()),
            };
            let r = api.post::<_, Value>("/api/v1/me/password", &req).await;
            done(HERE, r, |_| "Your password is changed.".into())
        }
        other => refused(HERE, format!("{other:?} is not something this page does")),
    }
}
