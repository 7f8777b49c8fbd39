//! Host networking for VMs: one Linux bridge per network, one tap per NIC (created by
//! ioctl and handed to QEMU as a file descriptor), nftables port guards (bridge family)
//! and NAT, and one dnsmasq per network for DHCP and DNS.
//!
//! Links are managed with iproute2's `ip` and rules with `nft`, both idempotent, so an
//! agent that restarts converges to the same state.

pub mod dnsmasq;
pub mod filter;
pub mod guard;
pub mod link;
pub mod nat;
pub mod tap;

use std::process::Command;

/// Runs a command and returns its stdout, or an error with its stderr.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} {:?} failed: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nftables tables in the kernel, as `FAMILY NAME` (`inet hostel_filter`); none if
/// `nft` cannot be asked.
pub fn tables() -> Vec<String> {
    run(Command::new("nft").args(["list", "tables"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(|t| t.trim().to_string())
        .collect()
}

/// Feeds a script to `nft -f -` as one atomic transaction.
pub(crate) fn nft(script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run nft (apt-get install nftables): {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "nft failed: {}\n--- script ---\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
