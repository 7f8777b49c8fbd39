//! Consoles in the browser. The API issues a short-lived, single-use ticket to someone
//! allowed to operate a VM; the page Hostel serves (xterm.js for the serial console,
//! noVNC for VGA, both from the npm registry and served from the web directory) opens
//! `/console/ws?ticket=…`, which needs no other credential. A ticket is spent by the
//! first connection that presents it, and is refused after it expires.

use crate::api::ApiError;
use crate::Controller;
use hostel_api::public::{ConsoleKind, ConsoleTicket, ConsoleTicketRequest};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a ticket lasts unless the request asks for less.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Ticket {
    pub vm_id: String,
    pub vm_name: String,
    pub kind: ConsoleKind,
    pub user_name: String,
    pub expires: Instant,
}

#[derive(Default)]
pub struct Tickets(std::sync::Mutex<HashMap<String, Ticket>>);

impl Tickets {
    fn issue(&self, t: Ticket) -> String {
        let secret = crate::auth::new_secret();
        let mut map = self.0.lock().unwrap();
        let now = Instant::now();
        map.retain(|_, t| t.expires > now);
        map.insert(secret.clone(), t);
        secret
    }

    /// The ticket, which is spent by this call; None if unknown, spent or expired.
    pub fn take(&self, secret: &str) -> Option<Ticket> {
        let t = self.0.lock().unwrap().remove(secret)?;
        (t.expires > Instant::now()).then_some(t)
    }
}

impl Controller {
    /// A ticket for one browser console connection to the VM `name`.
    pub async fn console_ticket(
        &self,
        name: &str,
        req: ConsoleTicketRequest,
    ) -> Result<ConsoleTicket, ApiError> {
        let vm = self.vm_named(name).await?;
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
        let user_name = crate::auth::current()
            .map(|c| c.user_name)
            .unwrap_or_else(|| "admin".into());
        let secret = self.tickets.issue(Ticket {
            vm_id: vm.id.clone(),
            vm_name: vm.name.clone(),
            kind: req.console,
            user_name,
            expires: Instant::now() + ttl,
        });
        let page = match req.console {
            ConsoleKind::Serial => "serial",
            ConsoleKind::Vga => "vga",
        };
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

    #[test]
    fn a_ticket_is_spent_once_and_expires() {
        let t = Tickets::default();
        let ticket = |secs| Ticket {
            vm_id: "vm-1".into(),
            vm_name: "a".into(),
            kind: ConsoleKind::Vga,
            user_name: "u".into(),
            expires: Instant::now() + Duration::from_secs(secs),
        };
        let s = t.issue(ticket(30));
        assert!(t.take("nonsense").is_none());
        assert_eq!(t.take(&s).unwrap().vm_id, "vm-1");
        assert!(t.take(&s).is_none(), "spent");
        let old = t.issue(ticket(0));
        assert!(t.take(&old).is_none(), "expired");
    }
}
