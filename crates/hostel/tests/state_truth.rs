//! QEMU's events decide a VM's state at once: guest power-off, reboot and panic, QEMU
//! killed, and the on_poweroff/on_reboot/on_crash policies.

mod common;
use common::*;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn guest_poweroff_and_policies() {
    let d = Daemon::start();
    d.ok(&["create", "off", "--image", "tiny", "--memory", "128M"]);
    d.ok(&[
        "create",
        "phoenix",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--on-poweroff",
        "restart",
    ]);
    d.ok(&[
        "create",
        "once",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--on-reboot",
        "destroy",
    ]);

    let mut c = d.console("off").await;
    c.wait_for(READY, BOOT).await;

    // A guest that ignores the ACPI power button: shutdown times out and the VM goes on,
    // unless --force, which stops it hard after the timeout.
    let off_pid = d.describe("off")["qemu"]["pid"].as_u64().unwrap() as u32;
    c.run("kill $(cat /run/acpid.pid)").await;
    let err = d.fails(&["shutdown", "off", "--timeout", "2"]);
    assert!(
        err.contains("did not power off within 2 s") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(d.state("off"), "running");
    d.ok(&["shutdown", "off", "--timeout", "2", "--force"]);
    let s = d.describe("off");
    assert_eq!(s["state"], "stopped");
    assert!(
        s["state_reason"].as_str().unwrap().contains("forced off"),
        "{s}"
    );
    assert!(s["qemu"]["pid"].is_null());
    assert!(!is_alive_qemu(off_pid));

    // Power-off from inside the guest.
    // The console session stays attached across QEMU's restart.
    let n = c.seen.matches(READY).count();
    d.ok(&["start", "off"]);
    c.wait_count(READY, n + 1, BOOT).await;
    c.send("poweroff\n").await;
    let s = d.wait_state("off", "stopped", Duration::from_secs(60));
    assert!(
        s["state_reason"].as_str().unwrap().contains("powered off"),
        "{s}"
    );
    assert!(s["qemu"]["pid"].is_null());

    let mut c = d.console("phoenix").await;
    c.wait_for(READY, BOOT).await;
    let pid = d.describe("phoenix")["qemu"]["pid"].clone();
    let n = c.seen.matches(READY).count();
    c.send("poweroff\n").await;
    c.wait_count(READY, n + 1, BOOT).await;
    let s = d.describe("phoenix");
    assert_eq!(s["state"], "running");
    assert_ne!(
        s["qemu"]["pid"], pid,
        "on_poweroff=restart started a new QEMU"
    );
    d.ok(&["destroy", "phoenix"]);

    let mut c = d.console("once").await;
    c.wait_for(READY, BOOT).await;
    c.send("reboot\n").await;
    let s = d.wait_state("once", "stopped", Duration::from_secs(60));
    assert!(
        s["state_reason"]
            .as_str()
            .unwrap()
            .contains("on_reboot=destroy"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_show_with_their_reason() {
    let d = Daemon::start();
    d.ok(&["create", "victim", "--image", "tiny", "--memory", "128M"]);
    d.ok(&["create", "panicky", "--image", "tiny", "--memory", "128M"]);
    d.ok(&[
        "create",
        "survivor",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--on-crash",
        "restart",
    ]);

    // QEMU killed from outside.
    let pid = d.describe("victim")["qemu"]["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = d.wait_state("victim", "crashed", Duration::from_secs(30));
    assert!(
        s["state_reason"].as_str().unwrap().contains("SIGKILL"),
        "{s}"
    );
    d.ok(&["start", "victim"]);
    assert_eq!(d.state("victim"), "running");
    d.ok(&["destroy", "victim"]);

    // A guest kernel panic, reported through pvpanic.
    let mut c = d.console("panicky").await;
    c.wait_for(READY, BOOT).await;
    c.send("echo c > /proc/sysrq-trigger\n").await;
    let s = d.wait_state("panicky", "crashed", Duration::from_secs(60));
    assert!(
        s["state_reason"].as_str().unwrap().contains("panicked"),
        "{s}"
    );

    let mut c = d.console("survivor").await;
    c.wait_for(READY, BOOT).await;
    let n = c.seen.matches(READY).count();
    c.send("echo c > /proc/sysrq-trigger\n").await;
    c.wait_count(READY, n + 1, BOOT).await;
    assert_eq!(d.state("survivor"), "running", "on_crash=restart");
    d.ok(&["destroy", "survivor"]);
}
