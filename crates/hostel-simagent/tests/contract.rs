//! The agent API's contract, end to end: the generic router (`hostel_agent::api_router`)
//! serves a SIMULATED agent over mutual TLS in this process, and the controller's
//! `AgentClient` calls every endpoint through its typed methods. A route the client and
//! the router disagree on (a 404 without an error body, a 405) or a body that does not
//! decode as the declared type fails the call; every declared endpoint must be reached.

use futures::StreamExt;
use hostel_api::agent::endpoints::{self as ep};
use hostel_api::agent::*;
use hostel_api::VmState;
use hostel_controller::agent_client::{AgentCallError, AgentClient, ClientTls};
use hostel_simagent::SimHost;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

mod common;
use common::{certs, spec, Certs};

type Seen = Arc<Mutex<BTreeSet<(String, String)>>>;

/// Serves a simulated agent; records the (method, route) of every request it routes.
async fn serve(certs: &Certs) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = hostel_agent::api_router(Arc::new(SimHost::new(0, 1, "/nonexistent/fleet".into())))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let s = s.clone();
                async move {
                    if let Some(p) = req.extensions().get::<axum::extract::MatchedPath>() {
                        let m = req.method().as_str().to_string();
                        s.lock().unwrap().insert((m, p.as_str().to_string()));
                    }
                    next.run(req).await
                }
            },
        ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let tls = hostel_agent::TlsFiles {
        cert_pem: certs.agent.0.clone(),
        key_pem: certs.agent.1.clone(),
        client_ca_pem: certs.ca.clone(),
    };
    tokio::spawn(hostel_agent::serve_router(
        app,
        listener,
        tls,
        futures::future::pending(),
    ));
    (url, seen)
}

fn pool() -> PoolSpec {
    PoolSpec {
        name: "p".into(),
        driver: "dir".into(),
        path: "/simulated/p".into(),
    }
}

async fn image_done(lines: Lines<ImageLine, AgentCallError>) -> ImageFiles {
    let lines: Vec<ImageLine> = lines.map(|l| l.unwrap()).collect().await;
    match lines.last() {
        Some(ImageLine::Done { done }) => done.clone(),
        other => panic!("the last line is not `done`: {other:?}"),
    }
}

#[tokio::test]
async fn every_endpoint_agrees_between_client_and_router() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = certs();
    let (url, seen) = serve(&certs).await;
    let tls = ClientTls {
        ca_pem: certs.ca.clone(),
        cert_pem: certs.controller.0.clone(),
        key_pem: certs.controller.1.clone(),
    };
    let a = AgentClient::new(&url, &tls).unwrap();
    let id = "vm-1";

    assert_eq!(a.host().await.unwrap().name, "simhost-0");
    let mut events = a.events().await.unwrap();
    let started = a.start_vm(
        id,
        StartRequest {
            spec: spec(id),
            restore_from: None,
            load_snapshot: None,
        },
    );
    assert_eq!(started.await.unwrap().state, VmState::Running);
    let ev = events.next().await.unwrap().unwrap();
    assert_eq!((ev.vm_id.as_str(), ev.state), (id, VmState::Running));

    assert!(a.list_vms().await.unwrap().iter().any(|v| v.id == id));
    let counters = a.vm_stats().await.unwrap();
    let mine = counters
        .iter()
        .find(|c| c.id == id)
        .expect("a running VM is counted");
    assert!(mine.memory_bytes > 0 && mine.at_ms > 0, "{mine:?}");
    assert_eq!(a.get_vm(id).await.unwrap().id, id);
    let missing = a.get_vm("vm-none").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    assert_eq!(a.pause_vm(id).await.unwrap().state, VmState::Paused);
    assert_eq!(a.unpause_vm(id).await.unwrap().state, VmState::Running);
    assert_eq!(a.reboot_vm(id).await.unwrap().state, VmState::Running);
    let b = a.set_balloon(id, BalloonRequest { memory_mib: 300 });
    assert_eq!(b.await.unwrap().balloon_mib, Some(300));
    assert_eq!(
        a.set_vcpus(id, VcpusRequest { vcpus: 2 })
            .await
            .unwrap()
            .vcpus,
        2
    );
    let limited = hostel_api::public::Limits {
        disk_bps: Some(1 << 20),
        ..Default::default()
    };
    assert_eq!(a.set_limits(id, limited).await.unwrap().id, id);
    assert!(a
        .set_limits("vm-none", Default::default())
        .await
        .unwrap_err()
        .is_not_found());
    let nic = NicSpec {
        id: "nic-1".into(),
        index: 0,
        mac: "52:54:00:00:00:01".into(),
        ipv4: "10.0.0.2".into(),
        ipv6: None,
        bridge: "br0".into(),
        tap: "tap0".into(),
    };
    assert_eq!(a.add_nic(id, nic).await.unwrap().nics.len(), 1);
    let rm = a.remove_nic(id, RemoveNicRequest { id: "nic-1".into() });
    assert!(rm.await.unwrap().nics.is_empty());

    let made = a.create_disk(CreateDiskRequest {
        vm_id: id.into(),
        index: 1,
        size_mib: 64,
        backing: None,
        pool: Some(pool()),
    });
    let made = made.await.unwrap();
    // A disk file read out, and stored again from its bytes; a body shorter than said
    // is refused.
    let bad = a
        .read_disk_file(ReadDiskFileRequest {
            file: made.path.clone(),
            pool: Some(pool()),
            standalone_format: Some("vmdk".into()),
        })
        .await;
    assert!(matches!(bad, Err(AgentCallError::Refused(f)) if f.code == FailureCode::Invalid));
    let read = a
        .read_disk_file(ReadDiskFileRequest {
            file: made.path.clone(),
            pool: Some(pool()),
            standalone_format: Some("qcow2".into()),
        })
        .await
        .unwrap();
    let put = |bytes: u64, body: ByteStream<AgentCallError>| {
        a.put_disk(
            PutDiskRequest {
                vm_id: "vm-moved".into(),
                index: 0,
                size_mib: 64,
                format: "qcow2".into(),
                bytes,
                backing: None,
                pool: None,
            },
            body,
        )
    };
    let copied = put(read.size, read.bytes).await.unwrap();
    assert!(copied.path.contains("vm-moved"), "{}", copied.path);
    let again = a
        .read_disk_file(ReadDiskFileRequest {
            file: made.path.clone(),
            pool: Some(pool()),
            standalone_format: None,
        })
        .await
        .unwrap();
    match put(again.size + 1, again.bytes).await {
        Err(AgentCallError::Refused(f)) => assert_eq!(f.code, FailureCode::Invalid),
        other => panic!("a short body was not refused: {other:?}"),
    }
    let disk = DiskSpec {
        index: 1,
        path: made.path.clone(),
        format: made.format.clone(),
        pool: Some(pool()),
    };
    a.add_disk(id, disk.clone()).await.unwrap();
    let resize = ResizeDiskArgs {
        vm: Some(id.into()),
        disk: ResizeDiskRequest {
            index: Some(1),
            path: None,
            size_mib: 128,
            pool: None,
            format: None,
        },
    };
    a.resize_disk(resize.clone()).await.unwrap();
    a.snapshot(
        id,
        SnapshotRequest {
            action: "create".into(),
            name: "s1".into(),
            disks: vec![disk],
            memory: false,
        },
    )
    .await
    .unwrap();
    a.remove_disk(id, DiskIndex { index: 1 }).await.unwrap();
    let files = a.list_files_in_pools(vec![pool()]).await.unwrap();
    assert!(files.disks.contains(&made.path));
    a.delete_disk(DeleteDiskRequest {
        path: made.path.clone(),
        pool: Some(pool()),
    })
    .await
    .unwrap();
    assert!(!a.list_files().await.unwrap().disks.contains(&made.path));

    let header = SaveHeader {
        magic: SAVE_MAGIC.into(),
        vm_id: id.into(),
        vm_name: "name".into(),
        saved_at: "now".into(),
    };
    let save = a.save_vm(
        id,
        SaveRequest {
            path: "/simulated/save".into(),
            header: header.clone(),
        },
    );
    assert_eq!(save.await.unwrap().state, VmState::Saved);
    let read = a.read_save_header(SaveHeaderRequest {
        path: "/simulated/save".into(),
    });
    assert_eq!(read.await.unwrap(), header);
    let shut = a.shutdown_vm(
        id,
        ShutdownRequest {
            timeout_secs: 1,
            force: true,
        },
    );
    assert_eq!(shut.await.unwrap().state, VmState::Stopped);
    assert_eq!(a.destroy_vm(id).await.unwrap().state, VmState::Stopped);
    let log = a.console_log(id, ConsoleLogRequest { lines: Some(5) });
    assert_eq!(log.await.unwrap().len(), 1);
    a.clear_console_log(id).await.unwrap();
    assert!(!a.render_argv(spec(id)).await.unwrap().is_empty());

    let nets = NetworksState::default();
    a.put_networks(nets.clone()).await.unwrap();
    assert_eq!(a.get_networks().await.unwrap(), nets);
    assert_eq!(a.check_pool(pool()).await.unwrap().used_bytes, 0);
    a.pool_forget_image(ForgetImageRequest {
        pool: pool(),
        image_id: "img-1".into(),
    })
    .await
    .unwrap();

    let built = a.build_image(BuildImageRequest {
        recipe: "tiny".into(),
        name: "t".into(),
        suite: None,
        packages: vec![],
        size_mib: None,
        mirror: None,
    });
    let built = image_done(built.await.unwrap()).await;
    let imported = a.import_image(ImportImageRequest {
        name: "i".into(),
        source: "/x.img".into(),
    });
    let imported = image_done(imported.await.unwrap()).await;
    // A guest's disk copied in from a host file arrives as a disk of the VM's.
    let disk = a.import_disk(ImportDiskRequest {
        vm_id: "vm-x".into(),
        index: 1,
        source: "/xen/guest.img".into(),
        format: "raw".into(),
        pool: None,
        chain_within: None,
        sums: Vec::new(),
    });
    let disk = image_done(disk.await.unwrap()).await;
    assert_eq!(disk.kind, hostel_model::ImageKind::Disk);
    assert!(disk.path.contains("vm-x"), "{}", disk.path);
    // A backup's files come back by disk, and can be removed again.
    let backup = a
        .backup_vm(BackupVmRequest {
            vm_id: "vm-x".into(),
            dir: "/backups".into(),
            backup_id: "bak-1".into(),
            disks: vec![DiskSpec {
                index: 0,
                path: disk.path.clone(),
                format: "qcow2".into(),
                pool: None,
            }],
            parent: None,
        })
        .await
        .unwrap();
    let lines: Vec<BackupLine> = backup.map(|l| l.unwrap()).collect().await;
    let files = match lines.last() {
        Some(BackupLine::Done { done, .. }) => done.clone(),
        other => panic!("the last line is not `done`: {other:?}"),
    };
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].index, 0);
    a.delete_backup_files(DeleteBackupFilesRequest {
        dir: "/backups".into(),
        files: files.iter().map(|f| f.file.clone()).collect(),
    })
    .await
    .unwrap();
    // An image's bytes read out and stored again under another name: the lengths and the
    // checksum travel through both bindings; a wrong checksum is refused.
    let read = a
        .read_image_file(ReadImageFileRequest {
            path: imported.path.clone(),
        })
        .await
        .unwrap();
    assert_eq!(read.size, imported.size_bytes);
    let put = |sha256: String, bytes: ByteStream<AgentCallError>| {
        a.put_image(
            PutImageRequest {
                name: "j".into(),
                kind: imported.kind,
                format: imported.format.clone(),
                cmdline: None,
                files: vec![ImageFilePart {
                    name: "j.qcow2".into(),
                    size: read.size,
                }],
                sha256,
            },
            bytes,
        )
    };
    let copy = put(imported.sha256.clone(), read.bytes).await.unwrap();
    assert_eq!(copy.sha256, imported.sha256);
    assert!(copy.path.ends_with("/j.qcow2"), "{}", copy.path);
    let again = a
        .read_image_file(ReadImageFileRequest {
            path: imported.path.clone(),
        })
        .await
        .unwrap();
    match put("0".repeat(64), again.bytes).await {
        Err(AgentCallError::Refused(f)) => assert_eq!(f.code, FailureCode::Invalid),
        other => panic!("a wrong checksum was not refused: {other:?}"),
    }
    // A VM received by migration, then sent on: the lines end with `done`.
    let ready = a
        .migrate_in(
            "vm-m",
            MigrateInRequest {
                spec: spec("vm-m"),
                listen: "127.0.0.1".into(),
                capabilities: vec![MigrationCapability {
                    capability: "events".into(),
                    state: true,
                }],
                export_disks: true,
                shared_disks: vec![],
                tls: None,
            },
        )
        .await
        .unwrap();
    assert!(
        ready.uri.ends_with(&format!(":{}", ready.port)),
        "{}",
        ready.uri
    );
    let mut lines = a
        .migrate_out(MigrateOutRequest {
            vm_id: "vm-m".into(),
            uri: ready.uri,
            capabilities: vec![],
            max_downtime_ms: 300,
            bandwidth_mibps: None,
            force_complete: false,
            stall_secs: 10,
            mirror: ready.nbd_port.map(|port| DiskMirror {
                host: "127.0.0.1".into(),
                port,
                disks: vec![0],
            }),
            tls: None,
        })
        .await
        .unwrap();
    let mut done = None;
    while let Some(l) = futures::StreamExt::next(&mut lines).await {
        if let MigrationLine::Done { done: d } = l.unwrap() {
            done = Some(d);
        }
    }
    assert!(done.is_some(), "the migration's lines end with done");
    // Sent, the VM's QEMU says its migration completed; abandoning it then changes
    // nothing.
    let sent = a.get_migration("vm-m").await.unwrap();
    assert_eq!(sent.migration.as_deref(), Some("completed"), "{sent:?}");
    let kept = a
        .abandon_migration(
            "vm-m",
            AbandonMigrationRequest {
                resume: true,
                target_gone: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(kept.migration.as_deref(), Some("completed"), "{kept:?}");
    // No post-copy lost its link: neither end resumes one, each says so.
    let e = a
        .recover_migration(
            "vm-m",
            RecoverMigrationRequest {
                listen: "127.0.0.1".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("post-copy"), "{e}");
    let e = a
        .resume_migration(
            "vm-m",
            ResumeMigrationRequest {
                uri: "tcp:127.0.0.1:1".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("post-copy"), "{e}");
    a.delete_image(DeleteImageRequest { path: built.path })
        .await
        .unwrap();
    a.forget_vm(id).await.unwrap();

    // A simulated host serves no websockets, but the routes are there: the answer is
    // the agent's JSON refusal, not a route miss.
    for r in [a.console_socket(id).await, a.vnc_socket(id).await] {
        match r {
            Err(AgentCallError::Refused(f)) => assert_eq!(f.code, FailureCode::Unavailable),
            Err(e) => panic!("not a refusal: {e:?}"),
            Ok(_) => panic!("a simulated host opened a websocket"),
        }
    }

    let declared: BTreeSet<(String, String)> = ep::all()
        .map(|d| (d.method.as_str().to_string(), d.route.to_string()))
        .collect();
    let seen = seen.lock().unwrap().clone();
    let missed: Vec<_> = declared.difference(&seen).collect();
    assert!(
        missed.is_empty(),
        "declared endpoints never called: {missed:?}"
    );
    let undeclared: Vec<_> = seen.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "routes not in the contract: {undeclared:?}"
    );
}
