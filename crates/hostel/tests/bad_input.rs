//! Bad input gets a clear error naming the field or state and what would work, a
//! non-zero exit, and nothing created or lost.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    d.ok(&[
        "create",
        "taken",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--disk",
        "16M",
        "--no-start",
    ]);
    let disks = file_names(&d.data_dir().join("disks"));
    assert_eq!(disks.len(), 1);
    let snapshot = d.json(&["list"]);

    let host_mib = d.json(&["info"])["hosts"][0]["memory_total_mib"]
        .as_u64()
        .unwrap();
    let too_much = format!("{}M", host_mib + 1024);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["create", "Bad_Name", "--image", "tiny"],
            vec!["name", "lowercase"],
        ),
        (
            vec!["create", "bad-", "--image", "tiny"],
            vec!["name", "not ending with"],
        ),
        (
            vec!["create", "small", "--image", "tiny", "--memory", "8M"],
            vec!["memory", "out of range", "32M"],
        ),
        (
            vec!["create", "weird", "--image", "tiny", "--memory", "12X"],
            vec!["memory", "not a size"],
        ),
        (
            vec!["create", "huge", "--image", "tiny", "--memory", &too_much],
            vec!["memory", "more than the host has"],
        ),
        (
            vec![
                "create",
                "huger",
                "--image",
                "tiny",
                "--memory",
                "128M",
                "--max-memory",
                &too_much,
            ],
            vec!["max_memory", "more than the host has"],
        ),
        (
            vec!["create", "zero", "--image", "tiny", "--vcpus", "0"],
            vec!["vcpus", "out of range"],
        ),
        (
            vec![
                "create",
                "few",
                "--image",
                "tiny",
                "--vcpus",
                "2",
                "--max-vcpus",
                "1",
            ],
            vec!["max_vcpus"],
        ),
        (
            vec!["create", "nodisk", "--image", "tiny", "--disk", "0"],
            vec!["disk", "out of range"],
        ),
        (
            vec!["create", "ghost", "--image", "nosuch"],
            vec!["image", "no image named", "hostel image list"],
        ),
        (
            vec!["create", "taken", "--image", "tiny", "--no-start"],
            vec!["exists already"],
        ),
        (
            vec!["pause", "taken"],
            vec!["cannot pause a VM that is stopped", "hostel start"],
        ),
        (vec!["unpause", "taken"], vec!["cannot unpause"]),
        (vec!["reboot", "taken"], vec!["cannot reboot"]),
        (vec!["destroy", "taken"], vec!["cannot destroy"]),
        (
            vec!["console", "taken"],
            vec!["cannot console a VM that is stopped"],
        ),
        (vec!["start", "nosuch"], vec!["no VM named"]),
        (
            vec!["mem-set", "taken", "1G"],
            vec!["memory", "out of range"],
        ),
        (vec!["image", "delete", "tiny"], vec!["in use by taken"]),
        (vec!["image", "build", "nosuch"], vec!["recipe"]),
    ];
    for (args, wants) in cases {
        let err = d.fails(&args);
        for w in wants {
            assert!(
                err.contains(w),
                "hostel {args:?}: {err:?} should mention {w:?}"
            );
        }
        assert_eq!(
            d.json(&["list"]),
            snapshot,
            "hostel {args:?} changed the VM list"
        );
        assert_eq!(
            file_names(&d.data_dir().join("disks")),
            disks,
            "hostel {args:?} left a disk"
        );
    }
    assert!(d.qemu_pids().is_empty());

    // A create whose VM cannot start removes everything it made.
    d.ok(&["image", "build", "tiny", "--name", "broken"]);
    let kernel = d.data_dir().join("images/broken/vmlinuz");
    std::fs::set_permissions(&kernel, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let err = d.fails(&[
        "create", "doomed", "--image", "broken", "--memory", "128M", "--disk", "16M",
    ]);
    assert!(
        err.contains("could not start, so nothing was kept"),
        "{err}"
    );
    assert_eq!(d.json(&["list"]), snapshot);
    assert_eq!(file_names(&d.data_dir().join("disks")), disks);
    assert!(file_names(&d.data_dir().join("run")).is_empty());
    assert!(d.qemu_pids().is_empty());

    // Without the client config every command fails with a hint.
    let out = std::process::Command::new(bin())
        .arg("list")
        .env("HOSTEL_CONFIG", d.dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hostel up"));
}
