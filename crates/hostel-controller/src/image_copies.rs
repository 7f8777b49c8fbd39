//! Images on every host: a host gets a copy of an image the first time a VM there needs
//! it, or ahead of time (`hostel image push`). The copy streams through the controller,
//! from a host that holds one to the host that needs one, and the receiving agent keeps
//! it only when its SHA-256 is the image's. One copy per image and host at a time: a
//! second asker waits for the first copy and uses it.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use futures::StreamExt;
use hostel_api::agent::{self as wire, AgentApi};
use hostel_api::public::*;
use hostel_store::{ImageCopyRecord, ImageRecord};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// Called with the fraction of the bytes copied.
pub(crate) type Progress<'a> = &'a (dyn Fn(f64) + Send + Sync);

/// The name of `path` inside its image store: `NAME/FILE` for an image kept in a
/// directory of its name (a kernel and its initrd), else the file's name.
fn store_name(path: &str, image: &str) -> String {
    let p = std::path::Path::new(path);
    let file = p
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    match p.parent().and_then(|d| d.file_name()) {
        Some(d) if d == image => format!("{image}/{file}"),
        _ => file,
    }
}

impl Controller {
    /// The one lock of a copy of `image_id` to `host`.
    fn copy_lock(&self, image_id: &str, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.copy_locks
            .lock()
            .unwrap()
            .entry((image_id.to_string(), host.to_string()))
            .or_default()
            .clone()
    }

    /// The image's copy on `host`, made first when the host has none.
    pub(crate) async fn image_on(
        &self,
        img: &ImageRecord,
        host: &str,
        progress: Option<Progress<'_>>,
    ) -> Res<ImageCopyRecord> {
        let lock = self.copy_lock(&img.id, host);
        let _one = lock.lock().await;
        if let Some(c) = self.store.image_copy(&img.id, host).await? {
            if c.is_ready() {
                return Ok(c);
            }
        }
        let target = self
            .agent(host)
            .filter(|_| self.is_online(host))
            .ok_or_else(|| {
                Error::unavailable(format!(
                    "host {host} is not connected: image {:?} cannot be copied there now",
                    img.name
                ))
            })?;
        // From a connected host with a ready copy, the one that made the image first.
        let mut sources: Vec<ImageCopyRecord> = self
            .store
            .image_copies(&img.id)
            .await?
            .into_iter()
            .filter(|c| c.is_ready() && c.host_id != host && self.is_online(&c.host_id))
            .collect();
        sources.sort_by_key(|c| c.host_id != img.host_id);
        let (src, source) = sources
            .into_iter()
            .find_map(|c| self.agent(&c.host_id).map(|a| (c, a)))
            .ok_or_else(|| {
                Error::unavailable(format!(
                    "no connected host holds image {:?}, so it cannot be copied to {host}: \
                     start the agent of a host that has it (`hostel image list` names them)",
                    img.name
                ))
            })?;
        self.store.begin_image_copy(&img.id, host).await?;
        let result = self.copy_files(img, &src, &source, &target, progress).await;
        let recorded = match result {
            Ok(files) => match self
                .store
                .finish_image_copy(&img.id, host, &files.path, files.initrd.as_deref())
                .await
            {
                Ok(()) => Ok(()),
                Err(e) => {
                    // The image went while it was copied: its files go too.
                    let _ = target
                        .delete_image(wire::DeleteImageRequest { path: files.path })
                        .await;
                    Err(Error::from(e))
                }
            },
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            let _ = self.store.drop_image_copy(&img.id, host).await;
            return Err(e);
        }
        tracing::info!(image = %img.name, from = %src.host_id, to = %host, "image copied");
        self.store
            .image_copy(&img.id, host)
            .await?
            .ok_or_else(|| Error::from(anyhow::anyhow!("the copy's row went")))
    }

    /// Streams the files of `src` (on `source`) to `target`.
    async fn copy_files(
        &self,
        img: &ImageRecord,
        src: &ImageCopyRecord,
        source: &crate::agent_client::AgentClient,
        target: &crate::agent_client::AgentClient,
        progress: Option<Progress<'_>>,
    ) -> Res<wire::ImageFiles> {
        let paths: Vec<String> = src.path.iter().chain(src.initrd.iter()).cloned().collect();
        let mut files = Vec::new();
        let mut streams = Vec::new();
        for p in &paths {
            let sized = source
                .read_image_file(wire::ReadImageFileRequest { path: p.clone() })
                .await?;
            files.push(wire::ImageFilePart {
                name: store_name(p, &img.name),
                size: sized.size,
            });
            streams.push(sized.bytes);
        }
        let total: u64 = files.iter().map(|f| f.size).sum::<u64>().max(1);
        let sent = std::sync::atomic::AtomicU64::new(0);
        let last = std::sync::atomic::AtomicU64::new(0);
        let body = futures::stream::iter(streams).flatten().inspect(|b| {
            if let (Ok(b), Some(p)) = (b, progress) {
                let n = sent.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed)
                    + b.len() as u64;
                // A call per whole percent.
                let pct = n * 100 / total;
                if last.swap(pct, std::sync::atomic::Ordering::Relaxed) != pct {
                    p(n as f64 / total as f64);
                }
            }
        });
        // The body must be 'static: what it reports goes through a channel.
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let pump = async move {
            futures::pin_mut!(body);
            while let Some(b) = body.next().await {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
        };
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        let put = target.put_image(
            wire::PutImageRequest {
                name: img.name.clone(),
                kind: img.kind,
                format: img.format.clone(),
                cmdline: img.cmdline.clone(),
                files,
                sha256: img.sha256.clone(),
            },
            stream,
        );
        let (_, put) = tokio::join!(pump, put);
        let files = put?;
        if files.sha256 != img.sha256 {
            return Err(Error::from(anyhow::anyhow!(
                "the copy of image {:?} adds up to {}, not {}",
                img.name,
                files.sha256,
                img.sha256
            )));
        }
        Ok(files)
    }

    /// The image's copies, for its view: host names and states.
    pub(crate) async fn image_hosts(&self, img: &ImageRecord) -> Res<Vec<ImageCopy>> {
        Ok(self
            .store
            .image_copies(&img.id)
            .await?
            .into_iter()
            .map(|c| ImageCopy {
                host: c.host_id,
                state: c.state,
            })
            .collect())
    }

    /// Copies an image ahead of its first use to one host or every connected host
    /// (admins): a task per host that has no copy yet, whose ids come back at once.
    pub async fn push_image(
        self: &Arc<Self>,
        ctx: &Ctx,
        name: &str,
        req: PushImageRequest,
    ) -> Res<Vec<Task>> {
        ctx.require_admin()?;
        ctx.target(name, None);
        ctx.params(serde_json::json!({"host": req.host}));
        let img = self.store.image_by_name(name).await?.ok_or_else(|| {
            Error::not_found(
                "image",
                name,
                format!("there is no image named {name:?}: `hostel image list` shows them"),
            )
        })?;
        let hosts: Vec<String> = match &req.host {
            Some(h) => {
                self.host_named(h).await?;
                if !self.is_online(h) {
                    return Err(Error::unavailable(format!(
                        "host {h} is not connected: start its agent, or push when `hostel host \
                         list` shows it online"
                    )));
                }
                vec![h.clone()]
            }
            None => self
                .store
                .hosts()
                .await?
                .into_iter()
                .map(|h| h.id)
                .filter(|h| self.is_online(h))
                .collect(),
        };
        self.require_free_space()?;
        let mut tasks = Vec::new();
        for h in hosts {
            if self
                .store
                .image_copy(&img.id, &h)
                .await?
                .is_some_and(|c| c.is_ready())
            {
                continue;
            }
            let task = self
                .new_task(
                    ctx,
                    "image-copy",
                    &format!("{} to {h}", img.name),
                    "copying",
                )
                .await?;
            let (me, img, id) = (self.clone(), img.clone(), task.id.clone());
            tokio::spawn(async move {
                // The copy notes its progress; a writer puts it in the task twice a
                // second, and is done before the task's end is written (never after).
                let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let seen = done.clone();
                let report = move |f: f64| {
                    seen.store(f.to_bits(), std::sync::atomic::Ordering::Relaxed);
                };
                let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
                let (store, tid) = (me.store.clone(), id.clone());
                let writer = tokio::spawn(async move {
                    let mut last = 0u64;
                    loop {
                        tokio::select! {
                            _ = &mut stopped => return,
                            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                        }
                        let now = done.load(std::sync::atomic::Ordering::Relaxed);
                        if now != last {
                            last = now;
                            let f = f64::from_bits(now);
                            let _ = store
                                .update_task(&tid, TaskState::Running, f, "copying", None)
                                .await;
                        }
                    }
                });
                let res = me.image_on(&img, &h, Some(&report)).await;
                let _ = stop.send(());
                let _ = writer.await;
                let _ = match res {
                    Ok(_) => {
                        me.store
                            .update_task(&id, TaskState::Succeeded, 1.0, "done", None)
                            .await
                    }
                    Err(e) => {
                        me.store
                            .update_task(
                                &id,
                                TaskState::Failed,
                                1.0,
                                "failed",
                                Some(&e.to_string()),
                            )
                            .await
                    }
                };
            });
            tasks.push(task);
        }
        Ok(tasks)
    }

    /// Removes every host's copy of a deleted image: its files, and pools' clones of it.
    pub(crate) async fn delete_image_copies(&self, img: &ImageRecord, copies: &[ImageCopyRecord]) {
        for c in copies {
            let Some(agent) = self.agent(&c.host_id) else {
                tracing::warn!(image = %img.name, host = %c.host_id,
                    "the image's copy on a host not connected stays on its disk");
                continue;
            };
            if let Ok(pools) = self.store.pools().await {
                for p in pools
                    .into_iter()
                    .filter(|p| p.host_id == c.host_id && p.driver != hostel_model::PoolDriver::Dir)
                {
                    let _ = agent
                        .pool_forget_image(wire::ForgetImageRequest {
                            pool: wire::PoolSpec {
                                name: p.name,
                                driver: p.driver.as_str().into(),
                                path: p.path,
                            },
                            image_id: img.id.clone(),
                        })
                        .await;
                }
            }
            if let Some(path) = &c.path {
                if let Err(e) = agent
                    .delete_image(wire::DeleteImageRequest { path: path.clone() })
                    .await
                {
                    tracing::warn!(image = %img.name, host = %c.host_id, "{e}");
                }
            }
        }
    }

    /// The paths of an image's files on `host`, for a VM there.
    pub(crate) async fn image_files_on(
        &self,
        img: &ImageRecord,
        host: &str,
    ) -> Res<(String, Option<String>)> {
        match self.store.image_copy(&img.id, host).await? {
            Some(ImageCopyRecord {
                path: Some(p),
                initrd,
                state,
                ..
            }) if state == "ready" => Ok((p, initrd)),
            _ => Err(Error::unavailable(format!(
                "host {host} has no copy of image {:?}: `hostel image push {} --host {host}` \
                 makes one",
                img.name, img.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_names() {
        assert_eq!(
            super::store_name("/var/lib/hostel/images/tiny/vmlinuz", "tiny"),
            "tiny/vmlinuz"
        );
        assert_eq!(
            super::store_name("/var/lib/hostel/images/deb.qcow2", "deb"),
            "deb.qcow2"
        );
    }
}
