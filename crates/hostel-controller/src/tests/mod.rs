//! The controller's own tests, without QEMU: a real store (SQLite in a temporary
//! directory) and the operations called as the REST layer, the SSH gateway or a system
//! actor would call them, each with its context.

mod actors;

use crate::context::Ctx;
use crate::{Controller, ControllerConfig};
use std::sync::Arc;

/// A controller over a fresh SQLite database, and the admin's context.
pub(crate) struct Harness {
    pub c: Arc<Controller>,
    pub admin: Ctx,
    _dir: tempfile::TempDir,
}

pub(crate) const ADMIN_TOKEN: &str =
    "hostel-tok-admin.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

impl Harness {
    pub async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store =
            hostel_store::Store::open(&format!("sqlite://{}/hostel.db", dir.path().display()))
                .await
                .unwrap();
        let c = Controller::new(
            store,
            ControllerConfig {
                data_dir: dir.path().to_path_buf(),
                admin_token: ADMIN_TOKEN.into(),
                log_file: dir.path().join("hostel.log"),
                default_lease_days: None,
                web_dir: None,
            },
        );
        c.bootstrap_admin(ADMIN_TOKEN).await.unwrap();
        let admin = Ctx::user(c.caller_for(ADMIN_TOKEN).await.unwrap(), "test");
        Harness {
            c,
            admin,
            _dir: dir,
        }
    }

    /// A new non-admin user and their context (through a token, as a request would).
    pub async fn user(&self, name: &str) -> Ctx {
        use hostel_api::public::{CreateTokenRequest, CreateUserRequest};
        self.c
            .create_user(
                &self.admin,
                CreateUserRequest {
                    name: name.into(),
                    password: None,
                    admin: false,
                },
            )
            .await
            .unwrap();
        let t = self
            .c
            .create_token(
                &self.admin,
                Some(name),
                CreateTokenRequest {
                    name: "t".into(),
                    read_only: false,
                    expires_in_days: Some(1),
                    expires_at: None,
                },
            )
            .await
            .unwrap();
        Ctx::user(self.c.caller_for(&t.token).await.unwrap(), "test")
    }
}
