//! `/metrics`: the controller's state in the Prometheus text format (version 0.0.4), for
//! admins (by token) or for whatever reaches the separate address `--metrics-listen`
//! gives it. Read at each scrape: the API's request counts and latencies (kept here as
//! requests end), tasks and journaled operations by kind and state, VMs by host and
//! state, each host's capacity and use, and each running VM's counters from its last
//! usage sample (`stats.rs`: CPU time, resident and balloon memory, disk bytes and
//! requests, network bytes and packets, port-guard drops).

use crate::context::Ctx;
use crate::stats::Reading;
use crate::Controller;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

/// The latency histogram's buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One route's requests with one method and status.
#[derive(Default, Clone)]
struct RouteStats {
    count: u64,
    sum_seconds: f64,
    /// Requests at or under each bucket's bound (not cumulative here).
    buckets: [u64; BUCKETS.len()],
}

/// The API's requests, by (method, route, status).
#[derive(Default)]
pub struct RequestMetrics(Mutex<BTreeMap<(String, String, u16), RouteStats>>);

impl RequestMetrics {
    /// Counts one request that ended: its method, its route's pattern (`/api/v1/vms/{name}`,
    /// never the names in it) and its status.
    pub fn record(&self, method: &str, route: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut map = self.0.lock().unwrap();
        let s = map
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        s.count += 1;
        s.sum_seconds += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i] += 1;
        }
    }

    fn write(&self, out: &mut Text) {
        let map = self.0.lock().unwrap().clone();
        out.help(
            "hostel_api_requests_total",
            "counter",
            "API requests answered, by method, route and status.",
        );
        for ((m, r, st), s) in &map {
            let status = st.to_string();
            out.sample(
                "hostel_api_requests_total",
                &[("method", m), ("route", r), ("status", &status)],
                s.count as f64,
            );
        }
        // Latency by method and route, every status together.
        let mut by_route: BTreeMap<(&str, &str), RouteStats> = BTreeMap::new();
        for ((m, r, _), s) in &map {
            let t = by_route.entry((m, r)).or_default();
            t.count += s.count;
            t.sum_seconds += s.sum_seconds;
            for (i, b) in s.buckets.iter().enumerate() {
                t.buckets[i] += b;
            }
        }
        out.help(
            "hostel_api_request_duration_seconds",
            "histogram",
            "How long API requests took to answer, by method and route.",
        );
        for ((m, r), s) in &by_route {
            let mut below = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                below += s.buckets[i];
                let le = bound.to_string();
                out.sample(
                    "hostel_api_request_duration_seconds_bucket",
                    &[("method", m), ("route", r), ("le", &le)],
                    below as f64,
                );
            }
            out.sample(
                "hostel_api_request_duration_seconds_bucket",
                &[("method", m), ("route", r), ("le", "+Inf")],
                s.count as f64,
            );
            out.sample(
                "hostel_api_request_duration_seconds_sum",
                &[("method", m), ("route", r)],
                s.sum_seconds,
            );
            out.sample(
                "hostel_api_request_duration_seconds_count",
                &[("method", m), ("route", r)],
                s.count as f64,
            );
        }
    }
}

/// The exposition text being written.
#[derive(Default)]
struct Text(String);

impl Text {
    fn help(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one sample per item.
    fn family<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[T],
        sample: impl Fn(&T) -> (Vec<(&str, String)>, f64),
    ) {
        self.help(name, kind, help);
        for it in items {
            let (labels, v) = sample(it);
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.sample(name, &labels, v);
        }
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Controller {
    /// The metrics, as `/metrics` serves them: to admins, or to the metrics listener's
    /// own actor.
    pub async fn metrics_text(&self, ctx: &Ctx) -> Res<String> {
        ctx.require_admin_or(crate::context::Right::ReadMetrics)?;
        let mut out = Text::default();
        out.family(
            "hostel_info",
            "gauge",
            "This controller: its version, database and id.",
            &[()],
            |_| {
                (
                    vec![
                        ("version", env!("CARGO_PKG_VERSION").to_string()),
                        (
                            "database",
                            if self.store.is_sqlite() {
                                "sqlite"
                            } else {
                                "postgresql"
                            }
                            .to_string(),
                        ),
                        ("controller", self.id.clone()),
                    ],
                    1.0,
                )
            },
        );
        self.requests.write(&mut out);

        let tasks = self.store.task_counts().await?;
        out.family(
            "hostel_tasks",
            "gauge",
            "Tasks (image builds and imports, migrations, drains) by kind and state.",
            &tasks,
            |(k, s, n)| (vec![("kind", k.clone()), ("state", s.clone())], *n as f64),
        );
        let ops = self.store.operation_counts().await?;
        out.family(
            "hostel_operations",
            "gauge",
            "Journaled operations by kind and state.",
            &ops,
            |(k, s, n)| (vec![("kind", k.clone()), ("state", s.clone())], *n as f64),
        );

        let hosts = self.hosts_info(None).await?;
        let host_names = self.host_names().await?;
        let vms = self.store.vm_counts().await?;
        out.family(
            "hostel_vms",
            "gauge",
            "VMs by host and state (host empty: a VM on no host).",
            &vms,
            |(h, s, n)| {
                let host = host_names.get(h).cloned().unwrap_or_else(|| h.clone());
                (vec![("host", host), ("state", s.clone())], *n as f64)
            },
        );
        let per_host = |name: &str,
                        kind: &str,
                        help: &str,
                        out: &mut Text,
                        v: &dyn Fn(&hostel_api::public::HostInfo) -> f64| {
            out.family(name, kind, help, &hosts, |h| {
                (vec![("host", h.name.clone())], v(h))
            });
        };
        per_host(
            "hostel_host_online",
            "gauge",
            "1 while the controller follows the host's agent.",
            &mut out,
            &|h| f64::from(u8::from(h.online)),
        );
        per_host(
            "hostel_host_cpus",
            "gauge",
            "The host's CPUs.",
            &mut out,
            &|h| f64::from(h.cpus),
        );
        per_host(
            "hostel_host_memory_bytes",
            "gauge",
            "The host's memory.",
            &mut out,
            &|h| (h.memory_total_mib << 20) as f64,
        );
        per_host(
            "hostel_host_memory_promised_bytes",
            "gauge",
            "Memory promised to the host's VMs that have a QEMU (their max memory).",
            &mut out,
            &|h| (h.memory_vms_mib << 20) as f64,
        );
        per_host(
            "hostel_host_vms_running",
            "gauge",
            "The host's VMs with a QEMU process.",
            &mut out,
            &|h| f64::from(h.vms_running),
        );
        per_host(
            "hostel_host_last_seen_age_seconds",
            "gauge",
            "Seconds since the host last reported (0 while online).",
            &mut out,
            &|h| h.last_seen_age_seconds as f64,
        );

        // Each running VM's counters, as its host last reported them.
        let labels: BTreeMap<String, hostel_store::VmLabels> = self
            .store
            .vm_labels()
            .await?
            .into_iter()
            .map(|l| (l.id.clone(), l))
            .collect();
        let mut readings = self.usage.last_readings();
        readings.retain(|(id, _, _)| labels.contains_key(id));
        readings.sort_by(|a, b| labels[&a.0].name.cmp(&labels[&b.0].name));
        let vm = |(id, host, _): &(String, String, Reading)| {
            let l = &labels[id];
            vec![
                ("vm", l.name.clone()),
                ("owner", l.owner.clone()),
                (
                    "host",
                    host_names
                        .get(host)
                        .cloned()
                        .unwrap_or_else(|| host.clone()),
                ),
            ]
        };
        type Field = fn(&Reading) -> Option<f64>;
        let families: [(&str, &str, &str, Field); 12] = [
            (
                "hostel_vm_cpu_seconds_total",
                "counter",
                "CPU time the VM's QEMU used (all its threads).",
                |r| Some(r.cpu_ns as f64 / 1e9),
            ),
            (
                "hostel_vm_memory_resident_bytes",
                "gauge",
                "Host memory the VM's QEMU holds (its resident set).",
                |r| Some(r.memory_bytes as f64),
            ),
            (
                "hostel_vm_disk_read_bytes_total",
                "counter",
                "Bytes the guest read from its disks.",
                |r| Some(r.disk_read as f64),
            ),
            (
                "hostel_vm_disk_written_bytes_total",
                "counter",
                "Bytes the guest wrote to its disks.",
                |r| Some(r.disk_write as f64),
            ),
            (
                "hostel_vm_disk_reads_total",
                "counter",
                "Read requests the guest made of its disks.",
                |r| Some(r.disk_read_ops as f64),
            ),
            (
                "hostel_vm_disk_writes_total",
                "counter",
                "Write requests the guest made of its disks.",
                |r| Some(r.disk_write_ops as f64),
            ),
            (
                "hostel_vm_network_receive_bytes_total",
                "counter",
                "Bytes the guest received on its NICs.",
                |r| Some(r.net_rx as f64),
            ),
            (
                "hostel_vm_network_transmit_bytes_total",
                "counter",
                "Bytes the guest sent on its NICs.",
                |r| Some(r.net_tx as f64),
            ),
            (
                "hostel_vm_network_receive_packets_total",
                "counter",
                "Packets the guest received on its NICs.",
                |r| Some(r.net_rx_packets as f64),
            ),
            (
                "hostel_vm_network_transmit_packets_total",
                "counter",
                "Packets the guest sent on its NICs.",
                |r| Some(r.net_tx_packets as f64),
            ),
            (
                "hostel_vm_port_guard_drops_total",
                "counter",
                "Frames the VM's port guards dropped (spoofed addresses).",
                |r| Some(r.guard_drops as f64),
            ),
            (
                "hostel_vm_balloon_bytes",
                "gauge",
                "Memory the guest has now, as its balloon says.",
                // Only where QEMU said.
                |r| r.balloon_bytes.map(|b| b as f64),
            ),
        ];
        for (name, kind, help, field) in families {
            let samples: Vec<(Vec<(&str, String)>, f64)> = readings
                .iter()
                .filter_map(|r| Some((vm(r), field(&r.2)?)))
                .collect();
            out.family(name, kind, help, &samples, |(labels, v)| {
                (labels.clone(), *v)
            });
        }
        Ok(out.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_and_bucketed_by_route() {
        let m = RequestMetrics::default();
        m.record("GET", "/api/v1/vms", 200, Duration::from_millis(3));
        m.record("GET", "/api/v1/vms", 200, Duration::from_millis(30));
        m.record("GET", "/api/v1/vms", 404, Duration::from_secs(20));
        let mut t = Text::default();
        m.write(&mut t);
        let text = t.0;
        assert!(text.contains(
            "hostel_api_requests_total{method=\"GET\",route=\"/api/v1/vms\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "hostel_api_requests_total{method=\"GET\",route=\"/api/v1/vms\",status=\"404\"} 1\n"
        ));
        let bucket = |le: &str| {
            format!(
                "hostel_api_request_duration_seconds_bucket{{method=\"GET\",route=\"/api/v1/vms\",le=\"{le}\"}} "
            )
        };
        let value = |le: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(&bucket(le))).unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert_eq!(value("0.005"), 1.0);
        assert_eq!(value("0.05"), 2.0);
        assert_eq!(value("10"), 2.0, "20 s is over every bound");
        assert_eq!(value("+Inf"), 3.0);
        assert!(text.contains("# TYPE hostel_api_request_duration_seconds histogram\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text::default();
        t.sample("x", &[("a", "q\"b\\c\nd")], 1.5);
        assert_eq!(t.0, "x{a=\"q\\\"b\\\\c\\nd\"} 1.5\n");
    }
}
