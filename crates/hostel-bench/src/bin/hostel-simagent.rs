//! `hostel-simagent`: a SIMULATED fleet of agents for the control-plane benchmark, and
//! nothing else. It runs no QEMU and touches no disk or network: each simulated host
//! answers the agent API (HTTPS, mutual TLS with the cluster CA, the same wire types as
//! `hostel agent`) on a port of its own, and keeps its VMs as records in memory.
//!
//! Host k is `simhost-k`. It reports as running the fleet VMs `simvm-i` with
//! `i % hosts == k` and `i <` the number in `--fleet-file` (read at each listing, so the
//! benchmark can grow the fleet it wrote into the database); VMs the controller starts on
//! it are kept in memory, and each change is streamed on `/v1/events` like a real agent's.
//!
//! Usage: hostel-simagent --hosts N --tls-dir DIR --fleet-file FILE [--listen-ip IP]
//! Prints one `https://IP:PORT` a host, then `ready`.

use anyhow::{bail, Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hostel_api::agent::*;
use hostel_model::{Accel, VmState};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

struct SimHost {
    index: usize,
    hosts: usize,
    fleet_file: PathBuf,
    /// VMs started through the API, by id.
    vms: Mutex<HashMap<String, VmStatus>>,
    /// Fleet VMs the controller stopped (they no longer run).
    stopped: Mutex<HashSet<String>>,
    events: tokio::sync::broadcast::Sender<Event>,
}

type S = State<Arc<SimHost>>;

fn status(id: &str, name: &str, state: VmState, pid: Option<u32>) -> VmStatus {
    VmStatus {
        id: id.into(),
        name: name.into(),
        state,
        reason: Some("simulated".into()),
        pid,
        argv: vec!["(simulated agent: no QEMU)".into()],
        accel: Accel::Kvm,
        balloon_mib: None,
        vcpus: 1,
        nics: Vec::new(),
    }
}

impl SimHost {
    fn name(&self) -> String {
        format!("simhost-{}", self.index)
    }

    /// The fleet VMs this host runs now: `simvm-i` for its share of i below the count.
    fn fleet(&self) -> Vec<VmStatus> {
        let n: usize = std::fs::read_to_string(&self.fleet_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let stopped = self.stopped.lock().unwrap();
        (self.index..n)
            .step_by(self.hosts)
            .map(|i| format!("simvm-{i}"))
            .filter(|id| !stopped.contains(id))
            .map(|id| {
                let i: u32 = id[6..].parse().unwrap_or(0);
                let name = format!("sim{i}");
                status(&id, &name, VmState::Running, Some(100_000 + i))
            })
            .collect()
    }

    fn find(&self, id: &str) -> Option<VmStatus> {
        if let Some(s) = self.vms.lock().unwrap().get(id) {
            return Some(s.clone());
        }
        if id.starts_with("simvm-") {
            return self.fleet().into_iter().find(|s| s.id == id);
        }
        None
    }

    fn set(&self, s: VmStatus) -> VmStatus {
        let _ = self.events.send(Event {
            vm_id: s.id.clone(),
            state: s.state,
            reason: s.reason.clone(),
            pid: s.pid,
        });
        if s.id.starts_with("simvm-") && !s.state.has_process() {
            self.stopped.lock().unwrap().insert(s.id.clone());
        }
        self.vms.lock().unwrap().insert(s.id.clone(), s.clone());
        s
    }
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(hostel_api::ErrorBody {
            error: "not-found".into(),
            message: format!("no VM {id} on this simulated host"),
            field: None,
        }),
    )
        .into_response()
}

async fn facts(State(h): S) -> Json<HostFacts> {
    Json(HostFacts {
        name: h.name(),
        cpus: 64,
        memory_total_mib: 256 * 1024,
        accel: Accel::Kvm,
        accel_reason: "simulated agent (no probe)".into(),
        qemu_version: "simulated".into(),
        kernel: "simulated".into(),
        disks_dir: "/simulated".into(),
    })
}

async fn events(State(h): S) -> Response {
    // Exactly a real agent's stream: heartbeats included.
    hostel_agent::events_response(h.events.subscribe())
}

async fn list(State(h): S) -> Json<Vec<VmStatus>> {
    let mut out = h.fleet();
    out.extend(
        h.vms
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.state.has_process())
            .cloned(),
    );
    Json(out)
}

async fn one(State(h): S, Path(id): Path<String>) -> Response {
    match h.find(&id) {
        Some(s) => Json(s).into_response(),
        None => not_found(&id),
    }
}

async fn start(State(h): S, Path(id): Path<String>, Json(req): Json<StartRequest>) -> Response {
    h.stopped.lock().unwrap().remove(&id);
    let pid = 200_000 + (h.vms.lock().unwrap().len() as u32);
    Json(h.set(status(&id, &req.spec.name, VmState::Running, Some(pid)))).into_response()
}

async fn action(State(h): S, Path((id, action)): Path<(String, String)>) -> Response {
    let Some(mut s) = h.find(&id) else {
        return not_found(&id);
    };
    s.state = match action.as_str() {
        "destroy" | "shutdown" => VmState::Stopped,
        "pause" => VmState::Paused,
        "unpause" | "reboot" => VmState::Running,
        _ => return not_found(&id),
    };
    if !s.state.has_process() {
        s.pid = None;
    }
    Json(h.set(s)).into_response()
}

async fn forget(State(h): S, Path(id): Path<String>) -> Json<()> {
    h.vms.lock().unwrap().remove(&id);
    Json(())
}

async fn create_disk(Json(req): Json<CreateDiskRequest>) -> Json<DiskCreated> {
    Json(DiskCreated {
        path: format!("/simulated/{}/disk{}.qcow2", req.vm_id, req.index),
        format: "qcow2".into(),
        size_mib: req.size_mib,
    })
}

async fn render() -> Json<Vec<String>> {
    Json(vec!["(simulated agent: no QEMU)".into()])
}

async fn ok() -> Json<()> {
    Json(())
}

fn router(h: Arc<SimHost>) -> Router {
    Router::new()
        .route("/v1/host", get(facts))
        .route("/v1/events", get(events))
        .route("/v1/vms", get(list))
        .route("/v1/vms/{id}", get(one))
        .route("/v1/vms/{id}/start", post(start))
        .route("/v1/vms/{id}/forget", post(forget))
        .route("/v1/vms/{id}/{action}", post(action))
        .route("/v1/networks", axum::routing::put(ok))
        .route("/v1/disks", post(create_disk))
        .route("/v1/disks/delete", post(ok))
        .route("/v1/render", post(render))
        .with_state(h)
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mut hosts, mut tls_dir, mut fleet_file, mut ip) = (0usize, None, None, "127.0.0.1");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hosts" => hosts = it.next().context("--hosts N")?.parse()?,
            "--tls-dir" => tls_dir = Some(PathBuf::from(it.next().context("--tls-dir DIR")?)),
            "--fleet-file" => fleet_file = Some(PathBuf::from(it.next().context("--fleet-file F")?)),
            "--listen-ip" => ip = it.next().context("--listen-ip IP")?,
            other => bail!("unknown argument {other:?}: use --hosts N --tls-dir DIR --fleet-file F [--listen-ip IP]"),
        }
    }
    let (Some(tls_dir), Some(fleet_file)) = (tls_dir, fleet_file) else {
        bail!("give --tls-dir and --fleet-file");
    };
    if hosts == 0 {
        bail!("give --hosts N (at least 1)");
    }
    let read = |f: &str| std::fs::read(tls_dir.join(f)).with_context(|| format!("reading {f}"));
    let (cert, key, ca) = (read("agent.pem")?, read("agent.key")?, read("ca.pem")?);
    let mut tasks = Vec::new();
    for index in 0..hosts {
        let listener = std::net::TcpListener::bind((ip, 0))?;
        println!("https://{}", listener.local_addr()?);
        let host = Arc::new(SimHost {
            index,
            hosts,
            fleet_file: fleet_file.clone(),
            vms: Mutex::default(),
            stopped: Mutex::default(),
            events: tokio::sync::broadcast::channel(1024).0,
        });
        let tls = hostel_agent::TlsFiles {
            cert_pem: cert.clone(),
            key_pem: key.clone(),
            client_ca_pem: ca.clone(),
        };
        tasks.push(tokio::spawn(hostel_agent::serve_router(
            router(host),
            listener,
            tls,
            futures::future::pending(),
        )));
    }
    println!("ready");
    for t in tasks {
        t.await??;
    }
    Ok(())
}
