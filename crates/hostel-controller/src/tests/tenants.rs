//! Tenants kept apart: a task is its creator's, a quota its owner's, a token never
//! outlives its maker, and the disk VMs write to keeps its room.

use crate::error::Error;
use crate::space::FreeSpaceFloor;
use crate::testing::TestController as Harness;
use hostel_api::public::*;
use hostel_model::TaskState;

fn token(name: &str) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.into(),
        read_only: false,
        expires_in_days: None,
        expires_at: None,
        password: None,
    }
}

#[tokio::test]
async fn a_token_made_without_an_expiry_expires_with_its_maker() {
    let h = Harness::new().await;
    // Carol's token expires in a day (as a login's does in 30).
    let carol = h.user("carol").await;
    let limit = carol.caller().unwrap().token_expires_at.unwrap();
    let t = h.c.create_token(&carol, None, token("ci")).await.unwrap();
    assert!(t.expiry_inherited);
    assert_eq!(t.expires_at, Some(limit.to_string()));
    // An earlier expiry is kept as asked.
    let mut shorter = token("shorter");
    shorter.expires_at = Some((limit + time::Duration::hours(-1)).to_string());
    let t = h.c.create_token(&carol, None, shorter).await.unwrap();
    assert!(!t.expiry_inherited);
    // A token without an expiry makes tokens without one.
    let t =
        h.c.create_token(&h.admin, None, token("forever"))
            .await
            .unwrap();
    assert_eq!((t.expires_at, t.expiry_inherited), (None, false));
}

#[tokio::test]
async fn a_task_is_its_creator_s_and_no_one_else_s() {
    let h = Harness::new().await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let now = hostel_store::now();
    h.c.store
        .insert_task(&hostel_store::TaskRecord {
            id: "task-alice".into(),
            kind: "image-import".into(),
            target: "alices-image".into(),
            state: TaskState::Running,
            progress: 0.0,
            message: "queued".into(),
            error: None,
            created_at: now,
            updated_at: now,
            created_by: Some(alice.caller().unwrap().user_id.clone()),
            owner: None,
        })
        .await
        .unwrap();
    assert_eq!(
        h.c.task(&alice, "task-alice").await.unwrap().target,
        "alices-image"
    );
    assert!(h.c.task(&h.admin, "task-alice").await.is_ok());
    // Bob gets the answer he would get for an id that is no task's.
    let theirs = h.c.task(&bob, "task-alice").await.unwrap_err();
    let missing = h.c.task(&bob, "task-nobody").await.unwrap_err();
    assert!(matches!(theirs, Error::NotFound { .. }), "{theirs:?}");
    assert_eq!(
        theirs.message().replace("task-alice", "ID"),
        missing.message().replace("task-nobody", "ID")
    );
}

#[tokio::test]
async fn another_s_quota_is_refused_alike_whether_the_name_exists_or_not() {
    let h = Harness::new().await;
    let _alice = h.user("alice").await;
    let bob = h.user("bob").await;
    h.c.create_group(&h.admin, CreateGroupRequest { name: "lab".into() })
        .await
        .unwrap();
    let answer = |r: Result<Quota, Error>| match r {
        Err(e) => format!("{:?}", std::mem::discriminant(&e)) + &e.message(),
        Ok(q) => panic!("bob sees {q:?}"),
    };
    let refusals = [
        answer(h.c.quota_show(&bob, Some("user:alice")).await),
        answer(h.c.quota_show(&bob, Some("user:nobody")).await),
        answer(h.c.quota_show(&bob, Some("alice")).await),
        answer(h.c.quota_show(&bob, Some("group:lab")).await),
        answer(h.c.quota_show(&bob, Some("group:nogroup")).await),
    ];
    assert!(refusals.iter().all(|r| r == &refusals[0]), "{refusals:#?}");
    // His own, and the defaults, he sees; an admin sees anyone's, and learns what does
    // not exist.
    assert!(h.c.quota_show(&bob, Some("user:bob")).await.is_ok());
    assert!(h.c.quota_show(&bob, Some("default")).await.is_ok());
    assert!(h.c.quota_show(&h.admin, Some("user:alice")).await.is_ok());
    assert!(matches!(
        h.c.quota_show(&h.admin, Some("user:nobody")).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn below_the_free_space_floor_new_work_is_refused_and_reads_go_on() {
    // A floor of the whole filesystem: never met.
    let h = Harness::with_config(|cfg| cfg.min_free_space = FreeSpaceFloor::Percent(100)).await;
    let alice = h.user("alice").await;
    let req: CreateVmRequest =
        serde_json::from_value(serde_json::json!({"name": "v1", "memory_mib": 64})).unwrap();
    let e = h.c.create_vm(&alice, req).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert!(e.message().contains("--min-free-space"), "{e}");
    let e =
        h.c.import_image(
            &h.admin,
            ImportImageRequest {
                name: "img".into(),
                path: "/nonexistent.qcow2".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    // Reads still work.
    assert!(h
        .c
        .list_vms(&alice, 10, None, &Default::default())
        .await
        .is_ok());
    assert!(h.c.images(&alice).await.is_ok());
    // A field kept in the database is bounded.
    let long: CreateVmRequest = serde_json::from_value(serde_json::json!({
        "name": "v2", "memory_mib": 64, "kernel": "/k", "cmdline": "x".repeat(3000)
    }))
    .unwrap();
    let e = h.c.create_vm(&alice, long).await.unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { field, .. } if field == "cmdline"),
        "{e:?}"
    );
    // No floor: no refusal for space (the create fails later, for want of a host).
    let h = Harness::with_config(|cfg| cfg.min_free_space = FreeSpaceFloor::Bytes(0)).await;
    let alice = h.user("alice").await;
    let req: CreateVmRequest =
        serde_json::from_value(serde_json::json!({"name": "v1", "memory_mib": 64})).unwrap();
    let e = h.c.create_vm(&alice, req).await.unwrap_err();
    assert!(!e.message().contains("--min-free-space"), "{e}");
}
