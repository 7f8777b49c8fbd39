//! Who an operation runs for. Every operation of the controller takes a [`Ctx`]: a
//! caller (a user, through a token, an SSH key or a web session) or one of Hostel's own
//! actors by name. A system actor has only the rights listed for it; nothing treats "no
//! caller" as "everyone".

use crate::error::{Error, Result};
use hostel_store::VmRecord;
use std::sync::Mutex;

/// The authenticated user an operation runs for. (Serde: a console ticket keeps it in
/// the database, for whichever controller spends the ticket.)
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    pub user_id: String,
    pub user_name: String,
    pub is_admin: bool,
    /// A read-only token: reads only.
    pub read_only: bool,
    pub group_ids: Vec<String>,
    pub token_name: String,
    /// When the token in use expires (tokens it makes may not outlive it).
    pub token_expires_at: Option<hostel_store::Timestamp>,
}

impl Caller {
    /// May this caller see and operate `vm`? Its owner, members of its owning group and
    /// of its administrator group, and admins may; nobody else learns it exists.
    pub fn may_operate(&self, vm: &VmRecord) -> bool {
        self.is_admin
            || vm.owner_user_id.as_deref() == Some(self.user_id.as_str())
            || vm
                .owner_group_id
                .as_ref()
                .is_some_and(|g| self.group_ids.contains(g))
            || vm
                .admin_group_id
                .as_ref()
                .is_some_and(|g| self.group_ids.contains(g))
    }
}

/// What a system actor may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Look up and operate (start, stop, ...) any VM.
    OperateAnyVm,
    /// Create networks (the default network).
    ManageNetworks,
    /// Build images (the tiny image at first start).
    BuildImages,
    /// Apply the audit trail's retention (export, then remove old entries).
    PruneAudit,
    /// Read `/metrics`.
    ReadMetrics,
}

/// Hostel's own actors, each with the rights it needs and no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemActor {
    /// Shuts down VMs whose lease has ended.
    LeaseReaper,
    /// `hostel up`'s start-up: makes the default network and the tiny image.
    Startup,
    /// Applies the audit trail's retention, every hour.
    AuditKeeper,
    /// Whatever reaches the separate metrics address (`--metrics-listen`): `/metrics`
    /// only.
    MetricsScraper,
    /// Takes the scheduled backups and prunes old ones.
    BackupScheduler,
}

impl SystemActor {
    pub fn name(self) -> &'static str {
        match self {
            SystemActor::LeaseReaper => "lease-reaper",
            SystemActor::Startup => "startup",
            SystemActor::AuditKeeper => "audit-keeper",
            SystemActor::MetricsScraper => "metrics-scraper",
            SystemActor::BackupScheduler => "backup-scheduler",
        }
    }

    pub fn rights(self) -> &'static [Right] {
        match self {
            SystemActor::LeaseReaper => &[Right::OperateAnyVm],
            SystemActor::Startup => &[Right::ManageNetworks, Right::BuildImages],
            SystemActor::AuditKeeper => &[Right::PruneAudit],
            SystemActor::MetricsScraper => &[Right::ReadMetrics],
            SystemActor::BackupScheduler => &[Right::OperateAnyVm],
        }
    }
}

#[derive(Debug, Clone)]
pub enum Actor {
    User(Caller),
    System(SystemActor),
}

/// What an operation adds to its audit entry: the thing it acted on and the parameters
/// that matter. The REST layer writes the entry once the operation has answered.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    pub action: Option<&'static str>,
    pub target: Option<String>,
    pub vm_id: Option<String>,
    pub params: Option<serde_json::Value>,
}

/// The context of one operation: who, from where, and what it noted for the audit trail.
#[derive(Debug)]
pub struct Ctx {
    pub actor: Actor,
    /// Where the request came from (an address, `ssh`, or the actor's name).
    pub source: String,
    note: Mutex<AuditNote>,
}

impl Ctx {
    pub fn user(caller: Caller, source: impl Into<String>) -> Ctx {
        Ctx {
            actor: Actor::User(caller),
            source: source.into(),
            note: Mutex::default(),
        }
    }

    pub fn system(actor: SystemActor) -> Ctx {
        Ctx {
            actor: Actor::System(actor),
            source: actor.name().into(),
            note: Mutex::default(),
        }
    }

    /// The user this runs for; system actors have none.
    pub fn caller(&self) -> Result<&Caller> {
        match &self.actor {
            Actor::User(c) => Ok(c),
            Actor::System(s) => Err(Error::forbidden(format!(
                "Hostel's {} acts for no user and may not do this",
                s.name()
            ))),
        }
    }

    /// Who, for the audit trail and logs: a user's name, or `system:NAME`.
    pub fn actor_name(&self) -> String {
        match &self.actor {
            Actor::User(c) => c.user_name.clone(),
            Actor::System(s) => format!("system:{}", s.name()),
        }
    }

    pub fn has(&self, right: Right) -> bool {
        matches!(&self.actor, Actor::System(s) if s.rights().contains(&right))
    }

    /// An admin user. No system actor is an admin: each has its listed rights only.
    pub fn is_admin(&self) -> bool {
        matches!(&self.actor, Actor::User(c) if c.is_admin)
    }

    /// Refuses anyone but an admin.
    pub fn require_admin(&self) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::forbidden("only an admin may do this"))
        }
    }

    /// Refuses anyone but an admin or a system actor with `right`.
    pub fn require_admin_or(&self, right: Right) -> Result<()> {
        if self.is_admin() || self.has(right) {
            Ok(())
        } else {
            Err(Error::forbidden("only an admin may do this"))
        }
    }

    /// May this actor see and operate `vm`?
    pub fn may_operate(&self, vm: &VmRecord) -> bool {
        match &self.actor {
            Actor::User(c) => c.may_operate(vm),
            Actor::System(s) => s.rights().contains(&Right::OperateAnyVm),
        }
    }

    /// For queries of VMs: `None` when every VM is visible, else the user and their
    /// groups. A system actor without the right to any VM sees none.
    pub fn visible_to(&self) -> Result<Option<(&str, &[String])>> {
        match &self.actor {
            Actor::User(c) if c.is_admin => Ok(None),
            Actor::User(c) => Ok(Some((c.user_id.as_str(), c.group_ids.as_slice()))),
            Actor::System(_) if self.has(Right::OperateAnyVm) => Ok(None),
            Actor::System(s) => Err(Error::forbidden(format!(
                "Hostel's {} may not list VMs",
                s.name()
            ))),
        }
    }

    /// Names the domain action for the audit trail (`vm.create`, `disk.resize`, ...).
    pub fn action(&self, action: &'static str) {
        self.note.lock().unwrap().action = Some(action);
    }

    /// Names what the operation acts on, for the audit trail.
    /// What the request acts on is `name`, not a VM (after it acted on VMs on the way).
    pub fn target_not_vm(&self, name: &str) {
        let mut n = self.note.lock().unwrap();
        n.target = Some(name.to_string());
        n.vm_id = None;
    }

    pub fn target(&self, name: &str, vm_id: Option<&str>) {
        let mut n = self.note.lock().unwrap();
        n.target = Some(name.to_string());
        if let Some(id) = vm_id {
            n.vm_id = Some(id.to_string());
        }
    }

    /// Records the parameters that matter, for the audit trail (never secrets).
    pub fn params(&self, params: serde_json::Value) {
        self.note.lock().unwrap().params = Some(params);
    }

    pub fn note(&self) -> AuditNote {
        self.note.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(owner: Option<&str>) -> VmRecord {
        VmRecord {
            id: "vm-1".into(),
            name: "a".into(),
            host_id: None,
            image_id: None,
            memory_mib: 64,
            max_memory_mib: 64,
            vcpus: 1,
            max_vcpus: 1,
            state: hostel_model::VmState::Stopped,
            state_reason: None,
            on_poweroff: hostel_model::Policy::Destroy,
            on_reboot: hostel_model::Policy::Restart,
            on_crash: hostel_model::Policy::Destroy,
            saved_path: None,
            pid: None,
            created_at: hostel_store::now(),
            updated_at: hostel_store::now(),
            cdrom_image_id: None,
            boot_json: None,
            cloud_json: None,
            owner_user_id: owner.map(String::from),
            owner_group_id: None,
            admin_group_id: None,
            lease_expires_at: None,
            anti_affinity: None,
            machine: None,
            cpu_model: None,
            guest_agent: false,
        }
    }

    #[test]
    fn system_actors_have_only_their_rights() {
        let reaper = Ctx::system(SystemActor::LeaseReaper);
        assert!(reaper.may_operate(&vm(Some("u1"))));
        assert!(!reaper.is_admin());
        assert!(reaper.require_admin().is_err());
        assert!(reaper.caller().is_err());
        assert_eq!(reaper.actor_name(), "system:lease-reaper");
        let startup = Ctx::system(SystemActor::Startup);
        assert!(!startup.may_operate(&vm(None)));
        assert!(startup.visible_to().is_err());
        assert!(startup.require_admin_or(Right::ManageNetworks).is_ok());
        assert!(reaper.require_admin_or(Right::ManageNetworks).is_err());
    }
}
