//! Typed columns: bad values in rows are named, times compare as times, and deleting a
//! user or group waits for a VM being created for them.

use super::{at, host, vm};
use crate::row::{binds, insert_on};
use crate::*;
use std::time::Duration;

/// A value no enum or time has, written behind the store's back, is an error naming
/// the table, the column and the value; the rows around it still read.
pub(super) async fn bad_values_in_rows_are_named(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    s.insert_vm(&vm("ok"), &[]).await.unwrap();
    let bad = vm("bad");
    s.insert_vm(&bad, &[]).await.unwrap();
    for (col, value, want) in [
        (
            "state",
            "flying",
            r#"vms.state: "flying" is not a VM state (one of stopped, "#,
        ),
        (
            "on_crash",
            "explode",
            r#"vms.on_crash: "explode" is not a policy"#,
        ),
        (
            "created_at",
            "yesterday",
            r#"vms.created_at: "yesterday" is not an RFC 3339 time"#,
        ),
        (
            "lease_expires_at",
            "2026-13-01T00:00:00Z",
            r#"vms.lease_expires_at: "2026-13-01T00:00:00Z" is not an RFC 3339 time"#,
        ),
    ] {
        let good: String = s
            .fetch_one(
                &format!("SELECT {col} FROM vms WHERE id = $1"),
                binds![&bad.id],
            )
            .await
            .unwrap_or_default();
        let set = format!("UPDATE vms SET {col} = $1 WHERE id = $2");
        s.execute(&set, binds![value, &bad.id]).await.unwrap();
        let e = format!("{:#}", s.vm_by_name("bad").await.unwrap_err());
        assert!(e.contains(want), "{e}");
        assert!(s.vm_by_name("ok").await.unwrap().is_some());
        let restore = (col != "lease_expires_at").then_some(good.as_str());
        s.execute(&set, binds![restore, &bad.id]).await.unwrap();
    }
    assert_eq!(s.vm_by_name("bad").await.unwrap().unwrap(), bad);

    s.execute("UPDATE hosts SET accel = 'hvf'", binds![])
        .await
        .unwrap();
    let e = format!("{:#}", s.hosts().await.unwrap_err());
    assert!(
        e.contains(r#"hosts.accel: "hvf" is not a accelerator (one of kvm, tcg)"#),
        "{e}"
    );
}

/// Text order and time order differ within a second ("…:00Z" sorts after "…:00.5Z"):
/// leases are compared as times.
pub(super) async fn leases_end_by_time_not_text(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let mut half = vm("half");
    half.lease_expires_at = Some(at("2026-01-01T00:00:00.5Z"));
    let mut whole = vm("whole");
    whole.lease_expires_at = Some(at("2026-01-01T00:00:00Z"));
    for v in [&half, &whole] {
        s.insert_vm(v, &[]).await.unwrap();
    }
    let ended = |t: &'static str| {
        let s = s.clone();
        async move {
            let vms = s.vms_lease_ended(at(t)).await.unwrap();
            vms.into_iter().map(|v| v.name).collect::<Vec<_>>()
        }
    };
    assert!(ended("2025-12-31T23:59:59.9Z").await.is_empty());
    assert_eq!(ended("2026-01-01T00:00:00Z").await, ["whole"]);
    assert_eq!(ended("2026-01-01T00:00:00.2Z").await, ["whole"]);
    assert_eq!(ended("2026-01-01T00:00:00.5Z").await, ["half", "whole"]);
    assert_eq!(ended("2026-01-01T00:00:01Z").await, ["half", "whole"]);
}

/// A VM being created for a user (its transaction not yet committed) while the user is
/// deleted: the deletion waits for it, then finds the VM and deletes nothing.
pub(super) async fn user_and_group_deletion_wait_for_new_vms(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.upsert_host(&host()).await.unwrap();
    let user = UserRecord {
        id: new_id("user"),
        name: "carol".into(),
        password_hash: None,
        is_admin: false,
        created_at: now(),
    };
    s.insert_user(&user).await.unwrap();
    let group = GroupRecord {
        id: new_id("grp"),
        name: "team".into(),
        created_at: now(),
    };
    s.insert_group(&group).await.unwrap();
    for (who, v) in [
        ("user", {
            let mut v = vm("carols");
            v.owner_user_id = Some(user.id.clone());
            v
        }),
        ("group", {
            let mut v = vm("teams");
            v.owner_group_id = Some(group.id.clone());
            v
        }),
    ] {
        let mut tx = s.pool().begin().await.unwrap();
        insert_on(&mut tx, &v).await.unwrap();
        let deleting = {
            let s = s.clone();
            let (user, group) = (user.id.clone(), group.id.clone());
            tokio::spawn(async move {
                match who {
                    "user" => s.delete_user_if_unused(&user).await,
                    _ => s.delete_group_if_unused(&group).await,
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!deleting.is_finished(), "{who}: deleted past a writer");
        tx.commit().await.unwrap();
        let users = deleting.await.unwrap();
        assert_eq!(users.unwrap(), vec![v.name], "{who}");
    }
    assert!(s.user_by_id(&user.id).await.unwrap().is_some());
    assert!(s.group_by_id(&group.id).await.unwrap().is_some());
}
