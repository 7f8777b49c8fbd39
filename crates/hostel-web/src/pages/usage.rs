//! The usage page: every VM the user may see with its latest use, busiest first, as
//! `hostel top` shows it (`GET /api/v1/usage`); the table re-reads itself every 10 s
//! with htmx.

use super::{mib, page, Layout};
use crate::session::Session;
use askama::Template;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use hostel_api::public::VmUsage;

pub struct UsageRow {
    pub u: VmUsage,
}

fn rate(bps: u64) -> String {
    super::graphs::rate(bps as f64)
}

impl UsageRow {
    pub fn state(&self) -> &'static str {
        self.u.state.as_str()
    }
    pub fn host(&self) -> &str {
        self.u.host.as_deref().unwrap_or("")
    }
    pub fn memory(&self) -> String {
        mib(&self.u.memory_mib)
    }
    fn show(&self, f: impl Fn(&hostel_api::public::VmStatsPoint) -> String) -> String {
        self.u.last.as_ref().map(f).unwrap_or_else(|| "–".into())
    }
    pub fn cpu(&self) -> String {
        self.show(|p| format!("{:.1} %", p.cpu_percent))
    }
    pub fn resident(&self) -> String {
        self.show(|p| format!("{:.0} MiB", p.memory_bytes as f64 / (1 << 20) as f64))
    }
    pub fn disk(&self) -> String {
        self.show(|p| format!("{} / {}", rate(p.disk_read_bps), rate(p.disk_write_bps)))
    }
    pub fn net(&self) -> String {
        self.show(|p| format!("{} / {}", rate(p.net_rx_bps), rate(p.net_tx_bps)))
    }
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    layout: Layout,
    rows: Vec<UsageRow>,
    running: usize,
}

#[derive(Template)]
#[template(path = "usage_table.html")]
struct UsageTable {
    rows: Vec<UsageRow>,
    running: usize,
}

async fn rows(s: &Session) -> Result<(Vec<UsageRow>, usize), Response> {
    let all: Vec<VmUsage> = s
        .api
        .get("/api/v1/usage")
        .await
        .map_err(|e| super::error_page(&e))?;
    let running = all.iter().filter(|u| u.state.has_process()).count();
    Ok((all.into_iter().map(|u| UsageRow { u }).collect(), running))
}

pub async fn show(s: Session, headers: HeaderMap) -> Response {
    let (rows, running) = match rows(&s).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let p = UsagePage {
        layout: Layout::new(&s, &headers, "Usage", "usage"),
        rows,
        running,
    };
    page(&p.layout, &p)
}

/// The table alone, for the page's periodic refresh.
pub async fn table(s: Session) -> Response {
    let (rows, running) = match rows(&s).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let layout = Layout::new(&s, &HeaderMap::new(), "usage", "usage");
    super::render(
        StatusCode::OK,
        &layout,
        &UsageTable { rows, running },
        super::CSP,
    )
}
