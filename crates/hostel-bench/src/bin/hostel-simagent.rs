//! `hostel-simagent`: a SIMULATED fleet of agents for the control-plane benchmark, and
//! nothing else. It runs no QEMU and touches no disk or network: each simulated host
//! (a `hostel_simagent::SimHost`) answers the agent API through the real agent's router
//! (HTTPS, mutual TLS with the cluster CA) on a port of its own, and keeps its VMs as
//! records in memory.
//!
//! Host k is `simhost-k`. It reports as running the fleet VMs `simvm-i` with
//! `i % hosts == k` and `i <` the number in `--fleet-file` (read at each listing, so the
//! benchmark can grow the fleet it wrote into the database); VMs the controller starts on
//! it are kept in memory, and each change is streamed as events like a real agent's.
//!
//! Usage: hostel-simagent --hosts N --tls-dir DIR --fleet-file FILE [--listen-ip IP]
//! Prints one `https://IP:PORT` a host, then `ready`.

use anyhow::{bail, Context, Result};
use hostel_simagent::SimHost;
use std::path::PathBuf;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mut hosts, mut tls_dir, mut fleet_file, mut ip) = (0usize, None, None, "127.0.0.1");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hosts" => hosts = it.next().context("--hosts N")?.parse()?,
            "--tls-dir" => tls_dir = Some(PathBuf::from(it.next().context("--tls-dir DIR")?)),
            "--fleet-file" => fleet_file = Some(PathBuf::from(it.next().context("--fleet-file F")?)),
            "--listen-ip" => ip = it.next().context("--listen-ip IP")?,
            other => bail!("unknown argument {other:?}: use --hosts N --tls-dir DIR --fleet-file F [--listen-ip IP]"),
        }
    }
    let (Some(tls_dir), Some(fleet_file)) = (tls_dir, fleet_file) else {
        bail!("give --tls-dir and --fleet-file");
    };
    if hosts == 0 {
        bail!("give --hosts N (at least 1)");
    }
    let read = |f: &str| std::fs::read(tls_dir.join(f)).with_context(|| format!("reading {f}"));
    let (cert, key, ca) = (read("agent.pem")?, read("agent.key")?, read("ca.pem")?);
    let mut tasks = Vec::new();
    for index in 0..hosts {
        let listener = std::net::TcpListener::bind((ip, 0))?;
        println!("https://{}", listener.local_addr()?);
        let host = Arc::new(SimHost::new(index, hosts, fleet_file.clone()));
        let tls = hostel_agent::TlsFiles {
            cert_pem: cert.clone(),
            key_pem: key.clone(),
            client_ca_pem: ca.clone(),
        };
        tasks.push(tokio::spawn(hostel_agent::serve_router(
            hostel_agent::api_router(host),
            listener,
            tls,
            futures::future::pending(),
        )));
    }
    println!("ready");
    for t in tasks {
        t.await??;
    }
    Ok(())
}
