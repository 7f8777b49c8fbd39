//! Usage statistics for the VMs' graphs, `hostel top` and `/metrics`: every interval
//! (10 s) the controller asks each online host, all at once, for the cumulative counters
//! of its VMs (the agent's `VmStats` endpoint) and keeps per VM its last reading (what
//! `/metrics` serves), the last hour of rates computed from consecutive readings of the
//! same QEMU, and the last day of those rates averaged per minute.
//!
//! In memory only: nothing is written to the database, and a controller restart starts
//! every VM's graph afresh. A point takes 28 bytes: an hour of a VM is about 10 KiB, a
//! day at a minute 40 KiB (both grow as they fill). The only thing the controller polls
//! (VM states come from the agents' events).

use crate::context::Ctx;
use crate::Controller;
use hostel_api::agent::{AgentApi, VmCounters};
use hostel_api::public::{VmStats, VmStatsPoint, VmUsage};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

/// How often the controller samples the hosts.
pub const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// How many points a VM keeps: an hour at [`STATS_INTERVAL`].
pub const STATS_POINTS: usize = 360;
/// How many minute points a VM keeps: a day.
pub const STATS_MINUTES: usize = 1440;
/// The longest a host may take to answer; a slower or unreachable one is skipped that
/// round, and the others are not kept waiting.
pub const STATS_HOST_TIMEOUT: Duration = Duration::from_secs(5);

/// One reading of a VM's counters, without its id (`/metrics` serves the last one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reading {
    pub pid: u32,
    pub at_ms: u64,
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub disk_read: u64,
    pub disk_write: u64,
    pub net_rx: u64,
    pub net_tx: u64,
    pub disk_read_ops: u64,
    pub disk_write_ops: u64,
    pub net_rx_packets: u64,
    pub net_tx_packets: u64,
    pub balloon_bytes: Option<u64>,
    pub guard_drops: u64,
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
            disk_read_ops: c.disk_read_ops,
            disk_write_ops: c.disk_write_ops,
            net_rx_packets: c.net_rx_packets,
            net_tx_packets: c.net_tx_packets,
            balloon_bytes: c.balloon_bytes,
            guard_drops: c.guard_drops,
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
    /// Minute averages, the minute under way not among them.
    minutes: VecDeque<Point>,
    /// The minute under way: its points so far.
    minute: Option<Minute>,
}

/// Points of one minute, added up.
#[derive(Debug, Clone, Copy)]
struct Minute {
    minute: u32,
    n: u32,
    sum: Point,
    last: Point,
}

impl Minute {
    /// The minute's average (memory as at its last point), stamped with its last
    /// point's time.
    fn point(&self) -> Point {
        let n = self.n.max(1) as f32;
        Point {
            at_s: self.last.at_s,
            cpu_percent: self.sum.cpu_percent / n,
            memory_kib: self.last.memory_kib,
            disk_read_bps: self.sum.disk_read_bps / n,
            disk_write_bps: self.sum.disk_write_bps / n,
            net_rx_bps: self.sum.net_rx_bps / n,
            net_tx_bps: self.sum.net_tx_bps / n,
        }
    }
}

/// Adds `p` to a ring that keeps `max` points, growing it a little at a time (never to
/// twice what it needs).
fn push_ring(ring: &mut VecDeque<Point>, max: usize, p: Point) {
    if ring.len() == max {
        ring.pop_front();
    } else if ring.len() == ring.capacity() {
        let more = ring.len().clamp(8, 64).min(max - ring.len());
        ring.reserve_exact(more);
    }
    ring.push_back(p);
}

impl Series {
    fn new(host: String, last: Reading) -> Series {
        Series {
            host,
            last,
            points: VecDeque::new(),
            minutes: VecDeque::new(),
            minute: None,
        }
    }

    fn push(&mut self, p: Point) {
        push_ring(&mut self.points, STATS_POINTS, p);
        let minute = p.at_s / 60;
        match &mut self.minute {
            Some(m) if m.minute == minute => {
                m.n += 1;
                m.sum.cpu_percent += p.cpu_percent;
                m.sum.disk_read_bps += p.disk_read_bps;
                m.sum.disk_write_bps += p.disk_write_bps;
                m.sum.net_rx_bps += p.net_rx_bps;
                m.sum.net_tx_bps += p.net_tx_bps;
                m.last = p;
            }
            _ => {
                if let Some(done) = self.minute.take() {
                    push_ring(&mut self.minutes, STATS_MINUTES, done.point());
                }
                self.minute = Some(Minute {
                    minute,
                    n: 1,
                    sum: p,
                    last: p,
                });
            }
        }
    }

    /// The day's minute points, the minute under way last (averaged so far).
    fn day(&self) -> impl Iterator<Item = Point> + '_ {
        self.minutes
            .iter()
            .copied()
            .chain(self.minute.map(|m| m.point()))
            .skip(usize::from(
                self.minutes.len() == STATS_MINUTES && self.minute.is_some(),
            ))
    }
}

/// How far back a VM's graphs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsRange {
    /// The last hour, a point per sampling interval.
    Hour,
    /// The last day, a point per minute.
    Day,
}

impl std::str::FromStr for StatsRange {
    type Err = hostel_model::Invalid;
    fn from_str(s: &str) -> Result<StatsRange, Self::Err> {
        match s {
            "hour" => Ok(StatsRange::Hour),
            "day" => Ok(StatsRange::Day),
            other => Err(hostel_model::Invalid::new(
                "range",
                format!("{other:?}: the graphs cover an `hour` or a `day`"),
            )),
        }
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
                        series.insert(c.id.clone(), Series::new(host.clone(), next));
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

    fn view(&self, vm_id: &str, range: StatsRange) -> VmStats {
        let interval = *self.interval.lock().unwrap();
        let series = self.series.lock().unwrap();
        let s = series.get(vm_id);
        match range {
            StatsRange::Hour => VmStats {
                interval_seconds: interval.as_secs().max(1) as u32,
                points: s
                    .map(|s| s.points.iter().map(Point::view).collect())
                    .unwrap_or_default(),
            },
            StatsRange::Day => VmStats {
                interval_seconds: 60,
                points: s
                    .map(|s| s.day().map(|p| p.view()).collect())
                    .unwrap_or_default(),
            },
        }
    }

    /// Each VM's latest point (None before its second reading), by VM id.
    pub(crate) fn latest_points(&self) -> HashMap<String, Option<VmStatsPoint>> {
        self.series
            .lock()
            .unwrap()
            .iter()
            .map(|(id, s)| (id.clone(), s.points.back().map(Point::view)))
            .collect()
    }

    /// Every VM's last reading: (VM id, host id, reading).
    pub(crate) fn last_readings(&self) -> Vec<(String, String, Reading)> {
        self.series
            .lock()
            .unwrap()
            .iter()
            .map(|(id, s)| (id.clone(), s.host.clone(), s.last))
            .collect()
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
    /// The VM's use over the last hour or day, for graphs: authorised like reading the
    /// VM (to anyone who may not operate it, it does not exist).
    pub async fn vm_stats(&self, ctx: &Ctx, name: &str, range: StatsRange) -> Res<VmStats> {
        let vm = self.vm_named(ctx, name).await?;
        Ok(self.usage.view(&vm.id, range))
    }

    /// Each host's name, by id.
    pub(crate) async fn host_names(&self) -> Res<HashMap<String, String>> {
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .map(|h| (h.id, h.name))
            .collect())
    }

    /// Every VM the caller may see, with its latest use, busiest first (`hostel top`).
    pub async fn usage_now(&self, ctx: &Ctx) -> Res<Vec<VmUsage>> {
        let rows = self
            .store
            .vms_page(&hostel_store::VmPageQuery {
                visible_to: ctx.visible_to()?,
                limit: u32::MAX,
                ..Default::default()
            })
            .await?;
        let hosts = self.host_names().await?;
        let latest = self.usage.latest_points();
        let mut out: Vec<VmUsage> = rows
            .into_iter()
            .map(|r| VmUsage {
                last: if r.vm.state.has_process() {
                    latest.get(&r.vm.id).cloned().flatten()
                } else {
                    None
                },
                host: r
                    .vm
                    .host_id
                    .as_ref()
                    .map(|h| hosts.get(h).cloned().unwrap_or_else(|| h.clone())),
                owner: hostel_store::owner_label(r.owner_user, r.owner_group),
                name: r.vm.name,
                state: r.vm.state,
                vcpus: r.vm.vcpus,
                memory_mib: r.vm.memory_mib,
            })
            .collect();
        let cpu = |u: &VmUsage| u.last.as_ref().map_or(-1.0, |p| p.cpu_percent);
        out.sort_by(|a, b| cpu(b).total_cmp(&cpu(a)).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
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
            disk_read_ops: n,
            disk_write_ops: n,
            net_rx_packets: n,
            net_tx_packets: n,
            balloon_bytes: None,
            guard_drops: 0,
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
        let mut s = Series::new("h".into(), reading(1, 0, 0));
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

    #[test]
    fn a_day_is_kept_as_minute_averages() {
        let mut s = Series::new("h".into(), reading(1, 0, 0));
        let p = rate(&reading(1, 0, 0), &reading(1, 1000, 1)).unwrap();
        // Six points a minute (every 10 s) for a day and ten minutes; CPU 10 % in even
        // minutes, 30 % in odd ones; memory growing a KiB a point.
        let mut kib = 0;
        for i in 0..(STATS_MINUTES as u32 + 10) * 6 {
            kib += 1;
            s.push(Point {
                at_s: i * 10,
                cpu_percent: if (i / 6) % 2 == 0 { 10.0 } else { 30.0 },
                memory_kib: kib,
                ..p
            });
        }
        let day: Vec<Point> = s.day().collect();
        assert_eq!(
            day.len(),
            STATS_MINUTES,
            "a day of minutes, the oldest gone"
        );
        assert!(s.minutes.capacity() <= STATS_MINUTES + 64);
        let last = day.last().unwrap();
        assert_eq!(last.at_s, (STATS_MINUTES as u32 + 10) * 60 - 10);
        assert_eq!(
            last.cpu_percent, 30.0,
            "the last minute is odd: its average"
        );
        assert_eq!(last.memory_kib, kib, "memory as at the minute's end");
        assert_eq!(day[day.len() - 2].cpu_percent, 10.0);
        // Halfway through a minute, that minute's average so far is the day's last point.
        s.push(Point {
            at_s: (STATS_MINUTES as u32 + 10) * 60,
            cpu_percent: 50.0,
            ..p
        });
        let day: Vec<Point> = s.day().collect();
        assert_eq!(day.len(), STATS_MINUTES);
        assert_eq!(day.last().unwrap().cpu_percent, 50.0);
        assert_eq!(day[day.len() - 2].cpu_percent, 30.0);
    }
}
