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
//!
//! The disks (when they move) are mirrored first, in write-blocking mode once in step;
//! QEMU then pauses before the switch-over (`pause-before-switchover`), the mirrors
//! finish while the guest is paused, and only then does the switch-over go on: disks and
//! memory switch together. With TLS (`StreamTls`) both streams are QEMU's TLS, with a
//! certificate for this migration only (`tls_creds`).
//!
//! Recovery (`migration_state`, `abandon_migration`) reads and ends a migration through
//! QMP alone, without the VM's operation lock a migration holds.

use crate::stream_tls::{drop_tls_files, tls_creds, TLS_ID};
use crate::vm::VmRuntime;
use crate::AgentError;
use anyhow::anyhow;
use hostel_api::agent::{
    DiskMirror, MigrateOutRequest, MigrationResult, MigrationState, MigrationStep, StreamTls,
};
use hostel_qemu::process::RunAs;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Progress of a migration: the fraction done, a message, the step it is at.
pub type Progress<'a> = dyn FnMut(f64, String, MigrationStep) + Send + 'a;

/// What this host's QEMU for the VM is doing about a migration.
pub(crate) async fn migration_state(vm: Option<&VmRuntime>) -> MigrationState {
    let Some((_, qmp)) = vm.and_then(|v| v.process()) else {
        return MigrationState::default();
    };
    let runstate = qmp
        .execute("query-status", json!({}))
        .await
        .ok()
        .and_then(|s| s["status"].as_str().map(String::from));
    let migration = qmp
        .execute("query-migrate", json!({}))
        .await
        .ok()
        .and_then(|m| m["status"].as_str().map(String::from));
    MigrationState {
        qemu: runstate.is_some(),
        runstate,
        migration,
    }
}

/// Gives up an outgoing migration before its switch-over: the stream and the disks'
/// mirrors stop, the mirrors' targets go, and with `resume` a guest left paused runs
/// again. Refused once the migration completed (the VM runs on the other host then),
/// unless the other host's QEMU is gone (`target_gone`): this one then runs on.
pub(crate) async fn abandon_migration(
    vm: &VmRuntime,
    resume: bool,
    target_gone: bool,
) -> Result<MigrationState, AgentError> {
    vm.migration_abandoned.store(true, Ordering::SeqCst);
    let Some((_, qmp)) = vm.process() else {
        return Ok(MigrationState::default());
    };
    let fail = |e: hostel_qemu::QmpError| AgentError::Internal(anyhow!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = migration_state(Some(vm)).await;
        // "completed" after a migration that brought the VM here is not one it sent.
        let sent = st.runstate.as_deref() == Some("postmigrate");
        match st.migration.as_deref() {
            Some("completed") if sent && !target_gone => {
                return Err(AgentError::Conflict(
                    "the migration completed: the VM runs on the other host".into(),
                ))
            }
            // Never resumed here: the other side ran the guest since (even if it is gone).
            Some(s) if s.starts_with("postcopy") => {
                return Err(AgentError::Conflict(format!(
                    "the migration is in post-copy ({s}): the VM runs on the other host, \
                     which still needs memory from this one"
                )))
            }
            Some("active" | "setup" | "device" | "pre-switchover" | "wait-unplug") => {
                let _ = qmp.execute("migrate_cancel", json!({})).await;
            }
            Some("cancelling") => {}
            _ => break,
        }
        if Instant::now() > deadline {
            return Err(AgentError::Timeout(
                "QEMU did not cancel the migration within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_mirrors(&qmp, None, true).await;
    drop_tls_files(&vm.paths);
    let st = migration_state(Some(vm)).await;
    if resume && st.runstate.as_deref() != Some("running") && st.qemu {
        qmp.execute("cont", json!({})).await.map_err(fail)?;
    }
    Ok(migration_state(Some(vm)).await)
}

/// A post-copy whose link broke (`postcopy-paused` on both ends) resumes: the receiving
/// QEMU listens again on `listen` (`migrate-recover`), once; its port is the answer.
pub(crate) async fn recover_incoming(vm: &VmRuntime, listen: &str) -> Result<u16, AgentError> {
    let Some((_, qmp)) = vm.process() else {
        return Err(AgentError::Conflict(
            "the VM has no QEMU on this host".into(),
        ));
    };
    let mut st = migration_state(Some(vm)).await;
    // The source found the link dead; this end may not have yet (a link that drops
    // everything tells nobody): it stops waiting on it.
    if st.migration.as_deref() == Some("postcopy-active") {
        let _ = qmp.execute("migrate-pause", json!({})).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while st.migration.as_deref() == Some("postcopy-active") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            st = migration_state(Some(vm)).await;
        }
    }
    if st.migration.as_deref() != Some("postcopy-paused") {
        *vm.recover_port.lock().unwrap() = None;
        return Err(AgentError::Conflict(format!(
            "no post-copy waits for its link here (the migration is {})",
            st.migration.as_deref().unwrap_or("none")
        )));
    }
    if let Some(port) = *vm.recover_port.lock().unwrap() {
        return Ok(port);
    }
    let port = std::net::TcpListener::bind((listen, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| AgentError::Invalid(anyhow!("listen: cannot listen on {listen}: {e}")))?;
    let uri = hostel_api::agent::tcp_uri(listen, port);
    qmp.execute("migrate-recover", json!({ "uri": uri }))
        .await
        .map_err(|e| AgentError::Internal(anyhow!("QEMU refused to listen again: {e}")))?;
    *vm.recover_port.lock().unwrap() = Some(port);
    Ok(port)
}

/// The sending QEMU of a post-copy whose link broke sends the rest to `uri`, where the
/// receiving one listens again.
pub(crate) async fn resume_outgoing(
    vm: &VmRuntime,
    uri: &str,
) -> Result<MigrationState, AgentError> {
    let Some((_, qmp)) = vm.process() else {
        return Err(AgentError::Conflict(
            "the VM has no QEMU on this host".into(),
        ));
    };
    let st = migration_state(Some(vm)).await;
    if st.migration.as_deref() != Some("postcopy-paused") {
        return Err(AgentError::Conflict(format!(
            "no post-copy lost its link here (the migration is {})",
            st.migration.as_deref().unwrap_or("none")
        )));
    }
    qmp.execute("migrate", json!({ "uri": uri, "resume": true }))
        .await
        .map_err(|e| AgentError::Internal(anyhow!("QEMU refused to resume: {e}")))?;
    Ok(migration_state(Some(vm)).await)
}

/// The downtime limit a migration starts with (ms), or the caller's most if lower.
const FIRST_DOWNTIME_MS: u64 = 50;
/// How often QEMU is asked how far it is.
/// (Often: the switch-over is noticed within this, and the guest's pause with it.)
const POLL: Duration = Duration::from_millis(20);
/// How often progress is reported.
const REPORT: Duration = Duration::from_millis(200);
/// Without progress for this long, the downtime limit is raised.
const ESCALATE_AFTER: Duration = Duration::from_secs(2);

impl VmRuntime {
    /// Sends the VM to `req.uri`; `progress` hears the fraction sent, a message and the
    /// step. `owner` is the uid its QEMU runs as (which reads the TLS files).
    pub async fn migrate_out(
        &self,
        req: &MigrateOutRequest,
        owner: Option<&RunAs>,
        progress: &mut Progress<'_>,
    ) -> Result<MigrationResult, AgentError> {
        let qmp = self.qmp_handle()?;
        let was_running = qmp
            .execute("query-status", json!({}))
            .await
            .map(|s| s["status"] == "running")
            .unwrap_or(false);
        // A VM that came here by migration serves no NBD export any more: a writable one
        // left over would stop QEMU from handing its disks over at the switch-over.
        let _ = qmp.execute("nbd-server-stop", json!({})).await;
        let res = async {
            if let Some(t) = &req.tls {
                tls_creds(&qmp, &self.paths, t, "client", owner).await?;
            }
            if let Some(m) = &req.mirror {
                // Nothing left over from an earlier try stands in the way.
                stop_mirrors(&qmp, None, true).await;
                hostel_faults::point("agent.migrate-out.storage").await;
                self.still_wanted()?;
                mirror_disks(&qmp, m, req.tls.as_ref(), progress).await?;
            }
            hostel_faults::point("agent.migrate-out.memory").await;
            self.still_wanted()?;
            self.send_memory(&qmp, req, progress).await
        }
        .await;
        drop_tls_files(&self.paths);
        let in_postcopy = qmp
            .execute("query-migrate", json!({}))
            .await
            .is_ok_and(|m| {
                m["status"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("postcopy"))
            });
        if res.is_err() && !in_postcopy {
            // Not switched over: the target's copy of the disks is dropped, and the
            // guest runs here again if it ran before. (In post-copy the guest runs on
            // the target: this QEMU only keeps the memory it still needs.)
            stop_mirrors(&qmp, req.mirror.as_ref(), true).await;
            if was_running {
                let _ = qmp.execute("cont", json!({})).await;
            }
        }
        res
    }

    /// Fails once the migration was given up.
    fn still_wanted(&self) -> Result<(), AgentError> {
        if self.migration_abandoned.load(Ordering::SeqCst) {
            return Err(AgentError::Conflict("the migration was cancelled".into()));
        }
        Ok(())
    }

    async fn send_memory(
        &self,
        qmp: &hostel_qemu::Qmp,
        req: &MigrateOutRequest,
        progress: &mut Progress<'_>,
    ) -> Result<MigrationResult, AgentError> {
        let fail = |e: hostel_qemu::QmpError| AgentError::Internal(anyhow!("{e}"));
        // When disks are mirrored, this end also stops before the switch-over, to finish
        // the mirrors while the guest is paused (set either way: the QEMU may have sent
        // a VM before).
        let mut caps = serde_json::to_value(&req.capabilities).unwrap_or_default();
        if let Some(a) = caps.as_array_mut() {
            a.push(json!({"capability": "pause-before-switchover",
                "state": req.mirror.is_some()}));
        }
        qmp.execute("migrate-set-capabilities", json!({ "capabilities": caps }))
            .await
            .map_err(fail)?;
        let max_downtime = req.max_downtime_ms.max(1);
        let mut downtime = FIRST_DOWNTIME_MS.min(max_downtime);
        let mut params = json!({ "downtime-limit": downtime });
        if let Some(b) = req.bandwidth_mibps {
            // The cap holds in post-copy too (QEMU has a limit of its own for it).
            params["max-bandwidth"] = json!(b << 20);
            params["max-postcopy-bandwidth"] = json!(b << 20);
        }
        match &req.tls {
            Some(t) => {
                params["tls-creds"] = json!(TLS_ID);
                params["tls-hostname"] = json!(t.hostname);
            }
            None => params["tls-creds"] = json!(""),
        }
        qmp.execute("migrate-set-parameters", params)
            .await
            .map_err(fail)?;
        qmp.execute("migrate", json!({ "uri": req.uri }))
            .await
            .map_err(|e| AgentError::Invalid(anyhow!("uri: QEMU refused to migrate: {e}")))?;
        let mut best_left = u64::MAX;
        let mut best_sent = 0;
        let mut last_gain = Instant::now();
        let mut escalated = Instant::now();
        let mut forced = false;
        let mut switched = false;
        // Post-copy is the last step where the caller set it up (memory only moves).
        let may_postcopy = req
            .capabilities
            .iter()
            .any(|c| c.capability == "postcopy-ram" && c.state);
        let mut postcopy = false;
        let mut reported = Instant::now() - REPORT;
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
                        tls: req.tls.is_some(),
                        postcopy,
                    })
                }
                "postcopy-paused" => {
                    return Err(AgentError::Internal(anyhow!(
                        "the link to the target broke during post-copy: the VM waits there, \
                         paused, for the rest of its memory, which this host keeps"
                    )));
                }
                "failed" | "cancelled" => {
                    let why = m["error-desc"].as_str().unwrap_or(status).to_string();
                    return Err(AgentError::Internal(anyhow!(
                        "the migration {status}: {why}"
                    )));
                }
                "pre-switchover" if !switched => {
                    // The guest is paused: the mirrors take their last writes and end,
                    // then the switch-over goes on.
                    switched = true;
                    progress(
                        1.0,
                        "switching over: the guest is paused".into(),
                        MigrationStep::Switchover,
                    );
                    hostel_faults::point("agent.migrate-out.switchover").await;
                    stop_mirrors(qmp, req.mirror.as_ref(), false).await;
                    qmp.execute("migrate-continue", json!({"state": "pre-switchover"}))
                        .await
                        .map_err(fail)?;
                    continue;
                }
                _ => {}
            }
            if left < best_left || (postcopy && sent > best_sent) {
                best_left = left.min(best_left);
                last_gain = Instant::now();
            }
            best_sent = best_sent.max(sent);
            let total = (sent + left).max(1);
            if reported.elapsed() >= REPORT {
                reported = Instant::now();
                // In post-copy, the pages the target asked for show that it runs the guest.
                let asked = match ram["postcopy-requests"].as_u64() {
                    Some(n) if postcopy => format!(", {n} pages fetched on demand"),
                    _ => String::new(),
                };
                progress(
                    sent as f64 / total as f64,
                    format!(
                        "{status}: {} MiB sent, {} MiB left, downtime limit {downtime} ms{asked}",
                        sent >> 20,
                        left >> 20
                    ),
                    MigrationStep::Memory,
                );
            }
            if self.migration_abandoned.load(Ordering::SeqCst)
                && !matches!(status, "cancelling" | "completed")
            {
                let _ = qmp.execute("migrate_cancel", json!({})).await;
            }
            if status == "setup" && last_gain.elapsed() >= Duration::from_secs(req.stall_secs) {
                let _ = qmp.execute("migrate_cancel", json!({})).await;
                return Err(AgentError::Timeout(format!(
                    "the target did not take the stream within {} s (is the link between \
                     the hosts down?); the VM keeps running here",
                    req.stall_secs
                )));
            }
            if status == "postcopy-active"
                && last_gain.elapsed() >= Duration::from_secs(req.stall_secs)
            {
                // Nothing sent for that long in post-copy: the link is dead even if no
                // error came back. Paused, it can be resumed over a new one.
                let _ = qmp.execute("migrate-pause", json!({})).await;
            }
            if status != "active" || forced || postcopy {
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
                if may_postcopy {
                    // The guest runs on the target from here; the pages it has not got
                    // are fetched from here when it touches them, the rest sent after.
                    qmp.execute("migrate-start-postcopy", json!({}))
                        .await
                        .map_err(fail)?;
                    postcopy = true;
                    last_gain = Instant::now();
                    progress(
                        sent as f64 / total as f64,
                        "not converging: post-copy, the guest runs on the target and its \
                         memory follows"
                            .into(),
                        MigrationStep::Switchover,
                    );
                } else if req.force_complete {
                    // Paused, the guest dirties nothing more: what is left is sent, then
                    // the VM resumes on the other side.
                    qmp.execute("stop", json!({})).await.map_err(fail)?;
                    forced = true;
                    progress(
                        sent as f64 / total as f64,
                        "not converging: the guest is paused to finish".into(),
                        MigrationStep::Memory,
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

/// Cuts a given-up migration's connections at once (QMP `yank`): the memory stream and
/// the mirrors' NBD links. Over a link that went dead, they would otherwise hold their
/// requests, and the guest's writes with them, until TCP gives up many minutes later.
async fn yank_streams(qmp: &hostel_qemu::Qmp) {
    let instances = qmp
        .execute("query-yank", json!({}))
        .await
        .unwrap_or_default();
    let ours: Vec<serde_json::Value> = instances
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            i["type"] == "migration"
                || (i["type"] == "block-node"
                    && i["node-name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("mig")))
        })
        .cloned()
        .collect();
    if !ours.is_empty() {
        let _ = qmp.execute("yank", json!({ "instances": ours })).await;
    }
}

/// Starts mirroring each disk to its NBD export on the target (only the VM's own layer:
/// the target's disk has the same image under it) and waits until every mirror is in
/// step; from then on each guest write reaches both sides before it completes.
async fn mirror_disks(
    qmp: &hostel_qemu::Qmp,
    m: &DiskMirror,
    tls: Option<&StreamTls>,
    progress: &mut Progress<'_>,
) -> Result<(), AgentError> {
    let fail = |e: hostel_qemu::QmpError| AgentError::Internal(anyhow!("mirroring the disks: {e}"));
    for i in &m.disks {
        let mut node = json!({"driver": "nbd", "node-name": format!("mig{i}"),
            "server": {"type": "inet", "host": m.host, "port": m.port.to_string()},
            "export": format!("disk{i}")});
        if let Some(t) = tls {
            node["tls-creds"] = json!(TLS_ID);
            node["tls-hostname"] = json!(t.hostname);
        }
        qmp.execute("blockdev-add", node).await.map_err(fail)?;
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
            MigrationStep::Storage,
        );
        if Instant::now() > deadline {
            return Err(AgentError::Timeout(
                "the disks' mirror was not in step within an hour".into(),
            ));
        }
        tokio::time::sleep(REPORT).await;
    }
}

/// Ends the mirror jobs without switching the source over, and drops their targets
/// (`m`'s disks, or every mirror of a migration when not known): at the switch-over
/// each job first finishes its last writes (`force` off), after a failure it is
/// abandoned, the migration's connections cut first (`yank_streams`).
async fn stop_mirrors(qmp: &hostel_qemu::Qmp, m: Option<&DiskMirror>, force: bool) {
    if force {
        // Given up: its links go at once, before the jobs wait on a dead one.
        yank_streams(qmp).await;
    }
    let ours = |d: &str| d.starts_with("mig");
    let jobs = qmp
        .execute("query-block-jobs", json!({}))
        .await
        .unwrap_or_default();
    let mut nodes: Vec<String> = m
        .map(|m| m.disks.iter().map(|i| format!("mig{i}")).collect())
        .unwrap_or_default();
    // Left by an earlier life of the agent too: the jobs and the NBD nodes there are.
    let named = qmp
        .execute("query-named-block-nodes", json!({"flat": true}))
        .await
        .unwrap_or_default();
    let found = jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["device"].as_str())
        .chain(
            named
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["node-name"].as_str()),
        );
    for d in found.filter(|d| ours(d)) {
        if !nodes.iter().any(|n| n == d) {
            nodes.push(d.to_string());
        }
    }
    for n in &nodes {
        let _ = qmp
            .execute("block-job-cancel", json!({"device": n, "force": force}))
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
            let Some(d) = j["device"].as_str().filter(|d| ours(d)) else {
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
    for n in &nodes {
        let _ = qmp.execute("blockdev-del", json!({"node-name": n})).await;
    }
}
