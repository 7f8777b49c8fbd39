//! Hostel's web UI, served by the controller at `/`: server-rendered pages (askama) made
//! live by htmx and one server-sent-event stream, with small scripts only for the
//! consoles and graphs. Every page reads and acts through the REST API, in-process
//! (`api.rs`), as the logged-in user: the same operations, checks and audit trail as the
//! CLI. Nothing is built at run time; the templates are compiled in, the scripts and
//! the stylesheet are embedded, and the npm packages (htmx, xterm.js, noVNC) are served
//! from the web directory like the console pages' (`/web/...`).

pub mod api;
mod assets;
mod pages;
pub mod session;

use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// The largest form read (the create form with a few SSH keys is a few kilobytes).
pub const FORM_LIMIT: usize = 256 * 1024;

/// What every page handler has: the API's router, called in-process.
pub struct Web {
    pub api: Router,
}

/// The web UI's routes, to merge with the API's (`api` is that router, which the pages
/// call in-process).
pub fn router(api: Router) -> Router {
    let web = Arc::new(Web { api });
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login::form).post(pages::login::submit))
        .route("/logout", post(pages::login::logout))
        .route("/vms", get(pages::vms::list))
        .route("/vms/bulk", post(pages::vms::bulk))
        .route("/vms/import", post(pages::archive::import))
        .route("/vms/{name}/export", get(pages::archive::export))
        .route(
            "/vms/new",
            get(pages::create::form).post(pages::create::submit),
        )
        .route("/vms/new/preview", post(pages::create::preview))
        .route("/vms/{name}", get(pages::vm::show))
        .route("/vms/{name}/do/{action}", post(pages::vm::act))
        .route("/vms/{name}/console/{kind}", get(pages::vm::console))
        .route(
            "/vms/{name}/console/{kind}/ticket",
            post(pages::vm::console_ticket),
        )
        .route("/vms/{name}/graphs", get(pages::graphs::fragment))
        .route("/usage", get(pages::usage::show))
        .route("/usage/table", get(pages::usage::table))
        .merge(pages::account::routes())
        .merge(pages::admin::routes())
        .route("/ui/events", get(pages::events))
        .route("/ui/{file}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
        .fallback(pages::not_found)
        // A form's action is done whole even if the browser leaves the page meanwhile.
        .layer(axum::middleware::from_fn(hostel_controller::to_the_end))
        .with_state(web)
}
