//! The agent API over HTTPS. Only clients with a certificate from the cluster CA (the
//! controller) get through the TLS handshake.

use crate::{AgentError, Shared};
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use hostel_api::agent::*;
use hostel_api::ErrorBody;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            AgentError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            AgentError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AgentError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            AgentError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = self.to_string();
        let field = match &self {
            AgentError::Invalid(_) => message.split(':').next().map(|f| f.to_string()),
            _ => None,
        };
        (
            status,
            Json(ErrorBody {
                error: code.into(),
                message,
                field,
            }),
        )
            .into_response()
    }
}

type S = State<Arc<Shared>>;
type R<T> = Result<Json<T>, AgentError>;

pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Client certificates must chain to this CA.
    pub client_ca_pem: Vec<u8>,
}

fn server_config(tls: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer> =
        CertificateDer::pem_slice_iter(&tls.cert_pem).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&tls.client_ca_pem) {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
    Ok(rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?)
}

/// Serves the agent API on `listener` until `shutdown` resolves.
pub async fn serve(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    tls: TlsFiles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_router(router(shared), listener, tls, shutdown).await
}

/// Serves `app` over HTTPS that takes only clients with a certificate from the CA in
/// `tls`, until `shutdown` resolves.
pub async fn serve_router(
    app: Router,
    listener: std::net::TcpListener,
    tls: TlsFiles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server_config(&tls)?));
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    listener.set_nonblocking(true)?;
    // TCP_NODELAY: a response goes out as several small TLS records; with Nagle on, the
    // later ones wait for the client's delayed ACK (40 ms a request, measured).
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
        .acceptor(axum_server::accept::NoDelayAcceptor::new());
    axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await?;
    Ok(())
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/host", get(host))
        .route("/v1/events", get(events))
        .route("/v1/vms", get(list))
        .route("/v1/vms/{id}", get(status))
        .route("/v1/vms/{id}/start", post(start))
        .route("/v1/vms/{id}/destroy", post(destroy))
        .route("/v1/vms/{id}/shutdown", post(shutdown))
        .route("/v1/vms/{id}/reboot", post(reboot))
        .route("/v1/vms/{id}/pause", post(pause))
        .route("/v1/vms/{id}/unpause", post(unpause))
        .route("/v1/vms/{id}/balloon", post(balloon))
        .route("/v1/vms/{id}/vcpus", post(vcpus))
        .route("/v1/vms/{id}/save", post(save))
        .route("/v1/vms/{id}/forget", post(forget))
        .route("/v1/vms/{id}/console", get(console))
        .route("/v1/vms/{id}/console-log", get(console_log))
        .route("/v1/vms/{id}/vnc", get(vnc))
        .route("/v1/save-header", post(save_header))
        .route("/v1/render", post(render))
        .route("/v1/files", get(files).post(files_with_pools))
        .route(
            "/v1/networks",
            axum::routing::put(put_networks).get(get_networks),
        )
        .route("/v1/vms/{id}/nics", post(add_nic))
        .route("/v1/vms/{id}/nics/remove", post(remove_nic))
        .route("/v1/pools/check", post(check_pool))
        .route("/v1/pools/forget-image", post(pool_forget_image))
        .route("/v1/disks", post(create_disk))
        .route("/v1/disks/delete", post(delete_disk))
        .route("/v1/disks/resize", post(resize_disk))
        .route("/v1/vms/{id}/disks", post(add_disk))
        .route("/v1/vms/{id}/snapshot", post(snapshot))
        .route("/v1/vms/{id}/disks/remove", post(remove_disk))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/import", post(import_image))
        .route("/v1/images/delete", post(delete_image))
        .with_state(shared)
}

async fn host(State(s): S) -> Json<HostFacts> {
    Json(s.facts().await)
}

async fn list(State(s): S) -> Json<Vec<VmStatus>> {
    let vms: Vec<_> = s.vms.lock().unwrap().values().cloned().collect();
    let mut out = Vec::new();
    for vm in vms {
        out.push(vm.status(&s).await);
    }
    Json(out)
}

fn find(s: &Shared, id: &str) -> Result<Arc<crate::vm::VmRuntime>, AgentError> {
    s.vm(id)
        .ok_or_else(|| AgentError::NotFound(format!("no VM {id} on this host")))
}

async fn status(State(s): S, Path(id): Path<String>) -> R<VmStatus> {
    Ok(Json(find(&s, &id)?.status(&s).await))
}

/// A stream of JSON lines, one per state change, for the controller to follow.
/// How often an idle event stream carries an empty line, so that the controller can
/// tell a live agent from a silent one (it gives up after `hostel_api::agent::EVENTS_SILENCE`).
const HEARTBEAT: Duration = Duration::from_secs(5);

async fn events(State(s): S) -> Response {
    events_response(s.subscribe())
}

/// The `/v1/events` answer for a subscription: an empty line first (the subscription is
/// in place), then an event a JSON line, and an empty line whenever 5 s pass without one.
pub fn events_response(rx: tokio::sync::broadcast::Receiver<Event>) -> Response {
    // A subscriber that fell behind has missed changes: end its stream, so the controller
    // reconnects and reconciles instead of going on with a wrong picture.
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let line = match tokio::time::timeout(HEARTBEAT, rx.recv()).await {
            Err(_) => b"\n".to_vec(),
            Ok(Ok(ev)) => {
                let mut line = serde_json::to_vec(&ev).ok()?;
                line.push(b'\n');
                line
            }
            Ok(Err(_)) => return None,
        };
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)),
            rx,
        ))
    });
    // A first empty line tells the client the subscription is in place.
    let hello = futures::stream::once(async { Ok(bytes::Bytes::from_static(b"\n")) });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(hello.chain(stream)))
        .unwrap()
}

async fn start(State(s): S, Path(id): Path<String>, Json(req): Json<StartRequest>) -> R<VmStatus> {
    if !crate::is_plain_name(&id) {
        return Err(AgentError::Invalid(anyhow::anyhow!(
            "id: {id:?} is not a VM id"
        )));
    }
    if req.spec.id != id {
        return Err(AgentError::Invalid(anyhow::anyhow!(
            "spec: id does not match the path"
        )));
    }
    let vm = s.vm_or_new(&req.spec);
    let _g = vm.op.lock().await;
    vm.start_with(
        &s,
        req.spec,
        req.restore_from.as_deref(),
        req.load_snapshot.as_deref(),
    )
    .await?;
    Ok(Json(vm.status(&s).await))
}

async fn destroy(State(s): S, Path(id): Path<String>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    // Destroy does not wait for a running operation: it is how a stuck one is ended.
    vm.destroy(&s).await?;
    Ok(Json(vm.status(&s).await))
}

async fn shutdown(
    State(s): S,
    Path(id): Path<String>,
    Json(req): Json<ShutdownRequest>,
) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.shutdown(&s, Duration::from_secs(req.timeout_secs), req.force)
        .await?;
    Ok(Json(vm.status(&s).await))
}

async fn reboot(State(s): S, Path(id): Path<String>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    {
        let _g = vm.op.lock().await;
        vm.reboot(&s, Duration::from_secs(60)).await?;
    }
    Ok(Json(vm.status(&s).await))
}

async fn pause(State(s): S, Path(id): Path<String>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.pause(&s).await?;
    Ok(Json(vm.status(&s).await))
}

async fn unpause(State(s): S, Path(id): Path<String>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.unpause(&s).await?;
    Ok(Json(vm.status(&s).await))
}

async fn balloon(
    State(s): S,
    Path(id): Path<String>,
    Json(req): Json<BalloonRequest>,
) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.balloon(req.memory_mib).await?;
    Ok(Json(vm.status(&s).await))
}

async fn vcpus(State(s): S, Path(id): Path<String>, Json(req): Json<VcpusRequest>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.set_vcpus(&s, req.vcpus).await?;
    Ok(Json(vm.status(&s).await))
}

async fn save(State(s): S, Path(id): Path<String>, Json(req): Json<SaveRequest>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.save(&s, &req.path, &req.header).await?;
    Ok(Json(vm.status(&s).await))
}

async fn put_networks(State(s): S, Json(state): Json<NetworksState>) -> R<()> {
    // An uplink the host does not have is the caller's mistake, told before any change.
    for n in &state.networks {
        if let Some(u) = n.uplink.as_deref() {
            let missing = u == "." || u == ".." || !hostel_net::link::exists(u);
            if n.mode == hostel_model::net::NetMode::Bridged && missing {
                return Err(AgentError::Invalid(anyhow::anyhow!(
                    "uplink: this host has no interface {u:?} to put on network {:?}'s bridge",
                    n.name
                )));
            }
        }
    }
    let sh = s.clone();
    tokio::task::spawn_blocking(move || sh.apply_networks(&state))
        .await
        .map_err(|e| AgentError::Internal(e.into()))??;
    Ok(Json(()))
}

async fn get_networks(State(s): S) -> Json<NetworksState> {
    Json(s.networks.lock().unwrap().clone())
}

async fn add_nic(State(s): S, Path(id): Path<String>, Json(nic): Json<NicSpec>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.add_nic(&s, nic).await?;
    Ok(Json(vm.status(&s).await))
}

#[derive(Deserialize)]
struct IdBody {
    id: String,
}

async fn remove_nic(State(s): S, Path(id): Path<String>, Json(req): Json<IdBody>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.remove_nic(&s, &req.id).await?;
    Ok(Json(vm.status(&s).await))
}

/// What the host's disk, image and runtime stores hold.
async fn files(State(s): S) -> Json<StoredFiles> {
    let list = |dir: std::path::PathBuf, full: bool| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|r| {
                r.flatten()
                    .map(|e| {
                        if full {
                            e.path().display().to_string()
                        } else {
                            e.file_name().to_string_lossy().into_owned()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    Json(StoredFiles {
        disks: list(s.disks_dir(), true),
        images: list(s.images_dir(), true),
        runtime: list(s.run_dir(), false),
    })
}

/// [`files`], with the disk files of these pools too.
async fn files_with_pools(State(s): S, Json(pools): Json<Vec<PoolSpec>>) -> R<StoredFiles> {
    let mut out = files(State(s.clone())).await.0;
    for p in &pools {
        let pool = s.pool(Some(p))?;
        out.disks.extend(pool.files());
    }
    Ok(Json(out))
}

/// The command line a VM with this definition would start with on this host.
async fn render(State(s): S, Json(spec): Json<VmSpec>) -> Json<Vec<String>> {
    let paths = hostel_qemu::RuntimePaths::new(&s.run_dir(), &spec.id);
    Json(hostel_qemu::render(
        &spec,
        &paths,
        &s.host_opts().await,
        None,
    ))
}

#[derive(Deserialize)]
struct PathBody {
    path: String,
}

async fn save_header(Json(req): Json<PathBody>) -> R<SaveHeader> {
    Ok(Json(crate::vm::read_save_header(&req.path)?.0))
}

/// Drops what the agent knows of a VM that is being deleted, runtime dir included.
async fn forget(State(s): S, Path(id): Path<String>) -> R<()> {
    if let Some(vm) = s.vm(&id) {
        if vm.state().has_process() {
            return Err(AgentError::Conflict(
                "the VM is running; destroy it first".into(),
            ));
        }
        let _ = std::fs::remove_dir_all(&vm.paths.dir);
        s.vms.lock().unwrap().remove(&id);
    } else {
        if !crate::is_plain_name(&id) {
            return Err(AgentError::Invalid(anyhow::anyhow!(
                "id: {id:?} is not a VM id"
            )));
        }
        let dir = hostel_qemu::RuntimePaths::new(&s.run_dir(), &id).dir;
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(Json(()))
}

async fn console(
    State(s): S,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, AgentError> {
    let vm = find(&s, &id)?;
    Ok(ws.on_upgrade(move |socket| pump_console(socket, vm)))
}

async fn pump_console(socket: WebSocket, vm: Arc<crate::vm::VmRuntime>) {
    let (mut tx, mut rx) = socket.split();
    let (scrollback, mut out) = vm.console.subscribe();
    if !scrollback.is_empty() && tx.send(Message::Binary(scrollback.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            data = out.recv() => match data {
                Ok(b) => if tx.send(Message::Binary(b)).await.is_err() { break },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => { let _ = vm.console.send(b).await; }
                Some(Ok(Message::Text(t))) => {
                    let _ = vm.console.send(bytes::Bytes::copy_from_slice(t.as_bytes())).await;
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
}

/// The VM's VNC server (QEMU listens on a unix socket only) as a binary websocket.
async fn vnc(
    State(s): S,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, AgentError> {
    let vm = find(&s, &id)?;
    let sock = tokio::net::UnixStream::connect(vm.paths.vnc())
        .await
        .map_err(|e| AgentError::Conflict(format!("the VM's VNC server is not reachable: {e}")))?;
    Ok(ws.on_upgrade(move |socket| pump_vnc(socket, sock)))
}

async fn pump_vnc(socket: WebSocket, sock: tokio::net::UnixStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tx, mut rx) = socket.split();
    let (mut rd, mut wr) = sock.into_split();
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if tx.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    let up = async {
        while let Some(Ok(m)) = rx.next().await {
            let data = match m {
                Message::Binary(b) => b,
                Message::Text(t) => bytes::Bytes::copy_from_slice(t.as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = down => {},
        _ = up => {},
    }
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    lines: Option<usize>,
}

/// The last lines of a VM's console log (the rotated file, then the current one). The
/// files outlive the QEMU process, so a stopped or crashed VM's log can be read.
async fn console_log(
    State(s): S,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> R<Vec<String>> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(AgentError::Invalid(anyhow::anyhow!("bad VM id {id:?}")));
    }
    let path = hostel_qemu::RuntimePaths::new(&s.run_dir(), &id).console_log();
    let lines = q.lines.unwrap_or(100);
    let out = tokio::task::spawn_blocking(move || crate::console::tail_lines(&path, lines))
        .await
        .map_err(|e| AgentError::Internal(e.into()))?;
    Ok(Json(out))
}

async fn check_pool(State(s): S, Json(req): Json<PoolSpec>) -> R<PoolUsage> {
    let pool = s.pool(Some(&req))?;
    let u = tokio::task::spawn_blocking(move || {
        pool.check()?;
        pool.usage()
    })
    .await
    .map_err(|e| AgentError::Internal(e.into()))?
    .map_err(AgentError::Invalid)?;
    Ok(Json(PoolUsage {
        total_bytes: u.total_bytes,
        free_bytes: u.free_bytes,
        used_bytes: u.used_bytes,
    }))
}

#[derive(Deserialize)]
struct ForgetImage {
    pool: PoolSpec,
    image_id: String,
}

async fn pool_forget_image(State(s): S, Json(req): Json<ForgetImage>) -> R<()> {
    if !crate::is_plain_name(&req.image_id) {
        return Err(AgentError::Invalid(anyhow::anyhow!("not an image id")));
    }
    s.pool(Some(&req.pool))?.forget_base(&req.image_id);
    Ok(Json(()))
}

async fn create_disk(State(s): S, Json(req): Json<CreateDiskRequest>) -> R<DiskCreated> {
    if !crate::is_plain_name(&req.vm_id) {
        return Err(AgentError::Invalid(anyhow::anyhow!("vm_id: not a VM id")));
    }
    let pool = s.pool(req.pool.as_ref())?;
    let stem = format!("{}-{}", req.vm_id, req.index);
    let backing = req.backing.clone();
    let size = req.size_mib;
    let p = pool.clone();
    let path = tokio::task::spawn_blocking(move || {
        let base = backing.as_ref().map(|b| hostel_storage::pool::Base {
            path: std::path::Path::new(&b.path),
            format: &b.format,
            id: &b.image_id,
        });
        p.create_disk(&stem, size, base)
    })
    .await
    .map_err(|e| AgentError::Internal(e.into()))?
    .map_err(AgentError::Invalid)?;
    if let Err(e) = s.give_to_qemu(&path) {
        let _ = pool.delete_disk(&path);
        return Err(e.into());
    }
    Ok(Json(DiskCreated {
        path: path.display().to_string(),
        format: pool.driver.disk_format().into(),
        size_mib: req.size_mib,
    }))
}

async fn add_disk(State(s): S, Path(id): Path<String>, Json(disk): Json<DiskSpec>) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    if !s
        .pool(disk.pool.as_ref())?
        .holds(std::path::Path::new(&disk.path))
    {
        return Err(AgentError::Invalid(anyhow::anyhow!(
            "path: {} is not in the disk's pool",
            disk.path
        )));
    }
    let _g = vm.op.lock().await;
    vm.add_disk(disk).await?;
    Ok(Json(vm.status(&s).await))
}

async fn snapshot(State(s): S, Path(id): Path<String>, Json(req): Json<SnapshotRequest>) -> R<()> {
    let mut pools = Vec::new();
    for d in &req.disks {
        let pool = s.pool(d.pool.as_ref())?;
        if !pool.holds(std::path::Path::new(&d.path)) {
            return Err(AgentError::Invalid(anyhow::anyhow!(
                "path: {} is not in the disk's pool",
                d.path
            )));
        }
        pools.push(pool);
    }
    // qcow2 disks snapshot inside the file (through QEMU when it runs); btrfs disks by
    // subvolume, the VM paused meanwhile when it runs.
    let internal = pools
        .iter()
        .all(|p| p.driver == hostel_storage::pool::Driver::Dir);
    if !internal
        && pools
            .iter()
            .any(|p| p.driver == hostel_storage::pool::Driver::Dir)
    {
        return Err(AgentError::Conflict(
            "the VM has disks in a dir pool and in a btrfs pool; snapshots need all of its \
             disks in pools of one kind"
                .into(),
        ));
    }
    if req.memory && !internal {
        return Err(AgentError::Conflict(
            "memory: snapshots with memory need qcow2 disks (dir pools); this VM's disks are \
             in a btrfs pool: snapshot without --memory"
                .into(),
        ));
    }
    let live = s.vm(&id).filter(|vm| vm.state().has_process());
    if let (Some(vm), true) = (&live, internal) {
        let _g = vm.op.lock().await;
        vm.snapshot_live(&req.action, &req.name, req.memory).await?;
        return Ok(Json(()));
    }
    if req.memory {
        return Err(AgentError::Conflict(
            "a snapshot with memory needs a running VM".into(),
        ));
    }
    if live.is_some() && req.action != "create" && req.action != "delete" {
        return Err(AgentError::Conflict(format!(
            "cannot {} a snapshot while the VM runs: stop it first",
            req.action
        )));
    }
    let disks = req.disks.clone();
    let (action, name) = (req.action.clone(), req.name.clone());
    let work = move || -> anyhow::Result<()> {
        for (d, pool) in disks.iter().zip(&pools) {
            pool.snapshot(std::path::Path::new(&d.path), &action, &name)?;
        }
        Ok(())
    };
    match live {
        Some(vm) => {
            let _g = vm.op.lock().await;
            vm.while_paused(work).await?;
        }
        None => tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AgentError::Internal(e.into()))?
            .map_err(AgentError::Invalid)?,
    }
    Ok(Json(()))
}

async fn remove_disk(
    State(s): S,
    Path(id): Path<String>,
    Json(req): Json<DiskIndex>,
) -> R<VmStatus> {
    let vm = find(&s, &id)?;
    let _g = vm.op.lock().await;
    vm.remove_disk(req.index).await?;
    Ok(Json(vm.status(&s).await))
}

/// Grows a disk: online through QEMU when `index` names a running VM's disk (the VM id
/// is the query's `vm`), else offline with qemu-img on `path`.
async fn resize_disk(
    State(s): S,
    Query(q): Query<VmQuery>,
    Json(req): Json<ResizeDiskRequest>,
) -> R<()> {
    match (q.vm, req.index, req.path) {
        (Some(vm), Some(index), _) => {
            let vm = find(&s, &vm)?;
            let _g = vm.op.lock().await;
            vm.resize_disk(index, req.size_mib).await?;
        }
        (_, _, Some(path)) => {
            if !s
                .pool(req.pool.as_ref())?
                .holds(std::path::Path::new(&path))
            {
                return Err(AgentError::Invalid(anyhow::anyhow!(
                    "path: {path} is not in this host's disk store"
                )));
            }
            let size = req.size_mib;
            tokio::task::spawn_blocking(move || {
                hostel_storage::disk::resize(std::path::Path::new(&path), size)
            })
            .await
            .map_err(|e| AgentError::Internal(e.into()))?
            .map_err(AgentError::Invalid)?;
        }
        _ => {
            return Err(AgentError::Invalid(anyhow::anyhow!(
                "give the VM and disk index, or the disk's path"
            )))
        }
    }
    Ok(Json(()))
}

#[derive(Deserialize)]
struct VmQuery {
    vm: Option<String>,
}

async fn delete_disk(State(s): S, Json(req): Json<DeleteDiskRequest>) -> R<()> {
    let pool = s.pool(req.pool.as_ref())?;
    let path = std::path::PathBuf::from(&req.path);
    tokio::task::spawn_blocking(move || pool.delete_disk(&path))
        .await
        .map_err(|e| AgentError::Internal(e.into()))?
        .map_err(AgentError::Invalid)?;
    Ok(Json(()))
}

/// Builds an image, streaming progress as JSON lines: `{"progress":0.5,"message":"..."}`,
/// then `{"done":{...}}` or `{"error":"..."}`.
async fn build_image(State(s): S, Json(req): Json<BuildImageRequest>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    tokio::task::spawn_blocking(move || {
        let t = tx.clone();
        let r = s.build_image(&req, &mut |p, m| {
            let _ = t.send(serde_json::json!({"progress": p, "message": m}));
        });
        let _ = tx.send(match r {
            Ok(img) => serde_json::json!({"done": img}),
            Err(e) => serde_json::json!({"error": format!("{e:#}")}),
        });
    });
    ndjson(rx)
}

async fn import_image(State(s): S, Json(req): Json<ImportImageRequest>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    tokio::task::spawn_blocking(move || {
        let t = tx.clone();
        let mut last = -1.0f64;
        let r = s.import_image(&req.name, &req.source, &mut |p, m| {
            // A message per whole percent is plenty.
            if (p - last).abs() >= 0.01 {
                last = p;
                let _ = t.send(serde_json::json!({"progress": p, "message": m}));
            }
        });
        let _ = tx.send(match r {
            Ok(img) => serde_json::json!({"done": img}),
            Err(e) => serde_json::json!({"error": format!("{e:#}")}),
        });
    });
    ndjson(rx)
}

fn ndjson(rx: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) -> Response {
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn delete_image(State(s): S, Json(req): Json<PathBody>) -> R<()> {
    s.delete_image_files(&req.path)
        .map_err(AgentError::Invalid)?;
    Ok(Json(()))
}
