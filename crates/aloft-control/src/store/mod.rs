//! The SQLite store: schema migrations, the global revision, tokens, apps and hosts.
//!
//! Everything lives behind one mutex (`Inner`): every mutation is one SQLite transaction
//! that also bumps the revision, and host capacity is mirrored in memory for placement.

mod machines;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use aloft_api::{
    App, AppSummary, Host, HostStatus, MeshInfo, MeshPeer, Organization, RegisterHostRequest,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::api::ApiError;
use crate::auth::{hash_token, TokenScope, TokenSet};
use crate::placement::HostCapacity;

pub use machines::{app_org as machines_app_org, MachineRow, NewMachine, PendingEvent};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Cannot open database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("Database migration {version} failed")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("Database query failed")]
    Query(#[from] rusqlite::Error),
}

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     INSERT INTO meta (key, value) VALUES ('revision', 0);
     CREATE TABLE orgs (slug TEXT PRIMARY KEY, name TEXT NOT NULL);
     CREATE TABLE tokens (hash BLOB PRIMARY KEY, kind TEXT NOT NULL, app TEXT, created_at TEXT NOT NULL);
     CREATE TABLE apps (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, org_slug TEXT NOT NULL REFERENCES orgs(slug),
                        network TEXT NOT NULL, created_at TEXT NOT NULL);
     CREATE TABLE hosts (id TEXT PRIMARY KEY, region TEXT NOT NULL, address TEXT NOT NULL, cpus INTEGER NOT NULL,
                         memory_mb INTEGER NOT NULL, last_heartbeat TEXT NOT NULL);
     CREATE TABLE machines (
        id TEXT PRIMARY KEY, app TEXT NOT NULL, name TEXT NOT NULL, region TEXT NOT NULL, host_id TEXT NOT NULL,
        state TEXT NOT NULL, desired_state TEXT NOT NULL, instance_id TEXT NOT NULL, version TEXT NOT NULL,
        private_ip TEXT NOT NULL, config TEXT NOT NULL, image_ref TEXT NOT NULL, cpus INTEGER NOT NULL,
        memory_mb INTEGER NOT NULL, checks TEXT NOT NULL DEFAULT '[]', restart_seq INTEGER NOT NULL DEFAULT 0,
        signal_seq INTEGER NOT NULL DEFAULT 0, signal TEXT, stop_signal TEXT, stop_timeout INTEGER,
        cordoned INTEGER NOT NULL DEFAULT 0, lease_nonce TEXT, lease_expires_at INTEGER, lease_owner TEXT,
        lease_description TEXT, lease_version TEXT, revision INTEGER NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
     CREATE INDEX machines_by_app ON machines (app, state);
     CREATE INDEX machines_by_host ON machines (host_id, revision);
     CREATE TABLE machine_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, machine_id TEXT NOT NULL,
        kind TEXT NOT NULL, status TEXT NOT NULL, source TEXT NOT NULL, timestamp INTEGER NOT NULL, request TEXT);
     CREATE INDEX machine_events_by_machine ON machine_events (machine_id, seq);
     CREATE TABLE machine_versions (machine_id TEXT NOT NULL, version TEXT NOT NULL, config TEXT NOT NULL,
        created_at TEXT NOT NULL, PRIMARY KEY (machine_id, version));",
    // 2: releases and encrypted secrets.
    "CREATE TABLE releases (app TEXT NOT NULL, version INTEGER NOT NULL, image TEXT NOT NULL, configs TEXT NOT NULL,
        strategy TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, description TEXT NOT NULL, user TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (app, version));
     CREATE TABLE secrets (app TEXT NOT NULL, name TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL,
        digest TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (app, name));",
    // 3: the secret each host's agent API (exec, logs) accepts.
    "CREATE TABLE host_secrets (host_id TEXT PRIMARY KEY, secret TEXT NOT NULL);",
    // 4: an app's releases and secrets go with it (a new app of the same name starts empty).
    "CREATE TRIGGER apps_delete_releases_secrets AFTER DELETE ON apps BEGIN
        DELETE FROM releases WHERE app = OLD.name;
        DELETE FROM secrets WHERE app = OLD.name;
     END;",
    // 5: regions: each host's stable index and mesh identity; per-app autoscaling policies.
    "ALTER TABLE hosts ADD COLUMN host_index INTEGER;
     ALTER TABLE hosts ADD COLUMN mesh_public_key TEXT;
     ALTER TABLE hosts ADD COLUMN mesh_endpoint TEXT;
     UPDATE hosts SET host_index = (SELECT count(*) FROM hosts h WHERE h.id <= hosts.id);
     CREATE UNIQUE INDEX hosts_by_index ON hosts (host_index);
     INSERT INTO meta (key, value) VALUES ('host_index_high', (SELECT coalesce(max(host_index), 0) FROM hosts));
     CREATE TABLE autoscale (app TEXT PRIMARY KEY, policy TEXT NOT NULL, updated_at TEXT NOT NULL);
     CREATE TRIGGER apps_delete_autoscale AFTER DELETE ON apps BEGIN
        DELETE FROM autoscale WHERE app = OLD.name;
     END;",
    // 6: the public addresses of each host's edge (GeoDNS answers), comma-separated.
    "ALTER TABLE hosts ADD COLUMN edge_addresses TEXT NOT NULL DEFAULT '';",
    // 7: a certificate's hostname belongs to an app (edges route it there) and goes with it.
    // The tables were created on first use before, so they may not exist yet.
    "CREATE TABLE IF NOT EXISTS edge_certificates (hostname TEXT PRIMARY KEY, certificate TEXT NOT NULL,
        private_key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL);
     ALTER TABLE edge_certificates ADD COLUMN app TEXT;
     CREATE TABLE IF NOT EXISTS acme_certificates (hostname TEXT PRIMARY KEY, status TEXT NOT NULL,
        challenge TEXT, error TEXT, certificate TEXT, key_nonce BLOB, key_sealed BLOB,
        fingerprint TEXT NOT NULL DEFAULT '', not_after INTEGER, created_at TEXT NOT NULL,
        updated_at INTEGER NOT NULL);
     ALTER TABLE acme_certificates ADD COLUMN app TEXT;
     CREATE TRIGGER apps_delete_certificates AFTER DELETE ON apps BEGIN
        DELETE FROM edge_certificates WHERE app = OLD.name;
        DELETE FROM acme_certificates WHERE app = OLD.name;
     END;",
    // 8: dedicated public addresses of apps (`ips.rs`); an app's are freed when it is deleted
    // (by the trigger, inside the app's delete transaction).
    "CREATE TABLE IF NOT EXISTS app_ips (address TEXT PRIMARY KEY, app TEXT NOT NULL,
        kind TEXT NOT NULL, created_at TEXT NOT NULL);
     CREATE INDEX IF NOT EXISTS app_ips_by_app ON app_ips (app);
     CREATE TRIGGER IF NOT EXISTS apps_delete_ips AFTER DELETE ON apps BEGIN
        DELETE FROM app_ips WHERE app = OLD.name;
     END;",
];

/// The largest host index (the 6PN host field is 16 bits wide in practice).
pub const MAX_HOST_INDEX: u32 = 65_535;

/// The organisation created on first start.
pub const DEFAULT_ORG: &str = "personal";

/// The store and the in-memory views kept in step with it.
pub struct Inner {
    pub conn: Connection,
    pub hosts: Vec<HostCapacity>,
    pub host_index: HashMap<String, usize>,
    pub revision: u64,
    /// Per app, how many non-destroyed machines each host runs (for spreading).
    pub app_hosts: HashMap<String, HashMap<String, u32>>,
    /// Per host, the apps counted in `app_hosts` (so a refresh can undo them).
    host_apps: HashMap<String, Vec<String>>,
    /// Per host, the revision of its latest machine change (watchers skip quiet hosts).
    pub host_revision: HashMap<String, u64>,
    /// Per host, the public addresses of its edge (for GeoDNS).
    pub edge_addresses: HashMap<String, Vec<std::net::IpAddr>>,
}

/// Current time as RFC 3339 (seconds precision, `Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Opens (creating if needed) `dir/aloft.db`, applies pending migrations in one transaction.
pub fn open(dir: &Path) -> Result<Connection, StoreError> {
    let path = dir.join("aloft.db");
    let open_err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let mut conn = Connection::open(&path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    let current: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(open_err)?
        .try_into()
        .unwrap_or(0);
    if current < MIGRATIONS.len() {
        let tx = conn.transaction().map_err(open_err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let version = i + 1;
            tx.execute_batch(sql)
                .and_then(|()| tx.pragma_update(None, "user_version", version as i64))
                .map_err(|source| StoreError::Migrate { version, source })?;
        }
        tx.commit().map_err(|source| StoreError::Migrate {
            version: MIGRATIONS.len(),
            source,
        })?;
    }
    Ok(conn)
}

/// Bumps the global revision inside a transaction and returns the new value.
pub fn bump_revision(tx: &Transaction<'_>) -> Result<u64, rusqlite::Error> {
    tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
}

impl Inner {
    /// Loads revision and hosts (with their usage); hosts count as seen now.
    pub fn load(conn: Connection) -> Result<Inner, StoreError> {
        let revision: i64 =
            conn.query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get(0)
            })?;
        let mut inner = Inner {
            conn,
            hosts: Vec::new(),
            host_index: HashMap::new(),
            revision: revision as u64,
            app_hosts: HashMap::new(),
            host_apps: HashMap::new(),
            host_revision: HashMap::new(),
            edge_addresses: HashMap::new(),
        };
        let now = Instant::now();
        let rows: Vec<(String, String, i64, i64)> = {
            let mut stmt = inner
                .conn
                .prepare("SELECT id, region, cpus, memory_mb FROM hosts ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, region, cpus, memory_mb) in rows {
            inner.host_index.insert(id.clone(), inner.hosts.len());
            inner.hosts.push(HostCapacity {
                id,
                region,
                cpus,
                memory_mb,
                used_cpus: 0,
                used_memory_mb: 0,
                last_seen: now,
            });
        }
        let ids: Vec<String> = inner.hosts.iter().map(|h| h.id.clone()).collect();
        for id in ids {
            inner.refresh_host_usage(&id)?;
        }
        let edges: Vec<(String, String)> = {
            let mut stmt = inner
                .conn
                .prepare("SELECT id, edge_addresses FROM hosts WHERE edge_addresses != ''")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, list) in edges {
            inner
                .edge_addresses
                .insert(id, list.split(',').filter_map(|a| a.parse().ok()).collect());
        }
        Ok(inner)
    }

    /// Creates the default org and an admin token if there is none; returns the new token.
    pub fn bootstrap(&mut self) -> Result<Option<String>, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO orgs (slug, name) VALUES (?1, ?1)",
            params![DEFAULT_ORG],
        )?;
        let admins: i64 = tx.query_row(
            "SELECT count(*) FROM tokens WHERE kind = 'admin'",
            [],
            |r| r.get(0),
        )?;
        let token = if admins == 0 {
            let token = crate::ids::token();
            tx.execute(
                "INSERT INTO tokens (hash, kind, app, created_at) VALUES (?1, 'admin', NULL, ?2)",
                params![hash_token(&token).to_vec(), now_rfc3339()],
            )?;
            Some(token)
        } else {
            None
        };
        tx.commit()?;
        Ok(token)
    }

    /// All stored token hashes.
    pub fn load_tokens(&self) -> Result<TokenSet, StoreError> {
        let mut set = TokenSet::default();
        let mut stmt = self.conn.prepare("SELECT hash, kind, app FROM tokens")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let hash: Vec<u8> = row.get(0)?;
            let kind: String = row.get(1)?;
            let app: Option<String> = row.get(2)?;
            if let (Ok(hash), Some(scope)) = (
                <[u8; 32]>::try_from(hash),
                TokenScope::from_parts(&kind, app),
            ) {
                set.insert(hash, scope);
            }
        }
        Ok(set)
    }

    /// Stores a new token's hash.
    pub fn insert_token(&mut self, hash: [u8; 32], scope: &TokenScope) -> Result<(), ApiError> {
        let app = match scope {
            TokenScope::App(app) => Some(app.clone()),
            _ => None,
        };
        self.conn.execute(
            "INSERT INTO tokens (hash, kind, app, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash.to_vec(), scope.kind(), app, now_rfc3339()],
        )?;
        Ok(())
    }

    // Apps.

    pub fn org_exists(&self, slug: &str) -> Result<bool, ApiError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM orgs WHERE slug = ?1", [slug], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn insert_app(&mut self, name: &str, org: &str, network: &str) -> Result<App, ApiError> {
        let tx = self.conn.transaction()?;
        let exists = tx
            .query_row("SELECT 1 FROM apps WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            return Err(ApiError::Conflict(format!("App {name:?} already exists")));
        }
        tx.execute(
            "INSERT INTO apps (name, id, org_slug, network, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, crate::ids::short_id(), org, network, now_rfc3339()],
        )?;
        let revision = bump_revision(&tx)?;
        tx.commit()?;
        self.revision = revision;
        self.get_app(name)
    }

    /// The app, or 404.
    pub fn get_app(&self, name: &str) -> Result<App, ApiError> {
        let row = self
            .conn
            .query_row(
                "SELECT a.id, a.org_slug, o.name,
                        EXISTS (SELECT 1 FROM machines m WHERE m.app = a.name AND m.state = 'started')
                 FROM apps a JOIN orgs o ON o.slug = a.org_slug WHERE a.name = ?1",
                [name],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, bool>(3)?)),
            )
            .optional()?;
        let (id, slug, org_name, deployed) =
            row.ok_or_else(|| ApiError::NotFound(format!("App {name:?} not found")))?;
        Ok(App {
            id,
            name: name.to_owned(),
            organization: Organization {
                name: org_name,
                slug,
            },
            status: if deployed { "deployed" } else { "pending" }.to_owned(),
        })
    }

    pub fn list_apps(
        &self,
        org: Option<&str>,
        only: Option<&str>,
    ) -> Result<Vec<AppSummary>, ApiError> {
        let mut stmt = self.conn.prepare(
            "SELECT a.id, a.name, a.network,
                    (SELECT count(*) FROM machines m WHERE m.app = a.name AND m.state != 'destroyed')
             FROM apps a WHERE (?1 IS NULL OR a.org_slug = ?1) AND (?2 IS NULL OR a.name = ?2) ORDER BY a.name",
        )?;
        let rows = stmt.query_map(params![org, only], |r| {
            Ok(AppSummary {
                id: r.get(0)?,
                name: r.get(1)?,
                network: r.get(2)?,
                machine_count: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_app(&mut self, name: &str) -> Result<(), ApiError> {
        self.get_app(name)?;
        let tx = self.conn.transaction()?;
        let live: i64 = tx.query_row(
            "SELECT count(*) FROM machines WHERE app = ?1 AND state != 'destroyed'",
            [name],
            |r| r.get(0),
        )?;
        if live > 0 {
            return Err(ApiError::Precondition(format!(
                "App {name:?} still has {live} machines; destroy them first"
            )));
        }
        tx.execute(
            "DELETE FROM machine_events WHERE machine_id IN (SELECT id FROM machines WHERE app = ?1)",
            [name],
        )?;
        tx.execute(
            "DELETE FROM machine_versions WHERE machine_id IN (SELECT id FROM machines WHERE app = ?1)",
            [name],
        )?;
        tx.execute("DELETE FROM machines WHERE app = ?1", [name])?;
        tx.execute("DELETE FROM tokens WHERE kind = 'app' AND app = ?1", [name])?;
        tx.execute("DELETE FROM apps WHERE name = ?1", [name])?;
        let revision = bump_revision(&tx)?;
        tx.commit()?;
        self.revision = revision;
        Ok(())
    }

    // Hosts.

    /// Registers (or re-registers) a host; it counts as seen now. A new host gets its host
    /// index here: the agent's hint when no other host holds it, else one never handed out.
    pub fn register_host(&mut self, req: &RegisterHostRequest) -> Result<(), ApiError> {
        let edges = req
            .edge_addresses
            .iter()
            .map(|a| {
                a.parse::<std::net::IpAddr>().map_err(|_| {
                    ApiError::BadRequest(format!("Edge address {a:?} is not an IP address"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
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

    /// Records a heartbeat in memory (and the time in the database), or 404.
    pub fn heartbeat(&mut self, id: &str) -> Result<(), ApiError> {
        let i = *self
            .host_index
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("Host {id:?} is not registered")))?;
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

    /// A host as the API shows it, or 404.
    pub fn host(&self, id: &str, live_since: Instant) -> Result<Host, ApiError> {
        type HostColumns = (String, String, i64, Option<String>, Option<String>);
        let (address, last_heartbeat, host_index, key, endpoint): HostColumns = self
            .conn
            .query_row(
                "SELECT address, last_heartbeat, coalesce(host_index, 0), mesh_public_key, mesh_endpoint
                 FROM hosts WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?
            .ok_or_else(|| ApiError::NotFound(format!("Host {id:?} is not registered")))?;
        let mesh = match (key, endpoint) {
            (Some(public_key), Some(endpoint)) => Some(MeshInfo {
                public_key,
                endpoint,
            }),
            _ => None,
        };
        let cap = self
            .host_index
            .get(id)
            .map(|&i| &self.hosts[i])
            .ok_or_else(|| ApiError::NotFound(format!("Host {id:?} is not registered")))?;
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
        })
    }

    /// Every registered host that has mesh info, by host index.
    pub fn mesh_peers(&self, live_since: Instant) -> Result<Vec<MeshPeer>, ApiError> {
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

/// A host index for a host registering for the first time: `hint` when it is valid and no
/// other host holds it, else one above every index ever handed out.
fn assign_host_index(tx: &Transaction<'_>, id: &str, hint: Option<u32>) -> Result<i64, ApiError> {
    if let Some(hint) = hint {
        if !(1..=MAX_HOST_INDEX).contains(&hint) {
            return Err(ApiError::BadRequest(format!(
                "Host index {hint} must be between 1 and {MAX_HOST_INDEX}"
            )));
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
        return Err(ApiError::Unavailable(format!(
            "Every host index up to {MAX_HOST_INDEX} has been handed out; no new host can join"
        )));
    }
    Ok(next)
}
