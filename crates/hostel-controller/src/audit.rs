//! The audit trail: every state-changing request and every console session, allowed or
//! refused, as a domain action (`vm.create`, `console.attach`, ...) with who did it (a
//! user, or `system:NAME` for Hostel's own actors), its target and the parameters that
//! matter. Entries go to the database and to the log (target `audit`).

use crate::context::Ctx;
use crate::error::Error;
use crate::Controller;
use hostel_api::public::AuditEntry;
use hostel_store::{AuditFilter, AuditRecord};

type Res<T> = crate::error::Result<T>;

impl Controller {
    /// Records one request and emits it through tracing. Never holds secrets: the
    /// action is a method and a path, the error an API error message.
    pub async fn record_audit(&self, a: AuditRecord) {
        tracing::info!(
            target: "audit",
            user = a.user_name.as_deref().unwrap_or("-"),
            source = %a.source,
            action = %a.action,
            target_name = a.target.as_deref().unwrap_or("-"),
            result = %a.result,
            error = a.error.as_deref().unwrap_or(""),
            "audit"
        );
        if let Err(e) = self.store.insert_audit(&a).await {
            tracing::error!("could not store an audit entry: {e:#}");
        }
    }

    /// Admins see every entry; users the entries about VMs they may operate.
    pub async fn audit(
        &self,
        ctx: &Ctx,
        vm: Option<String>,
        user: Option<String>,
        since: Option<String>,
    ) -> Res<Vec<AuditEntry>> {
        let c = ctx.caller()?;
        let mut f = AuditFilter {
            user_name: user,
            since,
            limit: 1000,
            ..Default::default()
        };
        if let Some(name) = vm {
            f.vm_ids = Some(vec![self.vm_named(ctx, &name).await?.id]);
        } else if !c.is_admin {
            f.vm_ids = Some(
                self.store
                    .vms_page(&hostel_store::VmPageQuery {
                        visible_to: Some((&c.user_id, &c.group_ids)),
                        limit: u32::MAX,
                        ..Default::default()
                    })
                    .await?
                    .into_iter()
                    .map(|r| r.vm.id)
                    .collect(),
            );
        }
        Ok(self
            .store
            .audit(&f)
            .await?
            .into_iter()
            .map(|a| AuditEntry {
                at: a.at.to_string(),
                user: a.user_name,
                source: a.source,
                action: a.action,
                target: a.target,
                params: a.params.and_then(|p| serde_json::from_str(&p).ok()),
                result: a.result,
                error: a.error,
            })
            .collect())
    }
}

/// What an entry keeps of a name the request gave (a user name at a login, a name in a
/// path): names are at most 63 characters, so anything longer is cut, and an
/// unauthenticated request cannot write megabytes into the trail.
pub fn short(name: &str) -> String {
    const MAX: usize = 64;
    match name.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_string(),
    }
}

/// An audit row for an event that is not a request (a console attach or detach, the
/// lease reaper's shutdown), about the VM `vm` (id if known, name).
pub fn event_record(
    ctx: &Ctx,
    action: &str,
    vm: Option<(Option<&str>, &str)>,
    params: serde_json::Value,
    error: Option<&Error>,
) -> AuditRecord {
    AuditRecord {
        id: hostel_store::new_id("aud"),
        at: hostel_store::now(),
        user_name: Some(ctx.actor_name()),
        source: ctx.source.clone(),
        action: action.to_string(),
        target: vm.map(|v| v.1.to_string()),
        vm_id: vm.and_then(|v| v.0.map(String::from)),
        params: Some(params.to_string()),
        result: match error {
            None => "ok",
            Some(e) if e.is_refusal() => "denied",
            Some(_) => "failed",
        }
        .to_string(),
        error: error.map(|e| e.message()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_in_the_trail_are_cut_to_a_name_s_length() {
        assert_eq!(super::short("web-1"), "web-1");
        let long = "é".repeat(2_000_000);
        let kept = super::short(&long);
        assert_eq!(kept.chars().count(), 65);
        assert!(kept.ends_with('…'));
    }
}
