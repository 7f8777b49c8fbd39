//! Open console sessions, kept so that taking a right away ends what it opened: revoking
//! a token, removing a key, leaving a group, giving a VM away or deleting a user closes
//! that person's consoles at once, with a message, through every door (API websocket,
//! browser, SSH). Each adapter selects on its session's `ended` channel.

use crate::Controller;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// What a console was opened with, checked again on every revocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// An API token, by name (a browser ticket carries the token that asked for it).
    Token(String),
    /// An SSH public key, by its type and body ([`crate::auth::ssh_key_id`]).
    SshKey(String),
}

impl Credential {
    /// The credential a caller's context names (the SSH gateway's callers name their key).
    pub fn of(token_name: &str) -> Credential {
        match token_name.strip_prefix(SSH_KEY_PREFIX) {
            Some(key) => Credential::SshKey(key.to_string()),
            None => Credential::Token(token_name.to_string()),
        }
    }
}

/// How the SSH gateway names the key of its callers in their context's `token_name`.
pub const SSH_KEY_PREFIX: &str = "ssh-key:";

struct Session {
    vm_id: String,
    user_id: String,
    credential: Credential,
    end: watch::Sender<Option<String>>,
}

type Map = Arc<Mutex<HashMap<u64, Session>>>;

/// A console opened on a VM, told to those already attached to it (and to the event
/// stream): a second console never silently takes over, nor goes unnoticed.
#[derive(Debug, Clone)]
pub struct AttachNote {
    pub vm_id: String,
    /// The session that opened.
    pub session: u64,
    /// `alice attached the serial console (web)`.
    pub text: String,
    /// The start of the browser ticket that opened it: how a console page knows its own.
    pub ticket: Option<String>,
}

pub struct ConsoleSessions {
    next: AtomicU64,
    map: Map,
    notes: broadcast::Sender<AttachNote>,
}

impl Default for ConsoleSessions {
    fn default() -> Self {
        ConsoleSessions {
            next: AtomicU64::new(0),
            map: Map::default(),
            notes: broadcast::channel(256).0,
        }
    }
}

/// An open session; dropping it forgets the session.
pub struct SessionGuard {
    id: u64,
    vm_id: String,
    map: Map,
    /// Becomes `Some(reason)` when the session must end.
    ended: watch::Receiver<Option<String>>,
    notes: tokio::sync::Mutex<broadcast::Receiver<AttachNote>>,
}

impl SessionGuard {
    /// Waits until a revocation ends the session, and returns the line to tell its user
    /// (never, if the registry goes first).
    pub async fn revoked(&self) -> String {
        let mut ended = self.ended.clone();
        let why = ended
            .wait_for(|e| e.is_some())
            .await
            .map(|e| e.clone().unwrap_or_default());
        match why {
            Ok(why) => format!("\r\nhostel: console closed: {why}\r\n"),
            Err(_) => std::future::pending().await,
        }
    }

    /// Waits until someone else attaches a console to the same VM, and returns the line
    /// to tell this session's user.
    pub async fn next_attach(&self) -> String {
        let mut notes = self.notes.lock().await;
        loop {
            match notes.recv().await {
                Ok(n) if n.vm_id == self.vm_id && n.session != self.id => {
                    return format!("\r\nhostel: {}; you stay connected\r\n", n.text)
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.map.lock().unwrap().remove(&self.id);
    }
}

impl ConsoleSessions {
    /// Registers a session (see [`Self::announce`] for telling the others).
    pub fn open(&self, vm_id: &str, user_id: &str, credential: Credential) -> SessionGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (end, ended) = watch::channel(None);
        let notes = self.notes.subscribe();
        self.map.lock().unwrap().insert(
            id,
            Session {
                vm_id: vm_id.to_string(),
                user_id: user_id.to_string(),
                credential,
                end,
            },
        );
        SessionGuard {
            id,
            vm_id: vm_id.to_string(),
            map: self.map.clone(),
            ended,
            notes: tokio::sync::Mutex::new(notes),
        }
    }

    /// Tells the VM's other sessions (and the event stream) `text`, what was attached
    /// by whom, once the session is connected.
    pub fn announce(&self, session: &SessionGuard, text: String, ticket: Option<String>) {
        let _ = self.notes.send(AttachNote {
            vm_id: session.vm_id.clone(),
            session: session.id,
            text,
            ticket,
        });
    }

    /// Follows console attaches on every VM.
    pub fn follow_attaches(&self) -> broadcast::Receiver<AttachNote> {
        self.notes.subscribe()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Controller {
    /// Why a console of `user_id` on `vm_id`, opened with `credential`, may not stay
    /// open, if it may not: the credential is gone or expired, the user is gone, or the
    /// user may no longer operate the VM.
    pub async fn console_refusal(
        &self,
        vm_id: &str,
        user_id: &str,
        credential: &Credential,
    ) -> Option<String> {
        let user = match self.store.user_by_id(user_id).await {
            Ok(Some(u)) => u,
            Ok(None) => return Some("your account was deleted".into()),
            Err(_) => return None,
        };
        let now = hostel_store::now();
        match credential {
            Credential::Token(name) => {
                let tokens = self.store.tokens_of(user_id).await.ok()?;
                let ok = tokens
                    .iter()
                    .any(|t| &t.name == name && crate::auth::token_live(t, now).is_ok());
                if !ok {
                    return Some(format!(
                        "the API token {name:?} this console was opened with was revoked or expired"
                    ));
                }
            }
            Credential::SshKey(key) => {
                let keys = self.store.ssh_keys_of(user_id).await.ok()?;
                if !keys
                    .iter()
                    .any(|k| crate::auth::ssh_key_id(&k.public_key) == *key)
                {
                    return Some("the SSH key this console was opened with was removed".into());
                }
            }
        }
        let vm = match self.store.vm_by_id(vm_id).await {
            Ok(Some(vm)) => vm,
            Ok(None) => return Some("the VM was deleted".into()),
            Err(_) => return None,
        };
        let caller = crate::context::Caller {
            group_ids: self.store.group_ids_of(user_id).await.ok()?,
            user_id: user.id,
            user_name: user.name,
            is_admin: user.is_admin,
            read_only: false,
            token_name: String::new(),
            token_expires_at: None,
        };
        if !caller.may_operate(&vm) {
            return Some(format!(
                "you may no longer operate {} (its owner or groups changed)",
                vm.name
            ));
        }
        None
    }

    /// Checks every open console again and ends those whose right is gone. Called by
    /// every operation that takes a right away, and every few seconds (for expiry).
    pub async fn recheck_consoles(&self) {
        let open: Vec<(u64, String, String, Credential)> = self
            .consoles
            .map
            .lock()
            .unwrap()
            .iter()
            .map(|(id, s)| {
                (
                    *id,
                    s.vm_id.clone(),
                    s.user_id.clone(),
                    s.credential.clone(),
                )
            })
            .collect();
        for (id, vm_id, user_id, credential) in open {
            if let Some(why) = self.console_refusal(&vm_id, &user_id, &credential).await {
                if let Some(s) = self.consoles.map.lock().unwrap().get(&id) {
                    let _ = s.end.send(Some(why));
                }
            }
        }
    }

    /// Rechecks open consoles every `every`, for tokens that expire while in use.
    pub fn spawn_console_watch(self: &Arc<Self>, every: std::time::Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(c) = me.upgrade() else { return };
                if !c.consoles.is_empty() {
                    c.recheck_consoles().await;
                }
            }
        });
    }
}
