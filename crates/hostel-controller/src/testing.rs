//! For tests only (the `testing` feature, and this crate's own tests): a controller over
//! a fresh SQLite database in a temporary directory, its admin's context, and users made
//! as a request would make them. Never part of the product.

use crate::context::Ctx;
use crate::{Controller, ControllerConfig};
use hostel_api::public::{CreateTokenRequest, CreateUserRequest};
use std::sync::Arc;

/// `hostel up`'s admin token in the tests' controllers.
pub const ADMIN_TOKEN: &str =
    "hostel-tok-admin.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub struct TestController {
    pub c: Arc<Controller>,
    pub admin: Ctx,
    pub dir: tempfile::TempDir,
}

impl TestController {
    pub async fn new() -> TestController {
        Self::with_config(|_| {}).await
    }

    /// The same, with the controller's configuration changed by `change` first.
    pub async fn with_config(change: impl FnOnce(&mut ControllerConfig)) -> TestController {
        let dir = tempfile::tempdir().unwrap();
        let store =
            hostel_store::Store::open(&format!("sqlite://{}/hostel.db", dir.path().display()))
                .await
                .unwrap();
        let mut cfg = ControllerConfig {
            data_dir: dir.path().to_path_buf(),
            admin_token: ADMIN_TOKEN.into(),
            log_file: dir.path().join("hostel.log"),
            default_lease_days: None,
            web_dir: None,
            min_free_space: Default::default(),
            refusal_budgets: Default::default(),
            stale_after: crate::DEFAULT_STALE_AFTER,
        };
        change(&mut cfg);
        let c = Controller::new(store, cfg);
        c.set_pki(crate::pki::Pki::open(&dir.path().join("pki")).unwrap());
        c.bootstrap_admin(ADMIN_TOKEN).await.unwrap();
        let admin = Ctx::user(c.caller_for(ADMIN_TOKEN).await.unwrap(), "test");
        TestController { c, admin, dir }
    }

    /// A new non-admin user and their context, through a token as a request would.
    pub async fn user(&self, name: &str) -> Ctx {
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
        self.context_of(name).await
    }

    /// A user's context made again from a new token (their groups are read then).
    pub async fn context_of(&self, name: &str) -> Ctx {
        let t = self
            .c
            .create_token(
                &self.admin,
                Some(name),
                CreateTokenRequest {
                    name: hostel_store::new_id("t"),
                    read_only: false,
                    expires_in_days: Some(1),
                    expires_at: None,
                    password: None,
                },
            )
            .await
            .unwrap();
        Ctx::user(self.c.caller_for(&t.token).await.unwrap(), "test")
    }
}
