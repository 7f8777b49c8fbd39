//! The API against its OpenAPI document, as a new client would use it: schemathesis
//! (`st`, installed by scripts/install-deps.sh) generates requests from
//! `/api/openapi.json`, valid and invalid, and runs all its checks on the answers of a
//! real `hostel up`: once as a plain user, once as the admin. Any failure or server error
//! fails the test.

mod common;
use common::*;
use std::process::Stdio;
use std::time::Instant;

/// Operations left out, and why.
const EXCLUDED_PATHS: &[(&str, &str)] = &[
    // A stream of server-sent events that never ends (hostel-simagent's controller tests
    // and the browser tests check it).
    ("/api/v1/events", "a stream that does not end"),
    // Builds an image: minutes of work each, and the `debian` recipe downloads from a
    // Debian mirror.
    ("/api/v1/images/build", "slow, and fetches from the network"),
    // Downloads the URL it is given, or reads any file on the host.
    ("/api/v1/images/import", "fetches URLs"),
    // Reads the disk files (any on the host) a Xen config names into a new VM.
    ("/api/v1/import/xen", "reads any file on the host"),
    // Makes a directory at any absolute path of the host (tests/backups.rs adds one).
    ("/api/v1/backup-targets", "writes anywhere on the host"),
    // Adding a host connects to the address given; removing the only host (once the run
    // has deleted what was on it) would leave nothing to run VMs on.
    ("/api/v1/hosts", "connects to addresses"),
    ("/api/v1/hosts/{name}", "removes the only host"),
    // Makes a directory at any absolute path of the host, outside the test's data dir.
    ("/api/v1/pools", "writes anywhere on the host"),
    // A running VM's memory saved to any absolute path of the host: as admin, that
    // writes anywhere on the host.
    ("/api/v1/vms/{name}/save", "writes anywhere on the host"),
    // A websocket: a plain HTTP client only ever sees the refusal of its missing upgrade
    // headers (tests/console_*.rs drive it for real).
    ("/api/v1/vms/{name}/console", "a websocket"),
    // Revoking tokens: the stateful phase takes the names from `GET /me/tokens`, so it
    // revokes the token the run uses, and the rest of the run sees only 401s.
    ("/api/v1/me/tokens/{name}", "revokes the run's own token"),
];

/// The run's configuration. Where a schema-valid request may still be refused with a
/// 400 for a reason JSON Schema cannot say, that operation also takes a 400 as an answer
/// to valid data (every other check, and every other status, stays as strict):
/// - POST /vms: what must be there together (an image, a CD-ROM or a kernel; `initrd`
///   and `cmdline` with a kernel; max vCPUs at least vCPUs) and what the host has (its
///   memory; the files named exist);
/// - POST /networks: a CIDR without host bits, a gateway inside it;
/// - POST /restore: the file must be one `save` wrote;
/// - passwords (POST /users, /users/{name}/password, /me/password): not one repeated
///   character nor the user's name, and your own current one to change it;
/// - POST /me/tokens: `expires_at` must be in the future;
/// - POST /import/vm: the bytes must be an archive `hostel export` wrote.
///
/// And `ensure_resource_availability` (a 404 right after a create means the created
/// thing is missing) is off where the body names other things that may be missing too
/// (the user to add to a group, the network of a new NIC): their 404 says which.
///
/// Every check is on (schemathesis 4's default, as `--checks all` would say): the checks
/// are chosen here rather than on the command line, where `--checks all` would override
/// the per-operation settings above.
const CONFIG: &str = r#"
[[operations]]
include-name = [
    "POST /api/v1/vms",
    "POST /api/v1/networks",
    "POST /api/v1/restore",
    "POST /api/v1/users",
    "POST /api/v1/users/{name}/password",
    "POST /api/v1/me/password",
    "POST /api/v1/me/tokens",
    "POST /api/v1/import/vm",
]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[[operations]]
include-name = [
    "POST /api/v1/groups/{name}/members",
    "POST /api/v1/groups/{name}/members/remove",
    "POST /api/v1/vms/{name}/owner",
    "POST /api/v1/vms/{name}/nics",
    "POST /api/v1/vms/{name}/disks",
]
checks.ensure_resource_availability.enabled = false
"#;

/// Test cases per operation and phase: enough to reach every status the document lists
/// for bad input, few enough for a couple of minutes per run on two cores.
const MAX_EXAMPLES: &str = "20";

fn st() -> String {
    let venv = "/opt/hostel-venv/bin/st";
    if std::path::Path::new(venv).exists() {
        return venv.to_string();
    }
    "st".to_string()
}

/// Runs schemathesis with `token`; panics with its report unless it found nothing.
fn schemathesis(d: &Daemon, who: &str, token: &str) {
    let dir = d.dir.path().join(format!("st-{who}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut cmd = d.ns.cmd(&st());
    cmd.current_dir(&dir)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/api/openapi.json", d.url)])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", "20251130", "--generation-database", "none"])
        // One request at a time, so that a run is the same run each time (with a fixed
        // seed): two workers pass too (deleting a user or a group takes the write lock
        // first, so concurrent requests wait instead of meeting "database is locked"),
        // but which request meets which state then varies from run to run.
        .args(["--workers", "1", "--request-timeout", "60", "--no-color"])
        // The tokens are the test daemon's own: show requests whole, to reproduce them.
        .args(["--output-sanitize", "false"]);
    for (path, _why) in EXCLUDED_PATHS {
        cmd.args(["--exclude-path", path]);
    }
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis (`st`): scripts/install-deps.sh installs it");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "schemathesis as {who}: {:?} in {:.0?}\n{}",
        out.status,
        started.elapsed(),
        tail(&report, 60)
    );
    assert!(
        out.status.success(),
        "schemathesis as {who} found differences between the API and its document:\n{report}"
    );
    // Zero failures and no server error, as the summary says it.
    assert!(
        !report.contains("Server error") && !report.contains(" failure"),
        "schemathesis as {who}:\n{report}"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn the_api_answers_as_its_openapi_document_says() {
    // Schemathesis sends hundreds of requests without a token or with a wrong one, from
    // one address, and expects each to be answered 401: a budget of refusals to match
    // (the 429 that would follow is documented, and tests/abuse.rs checks it).
    let mut d = Daemon::unstarted();
    d.env
        .push(("HOSTEL_REFUSAL_BUDGET".into(), "100000".into()));
    d.launch();
    let (status, body) = d.http_post("/api/v1/users", r#"{"name":"plain"}"#);
    assert_eq!(status, 201, "{body}");
    let (status, body) = d.http_post("/api/v1/me/tokens?user=plain", r#"{"name":"conformance"}"#);
    assert_eq!(status, 201, "{body}");
    let user_token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    // The plain user first: the admin's run deletes users, and may delete this one.
    schemathesis(&d, "plain user", &user_token);
    let admin_token = d.token.clone();
    schemathesis(&d, "admin", &admin_token);
}
