//! Every body runs on SQLite and on a real PostgreSQL (started by `testing::PgServer`), so
//! that the one SQL code path really serves both. Long because the bodies share their
//! fixtures and the one PostgreSQL server; split by resource when it grows further.

use super::*;
use hostel_model::net::{NetMode, NetPolicy};
use hostel_model::{Accel, ImageKind, Policy, PoolDriver, TaskState, VmState};

mod typed;

use typed::*;

fn at(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/hostel.db", dir.path().display())
}

fn host() -> HostRecord {
    HostRecord {
        id: "host-1".into(),
        name: "h1".into(),
        url: "https://127.0.0.1:1".into(),
        cpus: 2,
        memory_mib: 1024,
        accel: Accel::Tcg,
        accel_reason: "test".into(),
        qemu_version: "10.0.2".into(),
        kernel: "6.1".into(),
        last_seen: now(),
        tags: Vec::new(),
        drain: String::new(),
        platform: hostel_model::Platform {
            machine: "pc-q35-10.0".into(),
            machines: vec!["pc-q35-10.0".into()],
            cpu_models: vec!["Westmere-v1".into()],
            cpu_name: "test CPU".into(),
            postcopy: true,
        },
    }
}

fn vm(name: &str) -> VmRecord {
    VmRecord {
        id: new_id("vm"),
        name: name.into(),
        host_id: Some("host-1".into()),
        image_id: None,
        memory_mib: 256,
        max_memory_mib: 512,
        vcpus: 1,
        max_vcpus: 2,
        state: VmState::Stopped,
        state_reason: None,
        on_poweroff: Policy::Destroy,
        on_reboot: Policy::Restart,
        on_crash: Policy::Destroy,
        saved_path: None,
        pid: None,
        created_at: now(),
        updated_at: now(),
        cdrom_image_id: None,
        boot_json: Some(r#"{"firmware":"uefi"}"#.into()),
        cloud_json: None,
        owner_user_id: None,
        owner_group_id: None,
        admin_group_id: None,
        lease_expires_at: None,
        anti_affinity: None,
        machine: Some("pc-q35-10.0".into()),
        cpu_model: Some("Westmere-v1".into()),
        guest_agent: true,
    }
}

async fn vm_round_trip_and_unique_names(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let v = vm("web");
    let disk = DiskRecord {
        id: new_id("disk"),
        vm_id: v.id.clone(),
        idx: 0,
        path: "/x/d0.qcow2".into(),
        format: "qcow2".into(),
        size_mib: 100,
        image_id: None,
        pool_id: None,
    };
    s.insert_vm(&v, std::slice::from_ref(&disk)).await.unwrap();
    assert_eq!(s.vm_by_name("web").await.unwrap().unwrap(), v);
    assert_eq!(s.disks_of(&v.id).await.unwrap(), vec![disk.clone()]);

    let dup = s.insert_vm(&vm("web"), &[]).await.unwrap_err();
    assert!(is_unique_violation(&dup), "{dup:#}");

    s.set_vm_state(&v.id, VmState::Running, Some("why"), Some(42))
        .await
        .unwrap();
    let got = s.vm_by_id(&v.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.pid), (VmState::Running, Some(42)));

    // A failed insert of a VM whose disk path clashes leaves no VM row behind.
    let other = vm("other");
    let clash = DiskRecord {
        vm_id: other.id.clone(),
        id: new_id("disk"),
        ..disk
    };
    assert!(s.insert_vm(&other, &[clash]).await.is_err());
    assert!(s.vm_by_name("other").await.unwrap().is_none());

    let mut op = new_op("start", "web");
    op.vm_id = Some(v.id.clone());
    s.begin_operation(&op).await.unwrap();
    let mut interrupted = new_op("delete", "web");
    interrupted.owner = Some("ctl-1".into());
    s.begin_operation(&interrupted).await.unwrap();
    s.operation_step(&interrupted.id, "host-forgot", Some("{\"x\":1}"))
        .await
        .unwrap();
    s.finish_operation(&op.id, None).await.unwrap();
    assert_eq!(
        s.operations(&v.id).await.unwrap()[0].state,
        TaskState::Succeeded
    );
    let running = s.running_operations().await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].step, "host-forgot");
    assert_eq!(running[0].intent, "{\"x\":1}");
    assert_eq!(running[0].owner.as_deref(), Some("ctl-1"));
    // Released (its host was away): still running, no owner, why it stopped said.
    s.release_operation(&interrupted.id, "host away")
        .await
        .unwrap();
    let running = s.running_operations().await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].owner, None);
    assert_eq!(running[0].error.as_deref(), Some("host away"));
    s.finish_operation(&interrupted.id, Some("interrupted"))
        .await
        .unwrap();
    // An end once recorded stays.
    s.finish_operation(&interrupted.id, None).await.unwrap();
    let failed = s
        .list_operations(&crate::OperationFilter {
            state: Some(TaskState::Failed),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_deref(), Some("interrupted"));

    s.delete_vm(&v.id).await.unwrap();
    assert!(s.vm_by_name("web").await.unwrap().is_none());
    assert!(s.all_disks().await.unwrap().is_empty());
    // The journal outlives the VM.
    assert_eq!(s.operations(&v.id).await.unwrap().len(), 1);
}

async fn images_in_use_cannot_be_deleted(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let img = ImageRecord {
        id: new_id("img"),
        name: "tiny".into(),
        kind: ImageKind::DirectKernel,
        format: "kernel".into(),
        path: "/i/vmlinuz".into(),
        initrd: Some("/i/initrd".into()),
        cmdline: Some("console=ttyS0".into()),
        size_bytes: 10,
        virtual_size_mib: 0,
        sha256: "ab".into(),
        host_id: "host-1".into(),
        created_at: now(),
    };
    s.insert_image(&img).await.unwrap();
    let mut v = vm("a");
    v.image_id = Some(img.id.clone());
    s.insert_vm(&v, &[]).await.unwrap();
    assert_eq!(
        s.delete_image_if_unused(&img.id).await.unwrap(),
        vec!["a".to_string()]
    );
    // An image in a VM's CD-ROM drive is in use too.
    let mut cd = vm("cd");
    cd.cdrom_image_id = Some(img.id.clone());
    s.insert_vm(&cd, &[]).await.unwrap();
    assert_eq!(s.vm_by_name("cd").await.unwrap().unwrap(), cd);
    s.delete_vm(&v.id).await.unwrap();
    assert_eq!(
        s.delete_image_if_unused(&img.id).await.unwrap(),
        vec!["cd".to_string()]
    );
    let v = cd;
    assert!(s.image_by_name("tiny").await.unwrap().is_some());
    s.delete_vm(&v.id).await.unwrap();
    assert!(s.delete_image_if_unused(&img.id).await.unwrap().is_empty());
    assert!(s.image_by_name("tiny").await.unwrap().is_none());
}

async fn migrations_are_idempotent_and_tasks_survive(url: &str) {
    let s = Store::open(url).await.unwrap();
    let t = TaskRecord {
        id: "task-1".into(),
        kind: "image-build".into(),
        target: "tiny".into(),
        state: TaskState::Running,
        progress: 0.5,
        message: "half".into(),
        error: None,
        created_at: now(),
        updated_at: now(),
        created_by: Some("user-1".into()),
        owner: Some("ctl-a".into()),
    };
    s.insert_task(&t).await.unwrap();
    drop(s);
    let s = Store::open(url).await.unwrap();
    assert_eq!(s.fail_interrupted_tasks().await.unwrap(), 1);
    let got = s.task("task-1").await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Failed);
    assert!(got.error.unwrap().contains("interrupted"));
    assert_eq!(got.created_by.as_deref(), Some("user-1"));
}

/// What controllers share besides records: a console ticket is spent once, by whichever
/// controller asks first, and not after it expired; a dead controller's running tasks
/// fail, a live one's do not.
async fn tickets_and_orphan_tasks(url: &str) {
    let s = Store::open(url).await.unwrap();
    let ticket = |hash: &str, secs: i64| crate::cluster::ConsoleTicketRecord {
        secret_hash: hash.into(),
        vm_id: "vm-1".into(),
        vm_name: "web".into(),
        console: "serial".into(),
        caller: r#"{"user_id":"u"}"#.into(),
        expires_at: now() + time::Duration::seconds(secs),
    };
    s.insert_console_ticket(&ticket("h1", 30)).await.unwrap();
    s.insert_console_ticket(&ticket("old", -1)).await.unwrap();
    assert_eq!(
        s.take_console_ticket("h1").await.unwrap().unwrap().vm_name,
        "web"
    );
    assert_eq!(s.take_console_ticket("h1").await.unwrap(), None, "spent");
    assert_eq!(s.take_console_ticket("old").await.unwrap(), None, "expired");
    assert_eq!(s.take_console_ticket("nope").await.unwrap(), None);

    let task = |id: &str, owner: Option<&str>| TaskRecord {
        id: id.into(),
        kind: "image-build".into(),
        target: "tiny".into(),
        state: TaskState::Running,
        progress: 0.0,
        message: "".into(),
        error: None,
        created_at: now(),
        updated_at: now(),
        created_by: None,
        owner: owner.map(String::from),
    };
    s.insert_task(&task("t-live", Some("ctl-a"))).await.unwrap();
    s.insert_task(&task("t-dead", Some("ctl-b"))).await.unwrap();
    s.insert_task(&task("t-none", None)).await.unwrap();
    assert_eq!(s.fail_orphan_tasks(&["ctl-a".into()]).await.unwrap(), 2);
    assert_eq!(
        s.task("t-live").await.unwrap().unwrap().state,
        TaskState::Running
    );
    let dead = s.task("t-dead").await.unwrap().unwrap();
    assert_eq!(dead.state, TaskState::Failed);
    assert!(dead.error.unwrap().contains("controller ctl-b stopped"));
    assert_eq!(s.fail_orphan_tasks(&["ctl-a".into()]).await.unwrap(), 0);
}

async fn settings_and_audit_retention(url: &str) {
    let s = Store::open(url).await.unwrap();
    assert_eq!(s.setting("audit.retention_days").await.unwrap(), None);
    s.set_setting("audit.retention_days", Some("30"))
        .await
        .unwrap();
    s.set_setting("audit.retention_days", Some("7"))
        .await
        .unwrap();
    assert_eq!(
        s.setting("audit.retention_days").await.unwrap().as_deref(),
        Some("7")
    );
    s.set_setting("audit.retention_days", None).await.unwrap();
    assert_eq!(s.setting("audit.retention_days").await.unwrap(), None);

    // Same second, with and without a fraction: compared as times, not as text.
    for (id, when) in [
        ("b", "2026-01-01T00:00:05.5Z"),
        ("a", "2026-01-01T00:00:05Z"),
        ("c", "2026-01-01T00:00:06Z"),
        ("d", "2026-02-01T00:00:00Z"),
    ] {
        s.insert_audit(&AuditRecord {
            id: id.into(),
            at: at(when),
            user_name: None,
            source: "127.0.0.1".into(),
            action: "vm.start".into(),
            target: None,
            vm_id: None,
            params: None,
            result: "ok".into(),
            error: None,
        })
        .await
        .unwrap();
    }
    let old = s
        .audit_before(at("2026-01-01T00:00:05.7Z"), 100)
        .await
        .unwrap();
    assert_eq!(
        old.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    // A batch is of the oldest seconds (within one second, in no set order).
    let first = s.audit_before(at("2026-03-01T00:00:00Z"), 2).await.unwrap();
    assert_eq!(
        first.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(s.delete_audit(&["a".into(), "b".into()]).await.unwrap(), 2);
    assert_eq!(s.audit_count().await.unwrap(), 2);
}

fn lab_network() -> NetworkRecord {
    NetworkRecord {
        id: new_id("net"),
        name: "lab".into(),
        cidr: "10.1.0.0/24".into(),
        gateway: "10.1.0.1".into(),
        mode: NetMode::Nat,
        uplink: None,
        domain: Some("lab.test".into()),
        ipv6_prefix: None,
        created_at: now(),
        dns_forward: Some("10.0.0.53".into()),
        policy: NetPolicy {
            host_ports: vec!["tcp/22".into()],
            links: vec![],
            allow_to: vec!["192.168.1.0/24".into()],
            attach: vec!["alice".into()],
        },
    }
}

async fn networks_nics_and_forwards(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let net = lab_network();
    s.insert_network(&net).await.unwrap();
    assert_eq!(s.network_by_name("lab").await.unwrap().unwrap(), net);
    let linked = NetPolicy {
        links: vec!["net-other".into()],
        ..NetPolicy::default()
    };
    s.set_network_policy(&net.id, &linked).await.unwrap();
    assert_eq!(
        s.network_by_id(&net.id).await.unwrap().unwrap().policy,
        linked,
        "a policy is replaced whole"
    );
    s.set_network_policy(&net.id, &net.policy).await.unwrap();
    let v = vm("a");
    s.insert_vm(&v, &[]).await.unwrap();
    let nic = NicRecord {
        id: new_id("nic"),
        vm_id: v.id.clone(),
        network_id: net.id.clone(),
        idx: 0,
        mac: "52:54:00:00:00:01".into(),
        ip: "10.1.0.2".into(),
        ipv6: None,
    };
    s.insert_nic(&nic).await.unwrap();
    let same_ip = NicRecord {
        id: new_id("nic"),
        idx: 1,
        mac: "52:54:00:00:00:02".into(),
        ..nic.clone()
    };
    assert!(is_unique_violation(
        &s.insert_nic(&same_ip).await.unwrap_err()
    ));
    let same_mac = NicRecord {
        id: new_id("nic"),
        idx: 1,
        ip: "10.1.0.3".into(),
        ..nic.clone()
    };
    assert!(is_unique_violation(
        &s.insert_nic(&same_mac).await.unwrap_err()
    ));
    let fwd = ForwardRecord {
        id: new_id("fwd"),
        vm_id: v.id.clone(),
        nic_id: nic.id.clone(),
        proto: "tcp".into(),
        host_port: 8080,
        guest_port: 80,
    };
    // Each write to a VM's parts tells the VM's followers (the live views).
    let mut changes = s.follow_vm_changes();
    s.insert_forward(&fwd).await.unwrap();
    assert_eq!(s.forwards().await.unwrap(), vec![fwd.clone()]);
    s.delete_forward(&fwd.id).await.unwrap();
    s.insert_forward(&fwd).await.unwrap();
    for _ in 0..3 {
        assert_eq!(changes.try_recv().unwrap(), v.id, "a forward's VM is told");
    }
    assert!(changes.try_recv().is_err());
    assert_eq!(
        s.delete_network_if_unused(&net.id).await.unwrap(),
        vec!["a".to_string()]
    );
    s.delete_vm(&v.id).await.unwrap();
    assert!(s.all_nics().await.unwrap().is_empty() && s.forwards().await.unwrap().is_empty());
    assert!(s
        .delete_network_if_unused(&net.id)
        .await
        .unwrap()
        .is_empty());
    assert!(s.networks().await.unwrap().is_empty());
}

async fn pools_in_use_cannot_be_deleted(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let p = PoolRecord {
        id: new_id("pool"),
        name: "fast".into(),
        driver: PoolDriver::Btrfs,
        path: "/srv/fast".into(),
        host_id: "host-1".into(),
        created_at: now(),
        shared: false,
    };
    s.insert_pool(&p).await.unwrap();
    assert_eq!(s.pool_by_name("fast").await.unwrap().unwrap(), p);
    let same_path = PoolRecord {
        id: new_id("pool"),
        name: "other".into(),
        ..p.clone()
    };
    assert!(is_unique_violation(
        &s.insert_pool(&same_path).await.unwrap_err()
    ));
    let v = vm("a");
    let disk = DiskRecord {
        id: new_id("disk"),
        vm_id: v.id.clone(),
        idx: 0,
        path: "/srv/fast/a-0/disk.raw".into(),
        format: "raw".into(),
        size_mib: 100,
        image_id: None,
        pool_id: Some(p.id.clone()),
    };
    s.insert_vm(&v, std::slice::from_ref(&disk)).await.unwrap();
    assert_eq!(s.disks_of(&v.id).await.unwrap(), vec![disk]);
    assert_eq!(
        s.delete_pool_if_unused(&p.id).await.unwrap(),
        vec!["a".to_string()]
    );
    s.delete_vm(&v.id).await.unwrap();
    assert!(s.delete_pool_if_unused(&p.id).await.unwrap().is_empty());
    assert!(s.pools().await.unwrap().is_empty());
}

async fn accounts_tokens_and_audit(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let u = UserRecord {
        id: new_id("user"),
        name: "alice".into(),
        password_hash: Some("$argon2id$x".into()),
        is_admin: false,
        created_at: now(),
    };
    s.insert_user(&u).await.unwrap();
    assert_eq!(s.user_by_name("alice").await.unwrap().unwrap(), u);
    let dup = UserRecord {
        id: new_id("user"),
        ..u.clone()
    };
    assert!(is_unique_violation(&s.insert_user(&dup).await.unwrap_err()));
    let g = GroupRecord {
        id: new_id("grp"),
        name: "lab".into(),
        created_at: now(),
    };
    s.insert_group(&g).await.unwrap();
    s.add_member(&g.id, &u.id).await.unwrap();
    assert!(is_unique_violation(
        &s.add_member(&g.id, &u.id).await.unwrap_err()
    ));
    assert_eq!(s.group_ids_of(&u.id).await.unwrap(), vec![g.id.clone()]);
    assert_eq!(
        s.members_of(&g.id).await.unwrap(),
        vec!["alice".to_string()]
    );
    let t = TokenRecord {
        id: new_id("tok"),
        user_id: u.id.clone(),
        name: "cli".into(),
        secret_hash: "ab".repeat(32),
        read_only: true,
        expires_at: Some(at("2030-01-01T00:00:00Z")),
        revoked_at: None,
        created_at: now(),
        last_used_at: None,
        session: None,
    };
    s.insert_token(&t).await.unwrap();
    s.revoke_token(&t.id, at("2026-01-01T00:00:00Z"))
        .await
        .unwrap();
    let got = s.token_by_id(&t.id).await.unwrap().unwrap();
    assert_eq!(got.revoked_at, Some(at("2026-01-01T00:00:00Z")));
    assert!(got.read_only);

    let mut v = vm("owned");
    v.owner_user_id = Some(u.id.clone());
    v.admin_group_id = Some(g.id.clone());
    s.insert_vm(&v, &[]).await.unwrap();
    assert_eq!(s.vm_by_name("owned").await.unwrap().unwrap(), v);
    assert_eq!(
        s.delete_user_if_unused(&u.id).await.unwrap(),
        vec!["owned".to_string()]
    );
    assert_eq!(
        s.delete_group_if_unused(&g.id).await.unwrap(),
        vec!["owned".to_string()]
    );

    for (i, who) in ["alice", "bob", "alice"].iter().enumerate() {
        s.insert_audit(&AuditRecord {
            id: format!("a{i}"),
            at: at(&format!("2026-01-0{}T00:00:00Z", i + 1)),
            user_name: Some(who.to_string()),
            source: "127.0.0.1".into(),
            action: "start".into(),
            target: Some("owned".into()),
            vm_id: Some(if i == 1 { "other".into() } else { v.id.clone() }),
            params: (i == 0).then(|| r#"{"memory_mib":512}"#.to_string()),
            result: "ok".into(),
            error: None,
        })
        .await
        .unwrap();
    }
    let alice = s
        .audit(&AuditFilter {
            user_name: Some("alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        alice.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["a0", "a2"]
    );
    assert_eq!(alice[0].params.as_deref(), Some(r#"{"memory_mib":512}"#));
    assert_eq!(alice[1].params, None);
    let since = s
        .audit(&AuditFilter {
            since: Some("2026-01-02T00:00:00Z".into()),
            vm_ids: Some(vec![v.id.clone()]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].id, "a2");
}

async fn only_ended_leases_are_listed(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let mut ended = vm("ended");
    ended.lease_expires_at = Some(at("2026-01-01T00:00:00Z"));
    let mut later = vm("later");
    later.lease_expires_at = Some(at("2027-01-01T00:00:00Z"));
    for v in [&ended, &later, &vm("none")] {
        s.insert_vm(v, &[]).await.unwrap();
    }
    let got = s.vms_lease_ended(at("2026-06-01T00:00:00Z")).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "ended");
    assert_eq!(
        s.vms_lease_ended(at("2028-01-01T00:00:00Z"))
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn memory_per_host_and_what_an_owner_has(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let alice = "user-alice";
    s.insert_user(&UserRecord {
        id: alice.into(),
        name: "alice".into(),
        password_hash: None,
        is_admin: false,
        created_at: now(),
    })
    .await
    .unwrap();
    s.insert_group(&GroupRecord {
        id: "grp-1".into(),
        name: "lab".into(),
        created_at: now(),
    })
    .await
    .unwrap();
    let mut a = vm("a");
    a.state = VmState::Running;
    a.owner_user_id = Some(alice.into());
    let mut b = vm("b");
    b.state = VmState::Paused;
    let mut c = vm("c");
    c.owner_group_id = Some("grp-1".into());
    let disk = |v: &VmRecord, mib| DiskRecord {
        id: new_id("disk"),
        vm_id: v.id.clone(),
        idx: 0,
        path: format!("/d/{}", v.name),
        format: "qcow2".into(),
        size_mib: mib,
        image_id: None,
        pool_id: None,
    };
    s.insert_vm(&a, &[disk(&a, 100)]).await.unwrap();
    s.insert_vm(&b, &[]).await.unwrap();
    s.insert_vm(&c, &[disk(&c, 7)]).await.unwrap();
    let m = s
        .memory_by_host(&[VmState::Running, VmState::Paused])
        .await
        .unwrap();
    assert_eq!(m, vec![("host-1".to_string(), 1024)]);
    assert!(s
        .memory_by_host(&[VmState::Starting])
        .await
        .unwrap()
        .is_empty());
    let usage = s
        .host_usage(&[VmState::Running, VmState::Paused], None)
        .await
        .unwrap();
    let want = HostUsage {
        vms: 3,
        live: 2,
        live_memory_mib: 1024,
    };
    assert_eq!(usage.get("host-1"), Some(&want));
    let one = s
        .host_usage(&[VmState::Running, VmState::Paused], Some("host-1"))
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert!(s
        .host_usage(&[VmState::Running], Some("nosuch"))
        .await
        .unwrap()
        .is_empty());
    let (vms, disks) = s.owned(Some(alice), None).await.unwrap();
    assert_eq!((vms.len(), vms[0].name.as_str()), (1, "a"));
    assert_eq!(disks.iter().map(|d| d.size_mib).sum::<u64>(), 100);
    let (vms, disks) = s.owned(None, Some("grp-1")).await.unwrap();
    assert_eq!((vms.len(), disks.len()), (1, 1));
    assert!(s.owned(None, None).await.unwrap().0.is_empty());
}

async fn vm_pages_filter_join_and_continue(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    s.upsert_host(&HostRecord {
        id: "host-2".into(),
        name: "h2".into(),
        ..host()
    })
    .await
    .unwrap();
    for (id, name) in [("user-a", "alice"), ("user-b", "bob")] {
        s.insert_user(&UserRecord {
            id: id.into(),
            name: name.into(),
            password_hash: None,
            is_admin: false,
            created_at: now(),
        })
        .await
        .unwrap();
    }
    for (id, name) in [("grp-lab", "lab"), ("grp-ops", "ops")] {
        s.insert_group(&GroupRecord {
            id: id.into(),
            name: name.into(),
            created_at: now(),
        })
        .await
        .unwrap();
    }
    let net = NetworkRecord {
        domain: Some("vm.test".into()),
        dns_forward: None,
        ..lab_network()
    };
    s.insert_network(&net).await.unwrap();
    // e: alice's; d: bob's, administered by lab; c: lab's; b: ops's; a: nobody's.
    let mut made = Vec::new();
    for (name, user, group, admin, host, state) in [
        ("e", Some("user-a"), None, None, "host-1", VmState::Running),
        (
            "d",
            Some("user-b"),
            None,
            Some("grp-lab"),
            "host-2",
            VmState::Stopped,
        ),
        ("c", None, Some("grp-lab"), None, "host-1", VmState::Stopped),
        ("b", None, Some("grp-ops"), None, "host-2", VmState::Running),
        ("a", None, None, None, "host-1", VmState::Stopped),
    ] {
        let mut v = vm(name);
        v.owner_user_id = user.map(Into::into);
        v.owner_group_id = group.map(Into::into);
        v.admin_group_id = admin.map(Into::into);
        v.host_id = Some(host.into());
        v.state = state;
        s.insert_vm(&v, &[]).await.unwrap();
        made.push(v);
    }
    // Two NICs on e, inserted out of order: the page lists them in NIC order.
    for (idx, ip) in [(1, "10.1.0.9"), (0, "10.1.0.3")] {
        s.insert_nic(&NicRecord {
            id: new_id("nic"),
            vm_id: made[0].id.clone(),
            network_id: net.id.clone(),
            idx,
            mac: format!("52:54:00:00:00:0{idx}"),
            ip: ip.into(),
            ipv6: None,
        })
        .await
        .unwrap();
    }
    let names =
        |rows: &[VmListRow]| -> Vec<String> { rows.iter().map(|r| r.vm.name.clone()).collect() };
    fn page(after: Option<&str>, limit: u32) -> VmPageQuery<'_> {
        VmPageQuery {
            after,
            limit,
            ..Default::default()
        }
    }
    // All of them, in pages of two, each page continuing after the last name.
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let rows = s.vms_page(&page(after.as_deref(), 2)).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 2);
        after = rows.last().map(|r| r.vm.name.clone());
        all.extend(names(&rows));
    }
    assert_eq!(all, ["a", "b", "c", "d", "e"]);
    let rows = s.vms_page(&page(Some("d"), 10)).await.unwrap();
    assert_eq!(rows.len(), 1);
    let e = &rows[0];
    assert_eq!(e.vm, made[0]);
    assert_eq!(e.owner_user.as_deref(), Some("alice"));
    assert_eq!(e.ips, ["10.1.0.3", "10.1.0.9"]);
    assert_eq!(e.dns_names, ["e.vm.test", "e.vm.test"]);
    // Searching names and addresses, and an owner's VMs, in the query itself.
    let find = |search: Option<&'static str>,
                user: Option<&'static str>,
                group: Option<&'static str>| VmPageQuery {
        search,
        owner_user_id: user,
        owner_group_id: group,
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        names(&s.vms_page(&find(Some("1.0.9"), None, None)).await.unwrap()),
        ["e"]
    );
    assert_eq!(
        names(&s.vms_page(&find(Some("d"), None, None)).await.unwrap()),
        ["d"]
    );
    // Case does not matter, on either database (SQLite's LIKE ignores it, PostgreSQL's
    // does not).
    assert_eq!(
        names(&s.vms_page(&find(Some("D"), None, None)).await.unwrap()),
        ["d"]
    );
    assert!(s
        .vms_page(&find(Some("%"), None, None))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        names(&s.vms_page(&find(None, Some("user-b"), None)).await.unwrap()),
        ["d"]
    );
    assert_eq!(
        names(
            &s.vms_page(&find(None, None, Some("grp-lab")))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let c = &s.vms_page(&page(Some("b"), 1)).await.unwrap()[0];
    assert_eq!(
        (c.vm.name.as_str(), c.owner_group.as_deref(), c.ips.len()),
        ("c", Some("lab"), 0)
    );
    // What a user may see: their own, their groups', and those their groups administer.
    let lab = ["grp-lab".to_string()];
    let mut seen = Vec::new();
    for (user, groups) in [
        ("user-a", &[][..]),
        ("user-a", &lab[..]),
        ("user-b", &[][..]),
        ("user-nobody", &[][..]),
    ] {
        let q = VmPageQuery {
            visible_to: Some((user, groups)),
            limit: 10,
            ..Default::default()
        };
        seen.push(names(&s.vms_page(&q).await.unwrap()));
    }
    assert_eq!(seen[0], ["e"]);
    assert_eq!(seen[1], ["c", "d", "e"]);
    assert_eq!(seen[2], ["d"]);
    assert!(seen[3].is_empty());
    // By host and by state, and both.
    let by = |host, state| VmPageQuery {
        host_id: host,
        state,
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        names(&s.vms_page(&by(Some("host-2"), None)).await.unwrap()),
        ["b", "d"]
    );
    assert_eq!(
        names(&s.vms_page(&by(None, Some(VmState::Running))).await.unwrap()),
        ["b", "e"]
    );
    assert_eq!(
        names(
            &s.vms_page(&by(Some("host-1"), Some(VmState::Running)))
                .await
                .unwrap()
        ),
        ["e"]
    );
    assert_eq!(s.host("host-2").await.unwrap().unwrap().name, "h2");
    assert!(s.host("host-9").await.unwrap().is_none());
}

/// Hosts reconnecting all at once after a controller restart each record themselves: no
/// write may fail because another got in first ("database is locked" under SQLite).
async fn hosts_upserted_at_once(url: &str) {
    let s = Store::open(url).await.unwrap();
    let mut hosts: Vec<HostRecord> = (0..40)
        .map(|i| HostRecord {
            id: format!("h{i}"),
            name: format!("h{i}"),
            ..host()
        })
        .collect();
    for round in 0..2 {
        let mut tasks = tokio::task::JoinSet::new();
        for h in hosts.clone() {
            let s = s.clone();
            tasks.spawn(async move { s.upsert_host(&h).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        }
        for h in &mut hosts {
            h.url = "https://192.0.2.9:8471".into();
        }
    }
    let stored = s.hosts().await.unwrap();
    assert_eq!(stored.len(), 40);
    assert!(stored.iter().all(|h| h.url == "https://192.0.2.9:8471"));
    s.touch_host("h1", at("2030-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        s.host("h1").await.unwrap().unwrap().last_seen,
        at("2030-01-01T00:00:00Z")
    );
    assert_eq!(s.host_refs("h1").await.unwrap(), (0, 0, 0));
    s.delete_host("h1").await.unwrap();
    assert!(s.host("h1").await.unwrap().is_none());
}

macro_rules! on_both {
    ($($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(&super::sqlite_url(&dir)).await;
                }
            )*
        }

        /// One PostgreSQL server for all bodies, a fresh database for each.
        #[tokio::test]
        async fn postgres() {
            let server = crate::testing::PgServer::start();
            $(
                $name(&server.database(stringify!($name)).await).await;
            )*
        }
    };
}

on_both!(
    vm_round_trip_and_unique_names,
    images_in_use_cannot_be_deleted,
    migrations_are_idempotent_and_tasks_survive,
    tickets_and_orphan_tasks,
    settings_and_audit_retention,
    networks_nics_and_forwards,
    pools_in_use_cannot_be_deleted,
    accounts_tokens_and_audit,
    only_ended_leases_are_listed,
    memory_per_host_and_what_an_owner_has,
    vm_pages_filter_join_and_continue,
    hosts_upserted_at_once,
    bad_values_in_rows_are_named,
    leases_end_by_time_not_text,
    user_and_group_deletion_wait_for_new_vms
);

/// An installation's records go from SQLite to PostgreSQL and back unchanged, whatever
/// the bodies above leave in them; a target that has records is refused; the copy knows
/// every table of the schema.
#[tokio::test]
async fn copies_go_to_postgresql_and_back_unchanged() {
    let server = crate::testing::PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = |name: &str| format!("sqlite://{}/{name}.db", dir.path().display());
    for (i, what) in ["accounts", "networks", "vm pages"].into_iter().enumerate() {
        let url = sqlite(&format!("src{i}"));
        match i {
            0 => accounts_tokens_and_audit(&url).await,
            1 => networks_nics_and_forwards(&url).await,
            _ => vm_pages_filter_join_and_continue(&url).await,
        }
        let src = Store::open(&url).await.unwrap();
        let pg = Store::open(&server.database(&format!("copy{i}")).await)
            .await
            .unwrap();
        let copied = src.copy_into(&pg).await.unwrap();
        assert!(
            copied.iter().map(|(_, n)| n).sum::<u64>() > 0,
            "{what}: {copied:?}"
        );
        let before = src.dump().await.unwrap();
        assert_eq!(before, pg.dump().await.unwrap(), "{what}: to PostgreSQL");
        let back = Store::open(&sqlite(&format!("back{i}"))).await.unwrap();
        pg.copy_into(&back).await.unwrap();
        assert_eq!(before, back.dump().await.unwrap(), "{what}: and back");
        let e = src.copy_into(&back).await.unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e:#}");
        assert_eq!(
            before,
            back.dump().await.unwrap(),
            "a refused copy writes nothing"
        );
    }
    let mut tables: Vec<String> = crate::copy::TABLES.iter().map(|t| t.to_string()).collect();
    tables.sort();
    let fresh = Store::open(&sqlite("fresh")).await.unwrap();
    assert_eq!(fresh.table_names().await.unwrap(), tables);
    let pg = Store::open(&server.database("fresh").await).await.unwrap();
    assert_eq!(pg.table_names().await.unwrap(), tables);
}

fn new_op(kind: &str, target: &str) -> crate::OperationRecord {
    crate::OperationRecord::begin(kind, target)
}
