//! What the tests of this crate share: a cluster CA with one agent and one controller
//! certificate (rcgen), and simulated hosts served over mutual TLS in this process.

#![allow(dead_code)]

use hostel_simagent::SimHost;
use std::sync::Arc;

pub struct Certs {
    pub ca: Vec<u8>,
    pub agent: (Vec<u8>, Vec<u8>),
    pub controller: (Vec<u8>, Vec<u8>),
}

pub fn certs() -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issue = |sans: Vec<String>, usage| {
        let mut p = CertificateParams::new(sans).unwrap();
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    };
    Certs {
        agent: issue(
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        controller: issue(
            vec!["controller".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        ca: ca.pem().into_bytes(),
    }
}

/// Serves the SIMULATED host `sim` through the real agent router; its `https://` URL.
pub fn serve_sim(certs: &Certs, sim: Arc<SimHost>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let tls = hostel_agent::TlsFiles {
        cert_pem: certs.agent.0.clone(),
        key_pem: certs.agent.1.clone(),
        client_ca_pem: certs.ca.clone(),
    };
    tokio::spawn(hostel_agent::serve_router(
        hostel_agent::api_router(sim),
        listener,
        tls,
        futures::future::pending(),
    ));
    url
}

/// A small VM's definition as an agent gets it.
#[allow(dead_code)] // not every test file uses it
pub fn spec(id: &str) -> hostel_api::agent::VmSpec {
    use hostel_api::agent::*;
    VmSpec {
        limits: Default::default(),
        id: id.into(),
        name: format!("name-{id}"),
        memory_mib: 256,
        max_memory_mib: 512,
        vcpus: 1,
        max_vcpus: 4,
        boot: Boot::Bios,
        disks: vec![],
        on_poweroff: Default::default(),
        on_reboot: Default::default(),
        on_crash: Default::default(),
        nics: vec![],
        cdrom: None,
        seed: None,
        machine: Some("pc-q35-10.0".into()),
        cpu_model: Some(hostel_model::CPU_BASELINE.into()),
        guest_agent: false,
    }
}
