//! The controller's logic without QEMU: a real controller (SQLite in a temporary
//! directory) drives SIMULATED hosts served in this process through the real agent router
//! and the real client, over mutual TLS. Create and its rollback, placement, quotas,
//! leases, ownership and refusals are checked here in milliseconds; the real-QEMU
//! integration tests in `crates/hostel/tests` check the same paths on real guests.

mod common;

use common::{certs, serve_sim, Certs};
use hostel_api::agent::AgentApi;
use hostel_api::public::*;
use hostel_controller::agent_client::{AgentClient, ClientTls};
use hostel_controller::context::{Ctx, SystemActor};
use hostel_controller::error::Error;
use hostel_controller::testing::TestController;
use hostel_controller::Controller;
use hostel_model::{Op, VmState};
use hostel_simagent::SimHost;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Cluster {
    c: Arc<Controller>,
    admin: Ctx,
    sims: Vec<Arc<SimHost>>,
    t: TestController,
}

impl Cluster {
    /// A controller with `hosts` SIMULATED hosts added, as `hostel host add` adds them.
    async fn new(hosts: usize) -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Certs = certs();
        let t = TestController::new().await;
        let tls = || ClientTls {
            ca_pem: certs.ca.clone(),
            cert_pem: certs.controller.0.clone(),
            key_pem: certs.controller.1.clone(),
        };
        t.c.set_agent_tls(tls()).unwrap();
        let mut sims = Vec::new();
        for i in 0..hosts {
            let sim = Arc::new(SimHost::new(i, hosts, t.dir.path().join("no-fleet")));
            let url = serve_sim(&certs, sim.clone());
            t.c.add_host(AgentClient::new(&url, &tls()).unwrap())
                .await
                .unwrap();
            sims.push(sim);
        }
        Cluster {
            c: t.c.clone(),
            admin: Ctx::user(t.admin.caller().unwrap().clone(), "test"),
            sims,
            t,
        }
    }

    async fn user(&self, name: &str) -> Ctx {
        self.t.user(name).await
    }

    /// A user's context made again (their groups are read when a token is checked).
    async fn user_again(&self, name: &str) -> Ctx {
        self.t.context_of(name).await
    }

    /// A backup target, `/srv/backups` on every host.
    async fn backup_target(&self) {
        let req = CreateBackupTargetRequest {
            name: "t".into(),
            dir: "/srv/backups".into(),
        };
        self.c.create_backup_target(&self.admin, req).await.unwrap();
    }

    /// Backs VM `vm` up (the task waited for); the backup's name.
    async fn backed_up(&self, vm: &str) -> String {
        let task = self
            .c
            .create_backup(&self.admin, vm, CreateBackupRequest::default())
            .await
            .unwrap();
        self.task_end(&task.id).await.unwrap();
        let b = self.c.backups(&self.admin, Some(vm)).await.unwrap();
        b[0].name.clone()
    }

    /// Waits for a task to end; its error when it failed.
    async fn task_end(&self, id: &str) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.c.task(&self.admin, id).await.unwrap();
            match t.state {
                TaskState::Succeeded => return Ok(()),
                TaskState::Failed => return Err(t.error.unwrap_or_default()),
                TaskState::Running => {}
            }
            assert!(Instant::now() < until, "task {id} did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The hosts with a ready copy of an image, and those with one under way.
    async fn copies(&self, image: &str) -> Vec<(String, String)> {
        let imgs = self.c.images(&self.admin).await.unwrap();
        let img = imgs.into_iter().find(|i| i.name == image).unwrap();
        img.hosts.into_iter().map(|c| (c.host, c.state)).collect()
    }

    /// A host other than the one that made `image`.
    async fn other_host(&self, image: &str) -> String {
        let origin = self.copies(image).await[0].0.clone();
        self.sims
            .iter()
            .map(|s| s.name())
            .find(|n| *n != origin)
            .unwrap()
    }

    /// The `tiny` image, built (simulated) on the first host through a task.
    async fn tiny(&self) {
        let task = self
            .c
            .build_image(
                &self.admin,
                BuildImageRequest {
                    recipe: "tiny".into(),
                    name: None,
                    suite: None,
                    packages: Vec::new(),
                    size_mib: None,
                    mirror: None,
                },
            )
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.c.task(&self.admin, &task.id).await.unwrap();
            match t.state {
                TaskState::Succeeded => return,
                TaskState::Failed => panic!("{:?}", t.error),
                TaskState::Running => {}
            }
            assert!(Instant::now() < until, "the image task did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn create(name: &str, extra: serde_json::Value) -> CreateVmRequest {
    let mut v = serde_json::json!({"name": name, "memory_mib": 64});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn create_starts_the_vm_and_a_failed_start_leaves_nothing() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    let alice = k.user("alice").await;
    let vm =
        k.c.create_vm(
            &alice,
            create("a1", serde_json::json!({"image": "tiny", "disk_mib": 64})),
        )
        .await
        .unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(vm.owner.as_deref(), Some("user:alice"));
    assert_eq!(vm.host.as_deref(), Some("simhost-0"));
    assert_eq!(k.sims[0].disk_files().len(), 1);
    // The audit note names the new VM by name and id, so `audit --vm` finds its creation.
    let note = alice.note();
    assert_eq!(note.target.as_deref(), Some("a1"));
    assert_eq!(note.vm_id.as_deref(), Some(vm.id.as_str()));

    // A host that cannot start QEMU: the create fails and removes what it made.
    k.sims[0].refuse_starts(true);
    let e =
        k.c.create_vm(
            &alice,
            create("a2", serde_json::json!({"image": "tiny", "disk_mib": 64})),
        )
        .await
        .unwrap_err();
    assert!(e.message().contains("nothing was kept"), "{e}");
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    assert!(k.c.store.vm_by_name("a2").await.unwrap().is_none());
    assert_eq!(k.sims[0].disk_files().len(), 1, "the new disk file is gone");
    assert_eq!(k.c.store.all_disks().await.unwrap().len(), 1);
}

#[tokio::test]
async fn placement_goes_to_the_host_with_the_most_memory_free() {
    let k = Cluster::new(2).await;
    let mut hosts = Vec::new();
    for n in ["p1", "p2"] {
        // A kernel from the host (admins only) ties the VM to no host's files.
        let vm =
            k.c.create_vm(
                &k.admin,
                create(
                    n,
                    serde_json::json!({"kernel": "/boot/vmlinuz", "memory_mib": 1024}),
                ),
            )
            .await
            .unwrap();
        hosts.push(vm.host.unwrap());
    }
    assert_ne!(
        hosts[0], hosts[1],
        "the second VM goes where memory is free"
    );
    // A user may not boot a host's files.
    let bob = k.user("bob").await;
    let e =
        k.c.create_vm(
            &bob,
            create("p3", serde_json::json!({"kernel": "/boot/vmlinuz"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden(_)), "{e:?}");
}

#[tokio::test]
async fn a_backup_restores_as_a_new_vm_on_the_host_that_holds_its_files() {
    let k = Cluster::new(2).await;
    k.backup_target().await;
    let req = create(
        "orig",
        serde_json::json!({"kernel": "/boot/vmlinuz", "memory_mib": 1024, "disk_mib": 64}),
    );
    let orig = k.c.create_vm(&k.admin, req).await.unwrap();
    let backup = k.backed_up("orig").await;
    // Placement would choose the other host (the one with the most memory free), which
    // cannot read the backup's files.
    let restore = RestoreBackupRequest {
        as_name: Some("copy".into()),
        start: false,
    };
    let task =
        k.c.restore_backup(&k.admin, &backup, restore)
            .await
            .unwrap();
    k.task_end(&task.id).await.unwrap();
    // It starts where its disk was restored.
    let copy = k.c.start_vm(&k.admin, "copy").await.unwrap();
    assert_eq!(copy.host, orig.host);
    assert_eq!(copy.disks.len(), 1);
}

#[tokio::test]
async fn quotas_refuse_before_anything_is_made() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    let carol = k.user("carol").await;
    k.c.quota_set(
        &k.admin,
        "user:carol",
        QuotaLimits {
            vms_total: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    k.c.create_vm(
        &carol,
        create("q1", serde_json::json!({"image": "tiny", "disk_mib": 64})),
    )
    .await
    .unwrap();
    let e =
        k.c.create_vm(
            &carol,
            create("q2", serde_json::json!({"image": "tiny", "disk_mib": 64})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Quota(_)), "{e:?}");
    assert!(k.c.store.vm_by_name("q2").await.unwrap().is_none());
    assert_eq!(k.sims[0].disk_files().len(), 1, "no disk was made for q2");
    // Starting more than the running limit is refused too, and the VM stays stopped.
    k.c.quota_set(
        &k.admin,
        "user:carol",
        QuotaLimits {
            vms_running: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    k.c.simple_action(&carol, "q1", Op::Destroy).await.unwrap();
    let e = k.c.start_vm(&carol, "q1").await.unwrap_err();
    assert!(matches!(e, Error::Quota(_)), "{e:?}");
    let vm = k.c.store.vm_by_name("q1").await.unwrap().unwrap();
    assert_eq!(vm.state, VmState::Stopped);
}

#[tokio::test]
async fn the_lease_reaper_stops_ended_leases_as_a_named_system_actor() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    let dan = k.user("dan").await;
    let vm =
        k.c.create_vm(&dan, create("l1", serde_json::json!({"image": "tiny"})))
            .await
            .unwrap();
    k.c.store
        .set_vm_lease(
            &vm.id,
            Some(hostel_store::Timestamp::parse("2020-01-01T00:00:00Z").unwrap()),
        )
        .await
        .unwrap();
    k.c.spawn_lease_reaper(Duration::from_millis(20));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v = k.c.store.vm_by_id(&vm.id).await.unwrap().unwrap();
        if v.state == VmState::Stopped {
            break;
        }
        assert!(
            Instant::now() < until,
            "the reaper did not stop l1: {}",
            v.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The reaper writes its audit entry after the state change: wait for it too.
    loop {
        let trail =
            k.c.audit(&dan, Some("l1".into()), None, None)
                .await
                .unwrap();
        let reaped = trail.iter().any(|e| {
            e.action == "vm.shutdown"
                && e.user.as_deref() == Some("system:lease-reaper")
                && e.result == "ok"
        });
        if reaped {
            break;
        }
        assert!(
            Instant::now() < until,
            "no audit entry of the reaper: {trail:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Starting it again needs a renewal.
    let e = k.c.start_vm(&dan, "l1").await.unwrap_err();
    assert!(e.message().contains("renew"), "{e}");
    // The reaper's rights are its own: it may not act for a user.
    let reaper = Ctx::system(SystemActor::LeaseReaper);
    assert!(k
        .c
        .create_vm(&reaper, create("x", serde_json::json!({"image": "tiny"})))
        .await
        .is_err());
}

#[tokio::test]
async fn others_vms_do_not_exist_until_shared_with_a_group() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    let erin = k.user("erin").await;
    let frank = k.user("frank").await;
    k.c.create_vm(&erin, create("o1", serde_json::json!({"image": "tiny"})))
        .await
        .unwrap();
    let not_found = |r: Result<Vm, Error>| match r {
        Err(Error::NotFound { kind: "vm", .. }) => {}
        other => panic!("expected not found, got {other:?}"),
    };
    not_found(k.c.simple_action(&frank, "o1", Op::Destroy).await);
    not_found(k.c.mem_set(&frank, "o1", 128).await);
    let (frank_sees, _) =
        k.c.list_vms(&frank, 100, None, &Default::default())
            .await
            .unwrap();
    assert!(frank_sees.is_empty());
    // Shared with a group Frank is in, it is his to operate too.
    k.c.create_group(&k.admin, CreateGroupRequest { name: "lab".into() })
        .await
        .unwrap();
    for u in ["erin", "frank"] {
        k.c.add_member(&k.admin, "lab", MemberRequest { user: u.into() })
            .await
            .unwrap();
    }
    let erin = k.user_again("erin").await;
    let frank = k.user_again("frank").await;
    k.c.set_owner(
        &erin,
        "o1",
        SetOwnerRequest {
            owner: "group:lab".into(),
            admin_group: None,
        },
    )
    .await
    .unwrap();
    let vm = k.c.simple_action(&frank, "o1", Op::Pause).await.unwrap();
    assert_eq!(vm.state, VmState::Paused);
    // A state the operation does not allow is a conflict, by its type.
    let e =
        k.c.simple_action(&frank, "o1", Op::Pause)
            .await
            .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
}

/// The owner's quota use, as `hostel quota show` reads it.
async fn used(k: &Cluster, ctx: &Ctx) -> QuotaUse {
    k.c.quota_show(ctx, None).await.unwrap().used
}

#[tokio::test]
async fn memory_is_charged_at_max_memory_not_the_balloon_target() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    let fay = k.user("fay").await;
    k.c.quota_set(
        &k.admin,
        "user:fay",
        QuotaLimits {
            ram_total_mib: Some(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // A 64M balloon target on a 256M VM: QEMU is given 256M, and a guest without a
    // balloon driver uses all of it.
    k.c.create_vm(
        &fay,
        create(
            "m1",
            serde_json::json!({"image": "tiny", "max_memory_mib": 256, "nics": []}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(used(&k, &fay).await.ram_mib, 256);
    let e =
        k.c.create_vm(
            &fay,
            create(
                "m2",
                serde_json::json!({"image": "tiny", "max_memory_mib": 64, "nics": []}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Quota(_)) && e.message().contains("would be 320M"),
        "{e:?}"
    );
    // Lowering the balloon target frees nothing.
    k.c.mem_set(&fay, "m1", 32).await.unwrap();
    assert_eq!(used(&k, &fay).await.ram_mib, 256);
}

#[tokio::test]
async fn nics_port_forwards_and_snapshots_are_limited() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    k.c.ensure_default_network(&k.admin).await.unwrap();
    let gus = k.user("gus").await;
    k.c.quota_set(
        &k.admin,
        "user:gus",
        QuotaLimits {
            nics_total: Some(2),
            port_forwards_total: Some(1),
            snapshots_total: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let nic = || NicRequest {
        network: "default".into(),
        ip: None,
        mac: None,
    };
    // A create with more NICs than the quota makes nothing.
    let e =
        k.c.create_vm(
            &gus,
            create(
                "n0",
                serde_json::json!({"image": "tiny", "disk_mib": 64, "start": false,
                    "nics": [{"network": "default"}, {"network": "default"}, {"network": "default"}]}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Quota(_)) && e.message().contains("the number of NICs"),
        "{e:?}"
    );
    assert!(k.c.store.vm_by_name("n0").await.unwrap().is_none());
    // A stopped VM cannot take every address of `default` either.
    k.c.create_vm(
        &gus,
        create(
            "n1",
            serde_json::json!({"image": "tiny", "disk_mib": 64, "start": false}),
        ),
    )
    .await
    .unwrap();
    k.c.add_nic(&gus, "n1", nic()).await.unwrap();
    let e = k.c.add_nic(&gus, "n1", nic()).await.unwrap_err();
    assert!(
        matches!(e, Error::Quota(_)) && e.message().contains("NICs of user gus would be 3"),
        "{e:?}"
    );
    assert_eq!(k.c.store.all_nics().await.unwrap().len(), 2);

    let fwd = |port: u16| PortForwardRequest {
        host_port: port,
        guest_port: 22,
        proto: "tcp".into(),
    };
    k.c.add_forward(&gus, "n1", fwd(20022)).await.unwrap();
    let e = k.c.add_forward(&gus, "n1", fwd(20023)).await.unwrap_err();
    assert!(
        matches!(e, Error::Quota(_)) && e.message().contains("port forwards"),
        "{e:?}"
    );
    assert_eq!(k.c.store.forwards().await.unwrap().len(), 1);

    let snap = |name: &str| CreateSnapshotRequest {
        name: Some(name.into()),
        memory: false,
    };
    k.c.create_snapshot(&gus, "n1", snap("s1")).await.unwrap();
    let e =
        k.c.create_snapshot(&gus, "n1", snap("s2"))
            .await
            .unwrap_err();
    assert!(
        matches!(e, Error::Quota(_)) && e.message().contains("the number of snapshots"),
        "{e:?}"
    );
    let u = used(&k, &gus).await;
    assert_eq!((u.nics, u.port_forwards, u.snapshots), (2, 1, 1));

    // Admins' own VMs are not limited, as for the other quotas.
    k.c.create_vm(
        &k.admin,
        create(
            "n2",
            serde_json::json!({"image": "tiny", "disk_mib": 64, "start": false,
                "nics": [{"network": "default"}, {"network": "default"}, {"network": "default"}]}),
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn snapshots_and_save_files_are_charged_as_disk_space() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    let hal = k.user("hal").await;
    k.c.quota_set(
        &k.admin,
        "user:hal",
        QuotaLimits {
            disk_total_mib: Some(900),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    k.c.create_vm(
        &hal,
        create(
            "s1",
            serde_json::json!({"image": "tiny", "disk_mib": 200, "max_memory_mib": 128,
                "nics": []}),
        ),
    )
    .await
    .unwrap();
    // A disk snapshot is charged the VM's disks (200M), one with memory also its max
    // memory and device state (128M + 64M).
    let snap = |name: &str, memory: bool| CreateSnapshotRequest {
        name: Some(name.into()),
        memory,
    };
    k.c.create_snapshot(&hal, "s1", snap("disk", false))
        .await
        .unwrap();
    k.c.create_snapshot(&hal, "s1", snap("mem", true))
        .await
        .unwrap();
    let u = used(&k, &hal).await;
    assert_eq!((u.snapshots_mib, u.disk_mib), (200 + 392, 200 + 200 + 392));
    let e =
        k.c.create_snapshot(&hal, "s1", snap("third", false))
            .await
            .unwrap_err();
    assert!(
        matches!(e, Error::Quota(_)) && e.message().contains("would be 992M"),
        "{e:?}"
    );
    // Growing a disk grows every snapshot's charge too: +100M is +300M here.
    let e =
        k.c.resize_disk(
            &hal,
            "s1",
            ResizeDiskRequest {
                disk: 0,
                size_mib: 300,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Quota(_)) && e.message().contains("would be 1092M"),
        "{e:?}"
    );
    k.c.delete_snapshot(&hal, "s1", "mem").await.unwrap();
    k.c.delete_snapshot(&hal, "s1", "disk").await.unwrap();

    // A save file is charged max memory and device state while the VM is saved.
    let saves = k.t.c.cfg.data_dir.join("saves").join("hal");
    let path = saves.join("s1.state").display().to_string();
    k.c.save_vm(&hal, "s1", path.clone()).await.unwrap();
    let u = used(&k, &hal).await;
    assert_eq!((u.saves_mib, u.disk_mib), (192, 392));
    k.c.quota_set(
        &k.admin,
        "user:hal",
        QuotaLimits {
            disk_total_mib: Some(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    k.c.restore_vm(&hal, path.clone()).await.unwrap();
    assert_eq!(
        used(&k, &hal).await.disk_mib,
        200,
        "a restore ends the charge"
    );
    let e = k.c.save_vm(&hal, "s1", path).await.unwrap_err();
    assert!(
        matches!(e, Error::Quota(_)) && e.message().contains("would be 392M"),
        "{e:?}"
    );
    assert_eq!(
        k.c.store.vm_by_name("s1").await.unwrap().unwrap().state,
        VmState::Running,
        "a refused save leaves the VM running"
    );

    // Deleting a saved VM removes its save file: its charge ends with the VM.
    k.c.quota_set(&k.admin, "user:hal", QuotaLimits::default())
        .await
        .unwrap();
    let path = saves.join("s1-again.state");
    k.c.save_vm(&hal, "s1", path.display().to_string())
        .await
        .unwrap();
    // (The simulated host writes no file; the one a real host would have written.)
    std::fs::write(&path, b"saved state").unwrap();
    k.c.delete_vm(&hal, "s1").await.unwrap();
    assert!(!path.exists(), "the save file went with the VM");
}

#[tokio::test]
async fn only_admins_keep_disk_files_of_a_deleted_vm() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    let ivy = k.user("ivy").await;
    k.c.create_vm(
        &ivy,
        create(
            "k1",
            serde_json::json!({"image": "tiny", "disk_mib": 64, "start": false}),
        ),
    )
    .await
    .unwrap();
    let e = k.c.delete_vm_keeping(&ivy, "k1", true).await.unwrap_err();
    assert!(
        matches!(e, Error::Forbidden(_)) && e.message().contains("charged to no quota"),
        "{e:?}"
    );
    assert!(k.c.store.vm_by_name("k1").await.unwrap().is_some());
    assert_eq!(k.sims[0].disk_files().len(), 1);
    let kept = k.c.delete_vm_keeping(&k.admin, "k1", true).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(k.sims[0].disk_files().len(), 1, "the admin kept the file");
}

#[tokio::test]
async fn a_vm_s_administrator_group_is_one_the_owner_is_in() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    for g in ["lab", "ops"] {
        k.c.create_group(&k.admin, CreateGroupRequest { name: g.into() })
            .await
            .unwrap();
    }
    k.user("gina").await;
    k.c.add_member(
        &k.admin,
        "lab",
        MemberRequest {
            user: "gina".into(),
        },
    )
    .await
    .unwrap();
    let gina = k.user_again("gina").await;
    k.c.create_vm(&gina, create("g1", serde_json::json!({"image": "tiny"})))
        .await
        .unwrap();
    let chown = |admin_group: &str| SetOwnerRequest {
        owner: "group:lab".into(),
        admin_group: Some(admin_group.into()),
    };
    // A group she is not in, or none by that name: the same refusal, nothing changed.
    let not_hers = k.c.set_owner(&gina, "g1", chown("ops")).await.unwrap_err();
    let no_such =
        k.c.set_owner(&gina, "g1", chown("nogroup"))
            .await
            .unwrap_err();
    assert!(matches!(not_hers, Error::Forbidden(_)), "{not_hers:?}");
    assert_eq!(
        not_hers.message().replace("ops", "G"),
        no_such.message().replace("nogroup", "G")
    );
    let vm = k.c.store.vm_by_name("g1").await.unwrap().unwrap();
    assert_eq!(vm.admin_group_id, None);
    // Her own group she may set; an admin may set any.
    let vm = k.c.set_owner(&gina, "g1", chown("lab")).await.unwrap();
    assert_eq!(vm.admin_group.as_deref(), Some("lab"));
    let vm = k.c.set_owner(&k.admin, "g1", chown("ops")).await.unwrap();
    assert_eq!(vm.admin_group.as_deref(), Some("ops"));
}

#[tokio::test]
async fn usage_rates_come_from_consecutive_counters_and_strangers_see_no_vm() {
    let k = Cluster::new(2).await;
    k.tiny().await;
    let hana = k.user("hana").await;
    let vm =
        k.c.create_vm(&hana, create("u1", serde_json::json!({"image": "tiny"})))
            .await
            .unwrap();
    let sim = k.sims.iter().find(|s| Some(s.name()) == vm.host).unwrap();
    let pid = vm.qemu.pid.unwrap();
    // SIMULATED counters: known readings, 10 s apart by the host's clock.
    let t0 = 1_700_000_000_000; // 2023-11-14T22:13:20Z
    let reading =
        |pid: u32, secs: u64, cpu_s: u64, mib: u64, n: u64| hostel_api::agent::VmCounters {
            id: vm.id.clone(),
            pid,
            at_ms: t0 + secs * 1000,
            cpu_ns: cpu_s * 1_000_000_000,
            memory_bytes: mib << 20,
            disk_read_bytes: n << 20,
            disk_write_bytes: n << 19,
            net_rx_bytes: n * 1000,
            net_tx_bytes: n * 250,
            disk_read_ops: n,
            disk_write_ops: n,
            net_rx_packets: n,
            net_tx_packets: n,
            balloon_bytes: Some(mib << 20),
            guard_drops: 0,
        };
    let tick = || k.c.sample_usage(Duration::from_secs(5));
    let stats = || {
        k.c.vm_stats(&hana, "u1", hostel_controller::StatsRange::Hour)
    };

    sim.set_counters(reading(pid, 0, 1, 100, 0));
    tick().await;
    let s = stats().await.unwrap();
    assert_eq!(s.interval_seconds, 10);
    assert!(s.points.is_empty(), "one reading is no rate: {s:?}");

    sim.set_counters(reading(pid, 10, 6, 120, 10));
    tick().await;
    let s = stats().await.unwrap();
    assert_eq!(
        s.points,
        vec![VmStatsPoint {
            at: "2023-11-14T22:13:30Z".into(),
            cpu_percent: 50.0,
            memory_bytes: 120 << 20,
            disk_read_bps: 1 << 20,
            disk_write_bps: 1 << 19,
            net_rx_bps: 1000,
            net_tx_bps: 250,
        }]
    );
    // Two busy vCPUs are 200 %.
    sim.set_counters(reading(pid, 20, 26, 120, 10));
    tick().await;
    let p = stats().await.unwrap().points.pop().unwrap();
    assert_eq!((p.cpu_percent, p.disk_write_bps), (200.0, 0));

    // A new QEMU starts from zero: no point for that interval, then rates again.
    sim.set_counters(reading(pid + 1, 30, 1, 50, 1));
    tick().await;
    assert_eq!(stats().await.unwrap().points.len(), 2);
    sim.set_counters(reading(pid + 1, 40, 2, 50, 3));
    tick().await;
    let s = stats().await.unwrap();
    assert_eq!(s.points.len(), 3);
    assert_eq!(s.points[2].cpu_percent, 10.0);
    assert_eq!(s.points[2].net_rx_bps, 200);

    // Authorised like the VM itself: a stranger is told it does not exist.
    let ivan = k.user("ivan").await;
    match k
        .c
        .vm_stats(&ivan, "u1", hostel_controller::StatsRange::Hour)
        .await
    {
        Err(Error::NotFound { kind: "vm", .. }) => {}
        other => panic!("a stranger got {other:?}"),
    }
    assert_eq!(
        k.c.vm_stats(&k.admin, "u1", hostel_controller::StatsRange::Hour)
            .await
            .unwrap()
            .points
            .len(),
        3
    );

    // One slow host keeps nobody waiting: the round ends at the timeout, with the others.
    let other = k.sims.iter().find(|s| Some(s.name()) != vm.host).unwrap();
    other.delay_stats(Duration::from_secs(30));
    sim.set_counters(reading(pid + 1, 50, 3, 50, 5));
    let began = Instant::now();
    k.c.sample_usage(Duration::from_millis(300)).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(stats().await.unwrap().points.len(), 4);

    // A VM its host no longer runs is dropped.
    k.c.simple_action(&hana, "u1", Op::Destroy).await.unwrap();
    k.c.sample_usage(Duration::from_millis(300)).await;
    assert!(stats().await.unwrap().points.is_empty());
}

/// The next event of a stream, within 5 s.
async fn next_event(s: &mut (impl futures::Stream<Item = VmEvent> + Unpin)) -> VmEvent {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream goes on")
}

#[tokio::test]
async fn the_event_stream_tells_each_user_of_their_own_vms_only() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    let alice = Arc::new(k.user("alice").await);
    let bob = Arc::new(k.user("bob").await);
    let mut hers = Box::pin(k.c.vm_events(alice.clone()).await.unwrap());
    let mut his = Box::pin(k.c.vm_events(bob.clone()).await.unwrap());
    let mut admins = Box::pin(
        k.c.vm_events(Arc::new(Ctx::user(
            k.admin.caller().unwrap().clone(),
            "test",
        )))
        .await
        .unwrap(),
    );
    k.c.create_vm(
        &alice,
        create("e1", serde_json::json!({"image": "tiny", "start": false})),
    )
    .await
    .unwrap();
    match next_event(&mut hers).await {
        VmEvent::Changed { vm } => {
            assert_eq!((vm.name.as_str(), vm.state), ("e1", VmState::Stopped))
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(next_event(&mut admins).await, VmEvent::Changed { vm } if vm.name == "e1"));
    k.c.start_vm(&alice, "e1").await.unwrap();
    // Every write is an event; the last one of a start says it runs.
    let mut last = None;
    while let Ok(Some(e)) = tokio::time::timeout(
        Duration::from_millis(300),
        futures::StreamExt::next(&mut hers),
    )
    .await
    {
        last = Some(e);
    }
    assert!(
        matches!(&last, Some(VmEvent::Changed { vm }) if vm.state == VmState::Running),
        "{last:?}"
    );
    k.c.delete_vm(&alice, "e1").await.err(); // running: refused, nothing happens
    k.c.simple_action(&alice, "e1", Op::Destroy).await.unwrap();
    k.c.delete_vm(&alice, "e1").await.unwrap();
    loop {
        match next_event(&mut hers).await {
            VmEvent::Gone { name, .. } => {
                assert_eq!(name, "e1");
                break;
            }
            VmEvent::Changed { vm } => assert_eq!(vm.name, "e1"),
            e => panic!("{e:?}"),
        }
    }
    // Bob saw nothing of alice's VM, not even its deletion.
    let nothing = tokio::time::timeout(
        Duration::from_millis(300),
        futures::StreamExt::next(&mut his),
    )
    .await;
    assert!(nothing.is_err(), "bob was told {nothing:?}");
}

#[tokio::test]
async fn a_vm_is_made_for_a_group_of_the_caller_and_keeps_its_owner_when_shared() {
    let k = Cluster::new(1).await;
    k.tiny().await;
    for g in ["lab", "ops"] {
        k.c.create_group(&k.admin, CreateGroupRequest { name: g.into() })
            .await
            .unwrap();
    }
    k.user("hana").await;
    k.c.add_member(
        &k.admin,
        "lab",
        MemberRequest {
            user: "hana".into(),
        },
    )
    .await
    .unwrap();
    let hana = k.user_again("hana").await;
    // For a group she is not in, or for someone else: refused, nothing made.
    for owner in ["group:ops", "user:admin"] {
        let e =
            k.c.create_vm(
                &hana,
                create("o1", serde_json::json!({"image": "tiny", "owner": owner})),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Forbidden(_)), "{owner}: {e:?}");
        assert!(k.c.store.vm_by_name("o1").await.unwrap().is_none());
    }
    let vm =
        k.c.create_vm(
            &hana,
            create(
                "o1",
                serde_json::json!({"image": "tiny", "owner": "group:lab"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(vm.owner.as_deref(), Some("group:lab"));
    let q = k.c.quota_show(&k.admin, Some("group:lab")).await.unwrap();
    assert_eq!(q.used.vms, 1, "the group is charged");
    // Her own VM: naming its owner again, she changes only its administrator group.
    k.c.create_vm(&hana, create("o2", serde_json::json!({"image": "tiny"})))
        .await
        .unwrap();
    let vm =
        k.c.set_owner(
            &hana,
            "o2",
            SetOwnerRequest {
                owner: "user:hana".into(),
                admin_group: Some("lab".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(vm.owner.as_deref(), Some("user:hana"));
    assert_eq!(vm.admin_group.as_deref(), Some("lab"));
    // Her list, filtered by owner and by text in the query itself (GET /vms?owner=&q=).
    let hana = k.user_again("hana").await;
    let names = |f: hostel_controller::VmFilter<'static>| {
        let (c, hana) = (k.c.clone(), &hana);
        async move {
            let (vms, _) = c.list_vms(hana, 100, None, &f).await.unwrap();
            vms.into_iter().map(|v| v.name).collect::<Vec<_>>()
        }
    };
    let by_owner = |o: &'static str| hostel_controller::VmFilter {
        owner: Some(o),
        ..Default::default()
    };
    assert_eq!(names(Default::default()).await, ["o1", "o2"]);
    assert_eq!(names(by_owner("group:lab")).await, ["o1"]);
    assert_eq!(names(by_owner("user:hana")).await, ["o2"]);
    assert!(names(by_owner("user:nobody")).await.is_empty());
    let search = |q: &'static str| hostel_controller::VmFilter {
        search: Some(q),
        ..Default::default()
    };
    assert_eq!(names(search("2")).await, ["o2"]);
    assert_eq!(
        names(search("O")).await,
        ["o1", "o2"],
        "case does not matter"
    );
    assert!(
        names(search("%")).await.is_empty(),
        "LIKE's wildcards are text"
    );
    let e =
        k.c.list_vms(&hana, 100, None, &by_owner("lab"))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("user:NAME or group:NAME"), "{e}");
    // Someone else's search finds none of hers.
    let ivan = k.user("ivan").await;
    let (seen, _) = k.c.list_vms(&ivan, 100, None, &search("o")).await.unwrap();
    assert!(seen.is_empty());
}

#[tokio::test]
async fn an_image_is_copied_to_a_host_on_first_use_and_checked() {
    let k = Cluster::new(2).await;
    k.tiny().await;
    let copies = k.copies("tiny").await;
    assert_eq!(copies.len(), 1, "made on one host: {copies:?}");
    let origin = copies[0].0.clone();
    let sim = |h: &str| k.sims.iter().find(|s| s.name() == h).unwrap().clone();
    let other = k.sims.iter().find(|s| s.name() != origin).unwrap().name();
    // Two VMs: the second goes to the host with more memory free, the one without a copy,
    // and the image is copied there as it is created.
    for n in ["c1", "c2"] {
        k.c.create_vm(&k.admin, create(n, serde_json::json!({"image": "tiny"})))
            .await
            .unwrap();
    }
    let mut hosts = std::collections::BTreeSet::new();
    for n in ["c1", "c2"] {
        let vm = k.c.store.vm_by_name(n).await.unwrap().unwrap();
        hosts.insert(vm.host_id.unwrap());
    }
    assert_eq!(hosts.len(), 2, "one VM on each host");
    let mut copies = k.copies("tiny").await;
    copies.sort();
    let mut want = vec![
        (origin.clone(), "ready".to_string()),
        (other.clone(), "ready".to_string()),
    ];
    want.sort();
    assert_eq!(copies, want);
    assert_eq!(sim(&other).images_received(), 1);
    assert_eq!(sim(&other).image_files(), sim(&origin).image_files());

    // Pushed ahead of time: a second image, to the other host, by two admins at once:
    // one copy is made, both tasks succeed.
    let t =
        k.c.build_image(
            &k.admin,
            BuildImageRequest {
                recipe: "debian".into(),
                name: Some("deb".into()),
                suite: None,
                packages: Vec::new(),
                size_mib: None,
                mirror: None,
            },
        )
        .await
        .unwrap();
    k.task_end(&t.id).await.unwrap();
    let target = k.other_host("deb").await;
    let before = sim(&target).images_received();
    let push = || PushImageRequest {
        host: Some(target.clone()),
    };
    let (a, b) = tokio::join!(
        k.c.push_image(&k.admin, "deb", push()),
        k.c.push_image(&k.admin, "deb", push())
    );
    for t in a.unwrap().into_iter().chain(b.unwrap()) {
        k.task_end(&t.id).await.unwrap();
    }
    assert_eq!(sim(&target).images_received(), before + 1, "one copy made");
    // Pushed again: nothing to do.
    let again = k.c.push_image(&k.admin, "deb", push()).await.unwrap();
    assert!(again.is_empty(), "{again:?}");

    // Bytes that do not add up to the image's SHA-256 are refused: no copy, no file.
    let t =
        k.c.import_image(
            &k.admin,
            ImportImageRequest {
                name: "imp".into(),
                path: "/srv/imp.qcow2".into(),
            },
        )
        .await
        .unwrap();
    k.task_end(&t.id).await.unwrap();
    let imp_origin = k.copies("imp").await[0].0.clone();
    let imp_target = k.other_host("imp").await;
    sim(&imp_origin).corrupt_image_reads(true);
    let tasks =
        k.c.push_image(&k.admin, "imp", PushImageRequest { host: None })
            .await
            .unwrap();
    assert_eq!(tasks.len(), 1, "only the host without a copy");
    let err = k.task_end(&tasks[0].id).await.unwrap_err();
    assert!(err.contains("sha256"), "{err}");
    assert_eq!(
        k.copies("imp").await,
        [(imp_origin.clone(), "ready".into())]
    );
    assert!(!sim(&imp_target)
        .image_files()
        .iter()
        .any(|f| f.contains("imp")));
    sim(&imp_origin).corrupt_image_reads(false);

    // Bad requests: an unknown host, a user who is not an admin.
    let nowhere = PushImageRequest {
        host: Some("nosuch".into()),
    };
    let e = k.c.push_image(&k.admin, "deb", nowhere).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { kind: "host", .. }), "{e:?}");
    let erin = k.user("erin").await;
    assert!(k.c.push_image(&erin, "deb", push()).await.is_err());

    // Deleting an image removes every host's copy.
    k.c.delete_image(&k.admin, "deb").await.unwrap();
    for s in &k.sims {
        assert!(
            !s.image_files().iter().any(|f| f.contains("/deb.")),
            "{:?}",
            s.image_files()
        );
    }
}

#[tokio::test]
async fn placement_follows_tags_and_anti_affinity_and_says_why() {
    let k = Cluster::new(3).await;
    k.tiny().await;
    let names: Vec<String> = k.sims.iter().map(|s| s.name()).collect();
    // Two hosts tagged ssd; an unknown host and a bad tag are refused.
    for h in &names[..2] {
        let info =
            k.c.set_host(
                &k.admin,
                h,
                SetHostRequest {
                    tags: vec!["ssd".into(), "ssd".into()],
                },
            )
            .await
            .unwrap();
        assert_eq!(info.tags, ["ssd"]);
    }
    let e =
        k.c.set_host(&k.admin, "nosuch", SetHostRequest { tags: vec![] })
            .await
            .unwrap_err();
    assert!(matches!(e, Error::NotFound { kind: "host", .. }), "{e:?}");
    let e =
        k.c.set_host(
            &k.admin,
            &names[0],
            SetHostRequest {
                tags: vec!["Not A Tag".into()],
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tags"), "{e}");
    let erin = k.user("erin").await;
    assert!(k
        .c
        .set_host(&erin, &names[0], SetHostRequest { tags: vec![] })
        .await
        .is_err());

    // Three VMs of one anti-affinity group on the ssd hosts: two fit, one per host; the
    // third is refused, naming each host's verdict.
    let ask = |n: &str| {
        create(
            n,
            serde_json::json!({"image": "tiny", "host_tags": ["ssd"],
                "anti_affinity": "web", "explain": true}),
        )
    };
    let mut used = Vec::new();
    for n in ["w1", "w2"] {
        let vm = k.c.create_vm(&k.admin, ask(n)).await.unwrap();
        let p = vm.placement.expect("explained");
        assert_eq!(Some(&p.chosen), vm.host.as_ref());
        assert!(names[..2].contains(&p.chosen), "{p:?}");
        let third = p.hosts.iter().find(|h| h.host == names[2]).unwrap();
        assert_eq!(third.verdict, "lacks tag ssd");
        assert_eq!(vm.anti_affinity.as_deref(), Some("web"));
        used.push(p.chosen);
    }
    assert_ne!(used[0], used[1], "one VM of the group per host");
    let e = k.c.create_vm(&k.admin, ask("w3")).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("anti-affinity group web") && msg.contains("lacks tag ssd"),
        "{msg}"
    );
    assert!(k.c.store.vm_by_name("w3").await.unwrap().is_none());
    // Without the group, it fits; not asked to explain, the answer has no placement.
    let vm =
        k.c.create_vm(
            &k.admin,
            create(
                "w4",
                serde_json::json!({"image": "tiny", "host_tags": ["ssd"]}),
            ),
        )
        .await
        .unwrap();
    assert!(vm.placement.is_none());
    let e =
        k.c.create_vm(
            &k.admin,
            create(
                "w5",
                serde_json::json!({"image": "tiny", "anti_affinity": "Bad Group"}),
            ),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("anti_affinity"), "{e}");
}

#[tokio::test]
async fn a_running_vm_migrates_and_the_database_follows_it() {
    let k = Cluster::new(2).await;
    k.tiny().await;
    k.c.create_vm(&k.admin, create("m1", serde_json::json!({"image": "tiny"})))
        .await
        .unwrap();
    let from = k.c.store.vm_by_name("m1").await.unwrap().unwrap();
    let source = from.host_id.clone().unwrap();
    let target = k
        .sims
        .iter()
        .map(|s| s.name())
        .find(|n| *n != source)
        .unwrap();
    // Refused up front, each with its reason: not an admin, the same host, an unknown
    // host, a downtime out of range.
    let erin = k.user("erin").await;
    let ask = |to: Option<&str>| MigrateRequest {
        to: to.map(String::from),
        ..Default::default()
    };
    assert!(k.c.migrate_vm(&erin, "m1", ask(None)).await.is_err());
    let e =
        k.c.migrate_vm(&k.admin, "m1", ask(Some(&source)))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("already"), "{e}");
    let e =
        k.c.migrate_vm(&k.admin, "m1", ask(Some("nosuch")))
            .await
            .unwrap_err();
    assert!(matches!(e, Error::NotFound { kind: "host", .. }), "{e:?}");
    let slow = MigrateRequest {
        max_downtime_ms: Some(0),
        ..Default::default()
    };
    let e = k.c.migrate_vm(&k.admin, "m1", slow).await.unwrap_err();
    assert!(e.to_string().contains("downtime"), "{e}");
    // Placement's choice: the other host; the task ends with the downtime.
    let t = k.c.migrate_vm(&k.admin, "m1", ask(None)).await.unwrap();
    k.task_end(&t.id).await.unwrap();
    let done = k.c.task(&k.admin, &t.id).await.unwrap();
    assert!(done.message.contains("ms downtime"), "{}", done.message);
    assert!(done.message.contains(", encrypted"), "{}", done.message);
    assert!(
        k.c.store.moves().await.unwrap().is_empty(),
        "the journal row goes when the migration ends"
    );
    // Only a migration under way is cancelled, and only by an admin.
    let e = k.c.cancel_task(&k.admin, &t.id).await.unwrap_err();
    assert!(e.to_string().contains("has ended"), "{e}");
    assert!(k.c.cancel_task(&erin, &t.id).await.is_err());
    let vm = k.c.store.vm_by_name("m1").await.unwrap().unwrap();
    assert_eq!(vm.host_id.as_deref(), Some(target.as_str()));
    assert_eq!(vm.state, VmState::Running);
    // The source's agent no longer has the VM; an event from it is not written.
    let src = k.sims.iter().find(|s| s.name() == source).unwrap();
    assert!(src.list_vms().await.unwrap().iter().all(|s| s.id != vm.id));
    // A VM with a disk: the disk gets a new file on the target, the source's goes.
    k.c.create_vm(
        &k.admin,
        create("m3", serde_json::json!({"image": "tiny", "disk_mib": 1024})),
    )
    .await
    .unwrap();
    let m3 = k.c.store.vm_by_name("m3").await.unwrap().unwrap();
    let old = k.c.store.disks_of(&m3.id).await.unwrap().remove(0);
    let from3 = m3.host_id.clone().unwrap();
    let t = k.c.migrate_vm(&k.admin, "m3", ask(None)).await.unwrap();
    k.task_end(&t.id).await.unwrap();
    let m3 = k.c.store.vm_by_name("m3").await.unwrap().unwrap();
    assert_ne!(m3.host_id.as_deref(), Some(from3.as_str()));
    let new = k.c.store.disks_of(&m3.id).await.unwrap().remove(0);
    let sim_of = |h: &str| k.sims.iter().find(|s| s.name() == h).unwrap().clone();
    assert!(sim_of(m3.host_id.as_deref().unwrap())
        .disk_files()
        .contains(&new.path));
    assert!(!sim_of(&from3).disk_files().contains(&old.path));
    // Its disk was mirrored: one multifd stream of memory, no post-copy (a mirror must
    // end before the switch-over). Memory alone (m1) may end in post-copy, unless the
    // admin says no.
    let caps = sim_of(&from3).sent_capabilities();
    assert!(
        caps.contains(&"multifd".to_string()) && !caps.contains(&"postcopy-ram".to_string()),
        "{caps:?}"
    );
    let m1 = k.c.store.vm_by_name("m1").await.unwrap().unwrap();
    let back = |no_postcopy| MigrateRequest {
        to: Some(source.clone()),
        no_postcopy,
        ..Default::default()
    };
    let t = k.c.migrate_vm(&k.admin, "m1", back(false)).await.unwrap();
    k.task_end(&t.id).await.unwrap();
    let caps = sim_of(&target).sent_capabilities();
    assert!(
        caps.contains(&"postcopy-ram".to_string()) && !caps.contains(&"multifd".to_string()),
        "{caps:?}"
    );
    let t =
        k.c.migrate_vm(
            &k.admin,
            "m1",
            MigrateRequest {
                to: Some(target.clone()),
                no_postcopy: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    k.task_end(&t.id).await.unwrap();
    let caps = sim_of(&source).sent_capabilities();
    assert!(!caps.contains(&"postcopy-ram".to_string()), "{caps:?}");
    assert_eq!(
        k.c.store.vm_by_name("m1").await.unwrap().unwrap().host_id,
        m1.host_id
    );
    // Snapshots do not move: refused, with what to do. A stopped VM does not migrate live.
    k.c.create_snapshot(
        &k.admin,
        "m3",
        CreateSnapshotRequest {
            name: Some("s1".into()),
            memory: false,
        },
    )
    .await
    .unwrap();
    let e = k.c.migrate_vm(&k.admin, "m3", ask(None)).await.unwrap_err();
    assert!(e.to_string().contains("snapshots"), "{e}");
    k.c.simple_action(&k.admin, "m1", Op::Destroy)
        .await
        .unwrap();
    let e = k.c.migrate_vm(&k.admin, "m1", ask(None)).await.unwrap_err();
    assert!(e.to_string().contains("only a running or paused"), "{e}");
}

#[tokio::test]
async fn vms_are_pinned_to_a_machine_type_and_cpu_model_and_move_only_where_both_exist() {
    // One host: a new VM gets all its host offers (`host`), pinned to its `q35`.
    let one = Cluster::new(1).await;
    one.tiny().await;
    let v = one
        .c
        .create_vm(
            &one.admin,
            create("solo", serde_json::json!({"image": "tiny"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (v.qemu.cpu_model.as_str(), v.qemu.machine.as_str()),
        ("host", "pc-q35-10.0")
    );
    // More hosts: the cluster baseline, a named model every host runs.
    let k = Cluster::new(2).await;
    k.tiny().await;
    let v =
        k.c.create_vm(&k.admin, create("p1", serde_json::json!({"image": "tiny"})))
            .await
            .unwrap();
    assert_eq!(v.qemu.cpu_model, hostel_model::CPU_BASELINE);
    assert_eq!(v.qemu.machine, "pc-q35-10.0");
    // A model the host does not run in full is refused at create, with the choices.
    let e =
        k.c.create_vm(
            &k.admin,
            create(
                "p2",
                serde_json::json!({"image": "tiny", "cpu_model": "Skylake-Client-v4"}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("does not run CPU model") && e.to_string().contains("Nehalem-v1"),
        "{e}"
    );
    let e =
        k.c.create_vm(
            &k.admin,
            create(
                "p2",
                serde_json::json!({"image": "tiny", "cpu_model": "a b"}),
            ),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a CPU model"), "{e}");
    assert!(k.c.store.vm_by_name("p2").await.unwrap().is_none());
    // The CPU model changes only while the VM is stopped.
    let e =
        k.c.set_cpu_model(
            &k.admin,
            "p1",
            SetCpuModelRequest {
                cpu_model: "Nehalem-v1".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("only while it is stopped"), "{e}");
    // The other host's QEMU is older: it has neither the VM's machine type nor model.
    let p1 = k.c.store.vm_by_name("p1").await.unwrap().unwrap();
    let source = p1.host_id.clone().unwrap();
    let other = k
        .sims
        .iter()
        .map(|s| s.name())
        .find(|n| *n != source)
        .unwrap();
    let mut old = k.c.store.host(&other).await.unwrap().unwrap();
    old.qemu_version = "9.2.0".into();
    old.platform.machine = "pc-q35-9.2".into();
    old.platform.machines = vec!["pc-q35-9.2".into()];
    old.platform.cpu_models = vec!["Nehalem-v1".into()];
    k.c.store.upsert_host(&old).await.unwrap();
    let to = |h: &str| MigrateRequest {
        to: Some(h.into()),
        ..Default::default()
    };
    let e =
        k.c.migrate_vm(&k.admin, "p1", to(&other))
            .await
            .unwrap_err();
    assert!(
        e.to_string().contains("pinned to machine type pc-q35-10.0"),
        "{e}"
    );
    // Placement's choice leaves it out, and says why.
    let e =
        k.c.migrate_vm(&k.admin, "p1", MigrateRequest::default())
            .await
            .unwrap_err();
    assert!(e.to_string().contains("does not have"), "{e}");
    // With the machine type there but not the model, the model is what is refused.
    old.platform.machines.push("pc-q35-10.0".into());
    k.c.store.upsert_host(&old).await.unwrap();
    let e =
        k.c.migrate_vm(&k.admin, "p1", to(&other))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("CPU model Westmere-v1"), "{e}");
    // A VM on `host` moves live only between hosts with the same CPU and QEMU.
    k.c.simple_action(&k.admin, "p1", Op::Destroy)
        .await
        .unwrap();
    let v =
        k.c.set_cpu_model(
            &k.admin,
            "p1",
            SetCpuModelRequest {
                cpu_model: "host".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(v.qemu.cpu_model, "host");
    k.c.start_vm(&k.admin, "p1").await.unwrap();
    let e =
        k.c.migrate_vm(&k.admin, "p1", to(&other))
            .await
            .unwrap_err();
    assert!(
        e.to_string().contains("CPU model `host`") && e.to_string().contains("9.2.0"),
        "{e}"
    );
    // Once the hosts match again, it moves.
    old.qemu_version = "simulated".into();
    k.c.store.upsert_host(&old).await.unwrap();
    let t = k.c.migrate_vm(&k.admin, "p1", to(&other)).await.unwrap();
    k.task_end(&t.id).await.unwrap();
    let p1 = k.c.store.vm_by_name("p1").await.unwrap().unwrap();
    assert_eq!(p1.host_id.as_deref(), Some(other.as_str()));
    assert_eq!(
        p1.machine.as_deref(),
        Some("pc-q35-10.0"),
        "the pin moves with it"
    );
    // A VM recorded before pinning runs `q35` and `host` as before, and is pinned to
    // its host's machine type when it next starts from cold.
    let legacy = hostel_store::VmRecord {
        id: hostel_store::new_id("vm"),
        name: "legacy".into(),
        state: VmState::Stopped,
        machine: None,
        cpu_model: None,
        guest_agent: false,
        pid: None,
        ..p1.clone()
    };
    k.c.store.insert_vm(&legacy, &[]).await.unwrap();
    k.c.start_vm(&k.admin, "legacy").await.unwrap();
    let pinned = k.c.store.vm_by_name("legacy").await.unwrap().unwrap();
    assert_eq!(
        (pinned.machine.as_deref(), pinned.cpu_model.as_deref()),
        (Some("pc-q35-9.2"), Some("host"))
    );
}

#[tokio::test]
async fn a_drained_host_gets_no_vms_and_its_vms_come_back_when_undrained() {
    let k = Cluster::new(2).await;
    k.tiny().await;
    let (a, b) = (k.sims[0].name(), k.sims[1].name());
    k.c.set_host(
        &k.admin,
        &a,
        SetHostRequest {
            tags: vec!["a".into()],
        },
    )
    .await
    .unwrap();
    // Three VMs on host a: two running, one stopped without disks; and one stopped with
    // a disk, which cannot move while stopped.
    for (n, extra) in [
        ("d1", serde_json::json!({})),
        ("d2", serde_json::json!({})),
        ("d3", serde_json::json!({"start": false})),
        ("d4", serde_json::json!({"start": false, "disk_mib": 1024})),
    ] {
        let mut v = serde_json::json!({"image": "tiny", "host_tags": ["a"]});
        for (key, x) in extra.as_object().unwrap() {
            v[key] = x.clone();
        }
        k.c.create_vm(&k.admin, create(n, v)).await.unwrap();
    }
    let on = |n: &'static str| {
        let c = k.c.clone();
        async move {
            c.store
                .vm_by_name(n)
                .await
                .unwrap()
                .unwrap()
                .host_id
                .unwrap()
        }
    };
    let erin = k.user("erin").await;
    assert!(k
        .c
        .drain_host(&erin, &a, DrainRequest::default())
        .await
        .is_err());
    let e =
        k.c.drain_host(&k.admin, "nosuch", DrainRequest::default())
            .await
            .unwrap_err();
    assert!(matches!(e, Error::NotFound { kind: "host", .. }), "{e:?}");
    let t =
        k.c.drain_host(
            &k.admin,
            &a,
            DrainRequest {
                concurrency: Some(2),
                allow_offline: false,
            },
        )
        .await
        .unwrap();
    // Without offline moves, d3 and d4 (stopped) stay: the task fails, naming them,
    // after moving the rest.
    let err = k.task_end(&t.id).await.unwrap_err();
    for n in ["d3", "d4"] {
        assert!(err.contains(&format!("{n}: stays:")), "{err}");
        assert_eq!(on(n).await, a);
    }
    for n in ["d1", "d2"] {
        assert_eq!(on(n).await, b, "{n} moved off {a}");
        assert!(err.contains(&format!("{n}: ")), "{n} is reported: {err}");
    }
    let hosts = k.c.list_hosts(&k.admin).await.unwrap();
    let ha = hosts.iter().find(|h| h.name == a).unwrap();
    assert_eq!(ha.drain, "draining", "VMs are left");
    // No new VM goes to a draining host, even one asking for its tag.
    let e =
        k.c.create_vm(
            &k.admin,
            create(
                "d5",
                serde_json::json!({"image": "tiny", "host_tags": ["a"]}),
            ),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("draining (no new VMs)"), "{e}");
    // With offline moves, the stopped ones go too, d4's disk copied to a new file on b
    // and its old file removed from a; a is drained.
    let d4 = k.c.store.vm_by_name("d4").await.unwrap().unwrap();
    let old = k.c.store.disks_of(&d4.id).await.unwrap().remove(0);
    let t =
        k.c.drain_host(
            &k.admin,
            &a,
            DrainRequest {
                concurrency: Some(2),
                allow_offline: true,
            },
        )
        .await
        .unwrap();
    k.task_end(&t.id).await.unwrap();
    for n in ["d3", "d4"] {
        assert_eq!(on(n).await, b, "{n} moved off {a}");
    }
    let new = k.c.store.disks_of(&d4.id).await.unwrap().remove(0);
    assert!(k.sims[1].disk_files().contains(&new.path));
    assert!(!k.sims[0].disk_files().contains(&old.path));
    let hosts = k.c.list_hosts(&k.admin).await.unwrap();
    assert_eq!(hosts.iter().find(|h| h.name == a).unwrap().drain, "drained");
    // Every move is in the audit trail.
    let trail = k.c.store.audit(&Default::default()).await.unwrap();
    let moves = trail.iter().filter(|r| r.action == "vm.migrate").count();
    assert!(moves >= 6, "{moves} vm.migrate entries");
    // Undrained with --return: the VMs it moved go back.
    let t =
        k.c.undrain_host(&k.admin, &a, UndrainRequest { return_vms: true })
            .await
            .unwrap();
    k.task_end(&t.id).await.unwrap();
    for n in ["d1", "d2", "d3", "d4"] {
        assert_eq!(on(n).await, a, "{n} came back");
    }
    let hosts = k.c.list_hosts(&k.admin).await.unwrap();
    assert_eq!(hosts.iter().find(|h| h.name == a).unwrap().drain, "");
}

#[tokio::test]
async fn rebalance_plans_even_moves_and_applies_them() {
    let k = Cluster::new(2).await;
    k.tiny().await;
    let (a, b) = (k.sims[0].name(), k.sims[1].name());
    k.c.set_host(
        &k.admin,
        &a,
        SetHostRequest {
            tags: vec!["a".into()],
        },
    )
    .await
    .unwrap();
    for i in 0..4 {
        k.c.create_vm(
            &k.admin,
            create(
                &format!("b{i}"),
                serde_json::json!({"image": "tiny", "host_tags": ["a"], "memory_mib": 1024}),
            ),
        )
        .await
        .unwrap();
    }
    let erin = k.user("erin").await;
    assert!(k
        .c
        .rebalance(&erin, RebalanceRequest::default())
        .await
        .is_err());
    let bad = RebalanceRequest {
        min_gain: Some(2.0),
        ..Default::default()
    };
    assert!(k.c.rebalance(&k.admin, bad).await.is_err());
    let dry = RebalanceRequest {
        dry_run: true,
        ..Default::default()
    };
    let p = k.c.rebalance(&k.admin, dry.clone()).await.unwrap();
    assert_eq!(p.moves.len(), 2, "{p:?}");
    assert!(p.task.is_none() && p.score_after < p.score_before, "{p:?}");
    assert!(p.moves.iter().all(|m| m.from == a && m.to == b));
    // Nothing moved on a dry run; applied, the plan's VMs move.
    let on_b = |c: Arc<Controller>, b: String| async move {
        let mut n = 0;
        for i in 0..4 {
            let v = c.store.vm_by_name(&format!("b{i}")).await.unwrap().unwrap();
            n += (v.host_id.as_deref() == Some(b.as_str())) as usize;
        }
        n
    };
    assert_eq!(on_b(k.c.clone(), b.clone()).await, 0);
    let p =
        k.c.rebalance(&k.admin, RebalanceRequest::default())
            .await
            .unwrap();
    let t = p.task.expect("applied");
    k.task_end(&t.id).await.unwrap();
    assert_eq!(on_b(k.c.clone(), b.clone()).await, 2);
    // Even now: nothing more to do.
    let again = k.c.rebalance(&k.admin, dry).await.unwrap();
    assert!(again.moves.is_empty(), "{again:?}");
}

/// Migrations a dead controller left in the journal are settled by the next one from
/// what both hosts' QEMU say: one whose stream completed goes forward (the database
/// moves the VM), one that had not is undone (the VM stays, the target's copy goes).
#[tokio::test]
async fn migrations_left_in_the_journal_are_settled_at_start() {
    let k = Cluster::new(2).await;
    k.tiny().await;
    k.c.set_host(
        &k.admin,
        &k.sims[0].name(),
        SetHostRequest {
            tags: vec!["a".into()],
        },
    )
    .await
    .unwrap();
    for n in ["done", "undone"] {
        k.c.create_vm(
            &k.admin,
            create(n, serde_json::json!({"image": "tiny", "host_tags": ["a"]})),
        )
        .await
        .unwrap();
    }
    let (a, b) = (&k.sims[0], &k.sims[1]);
    let row = |vm: &hostel_store::VmRecord, step: &str| hostel_store::MoveRecord {
        id: hostel_store::new_id("task"),
        vm_id: vm.id.clone(),
        source: a.name(),
        target: b.name(),
        memory_mib: vm.max_memory_mib,
        step: step.into(),
        was_running: true,
        disks: "[]".into(),
        started_at: hostel_store::now(),
        updated_at: hostel_store::now(),
        // Left by an earlier life of the controller.
        owner: None,
    };
    let done = k.c.store.vm_by_name("done").await.unwrap().unwrap();
    let undone = k.c.store.vm_by_name("undone").await.unwrap().unwrap();
    assert_eq!(done.host_id.as_deref(), Some(a.name().as_str()));
    // "done": both QEMUs went through the migration while no controller watched.
    let spec = hostel_api::agent::VmSpec {
        name: done.name.clone(),
        ..common::spec(&done.id)
    };
    b.migrate_in(
        &done.id,
        hostel_api::agent::MigrateInRequest {
            spec,
            listen: "127.0.0.1".into(),
            capabilities: vec![],
            export_disks: false,
            shared_disks: vec![],
            tls: None,
        },
    )
    .await
    .unwrap();
    let mut lines = a
        .migrate_out(hostel_api::agent::MigrateOutRequest {
            vm_id: done.id.clone(),
            uri: "tcp:127.0.0.1:1".into(),
            capabilities: vec![],
            max_downtime_ms: 300,
            bandwidth_mibps: None,
            force_complete: false,
            stall_secs: 10,
            mirror: None,
            tls: None,
        })
        .await
        .unwrap();
    while futures::StreamExt::next(&mut lines).await.is_some() {}
    let rows = [row(&done, "switchover"), row(&undone, "memory")];
    for r in &rows {
        k.c.store.insert_move(r).await.unwrap();
    }
    k.c.resume_migrations().await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !k.c.store.moves().await.unwrap().is_empty() {
        assert!(Instant::now() < until, "the journal was not settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = k.c.store.vm_by_name("done").await.unwrap().unwrap();
    assert_eq!(done.host_id.as_deref(), Some(b.name().as_str()));
    assert!(a.list_vms().await.unwrap().iter().all(|s| s.id != done.id));
    let undone = k.c.store.vm_by_name("undone").await.unwrap().unwrap();
    assert_eq!(undone.host_id.as_deref(), Some(a.name().as_str()));
    assert_eq!(undone.state, VmState::Running);
    assert!(b
        .list_vms()
        .await
        .unwrap()
        .iter()
        .all(|s| s.id != undone.id));
}

/// A VM whose disk is in a shared pool runs on any host and migrates with its memory
/// only, live or offline: its disk stays the same file, and no host gets a copy.
#[tokio::test]
async fn a_vm_on_a_shared_pool_moves_without_its_disk() {
    let k = Cluster::new(2).await;
    k.tiny().await;
    let pool =
        k.c.create_pool(
            &k.admin,
            CreatePoolRequest {
                name: "nfs".into(),
                driver: "dir".into(),
                path: "/srv/nfs-pool".into(),
                host: Some(k.sims[0].name()),
                shared: true,
            },
        )
        .await
        .unwrap();
    assert!(pool.shared);
    k.c.create_vm(
        &k.admin,
        create(
            "s1",
            serde_json::json!({"image": "tiny", "disk_mib": 512, "pool": "nfs"}),
        ),
    )
    .await
    .unwrap();
    let vm = k.c.store.vm_by_name("s1").await.unwrap().unwrap();
    let disk = k.c.store.disks_of(&vm.id).await.unwrap().remove(0);
    let from = vm.host_id.clone().unwrap();
    let sim_of = |h: &str| k.sims.iter().find(|s| s.name() == h).unwrap().clone();
    let ask = MigrateRequest::default();
    let t = k.c.migrate_vm(&k.admin, "s1", ask.clone()).await.unwrap();
    k.task_end(&t.id).await.unwrap();
    let vm = k.c.store.vm_by_name("s1").await.unwrap().unwrap();
    let to = vm.host_id.clone().unwrap();
    assert_ne!(to, from);
    let after = k.c.store.disks_of(&vm.id).await.unwrap().remove(0);
    assert_eq!(after, disk, "the disk is the same file, in the same pool");
    assert!(
        sim_of(&from).disk_files().contains(&disk.path),
        "the shared file was not removed"
    );
    assert!(
        !sim_of(&to).disk_files().contains(&disk.path),
        "no copy made"
    );
    // Offline too.
    k.c.simple_action(&k.admin, "s1", Op::Destroy)
        .await
        .unwrap();
    let t =
        k.c.migrate_vm(
            &k.admin,
            "s1",
            MigrateRequest {
                offline: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    k.task_end(&t.id).await.unwrap();
    let done = k.c.task(&k.admin, &t.id).await.unwrap();
    assert!(
        done.message.contains("1 on shared storage"),
        "{}",
        done.message
    );
    let vm = k.c.store.vm_by_name("s1").await.unwrap().unwrap();
    assert_eq!(vm.host_id.as_deref(), Some(from.as_str()));
    assert_eq!(k.c.store.disks_of(&vm.id).await.unwrap().remove(0), disk);
}

/// A restore over a VM whose disks are not the backup's any more: its disks come back
/// at the indexes they had, even where the copies' own indexes were in the way (the
/// copies at 1, 2, 3 take 0, 3, 4: moved one by one, the second would meet the third).
#[tokio::test]
async fn a_restore_over_a_vm_puts_each_disk_back_at_its_index() {
    let k = Cluster::new(1).await;
    k.backup_target().await;
    let req = create(
        "r",
        serde_json::json!({"kernel": "/boot/vmlinuz", "memory_mib": 256, "disk_mib": 64, "start": false}),
    );
    k.c.create_vm(&k.admin, req).await.unwrap();
    for _ in 0..4 {
        let add: AddDiskRequest =
            serde_json::from_value(serde_json::json!({"size_mib": 8})).unwrap();
        k.c.add_disk(&k.admin, "r", add).await.unwrap();
    }
    for i in [1, 2] {
        k.c.remove_disk(&k.admin, "r", i).await.unwrap();
    }
    let backup = k.backed_up("r").await;
    for i in [3, 4] {
        k.c.remove_disk(&k.admin, "r", i).await.unwrap();
    }
    let restore = RestoreBackupRequest {
        as_name: None,
        start: false,
    };
    let task =
        k.c.restore_backup(&k.admin, &backup, restore)
            .await
            .unwrap();
    k.task_end(&task.id).await.unwrap();
    let disks = k.c.disk_views(&k.admin, "r").await.unwrap();
    let at: Vec<u32> = disks.iter().map(|d| d.index).collect();
    assert_eq!(at, [0, 3, 4]);
}
