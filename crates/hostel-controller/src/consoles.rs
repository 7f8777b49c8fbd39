//! Consoles: one way in for every interface. [`Controller::attach_console`] checks the
//! actor may operate the VM and that it runs, opens the VM's console hub (serial) or VNC
//! socket through its host's agent, and records the attach; the caller bridges the bytes
//! and reports the detach with [`Controller::console_detached`]. The API's websocket,
//! the browser's ticketed websocket and the SSH gateway are thin adapters over these.
//!
//! Consoles in the browser. The API issues a short-lived, single-use ticket to someone
//! allowed to operate a VM; the page Hostel serves (xterm.js for the serial console,
//! noVNC for VGA, both from the npm registry and served from the web directory) opens
//! `/console/ws?ticket=…`, which needs no other credential. A ticket is spent by the
//! first connection that presents it, and is refused after it expires.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::agent::AgentApi;
use hostel_api::public::{ConsoleKind, ConsoleTicket, ConsoleTicketRequest};
use hostel_model::Op;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

type Res<T> = crate::error::Result<T>;

/// A VM named by a user, or by id (with its name for messages) by a ticket or login.
#[derive(Debug, Clone, Copy)]
pub enum VmRef<'a> {
    Name(&'a str),
    Id(&'a str, &'a str),
}

/// How long a ticket lasts unless the request asks for less.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Ticket {
    pub vm_id: String,
    pub vm_name: String,
    pub kind: ConsoleKind,
    /// Who asked for it: the websocket runs as them.
    pub caller: crate::context::Caller,
}

/// Which console, and through which door, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The API's serial websocket (`hostel console`).
    Api,
    /// A browser page, by ticket.
    Web,
    /// The SSH gateway.
    Ssh,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Api => "api",
            Door::Web => "web",
            Door::Ssh => "ssh",
        }
    }
}

/// The agent's websocket of a VM's console.
pub type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open console: the VM (id, name), the agent's websocket, and the session, whose
/// `ended` says when (and why) a revocation closes it.
pub struct Attached {
    pub vm_id: String,
    pub vm_name: String,
    pub upstream: Upstream,
    pub session: crate::console_sessions::SessionGuard,
}

fn kind_name(kind: ConsoleKind) -> &'static str {
    match kind {
        ConsoleKind::Serial => "serial",
        ConsoleKind::Vga => "vga",
    }
}

/// How much of a browser ticket names its console in the event stream.
pub const TICKET_TAG: usize = 12;

impl Controller {
    /// Opens the console of the VM `vm` (a name, or the id a ticket or SSH login named)
    /// for the actor, and records the attach, allowed or not.
    pub async fn attach_console(
        &self,
        ctx: &Ctx,
        vm: VmRef<'_>,
        kind: ConsoleKind,
        door: Door,
        detail: Option<String>,
        ticket: Option<&str>,
    ) -> Res<Attached> {
        let found = match vm {
            VmRef::Name(n) => self.vm_named(ctx, n).await,
            VmRef::Id(id, name) => match self.store.vm_by_id(id).await? {
                Some(v) if ctx.may_operate(&v) => Ok(v),
                _ => Err(Error::not_found(
                    "vm",
                    name,
                    format!("the VM {name} is gone"),
                )),
            },
        };
        let opened = async {
            let vm = found?;
            let caller = ctx.caller()?;
            let credential = crate::console_sessions::Credential::of(&caller.token_name);
            // A right taken away since the caller's context was made (an SSH login
            // outlives its key, say) is not used for a new session either.
            if let Some(why) = self
                .console_refusal(&vm.id, &caller.user_id, &credential)
                .await
            {
                return Err(Error::forbidden(why));
            }
            Op::Console.check(vm.state)?;
            let note = format!(
                "{} attached the {} console ({})",
                caller.user_name,
                kind_name(kind),
                door.name()
            );
            let session = self.consoles.open(&vm.id, &caller.user_id, credential);
            let agent = self.host_agent(&vm)?;
            let upstream = match kind {
                ConsoleKind::Serial => agent.console_socket(&vm.id).await?,
                ConsoleKind::Vga => agent.vnc_socket(&vm.id).await?,
            };
            let tag = ticket.map(|t| t.chars().take(TICKET_TAG).collect());
            self.consoles.announce(&session, note, tag);
            Ok::<_, Error>(Attached {
                vm_id: vm.id,
                vm_name: vm.name,
                upstream,
                session,
            })
        }
        .await;
        let (id, name) = match (&opened, vm) {
            (Ok(a), _) => (Some(a.vm_id.clone()), a.vm_name.clone()),
            (Err(_), VmRef::Id(id, name)) => (Some(id.to_string()), name.to_string()),
            (Err(_), VmRef::Name(n)) => (None, n.to_string()),
        };
        let mut params = serde_json::json!({"console": kind_name(kind), "via": door.name()});
        if let Some(d) = detail {
            params["terminal"] = d.into();
        }
        self.record_audit(crate::audit::event_record(
            ctx,
            "console.attach",
            Some((id.as_deref(), &name)),
            params,
            opened.as_ref().err(),
        ))
        .await;
        opened
    }

    /// Records the end of a console session and how long it lasted.
    pub async fn console_detached(
        &self,
        ctx: &Ctx,
        vm: (&str, &str),
        kind: ConsoleKind,
        door: Door,
        seconds: u64,
    ) {
        self.record_audit(crate::audit::event_record(
            ctx,
            "console.detach",
            Some((Some(vm.0), vm.1)),
            serde_json::json!({"console": kind_name(kind), "via": door.name(), "seconds": seconds}),
            None,
        ))
        .await;
    }

    /// The last `lines` lines of the VM's serial console log.
    pub async fn console_log(&self, ctx: &Ctx, name: &str, lines: usize) -> Res<Vec<String>> {
        if lines > 100_000 {
            return Err(Error::invalid(
                "lines",
                "--lines is at most 100000 (the log keeps about 2 MiB)",
            ));
        }
        let vm = self.vm_named(ctx, name).await?;
        let agent = self.host_agent(&vm)?;
        Ok(agent
            .console_log(
                &vm.id,
                hostel_api::agent::ConsoleLogRequest { lines: Some(lines) },
            )
            .await?)
    }

    /// Spends a browser console ticket, issued by this controller or another one: None
    /// if unknown, spent or expired.
    pub async fn take_ticket(&self, secret: &str) -> Res<Option<Ticket>> {
        let Some(t) = self
            .store
            .take_console_ticket(&crate::auth::hash_secret(secret))
            .await?
        else {
            return Ok(None);
        };
        let caller = serde_json::from_str(&t.caller)
            .map_err(|e| Error::internal(format!("the caller of a console ticket: {e}")))?;
        let kind = match t.console.as_str() {
            "vga" => ConsoleKind::Vga,
            _ => ConsoleKind::Serial,
        };
        Ok(Some(Ticket {
            vm_id: t.vm_id,
            vm_name: t.vm_name,
            kind,
            caller,
        }))
    }

    /// A ticket for one browser console connection to the VM `name`.
    pub async fn console_ticket(
        &self,
        ctx: &Ctx,
        name: &str,
        req: ConsoleTicketRequest,
    ) -> Res<ConsoleTicket> {
        let vm = self.vm_named(ctx, name).await?;
        let ttl = match req.ttl_seconds {
            None => TICKET_TTL,
            Some(s) if (1..=TICKET_TTL.as_secs()).contains(&u64::from(s)) => {
                Duration::from_secs(s.into())
            }
            Some(s) => {
                return Err(hostel_model::Invalid::new(
                    "ttl_seconds",
                    format!(
                        "a console ticket lasts 1 to {} s, not {s}",
                        TICKET_TTL.as_secs()
                    ),
                )
                .into())
            }
        };
        let caller = serde_json::to_string(ctx.caller()?)
            .map_err(|e| Error::internal(format!("a caller as JSON: {e}")))?;
        let secret = crate::auth::new_secret();
        let page = kind_name(req.console);
        self.store
            .insert_console_ticket(&hostel_store::cluster::ConsoleTicketRecord {
                secret_hash: crate::auth::hash_secret(&secret),
                vm_id: vm.id.clone(),
                vm_name: vm.name.clone(),
                console: page.into(),
                caller,
                expires_at: hostel_store::now() + time::Duration::seconds(ttl.as_secs() as i64),
            })
            .await?;
        Ok(ConsoleTicket {
            websocket: format!("/console/ws?ticket={secret}"),
            page: format!("/console/{page}.html#vm={}&ticket={secret}", vm.name),
            ticket: secret,
            console: req.console,
            expires_in_seconds: ttl.as_secs() as u32,
        })
    }
}

/// The file under the web directory that `/web/PATH` names, if PATH is one of the
/// packages Hostel serves and does not climb out of it.
pub fn web_file(web_dir: &Path, path: &str) -> Option<PathBuf> {
    let (package, rest) = path.split_once('/')?;
    let package = match package {
        "xterm" => "@xterm/xterm",
        "xterm-fit" => "@xterm/addon-fit",
        "novnc" => "@novnc/novnc",
        "htmx" => "htmx.org/dist",
        _ => return None,
    };
    let rest = Path::new(rest);
    if !rest.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(web_dir.join(package).join(rest))
}

/// The content type of a file Hostel serves, by its extension.
pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("json") | Some("map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_served_packages_and_no_climbing() {
        let d = Path::new("/w");
        assert_eq!(
            web_file(d, "novnc/core/rfb.js").unwrap(),
            Path::new("/w/@novnc/novnc/core/rfb.js")
        );
        assert!(web_file(d, "novnc/../../etc/passwd").is_none());
        assert!(web_file(d, "novnc//etc/passwd").is_none());
        assert!(web_file(d, "left-pad/index.js").is_none());
        assert!(web_file(d, "xterm").is_none());
    }
}
