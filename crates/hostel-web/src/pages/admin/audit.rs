//! The audit trail, newest first: filtered by user, VM and time by the API, and by
//! result here; at most `SHOWN` rows, with a note when there are more.

use super::super::{error_page, page, when, Layout};
use crate::api::query;
use crate::session::Session;
use askama::Template;
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::response::Response;
use hostel_api::public::{AuditEntry, Operation, OperationList};
use serde::Deserialize;

/// The most rows the page shows.
pub const SHOWN: usize = 500;
/// The most entries the API answers (its newest).
const API_CAP: usize = 1000;

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    user: String,
    #[serde(default)]
    vm: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    result: String,
}

#[derive(Template)]
#[template(path = "admin_audit.html")]
struct AuditPage {
    layout: Layout,
    q: AuditQuery,
    rows: Vec<AuditEntry>,
    /// Some entries that match are not shown (the cap, or the API's own).
    capped: bool,
    /// Operations that have not succeeded (running now, or failed), newest first.
    unfinished: Vec<Operation>,
}

impl AuditPage {
    pub fn at(&self, t: &str) -> String {
        when(t)
    }
    pub fn params(&self, e: &AuditEntry) -> String {
        e.params.as_ref().map(|p| p.to_string()).unwrap_or_default()
    }
}

/// A time as the API reads it (RFC 3339): what a `datetime-local` field sends
/// (`2026-03-01T14:30`) is taken as UTC; anything else is passed on as typed.
fn since_of(s: &str) -> String {
    let s = s.trim();
    let local = s.len() == 16 && s.as_bytes().get(10) == Some(&b'T');
    let date = s.len() == 10 && s.as_bytes().get(4) == Some(&b'-');
    if local {
        format!("{s}:00Z")
    } else if date {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    }
}

pub async fn show(s: Session, headers: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    let since = since_of(&q.since);
    let path = format!(
        "/api/v1/audit{}",
        query(&[
            ("user", Some(q.user.trim())),
            ("vm", Some(q.vm.trim())),
            ("since", Some(&since)),
        ])
    );
    let mut rows: Vec<AuditEntry> = match s.api.get(&path).await {
        Ok(r) => r,
        Err(e) => return error_page(&e),
    };
    let mut capped = rows.len() >= API_CAP;
    rows.reverse();
    if !q.result.is_empty() {
        rows.retain(|e| e.result == q.result);
    }
    if rows.len() > SHOWN {
        rows.truncate(SHOWN);
        capped = true;
    }
    let mut unfinished = Vec::new();
    for state in ["running", "failed"] {
        if let Ok(l) = s
            .api
            .get::<OperationList>(&format!("/api/v1/operations?state={state}&limit=20"))
            .await
        {
            unfinished.extend(l.operations);
        }
    }
    let layout = Layout::new(&s, &headers, "Audit trail", "audit");
    let p = AuditPage {
        q,
        rows,
        capped,
        unfinished,
        layout,
    };
    page(&p.layout, &p)
}

#[cfg(test)]
mod tests {
    use super::since_of;

    #[test]
    fn a_browser_s_time_is_read_as_utc() {
        assert_eq!(since_of("2026-03-01T14:30"), "2026-03-01T14:30:00Z");
        assert_eq!(since_of("2026-03-01"), "2026-03-01T00:00:00Z");
        assert_eq!(
            since_of(" 2026-03-01T14:30:05+02:00 "),
            "2026-03-01T14:30:05+02:00"
        );
        assert_eq!(since_of(""), "");
    }
}
