//! Live VM changes, as the API's event stream serves them: each write to a VM the caller
//! may operate becomes its summary; a VM that leaves the caller's view (deleted, given
//! away) becomes `gone`. The store says which VM changed (`Store::follow_vm_changes`);
//! here each change is read again and checked against the caller, like any other read.

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use futures::Stream;
use hostel_api::public::{VmEvent, VmSummary};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

type Res<T> = Result<T, Error>;

struct Follower {
    c: Arc<Controller>,
    ctx: Arc<Ctx>,
    changes: tokio::sync::broadcast::Receiver<String>,
    attaches: tokio::sync::broadcast::Receiver<crate::console_sessions::AttachNote>,
    /// The VMs the caller may operate, by id, with their names: a change to one that
    /// is no longer visible is its `gone`.
    seen: HashMap<String, String>,
    /// When to look again whether the caller's token still holds (a revoked session's
    /// stream ends) and which groups they are in.
    check: tokio::time::Interval,
    /// Events found by a check, to send before waiting again.
    pending: std::collections::VecDeque<VmEvent>,
}

/// How often a stream checks that its token was not revoked and has not expired.
const CREDENTIAL_CHECK: std::time::Duration = std::time::Duration::from_secs(15);

impl Controller {
    /// The caller's live VM changes, from now on. Ends when the controller does.
    pub async fn vm_events(
        self: &Arc<Self>,
        ctx: Arc<Ctx>,
    ) -> Res<impl Stream<Item = VmEvent> + Send + 'static> {
        // Follow first, then list: a change between the two is not missed.
        let changes = self.store.follow_vm_changes();
        let attaches = self.consoles.follow_attaches();
        let mut seen = HashMap::new();
        for vm in self.store.vms().await? {
            if ctx.may_operate(&vm) {
                seen.insert(vm.id, vm.name);
            }
        }
        let f = Follower {
            c: self.clone(),
            ctx,
            changes,
            attaches,
            seen,
            pending: Default::default(),
            check: tokio::time::interval_at(
                tokio::time::Instant::now() + CREDENTIAL_CHECK,
                CREDENTIAL_CHECK,
            ),
        };
        Ok(futures::stream::unfold(f, |mut f| async move {
            loop {
                if let Some(e) = f.pending.pop_front() {
                    return Some((e, f));
                }
                let id = tokio::select! {
                    _ = f.check.tick() => {
                        if f.credential_gone().await {
                            return None;
                        }
                        f.refresh_caller().await;
                        continue;
                    }
                    change = f.changes.recv() => match change {
                        Ok(id) => id,
                        Err(RecvError::Lagged(_)) => return Some((VmEvent::Resync, f)),
                        Err(RecvError::Closed) => return None,
                    },
                    note = f.attaches.recv() => match note {
                        Ok(n) => match f.seen.get(&n.vm_id) {
                            Some(name) => {
                                let event = VmEvent::Console {
                                    name: name.clone(),
                                    note: n.text,
                                    ticket: n.ticket,
                                };
                                return Some((event, f));
                            }
                            None => continue,
                        },
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    },
                };
                if let Some(event) = f.event_for(&id).await {
                    return Some((event, f));
                }
            }
        }))
    }
}

impl Follower {
    /// Whether the token the stream was opened with no longer holds (revoked, expired,
    /// an idle session); a database that does not answer ends nothing.
    async fn credential_gone(&self) -> bool {
        let Ok(caller) = self.ctx.caller() else {
            return false;
        };
        let Ok(tokens) = self.c.store.tokens_of(&caller.user_id).await else {
            return false;
        };
        let now = hostel_store::now();
        !tokens
            .iter()
            .any(|t| t.name == caller.token_name && crate::auth::token_live(t, now).is_ok())
    }

    /// Reads the caller's groups and admin flag again (a member removed from a group no
    /// longer hears of its VMs), and tells which VMs left their view.
    async fn refresh_caller(&mut self) {
        let Ok(old) = self.ctx.caller() else {
            return;
        };
        let (Ok(Some(user)), Ok(group_ids)) = (
            self.c.store.user_by_id(&old.user_id).await,
            self.c.store.group_ids_of(&old.user_id).await,
        ) else {
            return;
        };
        let caller = crate::context::Caller {
            is_admin: user.is_admin,
            group_ids,
            ..old.clone()
        };
        self.ctx = Arc::new(Ctx::user(caller, self.ctx.source.clone()));
        let ids: Vec<String> = self.seen.keys().cloned().collect();
        for id in ids {
            let visible = match self.c.store.vm_by_id(&id).await {
                Ok(Some(vm)) => self.ctx.may_operate(&vm),
                Ok(None) => false,
                Err(_) => true,
            };
            if !visible {
                if let Some(name) = self.seen.remove(&id) {
                    self.pending.push_back(VmEvent::Gone { id, name });
                }
            }
        }
    }

    /// What the caller is told of a change to VM `id`, if anything.
    async fn event_for(&mut self, id: &str) -> Option<VmEvent> {
        let record = match self.c.store.vm_by_id(id).await {
            Ok(r) => r.filter(|vm| self.ctx.may_operate(vm)),
            // The database did not answer: the caller reads the list again.
            Err(_) => return Some(VmEvent::Resync),
        };
        match record {
            Some(vm) => {
                let view = match self.c.view(&vm, false).await {
                    Ok(v) => v,
                    Err(_) => return Some(VmEvent::Resync),
                };
                self.seen.insert(vm.id.clone(), vm.name.clone());
                Some(VmEvent::Changed {
                    vm: Box::new(VmSummary::from(&view)),
                })
            }
            None => self.seen.remove(id).map(|name| VmEvent::Gone {
                id: id.into(),
                name,
            }),
        }
    }
}
