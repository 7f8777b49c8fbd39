//! How a VM boots beyond its image (firmware, CD-ROM, own kernel) and its first-boot
//! configuration (the NoCloud seed), as kept in the VM's record.

use hostel_api::agent::Seed;
use hostel_api::public::Firmware;
use hostel_model::Invalid;
use serde::{Deserialize, Serialize};

/// `vms.boot_json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BootConfig {
    #[serde(default)]
    pub firmware: Firmware,
    /// A CD-ROM file on the host (an image from the library is `vms.cdrom_image_id`).
    #[serde(default)]
    pub cdrom_path: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
}

/// `vms.cloud_json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CloudConfig {
    pub seed: bool,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// SHA-512 crypt hash; the password itself is never stored.
    #[serde(default)]
    pub password_hash: Option<String>,
}

impl BootConfig {
    pub fn parse(json: Option<&str>) -> BootConfig {
        json.and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }
}

impl CloudConfig {
    pub fn parse(json: Option<&str>) -> CloudConfig {
        json.and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }
}

/// The longest SSH public key line taken (a 16384-bit RSA key with a comment is ~3 KB).
pub const MAX_SSH_KEY_BYTES: usize = 8192;

/// Checks one SSH public key: one line, a known key type, a base64 body.
pub fn check_ssh_key(key: &str) -> Result<String, Invalid> {
    // Checked before trimming, as the API's schema (`maxLength`) counts.
    let too_long = key.len() > MAX_SSH_KEY_BYTES;
    let key = key.trim();
    let bad = |why: &str| {
        Invalid::new(
            "ssh_keys",
            format!(
                "{why}: give an OpenSSH public key like \"ssh-ed25519 AAAA... you@host\" \
                 (the contents of ~/.ssh/id_ed25519.pub)"
            ),
        )
    };
    if key.is_empty() {
        return Err(bad("an SSH key is empty"));
    }
    if too_long {
        return Err(bad(&format!(
            "an SSH key is longer than {MAX_SSH_KEY_BYTES} bytes"
        )));
    }
    if key.contains(['\n', '\r']) {
        return Err(bad("an SSH key spans several lines"));
    }
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let known = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-");
    if !known {
        return Err(bad(&format!("{kind:?} is not an SSH key type")));
    }
    if body.len() < 16
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err(bad("the key's body is not base64"));
    }
    Ok(key.to_string())
}

pub fn hash_password(password: &str) -> Result<String, Invalid> {
    if password.is_empty() {
        return Err(Invalid::new("password", "the password is empty"));
    }
    if password.chars().count() > 256 || password.contains(['\n', '\r', '\0']) {
        return Err(Invalid::new(
            "password",
            "the password must be one line of at most 256 bytes",
        ));
    }
    sha_crypt::sha512_simple(password, &sha_crypt::Sha512Params::default())
        .map_err(|_| Invalid::new("password", "the password could not be hashed"))
}

/// A YAML string scalar (JSON strings are YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// One NIC as the seed's network configuration describes it.
pub struct SeedNic {
    pub mac: String,
}

/// The NoCloud seed for a VM: hostname (and FQDN with the network's domain), SSH keys
/// for root and the image's default user, the root password, DHCP on every NIC.
pub fn render_seed(
    vm_id: &str,
    name: &str,
    domain: Option<&str>,
    cloud: &CloudConfig,
    nics: &[SeedNic],
) -> Seed {
    let meta_data = format!("instance-id: {}\nlocal-hostname: {}\n", q(vm_id), q(name));
    let mut u = String::from("#cloud-config\n");
    u += &format!("hostname: {}\n", q(name));
    if let Some(d) = domain {
        u += &format!("fqdn: {}\n", q(&format!("{name}.{d}")));
    }
    u += "preserve_hostname: false\nmanage_etc_hosts: true\ndisable_root: false\n";
    if !cloud.ssh_keys.is_empty() {
        u += "ssh_authorized_keys:\n";
        for k in &cloud.ssh_keys {
            u += &format!("  - {}\n", q(k));
        }
    }
    match &cloud.password_hash {
        Some(h) => {
            u += "ssh_pwauth: true\nchpasswd:\n  expire: false\n  users:\n";
            u += &format!(
                "    - name: root\n      password: {}\n      type: hash\n",
                q(h)
            );
        }
        None => u += "ssh_pwauth: false\n",
    }
    let mut n = String::from("version: 2\nethernets:\n");
    if nics.is_empty() {
        n = "version: 2\n".into();
    }
    for (i, nic) in nics.iter().enumerate() {
        n += &format!(
            "  nic{i}:\n    match:\n      macaddress: {}\n    dhcp4: true\n",
            q(&nic.mac.to_ascii_lowercase())
        );
    }
    Seed {
        meta_data,
        user_data: u,
        network_config: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keys_are_checked() {
        let ok = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5z me@host";
        assert_eq!(check_ssh_key(&format!("  {ok}\n")).unwrap(), ok);
        for bad in [
            "",
            "hello world",
            "ssh-rsa",
            "ssh-rsa AAAA\nssh-rsa BBBB",
            "ssh-rsa not*base64*at-all",
        ] {
            let e = check_ssh_key(bad).unwrap_err();
            assert_eq!(e.field, "ssh_keys");
            assert!(e.message.contains("OpenSSH public key"), "{e}");
        }
    }

    #[test]
    fn passwords_are_hashed_not_kept() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$6$"), "{h}");
        assert!(!h.contains("s3cret"));
        assert!(sha_crypt::sha512_check("s3cret", &h).is_ok());
        assert!(hash_password("").is_err());
        assert!(hash_password("a\nb").is_err());
    }

    #[test]
    fn the_seed_carries_name_keys_password_and_network() {
        let cloud = CloudConfig {
            seed: true,
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5z me@host".into()],
            password_hash: Some("$6$salt$hash".into()),
        };
        let s = render_seed(
            "vm-1",
            "web",
            Some("vm.hostel"),
            &cloud,
            &[SeedNic {
                mac: "52:54:00:AB:00:01".into(),
            }],
        );
        assert_eq!(
            s.meta_data,
            "instance-id: \"vm-1\"\nlocal-hostname: \"web\"\n"
        );
        assert!(s
            .user_data
            .starts_with("#cloud-config\nhostname: \"web\"\n"));
        assert!(s.user_data.contains("fqdn: \"web.vm.hostel\""));
        assert!(s
            .user_data
            .contains("  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5z me@host\"\n"));
        assert!(s.user_data.contains("password: \"$6$salt$hash\""));
        assert!(s.user_data.contains("ssh_pwauth: true"));
        assert!(s
            .network_config
            .contains("macaddress: \"52:54:00:ab:00:01\""));
        assert!(s.network_config.contains("dhcp4: true"));
    }
}
