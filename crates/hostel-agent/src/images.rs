//! Images between hosts: one file of the image store read out as bytes, and an image
//! stored from another host's bytes, kept only when its SHA-256 is the one the controller
//! recorded (the same sum as `hostel_storage::disk::sha256_files`: the files one after
//! another).

use crate::{inside, Shared};
use bytes::Bytes;
use futures::StreamExt;
use hostel_api::agent::{AgentFailure, ByteStream, ImageFiles, PutImageRequest, SizedBytes};
use hostel_model::ImageKind;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, AgentFailure>;

const CHUNK: usize = 256 * 1024;

impl Shared {
    /// The bytes of `path`, a file of this host's image store.
    pub(crate) async fn image_file_bytes(&self, path: &str) -> Res<SizedBytes<AgentFailure>> {
        let p = Path::new(path);
        if !inside(p, &self.images_dir()) || !p.is_file() {
            return Err(AgentFailure::not_found(format!(
                "{path} is not a file of this host's image store"
            )));
        }
        file_bytes(p).await
    }

    /// Stores the image of `req` from `body`; replaces an image of that name.
    pub(crate) async fn put_image_bytes(
        &self,
        req: PutImageRequest,
        body: ByteStream<AgentFailure>,
    ) -> Res<ImageFiles> {
        let store = self.images_dir();
        let top = check_parts(&req)?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let incoming = store.join(".incoming").join(format!("{}-{n}", req.name));
        let _ = tokio::fs::remove_dir_all(&incoming).await;
        let written = receive(&req, body, &incoming).await;
        let result = match written {
            Ok(()) => self.keep(&req, &incoming, &top).await,
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_dir_all(&incoming).await;
        result
    }

    /// Moves a received image into the store in place of any of that name.
    async fn keep(&self, req: &PutImageRequest, incoming: &Path, top: &str) -> Res<ImageFiles> {
        let store = self.images_dir();
        let fail = |what: &str, e: std::io::Error| AgentFailure::internal(format!("{what}: {e}"));
        let dest = store.join(top);
        if dest.is_dir() {
            tokio::fs::remove_dir_all(&dest)
                .await
                .map_err(|e| fail("removing the old copy", e))?;
        } else if dest.exists() {
            tokio::fs::remove_file(&dest)
                .await
                .map_err(|e| fail("removing the old copy", e))?;
        }
        let src = incoming.join(top);
        let mode = if src.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail("setting permissions", e))?;
        tokio::fs::rename(&src, &dest)
            .await
            .map_err(|e| fail("moving the image into the store", e))?;
        let paths: Vec<PathBuf> = req.files.iter().map(|f| store.join(&f.name)).collect();
        let virtual_size_mib = match req.kind {
            ImageKind::Disk => {
                let (p, format) = (paths[0].clone(), req.format.clone());
                tokio::task::spawn_blocking(move || hostel_storage::disk::info(&p, &format))
                    .await
                    .map_err(|e| AgentFailure::internal(e.to_string()))?
                    .map_err(|e| AgentFailure::invalid(format!("the image's disk: {e:#}")))?
                    .virtual_size
                    .div_ceil(1 << 20)
            }
            ImageKind::DirectKernel => 0,
        };
        Ok(ImageFiles {
            name: req.name.clone(),
            kind: req.kind,
            format: req.format.clone(),
            path: paths[0].display().to_string(),
            initrd: paths.get(1).map(|p| p.display().to_string()),
            cmdline: req.cmdline.clone(),
            size_bytes: req.files.iter().map(|f| f.size).sum(),
            virtual_size_mib,
            sha256: req.sha256.clone(),
        })
    }
}

/// The parts' names are plain paths inside the store under one top entry named for the
/// image (`NAME.qcow2`, or `NAME/vmlinuz` and `NAME/initrd`); that entry comes back.
fn check_parts(req: &PutImageRequest) -> Res<String> {
    let bad = |m: String| AgentFailure::invalid(format!("files: {m}"));
    if !crate::is_plain_name(&req.name) {
        return Err(AgentFailure::invalid("name: not a plain image name"));
    }
    let want = match req.kind {
        ImageKind::Disk => 1..=1,
        ImageKind::DirectKernel => 1..=2,
    };
    if !want.contains(&req.files.len()) {
        return Err(bad(format!(
            "{} files for a {} image",
            req.files.len(),
            req.kind.as_str()
        )));
    }
    let mut top: Option<String> = None;
    for f in &req.files {
        let comps: Vec<Component> = Path::new(&f.name).components().collect();
        let plain = !comps.is_empty()
            && comps.len() <= 2
            && comps.iter().all(|c| matches!(c, Component::Normal(_)));
        let first = comps
            .first()
            .map(|c| c.as_os_str().to_string_lossy().to_string());
        let named = first.as_deref().is_some_and(|t| {
            t == req.name
                || t.strip_prefix(req.name.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        });
        if !plain || !named || first.as_deref().is_some_and(|t| t.starts_with('.')) {
            return Err(bad(format!(
                "{:?} is not a file of image {:?}",
                f.name, req.name
            )));
        }
        if top.is_some() && top != first {
            return Err(bad("the files are not under one entry of the store".into()));
        }
        top = first;
    }
    Ok(top.expect("at least one file"))
}

/// Writes the body's bytes into the parts' files under `dir`, checking lengths and the
/// sum as they come.
async fn receive(req: &PutImageRequest, mut body: ByteStream<AgentFailure>, dir: &Path) -> Res<()> {
    let fail = |what: String, e: std::io::Error| AgentFailure::internal(format!("{what}: {e}"));
    let mut hash = Sha256::new();
    let mut pending = Bytes::new();
    for part in &req.files {
        let path = dir.join(&part.name);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| fail(format!("making {}", parent.display()), e))?;
        }
        let mut out = tokio::fs::File::create(&path)
            .await
            .map_err(|e| fail(format!("creating {}", path.display()), e))?;
        let mut left = part.size;
        while left > 0 {
            if pending.is_empty() {
                pending = match body.next().await {
                    Some(b) => b?,
                    None => {
                        return Err(AgentFailure::invalid(format!(
                            "the body ended {left} bytes short of {}",
                            part.name
                        )))
                    }
                };
                continue;
            }
            let n = pending.len().min(left as usize);
            let piece = pending.split_to(n);
            hash.update(&piece);
            out.write_all(&piece)
                .await
                .map_err(|e| fail(format!("writing {}", path.display()), e))?;
            left -= n as u64;
        }
        out.flush()
            .await
            .map_err(|e| fail(format!("writing {}", path.display()), e))?;
        out.sync_all()
            .await
            .map_err(|e| fail(format!("writing {}", path.display()), e))?;
    }
    if !pending.is_empty() || body.next().await.is_some() {
        return Err(AgentFailure::invalid(
            "the body is longer than the files it was said to hold",
        ));
    }
    let sum: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if sum != req.sha256 {
        return Err(AgentFailure::invalid(format!(
            "sha256: the bytes received add up to {sum}, not the image's {}: the copy is \
             dropped",
            req.sha256
        )));
    }
    Ok(())
}

/// The bytes of a file, read as they are sent.
pub(crate) async fn file_bytes(p: &Path) -> Res<SizedBytes<AgentFailure>> {
    let f = tokio::fs::File::open(p)
        .await
        .map_err(|e| AgentFailure::internal(format!("opening {}: {e}", p.display())))?;
    let size = f
        .metadata()
        .await
        .map_err(|e| AgentFailure::internal(format!("reading {}: {e}", p.display())))?
        .len();
    let path = p.display().to_string();
    let bytes = futures::stream::unfold(Some(f), move |f| {
        let path = path.clone();
        async move {
            let mut f = f?;
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((
                    Err(AgentFailure::internal(format!("reading {path}: {e}"))),
                    None,
                )),
            }
        }
    })
    .boxed();
    Ok(SizedBytes { size, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostel_api::agent::ImageFilePart;

    fn req(files: &[(&str, u64)], sha256: &str) -> PutImageRequest {
        PutImageRequest {
            name: "tiny".into(),
            kind: ImageKind::DirectKernel,
            format: "kernel".into(),
            cmdline: None,
            files: files
                .iter()
                .map(|(n, s)| ImageFilePart {
                    name: n.to_string(),
                    size: *s,
                })
                .collect(),
            sha256: sha256.into(),
        }
    }

    fn body(pieces: &[&[u8]]) -> ByteStream<AgentFailure> {
        let v: Vec<Res<Bytes>> = pieces
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        futures::stream::iter(v).boxed()
    }

    fn sum(b: &[u8]) -> String {
        Sha256::digest(b)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn parts_stay_inside_the_image_s_own_entry() {
        let ok = req(&[("tiny/vmlinuz", 1), ("tiny/initrd", 1)], "");
        assert_eq!(check_parts(&ok).unwrap(), "tiny");
        for bad in [
            vec![("../etc/passwd", 1)],
            vec![("/etc/passwd", 1)],
            vec![("other/vmlinuz", 1)],
            vec![("tiny/a/b", 1)],
            vec![("tinyx.qcow2", 1)],
            vec![(".incoming/x", 1)],
            vec![("tiny/vmlinuz", 1), ("tiny.qcow2", 1)],
            vec![],
        ] {
            assert!(check_parts(&req(&bad, "")).is_err(), "{bad:?}");
        }
        let mut disk = req(&[("tiny.qcow2", 1)], "");
        disk.kind = ImageKind::Disk;
        assert_eq!(check_parts(&disk).unwrap(), "tiny.qcow2");
    }

    #[tokio::test]
    async fn files_are_split_at_their_lengths_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"kernel-bytesinitrd";
        let r = req(&[("tiny/vmlinuz", 12), ("tiny/initrd", 6)], &sum(data));
        // Pieces that straddle the files' boundary.
        receive(&r, body(&[b"kern", b"el-bytesin", b"itrd"]), dir.path())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("tiny/vmlinuz")).unwrap(),
            b"kernel-bytes"
        );
        assert_eq!(
            std::fs::read(dir.path().join("tiny/initrd")).unwrap(),
            b"initrd"
        );
        // Short, long, or not adding up: refused.
        let d2 = tempfile::tempdir().unwrap();
        let e = receive(&r, body(&[b"kernel-bytes"]), d2.path())
            .await
            .unwrap_err();
        assert!(e.message.contains("short"), "{e:?}");
        let e = receive(&r, body(&[data, b"x"]), d2.path())
            .await
            .unwrap_err();
        assert!(e.message.contains("longer"), "{e:?}");
        let e = receive(&r, body(&[b"kernel-bytesINITRD"]), d2.path())
            .await
            .unwrap_err();
        assert!(e.message.contains("sha256"), "{e:?}");
    }
}
