//! The agent API as a Rust trait: one method per endpoint of [`super::endpoints`].
//!
//! Implemented by the real agent (`hostel_agent`), the simulated one (`hostel_simagent`)
//! and the controller's client (`AgentClient`, whose methods make the HTTP calls). The
//! HTTP binding (the router) lives in `hostel_agent`; this crate does not know axum.

use super::*;
use futures_core::stream::BoxStream;
use std::future::Future;

/// A stream of JSON lines of a [`StreamEndpoint`](super::endpoints::StreamEndpoint);
/// it ends after the last line or at the first error.
pub type Lines<L, E> = BoxStream<'static, Result<L, E>>;

/// Raw bytes in pieces, of a [`DownloadEndpoint`](super::endpoints::DownloadEndpoint)'s
/// answer or an [`UploadEndpoint`](super::endpoints::UploadEndpoint)'s body; it ends
/// after the last piece or at the first error.
pub type ByteStream<E> = BoxStream<'static, Result<bytes::Bytes, E>>;

/// A [`ByteStream`] of known length (a download's `Content-Length`).
pub struct SizedBytes<E> {
    pub size: u64,
    pub bytes: ByteStream<E>,
}

/// The agent API. Each method is the endpoint of the same name in
/// [`super::endpoints`] (`start_vm` is [`StartVm`](super::endpoints::StartVm), ...);
/// the routers and clients check at compile time that the types match the declaration.
pub trait AgentApi: Send + Sync + 'static {
    /// [`AgentFailure`] for agents; a client adds its own transport errors.
    type Error: From<AgentFailure> + Send + 'static;
    /// A VM's websocket: the byte stream an agent serves it from, or a client's socket.
    type Socket: Send + 'static;

    fn host(&self) -> impl Future<Output = Result<HostFacts, Self::Error>> + Send;
    fn list_vms(&self) -> impl Future<Output = Result<Vec<VmStatus>, Self::Error>> + Send;
    fn get_vm(&self, id: &str) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn start_vm(
        &self,
        id: &str,
        req: StartRequest,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn destroy_vm(&self, id: &str) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn shutdown_vm(
        &self,
        id: &str,
        req: ShutdownRequest,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn reboot_vm(&self, id: &str) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn pause_vm(&self, id: &str) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn unpause_vm(&self, id: &str) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn set_balloon(
        &self,
        id: &str,
        req: BalloonRequest,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn set_vcpus(
        &self,
        id: &str,
        req: VcpusRequest,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn set_limits(
        &self,
        id: &str,
        req: Limits,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn save_vm(
        &self,
        id: &str,
        req: SaveRequest,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn forget_vm(&self, id: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn console_log(
        &self,
        id: &str,
        req: ConsoleLogRequest,
    ) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send;
    fn clear_console_log(&self, id: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn read_save_header(
        &self,
        req: SaveHeaderRequest,
    ) -> impl Future<Output = Result<SaveHeader, Self::Error>> + Send;
    fn render_argv(
        &self,
        spec: VmSpec,
    ) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send;
    fn list_files(&self) -> impl Future<Output = Result<StoredFiles, Self::Error>> + Send;
    fn list_files_in_pools(
        &self,
        pools: Vec<PoolSpec>,
    ) -> impl Future<Output = Result<StoredFiles, Self::Error>> + Send;
    fn put_networks(
        &self,
        state: NetworksState,
    ) -> impl Future<Output = Result<NetworksApplied, Self::Error>> + Send;
    fn get_networks(&self) -> impl Future<Output = Result<NetworksState, Self::Error>> + Send;
    fn add_nic(
        &self,
        id: &str,
        nic: NicSpec,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn remove_nic(
        &self,
        id: &str,
        req: RemoveNicRequest,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn check_pool(
        &self,
        pool: PoolSpec,
    ) -> impl Future<Output = Result<PoolUsage, Self::Error>> + Send;
    fn pool_forget_image(
        &self,
        req: ForgetImageRequest,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn create_disk(
        &self,
        req: CreateDiskRequest,
    ) -> impl Future<Output = Result<DiskCreated, Self::Error>> + Send;
    fn delete_disk(
        &self,
        req: DeleteDiskRequest,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn resize_disk(
        &self,
        req: ResizeDiskArgs,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn add_disk(
        &self,
        id: &str,
        disk: DiskSpec,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn remove_disk(
        &self,
        id: &str,
        req: DiskIndex,
    ) -> impl Future<Output = Result<VmStatus, Self::Error>> + Send;
    fn snapshot(
        &self,
        id: &str,
        req: SnapshotRequest,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn delete_image(
        &self,
        req: DeleteImageRequest,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn delete_backup_files(
        &self,
        req: DeleteBackupFilesRequest,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn vm_stats(&self) -> impl Future<Output = Result<Vec<VmCounters>, Self::Error>> + Send;

    /// The state changes from now on (the subscription is in place when this returns).
    /// Heartbeats are the HTTP binding's business, not the stream's.
    fn events(&self)
        -> impl Future<Output = Result<Lines<Event, Self::Error>, Self::Error>> + Send;
    fn build_image(
        &self,
        req: BuildImageRequest,
    ) -> impl Future<Output = Result<Lines<ImageLine, Self::Error>, Self::Error>> + Send;
    fn import_image(
        &self,
        req: ImportImageRequest,
    ) -> impl Future<Output = Result<Lines<ImageLine, Self::Error>, Self::Error>> + Send;
    fn import_disk(
        &self,
        req: ImportDiskRequest,
    ) -> impl Future<Output = Result<Lines<ImageLine, Self::Error>, Self::Error>> + Send;
    fn backup_vm(
        &self,
        req: BackupVmRequest,
    ) -> impl Future<Output = Result<Lines<BackupLine, Self::Error>, Self::Error>> + Send;

    fn migrate_in(
        &self,
        id: &str,
        req: MigrateInRequest,
    ) -> impl Future<Output = Result<MigrateInReady, Self::Error>> + Send;
    fn migrate_out(
        &self,
        req: MigrateOutRequest,
    ) -> impl Future<Output = Result<Lines<MigrationLine, Self::Error>, Self::Error>> + Send;
    fn get_migration(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<MigrationState, Self::Error>> + Send;
    fn abandon_migration(
        &self,
        id: &str,
        req: AbandonMigrationRequest,
    ) -> impl Future<Output = Result<MigrationState, Self::Error>> + Send;
    fn recover_migration(
        &self,
        id: &str,
        req: RecoverMigrationRequest,
    ) -> impl Future<Output = Result<RecoverMigrationReady, Self::Error>> + Send;
    fn resume_migration(
        &self,
        id: &str,
        req: ResumeMigrationRequest,
    ) -> impl Future<Output = Result<MigrationState, Self::Error>> + Send;

    /// The bytes of one file of the host's image store.
    fn read_image_file(
        &self,
        req: ReadImageFileRequest,
    ) -> impl Future<Output = Result<SizedBytes<Self::Error>, Self::Error>> + Send;
    /// Stores an image from the bytes of its files (another host's copy), checked against
    /// its SHA-256 before it is kept; an image of that name already there is replaced.
    fn put_image(
        &self,
        req: PutImageRequest,
        body: ByteStream<Self::Error>,
    ) -> impl Future<Output = Result<ImageFiles, Self::Error>> + Send;
    /// The bytes of one disk file of a stopped VM.
    fn read_disk_file(
        &self,
        req: ReadDiskFileRequest,
    ) -> impl Future<Output = Result<SizedBytes<Self::Error>, Self::Error>> + Send;
    /// Stores a stopped VM's disk from another host's file; nothing is kept unless all
    /// of it arrived.
    fn put_disk(
        &self,
        req: PutDiskRequest,
        body: ByteStream<Self::Error>,
    ) -> impl Future<Output = Result<DiskCreated, Self::Error>> + Send;

    /// The VM's serial console. By default an agent has none (`unavailable`).
    fn console_socket(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Self::Socket, Self::Error>> + Send {
        let _ = id;
        async { Err(AgentFailure::unavailable("this agent serves no consoles").into()) }
    }
    /// The VM's VNC server. By default an agent has none (`unavailable`).
    fn vnc_socket(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Self::Socket, Self::Error>> + Send {
        let _ = id;
        async { Err(AgentFailure::unavailable("this agent serves no VNC").into()) }
    }
}
