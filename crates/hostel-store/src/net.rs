//! Networks, NICs and port forwards. Unique constraints (MAC; IP per network; host port
//! per protocol) are the last word on conflicts, as in Invirt's `nics` table.

use crate::{opt_str, u64_of, Store};
use anyhow::Result;
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub gateway: String,
    pub mode: String,
    pub uplink: Option<String>,
    pub domain: Option<String>,
    pub ipv6_prefix: Option<String>,
    pub created_at: String,
    /// Upstream DNS server for names the network does not own (none: answer only its own).
    pub dns_forward: Option<String>,
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

const NET_COLS: &str =
    "id, name, cidr, gateway, mode, uplink, domain, ipv6_prefix, created_at, dns_forward";
const NIC_COLS: &str = "id, vm_id, network_id, idx, mac, ip, ipv6";
const FWD_COLS: &str = "id, vm_id, nic_id, proto, host_port, guest_port";

fn net_of(r: &AnyRow) -> Result<NetworkRecord> {
    Ok(NetworkRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        cidr: r.try_get("cidr")?,
        gateway: r.try_get("gateway")?,
        mode: r.try_get("mode")?,
        uplink: opt_str(r, "uplink")?,
        domain: opt_str(r, "domain")?,
        ipv6_prefix: opt_str(r, "ipv6_prefix")?,
        created_at: r.try_get("created_at")?,
        dns_forward: opt_str(r, "dns_forward")?,
    })
}

fn nic_of(r: &AnyRow) -> Result<NicRecord> {
    Ok(NicRecord {
        id: r.try_get("id")?,
        vm_id: r.try_get("vm_id")?,
        network_id: r.try_get("network_id")?,
        idx: u64_of(r, "idx")? as u32,
        mac: r.try_get("mac")?,
        ip: r.try_get("ip")?,
        ipv6: opt_str(r, "ipv6")?,
    })
}

fn fwd_of(r: &AnyRow) -> Result<ForwardRecord> {
    Ok(ForwardRecord {
        id: r.try_get("id")?,
        vm_id: r.try_get("vm_id")?,
        nic_id: r.try_get("nic_id")?,
        proto: r.try_get("proto")?,
        host_port: u64_of(r, "host_port")? as u16,
        guest_port: u64_of(r, "guest_port")? as u16,
    })
}

impl Store {
    pub async fn insert_network(&self, n: &NetworkRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO networks ({NET_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&n.id)
        .bind(&n.name)
        .bind(&n.cidr)
        .bind(&n.gateway)
        .bind(&n.mode)
        .bind(&n.uplink)
        .bind(&n.domain)
        .bind(&n.ipv6_prefix)
        .bind(&n.created_at)
        .bind(&n.dns_forward)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn networks(&self) -> Result<Vec<NetworkRecord>> {
        let rows = sqlx::query(&format!("SELECT {NET_COLS} FROM networks ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(net_of).collect()
    }

    pub async fn network_by_name(&self, name: &str) -> Result<Option<NetworkRecord>> {
        let row = sqlx::query(&format!("SELECT {NET_COLS} FROM networks WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(net_of).transpose()
    }

    pub async fn network_by_id(&self, id: &str) -> Result<Option<NetworkRecord>> {
        let row = sqlx::query(&format!("SELECT {NET_COLS} FROM networks WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(net_of).transpose()
    }

    /// Deletes a network only if no NIC uses it; returns the VMs using it otherwise.
    pub async fn delete_network_if_unused(&self, id: &str) -> Result<Vec<String>> {
        self.delete_if_unused(
            "networks",
            "SELECT DISTINCT v.name FROM nics n JOIN vms v ON v.id = n.vm_id \
             WHERE n.network_id = $1 ORDER BY v.name",
            id,
        )
        .await
    }

    pub async fn insert_nic(&self, n: &NicRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO nics ({NIC_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&n.id)
        .bind(&n.vm_id)
        .bind(&n.network_id)
        .bind(n.idx as i64)
        .bind(&n.mac)
        .bind(&n.ip)
        .bind(&n.ipv6)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The names of the VMs that have NICs, by VM id.
    pub async fn names_of_vms_with_nics(
        &self,
    ) -> Result<std::collections::HashMap<String, String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT v.id AS id, v.name AS name FROM vms v JOIN nics n ON n.vm_id = v.id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
            .collect()
    }

    pub async fn nics_of(&self, vm_id: &str) -> Result<Vec<NicRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {NIC_COLS} FROM nics WHERE vm_id = $1 ORDER BY idx"
        ))
        .bind(vm_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(nic_of).collect()
    }

    pub async fn nics_on(&self, network_id: &str) -> Result<Vec<NicRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {NIC_COLS} FROM nics WHERE network_id = $1 ORDER BY ip"
        ))
        .bind(network_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(nic_of).collect()
    }

    pub async fn all_nics(&self) -> Result<Vec<NicRecord>> {
        let rows = sqlx::query(&format!("SELECT {NIC_COLS} FROM nics ORDER BY vm_id, idx"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(nic_of).collect()
    }

    pub async fn delete_nic(&self, id: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM port_forwards WHERE nic_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM nics WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_forward(&self, f: &ForwardRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO port_forwards ({FWD_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&f.id)
        .bind(&f.vm_id)
        .bind(&f.nic_id)
        .bind(&f.proto)
        .bind(f.host_port as i64)
        .bind(f.guest_port as i64)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn forwards(&self) -> Result<Vec<ForwardRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {FWD_COLS} FROM port_forwards ORDER BY proto, host_port"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(fwd_of).collect()
    }

    pub async fn delete_forward(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM port_forwards WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
