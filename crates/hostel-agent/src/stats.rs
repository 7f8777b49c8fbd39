//! Usage counters of the VMs on this host (the `VmStats` endpoint), which the controller
//! samples for each VM's graphs and its `/metrics`. Read at each request from the kernel
//! (`/proc` for the QEMU process and the taps), from QEMU (`query-blockstats`,
//! `query-balloon`) and from nftables (the port guards' drop counters); nothing is kept
//! here, and nothing is read unless the controller asks.

use crate::Shared;
use hostel_api::agent::VmCounters;
use hostel_qemu::Qmp;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The longest one QEMU may take to report its disk counters. A VM whose QEMU does not
/// answer in time is left out of that reading (its QEMU is busy or stuck).
const BLOCKSTATS_TIMEOUT: Duration = Duration::from_secs(2);

/// What is read of one VM with a QEMU process.
struct Live {
    id: String,
    pid: u32,
    qmp: Arc<Qmp>,
    taps: Vec<String>,
}

impl Shared {
    /// The counters of every VM with a QEMU process. A VM whose QEMU ends meanwhile, or
    /// does not report its disks in time, is left out.
    pub(crate) async fn vm_counters(&self) -> Vec<VmCounters> {
        let vms: Vec<_> = self.vms.lock().unwrap().values().cloned().collect();
        let live: Vec<Live> = vms
            .iter()
            .filter(|vm| vm.state().has_process())
            .filter_map(|vm| {
                let (pid, qmp) = vm.process()?;
                let taps = vm.spec().nics.into_iter().map(|n| n.tap).collect();
                Some(Live {
                    id: vm.id.clone(),
                    pid,
                    qmp,
                    taps,
                })
            })
            .collect();
        // Every QEMU at once: one slow QEMU costs its own timeout, not the others'.
        let disks = futures::future::join_all(live.iter().map(|vm| qemu_counters(&vm.qmp))).await;
        let read: Vec<(Live, (DiskSums, Option<u64>))> = live
            .into_iter()
            .zip(disks)
            .filter_map(|(vm, d)| match d {
                Some(d) => Some((vm, d)),
                None => {
                    tracing::debug!(vm = %vm.id, "no disk counters in time; left out of this reading");
                    None
                }
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            let net = std::fs::read_to_string("/proc/net/dev")
                .map(|t| parse_net_dev(&t))
                .unwrap_or_default();
            let drops = if read.iter().any(|(vm, _)| !vm.taps.is_empty()) {
                hostel_net::guard::all_drops()
            } else {
                HashMap::new()
            };
            let tick = clock_ticks_per_second();
            read.into_iter()
                .filter_map(|(vm, (disk, balloon))| {
                    let stat = std::fs::read_to_string(format!("/proc/{}/stat", vm.pid)).ok()?;
                    let status =
                        std::fs::read_to_string(format!("/proc/{}/status", vm.pid)).ok()?;
                    let n = guest_net(&net, &vm.taps);
                    Some(VmCounters {
                        id: vm.id,
                        pid: vm.pid,
                        at_ms: now_ms(),
                        cpu_ns: cpu_ns(&stat, tick)?,
                        memory_bytes: rss_bytes(&status)?,
                        disk_read_bytes: disk.rd_bytes,
                        disk_write_bytes: disk.wr_bytes,
                        net_rx_bytes: n.rx_bytes,
                        net_tx_bytes: n.tx_bytes,
                        disk_read_ops: disk.rd_ops,
                        disk_write_ops: disk.wr_ops,
                        net_rx_packets: n.rx_packets,
                        net_tx_packets: n.tx_packets,
                        balloon_bytes: balloon,
                        guard_drops: vm.taps.iter().filter_map(|t| drops.get(t)).sum(),
                    })
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}

/// What a QEMU says of its disks (`query-blockstats`; none if not in time) and its
/// balloon (`query-balloon`'s `actual`; none if it has none or did not say).
async fn qemu_counters(qmp: &Qmp) -> Option<(DiskSums, Option<u64>)> {
    let v = qmp
        .execute_timeout("query-blockstats", json!({}), BLOCKSTATS_TIMEOUT)
        .await
        .ok()?;
    let balloon = qmp
        .execute_timeout("query-balloon", json!({}), BLOCKSTATS_TIMEOUT)
        .await
        .ok()
        .and_then(|b| b["actual"].as_u64());
    Some((sum_blockstats(&v), balloon))
}

/// A QEMU's disk counters, summed over its devices.
#[derive(Debug, Default, PartialEq)]
struct DiskSums {
    rd_bytes: u64,
    wr_bytes: u64,
    rd_ops: u64,
    wr_ops: u64,
}

/// The sums of `stats.rd_bytes`, `wr_bytes`, `rd_operations` and `wr_operations` over
/// `query-blockstats`' devices.
fn sum_blockstats(v: &serde_json::Value) -> DiskSums {
    let devices = v.as_array().map(Vec::as_slice).unwrap_or_default();
    let sum = |field: &str| {
        devices
            .iter()
            .filter_map(|d| d["stats"][field].as_u64())
            .sum()
    };
    DiskSums {
        rd_bytes: sum("rd_bytes"),
        wr_bytes: sum("wr_bytes"),
        rd_ops: sum("rd_operations"),
        wr_ops: sum("wr_operations"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// User plus system CPU time, in nanoseconds, from a `/proc/PID/stat` line whose clock
/// ticks `tick` a second. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from its closing parenthesis.
fn cpu_ns(stat: &str, tick: u64) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * (1_000_000_000 / tick.max(1)))
}

/// `VmRSS` from a `/proc/PID/status`, in bytes.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// An interface's counters, or a guest's summed over its taps.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct NetSums {
    rx_bytes: u64,
    rx_packets: u64,
    tx_bytes: u64,
    tx_packets: u64,
}

/// Each interface's counters from `/proc/net/dev`: the agent's own network namespace,
/// where its taps are, whatever `/sys` shows.
fn parse_net_dev(text: &str) -> HashMap<String, NetSums> {
    text.lines()
        .filter_map(|l| {
            let (name, counters) = l.split_once(':')?;
            let f: Vec<u64> = counters
                .split_whitespace()
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            // Receive: bytes packets errs drop fifo frame compressed multicast; then
            // transmit: bytes packets ...
            let sums = NetSums {
                rx_bytes: *f.first()?,
                rx_packets: *f.get(1)?,
                tx_bytes: *f.get(8)?,
                tx_packets: *f.get(9)?,
            };
            Some((name.trim().to_string(), sums))
        })
        .collect()
}

/// The guest's traffic over its taps, seen from the guest: what a tap transmits, the
/// guest receives. A tap not (yet) there counts nothing.
fn guest_net(net: &HashMap<String, NetSums>, taps: &[String]) -> NetSums {
    taps.iter()
        .filter_map(|t| net.get(t))
        .fold(NetSums::default(), |g, tap| NetSums {
            rx_bytes: g.rx_bytes + tap.tx_bytes,
            rx_packets: g.rx_packets + tap.tx_packets,
            tx_bytes: g.tx_bytes + tap.rx_bytes,
            tx_packets: g.tx_packets + tap.rx_packets,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_from_the_end_of_the_command_name() {
        // A name with a space and a parenthesis; utime 250 and stime 50 ticks.
        let stat = "4242 (qemu (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    5 0 1000 123456789 2000 18446744073709551615";
        assert_eq!(cpu_ns(stat, 100), Some(3_000_000_000));
        assert_eq!(cpu_ns("4242 (qemu) S 1", 100), None);
    }

    #[test]
    fn memory_is_the_resident_set() {
        let status = "Name:\tqemu-system-x86\nVmPeak:\t 999 kB\nVmRSS:\t   65536 kB\n";
        assert_eq!(rss_bytes(status), Some(64 << 20));
        assert_eq!(rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn disks_are_summed() {
        let v = json!([
            {"device": "", "node-name": "disk0", "stats": {"rd_bytes": 100, "wr_bytes": 7,
              "rd_operations": 3, "wr_operations": 1}},
            {"device": "", "qdev": "cd0", "stats": {"rd_bytes": 20, "wr_bytes": 0,
              "rd_operations": 2, "wr_operations": 0}},
        ]);
        let want = DiskSums {
            rd_bytes: 120,
            wr_bytes: 7,
            rd_ops: 5,
            wr_ops: 1,
        };
        assert_eq!(sum_blockstats(&v), want);
        assert_eq!(sum_blockstats(&json!({})), DiskSums::default());
    }

    #[test]
    fn a_tap_s_transmitted_bytes_are_the_guest_s_received() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n\
hst1a2b:  500       5    0    0    0     0          0         0     9000      60    0    0    0     0       0          0\n\
hst3c4d:   40       1    0    0    0     0          0         0        2       1    0    0    0     0       0          0\n";
        let net = parse_net_dev(text);
        assert_eq!(net["lo"].rx_bytes, 1000);
        assert_eq!(net["lo"].tx_packets, 10);
        let taps = ["hst1a2b".to_string(), "hst3c4d".into(), "gone".into()];
        // Received by the guest: 9000 + 2 bytes, 60 + 1 packets; sent: 500 + 40, 5 + 1.
        let g = guest_net(&net, &taps);
        assert_eq!((g.rx_bytes, g.rx_packets), (9002, 61));
        assert_eq!((g.tx_bytes, g.tx_packets), (540, 6));
    }
}
