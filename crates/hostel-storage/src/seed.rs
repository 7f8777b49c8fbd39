//! The NoCloud seed: a small ISO 9660 volume labelled `cidata` holding `meta-data`,
//! `user-data` and `network-config`, which cloud-init reads at first boot.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Writes the seed ISO to `out` (replacing an older one), through a temporary file.
pub fn write_seed_iso(
    out: &Path,
    meta_data: &str,
    user_data: &str,
    network_config: &str,
) -> Result<()> {
    let dir = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let res = (|| {
        std::fs::write(dir.join("meta-data"), meta_data)?;
        std::fs::write(dir.join("user-data"), user_data)?;
        std::fs::write(dir.join("network-config"), network_config)?;
        let tmp = out.with_extension("iso.tmp");
        let o = Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(&tmp)
            .arg(dir.join("meta-data"))
            .arg(dir.join("user-data"))
            .arg(dir.join("network-config"))
            .output()
            .context("cannot run genisoimage (apt-get install genisoimage)")?;
        if !o.status.success() {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "genisoimage failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        std::fs::rename(&tmp, out)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_iso_has_the_cidata_label_and_the_files() {
        let dir = std::env::temp_dir().join(format!("hostel-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let iso = dir.join("seed.iso");
        write_seed_iso(
            &iso,
            "instance-id: i-1\n",
            "#cloud-config\nhostname: web\n",
            "version: 2\n",
        )
        .unwrap();
        let bytes = std::fs::read(&iso).unwrap();
        // The primary volume descriptor at sector 16 carries the volume id at offset 40.
        let pvd = &bytes[16 * 2048..17 * 2048];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(std::str::from_utf8(&pvd[40..46]).unwrap(), "cidata");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("#cloud-config\nhostname: web"));
        assert!(text.contains("instance-id: i-1"));
        assert!(!dir.join("seed.d").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
