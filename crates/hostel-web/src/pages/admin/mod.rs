//! The admins' pages: hosts, users with their groups and quotas, images with their
//! build and import tasks, networks and pools, the audit trail. Each reads and acts
//! through the API like every page: what a non-admin may not see, the API refuses, and
//! the page shows that refusal; forms a non-admin could only have refused are not shown
//! to them (the API refuses them all the same).

pub mod audit;
pub mod hosts;
pub mod images;
pub mod networks;
pub mod users;

use crate::Web;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/admin/hosts", get(hosts::show))
        .route("/admin/hosts/do/{action}", post(hosts::act))
        .route("/admin/users", get(users::users))
        .route("/admin/groups", get(users::groups))
        .route("/admin/quotas", get(users::quotas))
        .route("/admin/accounts/do/{action}", post(users::act))
        .route("/admin/images", get(images::show))
        .route("/admin/images/do/{action}", post(images::act))
        .route("/admin/tasks/{id}", get(images::task))
        .route("/admin/tasks/{id}/cancel", post(images::cancel))
        .route("/admin/networks", get(networks::networks))
        .route("/admin/pools", get(networks::pools))
        .route("/admin/networks/do/{action}", post(networks::act))
        .route("/admin/audit", get(audit::show))
}

/// How long ago, from a number of seconds: `3 min 20 s`.
pub fn ago(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// Bytes as people read them.
pub fn bytes(b: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if b >= 1 << 40 {
        format!("{:.1} TiB", b as f64 / GIB / 1024.0)
    } else if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / GIB)
    } else {
        super::mib(&b.div_ceil(1 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes_read_as_people_say_them() {
        assert_eq!(ago(5), "5 s");
        assert_eq!(ago(200), "3 min 20 s");
        assert_eq!(ago(7320), "2 h 2 min");
        assert_eq!(ago(90000), "1 d 1 h");
        assert_eq!(bytes(3 << 20), "3 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
