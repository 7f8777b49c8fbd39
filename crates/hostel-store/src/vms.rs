//! VMs: their records, list pages, ownership and leases.

use crate::disks::DiskRecord;
use crate::row::{binds, execute_on, insert_on, Cols, FromRow, Record, Value};
use crate::{now, placeholders, Store, Timestamp};
use anyhow::Result;
use hostel_model::{Policy, VmState};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub host_id: Option<String>,
    pub image_id: Option<String>,
    pub memory_mib: u64,
    pub max_memory_mib: u64,
    pub vcpus: u32,
    pub max_vcpus: u32,
    pub state: VmState,
    pub state_reason: Option<String>,
    pub on_poweroff: Policy,
    pub on_reboot: Policy,
    pub on_crash: Policy,
    pub saved_path: Option<String>,
    pub pid: Option<u32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The image attached as the VM's CD-ROM, if it is one from the library.
    pub cdrom_image_id: Option<String>,
    /// How the VM boots (firmware, CD-ROM file, own kernel), as JSON.
    pub boot_json: Option<String>,
    /// Its first-boot configuration (seed on/off, SSH keys, password hash), as JSON.
    pub cloud_json: Option<String>,
    /// The owner: a user or a group (quotas are charged to it).
    pub owner_user_id: Option<String>,
    pub owner_group_id: Option<String>,
    /// A group whose members may operate the VM too.
    pub admin_group_id: Option<String>,
    /// When the VM's lease runs out (it is then shut down, never deleted).
    pub lease_expires_at: Option<Timestamp>,
    /// Its anti-affinity group: placement puts no two VMs of a group on one host.
    pub anti_affinity: Option<String>,
    /// The machine type it is pinned to (`pc-q35-10.0`); none: made before pinning.
    pub machine: Option<String>,
    /// Its CPU model: `host` or a named QEMU model; none: made before (as `host`).
    pub cpu_model: Option<String>,
    /// Whether its QEMU has a guest agent port: from its first cold start on since they
    /// came (a QEMU started before has none, and its saved state and migrations keep
    /// to that).
    pub guest_agent: bool,
}

impl FromRow for VmRecord {
    const TABLE: &'static str = "vms";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(VmRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            host_id: c.opt_text("host_id")?,
            image_id: c.opt_text("image_id")?,
            memory_mib: c.int("memory_mib")?,
            max_memory_mib: c.int("max_memory_mib")?,
            vcpus: c.int("vcpus")?,
            max_vcpus: c.int("max_vcpus")?,
            state: c.enumed("state")?,
            state_reason: c.opt_text("state_reason")?,
            on_poweroff: c.enumed("on_poweroff")?,
            on_reboot: c.enumed("on_reboot")?,
            on_crash: c.enumed("on_crash")?,
            saved_path: c.opt_text("saved_path")?,
            pid: c.opt_int("pid")?,
            created_at: c.time("created_at")?,
            updated_at: c.time("updated_at")?,
            cdrom_image_id: c.opt_text("cdrom_image_id")?,
            boot_json: c.opt_text("boot_json")?,
            cloud_json: c.opt_text("cloud_json")?,
            owner_user_id: c.opt_text("owner_user_id")?,
            owner_group_id: c.opt_text("owner_group_id")?,
            admin_group_id: c.opt_text("admin_group_id")?,
            lease_expires_at: c.opt_time("lease_expires_at")?,
            anti_affinity: c.opt_text("anti_affinity")?,
            machine: c.opt_text("machine")?,
            cpu_model: c.opt_text("cpu_model")?,
            guest_agent: c.int::<i64>("guest_agent")? != 0,
        })
    }
}

impl Record for VmRecord {
    const COLS: &'static str = "id, name, host_id, image_id, memory_mib, max_memory_mib, \
        vcpus, max_vcpus, state, state_reason, on_poweroff, on_reboot, on_crash, saved_path, \
        pid, created_at, updated_at, cdrom_image_id, boot_json, cloud_json, owner_user_id, \
        owner_group_id, admin_group_id, lease_expires_at, anti_affinity, machine, cpu_model, guest_agent";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.name,
            &self.host_id,
            &self.image_id,
            self.memory_mib,
            self.max_memory_mib,
            self.vcpus,
            self.max_vcpus,
            self.state,
            &self.state_reason,
            self.on_poweroff,
            self.on_reboot,
            self.on_crash,
            &self.saved_path,
            self.pid,
            self.created_at,
            self.updated_at,
            &self.cdrom_image_id,
            &self.boot_json,
            &self.cloud_json,
            &self.owner_user_id,
            &self.owner_group_id,
            &self.admin_group_id,
            self.lease_expires_at,
            &self.anti_affinity,
            &self.machine,
            &self.cpu_model,
            self.guest_agent,
        ]
    }
}

/// Which VMs a list page holds.
#[derive(Debug, Clone, Default)]
pub struct VmPageQuery<'a> {
    /// Only the VMs this user (id) and these groups (ids) own or administer; none: all.
    pub visible_to: Option<(&'a str, &'a [String])>,
    pub host_id: Option<&'a str>,
    pub state: Option<VmState>,
    /// Only VMs whose name sorts after this one (the last name of the previous page).
    pub after: Option<&'a str>,
    /// Only VMs whose name, or one of whose NICs' addresses, holds this text.
    pub search: Option<&'a str>,
    /// Only the VMs of this owner: a user's id or a group's id.
    pub owner_user_id: Option<&'a str>,
    pub owner_group_id: Option<&'a str>,
    pub limit: u32,
}

/// A VM as a list shows it: its record and the names it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct VmListRow {
    pub vm: VmRecord,
    pub owner_user: Option<String>,
    pub owner_group: Option<String>,
    pub image: Option<String>,
    /// Its NICs' IPv4 addresses, in NIC order.
    pub ips: Vec<String>,
    /// `NAME.DOMAIN` for each of its NICs on a network with a domain, in NIC order.
    pub dns_names: Vec<String>,
}

impl FromRow for VmListRow {
    const TABLE: &'static str = "vms";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(VmListRow {
            vm: VmRecord::from_row(c)?,
            owner_user: c.opt_text("owner_user_name")?,
            owner_group: c.opt_text("owner_group_name")?,
            image: c.opt_text("image_name")?,
            ips: Vec::new(),
            dns_names: Vec::new(),
        })
    }
}

/// Memory promised per host, as `memory_by_host` sums it.
struct HostMemory(String, u64);

impl FromRow for HostMemory {
    const TABLE: &'static str = "vms";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(HostMemory(c.text("host_id")?, c.int("mib")?))
    }
}

fn select_vms(rest: &str) -> String {
    format!("SELECT {} FROM vms {rest}", VmRecord::COLS)
}

impl Store {
    /// Inserts a VM and its disks in one transaction.
    pub async fn insert_vm(&self, v: &VmRecord, disks: &[DiskRecord]) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        insert_on(&mut tx, v).await?;
        for d in disks {
            insert_on(&mut tx, d).await?;
        }
        tx.commit().await?;
        self.vm_changed(&v.id);
        Ok(())
    }

    pub async fn vm_by_name(&self, name: &str) -> Result<Option<VmRecord>> {
        self.fetch_optional(&select_vms("WHERE name = $1"), binds![name])
            .await
    }

    pub async fn vm_by_id(&self, id: &str) -> Result<Option<VmRecord>> {
        self.fetch_optional(&select_vms("WHERE id = $1"), binds![id])
            .await
    }

    pub async fn vms(&self) -> Result<Vec<VmRecord>> {
        self.fetch_all(&select_vms("ORDER BY name"), binds![]).await
    }

    /// One page of the VM list, in name order, with the names a list shows joined in:
    /// one query for the VMs and one for their NICs' addresses, whatever the page's size.
    pub async fn vms_page(&self, q: &VmPageQuery<'_>) -> Result<Vec<VmListRow>> {
        let mut cond: Vec<String> = Vec::new();
        let mut binds: Vec<Value> = Vec::new();
        // Binds a value and gives its placeholder.
        fn mark<'a>(binds: &mut Vec<Value<'a>>, v: impl Into<Value<'a>>) -> String {
            binds.push(v.into());
            format!("${}", binds.len())
        }
        if let Some((user, groups)) = q.visible_to {
            let mut any = vec![format!("v.owner_user_id = {}", mark(&mut binds, user))];
            if !groups.is_empty() {
                let marks: Vec<String> = groups.iter().map(|g| mark(&mut binds, g)).collect();
                let set = marks.join(", ");
                any.push(format!("v.owner_group_id IN ({set})"));
                any.push(format!("v.admin_group_id IN ({set})"));
            }
            cond.push(format!("({})", any.join(" OR ")));
        }
        if let Some(h) = q.host_id {
            cond.push(format!("v.host_id = {}", mark(&mut binds, h)));
        }
        if let Some(st) = q.state {
            cond.push(format!("v.state = {}", mark(&mut binds, st)));
        }
        if let Some(after) = q.after {
            cond.push(format!("v.name > {}", mark(&mut binds, after)));
        }
        if let Some(text) = q.search {
            // LIKE's own characters in the text match themselves; case does not matter
            // (as SQLite's LIKE, and not PostgreSQL's, has it on its own).
            let escaped = text
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let pattern = mark(&mut binds, format!("%{escaped}%"));
            cond.push(format!(
                "(LOWER(v.name) LIKE {pattern} ESCAPE '\\' OR EXISTS (SELECT 1 FROM nics sn \
                 WHERE sn.vm_id = v.id AND LOWER(sn.ip) LIKE {pattern} ESCAPE '\\'))"
            ));
        }
        if let Some(u) = q.owner_user_id {
            cond.push(format!("v.owner_user_id = {}", mark(&mut binds, u)));
        }
        if let Some(g) = q.owner_group_id {
            cond.push(format!("v.owner_group_id = {}", mark(&mut binds, g)));
        }
        let cols: Vec<String> = VmRecord::COLS
            .split(',')
            .map(|c| format!("v.{}", c.trim()))
            .collect();
        let sql = format!(
            "SELECT {}, u.name AS owner_user_name, g.name AS owner_group_name, \
             i.name AS image_name FROM vms v \
             LEFT JOIN users u ON u.id = v.owner_user_id \
             LEFT JOIN user_groups g ON g.id = v.owner_group_id \
             LEFT JOIN images i ON i.id = v.image_id{} ORDER BY v.name LIMIT {}",
            cols.join(", "),
            if cond.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", cond.join(" AND "))
            },
            q.limit
        );
        let mut out: Vec<VmListRow> = self.fetch_all(&sql, binds).await?;
        if out.is_empty() {
            return Ok(out);
        }
        let at: HashMap<String, usize> = out
            .iter()
            .enumerate()
            .map(|(i, r)| (r.vm.id.clone(), i))
            .collect();
        // A thousand ids a query at most: databases cap how many values one query binds.
        let ids: Vec<String> = out.iter().map(|r| r.vm.id.clone()).collect();
        for chunk in ids.chunks(1000) {
            let sql = format!(
                "SELECT n.vm_id, n.ip || ' ' || COALESCE(w.domain, '') FROM nics n \
                 JOIN networks w ON w.id = n.network_id \
                 WHERE n.vm_id IN ({}) ORDER BY n.vm_id, n.idx",
                placeholders(1, chunk.len())
            );
            let values = chunk.iter().map(Value::from).collect();
            let ips: Vec<(String, String)> = self.fetch_all(&sql, values).await?;
            for (vm_id, ip_domain) in ips {
                if let Some(&i) = at.get(&vm_id) {
                    let (ip, domain) = ip_domain.split_once(' ').unwrap_or((&ip_domain, ""));
                    out[i].ips.push(ip.to_string());
                    if !domain.is_empty() {
                        let name = format!("{}.{domain}", out[i].vm.name);
                        out[i].dns_names.push(name);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Memory promised to VMs in `states`, per host: host id → sum of max memory (MiB).
    pub async fn memory_by_host(&self, states: &[VmState]) -> Result<Vec<(String, u64)>> {
        let sql = format!(
            "SELECT host_id, CAST(SUM(max_memory_mib) AS BIGINT) AS mib FROM vms \
             WHERE host_id IS NOT NULL AND state IN ({}) GROUP BY host_id",
            placeholders(1, states.len())
        );
        let values = states.iter().map(|s| Value::from(*s)).collect();
        let rows: Vec<HostMemory> = self.fetch_all(&sql, values).await?;
        Ok(rows.into_iter().map(|HostMemory(h, m)| (h, m)).collect())
    }

    /// The VMs an owner has and their disks: a user's (`user`), or a group's (`group`,
    /// counting only VMs that no user owns, as quotas do).
    pub async fn owned(
        &self,
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<(Vec<VmRecord>, Vec<DiskRecord>)> {
        let (cond, id) = match (user, group) {
            (Some(u), _) => ("owner_user_id = $1", u),
            (None, Some(g)) => ("owner_user_id IS NULL AND owner_group_id = $1", g),
            (None, None) => return Ok((Vec::new(), Vec::new())),
        };
        let vms = self
            .fetch_all(
                &select_vms(&format!("WHERE {cond} ORDER BY name")),
                binds![id],
            )
            .await?;
        let sql = format!(
            "SELECT {} FROM disks WHERE vm_id IN (SELECT id FROM vms WHERE {cond}) \
             ORDER BY vm_id, idx",
            DiskRecord::COLS
        );
        let disks = self.fetch_all(&sql, binds![id]).await?;
        Ok((vms, disks))
    }

    /// VMs whose lease ends at or before `at`.
    pub async fn vms_lease_ended(&self, at: Timestamp) -> Result<Vec<VmRecord>> {
        // The index narrows it down by text (UTC RFC 3339 text sorts as time does, but
        // for fractions within a second); the times decide.
        let mut vms: Vec<VmRecord> = self
            .fetch_all(
                &select_vms(
                    "WHERE lease_expires_at IS NOT NULL AND lease_expires_at <= $1 \
                     ORDER BY name",
                ),
                binds![at.upper_bound_text()],
            )
            .await?;
        vms.retain(|v| v.lease_expires_at.is_some_and(|end| end <= at));
        Ok(vms)
    }

    pub async fn set_vm_state(
        &self,
        id: &str,
        state: VmState,
        reason: Option<&str>,
        pid: Option<u32>,
    ) -> Result<()> {
        self.execute(
            "UPDATE vms SET state = $2, state_reason = $3, pid = $4, updated_at = $5 WHERE id = $1",
            binds![id, state, reason, pid, now()],
        )
        .await?;
        self.vm_changed(id);
        Ok(())
    }

    /// A migrated VM's new host, with its state there.
    pub async fn set_vm_host(
        &self,
        id: &str,
        host_id: &str,
        state: VmState,
        pid: Option<u32>,
    ) -> Result<()> {
        self.execute(
            "UPDATE vms SET host_id = $2, state = $3, pid = $4, state_reason = NULL, \
             updated_at = $5 WHERE id = $1",
            binds![id, host_id, state, pid, crate::now()],
        )
        .await?;
        self.vm_changed(id);
        Ok(())
    }

    pub async fn set_vm_memory(&self, id: &str, memory_mib: u64) -> Result<()> {
        self.execute(
            "UPDATE vms SET memory_mib = $2, updated_at = $3 WHERE id = $1",
            binds![id, memory_mib, now()],
        )
        .await?;
        self.vm_changed(id);
        Ok(())
    }

    /// A VM's resource limits as JSON; none: no limits.
    pub async fn vm_limits(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT limits FROM vm_limits WHERE vm_id = $1")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => Some(sqlx::Row::try_get(&r, "limits")?),
            None => None,
        })
    }

    /// Sets a VM's resource limits (JSON), or removes them (none).
    pub async fn set_vm_limits(&self, id: &str, limits: Option<&str>) -> Result<()> {
        self.replace_value("vm_limits", ("vm_id", id), "limits", limits)
            .await?;
        self.vm_changed(id);
        Ok(())
    }

    pub async fn set_vm_vcpus(&self, id: &str, vcpus: u32) -> Result<()> {
        self.execute(
            "UPDATE vms SET vcpus = $2, updated_at = $3 WHERE id = $1",
            binds![id, vcpus, now()],
        )
        .await?;
        self.vm_changed(id);
        Ok(())
    }

    /// Pins a VM to a machine type and a CPU model (either left as it is when none).
    pub async fn set_vm_platform(
        &self,
        id: &str,
        machine: Option<&str>,
        cpu_model: Option<&str>,
    ) -> Result<()> {
        self.execute(
            "UPDATE vms SET machine = COALESCE($2, machine), \
             cpu_model = COALESCE($3, cpu_model), updated_at = $4 WHERE id = $1",
            binds![id, machine, cpu_model, now()],
        )
        .await?;
        self.vm_changed(id);
        Ok(())
    }

    /// Whether the VM's QEMU has a guest agent port from its next start on: given at a
    /// cold start, taken back by a revert to memory saved without one.
    pub async fn set_vm_guest_agent(&self, id: &str, on: bool) -> Result<()> {
        self.execute(
            "UPDATE vms SET guest_agent = $2, updated_at = $3 WHERE id = $1",
            binds![id, on, now()],
        )
        .await?;
        self.vm_changed(id);
        Ok(())
    }

    pub async fn set_vm_saved(&self, id: &str, path: Option<&str>) -> Result<()> {
        self.execute(
            "UPDATE vms SET saved_path = $2, updated_at = $3 WHERE id = $1",
            binds![id, path, now()],
        )
        .await?;
        self.vm_changed(id);
        Ok(())
    }

    pub async fn set_vm_owner(
        &self,
        vm_id: &str,
        owner_user_id: Option<&str>,
        owner_group_id: Option<&str>,
        admin_group_id: Option<&str>,
    ) -> Result<()> {
        self.execute(
            "UPDATE vms SET owner_user_id = $1, owner_group_id = $2, admin_group_id = $3 \
             WHERE id = $4",
            binds![owner_user_id, owner_group_id, admin_group_id, vm_id],
        )
        .await?;
        self.vm_changed(vm_id);
        Ok(())
    }

    pub async fn set_vm_lease(&self, vm_id: &str, expires_at: Option<Timestamp>) -> Result<()> {
        self.execute(
            "UPDATE vms SET lease_expires_at = $1 WHERE id = $2",
            binds![expires_at, vm_id],
        )
        .await?;
        self.vm_changed(vm_id);
        Ok(())
    }

    /// Deletes a VM and its disk rows in one transaction (its operations stay in the
    /// journal).
    pub async fn delete_vm(&self, id: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for q in [
            "DELETE FROM snapshots WHERE vm_id = $1",
            "DELETE FROM port_forwards WHERE vm_id = $1",
            "DELETE FROM nics WHERE vm_id = $1",
            "DELETE FROM disks WHERE vm_id = $1",
            "DELETE FROM vm_limits WHERE vm_id = $1",
            "DELETE FROM backup_schedules WHERE vm_id = $1",
            "DELETE FROM vms WHERE id = $1",
        ] {
            execute_on(&mut tx, q, binds![id]).await?;
        }
        tx.commit().await?;
        self.vm_changed(id);
        Ok(())
    }
}
