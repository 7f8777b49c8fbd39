//! Images and tasks: building and importing images (long work, run as a task whose
//! progress the agent streams), listing and deleting them.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::agent::{self as wire};
use hostel_api::public::*;
use hostel_model::{validate_name, Invalid};
use hostel_store::{new_id, now, ImageRecord, TaskRecord};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// What a host's agent is asked to make into an image.
enum ImageJob {
    Build(wire::BuildImageRequest),
    Import(wire::ImportImageRequest),
}

/// The Debian suites the `debian` recipe builds.
const DEBIAN_SUITES: &[&str] = &["bookworm", "trixie"];

impl Controller {
    // ---- images and tasks ----

    pub(crate) fn task_view(t: TaskRecord) -> Task {
        Task {
            id: t.id,
            kind: t.kind,
            target: t.target,
            state: t.state,
            progress: t.progress,
            message: t.message,
            error: t.error,
            created_at: t.created_at.to_string(),
            updated_at: t.updated_at.to_string(),
        }
    }

    /// Records a new running task of the caller's, and its view.
    pub(crate) async fn new_task(
        &self,
        ctx: &Ctx,
        kind: &str,
        target: &str,
        message: &str,
    ) -> Res<Task> {
        let task = TaskRecord {
            id: new_id("task"),
            kind: kind.into(),
            target: target.into(),
            state: TaskState::Running,
            progress: 0.0,
            message: message.into(),
            error: None,
            created_at: now(),
            updated_at: now(),
            created_by: ctx.caller().ok().map(|c| c.user_id.clone()),
            owner: Some(self.id.clone()),
        };
        self.store.insert_task(&task).await?;
        self.task(ctx, &task.id).await
    }

    /// A task, to the user who started it and to admins; to anyone else it does not
    /// exist (the same answer as for an id that is no task's). Hostel's own actors read
    /// the tasks they started.
    pub async fn task(&self, ctx: &Ctx, id: &str) -> Res<Task> {
        let missing = || Error::not_found("task", id, format!("there is no task {id:?}"));
        let t = self.store.task(id).await?.ok_or_else(missing)?;
        let mine = match &ctx.actor {
            crate::context::Actor::User(c) => {
                c.is_admin || t.created_by.as_deref() == Some(c.user_id.as_str())
            }
            crate::context::Actor::System(_) => t.created_by.is_none(),
        };
        if !mine {
            return Err(missing());
        }
        Ok(Self::task_view(t))
    }

    pub async fn image_view(&self, ctx: &Ctx, i: ImageRecord) -> Res<Image> {
        Ok(Image {
            used_by: {
                let mut names = self.store.image_users(&i.id).await?;
                if let Some(visible_to) = ctx.visible_to()? {
                    // The caller's VMs only, asked of the database (not every VM read).
                    let mine: std::collections::HashSet<String> = self
                        .store
                        .vms_page(&hostel_store::VmPageQuery {
                            visible_to: Some(visible_to),
                            limit: u32::MAX,
                            ..Default::default()
                        })
                        .await?
                        .into_iter()
                        .map(|r| r.vm.name)
                        .collect();
                    names.retain(|n| mine.contains(n));
                }
                names
            },
            hosts: self.image_hosts(&i).await?,
            name: i.name,
            kind: i.kind,
            format: i.format,
            size_bytes: i.size_bytes,
            sha256: i.sha256,
            created_at: i.created_at.to_string(),
        })
    }

    /// Starts an image build or import as a task; the task's id comes back at once.
    async fn image_task(self: &Arc<Self>, ctx: &Ctx, name: String, job: ImageJob) -> Res<Task> {
        let kind = match &job {
            ImageJob::Build(_) => "image-build",
            ImageJob::Import(_) => "image-import",
        };
        validate_name("name", &name)?;
        if self.store.image_by_name(&name).await?.is_some() {
            return Err(Error::conflict_field(
                "name",
                format!("an image named {name:?} exists already: choose another name or delete it"),
            ));
        }
        let (host, agent) = self
            .agents()
            .into_iter()
            .next()
            .ok_or_else(|| Error::unavailable("no host is connected"))?;
        let task = TaskRecord {
            id: new_id("task"),
            kind: kind.to_string(),
            target: name.clone(),
            state: TaskState::Running,
            progress: 0.0,
            message: "queued".into(),
            error: None,
            created_at: now(),
            updated_at: now(),
            created_by: ctx.caller().ok().map(|c| c.user_id.clone()),
            owner: Some(self.id.clone()),
        };
        self.store.insert_task(&task).await?;
        let me = self.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut outcome: Result<wire::ImageFiles, String> =
                Err("the host's agent ended the build without a result".into());
            let lines = match job {
                ImageJob::Build(req) => agent.build_image(req).await,
                ImageJob::Import(req) => agent.import_image(req).await,
            };
            match lines {
                Ok(mut lines) => {
                    while let Some(line) = lines.next().await {
                        match line {
                            Ok(wire::ImageLine::Progress { progress, message }) => {
                                let _ = me
                                    .store
                                    .update_task(&id, TaskState::Running, progress, &message, None)
                                    .await;
                            }
                            Ok(wire::ImageLine::Done { done }) => outcome = Ok(done),
                            Ok(wire::ImageLine::Error { error }) => outcome = Err(error),
                            Err(e) => {
                                outcome = Err(format!("{e:#}"));
                                break;
                            }
                        }
                    }
                }
                Err(e) => outcome = Err(format!("{e:#}")),
            }
            let result = match outcome {
                Ok(files) => {
                    let rec = ImageRecord {
                        id: new_id("img"),
                        name: files.name.clone(),
                        kind: files.kind,
                        format: files.format.clone(),
                        path: files.path.clone(),
                        initrd: files.initrd.clone(),
                        cmdline: files.cmdline.clone(),
                        size_bytes: files.size_bytes,
                        virtual_size_mib: files.virtual_size_mib,
                        sha256: files.sha256.clone(),
                        host_id: host.clone(),
                        created_at: now(),
                    };
                    hostel_faults::point("controller.image.file-made").await;
                    match me.store.insert_image(&rec).await {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            // Never leave files no row knows of.
                            let _ = agent
                                .delete_image(wire::DeleteImageRequest {
                                    path: files.path.clone(),
                                })
                                .await;
                            Err(format!("recording the image failed: {e:#}"))
                        }
                    }
                }
                Err(e) => Err(e),
            };
            let _ = match result {
                Ok(()) => {
                    me.store
                        .update_task(&id, TaskState::Succeeded, 1.0, "done", None)
                        .await
                }
                Err(e) => {
                    me.store
                        .update_task(&id, TaskState::Failed, 1.0, "failed", Some(&e))
                        .await
                }
            };
        });
        self.task(ctx, &task.id).await
    }

    pub async fn delete_image(&self, ctx: &Ctx, name: &str) -> Res<()> {
        ctx.require_admin()?;
        let img = self.store.image_by_name(name).await?.ok_or_else(|| {
            Error::not_found("image", name, format!("there is no image named {name:?}"))
        })?;
        let copies = self.store.image_copies(&img.id).await?;
        let users = self.store.delete_image_if_unused(&img.id).await?;
        if !users.is_empty() {
            return Err(Error::conflict(format!(
                "image {name:?} is in use by {}: delete those VMs first",
                users.join(", ")
            )));
        }
        // The rows are gone first: no VM can be placed on a copy being removed.
        self.delete_image_copies(&img, &copies).await;
        Ok(())
    }

    /// Starts building an image from a recipe (admins): a task, whose id comes back.
    pub async fn build_image(self: &Arc<Self>, ctx: &Ctx, req: BuildImageRequest) -> Res<Task> {
        ctx.require_admin_or(crate::context::Right::BuildImages)?;
        self.require_free_space()?;
        let name = match req.recipe.as_str() {
            "tiny" => req.name.clone().unwrap_or_else(|| "tiny".into()),
            "debian" => {
                let suite = req.suite.clone().unwrap_or_else(|| "bookworm".into());
                if !DEBIAN_SUITES.contains(&suite.as_str()) {
                    return Err(Invalid::new(
                        "suite",
                        format!(
                            "{suite:?} is not a Debian suite Hostel builds: use one of {}",
                            DEBIAN_SUITES.join(", ")
                        ),
                    )
                    .into());
                }
                for p in &req.packages {
                    let ok = !p.is_empty()
                        && p.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b)
                        });
                    if !ok {
                        return Err(Invalid::new(
                            "packages",
                            format!("{p:?} is not a Debian package name"),
                        )
                        .into());
                    }
                }
                if let Some(size) = req.size_mib {
                    if !(1024..=hostel_model::MAX_DISK_MIB).contains(&size) {
                        return Err(Invalid::new(
                            "size",
                            format!(
                                "{} is too small or too large: a Debian image needs at least 1G",
                                hostel_model::format_mib(size)
                            ),
                        )
                        .into());
                    }
                }
                if let Some(m) = &req.mirror {
                    if !(m.starts_with("http://") || m.starts_with("https://")) || m.contains(' ') {
                        return Err(Invalid::new(
                            "mirror",
                            format!("{m:?} is not an http(s) URL of a Debian mirror"),
                        )
                        .into());
                    }
                }
                req.name
                    .clone()
                    .unwrap_or_else(|| format!("debian-{suite}"))
            }
            other => {
                return Err(Invalid::new(
                    "recipe",
                    format!(
                        "{other:?} is not a recipe Hostel can build: use \"tiny\" or \"debian\""
                    ),
                )
                .into())
            }
        };
        ctx.target(&name, None);
        ctx.params(serde_json::json!({"recipe": req.recipe, "suite": req.suite}));
        let body = wire::BuildImageRequest {
            recipe: req.recipe.clone(),
            name: name.clone(),
            suite: req.suite.clone(),
            packages: req.packages.clone(),
            size_mib: req.size_mib,
            mirror: req.mirror.clone(),
        };
        self.image_task(ctx, name, ImageJob::Build(body)).await
    }

    /// Starts importing an image from a file on the host or a URL (admins).
    pub async fn import_image(self: &Arc<Self>, ctx: &Ctx, req: ImportImageRequest) -> Res<Task> {
        ctx.require_admin()?;
        self.require_free_space()?;
        let url = req.path.starts_with("http://") || req.path.starts_with("https://");
        if !url && !std::path::Path::new(&req.path).is_absolute() {
            return Err(Invalid::new(
                "path",
                format!(
                    "{:?} is neither an absolute path nor an http(s) URL: give the image file's \
                     full path on the host, or its URL",
                    req.path
                ),
            )
            .into());
        }
        ctx.target(&req.name, None);
        ctx.params(serde_json::json!({"source": req.path}));
        let body = wire::ImportImageRequest {
            name: req.name.clone(),
            source: req.path.clone(),
        };
        self.image_task(ctx, req.name, ImageJob::Import(body)).await
    }

    /// Every image, with the VMs (of the caller's) that use it.
    pub async fn images(&self, ctx: &Ctx) -> Res<Vec<Image>> {
        let mut out = Vec::new();
        for i in self.store.images().await? {
            out.push(self.image_view(ctx, i).await?);
        }
        Ok(out)
    }
}
