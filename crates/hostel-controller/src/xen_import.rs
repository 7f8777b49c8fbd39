//! `hostel import-xen`: a Xen guest's `xm`/`xl` config becomes a VM with the same name,
//! memory, vCPUs, on_* policies, MACs and IPs. Its disks are copied from the host into a
//! pool by a task with progress; a PV guest's `kernel`/`ramdisk` boot directly, a
//! pygrub or HVM guest boots its first disk with SeaBIOS. Whatever the config says that
//! Hostel does not carry over is reported line by line. A failed import removes the VM
//! it made (its disks with it).

use crate::context::Ctx;
use crate::error::Error;
use crate::journal::OpLog;
use crate::Controller;
use hostel_api::agent::{self as wire};
use hostel_api::public::*;
use hostel_model::xen::{self, XenValue};
use hostel_model::{validate_name, Invalid, Policy};
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// What a config makes: the VM, then its disks in order.
#[derive(Debug)]
pub(crate) struct XenPlan {
    pub create: CreateVmRequest,
    /// (path on this host, format) of each disk.
    pub disks: Vec<(String, String)>,
    pub plan: Vec<String>,
    pub not_carried: Vec<String>,
}

/// Settings the plan reads (the rest are reported as not carried over).
const READ: &[&str] = &[
    "name",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "vif",
    "disk",
    "kernel",
    "ramdisk",
    "extra",
    "root",
    "bootloader",
    "builder",
    "type",
];

/// Maps a config's settings onto a VM; refuses what cannot make one.
pub(crate) fn plan(req: &ImportXenRequest) -> Result<XenPlan, Invalid> {
    let cfg = xen::parse(&req.config);
    let mut plan = Vec::new();
    let mut not = Vec::new();
    for (line, text, why) in &cfg.unreadable {
        not.push(format!("line {line}: {text}: {why}"));
    }
    let line_of = |key: &str| {
        cfg.settings
            .iter()
            .rev()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, l)| *l)
            .unwrap_or(0)
    };
    for (key, value, line) in &cfg.settings {
        if !READ.contains(&key.as_str()) {
            not.push(format!(
                "line {line}: {key} = {}: Hostel has no such setting",
                shown(value)
            ));
        }
    }
    let text = |key: &str| cfg.get(key).and_then(XenValue::text);
    let name = match (&req.name, text("name")) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) => n,
        (None, None) => {
            return Err(Invalid::new(
                "config",
                "the config has no `name`: give the VM's name (--name)",
            ))
        }
    };
    validate_name("name", &name)
        .map_err(|e| Invalid::new("name", format!("{e}; give the VM another name with --name")))?;
    let int = |key: &str| -> Result<Option<u64>, Invalid> {
        match cfg.get(key) {
            None => Ok(None),
            Some(v) => v
                .int()
                .filter(|n| *n > 0)
                .map(|n| Some(n as u64))
                .ok_or_else(|| {
                    Invalid::new(
                        "config",
                        format!(
                            "line {}: {key} = {}: give a positive number",
                            line_of(key),
                            shown(v)
                        ),
                    )
                }),
        }
    };
    let memory = int("memory")?.unwrap_or(128);
    let max_memory = int("maxmem")?.filter(|m| *m > memory);
    let vcpus = int("vcpus")?.unwrap_or(1);
    let max_vcpus = int("maxvcpus")?.filter(|m| *m > vcpus);
    let small = |n: u64, key: &str| {
        u32::try_from(n).map_err(|_| Invalid::new("config", format!("{key} = {n}: too many")))
    };
    plan.push(format!(
        "memory {memory} MiB{}, {vcpus} vCPU{}{}",
        max_memory
            .map(|m| format!(" (up to {m} MiB)"))
            .unwrap_or_default(),
        if vcpus == 1 { "" } else { "s" },
        max_vcpus
            .map(|m| format!(" (up to {m})"))
            .unwrap_or_default(),
    ));
    let mut policy = |key: &str, default: Policy| -> Policy {
        let Some(v) = text(key) else {
            return default;
        };
        let line = line_of(key);
        let p = match v.as_str() {
            "destroy" => Policy::Destroy,
            "restart" => Policy::Restart,
            "coredump-restart" | "rename-restart" => {
                not.push(format!(
                    "line {line}: {key} = {v}: carried over as restart (no core dumps or renames)"
                ));
                Policy::Restart
            }
            other => {
                not.push(format!(
                    "line {line}: {key} = {other}: carried over as destroy (Hostel stops the VM)"
                ));
                Policy::Destroy
            }
        };
        plan.push(format!("{key}: {}", p.as_str()));
        p
    };
    let on_poweroff = policy("on_poweroff", Policy::Destroy);
    let on_reboot = policy("on_reboot", Policy::Restart);
    let on_crash = policy("on_crash", Policy::Destroy);

    // Files of the Xen host: where they are on this one.
    let here = |path: &str| -> String {
        match &req.disk_dir {
            Some(dir) => {
                let file = path.rsplit('/').next().unwrap_or(path);
                format!("{}/{file}", dir.trim_end_matches('/'))
            }
            None => path.to_string(),
        }
    };

    let network = req.network.clone().unwrap_or_else(|| "default".into());
    let mut nics = Vec::new();
    if let Some(v) = cfg.get("vif") {
        let line = line_of("vif");
        for entry in v.strings() {
            let vif = xen::vif(&entry);
            if let Some(b) = &vif.bridge {
                not.push(format!(
                    "line {line}: vif bridge={b}: the NIC joins network {network:?} instead"
                ));
            }
            for i in &vif.ignored {
                not.push(format!("line {line}: vif {i}: not carried over"));
            }
            plan.push(format!(
                "NIC on {network}: MAC {}, IP {}",
                vif.mac.as_deref().unwrap_or("new"),
                vif.ip.as_deref().unwrap_or("from DHCP")
            ));
            nics.push(NicRequest {
                network: network.clone(),
                ip: vif.ip,
                mac: vif.mac.map(|m| m.to_lowercase()),
            });
        }
    }

    let mut disks = Vec::new();
    if let Some(v) = cfg.get("disk") {
        let line = line_of("disk");
        for entry in v.strings() {
            let d = xen::disk(&entry)
                .map_err(|e| Invalid::new("config", format!("line {line}: disk {entry:?}: {e}")))?;
            if d.cdrom {
                not.push(format!(
                    "line {line}: disk {entry}: a CD-ROM, not carried over (attach an ISO with \
                     `hostel create --cdrom` or as an image)"
                ));
                continue;
            }
            if d.path.is_empty() {
                not.push(format!("line {line}: disk {entry}: no file, skipped"));
                continue;
            }
            let format = if d.format.is_empty() {
                "raw".to_string()
            } else {
                d.format.clone()
            };
            if !hostel_storage_formats().contains(&format.as_str()) {
                return Err(Invalid::new(
                    "config",
                    format!(
                        "line {line}: disk {entry}: a {format} disk cannot be imported; convert \
                         it to raw or qcow2 first (qemu-img convert -O qcow2)"
                    ),
                ));
            }
            if !d.writable {
                not.push(format!(
                    "line {line}: disk {}: read-only on Xen, writable here",
                    d.vdev
                ));
            }
            let path = here(&d.path);
            plan.push(format!(
                "disk {} ({}, {format}) from {path}",
                disks.len(),
                d.vdev
            ));
            disks.push((path, format));
        }
    }

    let mut create = CreateVmRequest {
        name: name.clone(),
        image: None,
        memory_mib: memory,
        max_memory_mib: max_memory,
        vcpus: small(vcpus, "vcpus")?,
        max_vcpus: max_vcpus.map(|m| small(m, "maxvcpus")).transpose()?,
        disk_mib: None,
        start: false,
        on_poweroff,
        on_reboot,
        on_crash,
        nics: Some(nics),
        firmware: Firmware::default(),
        cdrom: None,
        kernel: None,
        initrd: None,
        cmdline: None,
        ssh_keys: Vec::new(),
        password: None,
        seed: Some(false),
        pool: req.pool.clone(),
        lease_days: None,
        owner: None,
        host_tags: Vec::new(),
        anti_affinity: None,
        explain: false,
        cpu_model: None,
    };
    let bootloader = text("bootloader").filter(|b| !b.is_empty());
    match (text("kernel"), bootloader) {
        (Some(k), _) if !k.is_empty() => {
            let mut cmdline = Vec::new();
            if let Some(root) = text("root") {
                cmdline.push(format!("root={root}"));
            }
            if let Some(extra) = text("extra") {
                cmdline.push(extra);
            }
            let mut cmdline = cmdline.join(" ");
            // Xen's PV disks and console are virtio's and the serial port's here.
            let xen_names = cmdline.contains("/dev/xvd") || cmdline.contains("hvc0");
            cmdline = cmdline
                .replace("/dev/xvd", "/dev/vd")
                .replace("console=hvc0", "console=ttyS0");
            if xen_names {
                not.push(format!(
                    "line {}: the kernel command line names Xen's devices: /dev/xvdX became \
                     /dev/vdX and hvc0 ttyS0",
                    line_of("extra").max(line_of("root"))
                ));
            }
            create.kernel = Some(here(&k));
            create.initrd = text("ramdisk").filter(|r| !r.is_empty()).map(|r| here(&r));
            if !cmdline.is_empty() {
                create.cmdline = Some(cmdline);
            }
            plan.push(format!(
                "boots kernel {}{} directly{}",
                here(&k),
                create
                    .initrd
                    .as_ref()
                    .map(|i| format!(" with ramdisk {i}"))
                    .unwrap_or_default(),
                create
                    .cmdline
                    .as_ref()
                    .map(|c| format!(", command line {c:?}"))
                    .unwrap_or_default()
            ));
        }
        (_, Some(b)) => {
            not.push(format!(
                "line {}: bootloader = {b}: the VM boots its first disk with SeaBIOS instead, \
                 which needs a bootloader (GRUB) installed on that disk",
                line_of("bootloader")
            ));
            plan.push("boots its first disk (BIOS)".into());
        }
        _ => plan.push("boots its first disk (BIOS)".into()),
    }
    if create.kernel.is_none() && disks.is_empty() {
        return Err(Invalid::new(
            "config",
            "the config has neither a kernel nor a disk: nothing to boot",
        ));
    }
    Ok(XenPlan {
        create,
        disks,
        plan,
        not_carried: not,
    })
}

fn hostel_storage_formats() -> &'static [&'static str] {
    &["raw", "qcow2", "vmdk", "vdi", "vhdx"]
}

fn shown(v: &XenValue) -> String {
    match v {
        XenValue::Str(s) => format!("'{s}'"),
        XenValue::Int(n) => n.to_string(),
        XenValue::List(items) => format!(
            "[{}]",
            items.iter().map(shown).collect::<Vec<_>>().join(", ")
        ),
    }
}

impl Controller {
    /// Makes the VM a Xen config describes (stopped), then copies its disks in and
    /// starts it in a task; a failure on the way removes the VM again.
    pub async fn import_xen(self: &Arc<Self>, ctx: &Ctx, req: ImportXenRequest) -> Res<XenImport> {
        ctx.require_admin()?;
        if let Some(d) = &req.disk_dir {
            if !d.starts_with('/') || d.split('/').any(|c| c == "..") {
                return Err(Invalid::new(
                    "disk_dir",
                    format!("{d:?}: give the directory's absolute path on the host"),
                )
                .into());
            }
        }
        let p = plan(&req)?;
        ctx.target(&p.create.name, None);
        ctx.params(serde_json::json!({"disks": p.disks.len(), "dry_run": req.dry_run}));
        let name = p.create.name.clone();
        if req.dry_run {
            return Ok(XenImport {
                vm: name,
                task: None,
                plan: p.plan,
                not_carried: p.not_carried,
            });
        }
        let caller = ctx.caller()?.clone();
        let (vm, op) = self.create_vm_with(ctx, p.create).await?;
        let task = match self
            .new_task(ctx, "xen-import", &name, "copying the disks")
            .await
        {
            Ok(t) => t,
            Err(e) => {
                let e = self.unmake(ctx, &name, e).await;
                op.failed(&e).await;
                return Err(e);
            }
        };
        let me = self.clone();
        let id = task.id.clone();
        let source = ctx.source.clone();
        let disks = p.disks;
        let pool = req.pool.clone();
        let start = req.start;
        let vm_id = vm.id.clone();
        tokio::spawn(async move {
            let tctx = Ctx::user(caller, source);
            let filled = me
                .fill_imported_vm(&tctx, &id, &vm_id, &disks, pool.as_deref(), &op)
                .await;
            // Whole once its disks are in; a start that fails after that removes it too.
            let (result, op) = match filled {
                Ok(()) => {
                    op.done().await;
                    let started = match start {
                        true => me.start_imported(&tctx, &id, &vm_id).await,
                        false => Ok(()),
                    };
                    (started, None)
                }
                Err(e) => (Err(e), Some(op)),
            };
            let _ = match result {
                Ok(()) => {
                    me.store
                        .update_task(&id, TaskState::Succeeded, 1.0, "imported", None)
                        .await
                }
                Err(e) => {
                    // Nothing half-made stays: the VM goes, with the disks it has.
                    let e = me.unmake(&tctx, &name, e).await;
                    let msg = e.message();
                    if let Some(op) = op {
                        op.failed(&e).await;
                    }
                    me.store
                        .update_task(&id, TaskState::Failed, 1.0, "failed", Some(&msg))
                        .await
                }
            };
        });
        Ok(XenImport {
            vm: vm.name,
            task: Some(task),
            plan: p.plan,
            not_carried: p.not_carried,
        })
    }

    /// Copies each disk in as the VM's next one (journaled as a disk add).
    async fn fill_imported_vm(
        self: &Arc<Self>,
        ctx: &Ctx,
        task: &str,
        vm_id: &str,
        disks: &[(String, String)],
        pool: Option<&str>,
        op: &OpLog,
    ) -> Res<()> {
        let n = disks.len().max(1) as f64;
        for (i, (path, format)) in disks.iter().enumerate() {
            let vm = self
                .store
                .vm_by_id(vm_id)
                .await?
                .ok_or_else(|| Error::conflict("the VM was deleted during its import"))?;
            let pool_rec = match pool {
                Some(p) => Some(self.pool_named(p).await?),
                None => None,
            };
            let pool_spec = self
                .pool_spec(pool_rec.as_ref().map(|p| p.id.as_str()))
                .await?;
            let idx = i as u32;
            self.copy_in_disk(
                ctx,
                &vm,
                wire::ImportDiskRequest {
                    vm_id: vm.id.clone(),
                    index: idx,
                    source: path.clone(),
                    format: format.clone(),
                    pool: pool_spec,
                    chain_within: None,
                    sums: Vec::new(),
                },
                pool_rec.as_ref().map(|p| p.id.clone()),
                crate::disk_import::Report {
                    task,
                    from: i as f64 / n * 0.95,
                    width: 0.95 / n,
                    label: format!("disk {}/{}", i + 1, disks.len()),
                },
                0,
            )
            .await?;
            op.step("disk-copied").await?;
        }
        Ok(())
    }

    /// Starts the VM an import made.
    async fn start_imported(self: &Arc<Self>, ctx: &Ctx, task: &str, vm_id: &str) -> Res<()> {
        let _ = self
            .store
            .update_task(task, TaskState::Running, 0.97, "starting the VM", None)
            .await;
        let vm = self
            .store
            .vm_by_id(vm_id)
            .await?
            .ok_or_else(|| Error::conflict("the VM was deleted during its import"))?;
        self.start_vm(ctx, &vm.name).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn req(config: &str) -> ImportXenRequest {
        ImportXenRequest {
            config: config.into(),
            disk_dir: None,
            network: None,
            name: None,
            pool: None,
            start: true,
            dry_run: false,
        }
    }

    #[test]
    fn a_pv_guest_keeps_its_sizes_policies_nics_and_kernel() {
        let cfg = r#"
kernel = "/boot/vmlinuz-2.6.18-xen"
ramdisk = "/boot/initrd-2.6.18-xen.img"
memory = 256
maxmem = 512
name = "web1"
vcpus = 2
vif = [ 'mac=00:16:3E:11:22:33, ip=10.0.0.5, bridge=xenbr0' ]
disk = [ 'file:/srv/xen/web1.img,xvda1,w', 'phy:/dev/vg0/web1-swap,xvda2,w', '/srv/iso/x.iso,hdc:cdrom,r' ]
root = "/dev/xvda1 ro"
extra = "console=hvc0"
on_poweroff = 'destroy'
on_reboot = 'restart'
on_crash = 'preserve'
cpu_weight = 256
"#;
        let mut r = req(cfg);
        r.disk_dir = Some("/var/tmp/moved/".into());
        let p = plan(&r).unwrap();
        let c = &p.create;
        assert_eq!(c.name, "web1");
        assert_eq!((c.memory_mib, c.max_memory_mib), (256, Some(512)));
        assert_eq!(c.vcpus, 2);
        assert_eq!(
            (c.on_poweroff, c.on_reboot, c.on_crash),
            (Policy::Destroy, Policy::Restart, Policy::Destroy)
        );
        let nics = c.nics.as_ref().unwrap();
        assert_eq!(nics[0].mac.as_deref(), Some("00:16:3e:11:22:33"));
        assert_eq!(nics[0].ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(nics[0].network, "default");
        assert_eq!(
            c.kernel.as_deref(),
            Some("/var/tmp/moved/vmlinuz-2.6.18-xen")
        );
        assert_eq!(
            c.initrd.as_deref(),
            Some("/var/tmp/moved/initrd-2.6.18-xen.img")
        );
        assert_eq!(
            c.cmdline.as_deref(),
            Some("root=/dev/vda1 ro console=ttyS0")
        );
        assert_eq!(
            p.disks,
            [
                ("/var/tmp/moved/web1.img".to_string(), "raw".to_string()),
                ("/var/tmp/moved/web1-swap".to_string(), "raw".to_string())
            ]
        );
        let not = p.not_carried.join("\n");
        for want in [
            "cpu_weight = 256",
            "on_crash = preserve",
            "bridge=xenbr0",
            "CD-ROM",
            "/dev/vdX",
        ] {
            assert!(not.contains(want), "{want} in {not}");
        }
        assert!(not.contains("line 15: cpu_weight"), "{not}");
    }

    #[test]
    fn a_pygrub_guest_boots_its_disk_and_bad_configs_say_why() {
        let p = plan(&req(
            "name = 'db'\nbootloader = '/usr/bin/pygrub'\ndisk = ['tap:aio:/x/db.img,xvda,w']",
        ))
        .unwrap();
        assert!(p.create.kernel.is_none());
        assert_eq!(p.disks[0].0, "/x/db.img");
        assert!(p.not_carried.join("\n").contains("SeaBIOS"));

        let e = plan(&req("name = 'Web_1'\nkernel = '/k'")).unwrap_err();
        assert!(e.to_string().contains("--name"), "{e}");
        let mut r = req("name = 'Web_1'\nkernel = '/k'");
        r.name = Some("web-1".into());
        assert_eq!(plan(&r).unwrap().create.name, "web-1");
        let e = plan(&req("name = 'x'\nmemory = 'lots'\nkernel = '/k'")).unwrap_err();
        assert!(e.to_string().contains("line 2: memory"), "{e}");
        let e = plan(&req("name = 'x'")).unwrap_err();
        assert!(e.to_string().contains("nothing to boot"), "{e}");
        let e = plan(&req("name = 'x'\ndisk = ['tap:vhd:/x.vhd,xvda,w']")).unwrap_err();
        assert!(e.to_string().contains("cannot be imported"), "{e}");
        // Python code is reported by its line, and the rest still imports.
        let p = plan(&req("import os\nname = 'x'\nkernel = '/k'")).unwrap();
        assert!(
            p.not_carried[0].starts_with("line 1:"),
            "{:?}",
            p.not_carried
        );
    }
}
