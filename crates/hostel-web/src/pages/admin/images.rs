//! Images: the list (kind, size, checksum, the VMs based on each), delete, and the two
//! ways to make one, build and import, each a task whose page follows it: it re-reads
//! the task every second (htmx) while it runs, with a progress bar.

use super::super::fields::{done, refused, Fields};
use super::super::{error_page, page, when, Layout};
use super::bytes;
use crate::api::seg;
use crate::session::{back, back_err, Flash, Form, Session};
use askama::Template;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;
use hostel_api::public::{
    BuildImageRequest, Image, ImportImageRequest, ImportXenRequest, PushImageRequest, Task,
    TaskState, XenImport,
};

#[derive(Template)]
#[template(path = "admin_images.html")]
struct ImagesPage {
    layout: Layout,
    images: Vec<Image>,
}

impl ImagesPage {
    pub fn size(&self, i: &Image) -> String {
        bytes(i.size_bytes)
    }
    pub fn at(&self, t: &str) -> String {
        when(t)
    }
}

/// Cancels a migration from its task's page, and shows the page again.
pub async fn cancel(Path(id): Path<String>, f: Form<Fields>) -> Response {
    let here = format!("/admin/tasks/{}", seg(&id));
    let r = f
        .session
        .api
        .post::<_, Task>(
            &format!("/api/v1/tasks/{}/cancel", seg(&id)),
            &serde_json::json!({}),
        )
        .await;
    done(&here, r, |t| {
        format!("Cancelling the migration of {}.", t.target)
    })
}

pub async fn show(s: Session, headers: HeaderMap) -> Response {
    let images = match s.api.get::<Vec<Image>>("/api/v1/images").await {
        Ok(i) => i,
        Err(e) => return error_page(&e),
    };
    let layout = Layout::new(&s, &headers, "Images", "images");
    let p = ImagesPage { images, layout };
    page(&p.layout, &p)
}

#[derive(Template)]
#[template(path = "admin_task.html")]
struct TaskPage {
    layout: Layout,
    t: Task,
}

impl TaskPage {
    pub fn running(&self) -> bool {
        self.t.state == TaskState::Running
    }
    pub fn state(&self) -> &'static str {
        self.t.state.as_str()
    }
    /// A bar with a value once the task reports any progress (or is over); before
    /// that, an indeterminate one.
    pub fn measured(&self) -> bool {
        self.t.progress > 0.0 || !self.running()
    }
    pub fn percent(&self) -> u32 {
        (self.t.progress.clamp(0.0, 1.0) * 100.0).round() as u32
    }
    /// Where the page's way back leads: the images, or the hosts for a move.
    pub fn back_to(&self) -> &'static str {
        if self.t.kind.starts_with("image") || self.t.kind == "xen-import" {
            "/admin/images"
        } else {
            "/admin/hosts"
        }
    }
    pub fn back_what(&self) -> &'static str {
        if self.t.kind.starts_with("image") || self.t.kind == "xen-import" {
            "images"
        } else {
            "hosts"
        }
    }
    pub fn at(&self, t: &str) -> String {
        when(t)
    }
}

pub async fn task(s: Session, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let t: Task = match s.api.get(&format!("/api/v1/tasks/{}", seg(&id))).await {
        Ok(t) => t,
        Err(e) => return error_page(&e),
    };
    let title = match t.kind.as_str() {
        "image-build" => format!("Building image {}", t.target),
        "image-import" => format!("Importing image {}", t.target),
        "xen-import" => format!("Importing Xen guest {}", t.target),
        "image-copy" => format!("Copying image {}", t.target),
        "vm-migrate" => format!("Migrating {}", t.target),
        "host-drain" => format!("Draining host {}", t.target),
        "host-undrain" => format!("Undraining host {}", t.target),
        "rebalance" => format!("Rebalancing {}", t.target),
        kind => format!("{kind} of {}", t.target),
    };
    let layout = Layout::new(&s, &headers, title, "images");
    let p = TaskPage { t, layout };
    page(&p.layout, &p)
}

/// A task's page, after the form that started it.
pub(super) fn follow(t: Task, what: &str) -> Response {
    back(
        &format!("/admin/tasks/{}", seg(&t.id)),
        Flash::ok(format!("{what} {} has started.", t.target)),
    )
}

pub async fn act(Path(action): Path<String>, f: Form<Fields>) -> Response {
    let Form {
        session: s,
        data: f,
    } = f;
    const HERE: &str = "/admin/images";
    let api = &s.api;
    match action.as_str() {
        "build" => {
            let size = match f.num::<u64>("size_mib", "Disk size") {
                Ok(v) => v,
                Err(why) => return refused(HERE, why),
            };
            let req = BuildImageRequest {
                recipe: f.get("recipe").into(),
                name: f.opt("name"),
                suite: f.opt("suite"),
                packages: f.list("packages"),
                size_mib: size,
                mirror: f.opt("mirror"),
            };
            match api.post::<_, Task>("/api/v1/images/build", &req).await {
                Ok(t) => follow(t, "The build of"),
                Err(e) => back_err(HERE, &e),
            }
        }
        "import" => {
            let req = ImportImageRequest {
                name: f.get("name").into(),
                path: f.get("path").into(),
            };
            match api.post::<_, Task>("/api/v1/images/import", &req).await {
                Ok(t) => follow(t, "The import of"),
                Err(e) => back_err(HERE, &e),
            }
        }
        "import-xen" => {
            let req = ImportXenRequest {
                config: f.get("config").into(),
                disk_dir: f.opt("disk_dir"),
                network: f.opt("network"),
                name: f.opt("name"),
                pool: None,
                start: true,
                dry_run: f.get("dry_run") == "on",
            };
            match api.post::<_, XenImport>("/api/v1/import/xen", &req).await {
                Ok(x) => {
                    let mut said = format!("VM {}: {}.", x.vm, x.plan.join("; "));
                    if !x.not_carried.is_empty() {
                        said.push_str(&format!(" Not carried over: {}.", x.not_carried.join("; ")));
                    }
                    match x.task {
                        Some(t) => back(
                            &format!("/admin/tasks/{}", seg(&t.id)),
                            Flash::ok(format!("Importing: {said}")),
                        ),
                        None => back(HERE, Flash::ok(format!("It would make {said}"))),
                    }
                }
                Err(e) => back_err(HERE, &e),
            }
        }
        "push" => {
            let name = f.get("name");
            let req = PushImageRequest { host: None };
            let path = format!("/api/v1/images/{}/push", seg(name));
            match api.post::<_, Vec<Task>>(&path, &req).await {
                Ok(tasks) if tasks.len() == 1 => {
                    follow(tasks.into_iter().next().expect("one"), "The copy of")
                }
                Ok(tasks) if tasks.is_empty() => back(
                    HERE,
                    Flash::ok(format!("Every connected host has image {name} already.")),
                ),
                Ok(tasks) => back(
                    HERE,
                    Flash::ok(format!(
                        "Copying image {name}: {}.",
                        tasks
                            .iter()
                            .map(|t| t.target.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                ),
                Err(e) => back_err(HERE, &e),
            }
        }
        "delete" => {
            let name = f.get("name");
            let r = api
                .delete::<serde_json::Value>(&format!("/api/v1/images/{}", seg(name)))
                .await;
            done(HERE, r, |_| format!("Image {name} is deleted."))
        }
        other => refused(HERE, format!("{other:?} is not something this page does")),
    }
}
