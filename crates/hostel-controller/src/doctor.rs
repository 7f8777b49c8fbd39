//! An admin's diagnostics: `hostel doctor` (what the database says, compared with what
//! the hosts hold) and `hostel dmesg` (the daemon's log).

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::agent::{self as wire};
use hostel_api::public::*;

type Res<T> = crate::error::Result<T>;

impl Controller {
    /// Compares what the database says with what the hosts hold: files no row points to,
    /// rows whose file is gone, runtime state of VMs that do not exist.
    pub async fn doctor(&self, ctx: &Ctx) -> Res<DoctorReport> {
        ctx.require_admin()?;
        let mut problems = Vec::new();
        let mut checked = Vec::new();
        let disks = self.store.all_disks().await?;
        let images = self.store.images().await?;
        let mut copies = Vec::new();
        for i in &images {
            for c in self.store.image_copies(&i.id).await? {
                copies.push((i.name.clone(), c));
            }
        }
        let vms = self.store.vms().await?;
        for (host, agent) in self.agents() {
            let pools: Vec<wire::PoolSpec> = self
                .store
                .pools()
                .await?
                .into_iter()
                .filter(|p| p.host_id == host)
                .map(|p| wire::PoolSpec {
                    name: p.name,
                    driver: p.driver.as_str().into(),
                    path: p.path,
                })
                .collect();
            let files = agent.list_files_in_pools(pools).await?;
            checked.push(format!(
                "host {host}: {} disk files, {} image entries, {} runtime dirs",
                files.disks.len(),
                files.images.len(),
                files.runtime.len()
            ));
            for f in &files.disks {
                if !disks.iter().any(|d| &d.path == f) {
                    problems.push(format!(
                        "host {host}: disk file {f} belongs to no VM (left by an interrupted \
                         operation or `delete --keep-disks`): remove it if it holds nothing you need"
                    ));
                }
            }
            for d in disks.iter().filter(|d| {
                vms.iter()
                    .any(|v| v.id == d.vm_id && v.host_id.as_deref() == Some(host.as_str()))
            }) {
                if !files.disks.contains(&d.path) {
                    let vm = vms
                        .iter()
                        .find(|v| v.id == d.vm_id)
                        .map(|v| v.name.clone())
                        .unwrap_or_default();
                    problems.push(format!(
                        "VM {vm}: its disk {} is missing on host {host}: restore the file, or \
                         `hostel disk remove {vm} {}`",
                        d.path, d.idx
                    ));
                }
            }
            let here: Vec<(&str, &hostel_store::ImageCopyRecord)> = copies
                .iter()
                .filter(|(_, c)| c.host_id == *host)
                .map(|(n, c)| (n.as_str(), c))
                .collect();
            for f in &files.images {
                let known = here
                    .iter()
                    .any(|(_, c)| c.path.as_deref().is_some_and(|p| is_entry_of(p, f)));
                if !known && !f.contains(".tiny-build-") && !f.contains(".incoming") {
                    problems.push(format!(
                        "host {host}: image file {f} belongs to no image: remove it"
                    ));
                }
            }
            for (name, c) in here.iter().filter(|(_, c)| c.is_ready()) {
                let p = c.path.as_deref().unwrap_or_default();
                if !files.images.iter().any(|f| is_entry_of(p, f)) {
                    problems.push(format!(
                        "image {name}: its copy {p} on host {host} is missing: restore the file, \
                         or delete the image"
                    ));
                }
            }
            for id in &files.runtime {
                if !vms.iter().any(|v| &v.id == id) {
                    problems.push(format!("host {host}: runtime state of an unknown VM {id}"));
                }
            }
        }
        checked.push(format!(
            "{} VMs, {} disks, {} images in the database",
            vms.len(),
            disks.len(),
            images.len()
        ));
        Ok(DoctorReport { problems, checked })
    }

    /// The last `lines` lines of the daemon's log (admins).
    pub fn dmesg(&self, ctx: &Ctx, lines: usize) -> Res<Vec<String>> {
        ctx.require_admin()?;
        if lines > 100_000 {
            return Err(Error::invalid("lines", "--lines is at most 100000"));
        }
        let text = std::fs::read_to_string(&self.cfg.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let n = lines.min(all.len());
        Ok(all[all.len() - n..].iter().map(|s| s.to_string()).collect())
    }
}

/// Whether `entry` of an image store listing is the image file at `path`, or the
/// directory holding it (a kernel image's).
fn is_entry_of(path: &str, entry: &str) -> bool {
    path == entry
        || std::path::Path::new(path)
            .parent()
            .is_some_and(|d| d.display().to_string() == entry)
}
