//! Who may do what: users, admins and Hostel's own actors, each with only its rights.

use crate::context::{Ctx, SystemActor};
use crate::error::Error;
use crate::testing::TestController as Harness;
use hostel_api::public::*;

#[tokio::test]
async fn system_actors_have_no_user_and_no_admin_rights() {
    let h = Harness::new().await;
    for actor in [SystemActor::LeaseReaper, SystemActor::Startup] {
        let ctx = Ctx::system(actor);
        let e = h.c.users(&ctx).await.unwrap_err();
        assert!(matches!(e, Error::Forbidden(_)), "{actor:?}: {e:?}");
        let e =
            h.c.create_user(
                &ctx,
                CreateUserRequest {
                    name: "mallory".into(),
                    password: None,
                    admin: true,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Forbidden(_)), "{actor:?}: {e:?}");
        assert!(h.c.whoami(&ctx).await.is_err());
        assert!(h.c.quota_show(&ctx, None).await.is_err());
        assert!(h.c.dmesg(&ctx, 10).is_err());
    }
    // The reaper may stop any VM but not list them all for itself, and the start-up
    // actor may make the default network but not see VMs.
    assert!(Ctx::system(SystemActor::Startup).visible_to().is_err());
    // No user was made by any of them.
    let names: Vec<String> =
        h.c.users(&h.admin)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
    assert_eq!(names, ["admin"]);
}

#[tokio::test]
async fn users_are_refused_admin_operations_by_the_operations_themselves() {
    let h = Harness::new().await;
    let alice = h.user("alice").await;
    let forbidden = |r: Result<(), Error>| match r {
        Err(Error::Forbidden(m)) => assert!(m.contains("admin"), "{m}"),
        other => panic!("expected forbidden, got {other:?}"),
    };
    forbidden(h.c.users(&alice).await.map(|_| ()));
    forbidden(h.c.delete_user(&alice, "admin").await);
    forbidden(
        h.c.create_group(&alice, CreateGroupRequest { name: "g".into() })
            .await
            .map(|_| ()),
    );
    forbidden(h.c.doctor(&alice).await.map(|_| ()));
    forbidden(h.c.list_hosts(&alice).await.map(|_| ()));
    forbidden(h.c.delete_image(&alice, "tiny").await);
    forbidden(h.c.delete_network(&alice, "default").await);
    forbidden(h.c.dmesg(&alice, 1).map(|_| ()));
    forbidden(
        h.c.quota_set(&alice, "user:alice", QuotaLimits::default())
            .await
            .map(|_| ()),
    );
    // What is hers she may do.
    let me = h.c.whoami(&alice).await.unwrap();
    assert_eq!(me.user, "alice");
    assert!(!me.admin);
}

#[tokio::test]
async fn a_vm_nobody_may_see_is_not_found_for_anyone_but_its_owner() {
    let h = Harness::new().await;
    let bob = h.user("bob").await;
    // No VM: the same answer for a user, an admin, and the lease reaper.
    for ctx in [&bob, &h.admin, &Ctx::system(SystemActor::LeaseReaper)] {
        match h.c.vm_named(ctx, "nope").await {
            Err(Error::NotFound { kind, name, .. }) => {
                assert_eq!((kind, name.as_str()), ("vm", "nope"))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn with_the_password_a_token_may_outlive_the_token_that_makes_it() {
    // A browser session lasts hours; the API token it makes, days: the user's password,
    // not the session, vouches for that.
    let h = Harness::new().await;
    h.c.create_user(
        &h.admin,
        CreateUserRequest {
            name: "dora".into(),
            password: Some("dora's long password".into()),
            admin: false,
        },
    )
    .await
    .unwrap();
    let dora = h.context_of("dora").await;
    let ask = |name: &str, password: Option<&str>| CreateTokenRequest {
        name: name.into(),
        read_only: true,
        expires_in_days: Some(30),
        expires_at: None,
        password: password.map(String::from),
    };
    let e =
        h.c.create_token(&dora, None, ask("wrong", Some("not it at all")))
            .await
            .unwrap_err();
    match &e {
        Error::Invalid { field, .. } => assert_eq!(field, "password", "{e:?}"),
        other => panic!("{other:?}"),
    }
    let t =
        h.c.create_token(&dora, None, ask("month", Some("dora's long password")))
            .await
            .unwrap();
    let limit = dora.caller().unwrap().token_expires_at.unwrap();
    let end = hostel_store::Timestamp::parse(t.expires_at.as_deref().unwrap()).unwrap();
    assert!(end > limit, "{end} is after the maker's {limit}");
    assert!(t.read_only && !t.expiry_inherited);
}

#[tokio::test]
async fn a_token_cannot_outlive_the_token_that_makes_it() {
    let h = Harness::new().await;
    let carol = h.user("carol").await;
    let e =
        h.c.create_token(
            &carol,
            None,
            CreateTokenRequest {
                name: "longer".into(),
                read_only: false,
                expires_in_days: Some(30),
                expires_at: None,
                password: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Invalid { .. } | Error::Forbidden(_)),
        "{e:?}"
    );
    // A shorter one is fine, and the audit trail of the request would name it.
    let t =
        h.c.create_token(
            &carol,
            None,
            CreateTokenRequest {
                name: "short".into(),
                read_only: true,
                expires_in_days: None,
                expires_at: Some(
                    (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap(),
                ),
                password: None,
            },
        )
        .await
        .unwrap();
    assert!(t.read_only);
    assert_eq!(carol.note().target.as_deref(), Some("short"));
}

#[tokio::test]
async fn a_token_outliving_its_maker_is_refused_whatever_the_offset_says() {
    use time::format_description::well_known::Rfc3339;
    let h = Harness::new().await;
    // Carol's token expires in a day; she asks for one 23 hours later than that, written
    // with an offset of -23:59: as text it sorts before her token's end, as a time it is
    // after it.
    let carol = h.user("carol").await;
    let limit = carol.caller().unwrap().token_expires_at.unwrap();
    let later = time::OffsetDateTime::parse(&limit.to_string(), &Rfc3339).unwrap()
        + time::Duration::hours(23);
    let written = later
        .to_offset(time::UtcOffset::from_hms(-23, -59, 0).unwrap())
        .format(&Rfc3339)
        .unwrap();
    assert!(
        written < limit.to_string(),
        "{written} sorts before {limit}"
    );
    let e =
        h.c.create_token(
            &carol,
            None,
            CreateTokenRequest {
                name: "sneaky".into(),
                read_only: false,
                expires_in_days: None,
                expires_at: Some(written),
                password: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    assert!(e.message().contains("expires at"), "{e}");
}
