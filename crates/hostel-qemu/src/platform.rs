//! What this host's QEMU offers a VM: its machine types and the CPU models it runs with
//! every feature under the chosen accelerator. A VM is pinned to both when it is
//! created, and moves live only to a host that offers them.

use hostel_api::agent::Platform;
use hostel_model::Accel;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Asks QEMU (`-machine help`, and QMP's `query-cpu-definitions` in a paused QEMU under
/// `accel`) and reads the host CPU's name.
pub async fn probe(binary: &str, accel: Accel) -> anyhow::Result<Platform> {
    let help = tokio::process::Command::new(binary)
        .args(["-machine", "help"])
        .output()
        .await?;
    let (machine, machines) = parse_machines(&String::from_utf8_lossy(&help.stdout));
    let mut qemu = tokio::process::Command::new(binary)
        .args(["-accel", accel.as_str(), "-machine", "q35", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-S", "-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = qemu.stdin.take().expect("piped");
    // QMP reads its commands in order once its greeting is out; `quit` ends it.
    stdin
        .write_all(
            b"{\"execute\":\"qmp_capabilities\"}\n\
              {\"execute\":\"query-cpu-definitions\"}\n\
              {\"execute\":\"quit\"}\n",
        )
        .await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), qemu.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("{binary} did not answer query-cpu-definitions in 30 s"))??;
    let cpu_models = parse_cpu_models(&String::from_utf8_lossy(&out.stdout));
    if cpu_models.is_empty() {
        anyhow::bail!("{binary} listed no CPU model this host runs in full");
    }
    Ok(Platform {
        machine,
        machines,
        cpu_models,
        cpu_name: cpu_name(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        // Whether userfaultfd is open to the VMs' QEMU is the agent's to say.
        postcopy: false,
    })
}

/// The versioned type `q35` stands for, and every `pc-q35-*` type.
fn parse_machines(help: &str) -> (String, Vec<String>) {
    let mut machine = String::new();
    let mut machines = Vec::new();
    for line in help.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name == "q35" {
            if let Some(rest) = line.split("(alias of ").nth(1) {
                machine = rest.trim_end_matches(')').trim().to_string();
            }
        } else if name.starts_with("pc-q35-") {
            machines.push(name.to_string());
        }
    }
    (machine, machines)
}

/// The named, versioned models QMP says run with no feature missing (aliases, `max`,
/// `base` and `host` are left out: they mean different CPUs on different hosts).
fn parse_cpu_models(qmp_out: &str) -> Vec<String> {
    let mut models: Vec<String> = qmp_out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("return")?.as_array().cloned())
        .flatten()
        .filter(|d| d.get("alias-of").is_none())
        .filter(|d| {
            d.get("unavailable-features")
                .and_then(|f| f.as_array())
                .is_some_and(|f| f.is_empty())
        })
        .filter_map(|d| d.get("name")?.as_str().map(String::from))
        .filter(|n| !matches!(n.as_str(), "max" | "base" | "host"))
        .collect();
    models.sort();
    models
}

fn cpu_name(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_and_models_are_read_from_qemus_answers() {
        let help = "Supported machines are:\n\
            pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)\n\
            q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)\n\
            pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)\n\
            pc-q35-9.2           Standard PC (Q35 + ICH9, 2009)\n";
        let (m, all) = parse_machines(help);
        assert_eq!(m, "pc-q35-10.0");
        assert_eq!(all, ["pc-q35-10.0", "pc-q35-9.2"]);
        let qmp = r#"{"QMP": {"version": {}}}
{"return": {}}
{"return": [{"name": "Westmere-v1", "unavailable-features": []},
 {"name": "Westmere", "alias-of": "Westmere-v1", "unavailable-features": []},
 {"name": "Haswell-v4", "unavailable-features": ["pcid"]},
 {"name": "max", "unavailable-features": []},
 {"name": "Nehalem-v1", "unavailable-features": []}]}
{"return": {}}"#
            .replace("\n ", " ");
        assert_eq!(parse_cpu_models(&qmp), ["Nehalem-v1", "Westmere-v1"]);
        assert_eq!(
            cpu_name("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n"),
            "Intel(R) Xeon(R)"
        );
    }

    #[tokio::test]
    async fn this_hosts_qemu_runs_the_cluster_baseline_under_tcg() {
        let p = probe("qemu-system-x86_64", Accel::Tcg).await.unwrap();
        assert!(p.machine.starts_with("pc-q35-"), "{p:?}");
        assert!(p.machines.contains(&p.machine), "{p:?}");
        assert!(
            p.cpu_models.iter().any(|m| m == hostel_model::CPU_BASELINE),
            "{p:?}"
        );
    }
}
