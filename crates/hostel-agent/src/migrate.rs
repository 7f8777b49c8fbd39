//! Live migration, the sending side: QEMU's `migrate` to a receiving QEMU that waits
//! with `-incoming defer` (`VmRuntime::start_incoming`), watched until it completes.
//!
//! A busy guest can dirty memory faster than it is sent, and QEMU's defaults then never
//! finish. So: auto-converge (the capability the controller asks both ends for) throttles
//! the guest's vCPUs; the downtime limit starts low and doubles, up to the most the
//! caller allows, whenever a few seconds pass without the memory left shrinking; and a
//! watchdog gives up after `stall_secs` without progress at the highest limit, either
//! pausing the guest to finish (`force_complete`) or cancelling, which leaves the guest
//! running here as it was.

use crate::vm::VmRuntime;
use crate::AgentError;
use anyhow::anyhow;
use hostel_api::agent::{DiskMirror, MigrateOutRequest, MigrationResult};
use serde_json::json;
use std::time::{Duration, Instant};

/// The downtime limit a migration starts with (ms), or the caller's most if lower.
const FIRST_DOWNTIME_MS: u64 = 50;
/// How often QEMU is asked how far it is.
const POLL: Duration = Duration::from_millis(200);
/// Without progress for this long, the downtime limit is raised.
const ESCALATE_AFTER: Duration = Duration::from_secs(2);

impl VmRuntime {
    /// Sends the VM to `req.uri`; `progress` hears the fraction sent and a message.
    pub async fn migrate_out(
        &self,
        req: &MigrateOutRequest,
        progress: &mut (dyn FnMut(f64, String) + Send),
    ) -> Result<MigrationResult, AgentError> {
        let qmp = self.qmp_handle()?;
        if let Some(m) = &req.mirror {
            if let Err(e) = mirror_disks(&qmp, m, progress).await {
                stop_mirrors(&qmp, m, true).await;
                return Err(e);
            }
        }
        let res = self.send_memory(&qmp, req, progress).await;
        if let Some(m) = &req.mirror {
            // Completed: the target has every write (the guest is paused since the
            // switch-over); failed: the target's copy is dropped. Either way the mirror
            // jobs end here without switching the source's disks over.
            stop_mirrors(&qmp, m, res.is_err()).await;
        }
        res
    }

    async fn send_memory(
        &self,
        qmp: &hostel_qemu::Qmp,
        req: &MigrateOutRequest,
        progress: &mut (dyn FnMut(f64, String) + Send),
    ) -> Result<MigrationResult, AgentError> {
        let fail = |e: hostel_qemu::QmpError| AgentError::Internal(anyhow!("{e}"));
        qmp.execute(
            "migrate-set-capabilities",
            json!({ "capabilities": req.capabilities }),
        )
        .await
        .map_err(fail)?;
        let max_downtime = req.max_downtime_ms.max(1);
        let mut downtime = FIRST_DOWNTIME_MS.min(max_downtime);
        let mut params = json!({ "downtime-limit": downtime });
        if let Some(b) = req.bandwidth_mibps {
            params["max-bandwidth"] = json!(b << 20);
        }
        qmp.execute("migrate-set-parameters", params)
            .await
            .map_err(fail)?;
        qmp.execute("migrate", json!({ "uri": req.uri }))
            .await
            .map_err(|e| AgentError::Invalid(anyhow!("uri: QEMU refused to migrate: {e}")))?;
        let mut best_left = u64::MAX;
        let mut last_gain = Instant::now();
        let mut escalated = Instant::now();
        let mut forced = false;
        loop {
            tokio::time::sleep(POLL).await;
            let m = qmp
                .execute("query-migrate", json!({}))
                .await
                .map_err(fail)?;
            let status = m["status"].as_str().unwrap_or("");
            let ram = &m["ram"];
            let sent = ram["transferred"].as_u64().unwrap_or(0);
            let left = ram["remaining"].as_u64().unwrap_or(0);
            match status {
                "completed" => {
                    return Ok(MigrationResult {
                        downtime_ms: m["downtime"].as_u64().unwrap_or(0),
                        total_ms: m["total-time"].as_u64().unwrap_or(0),
                        transferred_bytes: sent,
                        forced,
                    })
                }
                "failed" | "cancelled" => {
                    let why = m["error-desc"].as_str().unwrap_or(status).to_string();
                    // A migration that did not finish leaves the guest running here.
                    let _ = qmp.execute("cont", json!({})).await;
                    return Err(AgentError::Internal(anyhow!(
                        "the migration {status}: {why}"
                    )));
                }
                _ => {}
            }
            if left < best_left {
                best_left = left;
                last_gain = Instant::now();
            }
            let total = (sent + left).max(1);
            progress(
                sent as f64 / total as f64,
                format!(
                    "{status}: {} MiB sent, {} MiB left, downtime limit {downtime} ms",
                    sent >> 20,
                    left >> 20
                ),
            );
            if status != "active" || forced {
                continue;
            }
            let stalled = last_gain.elapsed();
            if stalled >= ESCALATE_AFTER
                && escalated.elapsed() >= ESCALATE_AFTER
                && downtime < max_downtime
            {
                downtime = (downtime * 2).min(max_downtime);
                escalated = Instant::now();
                let _ = qmp
                    .execute(
                        "migrate-set-parameters",
                        json!({ "downtime-limit": downtime }),
                    )
                    .await;
            }
            if downtime >= max_downtime && stalled >= Duration::from_secs(req.stall_secs) {
                if req.force_complete {
                    // Paused, the guest dirties nothing more: what is left is sent, then
                    // the VM resumes on the other side.
                    qmp.execute("stop", json!({})).await.map_err(fail)?;
                    forced = true;
                    progress(
                        sent as f64 / total as f64,
                        "not converging: the guest is paused to finish".into(),
                    );
                } else {
                    let _ = qmp.execute("migrate_cancel", json!({})).await;
                    return Err(AgentError::Conflict(format!(
                        "the migration did not converge: {} MiB still left after {} s \
                         without progress at a {downtime} ms downtime limit; the VM keeps \
                         running here. Allow more downtime (--max-downtime), or finish by \
                         pausing it (--force-complete)",
                        left >> 20,
                        req.stall_secs
                    )));
                }
            }
        }
    }
}

/// Starts mirroring each disk to its NBD export on the target (only the VM's own layer:
/// the target's disk has the same image under it) and waits until every mirror is in
/// step; from then on each guest write reaches both sides before it completes.
async fn mirror_disks(
    qmp: &hostel_qemu::Qmp,
    m: &DiskMirror,
    progress: &mut (dyn FnMut(f64, String) + Send),
) -> Result<(), AgentError> {
    let fail = |e: hostel_qemu::QmpError| AgentError::Internal(anyhow!("mirroring the disks: {e}"));
    for i in &m.disks {
        qmp.execute(
            "blockdev-add",
            json!({"driver": "nbd", "node-name": format!("mig{i}"),
                "server": {"type": "inet", "host": m.host, "port": m.port.to_string()},
                "export": format!("disk{i}")}),
        )
        .await
        .map_err(fail)?;
        qmp.execute(
            "blockdev-mirror",
            json!({"job-id": format!("mig{i}"), "device": format!("disk{i}"),
                "target": format!("mig{i}"), "sync": "top", "copy-mode": "write-blocking",
                "auto-dismiss": false}),
        )
        .await
        .map_err(fail)?;
    }
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let jobs = qmp
            .execute("query-block-jobs", json!({}))
            .await
            .map_err(fail)?;
        let ours: Vec<&serde_json::Value> = jobs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|j| j["device"].as_str().is_some_and(|d| d.starts_with("mig")))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(j) = ours
            .iter()
            .find(|j| j["status"] == "concluded" || j["error"].is_string())
        {
            return Err(AgentError::Internal(anyhow!(
                "mirroring disk {} failed: {}",
                j["device"],
                j["error"].as_str().unwrap_or("it ended early")
            )));
        }
        let (len, done) = ours.iter().fold((0u64, 0u64), |(l, o), j| {
            (
                l + j["len"].as_u64().unwrap_or(0),
                o + j["offset"].as_u64().unwrap_or(0),
            )
        });
        if ours.len() == m.disks.len() && ours.iter().all(|j| j["ready"] == true) {
            return Ok(());
        }
        progress(
            0.0,
            format!("mirroring the disks: {} of {} MiB", done >> 20, len >> 20),
        );
        if Instant::now() > deadline {
            return Err(AgentError::Timeout(
                "the disks' mirror was not in step within an hour".into(),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Ends the mirror jobs without switching the source over, and drops their targets:
/// after a completed migration each job first finishes its last writes (`force` off),
/// after a failed one it is abandoned.
async fn stop_mirrors(qmp: &hostel_qemu::Qmp, m: &DiskMirror, force: bool) {
    for i in &m.disks {
        let _ = qmp
            .execute(
                "block-job-cancel",
                json!({"device": format!("mig{i}"), "force": force}),
            )
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = qmp
            .execute("query-block-jobs", json!({}))
            .await
            .unwrap_or_default();
        let mut left = false;
        for j in jobs.as_array().into_iter().flatten() {
            let Some(d) = j["device"].as_str().filter(|d| d.starts_with("mig")) else {
                continue;
            };
            if j["status"] == "concluded" {
                let _ = qmp.execute("job-dismiss", json!({"id": d})).await;
            } else {
                left = true;
            }
        }
        if !left || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in &m.disks {
        let _ = qmp
            .execute("blockdev-del", json!({"node-name": format!("mig{i}")}))
            .await;
    }
}
