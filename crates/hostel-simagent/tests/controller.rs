//! The controller's logic without QEMU: a real controller (SQLite in a temporary
//! directory) drives SIMULATED hosts served in this process through the real agent router
//! and the real client, over mutual TLS. Create and its rollback, placement, quotas,
//! leases, ownership and refusals are checked here in milliseconds; the real-QEMU
//! integration tests in `crates/hostel/tests` check the same paths on real guests.

mod common;

use common::{certs, serve_sim, Certs};
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
    let trail =
        k.c.audit(&dan, Some("l1".into()), None, None)
            .await
            .unwrap();
    assert!(
        trail.iter().any(|e| e.action == "vm.shutdown"
            && e.user.as_deref() == Some("system:lease-reaper")
            && e.result == "ok"),
        "{trail:?}"
    );
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
    let (frank_sees, _) = k.c.list_vms(&frank, 100, None, None, None).await.unwrap();
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
