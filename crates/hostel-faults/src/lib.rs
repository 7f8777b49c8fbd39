//! Fault points: named places in multi-step operations where a process may die. Tests
//! and the chaos harness stop a process at one (a hold) or make it die there (a crash).
//!
//! Only in debug builds: release builds compile every point to nothing.
//!
//! **Holds** (`HOSTEL_HOLD_DIR` names a directory): a point is armed by a file of its
//! name in that directory. A process reaching an armed point removes that file (each
//! arming holds once), writes `NAME.reached`, and waits until `NAME.go` appears (which it
//! removes) before it goes on. A test that killed the process meanwhile never writes
//! `NAME.go`.
//!
//! **Crashes**: the process SIGKILLs itself at a point, as a power cut would end it (no
//! destructor, no flush). Which point:
//! - `HOSTEL_CRASH_AT=NAME`, or `=N` (the point's number in [`POINTS`], from 1): the
//!   first time it is reached; `NAME#K` or `N#K`: the K-th time;
//! - `HOSTEL_CRASH_SEED=S`: each point reached dies with odds 1 in `HOSTEL_CRASH_ODDS`
//!   (20 if unset), drawn from a generator seeded with S, so that the same workload with
//!   the same seed dies at the same place.
//!
//! When `HOSTEL_CRASH_LOG` names a file, the point's name is appended to it before the
//! process dies, so a harness knows where it died.

/// Every fault point, in a fixed order (a point's number is its place here, from 1).
/// Controller points are named `controller.<operation>.<step>`, agent points
/// `agent.<operation>.<step>`; a step names what has been done when the point is reached.
pub const POINTS: &[&str] = &[
    // Creating a VM: its disk files exist, no row yet; the rows exist; networks set.
    "controller.create.disks-made",
    "controller.create.rows-written",
    "controller.create.networks-set",
    // Deleting a VM: QEMU ended and the host forgot it; the rows are gone, files not.
    "controller.delete.host-forgot",
    "controller.delete.rows-deleted",
    // A start: the host runs QEMU, the database does not know yet.
    "controller.start.launched",
    // Lifecycle actions (stop, reboot, pause, ...): the host acted, not yet recorded.
    "controller.action.done-on-host",
    "controller.disk-add.file-made",
    "controller.disk-add.row-written",
    "controller.disk-remove.detached",
    "controller.disk-remove.row-deleted",
    "controller.disk-resize.grown",
    "controller.snapshot-create.taken",
    "controller.snapshot-delete.deleted-on-disk",
    "controller.snapshot-revert.reverted",
    "controller.save.saved",
    "controller.restore.restored",
    "controller.nic-add.row-written",
    "controller.nic-remove.detached",
    "controller.network-create.row-written",
    "controller.network-delete.rows-deleted",
    "controller.chown.checked",
    "controller.image.file-made",
    // Migration (also hold points for its tests).
    "controller.migrate.prepare",
    "controller.migrate.commit",
    "controller.migrate.cleanup",
    "controller.migrate.offline-commit",
    "controller.migrate.storage",
    "controller.migrate.memory",
    "controller.migrate.switchover",
    "agent.migrate-out.storage",
    "agent.migrate-out.memory",
    "agent.migrate-out.switchover",
    // The agent: QEMU started, its pid not recorded yet; a disk file made; a hot-plugged
    // NIC's tap passed to QEMU, the NIC not in the runtime spec yet.
    "agent.start.spawned",
    "agent.disk.created",
    "agent.nic-add.tap-passed",
    // An export's temporary copy made, not open yet (`disk_moves.rs`).
    "agent.export.copied",
    // A VM made with its disks to follow (an import, a restore as a new VM): one more
    // disk copied in.
    "controller.create.disk-copied",
    // A restore over a VM: one disk copied in beside the old ones; the swap begun.
    "controller.restore-over.copying",
    "controller.restore-over.disk-copied",
    "controller.restore-over.swapping",
];

/// Stops or ends the process at `point` if a test armed it (see the module's
/// documentation).
pub async fn point(point: &str) {
    #[cfg(debug_assertions)]
    {
        crash(point);
        hold(point).await;
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// The synchronous half of [`point`]: dies here if armed to; never holds.
pub fn crash_point(point: &str) {
    #[cfg(debug_assertions)]
    crash(point);
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// The number of a point (from 1), or `None` for a name not in [`POINTS`].
pub fn number(point: &str) -> Option<usize> {
    POINTS.iter().position(|p| *p == point).map(|i| i + 1)
}

#[cfg(debug_assertions)]
async fn hold(point: &str) {
    let Some(dir) = std::env::var_os("HOSTEL_HOLD_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    if std::fs::remove_file(dir.join(point)).is_err() {
        return;
    }
    tracing::warn!(point, "held at a fault-injection point");
    let _ = std::fs::write(dir.join(format!("{point}.reached")), b"");
    let go = dir.join(format!("{point}.go"));
    while std::fs::remove_file(&go).is_err() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::warn!(point, "released");
}

#[cfg(debug_assertions)]
mod crashes {
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// What the environment armed, read once.
    pub(crate) enum Armed {
        None,
        At { point: String, nth: u64 },
        Seeded { state: u64, odds: u64 },
    }

    pub(crate) struct State {
        pub armed: Armed,
        pub reached: HashMap<String, u64>,
    }

    pub(crate) static STATE: Mutex<Option<State>> = Mutex::new(None);

    pub(crate) fn from_env() -> Armed {
        if let Ok(at) = std::env::var("HOSTEL_CRASH_AT") {
            let (p, nth) = match at.split_once('#') {
                Some((p, k)) => (p.to_string(), k.parse().unwrap_or(1)),
                None => (at.clone(), 1),
            };
            let point = match p.parse::<usize>() {
                Ok(n) if (1..=super::POINTS.len()).contains(&n) => super::POINTS[n - 1].into(),
                _ => p,
            };
            return Armed::At { point, nth };
        }
        if let Ok(seed) = std::env::var("HOSTEL_CRASH_SEED") {
            let odds = std::env::var("HOSTEL_CRASH_ODDS")
                .ok()
                .and_then(|o| o.parse().ok())
                .filter(|o| *o > 0)
                .unwrap_or(20);
            // splitmix64 of the seed: never zero for xorshift.
            let mut z = seed
                .parse::<u64>()
                .unwrap_or(1)
                .wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            return Armed::Seeded {
                state: (z ^ (z >> 31)) | 1,
                odds,
            };
        }
        Armed::None
    }

    /// Whether the process dies at `point` now.
    pub(crate) fn due(point: &str) -> bool {
        let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let st = guard.get_or_insert_with(|| State {
            armed: from_env(),
            reached: HashMap::new(),
        });
        let n = st.reached.entry(point.to_string()).or_insert(0);
        *n += 1;
        let n = *n;
        match &mut st.armed {
            Armed::None => false,
            Armed::At { point: p, nth } => p == point && *nth == n,
            Armed::Seeded { state, odds } => {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                *state % *odds == 0
            }
        }
    }
}

#[cfg(debug_assertions)]
fn crash(point: &str) {
    if !crashes::due(point) {
        return;
    }
    tracing::error!(
        point,
        "dying at a crash point (HOSTEL_CRASH_AT or HOSTEL_CRASH_SEED)"
    );
    eprintln!("hostel: crash point {point}: dying now");
    if let Some(log) = std::env::var_os("HOSTEL_CRASH_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{point}");
            let _ = f.sync_all();
        }
    }
    // SAFETY: kill(2) on our own pid has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort();
}

#[cfg(test)]
mod tests {
    // `hold` alone: `point` would also draw a crash, which the other test arms.
    #[tokio::test]
    async fn an_armed_point_holds_once_until_released() {
        let dir = std::env::temp_dir().join(format!("hostel-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var("HOSTEL_HOLD_DIR", &dir);
        // Not armed: goes straight on.
        super::hold("p").await;
        assert!(!dir.join("p.reached").exists());
        std::fs::write(dir.join("p"), b"").unwrap();
        let held = tokio::spawn(super::hold("p"));
        while !dir.join("p.reached").exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!held.is_finished(), "it waits for its release");
        std::fs::write(dir.join("p.go"), b"").unwrap();
        held.await.unwrap();
        assert!(!dir.join("p").exists(), "disarmed after one hold");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn points_are_unique_and_numbered_from_one() {
        let mut seen = std::collections::HashSet::new();
        for p in super::POINTS {
            assert!(seen.insert(*p), "{p} is listed twice");
            assert!(p.starts_with("controller.") || p.starts_with("agent."));
        }
        assert_eq!(super::number(super::POINTS[0]), Some(1));
        assert_eq!(super::number("nowhere"), None);
    }

    /// The crash itself is seen by the chaos harness (a real process dying at a point);
    /// here, which reach is due.
    #[test]
    fn a_seeded_draw_repeats_and_a_named_point_dies_on_its_kth_reach() {
        use super::crashes::{Armed, State, STATE};
        let draws = |seed: u64| {
            *STATE.lock().unwrap() = Some(State {
                armed: Armed::Seeded {
                    state: seed | 1,
                    odds: 3,
                },
                reached: Default::default(),
            });
            let out: Vec<bool> = (0..30).map(|_| super::crashes::due("x")).collect();
            *STATE.lock().unwrap() = None;
            out
        };
        let a = draws(42);
        assert_eq!(a, draws(42), "the same seed dies at the same reaches");
        assert!(a.iter().any(|d| *d) && a.iter().any(|d| !*d));
        *STATE.lock().unwrap() = Some(State {
            armed: Armed::At {
                point: "y".into(),
                nth: 2,
            },
            reached: Default::default(),
        });
        assert!(!super::crashes::due("x"));
        assert!(!super::crashes::due("y"));
        assert!(super::crashes::due("y"), "the second reach of y");
        assert!(!super::crashes::due("y"));
        *STATE.lock().unwrap() = None;
    }
}
