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
    /// action is a method and a path, the error an API error message. Every field is
    /// cut to a bounded size first (`bounded`), whoever made the record.
    pub async fn record_audit(&self, a: AuditRecord) {
        let a = bounded(a);
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

/// Writes the refusals that went over their requester's budget since the last call
/// (`throttle.rs`) as one entry per requester: "N refused requests from ADDR in the last
/// minute". The daemon calls it every `throttle::SUMMARY_PERIOD`.
impl Controller {
    pub async fn record_refusal_summary(&self) {
        for line in self.throttle.take_tally() {
            let (user, source, who) = match line.requester.as_deref() {
                Some(r) => match r.strip_prefix("user ") {
                    Some(u) => (Some(u.to_string()), "-".to_string(), r.to_string()),
                    None => (
                        None,
                        r.strip_prefix("address ").unwrap_or(r).to_string(),
                        r.to_string(),
                    ),
                },
                None => (None, "-".into(), "other requesters".into()),
            };
            let period = crate::throttle::SUMMARY_PERIOD.as_secs();
            self.record_audit(AuditRecord {
                id: hostel_store::new_id("aud"),
                at: hostel_store::now(),
                user_name: user,
                source,
                action: "request.refused-summary".into(),
                target: None,
                vm_id: None,
                params: Some(
                    serde_json::json!({"refused": line.count, "seconds": period}).to_string(),
                ),
                result: "denied".into(),
                error: Some(format!(
                    "{} refused requests from {who} in the last {period} s, over its budget: \
                     answered, not recorded one by one",
                    line.count
                )),
            })
            .await;
        }
    }
}

/// The longest error message an entry keeps.
const MAX_ERROR_CHARS: usize = 512;
/// The longest text a parameter keeps, and the most items of a list or an object.
const MAX_PARAM_CHARS: usize = 256;
const MAX_PARAM_ITEMS: usize = 32;

/// The record with every field cut to a bounded size, so that no request, whatever it
/// sends, makes an entry larger than a few kilobytes.
fn bounded(mut a: AuditRecord) -> AuditRecord {
    a.user_name = a.user_name.map(|u| short(&u));
    a.source = short(&a.source);
    a.target = a.target.map(|t| short(&t));
    a.error = a.error.map(|e| cut(&e, MAX_ERROR_CHARS));
    a.params = a.params.map(|p| match serde_json::from_str(&p) {
        Ok(mut v) => {
            bound_value(&mut v);
            v.to_string()
        }
        Err(_) => cut(&p, MAX_PARAM_CHARS),
    });
    a
}

fn bound_value(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => *s = cut(s, MAX_PARAM_CHARS),
        Value::Array(items) => {
            items.truncate(MAX_PARAM_ITEMS);
            items.iter_mut().for_each(bound_value);
        }
        Value::Object(fields) => {
            let extra: Vec<String> = fields.keys().skip(MAX_PARAM_ITEMS).cloned().collect();
            for k in extra {
                fields.remove(&k);
            }
            fields.values_mut().for_each(bound_value);
        }
        _ => {}
    }
}

/// `text` cut to `max` characters, marked with `…` where it was cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// What an entry keeps of a name the request gave (a user name at a login, a name in a
/// path): names are at most 63 characters, so anything longer is cut, and an
/// unauthenticated request cannot write megabytes into the trail.
pub fn short(name: &str) -> String {
    cut(name, 64)
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

    #[test]
    fn every_field_of_an_entry_is_bounded() {
        let huge = "x".repeat(2_000_000);
        let a = super::bounded(hostel_store::AuditRecord {
            id: "a".into(),
            at: hostel_store::now(),
            user_name: Some(huge.clone()),
            source: huge.clone(),
            action: "token.create".into(),
            target: Some(huge.clone()),
            vm_id: None,
            params: Some(
                serde_json::json!({"user": huge, "list": vec![huge.clone(); 1000]}).to_string(),
            ),
            result: "denied".into(),
            error: Some(format!("there is no user named {huge:?}")),
        });
        let size = a.user_name.unwrap().len()
            + a.source.len()
            + a.target.unwrap().len()
            + a.params.unwrap().len()
            + a.error.unwrap().len();
        assert!(size < 16 * 1024, "{size} bytes");
    }
}
