//! QEMU's TLS on a migration's streams (memory and NBD): the certificate and key the
//! controller made for one migration, written for the VM's QEMU alone to read, and the
//! credentials object QEMU makes of them.

use crate::AgentError;
use anyhow::anyhow;
use hostel_api::agent::StreamTls;
use hostel_qemu::argv::RuntimePaths;
use hostel_qemu::process::RunAs;
use serde_json::json;

/// The id of the TLS credentials object a migration's QEMU uses.
pub(crate) const TLS_ID: &str = "hostel-migration-tls";

/// Writes a migration's certificate and key for the VM's QEMU (its uid alone reads
/// them) and makes QEMU's TLS credentials object of them, `endpoint` `server` (the
/// receiving end) or `client`. QEMU reads the files once, here; the directory is
/// removed when the migration ends (`drop_tls_files`).
pub(crate) async fn tls_creds(
    qmp: &hostel_qemu::Qmp,
    paths: &RuntimePaths,
    tls: &StreamTls,
    endpoint: &str,
    owner: Option<&RunAs>,
) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tls_dir(paths);
    let _ = std::fs::remove_dir_all(&dir);
    let write = || -> anyhow::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        for (name, data, mode) in [
            ("ca-cert.pem".to_string(), &tls.ca_pem, 0o644),
            (format!("{endpoint}-cert.pem"), &tls.cert_pem, 0o644),
            (format!("{endpoint}-key.pem"), &tls.key_pem, 0o600),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, data)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            if let Some(o) = owner {
                crate::uids::give(&path, o, mode)?;
            }
        }
        if let Some(o) = owner {
            crate::uids::give(&dir, o, 0o700)?;
        }
        Ok(())
    };
    write().map_err(|e| AgentError::Internal(e.context("writing the migration's TLS files")))?;
    // One object at a time: a VM that came here by migration still has the last one.
    let _ = qmp.execute("object-del", json!({ "id": TLS_ID })).await;
    qmp.execute(
        "object-add",
        json!({"qom-type": "tls-creds-x509", "id": TLS_ID, "dir": dir.display().to_string(),
            "endpoint": endpoint, "verify-peer": true}),
    )
    .await
    .map_err(|e| AgentError::Invalid(anyhow!("tls: QEMU refused the certificates: {e}")))?;
    Ok(())
}

fn tls_dir(paths: &RuntimePaths) -> std::path::PathBuf {
    paths.dir.join("migration-tls")
}

/// Removes a migration's certificate files (QEMU read them when it made its object).
pub(crate) fn drop_tls_files(paths: &RuntimePaths) {
    let _ = std::fs::remove_dir_all(tls_dir(paths));
}
