//! Networks, NICs and port forwards. Unique constraints (MAC; IP per network; host port
//! per protocol) are the last word on conflicts, as in Invirt's `nics` table.

use crate::row::{binds, execute_on, Cols, FromRow, Record, Value};
use crate::{Store, Timestamp};
use anyhow::{Context, Result};
use hostel_model::net::{NetMode, NetPolicy};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub gateway: String,
    pub mode: NetMode,
    pub uplink: Option<String>,
    pub domain: Option<String>,
    pub ipv6_prefix: Option<String>,
    pub created_at: Timestamp,
    /// Upstream DNS server for names the network does not own (none: answer only its own).
    pub dns_forward: Option<String>,
    /// What its VMs may reach beyond the default, and who may attach (JSON in the row).
    pub policy: NetPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NicRecord {
    pub id: String,
    pub vm_id: String,
    pub network_id: String,
    pub idx: u32,
    pub mac: String,
    pub ip: String,
    pub ipv6: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRecord {
    pub id: String,
    pub vm_id: String,
    pub nic_id: String,
    pub proto: String,
    pub host_port: u16,
    pub guest_port: u16,
}

impl FromRow for NetworkRecord {
    const TABLE: &'static str = "networks";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(NetworkRecord {
            id: c.text("id")?,
            name: c.text("name")?,
            cidr: c.text("cidr")?,
            gateway: c.text("gateway")?,
            mode: c.enumed("mode")?,
            uplink: c.opt_text("uplink")?,
            domain: c.opt_text("domain")?,
            ipv6_prefix: c.opt_text("ipv6_prefix")?,
            created_at: c.time("created_at")?,
            dns_forward: c.opt_text("dns_forward")?,
            policy: match c.opt_text("policy")? {
                None => NetPolicy::default(),
                Some(json) => serde_json::from_str(&json)
                    .with_context(|| format!("networks.policy: {json:?} is not a policy"))?,
            },
        })
    }
}

impl Record for NetworkRecord {
    const COLS: &'static str =
        "id, name, cidr, gateway, mode, uplink, domain, ipv6_prefix, created_at, dns_forward, policy";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.name,
            &self.cidr,
            &self.gateway,
            self.mode,
            &self.uplink,
            &self.domain,
            &self.ipv6_prefix,
            self.created_at,
            &self.dns_forward,
            serde_json::to_string(&self.policy).expect("a policy serializes"),
        ]
    }
}

impl FromRow for NicRecord {
    const TABLE: &'static str = "nics";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(NicRecord {
            id: c.text("id")?,
            vm_id: c.text("vm_id")?,
            network_id: c.text("network_id")?,
            idx: c.int("idx")?,
            mac: c.text("mac")?,
            ip: c.text("ip")?,
            ipv6: c.opt_text("ipv6")?,
        })
    }
}

impl Record for NicRecord {
    const COLS: &'static str = "id, vm_id, network_id, idx, mac, ip, ipv6";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.vm_id,
            &self.network_id,
            self.idx,
            &self.mac,
            &self.ip,
            &self.ipv6,
        ]
    }
}

impl FromRow for ForwardRecord {
    const TABLE: &'static str = "port_forwards";
    fn from_row(c: &Cols<'_>) -> Result<Self> {
        Ok(ForwardRecord {
            id: c.text("id")?,
            vm_id: c.text("vm_id")?,
            nic_id: c.text("nic_id")?,
            proto: c.text("proto")?,
            host_port: c.int("host_port")?,
            guest_port: c.int("guest_port")?,
        })
    }
}

impl Record for ForwardRecord {
    const COLS: &'static str = "id, vm_id, nic_id, proto, host_port, guest_port";
    fn values(&self) -> Vec<Value<'_>> {
        binds![
            &self.id,
            &self.vm_id,
            &self.nic_id,
            &self.proto,
            self.host_port,
            self.guest_port,
        ]
    }
}

impl Store {
    pub async fn insert_network(&self, n: &NetworkRecord) -> Result<()> {
        self.insert(n).await
    }

    /// Replaces a network's policy.
    pub async fn set_network_policy(&self, id: &str, policy: &NetPolicy) -> Result<()> {
        let json = serde_json::to_string(policy)?;
        self.execute(
            "UPDATE networks SET policy = $1 WHERE id = $2",
            binds![json, id],
        )
        .await?;
        Ok(())
    }

    pub async fn networks(&self) -> Result<Vec<NetworkRecord>> {
        let sql = format!("SELECT {} FROM networks ORDER BY name", NetworkRecord::COLS);
        self.fetch_all(&sql, binds![]).await
    }

    pub async fn network_by_name(&self, name: &str) -> Result<Option<NetworkRecord>> {
        let sql = format!(
            "SELECT {} FROM networks WHERE name = $1",
            NetworkRecord::COLS
        );
        self.fetch_optional(&sql, binds![name]).await
    }

    pub async fn network_by_id(&self, id: &str) -> Result<Option<NetworkRecord>> {
        let sql = format!("SELECT {} FROM networks WHERE id = $1", NetworkRecord::COLS);
        self.fetch_optional(&sql, binds![id]).await
    }

    /// Deletes a network only if no NIC uses it; returns the VMs using it otherwise.
    pub async fn delete_network_if_unused(&self, id: &str) -> Result<Vec<String>> {
        self.delete_if_unused(
            "networks",
            "SELECT DISTINCT v.name FROM nics n JOIN vms v ON v.id = n.vm_id \
             WHERE n.network_id = $1 ORDER BY v.name",
            &[],
            id,
        )
        .await
    }

    pub async fn insert_nic(&self, n: &NicRecord) -> Result<()> {
        self.insert(n).await?;
        self.vm_changed(&n.vm_id);
        Ok(())
    }

    /// The names of the VMs that have NICs, by VM id.
    pub async fn names_of_vms_with_nics(&self) -> Result<HashMap<String, String>> {
        let pairs: Vec<(String, String)> = self
            .fetch_all(
                "SELECT DISTINCT v.id AS id, v.name AS name FROM vms v \
                 JOIN nics n ON n.vm_id = v.id",
                binds![],
            )
            .await?;
        Ok(pairs.into_iter().collect())
    }

    pub async fn nics_of(&self, vm_id: &str) -> Result<Vec<NicRecord>> {
        let sql = format!(
            "SELECT {} FROM nics WHERE vm_id = $1 ORDER BY idx",
            NicRecord::COLS
        );
        self.fetch_all(&sql, binds![vm_id]).await
    }

    pub async fn nics_on(&self, network_id: &str) -> Result<Vec<NicRecord>> {
        let sql = format!(
            "SELECT {} FROM nics WHERE network_id = $1 ORDER BY ip",
            NicRecord::COLS
        );
        self.fetch_all(&sql, binds![network_id]).await
    }

    pub async fn all_nics(&self) -> Result<Vec<NicRecord>> {
        let sql = format!("SELECT {} FROM nics ORDER BY vm_id, idx", NicRecord::COLS);
        self.fetch_all(&sql, binds![]).await
    }

    pub async fn delete_nic(&self, id: &str) -> Result<()> {
        let vm = self.vm_of("nics", id).await?;
        let mut tx = self.pool().begin().await?;
        for sql in [
            "DELETE FROM port_forwards WHERE nic_id = $1",
            "DELETE FROM nics WHERE id = $1",
        ] {
            execute_on(&mut tx, sql, binds![id]).await?;
        }
        tx.commit().await?;
        if let Some(vm) = vm {
            self.vm_changed(&vm);
        }
        Ok(())
    }

    pub async fn insert_forward(&self, f: &ForwardRecord) -> Result<()> {
        self.insert(f).await?;
        self.vm_changed(&f.vm_id);
        Ok(())
    }

    pub async fn forwards(&self) -> Result<Vec<ForwardRecord>> {
        let sql = format!(
            "SELECT {} FROM port_forwards ORDER BY proto, host_port",
            ForwardRecord::COLS
        );
        self.fetch_all(&sql, binds![]).await
    }

    pub async fn delete_forward(&self, id: &str) -> Result<()> {
        let vm = self.vm_of("port_forwards", id).await?;
        self.execute("DELETE FROM port_forwards WHERE id = $1", binds![id])
            .await?;
        if let Some(vm) = vm {
            self.vm_changed(&vm);
        }
        Ok(())
    }
}
