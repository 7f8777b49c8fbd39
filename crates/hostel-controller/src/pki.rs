//! The cluster CA and the node certificates the controller and agents use for mutual TLS.
//! Made once per data directory and kept.
//!
//! Beside it, the cluster's migration CA (`migration-ca.pem`) signs the certificates
//! QEMU shows on a migration's streams: made for one migration, valid for a day, and
//! kept in the VM's directory (its QEMU's uid reads them) only while it lasts. Agents
//! do not trust that CA for their API, so a QEMU that got hold of such a key opens no
//! agent.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct Pki {
    pub dir: PathBuf,
}

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// An agent: serves the agent API.
    Agent,
    /// The controller: a client of agents.
    Controller,
}

pub struct Pair {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Writes a private key readable by its owner only from the moment it exists: a new
/// file is made 0600 (and an old one, which may have another mode, replaced by it).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// The migration CA's files' stem in the PKI directory.
const STREAM_CA: &str = "migration-ca";

fn ca_params(stem: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        if stem == STREAM_CA {
            "Hostel migration CA"
        } else {
            "Hostel cluster CA"
        },
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl Pki {
    /// Loads the CA from `dir`, creating it (and the directory) the first time.
    pub fn open(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.make_ca("ca")?;
        Ok(pki)
    }

    /// Makes the CA `stem` (`stem.pem`, `stem.key`) unless it is there.
    fn make_ca(&self, stem: &str) -> Result<()> {
        if !self.dir.join(format!("{stem}.pem")).exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params(stem)?.self_signed(&key)?;
            write_private(
                &self.dir.join(format!("{stem}.key")),
                key.serialize_pem().as_bytes(),
            )?;
            std::fs::write(self.dir.join(format!("{stem}.pem")), cert.pem())?;
        }
        Ok(())
    }

    /// A certificate from the migration CA for one end of one migration's streams,
    /// valid for `name` (the receiving end's) for a day, as a server's (`server`) or a
    /// client's; with the migration CA's certificate. Not written anywhere.
    pub fn stream_pair(&self, name: &str, server: bool) -> Result<(String, Pair)> {
        self.make_ca(STREAM_CA)?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(1);
        let pair = self.sign(STREAM_CA, params)?;
        let ca = std::fs::read_to_string(self.dir.join(format!("{STREAM_CA}.pem")))?;
        Ok((ca, pair))
    }

    /// A new key and its certificate from `params`, signed by the CA `stem`.
    fn sign(&self, stem: &str, params: CertificateParams) -> Result<Pair> {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(
            self.dir.join(format!("{stem}.key")),
        )?)?;
        // The same subject and key as the stored CA certificate: what it signs verifies
        // against that certificate.
        let ca = ca_params(stem)?.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok(Pair {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        })
    }

    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.join("ca.pem"))?)
    }

    /// The certificate kept under `name` (the file stem), made by `issue` the first time.
    pub fn node(&self, name: &str, sans: &[String], role: Role) -> Result<Pair> {
        let (cert_path, key_path) = self.paths(name);
        if cert_path.exists() && key_path.exists() {
            return Ok(Pair {
                cert_pem: std::fs::read(cert_path)?,
                key_pem: std::fs::read(key_path)?,
            });
        }
        self.issue(name, sans, role)
    }

    /// A new certificate signed by the CA for `name` (the file stem, replaced if there),
    /// valid for `sans`, for one role only: an agent's (`Role::Agent`, TLS server) cannot
    /// act as the controller (`Role::Controller`, TLS client) towards other agents, and
    /// the other way round.
    pub fn issue(&self, name: &str, sans: &[String], role: Role) -> Result<Pair> {
        let (cert_path, key_path) = self.paths(name);
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![match role {
            Role::Agent => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Controller => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let pair = self.sign("ca", params)?;
        write_private(&key_path, &pair.key_pem)?;
        std::fs::write(&cert_path, &pair.cert_pem)?;
        Ok(pair)
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }
}
