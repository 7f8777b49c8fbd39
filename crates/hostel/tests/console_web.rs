//! The browser consoles: single-use tickets, the serial websocket, the VNC websocket
//! proxy (an RFB handshake by hand), and noVNC itself in headless Chromium (Debian's
//! chromium driven by playwright-core from web/node_modules): the page shows the guest's
//! display, its pointer reaches the guest's tablet, it types into the shell on tty1, and
//! its Ctrl-Alt-Del button reboots the guest.

mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `path` (with its ticket) as a websocket from inside the daemon's namespace; the
/// HTTP status when the upgrade is refused.
async fn open_ws(d: &Daemon, path: &str) -> Result<Ws, u16> {
    let host = d.url.trim_start_matches("http://");
    let stream = d.ns.connect(host);
    stream.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(stream).unwrap();
    let mut req = format!("ws://{host}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "binary".parse().unwrap());
    match tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket {path}: {e}"),
    }
}

fn ticket(d: &Daemon, vm: &str, vga: bool) -> serde_json::Value {
    let mut args = vec!["console", vm, "--web"];
    if vga {
        args.push("--vga");
    }
    d.json(&args)
}

/// Bytes from the websocket until at least `n` are buffered.
async fn read_at_least(ws: &mut Ws, buf: &mut Vec<u8>, n: usize) {
    while buf.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => buf.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!("VNC websocket ended after {buf:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_consoles() {
    let d = Daemon::start();
    d.ok(&[
        "create",
        "w1",
        "--image",
        "tiny",
        "--memory",
        "128M",
        "--no-network",
    ]);
    let mut c = d.console("w1").await;
    c.wait_for(READY, Duration::from_secs(180)).await;

    // The serial console through a ticket: a command round-trips.
    let t = ticket(&d, "w1", false);
    assert_eq!(t["console"], "serial");
    let path = t["websocket"].as_str().unwrap().to_string();
    let mut ws = open_ws(&d, &path).await.expect("serial websocket");
    ws.send(Message::Binary(b"echo web-$((3*4))\n".to_vec().into()))
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("web-12") {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            other => panic!("serial websocket: {other:?}; saw {seen}"),
        }
    }
    drop(ws);
    // A spent ticket, a made-up one: refused before any upgrade.
    assert_eq!(open_ws(&d, &path).await.err(), Some(403));
    assert_eq!(
        open_ws(&d, "/console/ws?ticket=made-up").await.err(),
        Some(403)
    );

    // VNC through a ticket: the RFB handshake completes and the display has a size.
    let t = ticket(&d, "w1", true);
    let path = t["websocket"].as_str().unwrap().to_string();
    let mut ws = open_ws(&d, &path).await.expect("vnc websocket");
    let mut buf = Vec::new();
    read_at_least(&mut ws, &mut buf, 12).await;
    assert_eq!(&buf[..12], b"RFB 003.008\n", "{buf:?}");
    buf.drain(..12);
    ws.send(Message::Binary(b"RFB 003.008\n".to_vec().into()))
        .await
        .unwrap();
    read_at_least(&mut ws, &mut buf, 1).await;
    let n = buf[0] as usize;
    read_at_least(&mut ws, &mut buf, 1 + n).await;
    assert!(
        buf[1..1 + n].contains(&1),
        "security type None offered: {buf:?}"
    );
    buf.drain(..1 + n);
    ws.send(Message::Binary(vec![1].into())).await.unwrap();
    read_at_least(&mut ws, &mut buf, 4).await;
    assert_eq!(&buf[..4], &[0, 0, 0, 0], "security result OK");
    buf.drain(..4);
    ws.send(Message::Binary(vec![1].into())).await.unwrap(); // ClientInit, shared
    read_at_least(&mut ws, &mut buf, 24).await;
    let width = u16::from_be_bytes([buf[0], buf[1]]);
    let height = u16::from_be_bytes([buf[2], buf[3]]);
    assert!(width >= 320 && height >= 200, "{width}x{height}");
    drop(ws);
    assert_eq!(open_ws(&d, &path).await.err(), Some(403), "reused ticket");

    // An expired ticket is refused (a 1 s ticket, through the API).
    let (status, body) = d.http_post(
        "/api/v1/vms/w1/console/ticket",
        r#"{"console":"vga","ttl_seconds":1}"#,
    );
    assert_eq!(status, 200, "{body}");
    let brief: serde_json::Value = serde_json::from_str(&body).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        open_ws(&d, brief["websocket"].as_str().unwrap())
            .await
            .err(),
        Some(403),
        "expired ticket"
    );
    let (status, body) = d.http_post(
        "/api/v1/vms/w1/console/ticket",
        r#"{"console":"vga","ttl_seconds":3600}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("1 to 30 s"), "{body}");

    // Chromium: noVNC shows the display, keys reach the shell on tty1 (which writes to
    // the serial console, where this test reads them), and Ctrl-Alt-Del reboots.
    let page = ticket(&d, "w1", true)["page"].as_str().unwrap().to_string();
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("vga-console.png");
    let _ = std::fs::remove_file(&shot);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/tests/vga.mjs");
    let profile = tempfile::tempdir().unwrap();
    // The pointer: a reader of the guest's tablet (virtio-tablet) says when it moves.
    c.send(
        "for e in /sys/class/input/event*; do grep -qi tablet $e/device/name && \
         t=/dev/input/${e##*/}; done; echo tablet=$t; \
         (head -c 24 $t >/dev/null && echo pointer-moved-$((2*21))) &\n",
    )
    .await;
    c.wait_for("tablet=/dev/input/event", Duration::from_secs(30))
        .await;
    let boots = c.seen.matches(READY).count();
    let out =
        d.ns.cmd("node")
            .arg(&script)
            .arg(format!("{}{}", d.url, page))
            .arg(&shot)
            .arg(profile.path())
            // Keys without Shift, so the line means the same in any keyboard layout.
            .arg("hostname novnc-42")
            .arg("cp /proc/sys/kernel/hostname /dev/console") // console=ttyS0
            .output()
            .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "chromium/noVNC: {log}");
    assert!(log.contains("non-blank pixels"), "{log}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "screenshot saved"
    );
    c.wait_for("novnc-42", Duration::from_secs(60)).await;
    c.wait_for("pointer-moved-42", Duration::from_secs(30))
        .await;
    c.wait_count(READY, boots + 1, Duration::from_secs(180))
        .await;

    // Each attach is audited, with which console and for how long.
    let audit = d.json(&["audit", "--vm", "w1"]);
    for (action, console) in [
        ("console.attach", "serial"),
        ("console.detach", "serial"),
        ("console.attach", "vga"),
        ("console.detach", "vga"),
    ] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action
                    && e["params"]["console"] == console
                    && e["params"]["via"] == "web"),
            "{action} {console}: {audit}"
        );
    }
    d.ok(&["destroy", "w1"]);
}
