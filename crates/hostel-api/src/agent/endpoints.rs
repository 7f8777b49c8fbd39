//! Every endpoint of the agent API, declared once: its HTTP method, its route, and the
//! types it takes and gives. The agent's router (`hostel_agent::api_router`) and the
//! controller's client (`AgentClient`) are both built from these declarations, so they
//! cannot disagree on a path or a body.
//!
//! Three kinds of endpoint:
//! - [`Endpoint`]: a JSON request (in the body; in the query string for `GET`), a JSON
//!   response, or an [`AgentFailure`](super::AgentFailure) with its HTTP status.
//! - [`StreamEndpoint`]: a JSON request, then a stream of JSON lines (`application/x-ndjson`).
//! - [`SocketEndpoint`]: a websocket of a VM carrying raw bytes both ways.
//! - [`DownloadEndpoint`]: a request in the query string, raw bytes back
//!   (`application/octet-stream`).
//! - [`UploadEndpoint`]: raw bytes in the body, the request as JSON in the query
//!   parameter `request`, a JSON response.

use super::*;
use serde::de::DeserializeOwned;

/// An HTTP method the agent API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// The parameters in an endpoint's route: `()` for none, [`VmId`] for `{id}`.
pub trait PathParams: Sized + Send + 'static {
    /// The route with its parameters filled in (percent-encoded).
    fn render(&self, route: &str) -> String;
    /// The parameters from a matched route's `(name, value)` pairs.
    fn parse(params: &[(&str, &str)]) -> Option<Self>;
}

impl PathParams for () {
    fn render(&self, route: &str) -> String {
        route.to_string()
    }
    fn parse(params: &[(&str, &str)]) -> Option<()> {
        params.is_empty().then_some(())
    }
}

/// A VM's id: the `{id}` of a route.
pub type VmId = String;

impl PathParams for VmId {
    fn render(&self, route: &str) -> String {
        route.replace("{id}", &encode_segment(self))
    }
    fn parse(params: &[(&str, &str)]) -> Option<VmId> {
        match params {
            [("id", id)] => Some(id.to_string()),
            _ => None,
        }
    }
}

/// `s` as one path segment: bytes other than ASCII letters, digits and `-._~` are
/// percent-encoded.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request/response endpoint.
pub trait Endpoint {
    const NAME: &'static str;
    const METHOD: Method;
    /// The route template, e.g. `/v1/vms/{id}/start`.
    const ROUTE: &'static str;
    type Path: PathParams;
    type Request: Serialize + DeserializeOwned + Send + 'static;
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// An endpoint that answers with a stream of JSON lines.
pub trait StreamEndpoint {
    const NAME: &'static str;
    const METHOD: Method;
    const ROUTE: &'static str;
    type Request: Serialize + DeserializeOwned + Send + 'static;
    type Line: Serialize + DeserializeOwned + Send + 'static;
}

/// A websocket of a VM (`GET` with an upgrade; the route has an `{id}`).
pub trait SocketEndpoint {
    const NAME: &'static str;
    const ROUTE: &'static str;
}

/// A `GET` whose answer is raw bytes.
pub trait DownloadEndpoint {
    const NAME: &'static str;
    const ROUTE: &'static str;
    type Request: Serialize + DeserializeOwned + Send + 'static;
}

/// A `PUT` of raw bytes, its request as JSON in the query parameter `request`.
pub trait UploadEndpoint {
    const NAME: &'static str;
    const ROUTE: &'static str;
    type Request: Serialize + DeserializeOwned + Send + 'static;
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// What kind of endpoint a [`Declared`] one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Json,
    Stream,
    Socket,
    Download,
    Upload,
}

/// An endpoint as listed in [`all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    pub name: &'static str,
    pub method: Method,
    pub route: &'static str,
    pub kind: Kind,
}

macro_rules! json_endpoints {
    ($(
        $(#[$doc:meta])*
        $name:ident: $method:ident $route:literal, $path:ty, $req:ty => $resp:ty
;
    )*) => {
        $(
            $(#[$doc])*
            pub struct $name;
            impl Endpoint for $name {
                const NAME: &'static str = stringify!($name);
                const METHOD: Method = Method::$method;
                const ROUTE: &'static str = $route;
                type Path = $path;
                type Request = $req;
                type Response = $resp;
            }
        )*
        /// Every request/response endpoint, in declaration order.
        pub const JSON_ENDPOINTS: &[Declared] = &[$(
            Declared { name: stringify!($name), method: Method::$method, route: $route, kind: Kind::Json },
        )*];
    };
}

json_endpoints! {
    /// What the host is: CPUs, memory, accelerator, QEMU version.
    HostInfo: Get "/v1/host", (), Empty => HostFacts;
    /// Every VM the agent knows (with a QEMU process, or that had one).
    ListVms: Get "/v1/vms", (), Empty => Vec<VmStatus>;
    /// One VM; `not-found` when the agent does not know it.
    GetVm: Get "/v1/vms/{id}", VmId, Empty => VmStatus;
    /// Starts (or restores, or loads a snapshot of) a VM from its whole definition.
    StartVm: Post "/v1/vms/{id}/start", VmId, StartRequest => VmStatus;
    /// Kills the VM's QEMU (without waiting for a running operation).
    DestroyVm: Post "/v1/vms/{id}/destroy", VmId, Empty => VmStatus;
    /// Asks the guest to power off; kills it after the timeout when `force`.
    ShutdownVm: Post "/v1/vms/{id}/shutdown", VmId, ShutdownRequest => VmStatus;
    RebootVm: Post "/v1/vms/{id}/reboot", VmId, Empty => VmStatus;
    PauseVm: Post "/v1/vms/{id}/pause", VmId, Empty => VmStatus;
    UnpauseVm: Post "/v1/vms/{id}/unpause", VmId, Empty => VmStatus;
    /// Sets the balloon's target (the guest's usable memory).
    SetBalloon: Post "/v1/vms/{id}/balloon", VmId, BalloonRequest => VmStatus;
    /// Sets the number of online vCPUs (hot-plug).
    SetVcpus: Post "/v1/vms/{id}/vcpus", VmId, VcpusRequest => VmStatus;
    /// Sets the VM's resource limits (CPU, disks, NICs) while its QEMU runs; a start
    /// applies those of its spec.
    SetLimits: Post "/v1/vms/{id}/limits", VmId, Limits => VmStatus;
    /// Saves the VM's memory state to a file and stops it.
    SaveVm: Post "/v1/vms/{id}/save", VmId, SaveRequest => VmStatus;
    /// Drops what the agent knows of a stopped VM, its runtime directory included.
    ForgetVm: Post "/v1/vms/{id}/forget", VmId, Empty => ();
    /// The last lines of a VM's console log (also of a stopped VM).
    ConsoleLog: Get "/v1/vms/{id}/console-log", VmId, ConsoleLogRequest => Vec<String>;
    /// Forgets a VM's console output (log files and scrollback): its new owner does not
    /// read what the previous owner typed and saw.
    ClearConsoleLog: Post "/v1/vms/{id}/console-log/clear", VmId, Empty => ();
    /// The header of a file written by a save.
    ReadSaveHeader: Post "/v1/save-header", (), SaveHeaderRequest => SaveHeader;
    /// The QEMU command line this definition would start with on this host.
    RenderArgv: Post "/v1/render", (), VmSpec => Vec<String>;
    /// The files of the host's default pool, image store and runtime directories.
    ListFiles: Get "/v1/files", (), Empty => StoredFiles;
    /// [`ListFiles`], with the disk files of these pools too.
    ListFilesInPools: Post "/v1/files", (), Vec<PoolSpec> => StoredFiles;
    /// Converges the host's networks (bridges, dnsmasq, NAT, forwards) to this state.
    /// Forwards whose host port a host service holds are skipped and named, not fatal.
    PutNetworks: Put "/v1/networks", (), NetworksState => NetworksApplied;
    /// The network state last applied.
    GetNetworks: Get "/v1/networks", (), Empty => NetworksState;
    /// Hot-plugs a NIC into a running VM.
    AddNic: Post "/v1/vms/{id}/nics", VmId, NicSpec => VmStatus;
    RemoveNic: Post "/v1/vms/{id}/nics/remove", VmId, RemoveNicRequest => VmStatus;
    /// Checks that a pool is usable on this host and reports its space.
    CheckPool: Post "/v1/pools/check", (), PoolSpec => PoolUsage;
    /// Drops a pool's copy of an image (pools that clone keep one).
    PoolForgetImage: Post "/v1/pools/forget-image", (), ForgetImageRequest => ();
    CreateDisk: Post "/v1/disks", (), CreateDiskRequest => DiskCreated;
    DeleteDisk: Post "/v1/disks/delete", (), DeleteDiskRequest => ();
    /// Grows a disk: online through QEMU (`vm` and `index`), else offline (`path`).
    ResizeDisk: Post "/v1/disks/resize", (), ResizeDiskArgs => ();
    /// Hot-plugs a disk into a running VM.
    AddDisk: Post "/v1/vms/{id}/disks", VmId, DiskSpec => VmStatus;
    RemoveDisk: Post "/v1/vms/{id}/disks/remove", VmId, DiskIndex => VmStatus;
    /// Creates, reverts or deletes a snapshot of the VM's disks.
    Snapshot: Post "/v1/vms/{id}/snapshot", VmId, SnapshotRequest => ();
    /// Removes an image's files from the host's image store.
    DeleteImage: Post "/v1/images/delete", (), DeleteImageRequest => ();
    /// Removes files of a backup from its target's directory.
    DeleteBackupFiles: Post "/v1/backups/delete", (), DeleteBackupFilesRequest => ();
    /// Starts a QEMU waiting for a VM's state from a live migration.
    MigrateIn: Post "/v1/vms/{id}/migrate-in", VmId, MigrateInRequest => MigrateInReady;
    /// What the host's QEMU for the VM is doing about a migration (recovery asks both
    /// hosts).
    GetMigration: Get "/v1/vms/{id}/migration", VmId, Empty => MigrationState;
    /// Gives up a migration on the sending host, before the switch-over.
    AbandonMigration: Post "/v1/vms/{id}/migration/abandon", VmId, AbandonMigrationRequest => MigrationState;
    /// Makes the receiving QEMU of a post-copy whose link broke listen again.
    RecoverMigration: Post "/v1/vms/{id}/migration/recover", VmId, RecoverMigrationRequest => RecoverMigrationReady;
    /// Resumes a post-copy whose link broke, from the sending QEMU.
    ResumeMigration: Post "/v1/vms/{id}/migration/resume", VmId, ResumeMigrationRequest => MigrationState;
    /// The cumulative counters (CPU time, memory, disk and network bytes) of every VM
    /// with a QEMU process on the host, read at once.
    VmStats: Get "/v1/stats", (), Empty => Vec<VmCounters>;
}

/// State changes as they happen: an [`Event`] a line, an empty line first (the
/// subscription is in place) and then whenever 5 s pass without an event (see
/// [`EVENTS_SILENCE`]).
pub struct Events;
impl StreamEndpoint for Events {
    const NAME: &'static str = "Events";
    const METHOD: Method = Method::Get;
    const ROUTE: &'static str = "/v1/events";
    type Request = Empty;
    type Line = Event;
}

/// Builds an image, with progress lines, then a `done` or an `error` line.
pub struct BuildImage;
impl StreamEndpoint for BuildImage {
    const NAME: &'static str = "BuildImage";
    const METHOD: Method = Method::Post;
    const ROUTE: &'static str = "/v1/images/build";
    type Request = BuildImageRequest;
    type Line = ImageLine;
}

/// Sends a running VM to a host waiting for it ([`MigrateIn`]), with progress lines,
/// then a `done` or an `error` line.
pub struct MigrateOut;
impl StreamEndpoint for MigrateOut {
    const NAME: &'static str = "MigrateOut";
    const METHOD: Method = Method::Post;
    const ROUTE: &'static str = "/v1/migrate-out";
    type Request = MigrateOutRequest;
    type Line = MigrationLine;
}

/// Imports an image from a file on the host or a URL, with lines like [`BuildImage`]'s.
pub struct ImportImage;
impl StreamEndpoint for ImportImage {
    const NAME: &'static str = "ImportImage";
    const METHOD: Method = Method::Post;
    const ROUTE: &'static str = "/v1/images/import";
    type Request = ImportImageRequest;
    type Line = ImageLine;
}

/// Copies a guest's disk file from the host into a pool, with progress lines.
pub struct ImportDisk;
impl StreamEndpoint for ImportDisk {
    const NAME: &'static str = "ImportDisk";
    const METHOD: Method = Method::Post;
    const ROUTE: &'static str = "/v1/disks/import";
    type Request = ImportDiskRequest;
    type Line = ImageLine;
}

/// Backs up a VM's disks into a backup target's directory, with progress lines.
pub struct BackupVm;
impl StreamEndpoint for BackupVm {
    const NAME: &'static str = "BackupVm";
    const METHOD: Method = Method::Post;
    const ROUTE: &'static str = "/v1/backups";
    type Request = BackupVmRequest;
    type Line = BackupLine;
}

/// The VM's serial console (its console hub: scrollback first, then live output).
pub struct ConsoleSocket;
impl SocketEndpoint for ConsoleSocket {
    const NAME: &'static str = "ConsoleSocket";
    const ROUTE: &'static str = "/v1/vms/{id}/console";
}

/// The VM's VNC server (QEMU listens on a unix socket only).
pub struct VncSocket;
impl SocketEndpoint for VncSocket {
    const NAME: &'static str = "VncSocket";
    const ROUTE: &'static str = "/v1/vms/{id}/vnc";
}

/// One file of the host's image store, as bytes.
pub struct ReadImageFile;
impl DownloadEndpoint for ReadImageFile {
    const NAME: &'static str = "ReadImageFile";
    const ROUTE: &'static str = "/v1/images/file";
    type Request = ReadImageFileRequest;
}

/// Stores an image sent as its files' bytes (another host's copy of it).
pub struct PutImage;
impl UploadEndpoint for PutImage {
    const NAME: &'static str = "PutImage";
    const ROUTE: &'static str = "/v1/images/put";
    type Request = PutImageRequest;
    type Response = ImageFiles;
}

/// One disk file of a stopped VM, as bytes (an offline move).
pub struct ReadDiskFile;
impl DownloadEndpoint for ReadDiskFile {
    const NAME: &'static str = "ReadDiskFile";
    const ROUTE: &'static str = "/v1/disks/file";
    type Request = ReadDiskFileRequest;
}

/// Stores a stopped VM's disk sent as another host's file's bytes (an offline move).
pub struct PutDisk;
impl UploadEndpoint for PutDisk {
    const NAME: &'static str = "PutDisk";
    const ROUTE: &'static str = "/v1/disks/put";
    type Request = PutDiskRequest;
    type Response = DiskCreated;
}

const fn download<E: DownloadEndpoint>() -> Declared {
    Declared {
        name: E::NAME,
        method: Method::Get,
        route: E::ROUTE,
        kind: Kind::Download,
    }
}

const fn upload<E: UploadEndpoint>() -> Declared {
    Declared {
        name: E::NAME,
        method: Method::Put,
        route: E::ROUTE,
        kind: Kind::Upload,
    }
}

const fn stream<E: StreamEndpoint>() -> Declared {
    Declared {
        name: E::NAME,
        method: E::METHOD,
        route: E::ROUTE,
        kind: Kind::Stream,
    }
}

const fn socket<E: SocketEndpoint>() -> Declared {
    Declared {
        name: E::NAME,
        method: Method::Get,
        route: E::ROUTE,
        kind: Kind::Socket,
    }
}

/// The streaming and websocket endpoints.
pub const OTHER_ENDPOINTS: &[Declared] = &[
    stream::<Events>(),
    stream::<BuildImage>(),
    stream::<ImportImage>(),
    stream::<ImportDisk>(),
    stream::<BackupVm>(),
    stream::<MigrateOut>(),
    socket::<ConsoleSocket>(),
    socket::<VncSocket>(),
    download::<ReadImageFile>(),
    upload::<PutImage>(),
    download::<ReadDiskFile>(),
    upload::<PutDisk>(),
];

/// Every endpoint of the agent API.
pub fn all() -> impl Iterator<Item = Declared> {
    JSON_ENDPOINTS.iter().chain(OTHER_ENDPOINTS.iter()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn routes_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        let mut names = HashSet::new();
        for d in all() {
            assert!(
                seen.insert((d.method, d.route)),
                "{} {} is declared twice",
                d.method.as_str(),
                d.route
            );
            assert!(names.insert(d.name), "{} is declared twice", d.name);
            assert!(d.route.starts_with("/v1/"), "{}", d.route);
            let params: Vec<&str> = d
                .route
                .match_indices('{')
                .map(|(i, _)| &d.route[i..])
                .collect();
            assert!(params.iter().all(|p| p.starts_with("{id}")), "{}", d.route);
        }
        assert_eq!(all().count(), 52);
    }

    fn declared<E: Endpoint>() -> Declared {
        Declared {
            name: E::NAME,
            method: E::METHOD,
            route: E::ROUTE,
            kind: Kind::Json,
        }
    }

    #[test]
    fn every_endpoint_is_listed() {
        let listed: Vec<Declared> = all().collect();
        for d in [
            declared::<HostInfo>(),
            declared::<ListVms>(),
            declared::<GetVm>(),
            declared::<StartVm>(),
            declared::<ResizeDisk>(),
            declared::<DeleteImage>(),
            declared::<VmStats>(),
            stream::<Events>(),
            stream::<BuildImage>(),
            stream::<ImportImage>(),
            stream::<ImportDisk>(),
            stream::<BackupVm>(),
            stream::<MigrateOut>(),
            declared::<MigrateIn>(),
            declared::<GetMigration>(),
            declared::<AbandonMigration>(),
            declared::<RecoverMigration>(),
            declared::<ResumeMigration>(),
            socket::<ConsoleSocket>(),
            socket::<VncSocket>(),
            download::<ReadImageFile>(),
            upload::<PutImage>(),
            download::<ReadDiskFile>(),
            upload::<PutDisk>(),
        ] {
            assert!(listed.contains(&d), "{} is not in all()", d.name);
        }
    }

    #[test]
    fn paths_are_filled_in() {
        assert_eq!(
            <StartVm as Endpoint>::Path::render(&"vm-1".to_string(), StartVm::ROUTE),
            "/v1/vms/vm-1/start"
        );
        assert_eq!(
            "a/b?c".to_string().render(GetVm::ROUTE),
            "/v1/vms/a%2Fb%3Fc"
        );
        assert_eq!(VmId::parse(&[("id", "x")]), Some("x".to_string()));
        assert_eq!(<()>::parse(&[("id", "x")]), None);
    }
}
