//! `hostel export` and `hostel import-vm`: a VM moved between installations as one
//! archive (`hostel_model::archive`: its definition, each disk standing alone, the
//! SHA-256 of each). Both are streams end to end: an export's disks are read from the
//! host's agent as the archive is sent; an import's disks go to the agent as the archive
//! arrives, and the controller never holds more than a few pieces of either.
//!
//! An export copies a VM at rest (stopped), under its lock, so nothing changes it while
//! its disks are read. An import makes the VM like a create (its owner's quota, this
//! installation's networks and images), stores each disk as a disk add, checks every sum
//! at the end, and removes the VM again if anything is wrong.

use crate::agent_client::AgentCallError;
use crate::context::Ctx;
use crate::error::Error;
use crate::journal::OpLog;
use crate::Controller;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use hostel_api::agent::{self as wire, AgentApi};
use hostel_api::public::{ArchivedDisk, ImportVmQuery, ImportedVm, VmArchiveManifest};
use hostel_model::archive::{self, Entry};
use hostel_model::VmState;
use sha2::{Digest, Sha256};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// An export's archive: its file name and its bytes (an error ends them early).
pub struct VmExport {
    pub file_name: String,
    pub bytes: futures::stream::BoxStream<'static, Result<Bytes, Error>>,
}

/// The most disks an archive may name, and the largest manifest and sums file read.
const MOST_DISKS: usize = 64;
const MOST_SMALL_FILE: u64 = 1 << 20;

impl Controller {
    /// Starts the export of a stopped VM (anyone who may operate it).
    pub async fn export_vm(self: &Arc<Self>, ctx: &Ctx, name: &str) -> Res<VmExport> {
        let (guard, vm) = self.locked_vm(ctx, name).await?;
        if !matches!(vm.state, VmState::Stopped | VmState::Crashed) {
            return Err(Error::conflict(format!(
                "VM {name:?} is {}: shut it down first (`hostel shutdown {name}`): an export \
                 copies its disks at rest",
                vm.state.as_str()
            )));
        }
        let agent = self.host_agent(&vm)?;
        let disks = self.store.disks_of(&vm.id).await?;
        let mut def = self.definition_of(&vm).await?;
        // The NICs keep their MACs (a guest names its interfaces by them).
        let macs: Vec<String> = self
            .store
            .nics_of(&vm.id)
            .await?
            .into_iter()
            .map(|n| n.mac)
            .collect();
        if let Some(nics) = def.nics.as_mut() {
            for (n, mac) in nics.iter_mut().zip(macs) {
                n.mac = Some(mac);
            }
        }
        let mut reads = Vec::new();
        let mut listed = Vec::new();
        for d in &disks {
            // A disk the archive cannot carry in its own format is sent as qcow2.
            let format = if d.format == "raw" { "raw" } else { "qcow2" };
            listed.push(ArchivedDisk {
                index: d.idx,
                file: archive::disk_file(d.idx, format),
                format: format.into(),
                size_mib: d.size_mib,
            });
            reads.push(wire::ReadDiskFileRequest {
                file: d.path.clone(),
                pool: self.pool_spec(d.pool_id.as_deref()).await?,
                standalone_format: Some(format.into()),
            });
        }
        let manifest = VmArchiveManifest {
            format: archive::FORMAT.into(),
            version: archive::VERSION,
            hostel: env!("CARGO_PKG_VERSION").into(),
            exported_at: hostel_store::now().to_string(),
            vm: def,
            disks: listed.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(anyhow::Error::from)?;
        let (mut tx, rx) = mpsc::channel::<Result<Bytes, Error>>(4);
        let vm_name = vm.name.clone();
        tokio::spawn(async move {
            // The VM stays locked (nothing starts or changes it) until the last byte.
            let _guard = guard;
            let sent = write_archive(&agent, json, &listed, reads, &mut tx).await;
            match sent {
                Ok(bytes) => tracing::info!(vm = %vm_name, bytes, "exported"),
                Err(e) => {
                    tracing::warn!(vm = %vm_name, "export failed: {e}");
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        Ok(VmExport {
            file_name: format!("{}.hostel.tar", vm.name),
            bytes: rx.boxed(),
        })
    }

    /// Makes a VM from an archive arriving as `body`; removes it again on any failure.
    pub async fn import_vm<S, E>(
        self: &Arc<Self>,
        ctx: &Ctx,
        opts: ImportVmQuery,
        body: S,
    ) -> Res<ImportedVm>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: std::fmt::Display + 'static,
    {
        let mut tar = TarIn {
            body,
            pending: Bytes::new(),
        };
        let made = self.import_from(ctx, opts, &mut tar).await;
        if made.is_err() {
            // What the client still sends is read and dropped (until it stops on the
            // refusal), so that it reads the refusal rather than a broken connection.
            let mut body = tar.body;
            tokio::spawn(async move { while let Some(Ok(_)) = body.next().await {} });
        }
        made
    }

    async fn import_from<S, E>(
        self: &Arc<Self>,
        ctx: &Ctx,
        opts: ImportVmQuery,
        tar: &mut TarIn<S>,
    ) -> Res<ImportedVm>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut sums = Vec::new();
        let (manifest, sum) = read_manifest(tar).await?;
        sums.push((archive::MANIFEST.to_string(), sum));
        let mut notes = Vec::new();
        let mut def = manifest.vm.clone();
        if let Some(n) = &opts.name {
            def.name = n.clone();
        }
        def.start = false;
        if let Some(p) = &opts.pool {
            def.pool = Some(p.clone());
        }
        // A MAC another NIC here has is given up for a new one.
        let used: std::collections::HashSet<String> = self
            .store
            .all_nics()
            .await?
            .into_iter()
            .map(|n| n.mac.to_ascii_lowercase())
            .collect();
        if let Some(nics) = def.nics.as_mut() {
            for n in nics.iter_mut() {
                if let Some(net) = &opts.network {
                    n.network = net.clone();
                }
                if let Some(m) = n.mac.take() {
                    if used.contains(&m.to_ascii_lowercase()) {
                        notes.push(format!(
                            "MAC {m} is another NIC's here: the NIC got a new one"
                        ));
                    } else {
                        n.mac = Some(m);
                    }
                }
            }
        }
        let pool_id = match &opts.pool {
            Some(p) => Some(self.pool_named(p).await?.id),
            None => None,
        };
        let (made, op) = self.create_vm_with(ctx, def).await?;
        let name = made.name.clone();
        let filled = self
            .fill_from_archive(ctx, &name, &manifest, tar, &mut sums, pool_id, &op)
            .await;
        if let Err(e) = filled {
            // Nothing half made stays.
            let e = self.unmake(ctx, &name, e).await;
            op.failed(&e).await;
            return Err(e);
        }
        op.done().await;
        if opts.start {
            // It is imported whole either way: a start that fails is said, not undone.
            if let Err(e) = self.start_vm(ctx, &name).await {
                notes.push(format!("imported, but it did not start: {e}"));
            }
        }
        let vm = self.vm_named(ctx, &name).await?;
        Ok(ImportedVm {
            vm: self.view(&vm, true).await?,
            notes,
        })
    }

    /// Stores each disk of the archive into VM `name`, then checks the sums and the end.
    #[allow(clippy::too_many_arguments)]
    async fn fill_from_archive<S, E>(
        &self,
        ctx: &Ctx,
        name: &str,
        manifest: &VmArchiveManifest,
        tar: &mut TarIn<S>,
        sums: &mut Vec<(String, String)>,
        pool_id: Option<String>,
        op: &OpLog,
    ) -> Res<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let (_guard, vm) = self.locked_vm(ctx, name).await?;
        let pool = self.pool_spec(pool_id.as_deref()).await?;
        // All of its disks fit the owner's quota, before a byte is stored (each is
        // charged again as it is kept).
        let total: u64 = manifest.disks.iter().map(|d| d.size_mib).sum();
        drop(self.charge_disk_growth(&vm, total, 0).await?);
        for d in &manifest.disks {
            let size = match tar.header().await? {
                Entry::File { name, size } if name == d.file => {
                    if size > most_file_bytes(d) {
                        return Err(bad(format!(
                            "{name:?} is {size} bytes, more than a disk of {} MiB takes",
                            d.size_mib
                        )));
                    }
                    size
                }
                Entry::File { name, .. } => {
                    return Err(bad(format!(
                        "{name:?} comes where the manifest says {:?} does",
                        d.file
                    )))
                }
                Entry::End => return Err(bad(format!("it ends before {:?}", d.file))),
            };
            let (mut tx, rx) = mpsc::channel::<Result<Bytes, AgentCallError>>(4);
            let req = wire::PutDiskRequest {
                vm_id: vm.id.clone(),
                index: d.index,
                size_mib: d.size_mib,
                format: d.format.clone(),
                bytes: size,
                backing: None,
                pool: pool.clone(),
            };
            let put = self.put_in_disk(ctx, &vm, req, rx.boxed(), pool_id.clone());
            let feed = async {
                let mut hash = Sha256::new();
                let mut left = size;
                while left > 0 {
                    let piece = tar.take(left.min(1 << 20) as usize).await?;
                    left -= piece.len() as u64;
                    hash.update(&piece);
                    if tx.send(Ok(piece)).await.is_err() {
                        // The host stopped taking it: its answer says why.
                        return Ok(None);
                    }
                }
                drop(tx);
                tar.skip(archive::padding(size)).await?;
                Ok::<_, Error>(Some(hex::encode(hash.finalize())))
            };
            let (put, fed) = tokio::join!(put, feed);
            let fed = fed?;
            put?;
            let sum = fed.ok_or_else(|| bad(format!("{}: the host stopped taking it", d.file)))?;
            sums.push((d.file.clone(), sum));
            op.step("disk-copied").await?;
        }
        // The sums, then the end.
        let text = match tar.header().await? {
            Entry::File { name, size } if name == archive::SUMS && size <= MOST_SMALL_FILE => {
                let b = tar.exact(size as usize).await?;
                tar.skip(archive::padding(size)).await?;
                String::from_utf8(b).map_err(|_| bad(format!("{} is not text", archive::SUMS)))?
            }
            _ => {
                return Err(bad(format!(
                    "{} does not follow the disks: the archive is cut short or not one \
                     `hostel export` wrote",
                    archive::SUMS
                )))
            }
        };
        let said = archive::parse_sums(&text).map_err(bad)?;
        for (file, sum) in sums.iter() {
            match said.iter().find(|(f, _)| f == file) {
                Some((_, s)) if s == sum => {}
                Some(_) => {
                    return Err(bad(format!(
                        "{file}'s SHA-256 is not the one {} gives: the archive is damaged",
                        archive::SUMS
                    )))
                }
                None => return Err(bad(format!("{} has no sum for {file}", archive::SUMS))),
            }
        }
        if tar.header().await? != Entry::End {
            return Err(bad(
                "more follows the sums than an archive of `hostel export` has",
            ));
        }
        Ok(())
    }
}

/// The most bytes the file of disk `d` may have: a raw disk's size; a qcow2's with room
/// for its tables (a sixty-fourth more, far above what its L2 and refcount tables take,
/// and 16 MiB of headers).
fn most_file_bytes(d: &ArchivedDisk) -> u64 {
    let bytes = d.size_mib << 20;
    match d.format.as_str() {
        "raw" => bytes,
        _ => bytes + bytes / 64 + (16 << 20),
    }
}

/// A refused archive: what is wrong with it.
fn bad(why: impl std::fmt::Display) -> Error {
    Error::from(hostel_model::Invalid::new(
        "archive",
        format!("not an archive `hostel import-vm` takes: {why}"),
    ))
}

/// Reads the manifest (the first file) and checks it; gives it and its SHA-256.
async fn read_manifest<S, E>(tar: &mut TarIn<S>) -> Res<(VmArchiveManifest, String)>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let first = tar.exact(archive::BLOCK).await?;
    let first: [u8; archive::BLOCK] = first.try_into().expect("a block");
    let entry = archive::parse_header(&first).map_err(|e| {
        bad(format!(
            "it does not start with {} ({e}; make one with `hostel export VM FILE`)",
            archive::MANIFEST
        ))
    })?;
    let size = match entry {
        Entry::File { name, size } if name == archive::MANIFEST && size <= MOST_SMALL_FILE => size,
        Entry::File { name, .. } if name == archive::MANIFEST => {
            return Err(bad(format!("its {} is too large", archive::MANIFEST)))
        }
        _ => {
            return Err(bad(format!(
                "it does not start with {} (make one with `hostel export VM FILE`)",
                archive::MANIFEST
            )))
        }
    };
    let b = tar.exact(size as usize).await?;
    tar.skip(archive::padding(size)).await?;
    let sum = hex::encode(Sha256::digest(&b));
    let m: VmArchiveManifest =
        serde_json::from_slice(&b).map_err(|e| bad(format!("its {}: {e}", archive::MANIFEST)))?;
    if m.format != archive::FORMAT {
        return Err(bad(format!("its format is {:?}", m.format)));
    }
    if m.version > archive::VERSION {
        return Err(bad(format!(
            "it was written by Hostel {} (archive version {}); this one reads version {}: \
             upgrade it first",
            m.hostel,
            m.version,
            archive::VERSION
        )));
    }
    if m.disks.len() > MOST_DISKS {
        return Err(bad(format!("it names {} disks", m.disks.len())));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &m.disks {
        if !matches!(d.format.as_str(), "qcow2" | "raw")
            || d.file != archive::disk_file(d.index, &d.format)
            || !seen.insert(d.index)
        {
            return Err(bad(format!(
                "its disk {:?} (index {}, {}) is not one it could have written",
                d.file, d.index, d.format
            )));
        }
        hostel_model::check_disk_size(&format!("disk {}", d.file), d.size_mib)?;
    }
    Ok((m, sum))
}

/// The archive as it arrives: headers, whole small files, and pieces of large ones.
struct TarIn<S> {
    body: S,
    pending: Bytes,
}

impl<S, E> TarIn<S>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    /// Up to `most` bytes (at least one): what has arrived, else the next piece.
    async fn take(&mut self, most: usize) -> Res<Bytes> {
        while self.pending.is_empty() {
            match self.body.next().await {
                Some(Ok(b)) => self.pending = b,
                Some(Err(e)) => return Err(bad(format!("its upload broke off: {e}"))),
                None => return Err(bad("it is cut short")),
            }
        }
        let n = most.min(self.pending.len());
        Ok(self.pending.split_to(n))
    }

    async fn exact(&mut self, n: usize) -> Res<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.extend_from_slice(&self.take(n - out.len()).await?);
        }
        Ok(out)
    }

    async fn skip(&mut self, n: usize) -> Res<()> {
        self.exact(n).await.map(|_| ())
    }

    async fn header(&mut self) -> Res<Entry> {
        let b = self.exact(archive::BLOCK).await?;
        let block: [u8; archive::BLOCK] = b.try_into().expect("a block");
        archive::parse_header(&block).map_err(bad)
    }
}

/// Sends the archive into `tx`; gives its length.
async fn write_archive(
    agent: &crate::agent_client::AgentClient,
    manifest: Vec<u8>,
    disks: &[ArchivedDisk],
    reads: Vec<wire::ReadDiskFileRequest>,
    tx: &mut mpsc::Sender<Result<Bytes, Error>>,
) -> Res<u64> {
    let gone = || Error::conflict("the export's reader went away");
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut sums = String::new();
    let first = small_file(archive::MANIFEST, &manifest, mtime, &mut sums);
    let mut sent = first.len() as u64;
    tx.send(Ok(first)).await.map_err(|_| gone())?;
    for (d, req) in disks.iter().zip(reads) {
        let sized = agent.read_disk_file(req).await?;
        let head = Bytes::copy_from_slice(&archive::header(&d.file, sized.size, mtime));
        tx.send(Ok(head)).await.map_err(|_| gone())?;
        let mut hash = Sha256::new();
        let mut got = 0u64;
        let mut bytes = sized.bytes;
        while let Some(piece) = bytes.next().await {
            let piece = piece.map_err(|e: AgentCallError| {
                Error::unavailable(format!("reading disk {}: {e}", d.index))
            })?;
            // A host whose agent predates standalone copies sends an overlay as it is:
            // an archive with it would be refused on import (its image is not there).
            if got == 0
                && d.format == "qcow2"
                && hostel_model::qcow2::names_backing(&piece) == Some(true)
            {
                return Err(Error::conflict(format!(
                    "disk {}: its host sent it with its backing file, not standing alone: \
                     upgrade Hostel on the VM's host and export again",
                    d.index
                )));
            }
            got += piece.len() as u64;
            hash.update(&piece);
            tx.send(Ok(piece)).await.map_err(|_| gone())?;
        }
        if got != sized.size {
            return Err(Error::unavailable(format!(
                "disk {}: its host sent {got} of {} bytes",
                d.index, sized.size
            )));
        }
        let pad = archive::padding(got);
        tx.send(Ok(Bytes::from(vec![0u8; pad])))
            .await
            .map_err(|_| gone())?;
        sent += archive::BLOCK as u64 + got + pad as u64;
        sums.push_str(&format!("{}  {}\n", hex::encode(hash.finalize()), d.file));
    }
    let mut last = small_file(archive::SUMS, sums.clone().as_bytes(), mtime, &mut sums).to_vec();
    last.extend_from_slice(&archive::END);
    let last = Bytes::from(last);
    sent += last.len() as u64;
    tx.send(Ok(last)).await.map_err(|_| gone())?;
    Ok(sent)
}

/// A whole small file of the archive: its header, its data, its padding; its sum line
/// goes onto `sums`.
fn small_file(name: &str, data: &[u8], mtime: u64, sums: &mut String) -> Bytes {
    let mut out = archive::header(name, data.len() as u64, mtime).to_vec();
    sums.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(data))));
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(
        0u8,
        archive::padding(data.len() as u64),
    ));
    Bytes::from(out)
}
