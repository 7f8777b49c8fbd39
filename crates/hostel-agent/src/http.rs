//! The agent API over HTTPS: one router for any [`AgentApi`] (the real agent, the
//! simulated one), built from the declarations in `hostel_api::agent::endpoints`. Only
//! clients with a certificate from the cluster CA (the controller) get through the TLS
//! handshake.

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawPathParams, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use hostel_api::agent::endpoints::{
    self as ep, DownloadEndpoint, Endpoint, Method, PathParams, SocketEndpoint, StreamEndpoint,
    UploadEndpoint, VmId,
};
use hostel_api::agent::{AgentApi, AgentFailure, ByteStream, Lines, SizedBytes};
use hostel_api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// An [`AgentFailure`] as an HTTP answer: its code's status, and an [`ErrorBody`].
struct Failure(AgentFailure);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::from(self.0))).into_response()
    }
}

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

/// Serves the real agent's API on `listener` until `shutdown` resolves.
pub async fn serve(
    shared: Arc<crate::Shared>,
    listener: std::net::TcpListener,
    tls: TlsFiles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_router(api_router(shared), listener, tls, shutdown).await
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

/// The agent API of `api` as HTTP routes, one for each declared endpoint.
pub fn api_router<A>(api: Arc<A>) -> Router
where
    A: AgentApi<Error = AgentFailure>,
    A::Socket: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    Router::new()
        .route(
            ep::HostInfo::ROUTE,
            json::<A, ep::HostInfo, _, _>(|a, (), _| async move { a.host().await }),
        )
        .route(
            ep::ListVms::ROUTE,
            json::<A, ep::ListVms, _, _>(|a, (), _| async move { a.list_vms().await }),
        )
        .route(
            ep::GetVm::ROUTE,
            json::<A, ep::GetVm, _, _>(|a, id, _| async move { a.get_vm(&id).await }),
        )
        .route(
            ep::StartVm::ROUTE,
            json::<A, ep::StartVm, _, _>(|a, id, r| async move { a.start_vm(&id, r).await }),
        )
        .route(
            ep::DestroyVm::ROUTE,
            json::<A, ep::DestroyVm, _, _>(|a, id, _| async move { a.destroy_vm(&id).await }),
        )
        .route(
            ep::ShutdownVm::ROUTE,
            json::<A, ep::ShutdownVm, _, _>(|a, id, r| async move { a.shutdown_vm(&id, r).await }),
        )
        .route(
            ep::RebootVm::ROUTE,
            json::<A, ep::RebootVm, _, _>(|a, id, _| async move { a.reboot_vm(&id).await }),
        )
        .route(
            ep::PauseVm::ROUTE,
            json::<A, ep::PauseVm, _, _>(|a, id, _| async move { a.pause_vm(&id).await }),
        )
        .route(
            ep::UnpauseVm::ROUTE,
            json::<A, ep::UnpauseVm, _, _>(|a, id, _| async move { a.unpause_vm(&id).await }),
        )
        .route(
            ep::SetBalloon::ROUTE,
            json::<A, ep::SetBalloon, _, _>(|a, id, r| async move { a.set_balloon(&id, r).await }),
        )
        .route(
            ep::SetVcpus::ROUTE,
            json::<A, ep::SetVcpus, _, _>(|a, id, r| async move { a.set_vcpus(&id, r).await }),
        )
        .route(
            ep::SetLimits::ROUTE,
            json::<A, ep::SetLimits, _, _>(|a, id, r| async move { a.set_limits(&id, r).await }),
        )
        .route(
            ep::SaveVm::ROUTE,
            json::<A, ep::SaveVm, _, _>(|a, id, r| async move { a.save_vm(&id, r).await }),
        )
        .route(
            ep::ForgetVm::ROUTE,
            json::<A, ep::ForgetVm, _, _>(|a, id, _| async move { a.forget_vm(&id).await }),
        )
        .route(
            ep::ConsoleLog::ROUTE,
            json::<A, ep::ConsoleLog, _, _>(|a, id, r| async move { a.console_log(&id, r).await }),
        )
        .route(
            ep::ClearConsoleLog::ROUTE,
            json::<A, ep::ClearConsoleLog, _, _>(|a, id, _| async move {
                a.clear_console_log(&id).await
            }),
        )
        .route(
            ep::ReadSaveHeader::ROUTE,
            json::<A, ep::ReadSaveHeader, _, _>(
                |a, (), r| async move { a.read_save_header(r).await },
            ),
        )
        .route(
            ep::RenderArgv::ROUTE,
            json::<A, ep::RenderArgv, _, _>(|a, (), r| async move { a.render_argv(r).await }),
        )
        .route(
            ep::ListFiles::ROUTE,
            json::<A, ep::ListFiles, _, _>(|a, (), _| async move { a.list_files().await }),
        )
        .route(
            ep::ListFilesInPools::ROUTE,
            json::<A, ep::ListFilesInPools, _, _>(|a, (), r| async move {
                a.list_files_in_pools(r).await
            }),
        )
        .route(
            ep::PutNetworks::ROUTE,
            json::<A, ep::PutNetworks, _, _>(|a, (), r| async move { a.put_networks(r).await }),
        )
        .route(
            ep::GetNetworks::ROUTE,
            json::<A, ep::GetNetworks, _, _>(|a, (), _| async move { a.get_networks().await }),
        )
        .route(
            ep::AddNic::ROUTE,
            json::<A, ep::AddNic, _, _>(|a, id, r| async move { a.add_nic(&id, r).await }),
        )
        .route(
            ep::RemoveNic::ROUTE,
            json::<A, ep::RemoveNic, _, _>(|a, id, r| async move { a.remove_nic(&id, r).await }),
        )
        .route(
            ep::CheckPool::ROUTE,
            json::<A, ep::CheckPool, _, _>(|a, (), r| async move { a.check_pool(r).await }),
        )
        .route(
            ep::PoolForgetImage::ROUTE,
            json::<A, ep::PoolForgetImage, _, _>(
                |a, (), r| async move { a.pool_forget_image(r).await },
            ),
        )
        .route(
            ep::CreateDisk::ROUTE,
            json::<A, ep::CreateDisk, _, _>(|a, (), r| async move { a.create_disk(r).await }),
        )
        .route(
            ep::DeleteDisk::ROUTE,
            json::<A, ep::DeleteDisk, _, _>(|a, (), r| async move { a.delete_disk(r).await }),
        )
        .route(
            ep::ResizeDisk::ROUTE,
            json::<A, ep::ResizeDisk, _, _>(|a, (), r| async move { a.resize_disk(r).await }),
        )
        .route(
            ep::AddDisk::ROUTE,
            json::<A, ep::AddDisk, _, _>(|a, id, r| async move { a.add_disk(&id, r).await }),
        )
        .route(
            ep::RemoveDisk::ROUTE,
            json::<A, ep::RemoveDisk, _, _>(|a, id, r| async move { a.remove_disk(&id, r).await }),
        )
        .route(
            ep::Snapshot::ROUTE,
            json::<A, ep::Snapshot, _, _>(|a, id, r| async move { a.snapshot(&id, r).await }),
        )
        .route(
            ep::DeleteImage::ROUTE,
            json::<A, ep::DeleteImage, _, _>(|a, (), r| async move { a.delete_image(r).await }),
        )
        .route(
            ep::DeleteBackupFiles::ROUTE,
            json::<A, ep::DeleteBackupFiles, _, _>(|a, (), r| async move {
                a.delete_backup_files(r).await
            }),
        )
        .route(
            ep::VmStats::ROUTE,
            json::<A, ep::VmStats, _, _>(|a, (), _| async move { a.vm_stats().await }),
        )
        .route(
            ep::Events::ROUTE,
            lines::<A, ep::Events, _, _>(Some(HEARTBEAT), |a, _| async move { a.events().await }),
        )
        .route(
            ep::BuildImage::ROUTE,
            lines::<A, ep::BuildImage, _, _>(None, |a, r| async move { a.build_image(r).await }),
        )
        .route(
            ep::ImportImage::ROUTE,
            lines::<A, ep::ImportImage, _, _>(None, |a, r| async move { a.import_image(r).await }),
        )
        .route(
            ep::ImportDisk::ROUTE,
            lines::<A, ep::ImportDisk, _, _>(None, |a, r| async move { a.import_disk(r).await }),
        )
        .route(
            ep::BackupVm::ROUTE,
            lines::<A, ep::BackupVm, _, _>(None, |a, r| async move { a.backup_vm(r).await }),
        )
        .route(
            ep::ConsoleSocket::ROUTE,
            socket::<A, ep::ConsoleSocket, _, _>(
                |a, id| async move { a.console_socket(&id).await },
            ),
        )
        .route(
            ep::VncSocket::ROUTE,
            socket::<A, ep::VncSocket, _, _>(|a, id| async move { a.vnc_socket(&id).await }),
        )
        .route(
            ep::MigrateIn::ROUTE,
            json::<A, ep::MigrateIn, _, _>(|a, id, r| async move { a.migrate_in(&id, r).await }),
        )
        .route(
            ep::GetMigration::ROUTE,
            json::<A, ep::GetMigration, _, _>(|a, id, _| async move { a.get_migration(&id).await }),
        )
        .route(
            ep::AbandonMigration::ROUTE,
            json::<A, ep::AbandonMigration, _, _>(|a, id, r| async move {
                a.abandon_migration(&id, r).await
            }),
        )
        .route(
            ep::RecoverMigration::ROUTE,
            json::<A, ep::RecoverMigration, _, _>(|a, id, r| async move {
                a.recover_migration(&id, r).await
            }),
        )
        .route(
            ep::ResumeMigration::ROUTE,
            json::<A, ep::ResumeMigration, _, _>(|a, id, r| async move {
                a.resume_migration(&id, r).await
            }),
        )
        .route(
            ep::MigrateOut::ROUTE,
            lines::<A, ep::MigrateOut, _, _>(None, |a, r| async move { a.migrate_out(r).await }),
        )
        .route(
            ep::ReadImageFile::ROUTE,
            download::<A, ep::ReadImageFile, _, _>(
                |a, r| async move { a.read_image_file(r).await },
            ),
        )
        .route(
            ep::PutImage::ROUTE,
            upload::<A, ep::PutImage, _, _>(|a, r, body| async move { a.put_image(r, body).await }),
        )
        .route(
            ep::ReadDiskFile::ROUTE,
            download::<A, ep::ReadDiskFile, _, _>(|a, r| async move { a.read_disk_file(r).await }),
        )
        .route(
            ep::PutDisk::ROUTE,
            upload::<A, ep::PutDisk, _, _>(|a, r, body| async move { a.put_disk(r, body).await }),
        )
        .layer(axum::middleware::from_fn(to_the_end))
        .with_state(api)
}

/// Runs each request's handler as a task of its own, to its end, whoever hangs up.
/// hyper drops a request's future when its client's connection closes: a controller
/// that died while this agent started a VM left it "starting" for good, its QEMU
/// running, and a cut disk upload could leave half a file. (A streamed answer's body
/// still ends with its connection: that is how a reader stops a download.)
async fn to_the_end(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn method_filter(m: Method) -> MethodFilter {
    match m {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
    }
}

fn path_params<P: PathParams>(raw: &RawPathParams) -> Result<P, Failure> {
    let pairs: Vec<(&str, &str)> = raw.iter().collect();
    P::parse(&pairs).ok_or_else(|| Failure(AgentFailure::invalid("the path's parameters")))
}

/// A request: from the query string for `GET`, else from the JSON body (an empty body
/// reads as `{}`).
fn request<T: DeserializeOwned>(method: Method, uri: &Uri, body: &[u8]) -> Result<T, Failure> {
    let bad =
        |e: &dyn std::fmt::Display| Failure(AgentFailure::invalid(format!("the request: {e}")));
    if method == Method::Get {
        return serde_urlencoded::from_str(uri.query().unwrap_or("")).map_err(|e| bad(&e));
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad(&e))
}

/// The route of a request/response endpoint: `f` answers it.
fn json<A, E, F, Fut>(f: F) -> MethodRouter<Arc<A>>
where
    A: AgentApi<Error = AgentFailure>,
    E: Endpoint,
    F: Fn(Arc<A>, E::Path, E::Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<E::Response, AgentFailure>> + Send + 'static,
{
    let handler = move |State(api): State<Arc<A>>, raw: RawPathParams, uri: Uri, body: Bytes| {
        let f = f.clone();
        async move {
            let path = path_params::<E::Path>(&raw)?;
            let req = request::<E::Request>(E::METHOD, &uri, &body)?;
            f(api, path, req).await.map(Json).map_err(Failure)
        }
    };
    on(method_filter(E::METHOD), handler)
}

/// How often an idle event stream carries an empty line, so that the controller can
/// tell a live agent from a silent one (it gives up after
/// `hostel_api::agent::EVENTS_SILENCE`).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The route of a streaming endpoint: `f` gives the lines, sent as JSON lines. With a
/// heartbeat, an empty line goes first (the subscription is in place) and whenever
/// `heartbeat` passes without a line.
fn lines<A, E, F, Fut>(heartbeat: Option<Duration>, f: F) -> MethodRouter<Arc<A>>
where
    A: AgentApi<Error = AgentFailure>,
    E: StreamEndpoint,
    F: Fn(Arc<A>, E::Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Lines<E::Line, AgentFailure>, AgentFailure>> + Send + 'static,
{
    let handler = move |State(api): State<Arc<A>>, uri: Uri, body: Bytes| {
        let f = f.clone();
        async move {
            let req = request::<E::Request>(E::METHOD, &uri, &body)?;
            let lines = f(api, req).await.map_err(Failure)?;
            Ok::<_, Failure>(ndjson(lines, heartbeat))
        }
    };
    on(method_filter(E::METHOD), handler)
}

fn ndjson<L: Serialize + Send + 'static>(
    lines: Lines<L, AgentFailure>,
    heartbeat: Option<Duration>,
) -> Response {
    // The stream ends at the first error: a subscriber that fell behind has missed
    // changes, and the controller reconnects and reconciles.
    let body = futures::stream::unfold(lines, move |mut lines| async move {
        let next = match heartbeat {
            Some(h) => match tokio::time::timeout(h, lines.next()).await {
                Err(_) => return Some((Ok(Bytes::from_static(b"\n")), lines)),
                Ok(next) => next,
            },
            None => lines.next().await,
        };
        match next {
            Some(Ok(line)) => {
                let mut v = serde_json::to_vec(&line).ok()?;
                v.push(b'\n');
                Some((Ok::<_, std::convert::Infallible>(Bytes::from(v)), lines))
            }
            Some(Err(e)) => {
                tracing::debug!("a stream of lines ended: {e}");
                None
            }
            None => None,
        }
    });
    let hello = futures::stream::iter(heartbeat.map(|_| Ok(Bytes::from_static(b"\n"))));
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(hello.chain(body)))
        .unwrap()
}

/// The route of a download: `f` gives the bytes, sent as they come.
fn download<A, E, F, Fut>(f: F) -> MethodRouter<Arc<A>>
where
    A: AgentApi<Error = AgentFailure>,
    E: DownloadEndpoint,
    F: Fn(Arc<A>, E::Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<SizedBytes<AgentFailure>, AgentFailure>> + Send + 'static,
{
    let handler = move |State(api): State<Arc<A>>, uri: Uri| {
        let f = f.clone();
        async move {
            let req = request::<E::Request>(Method::Get, &uri, &[])?;
            let sized = f(api, req).await.map_err(Failure)?;
            // An error mid-way ends the body early: the receiver sees fewer bytes than it
            // was told to expect, and its checksum fails.
            let body = sized
                .bytes
                .map(|b| b.map_err(|e| std::io::Error::other(e.to_string())));
            Ok::<_, Failure>(
                Response::builder()
                    .header("content-type", "application/octet-stream")
                    .header("content-length", sized.size)
                    .body(Body::from_stream(body))
                    .unwrap(),
            )
        }
    };
    on(MethodFilter::GET, handler)
}

/// The query parameter an upload's request comes in, as JSON.
#[derive(serde::Deserialize)]
struct UploadQuery {
    request: String,
}

/// The route of an upload: `f` reads the body's bytes and answers JSON.
fn upload<A, E, F, Fut>(f: F) -> MethodRouter<Arc<A>>
where
    A: AgentApi<Error = AgentFailure>,
    E: UploadEndpoint,
    F: Fn(Arc<A>, E::Request, ByteStream<AgentFailure>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<E::Response, AgentFailure>> + Send + 'static,
{
    let handler = move |State(api): State<Arc<A>>, uri: Uri, body: Body| {
        let f = f.clone();
        async move {
            let bad = |e: &dyn std::fmt::Display| {
                Failure(AgentFailure::invalid(format!("the request: {e}")))
            };
            let q: UploadQuery =
                serde_urlencoded::from_str(uri.query().unwrap_or("")).map_err(|e| bad(&e))?;
            let req: E::Request = serde_json::from_str(&q.request).map_err(|e| bad(&e))?;
            let bytes = body
                .into_data_stream()
                .map(|b| b.map_err(|e| AgentFailure::unavailable(format!("the upload broke: {e}"))))
                .boxed();
            f(api, req, bytes).await.map(Json).map_err(Failure)
        }
    };
    on(MethodFilter::PUT, handler)
}

/// The route of a VM's websocket: `f` gives the byte stream it is served from.
fn socket<A, E, F, Fut>(f: F) -> MethodRouter<Arc<A>>
where
    A: AgentApi<Error = AgentFailure>,
    A::Socket: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    E: SocketEndpoint,
    F: Fn(Arc<A>, VmId) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<A::Socket, AgentFailure>> + Send + 'static,
{
    let handler = move |State(api): State<Arc<A>>,
                        raw: RawPathParams,
                        ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>| {
        let f = f.clone();
        async move {
            let id = path_params::<VmId>(&raw)?;
            let io = f(api, id).await.map_err(Failure)?;
            let ws = ws.map_err(|e| {
                Failure(AgentFailure::invalid(format!(
                    "{} is a websocket: {e}",
                    E::ROUTE
                )))
            })?;
            Ok::<_, Failure>(ws.on_upgrade(move |socket| pump(socket, io)))
        }
    };
    on(MethodFilter::GET, handler)
}

/// Copies bytes both ways between a websocket and `io` until either side ends.
async fn pump<T: AsyncRead + AsyncWrite + Send + Unpin>(socket: WebSocket, io: T) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tx, mut rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
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
                Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What a request started is finished even when its client goes away half-way, as a
    /// controller killed during a start does.
    #[tokio::test]
    async fn a_handler_runs_to_its_end_when_its_client_hangs_up() {
        let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let slots = Arc::new(std::sync::Mutex::new(Some((began_tx, done_tx))));
        let app = Router::new()
            .route(
                "/slow",
                axum::routing::post(move || async move {
                    let (began, done) = slots.lock().unwrap().take().unwrap();
                    let _ = began.send(());
                    // Long enough for the server to see the connection closed.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = done.send(());
                }),
            )
            .layer(axum::middleware::from_fn(to_the_end));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"POST /slow HTTP/1.1\r\nhost: agent\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        began_rx.await.unwrap();
        drop(client);
        // A handler dropped half-way drops its sender: this fails at once.
        done_rx
            .await
            .expect("the handler was dropped when its client hung up");
    }
}
