//! Usage statistics for the VMs' graphs: every interval (10 s) the controller asks each
//! online host, all at once, for the cumulative counters of its VMs (the agent's
//! `VmStats` endpoint) and keeps per VM the last hour of rates computed from consecutive
//! readings of the same QEMU.
//!
//! In memory only: nothing is written to the database, and a controller restart starts
//! every VM's graph afresh. A point takes 28 bytes, so an hour of a VM about 10 KiB.
//! The only thing the controller polls (VM states come from the agents' events).

use crate::context::Ctx;
use crate::Controller;
use hostel_api::agent::{AgentApi, VmCounters};
use hostel_api::public::{VmStats, VmStatsPoint};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

/// How often the controller samples the hosts.
pub const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// How many points a VM keeps: an hour at [`STATS_INTERVAL`].
pub const STATS_POINTS: usize = 360;
/// The longest a host may take to answer; a slower or unreachable one is skipped that
/// round, and the others are not kept waiting.
pub const STATS_HOST_TIMEOUT: Duration = Duration::from_secs(5);

/// One reading of a VM's counters, without its id.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    pid: u32,
    at_ms: u64,
    cpu_ns: u64,
    memory_bytes: u64,
    disk_read: u64,
    disk_write: u64,
    net_rx: u64,
    net_tx: u64,
}

impl From<&VmCounters> for Reading {
    fn from(c: &VmCounters) -> Reading {
        Reading {
            pid: c.pid,
            at_ms: c.at_ms,
            cpu_ns: c.cpu_ns,
            memory_bytes: c.memory_bytes,
            disk_read: c.disk_read_bytes,
            disk_write: c.disk_write_bytes,
            net_rx: c.net_rx_bytes,
            net_tx: c.net_tx_bytes,
        }
    }
}

/// The use over one interval, kept small (28 bytes): an hour of 10,000 VMs is 100 MB.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    /// The end of the interval, in seconds since the Unix epoch.
    at_s: u32,
    cpu_percent: f32,
    memory_kib: u32,
    disk_read_bps: f32,
    disk_write_bps: f32,
    net_rx_bps: f32,
    net_tx_bps: f32,
}

/// The use between two readings, or none when they cannot give one: another QEMU (the VM
/// was restarted), a counter that went backwards (a device unplugged, say), or no time
/// between them. The next reading starts afresh from `next`.
fn rate(prev: &Reading, next: &Reading) -> Option<Point> {
    if next.pid != prev.pid || next.at_ms <= prev.at_ms {
        return None;
    }
    let secs = (next.at_ms - prev.at_ms) as f64 / 1000.0;
    let per_sec = |a: u64, b: u64| Some((b.checked_sub(a)? as f64 / secs) as f32);
    Some(Point {
        at_s: (next.at_ms / 1000).min(u32::MAX as u64) as u32,
        cpu_percent: per_sec(prev.cpu_ns, next.cpu_ns)? / 1e9 * 100.0,
        memory_kib: (next.memory_bytes / 1024).min(u32::MAX as u64) as u32,
        disk_read_bps: per_sec(prev.disk_read, next.disk_read)?,
        disk_write_bps: per_sec(prev.disk_write, next.disk_write)?,
        net_rx_bps: per_sec(prev.net_rx, next.net_rx)?,
        net_tx_bps: per_sec(prev.net_tx, next.net_tx)?,
    })
}

impl Point {
    fn view(&self) -> VmStatsPoint {
        let at = time::OffsetDateTime::from_unix_timestamp(self.at_s as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let bps = |r: f32| r.max(0.0).round() as u64;
        VmStatsPoint {
            at,
            cpu_percent: (self.cpu_percent as f64 * 100.0).round() / 100.0,
            memory_bytes: self.memory_kib as u64 * 1024,
            disk_read_bps: bps(self.disk_read_bps),
            disk_write_bps: bps(self.disk_write_bps),
            net_rx_bps: bps(self.net_rx_bps),
            net_tx_bps: bps(self.net_tx_bps),
        }
    }
}

/// One VM's recent use.
struct Series {
    /// The host that last reported the VM.
    host: String,
    last: Reading,
    points: VecDeque<Point>,
}

impl Series {
    fn push(&mut self, p: Point) {
        if self.points.len() == STATS_POINTS {
            self.points.pop_front();
        } else if self.points.len() == self.points.capacity() {
            // Grown a little at a time up to an hour, never to twice that.
            let more = self
                .points
                .len()
                .clamp(8, 64)
                .min(STATS_POINTS - self.points.len());
            self.points.reserve_exact(more);
        }
        self.points.push_back(p);
    }
}

/// The last hour of every running VM's use, by VM id.
pub(crate) struct UsageHistory {
    interval: Mutex<Duration>,
    series: Mutex<HashMap<String, Series>>,
    /// Hosts whose last answer failed, so a failure is logged once, not every round.
    failing: Mutex<HashSet<String>>,
}

impl UsageHistory {
    pub(crate) fn new() -> UsageHistory {
        UsageHistory {
            interval: Mutex::new(STATS_INTERVAL),
            series: Mutex::default(),
            failing: Mutex::default(),
        }
    }

    /// Takes in one round's answers (`answered`: each host that answered, with its VMs'
    /// counters). A VM its host no longer lists is dropped, and so is every VM of a host
    /// no longer in `hosts`; a registered host that did not answer keeps its VMs' points
    /// (its next answer measures over the whole gap).
    fn record(&self, answered: &HashMap<String, Vec<VmCounters>>, hosts: &HashSet<String>) {
        let mut series = self.series.lock().unwrap();
        for (host, counters) in answered {
            for c in counters {
                let next = Reading::from(c);
                match series.get_mut(&c.id) {
                    Some(s) => {
                        if let Some(p) = rate(&s.last, &next) {
                            s.push(p);
                        }
                        s.last = next;
                        if s.host != *host {
                            s.host.clone_from(host);
                        }
                    }
                    None => {
                        series.insert(
                            c.id.clone(),
                            Series {
                                host: host.clone(),
                                last: next,
                                points: VecDeque::new(),
                            },
                        );
                    }
                }
            }
        }
        let listed: HashSet<&str> = answered.values().flatten().map(|c| c.id.as_str()).collect();
        series.retain(|id, s| {
            hosts.contains(&s.host)
                && (listed.contains(id.as_str()) || !answered.contains_key(&s.host))
        });
    }

    fn view(&self, vm_id: &str) -> VmStats {
        let interval = *self.interval.lock().unwrap();
        let points = self
            .series
            .lock()
            .unwrap()
            .get(vm_id)
            .map(|s| s.points.iter().map(Point::view).collect())
            .unwrap_or_default();
        VmStats {
            interval_seconds: interval.as_secs().max(1) as u32,
            points,
        }
    }

    /// Notes whether `host` answered; true when that changed (worth a log line).
    fn note(&self, host: &str, ok: bool) -> bool {
        let mut failing = self.failing.lock().unwrap();
        if ok {
            failing.remove(host)
        } else {
            failing.insert(host.to_string())
        }
    }
}

impl Controller {
    /// The VM's use over the last hour, for graphs: authorised like reading the VM (to
    /// anyone who may not operate it, it does not exist).
    pub async fn vm_stats(&self, ctx: &Ctx, name: &str) -> Res<VmStats> {
        let vm = self.vm_named(ctx, name).await?;
        Ok(self.usage.view(&vm.id))
    }

    /// Samples every online host's VMs every `every`, for as long as the controller
    /// lives (`hostel up` uses [`STATS_INTERVAL`]).
    pub fn spawn_usage_sampler(self: &Arc<Self>, every: Duration) {
        *self.usage.interval.lock().unwrap() = every;
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(c) = me.upgrade() else { return };
                c.sample_usage(every.min(STATS_HOST_TIMEOUT)).await;
            }
        });
    }

    /// One sampling round: asks every online host at once for its VMs' counters, waiting
    /// at most `host_timeout` for any of them, and records what came back.
    pub async fn sample_usage(&self, host_timeout: Duration) {
        let agents = self.agents();
        let hosts: HashSet<String> = agents.iter().map(|(h, _)| h.clone()).collect();
        let asks =
            agents
                .into_iter()
                .filter(|(h, _)| self.is_online(h))
                .map(|(host, agent)| async move {
                    let r = tokio::time::timeout(host_timeout, agent.vm_stats()).await;
                    (host, r)
                });
        let mut answered = HashMap::new();
        for (host, r) in futures::future::join_all(asks).await {
            let why = match r {
                Ok(Ok(counters)) => {
                    if self.usage.note(&host, true) {
                        tracing::info!(%host, "the host reports its VMs' usage again");
                    }
                    answered.insert(host, counters);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {host_timeout:?}"),
            };
            if self.usage.note(&host, false) {
                tracing::warn!(
                    %host,
                    "cannot read the host's VM usage counters ({why}); its VMs' graphs \
                     pause until it answers (is its agent older than the controller?)"
                );
            }
        }
        self.usage.record(&answered, &hosts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pid: u32, at_ms: u64, n: u64) -> Reading {
        Reading {
            pid,
            at_ms,
            cpu_ns: n,
            memory_bytes: 64 << 20,
            disk_read: n,
            disk_write: n,
            net_rx: n,
            net_tx: n,
        }
    }

    #[test]
    fn rates_are_per_second_and_cpu_per_cent_of_one_cpu() {
        let p = rate(&reading(7, 10_000, 0), &reading(7, 20_000, 15_000_000_000)).unwrap();
        assert_eq!(p.at_s, 20);
        assert_eq!(p.cpu_percent, 150.0);
        assert_eq!(p.disk_read_bps, 1.5e9);
        assert_eq!(p.memory_kib, 64 << 10);
    }

    #[test]
    fn a_new_qemu_or_a_counter_going_back_gives_no_point() {
        let a = reading(7, 10_000, 1000);
        assert_eq!(rate(&a, &reading(8, 20_000, 2000)), None, "another QEMU");
        assert_eq!(rate(&a, &reading(7, 20_000, 10)), None, "backwards");
        assert_eq!(rate(&a, &reading(7, 10_000, 2000)), None, "no time");
        let mut back = reading(7, 20_000, 2000);
        back.net_tx = 0;
        assert_eq!(rate(&a, &back), None, "one counter backwards");
    }

    #[test]
    fn a_series_keeps_an_hour_and_grows_only_as_needed() {
        let mut s = Series {
            host: "h".into(),
            last: reading(1, 0, 0),
            points: VecDeque::new(),
        };
        let p = rate(&reading(1, 0, 0), &reading(1, 1000, 1)).unwrap();
        for i in 0..STATS_POINTS + 5 {
            s.push(Point {
                at_s: i as u32,
                ..p
            });
            assert!(s.points.capacity() <= STATS_POINTS + 64);
        }
        assert_eq!(s.points.len(), STATS_POINTS);
        assert_eq!(s.points.front().unwrap().at_s, 5, "the oldest go first");
    }
}
