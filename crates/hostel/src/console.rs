//! `hostel console NAME`: the terminal attached to a VM's serial console over the API's
//! websocket. Ctrl-] detaches; the VM and its console go on.

use crate::client::Api;
use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use std::io::{IsTerminal, Read, Write};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const DETACH: u8 = 0x1d; // Ctrl-]

/// Puts the terminal in raw mode and restores it when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::*;
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

pub async fn attach(api: &Api, name: &str) -> Result<()> {
    let mut req = api
        .ws_url(&format!("/api/v1/vms/{name}/console"))
        .into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", api.cfg.token).parse()?,
    );
    let (ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<hostel_api::ErrorBody>(b).ok());
            match body {
                Some(e) => anyhow::bail!("{}", e.message),
                None => anyhow::bail!("the console was refused ({})", resp.status()),
            }
        }
        Err(e) => return Err(e).context("connecting to the console"),
    };
    let tty = std::io::stdin().is_terminal();
    if tty {
        eprintln!("Connected to {name}'s serial console. Ctrl-] detaches.\r");
    }
    let _raw = if tty { RawMode::enter() } else { None };
    let (mut tx, mut rx) = ws.split();

    // stdin is read on a plain thread: tokio's stdin cannot be cancelled on detach.
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = in_tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if in_tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => { stdout.write_all(&b)?; stdout.flush()?; }
                Some(Ok(Message::Text(t))) => { stdout.write_all(t.as_bytes())?; stdout.flush()?; }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    if tty { eprintln!("\r\n[the console closed: the VM stopped]\r"); }
                    break;
                }
                Some(Ok(_)) => {}
            },
            input = in_rx.recv() => match input {
                Some(Some(data)) => {
                    if let Some(pos) = data.iter().position(|b| *b == DETACH) {
                        if pos > 0 {
                            tx.send(Message::Binary(data[..pos].to_vec().into())).await?;
                        }
                        if tty { eprintln!("\r\n[detached from {name}]\r"); }
                        break;
                    }
                    tx.send(Message::Binary(data.into())).await?;
                }
                _ => {
                    // Input ended (a script piped its commands in): show what the guest
                    // answers until it has been quiet for a moment, then detach.
                    loop {
                        match tokio::time::timeout(std::time::Duration::from_millis(1500), rx.next()).await {
                            Ok(Some(Ok(Message::Binary(b)))) => { stdout.write_all(&b)?; stdout.flush()?; }
                            Ok(Some(Ok(_))) => {}
                            _ => break,
                        }
                    }
                    break;
                }
            },
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}
