//! A VM's use over the last hour (or day) as small line graphs: SVG drawn here from the
//! API's points (`GET /api/v1/vms/{name}/stats?range=`), so they show without JavaScript
//! and need no chart library; the page re-reads them every interval with htmx.

use super::Layout;
use crate::api::{seg, Api};
use crate::session::Session;
use askama::Template;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use hostel_api::public::{VmStats, VmStatsPoint};

const W: f64 = 300.0;
const H: f64 = 80.0;

/// One graph: up to two lines over the same time axis.
pub struct Graph {
    pub id: &'static str,
    pub title: &'static str,
    /// The latest values, in words (also the graph's text alternative).
    pub latest: String,
    pub lines: Vec<Line>,
    /// The largest value drawn, in words (the top of the graph).
    pub top: String,
}

pub struct Line {
    pub class: &'static str,
    pub label: &'static str,
    pub points: String,
}

/// The graphs as the VM page shows them.
pub struct Graphs {
    pub vm: String,
    pub graphs: Vec<Graph>,
    pub minutes: u64,
    pub interval: u32,
    /// The day (a point a minute) rather than the hour.
    pub day: bool,
}

/// A rate in bytes per second, as people read it.
pub fn rate(bps: f64) -> String {
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let mut v = bps;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn bytes(b: f64) -> String {
    format!("{:.0} MiB", b / (1 << 20) as f64)
}

/// Polyline points for `values`, scaled to `top`, spread over the graph's width.
fn polyline(values: &[f64], top: f64) -> String {
    let n = values.len();
    let step = if n > 1 { W / (n - 1) as f64 } else { 0.0 };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = H - (v / top).clamp(0.0, 1.0) * (H - 4.0) - 2.0;
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line's CSS class, its label and how it reads a point.
type Series = (&'static str, &'static str, fn(&VmStatsPoint) -> f64);

fn graph(
    id: &'static str,
    title: &'static str,
    p: &[VmStatsPoint],
    series: &[Series],
    show: fn(f64) -> String,
    floor: f64,
) -> Graph {
    let top = series
        .iter()
        .flat_map(|(_, _, f)| p.iter().map(f))
        .fold(floor, f64::max);
    let latest = match p.last() {
        Some(last) => series
            .iter()
            .map(|(_, label, f)| format!("{label} {}", show(f(last))))
            .collect::<Vec<_>>()
            .join(", "),
        None => "no data yet".into(),
    };
    Graph {
        id,
        title,
        latest,
        top: show(top),
        lines: series
            .iter()
            .map(|(class, label, f)| Line {
                class,
                label,
                points: polyline(&p.iter().map(f).collect::<Vec<_>>(), top),
            })
            .collect(),
    }
}

impl Graphs {
    pub fn of(vm: &str, s: &VmStats, day: bool) -> Graphs {
        let p = &s.points;
        let graphs = vec![
            graph(
                "cpu",
                "CPU",
                p,
                &[("a", "CPU", |p| p.cpu_percent)],
                |v| format!("{v:.0} %"),
                100.0,
            ),
            graph(
                "memory",
                "Memory",
                p,
                &[("a", "resident", |p| p.memory_bytes as f64)],
                bytes,
                (64 << 20) as f64,
            ),
            graph(
                "disk",
                "Disk",
                p,
                &[
                    ("a", "read", |p| p.disk_read_bps as f64),
                    ("b", "write", |p| p.disk_write_bps as f64),
                ],
                rate,
                1024.0,
            ),
            graph(
                "net",
                "Network",
                p,
                &[
                    ("a", "received", |p| p.net_rx_bps as f64),
                    ("b", "sent", |p| p.net_tx_bps as f64),
                ],
                rate,
                1024.0,
            ),
        ];
        Graphs {
            vm: vm.into(),
            graphs,
            minutes: (p.len() as u64 * s.interval_seconds as u64).div_ceil(60),
            interval: s.interval_seconds.max(1),
            day,
        }
    }

    pub async fn load(api: &Api, vm: &str, day: bool) -> Option<Graphs> {
        let range = if day { "day" } else { "hour" };
        let s: VmStats = api
            .get(&format!("/api/v1/vms/{}/stats?range={range}", seg(vm)))
            .await
            .ok()?;
        Some(Graphs::of(vm, &s, day))
    }
}

#[derive(serde::Deserialize)]
pub struct RangeQuery {
    #[serde(default)]
    range: Option<String>,
}

#[derive(Template)]
#[template(path = "graphs.html")]
struct GraphsFragment {
    g: Graphs,
}

/// The graphs alone, for the page's periodic refresh.
pub async fn fragment(
    s: Session,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RangeQuery>,
) -> Response {
    use axum::response::IntoResponse;
    let day = q.range.as_deref() == Some("day");
    let Some(g) = Graphs::load(&s.api, &name, day).await else {
        // 286 tells htmx to stop polling: the VM is gone (or cannot be read now).
        let stopped = "<div id=\"graphs\" class=\"graphs\"><p class=\"hint\">The graphs \
                       stopped: the VM is gone or its use could not be read; reload the page \
                       to try again.</p></div>";
        let status = StatusCode::from_u16(286).expect("a valid status");
        return (
            status,
            [("content-type", "text/html; charset=utf-8")],
            stopped,
        )
            .into_response();
    };
    let layout = Layout::new(&s, &HeaderMap::new(), "graphs", "vms");
    super::render(StatusCode::OK, &layout, &GraphsFragment { g }, super::CSP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_scaled_to_the_graph() {
        assert_eq!(
            polyline(&[0.0, 50.0, 100.0], 100.0),
            "0.0,78.0 150.0,40.0 300.0,2.0"
        );
        assert_eq!(rate(1536.0), "1.5 KiB/s");
        assert_eq!(rate(10.0), "10 B/s");
    }
}
