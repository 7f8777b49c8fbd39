//! Consoles: the API's serial websocket, the console log, browser tickets, the pages and
//! the websocket they open. Attaching, its checks and its audit are the controller's
//! (`consoles.rs`); here the bytes are bridged.

use super::extract::{ApiJson, ApiPath, ApiQuery, ApiWebSocket};
use super::{LinesQuery, R, S, X};
use crate::console_sessions::SessionGuard;
use crate::consoles::{Attached, Door, Upstream, VmRef};
use crate::context::Ctx;
use crate::error::Error;
use crate::throttle::Requester;
use crate::Controller;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{SinkExt, StreamExt};
use hostel_api::public::*;
use hostel_api::ErrorBody;
use serde::Deserialize;
use std::sync::Arc;

/// The serial console as a websocket: binary frames both ways. Recent output is
/// replayed first.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console", params(("name" = String, Path)),
    responses((status = 101, description = "websocket"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 400, body = ErrorBody), (status = 426, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn console(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiWebSocket(ws): ApiWebSocket,
) -> Result<Response, Error> {
    let a = c
        .attach_console(
            &ctx,
            VmRef::Name(&name),
            ConsoleKind::Serial,
            Door::Api,
            None,
            None,
        )
        .await?;
    Ok(ws.on_upgrade(move |socket| {
        bridge_audited(c, ctx, socket, a, ConsoleKind::Serial, Door::Api)
    }))
}

/// Bridges the client's websocket and the VM's, until either ends or the session is
/// ended by a revocation (the client is told why, then closed). A serial console's
/// client is also told when someone else attaches a console to the VM (a VGA stream
/// carries the VNC protocol, which has no room for a note: its page hears of it from
/// the event stream).
async fn bridge(client: WebSocket, upstream: Upstream, session: &SessionGuard, kind: ConsoleKind) {
    use tokio_tungstenite::tungstenite::Message as T;
    let (ctx, mut crx) = client.split();
    let ctx = tokio::sync::Mutex::new(ctx);
    let (mut utx, mut urx) = upstream.split();
    let down = async {
        while let Some(Ok(m)) = urx.next().await {
            let out = match m {
                T::Binary(b) => Message::Binary(b),
                T::Text(t) => Message::Text(t.as_str().into()),
                T::Close(_) => break,
                _ => continue,
            };
            if ctx.lock().await.send(out).await.is_err() {
                break;
            }
        }
        let _ = ctx.lock().await.send(Message::Close(None)).await;
    };
    let up = async {
        while let Some(Ok(m)) = crx.next().await {
            let out = match m {
                Message::Binary(b) => T::Binary(b),
                Message::Text(t) => T::Text(t.as_str().into()),
                Message::Close(_) => break,
                _ => continue,
            };
            if utx.send(out).await.is_err() {
                break;
            }
        }
        let _ = utx.send(T::Close(None)).await;
    };
    let revoked = async {
        let note = session.revoked().await;
        let mut c = ctx.lock().await;
        // A VGA stream carries the VNC protocol: the reason goes in the close frame only.
        if kind == ConsoleKind::Serial {
            let _ = c
                .send(Message::Binary(note.clone().into_bytes().into()))
                .await;
        }
        // A close frame's reason holds 123 bytes.
        let mut reason = String::new();
        for ch in note.trim().chars() {
            if reason.len() + ch.len_utf8() > 120 {
                break;
            }
            reason.push(ch);
        }
        let frame = axum::extract::ws::CloseFrame {
            code: 1008,
            reason: reason.into(),
        };
        let _ = c.send(Message::Close(Some(frame))).await;
    };
    let attaches = async {
        if kind != ConsoleKind::Serial {
            return std::future::pending().await;
        }
        loop {
            let note = session.next_attach().await;
            if ctx
                .lock()
                .await
                .send(Message::Binary(note.into_bytes().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = down => {},
        _ = up => {},
        _ = revoked => {},
        _ = attaches => {},
    }
}

/// The last lines of the VM's serial console log, which is kept (size-bounded, rotated)
/// while the VM is stopped too.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console/log", params(("name" = String, Path), LinesQuery),
    responses((status = 200, body = LogLines), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn console_log(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<LinesQuery>,
) -> R<LogLines> {
    let lines = c.console_log(&ctx, &name, q.lines.unwrap_or(50)).await?;
    Ok(Json(LogLines { lines }))
}

/// A single-use ticket for a browser console (serial through xterm.js, VGA through
/// noVNC). Open `page` (or the websocket at `websocket`) on the API's address within
/// `expires_in_seconds`; the first connection spends it.
#[utoipa::path(post, path = "/api/v1/vms/{name}/console/ticket", params(("name" = String, Path)),
    request_body = ConsoleTicketRequest,
    responses((status = 200, body = ConsoleTicket), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn console_ticket(
    State(c): S,
    Extension(ctx): X,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ConsoleTicketRequest>,
) -> R<ConsoleTicket> {
    Ok(Json(c.console_ticket(&ctx, &name, req).await?))
}

pub(super) const SERIAL_PAGE: &str = include_str!("../../../../web/pages/serial.html");
pub(super) const VGA_PAGE: &str = include_str!("../../../../web/pages/vga.html");

pub(super) async fn page(html: &'static str) -> Response {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            // Nothing but Hostel itself: no script, style or socket from elsewhere.
            (
                "content-security-policy",
                "default-src 'self'; script-src 'self' 'unsafe-inline'; \
                 style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data: blob:",
            ),
            ("cache-control", "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The npm packages the console pages load (xterm.js, its fit addon, noVNC).
pub(super) async fn web_asset(State(c): S, ApiPath(path): ApiPath<String>) -> Response {
    let Some(dir) = c.cfg.web_dir.clone() else {
        return Error::not_found(
            "file",
            &path,
            "this daemon has no web directory: run `npm ci` in the source tree's web/ and \
             start `hostel up --web-dir web/node_modules`",
        )
        .into_response();
    };
    let Some(file) = crate::consoles::web_file(&dir, &path) else {
        return Error::not_found("file", &path, format!("no such file /web/{path}"))
            .into_response();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => (
            [("content-type", crate::consoles::content_type(&file))],
            bytes,
        )
            .into_response(),
        Err(_) => {
            Error::not_found("file", &path, format!("no such file /web/{path}")).into_response()
        }
    }
}

/// Bridges a console websocket to its upstream, then records the detach and how long the
/// attach lasted.
async fn bridge_audited(
    c: Arc<Controller>,
    ctx: Arc<Ctx>,
    client: WebSocket,
    a: Attached,
    kind: ConsoleKind,
    door: Door,
) {
    let since = std::time::Instant::now();
    bridge(client, a.upstream, &a.session, kind).await;
    drop(a.session);
    c.console_detached(
        &ctx,
        (&a.vm_id, &a.vm_name),
        kind,
        door,
        since.elapsed().as_secs(),
    )
    .await;
}

#[derive(Deserialize)]
pub(super) struct TicketQuery {
    ticket: String,
}

/// The browser console websocket: spends the ticket, then bridges to the VM's serial
/// console hub or to its VNC socket, through the VM's agent, as the user who asked for
/// the ticket.
pub(super) async fn console_ws(
    State(c): S,
    ApiQuery(q): ApiQuery<TicketQuery>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiWebSocket(ws): ApiWebSocket,
) -> Result<Response, Error> {
    let source = peer.ip().to_string();
    // A wrong ticket is a refusal of its address, like a wrong token (`throttle.rs`).
    c.throttle.gate(&source)?;
    let Some(t) = c.take_ticket(&q.ticket).await? else {
        c.throttle.charge(Requester::Address(&source));
        let why = Error::forbidden(
            "the console ticket is unknown, already used or expired: a ticket opens one \
             connection within 30 s; ask for a new one (`hostel console NAME --web`)",
        );
        c.record_audit(hostel_store::AuditRecord {
            id: hostel_store::new_id("aud"),
            at: hostel_store::now(),
            user_name: None,
            source,
            action: "console.attach".into(),
            target: None,
            vm_id: None,
            params: Some(r#"{"via":"web"}"#.into()),
            result: "denied".into(),
            error: Some(why.message()),
        })
        .await;
        return Err(why);
    };
    let ctx = Arc::new(Ctx::user(t.caller.clone(), source));
    let a = c
        .attach_console(
            &ctx,
            VmRef::Id(&t.vm_id, &t.vm_name),
            t.kind,
            Door::Web,
            None,
            Some(&q.ticket),
        )
        .await?;
    let kind = t.kind;
    Ok(ws
        .protocols(["binary"])
        .on_upgrade(move |socket| bridge_audited(c, ctx, socket, a, kind, Door::Web)))
}
