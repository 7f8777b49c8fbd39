//! The agent API through [`AgentClient`]: every method makes the HTTP call its endpoint
//! declares (method, route, request, response) in `hostel_api::agent::endpoints`.

use super::{AgentCallError, AgentClient, LineReader};
use anyhow::anyhow;
use hostel_api::agent::endpoints::{
    self as ep, DownloadEndpoint, Endpoint, Method, PathParams, StreamEndpoint, UploadEndpoint,
};
use hostel_api::agent::*;
use serde::Serialize;

/// A websocket to an agent.
pub type AgentSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

type Res<T> = Result<T, AgentCallError>;

impl AgentClient {
    fn request(&self, method: Method, path: &str, req: &impl Serialize) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.url);
        match method {
            Method::Get => self.http.get(url).query(req),
            Method::Post => self.http.post(url).json(req),
            Method::Put => self.http.put(url).json(req),
        }
    }

    /// Sends a request; an answer other than a success is the agent's failure.
    async fn send(
        &self,
        name: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AgentCallError> {
        let resp = rb.send().await.map_err(|e| {
            AgentCallError::Unreachable(
                anyhow!(e).context(format!("reaching the agent at {}", self.url)),
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<AgentFailure>(&text) {
            Ok(f) => AgentCallError::Refused(f),
            Err(_) => AgentCallError::BadAnswer(anyhow!(
                "the host's agent answered {name} with {status}: {text}"
            )),
        })
    }

    /// Sends a request and decodes its JSON answer.
    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        rb: reqwest::RequestBuilder,
    ) -> Res<T> {
        let body = self.send(name, rb).await?.bytes().await.map_err(|e| {
            AgentCallError::Unreachable(
                anyhow!(e).context(format!("reading the answer of the agent at {}", self.url)),
            )
        })?;
        serde_json::from_slice(&body).map_err(|e| {
            AgentCallError::BadAnswer(anyhow!(
                "the answer of the agent at {} to {name} does not decode: {e}",
                self.url
            ))
        })
    }

    /// Calls the request/response endpoint `E`.
    async fn call_endpoint<E: Endpoint>(
        &self,
        path: E::Path,
        req: &E::Request,
    ) -> Res<E::Response> {
        let rb = self.request(E::METHOD, &path.render(E::ROUTE), req);
        self.answer(E::NAME, rb).await
    }

    /// Opens the streaming endpoint `E`.
    async fn open_lines<E: StreamEndpoint>(
        &self,
        req: &E::Request,
        silence: Option<std::time::Duration>,
    ) -> Res<LineReader> {
        let rb = self.request(E::METHOD, E::ROUTE, req);
        Ok(LineReader::new(self.send(E::NAME, rb).await?, silence))
    }
}

impl AgentClient {
    /// Opens the download endpoint `E`: its bytes as they arrive.
    async fn download<E: DownloadEndpoint>(
        &self,
        req: &E::Request,
    ) -> Res<SizedBytes<AgentCallError>> {
        use futures::StreamExt;
        let rb = self.request(Method::Get, E::ROUTE, req);
        let resp = self.send(E::NAME, rb).await?;
        let url = self.url.clone();
        let size = resp.content_length().ok_or_else(|| {
            AgentCallError::BadAnswer(anyhow!(
                "the agent at {url} answered {} without a Content-Length",
                E::NAME
            ))
        })?;
        let bytes = resp
            .bytes_stream()
            .map(move |b| {
                b.map_err(|e| {
                    AgentCallError::Unreachable(
                        anyhow!(e).context(format!("reading bytes from the agent at {url}")),
                    )
                })
            })
            .boxed();
        Ok(SizedBytes { size, bytes })
    }

    /// Calls the upload endpoint `E` with `body` as its bytes.
    async fn upload<E: UploadEndpoint>(
        &self,
        req: &E::Request,
        body: ByteStream<AgentCallError>,
    ) -> Res<E::Response> {
        use futures::StreamExt;
        let json = serde_json::to_string(req).map_err(|e| AgentCallError::BadAnswer(e.into()))?;
        let body = reqwest::Body::wrap_stream(body.map(|b| b.map_err(std::io::Error::other)));
        let rb = self
            .http
            .put(format!("{}{}", self.url, E::ROUTE))
            .query(&[("request", json)])
            .body(body);
        self.answer(E::NAME, rb).await
    }
}

impl AgentApi for AgentClient {
    type Error = AgentCallError;
    type Socket = AgentSocket;

    async fn host(&self) -> Res<HostFacts> {
        self.call_endpoint::<ep::HostInfo>((), &Empty {}).await
    }
    async fn list_vms(&self) -> Res<Vec<VmStatus>> {
        self.call_endpoint::<ep::ListVms>((), &Empty {}).await
    }
    async fn get_vm(&self, id: &str) -> Res<VmStatus> {
        self.call_endpoint::<ep::GetVm>(id.into(), &Empty {}).await
    }
    async fn start_vm(&self, id: &str, req: StartRequest) -> Res<VmStatus> {
        self.call_endpoint::<ep::StartVm>(id.into(), &req).await
    }
    async fn destroy_vm(&self, id: &str) -> Res<VmStatus> {
        self.call_endpoint::<ep::DestroyVm>(id.into(), &Empty {})
            .await
    }
    async fn shutdown_vm(&self, id: &str, req: ShutdownRequest) -> Res<VmStatus> {
        self.call_endpoint::<ep::ShutdownVm>(id.into(), &req).await
    }
    async fn reboot_vm(&self, id: &str) -> Res<VmStatus> {
        self.call_endpoint::<ep::RebootVm>(id.into(), &Empty {})
            .await
    }
    async fn pause_vm(&self, id: &str) -> Res<VmStatus> {
        self.call_endpoint::<ep::PauseVm>(id.into(), &Empty {})
            .await
    }
    async fn unpause_vm(&self, id: &str) -> Res<VmStatus> {
        self.call_endpoint::<ep::UnpauseVm>(id.into(), &Empty {})
            .await
    }
    async fn set_balloon(&self, id: &str, req: BalloonRequest) -> Res<VmStatus> {
        self.call_endpoint::<ep::SetBalloon>(id.into(), &req).await
    }
    async fn set_vcpus(&self, id: &str, req: VcpusRequest) -> Res<VmStatus> {
        self.call_endpoint::<ep::SetVcpus>(id.into(), &req).await
    }
    async fn set_limits(&self, id: &str, req: Limits) -> Res<VmStatus> {
        self.call_endpoint::<ep::SetLimits>(id.into(), &req).await
    }
    async fn save_vm(&self, id: &str, req: SaveRequest) -> Res<VmStatus> {
        self.call_endpoint::<ep::SaveVm>(id.into(), &req).await
    }
    async fn forget_vm(&self, id: &str) -> Res<()> {
        self.call_endpoint::<ep::ForgetVm>(id.into(), &Empty {})
            .await
    }
    async fn console_log(&self, id: &str, req: ConsoleLogRequest) -> Res<Vec<String>> {
        self.call_endpoint::<ep::ConsoleLog>(id.into(), &req).await
    }
    async fn clear_console_log(&self, id: &str) -> Res<()> {
        self.call_endpoint::<ep::ClearConsoleLog>(id.into(), &Empty {})
            .await
    }
    async fn read_save_header(&self, req: SaveHeaderRequest) -> Res<SaveHeader> {
        self.call_endpoint::<ep::ReadSaveHeader>((), &req).await
    }
    async fn render_argv(&self, spec: VmSpec) -> Res<Vec<String>> {
        self.call_endpoint::<ep::RenderArgv>((), &spec).await
    }
    async fn list_files(&self) -> Res<StoredFiles> {
        self.call_endpoint::<ep::ListFiles>((), &Empty {}).await
    }
    async fn list_files_in_pools(&self, pools: Vec<PoolSpec>) -> Res<StoredFiles> {
        self.call_endpoint::<ep::ListFilesInPools>((), &pools).await
    }
    async fn put_networks(&self, state: NetworksState) -> Res<NetworksApplied> {
        self.call_endpoint::<ep::PutNetworks>((), &state).await
    }
    async fn get_networks(&self) -> Res<NetworksState> {
        self.call_endpoint::<ep::GetNetworks>((), &Empty {}).await
    }
    async fn add_nic(&self, id: &str, nic: NicSpec) -> Res<VmStatus> {
        self.call_endpoint::<ep::AddNic>(id.into(), &nic).await
    }
    async fn remove_nic(&self, id: &str, req: RemoveNicRequest) -> Res<VmStatus> {
        self.call_endpoint::<ep::RemoveNic>(id.into(), &req).await
    }
    async fn check_pool(&self, pool: PoolSpec) -> Res<PoolUsage> {
        self.call_endpoint::<ep::CheckPool>((), &pool).await
    }
    async fn pool_forget_image(&self, req: ForgetImageRequest) -> Res<()> {
        self.call_endpoint::<ep::PoolForgetImage>((), &req).await
    }
    async fn create_disk(&self, req: CreateDiskRequest) -> Res<DiskCreated> {
        self.call_endpoint::<ep::CreateDisk>((), &req).await
    }
    async fn delete_disk(&self, req: DeleteDiskRequest) -> Res<()> {
        self.call_endpoint::<ep::DeleteDisk>((), &req).await
    }
    async fn resize_disk(&self, req: ResizeDiskArgs) -> Res<()> {
        self.call_endpoint::<ep::ResizeDisk>((), &req).await
    }
    async fn add_disk(&self, id: &str, disk: DiskSpec) -> Res<VmStatus> {
        self.call_endpoint::<ep::AddDisk>(id.into(), &disk).await
    }
    async fn remove_disk(&self, id: &str, req: DiskIndex) -> Res<VmStatus> {
        self.call_endpoint::<ep::RemoveDisk>(id.into(), &req).await
    }
    async fn snapshot(&self, id: &str, req: SnapshotRequest) -> Res<()> {
        self.call_endpoint::<ep::Snapshot>(id.into(), &req).await
    }
    async fn delete_image(&self, req: DeleteImageRequest) -> Res<()> {
        self.call_endpoint::<ep::DeleteImage>((), &req).await
    }
    async fn delete_backup_files(&self, req: DeleteBackupFilesRequest) -> Res<()> {
        self.call_endpoint::<ep::DeleteBackupFiles>((), &req).await
    }
    async fn vm_stats(&self) -> Res<Vec<VmCounters>> {
        self.call_endpoint::<ep::VmStats>((), &Empty {}).await
    }

    /// The agent's events; returns once the agent has confirmed the subscription (its
    /// first, empty line). The stream fails when the agent is silent for
    /// [`EVENTS_SILENCE`] (heartbeats included).
    async fn events(&self) -> Res<Lines<Event, AgentCallError>> {
        let mut lines = self
            .open_lines::<ep::Events>(&Empty {}, Some(EVENTS_SILENCE))
            .await?;
        match lines.next_line().await {
            Some(Ok(_)) => Ok(lines.typed()),
            Some(Err(e)) => Err(e),
            None => Err(AgentCallError::BadAnswer(anyhow!(
                "the agent at {} ended its event stream at once",
                self.url
            ))),
        }
    }
    /// No silence limit: a build step may print nothing for minutes.
    async fn build_image(&self, req: BuildImageRequest) -> Res<Lines<ImageLine, AgentCallError>> {
        Ok(self.open_lines::<ep::BuildImage>(&req, None).await?.typed())
    }
    async fn import_image(&self, req: ImportImageRequest) -> Res<Lines<ImageLine, AgentCallError>> {
        Ok(self
            .open_lines::<ep::ImportImage>(&req, None)
            .await?
            .typed())
    }

    /// No silence limit: qemu-img may report no progress for a while on a slow source.
    async fn import_disk(&self, req: ImportDiskRequest) -> Res<Lines<ImageLine, AgentCallError>> {
        Ok(self.open_lines::<ep::ImportDisk>(&req, None).await?.typed())
    }

    /// No silence limit: a big disk's copy may report nothing for a while.
    async fn backup_vm(&self, req: BackupVmRequest) -> Res<Lines<BackupLine, AgentCallError>> {
        Ok(self.open_lines::<ep::BackupVm>(&req, None).await?.typed())
    }

    async fn migrate_in(&self, id: &str, req: MigrateInRequest) -> Res<MigrateInReady> {
        self.call_endpoint::<ep::MigrateIn>(id.into(), &req).await
    }
    async fn get_migration(&self, id: &str) -> Res<MigrationState> {
        self.call_endpoint::<ep::GetMigration>(id.into(), &Empty {})
            .await
    }
    async fn abandon_migration(
        &self,
        id: &str,
        req: AbandonMigrationRequest,
    ) -> Res<MigrationState> {
        self.call_endpoint::<ep::AbandonMigration>(id.into(), &req)
            .await
    }
    async fn recover_migration(
        &self,
        id: &str,
        req: RecoverMigrationRequest,
    ) -> Res<RecoverMigrationReady> {
        self.call_endpoint::<ep::RecoverMigration>(id.into(), &req)
            .await
    }
    async fn resume_migration(&self, id: &str, req: ResumeMigrationRequest) -> Res<MigrationState> {
        self.call_endpoint::<ep::ResumeMigration>(id.into(), &req)
            .await
    }
    /// No silence limit: progress lines come every half second while it runs.
    async fn migrate_out(
        &self,
        req: MigrateOutRequest,
    ) -> Res<Lines<MigrationLine, AgentCallError>> {
        Ok(self.open_lines::<ep::MigrateOut>(&req, None).await?.typed())
    }
    async fn read_image_file(&self, req: ReadImageFileRequest) -> Res<SizedBytes<AgentCallError>> {
        self.download::<ep::ReadImageFile>(&req).await
    }
    async fn put_image(
        &self,
        req: PutImageRequest,
        body: ByteStream<AgentCallError>,
    ) -> Res<ImageFiles> {
        self.upload::<ep::PutImage>(&req, body).await
    }
    async fn read_disk_file(&self, req: ReadDiskFileRequest) -> Res<SizedBytes<AgentCallError>> {
        self.download::<ep::ReadDiskFile>(&req).await
    }
    async fn put_disk(
        &self,
        req: PutDiskRequest,
        body: ByteStream<AgentCallError>,
    ) -> Res<DiskCreated> {
        self.upload::<ep::PutDisk>(&req, body).await
    }

    async fn console_socket(&self, id: &str) -> Res<AgentSocket> {
        self.socket::<ep::ConsoleSocket>(id).await
    }
    async fn vnc_socket(&self, id: &str) -> Res<AgentSocket> {
        self.socket::<ep::VncSocket>(id).await
    }
}
