//! Hold points: named places in multi-step operations (a migration's steps) where a
//! fault-injection test stops a process, to kill it or another one there.
//!
//! Only in debug builds, and only when `HOSTEL_HOLD_DIR` names a directory: a point is
//! armed by a file of its name in that directory. A process reaching an armed point
//! removes that file (each arming holds once), writes `NAME.reached`, and waits until
//! `NAME.go` appears (which it removes) before it goes on. A test that killed the
//! process meanwhile never writes `NAME.go`. Release builds compile every hold to
//! nothing.

/// Stops at `point` if a test armed it (see the module's documentation).
pub async fn hold(point: &str) {
    #[cfg(debug_assertions)]
    {
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
    #[cfg(not(debug_assertions))]
    let _ = point;
}

#[cfg(test)]
mod tests {
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
}
