//! Untrusted users cannot fill the disk or starve others: a flood of bad logins and bad
//! tokens leaves the audit trail and the log within bounds while a logged-in user is
//! served; bodies larger than any request needs are refused; the audit trail's
//! retention is set and applied from the CLI; secret files are private.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// One keep-alive HTTP/1.1 connection into the daemon's namespace.
struct Http {
    d_host: String,
    reader: BufReader<std::net::TcpStream>,
}

impl Http {
    fn new(d: &Daemon) -> Http {
        let host = d.url.trim_start_matches("http://").to_string();
        let stream = d.ns.connect(&host);
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Http {
            d_host: host,
            reader: BufReader::new(stream),
        }
    }

    /// Sends one request; gives (status, headers in lower case, body).
    fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String, String) {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.d_host,
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "the daemon closed the connection");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, head, String::from_utf8_lossy(&body).into_owned())
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_bad_logins_and_tokens_stays_bounded_and_others_are_served() {
    let d = Daemon::start();
    let log = d.data_dir().join("hostel.log");
    let rows_before = d.json(&["audit"]).as_array().unwrap().len();
    let log_before = std::fs::metadata(&log).unwrap().len();

    // 10,000 requests from one address: bad logins (with a name far longer than any
    // user's), wrong tokens, and no token at all.
    let long_name = "m".repeat(100_000);
    let bad_login = format!(r#"{{"user":"{long_name}","password":"not the password"}}"#);
    let wrong_token = format!("hostel-tok-nobody.{}", "0".repeat(64));
    let mut flood = Http::new(&d);
    let mut legit = Http::new(&d);
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    let mut retry_after_seen = false;
    for i in 0..10_000u32 {
        let (status, head, _) = match i % 3 {
            0 => flood.send("POST", "/api/v1/login", None, &bad_login),
            1 => flood.send("POST", "/api/v1/vms", Some(&wrong_token), r#"{"name":"x"}"#),
            _ => flood.send("DELETE", "/api/v1/vms/victim", None, ""),
        };
        *statuses.entry(status).or_default() += 1;
        if status == 429 {
            retry_after_seen |= head.contains("retry-after:");
        }
        // Meanwhile a logged-in user is served, at once.
        if i % 2_000 == 1_000 {
            let asked = Instant::now();
            let (status, _, body) = legit.send("GET", "/api/v1/whoami", Some(&d.token), "");
            assert_eq!(status, 200, "{body}");
            assert!(asked.elapsed() < Duration::from_secs(2));
            let (status, _, body) = legit.send(
                "POST",
                "/api/v1/groups",
                Some(&d.token),
                &format!(r#"{{"name":"during-{i}"}}"#),
            );
            assert_eq!(status, 201, "{body}");
        }
    }
    let took = started.elapsed();
    eprintln!("10,000 bad requests in {took:?}: {statuses:?}");
    // Beyond the first few, the flood is answered 429, saying when to come back.
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 9_000,
        "{statuses:?}"
    );
    assert!(retry_after_seen);
    assert!(d.ok(&["whoami"]).contains("admin"));

    // The trail holds the refusals within budget one by one (an address's burst of 10,
    // then one every 2 s) and the rest as summaries, and what the admin did.
    let entries = d.json(&["audit"]);
    let rows = entries.as_array().unwrap().len() - rows_before;
    let bound = 10 + took.as_secs() as usize / 2 + 5 + 2 * 5;
    assert!(
        rows <= bound,
        "{rows} new audit rows, more than {bound}: {entries}"
    );
    // No entry holds the long name.
    assert!(!entries.to_string().contains(&"m".repeat(100)));
    // The log grows by a line per entry at most.
    let log_growth = std::fs::metadata(&log).unwrap().len() - log_before;
    assert!(log_growth < 64 * 1024, "the log grew by {log_growth} bytes");

    // Within a minute or two, the refusals over budget are summed up in the trail.
    let deadline = Instant::now() + Duration::from_secs(150);
    let summed = loop {
        let entries = d.json(&["audit"]);
        let summed: u64 = entries
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "request.refused-summary")
            .map(|e| e["params"]["refused"].as_u64().unwrap_or(0))
            .sum();
        if summed >= 9_000 {
            break summed;
        }
        assert!(
            Instant::now() < deadline,
            "no summary of the refusals: {entries}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(summed <= 10_000, "{summed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_retention_and_private_files() {
    let d = Daemon::start();
    // A body larger than any request needs is refused unread.
    let mut http = Http::new(&d);
    let huge = format!(r#"{{"name":"{}"}}"#, "g".repeat(300 * 1024));
    let (status, _, body) = http.send("POST", "/api/v1/groups", Some(&d.token), &huge);
    assert_eq!(status, 413, "{body}");

    // The audit trail's retention: set, shown, applied on demand.
    d.ok(&["audit", "retention", "set", "--days", "30"]);
    let r = d.json(&["audit", "retention", "show"]);
    assert_eq!(r["days"], 30);
    let report = d.json(&["audit", "prune"]);
    assert_eq!(report["removed"], 0, "{report}");
    assert!(report["before"].is_string(), "{report}");
    d.ok(&["audit", "retention", "set", "--forever"]);
    assert!(d.ok(&["audit", "retention", "show"]).contains("for ever"));
    let audit = d.json(&["audit"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "audit.retention-set" && e["params"]["days"] == 30),
        "{audit}"
    );
    // Not for users.
    d.ok(&["user", "create", "ursula"]);
    let t = d.ok(&["token", "create", "u", "--user", "ursula"]);
    // (A new connection: the refused body was left unread on the first.)
    let (status, _, _) = Http::new(&d).send("POST", "/api/v1/audit/prune", Some(t.trim()), "");
    assert_eq!(status, 403);

    // Every file holding a secret is the daemon's alone.
    let data = d.data_dir();
    let mut private = vec![
        data.join("hostel.db"),
        data.join("admin.token"),
        data.join("hostel.log"),
        data.join("pki/ca.key"),
        data.join("pki/ssh_host_ed25519_key"),
        d.config(),
    ];
    for suffix in ["-wal", "-shm", "-journal"] {
        let f = data.join(format!("hostel.db{suffix}"));
        if f.exists() {
            private.push(f);
        }
    }
    for entry in std::fs::read_dir(data.join("pki")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "key") {
            private.push(p);
        }
    }
    let out = d.dir.path().join("agent-tls");
    d.ok(&[
        "agent-cert",
        "n1",
        "--san",
        "10.0.0.1",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    private.push(out.join("agent.key"));
    for f in &private {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}
