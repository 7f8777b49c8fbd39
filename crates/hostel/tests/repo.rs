//! What the repository promises: the README's two commands, `.ci/run` calling the test
//! command, and the checked-in OpenAPI document matching the server's.

mod common;
use common::*;

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first two commands in the README's first code block.
fn readme_commands() -> Vec<String> {
    let readme = repo_file("README.md");
    let block = readme
        .split("```")
        .nth(1)
        .expect("a code block in the README");
    block
        .lines()
        .skip(1)
        .map(str::trim)
        .map(|l| l.split(" #").next().unwrap_or(l).trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn readme_starts_with_setup_and_test_commands() {
    let cmds = readme_commands();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(cmds[0].contains("scripts/setup.sh"), "{cmds:?}");
    assert!(cmds[1].contains("scripts/test.sh"), "{cmds:?}");
    let ci = repo_file(".ci/run");
    let last = ci.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.contains(&cmds[1]),
        ".ci/run must call the README's test command: {last:?}"
    );
    for script in [
        "scripts/setup.sh",
        "scripts/test.sh",
        "scripts/install-deps.sh",
        "scripts/package.sh",
    ] {
        let text = repo_file(script);
        assert!(text.starts_with("#!/usr/bin/env bash"), "{script}");
    }
    // The package's own scripts run under /bin/sh (dash on Debian): they parse there.
    for script in [
        "packaging/hostel-service",
        "packaging/debian/postinst",
        "packaging/debian/prerm",
        "packaging/debian/postrm",
    ] {
        let text = repo_file(script);
        assert!(text.starts_with("#!/bin/sh"), "{script}");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let ok = std::process::Command::new("sh")
            .arg("-n")
            .arg(root.join(script))
            .status()
            .unwrap();
        assert!(ok.success(), "{script} does not parse");
    }
}

#[test]
fn checked_in_openapi_matches_the_server() {
    let out = std::process::Command::new(bin())
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let checked_in = repo_file("docs/openapi.json");
    assert_eq!(
        generated.trim(),
        checked_in.trim(),
        "docs/openapi.json is stale: run `hostel openapi > docs/openapi.json`"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/api/v1/vms",
        "/api/v1/vms/{name}/console",
        "/api/v1/restore",
        "/api/v1/images/import",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[test]
fn api_serves_openapi_and_requires_a_token() {
    let d = Daemon::start();
    let (status, body) = d.http_get("/api/openapi.json", None);
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["info"]["title"], "Hostel API");
    assert_eq!(d.http_get("/api/v1/vms", None).0, 401);
    assert_eq!(d.http_get("/api/v1/vms", Some("wrong")).0, 401);
    assert_eq!(d.http_get("/api/v1/vms", Some(&d.token)).0, 200);
    // The client config holds a token: only its owner may read it.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.config()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
