//! Hosts: registration, heartbeats, capacity mirrored in memory, mesh identity, the secret
//! each host's agent API accepts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use aloft_api::{Host, HostStatus, MeshInfo, MeshPeer, RegisterHostRequest};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{now_rfc3339, Db, Inner, MAX_HOST_INDEX};
use crate::core::error::StoreError;

/// One host's capacity and what is already placed on it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCapacity {
    pub id: String,
    pub region: String,
    pub cpus: i64,
    pub memory_mb: i64,
    pub used_cpus: i64,
    pub used_memory_mb: i64,
    /// When the host last heartbeated (or registered).
    pub last_seen: Instant,
    /// Drained by the operator: it keeps its machines and gets no new ones.
    pub draining: bool,
}

impl HostCapacity {
    /// Free CPUs (never negative).
    pub fn free_cpus(&self) -> i64 {
        (self.cpus - self.used_cpus).max(0)
    }

    /// Free memory in MB (never negative).
    pub fn free_memory_mb(&self) -> i64 {
        (self.memory_mb - self.used_memory_mb).max(0)
    }
}

/// Where a host's agent API listens, and the secret it accepts.
#[derive(Debug, Clone)]
pub struct AgentApi {
    /// `ip:port`.
    pub address: String,
    pub secret: String,
}

impl Inner {
    /// Loads every host (seen now), its usage and its edge addresses.
    pub(super) fn load_hosts(&mut self) -> Result<(), StoreError> {
        let now = Instant::now();
        let rows: Vec<(String, String, i64, i64, bool)> = {
            let mut stmt = self.conn.prepare(
                "SELECT h.id, h.region, h.cpus, h.memory_mb, coalesce(f.draining, 0) != 0
                 FROM hosts h LEFT JOIN host_flags f ON f.host_id = h.id ORDER BY h.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, region, cpus, memory_mb, draining) in rows {
            self.host_index.insert(id.clone(), self.hosts.len());
            self.hosts.push(HostCapacity {
                id,
                region,
                cpus,
                memory_mb,
                used_cpus: 0,
                used_memory_mb: 0,
                last_seen: now,
                draining,
            });
        }
        let ids: Vec<String> = self.hosts.iter().map(|h| h.id.clone()).collect();
        for id in ids {
            self.refresh_host_usage(&id)?;
        }
        let edges: Vec<(String, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, edge_addresses FROM hosts WHERE edge_addresses != ''")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, list) in edges {
            self.edge_addresses
                .insert(id, list.split(',').filter_map(|a| a.parse().ok()).collect());
        }
        for id in self.db().revoked_hosts()? {
            self.mark_host_down(&id);
        }
        Ok(())
    }

    /// Every registered host's capacity.
    pub fn hosts(&self) -> &[HostCapacity] {
        &self.hosts
    }

    /// One host's capacity.
    pub fn host_capacity(&self, id: &str) -> Option<&HostCapacity> {
        self.host_index.get(id).map(|&i| &self.hosts[i])
    }

    /// How many of `app`'s machines each host runs.
    pub fn app_hosts(&self, app: &str) -> Option<&HashMap<String, u32>> {
        self.app_hosts.get(app)
    }

    /// The revision of the host's latest machine change.
    pub fn host_revision(&self, id: &str) -> Option<u64> {
        self.host_revision.get(id).copied()
    }

    /// The public addresses of the host's edge.
    pub fn edge_addresses(&self, id: &str) -> Option<&Vec<IpAddr>> {
        self.edge_addresses.get(id)
    }

    /// Registers (or re-registers) a host; it counts as seen now. A new host gets its host
    /// index here: the agent's hint when no other host holds it, else one never handed out.
    /// `edges` are the request's `edge_addresses`, parsed by the caller.
    pub fn register_host(
        &mut self,
        req: &RegisterHostRequest,
        edges: Vec<IpAddr>,
    ) -> Result<(), StoreError> {
        let edge_list = req.edge_addresses.join(",");
        let tx = self.conn.transaction()?;
        let existing: Option<Option<i64>> = tx
            .query_row(
                "SELECT host_index FROM hosts WHERE id = ?1",
                [&req.id],
                |r| r.get(0),
            )
            .optional()?;
        let index = match existing.flatten() {
            Some(index) => index,
            None => assign_host_index(&tx, &req.id, req.host_index)?,
        };
        let (key, endpoint) = match &req.mesh {
            Some(mesh) => (Some(&mesh.public_key), Some(&mesh.endpoint)),
            None => (None, None),
        };
        tx.execute(
            "INSERT INTO hosts (id, region, address, cpus, memory_mb, last_heartbeat, host_index, mesh_public_key, mesh_endpoint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (id) DO UPDATE SET region = ?2, address = ?3, cpus = ?4, memory_mb = ?5, last_heartbeat = ?6,
                host_index = ?7, mesh_public_key = ?8, mesh_endpoint = ?9",
            params![req.id, req.region, req.address, req.cpus, req.memory_mb, now_rfc3339(), index, key, endpoint],
        )?;
        tx.execute(
            "UPDATE hosts SET edge_addresses = ?2 WHERE id = ?1",
            params![req.id, edge_list],
        )?;
        tx.execute(
            "UPDATE meta SET value = max(value, ?1) WHERE key = 'host_index_high'",
            [index],
        )?;
        tx.commit()?;
        let now = Instant::now();
        match self.host_index.get(&req.id) {
            Some(&i) => {
                let host = &mut self.hosts[i];
                host.region.clone_from(&req.region);
                host.cpus = req.cpus;
                host.memory_mb = req.memory_mb;
                host.last_seen = now;
            }
            None => {
                self.host_index.insert(req.id.clone(), self.hosts.len());
                self.hosts.push(HostCapacity {
                    id: req.id.clone(),
                    region: req.region.clone(),
                    cpus: req.cpus,
                    memory_mb: req.memory_mb,
                    used_cpus: 0,
                    used_memory_mb: 0,
                    last_seen: now,
                    draining: false,
                });
            }
        }
        self.refresh_host_usage(&req.id)?;
        if edges.is_empty() {
            self.edge_addresses.remove(&req.id);
        } else {
            self.edge_addresses.insert(req.id.clone(), edges);
        }
        Ok(())
    }

    /// Records a heartbeat in memory (and the time in the database).
    pub fn heartbeat(&mut self, id: &str) -> Result<(), StoreError> {
        let i = *self
            .host_index
            .get(id)
            .ok_or_else(|| StoreError::HostNotFound(id.to_owned()))?;
        self.hosts[i].last_seen = Instant::now();
        self.conn.execute(
            "UPDATE hosts SET last_heartbeat = ?2 WHERE id = ?1",
            params![id, now_rfc3339()],
        )?;
        Ok(())
    }

    /// Recomputes a host's used CPUs and memory, its per-app machine counts and its latest
    /// revision from its machines (an indexed range, no JSON).
    pub fn refresh_host_usage(&mut self, id: &str) -> Result<(), StoreError> {
        let (cpus, memory_mb, revision): (i64, i64, i64) = self.conn.query_row(
            "SELECT coalesce(sum(cpus) FILTER (WHERE state != 'destroyed'), 0),
                    coalesce(sum(memory_mb) FILTER (WHERE state != 'destroyed'), 0),
                    coalesce(max(revision), 0)
             FROM machines WHERE host_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if let Some(&i) = self.host_index.get(id) {
            self.hosts[i].used_cpus = cpus;
            self.hosts[i].used_memory_mb = memory_mb;
        }
        self.host_revision.insert(id.to_owned(), revision as u64);
        for app in self.host_apps.remove(id).unwrap_or_default() {
            if let Some(per_host) = self.app_hosts.get_mut(&app) {
                per_host.remove(id);
                if per_host.is_empty() {
                    self.app_hosts.remove(&app);
                }
            }
        }
        let counts: Vec<(String, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT app, count(*) FROM machines WHERE host_id = ?1 AND state != 'destroyed' GROUP BY app",
            )?;
            let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut apps = Vec::with_capacity(counts.len());
        for (app, count) in counts {
            self.app_hosts
                .entry(app.clone())
                .or_default()
                .insert(id.to_owned(), count as u32);
            apps.push(app);
        }
        self.host_apps.insert(id.to_owned(), apps);
        Ok(())
    }

    /// `ok`, `unreachable`, or `unknown` (host not registered).
    pub fn host_status(&self, id: &str, live_since: Instant) -> HostStatus {
        match self.host_index.get(id) {
            Some(&i) if self.hosts[i].last_seen >= live_since => HostStatus::Ok,
            Some(_) => HostStatus::Unreachable,
            None => HostStatus::Unknown,
        }
    }

    /// A host as the API shows it.
    pub fn host(&self, id: &str, live_since: Instant) -> Result<Host, StoreError> {
        type HostColumns = (String, String, i64, Option<String>, Option<String>);
        let missing = || StoreError::HostNotFound(id.to_owned());
        let (address, last_heartbeat, host_index, key, endpoint): HostColumns = self
            .conn
            .query_row(
                "SELECT address, last_heartbeat, coalesce(host_index, 0), mesh_public_key, mesh_endpoint
                 FROM hosts WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?
            .ok_or_else(missing)?;
        let mesh = match (key, endpoint) {
            (Some(public_key), Some(endpoint)) => Some(MeshInfo {
                public_key,
                endpoint,
            }),
            _ => None,
        };
        let cap = self.host_capacity(id).ok_or_else(missing)?;
        Ok(Host {
            id: id.to_owned(),
            region: cap.region.clone(),
            address,
            cpus: cap.cpus,
            memory_mb: cap.memory_mb,
            free_cpus: cap.free_cpus(),
            free_memory_mb: cap.free_memory_mb(),
            status: self.host_status(id, live_since),
            last_heartbeat,
            host_index: u32::try_from(host_index).unwrap_or(0),
            mesh,
            draining: cap.draining,
        })
    }

    /// Every registered host that has mesh info, by host index.
    pub fn mesh_peers(&self, live_since: Instant) -> Result<Vec<MeshPeer>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, region, host_index, mesh_public_key, mesh_endpoint FROM hosts
             WHERE mesh_public_key IS NOT NULL AND mesh_endpoint IS NOT NULL AND host_index IS NOT NULL
             ORDER BY host_index",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut peers = Vec::new();
        for row in rows {
            let (host_id, region, index, public_key, endpoint) = row?;
            let status = self.host_status(&host_id, live_since);
            peers.push(MeshPeer {
                host_id,
                region,
                host_index: u32::try_from(index).unwrap_or(0),
                public_key,
                endpoint,
                status,
            });
        }
        Ok(peers)
    }
}

impl Db<'_> {
    /// Keeps the secret a host's agent API accepts.
    pub fn set_host_secret(&self, host: &str, secret: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO host_secrets (host_id, secret) VALUES (?1, ?2)
             ON CONFLICT (host_id) DO UPDATE SET secret = ?2",
            params![host, secret],
        )?;
        Ok(())
    }

    /// The host's agent API address and secret: `None` for an unknown host, a secret of
    /// `None` for a host that reported none.
    pub fn agent_api(&self, host: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT h.address, s.secret FROM hosts h LEFT JOIN host_secrets s ON s.host_id = h.id
                 WHERE h.id = ?1",
                [host],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }
}

/// A host index for a host registering for the first time: `hint` when it is valid and no
/// other host holds it, else one above every index ever handed out.
fn assign_host_index(tx: &Transaction<'_>, id: &str, hint: Option<u32>) -> Result<i64, StoreError> {
    if let Some(hint) = hint {
        if !(1..=MAX_HOST_INDEX).contains(&hint) {
            return Err(StoreError::HostIndexOutOfRange(hint));
        }
        let holder: Option<String> = tx
            .query_row(
                "SELECT id FROM hosts WHERE host_index = ?1",
                [i64::from(hint)],
                |r| r.get(0),
            )
            .optional()?;
        if holder.is_none_or(|h| h == id) {
            return Ok(i64::from(hint));
        }
    }
    let high: i64 = tx.query_row(
        "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'host_index_high'), 0),
                    coalesce((SELECT max(host_index) FROM hosts), 0))",
        [],
        |r| r.get(0),
    )?;
    let next = high + 1;
    if next > i64::from(MAX_HOST_INDEX) {
        return Err(StoreError::HostIndexesExhausted);
    }
    Ok(next)
}
