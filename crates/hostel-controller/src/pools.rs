//! Storage pools: `hostel pool create|list|describe|delete`.
//!
//! Every host has a `default` pool (a `dir` pool in its data directory) that needs no
//! record: disks without a pool are in it. Other pools are recorded, each on one host.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent as wire;
use hostel_api::agent::AgentApi;
use hostel_api::public::{CreatePoolRequest, Pool};
use hostel_model::{validate_name, Invalid, PoolDriver};
use hostel_store::{new_id, now, PoolRecord};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

pub const DEFAULT_POOL: &str = "default";

impl Controller {
    /// A recorded pool's view.
    async fn record_view(&self, p: PoolRecord) -> Res<Pool> {
        let mut v = self
            .pool_view(
                p.name,
                p.driver.as_str().into(),
                p.path,
                p.host_id,
                Some(&p.id),
                p.created_at.to_string(),
            )
            .await?;
        v.shared = p.shared;
        Ok(v)
    }

    async fn pool_view(
        &self,
        name: String,
        driver: String,
        path: String,
        host: String,
        pool_id: Option<&str>,
        created_at: String,
    ) -> Res<Pool> {
        let vms = self.store.vms().await?;
        let disks: Vec<_> = self
            .store
            .all_disks()
            .await?
            .into_iter()
            .filter(|d| match pool_id {
                Some(id) => d.pool_id.as_deref() == Some(id),
                None => {
                    d.pool_id.is_none()
                        && vms
                            .iter()
                            .any(|v| v.id == d.vm_id && v.host_id.as_deref() == Some(&host))
                }
            })
            .collect();
        let usage = match self.agent(&host) {
            Some(agent) => agent
                .check_pool(wire::PoolSpec {
                    name: name.clone(),
                    driver: driver.clone(),
                    path: path.clone(),
                })
                .await
                .ok(),
            None => None,
        };
        Ok(Pool {
            name,
            driver,
            path,
            host,
            total_bytes: usage.as_ref().map(|u| u.total_bytes),
            free_bytes: usage.as_ref().map(|u| u.free_bytes),
            used_bytes: usage.as_ref().map(|u| u.used_bytes),
            disks: disks.len() as u32,
            provisioned_mib: disks.iter().map(|d| d.size_mib).sum(),
            created_at,
            shared: false,
        })
    }

    pub async fn pools(&self, _ctx: &Ctx) -> Res<Vec<Pool>> {
        let mut out = Vec::new();
        for h in self.store.hosts().await? {
            let dir = match self.agent(&h.id) {
                Some(a) => a.host().await.map(|f| f.disks_dir).unwrap_or_default(),
                None => String::new(),
            };
            out.push(
                self.pool_view(
                    DEFAULT_POOL.into(),
                    "dir".into(),
                    dir,
                    h.id.clone(),
                    None,
                    String::new(),
                )
                .await?,
            );
        }
        for p in self.store.pools().await? {
            out.push(self.record_view(p).await?);
        }
        Ok(out)
    }

    pub async fn pool(&self, ctx: &Ctx, name: &str) -> Res<Pool> {
        if name == DEFAULT_POOL {
            return self
                .pools(ctx)
                .await?
                .into_iter()
                .find(|p| p.name == DEFAULT_POOL)
                .ok_or_else(|| Error::unavailable("no host is known yet"));
        }
        let p = self.store.pool_by_name(name).await?.ok_or_else(|| {
            Error::not_found("pool", name, format!("there is no pool named {name:?}"))
        })?;
        self.record_view(p).await
    }

    pub async fn create_pool(self: &Arc<Self>, ctx: &Ctx, req: CreatePoolRequest) -> Res<Pool> {
        ctx.target(&req.name, None);
        ctx.params(
            serde_json::json!({"driver": req.driver, "path": req.path, "shared": req.shared}),
        );
        ctx.require_admin()?;
        validate_name("name", &req.name)?;
        if req.name == DEFAULT_POOL {
            return Err(Error::conflict_field(
                "name",
                "every host has a pool named \"default\" already: choose another name",
            ));
        }
        let Some(driver) = PoolDriver::parse(&req.driver) else {
            return Err(Invalid::new(
                "driver",
                format!(
                    "{:?} is not a pool driver: use dir (qcow2 files) or btrfs (on a btrfs \
                     filesystem). LVM needs device-mapper, which this release does not drive",
                    req.driver
                ),
            )
            .into());
        };
        if !req.path.starts_with('/') || req.path.split('/').any(|c| c == "..") {
            return Err(Invalid::new(
                "path",
                format!(
                    "{:?} is not an absolute path: give the pool directory's full path",
                    req.path
                ),
            )
            .into());
        }
        let path = req.path.trim_end_matches('/').to_string();
        if self.store.pool_by_name(&req.name).await?.is_some() {
            return Err(Error::conflict_field(
                "name",
                format!("a pool named {:?} exists already", req.name),
            ));
        }
        let (host, agent) = match &req.host {
            Some(h) => (
                h.clone(),
                self.agent(h).ok_or_else(|| {
                    Error::not_found("host", h, format!("there is no connected host named {h:?}"))
                })?,
            ),
            None => self
                .agents()
                .into_iter()
                .min_by(|a, b| a.0.cmp(&b.0))
                .ok_or_else(|| Error::unavailable("no host is connected"))?,
        };
        if let Ok(f) = agent.host().await {
            let d = std::path::Path::new(&f.disks_dir);
            let p = std::path::Path::new(&path);
            if p.starts_with(d) || d.starts_with(p) {
                return Err(Invalid::new(
                    "path",
                    format!(
                        "{path} overlaps the host's default pool ({}): give a directory of its own",
                        f.disks_dir
                    ),
                )
                .into());
            }
        }
        // The host checks the directory (and, for btrfs, the filesystem) before any record.
        let spec = wire::PoolSpec {
            name: req.name.clone(),
            driver: req.driver.clone(),
            path: path.clone(),
        };
        agent.check_pool(spec.clone()).await?;
        if req.shared {
            // Every connected host must reach it, or a VM placed there could not start.
            for (h, a) in self.agents() {
                if h == host || !self.is_online(&h) {
                    continue;
                }
                if let Err(e) = a.check_pool(spec.clone()).await {
                    return Err(Invalid::new(
                        "path",
                        format!(
                            "host {h} does not reach {path} as a pool ({e}): mount the shared \
                             storage at the same path on every host first"
                        ),
                    )
                    .into());
                }
            }
        }
        let rec = PoolRecord {
            id: new_id("pool"),
            name: req.name.clone(),
            driver,
            path,
            host_id: host,
            created_at: now(),
            shared: req.shared,
        };
        if let Err(e) = self.store.insert_pool(&rec).await {
            if hostel_store::is_unique_violation(&e) {
                return Err(Error::conflict(format!(
                    "a pool named {:?} or a pool in {} exists already",
                    rec.name, rec.path
                )));
            }
            return Err(e.into());
        }
        self.pool(ctx, &rec.name).await
    }

    pub async fn delete_pool(&self, ctx: &Ctx, name: &str) -> Res<()> {
        ctx.require_admin()?;
        if name == DEFAULT_POOL {
            return Err(Error::conflict(
                "the default pool belongs to its host and cannot be deleted",
            ));
        }
        let p = self.store.pool_by_name(name).await?.ok_or_else(|| {
            Error::not_found("pool", name, format!("there is no pool named {name:?}"))
        })?;
        let users = self.store.delete_pool_if_unused(&p.id).await?;
        if !users.is_empty() {
            return Err(Error::conflict(format!(
                "pool {name:?} holds disks of {}: delete those VMs or their disks first",
                users.join(", ")
            )));
        }
        // The images' copies the pool kept for cloning go; the directory itself stays.
        if let Some(agent) = self.agent(&p.host_id) {
            for img in self.store.images().await? {
                let _ = agent
                    .pool_forget_image(wire::ForgetImageRequest {
                        pool: wire::PoolSpec {
                            name: p.name.clone(),
                            driver: p.driver.as_str().into(),
                            path: p.path.clone(),
                        },
                        image_id: img.id,
                    })
                    .await;
            }
        }
        Ok(())
    }
}
