//! Machine rows: loading, saving (one upsert), events, versions and the watch query.

use aloft_api::{
    AssignedMachine, CheckStatus, DesiredState, ImageRef, Lease, Machine, MachineConfig,
    MachineEvent, MachineState, MachineVersion, SignalOrder,
};
use rusqlite::{params, OptionalExtension, Row};
use serde_json::Value;

use super::{now_rfc3339, Db};
use crate::core::error::StoreError;

/// A machine as stored, with the config parsed.
#[derive(Debug, Clone)]
pub struct MachineRow {
    pub id: String,
    pub app: String,
    pub name: String,
    pub region: String,
    pub host_id: String,
    pub state: MachineState,
    pub desired: DesiredState,
    pub instance_id: String,
    pub version: String,
    pub private_ip: String,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    pub cpus: i64,
    pub memory_mb: i64,
    pub checks: Vec<CheckStatus>,
    pub restart_seq: u64,
    pub signal: Option<SignalOrder>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u64>,
    pub cordoned: bool,
    pub lease: Option<Lease>,
    pub revision: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// Events and versions to write together with a row.
#[derive(Debug, Default)]
pub struct NewMachine {
    pub events: Vec<PendingEvent>,
    pub new_version: bool,
}

/// An event to append on save.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub kind: String,
    pub status: String,
    pub source: &'static str,
    pub request: Option<Value>,
}

const COLUMNS: &str = "id, app, name, region, host_id, state, desired_state, instance_id, version, private_ip,
    config, image_ref, cpus, memory_mb, checks, restart_seq, signal_seq, signal, stop_signal, stop_timeout,
    cordoned, lease_nonce, lease_expires_at, lease_owner, lease_description, lease_version, revision,
    created_at, updated_at";

fn json_col<T: serde::de::DeserializeOwned>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn enum_col<T: serde::de::DeserializeOwned>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    serde_json::from_value(Value::String(text)).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<MachineRow> {
    let signal_seq: i64 = row.get(16)?;
    let signal: Option<String> = row.get(17)?;
    let lease_nonce: Option<String> = row.get(21)?;
    let lease = match lease_nonce {
        Some(nonce) => Some(Lease {
            nonce,
            expires_at: row.get(22)?,
            owner: row.get::<_, Option<String>>(23)?.unwrap_or_default(),
            description: row.get::<_, Option<String>>(24)?.unwrap_or_default(),
            version: row.get::<_, Option<String>>(25)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(MachineRow {
        id: row.get(0)?,
        app: row.get(1)?,
        name: row.get(2)?,
        region: row.get(3)?,
        host_id: row.get(4)?,
        state: enum_col(row, 5)?,
        desired: enum_col(row, 6)?,
        instance_id: row.get(7)?,
        version: row.get(8)?,
        private_ip: row.get(9)?,
        config: json_col(row, 10)?,
        image_ref: json_col(row, 11)?,
        cpus: row.get(12)?,
        memory_mb: row.get(13)?,
        checks: json_col(row, 14)?,
        restart_seq: row.get::<_, i64>(15)? as u64,
        signal: signal.map(|signal| SignalOrder {
            seq: signal_seq as u64,
            signal,
        }),
        stop_signal: row.get(18)?,
        stop_timeout: row.get::<_, Option<i64>>(19)?.map(|v| v as u64),
        cordoned: row.get(20)?,
        lease,
        revision: row.get::<_, i64>(26)? as u64,
        created_at: row.get(27)?,
        updated_at: row.get(28)?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::encoding("machine JSON", e))
}

impl MachineRow {
    /// The lease, if held at `now` (Unix seconds); it lasts through its `expires_at` second,
    /// so a lease never lasts less than its TTL.
    pub fn active_lease(&self, now: i64) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.expires_at >= now)
    }

    /// The API view.
    pub fn to_machine(
        &self,
        events: Vec<MachineEvent>,
        host_status: aloft_api::HostStatus,
    ) -> Machine {
        Machine {
            id: self.id.clone(),
            name: self.name.clone(),
            state: self.state,
            region: self.region.clone(),
            instance_id: self.instance_id.clone(),
            version: self.version.clone(),
            private_ip: self.private_ip.clone(),
            config: self.config.clone(),
            image_ref: self.image_ref.clone(),
            events,
            checks: self.checks.clone(),
            host_status,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            nonce: None,
        }
    }

    /// The agent's view.
    pub fn to_assigned(&self, org: &str) -> AssignedMachine {
        AssignedMachine {
            id: self.id.clone(),
            name: self.name.clone(),
            app: self.app.clone(),
            org: org.to_owned(),
            region: self.region.clone(),
            version: self.version.clone(),
            instance_id: self.instance_id.clone(),
            private_ip: self.private_ip.clone(),
            config: self.config.clone(),
            image_ref: self.image_ref.clone(),
            desired_state: self.desired,
            state: self.state,
            restart_seq: self.restart_seq,
            signal: self.signal.clone(),
            stop_signal: self.stop_signal.clone(),
            stop_timeout_secs: self.stop_timeout,
            cordoned: self.cordoned,
            secrets: Default::default(),
        }
    }
}

impl Db<'_> {
    /// One machine of an app.
    pub fn machine(&self, app: &str, id: &str) -> Result<MachineRow, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM machines WHERE app = ?1 AND id = ?2"),
                [app, id],
                from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::MachineNotFound {
                app: app.to_owned(),
                id: id.to_owned(),
            })
    }

    /// Loads a machine by id alone, if it exists.
    pub fn machine_by_id(&self, id: &str) -> Result<Option<MachineRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM machines WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?)
    }

    /// All machines of an app, oldest first.
    pub fn machines(
        &self,
        app: &str,
        include_destroyed: bool,
    ) -> Result<Vec<MachineRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM machines WHERE app = ?1 AND (?2 OR state != 'destroyed') ORDER BY rowid"
        ))?;
        let rows = stmt.query_map(params![app, include_destroyed], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Machines of a host changed after `since`, in revision order.
    pub fn machines_changed_on_host(
        &self,
        host: &str,
        since: u64,
    ) -> Result<Vec<MachineRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM machines WHERE host_id = ?1 AND revision > ?2 ORDER BY revision"
        ))?;
        let rows = stmt.query_map(params![host, since as i64], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes the whole row plus pending events and a version entry, at `revision`.
    pub fn save_machine(
        &self,
        row: &mut MachineRow,
        extra: NewMachine,
        revision: u64,
    ) -> Result<(), StoreError> {
        row.revision = revision;
        row.updated_at = now_rfc3339();
        let conn = self.conn;
        let row = &*row;
        let lease = row.lease.as_ref();
        conn.execute(
            &format!(
                "INSERT INTO machines ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                 ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)
                 ON CONFLICT (id) DO UPDATE SET name = ?3, region = ?4, host_id = ?5, state = ?6, desired_state = ?7,
                 instance_id = ?8, version = ?9, private_ip = ?10, config = ?11, image_ref = ?12, cpus = ?13,
                 memory_mb = ?14, checks = ?15, restart_seq = ?16, signal_seq = ?17, signal = ?18, stop_signal = ?19,
                 stop_timeout = ?20, cordoned = ?21, lease_nonce = ?22, lease_expires_at = ?23, lease_owner = ?24,
                 lease_description = ?25, lease_version = ?26, revision = ?27, updated_at = ?29"
            ),
            params![
                row.id,
                row.app,
                row.name,
                row.region,
                row.host_id,
                row.state.as_str(),
                desired_str(row.desired),
                row.instance_id,
                row.version,
                row.private_ip,
                to_json(&row.config)?,
                to_json(&row.image_ref)?,
                row.cpus,
                row.memory_mb,
                to_json(&row.checks)?,
                row.restart_seq as i64,
                row.signal.as_ref().map_or(0, |s| s.seq as i64),
                row.signal.as_ref().map(|s| s.signal.clone()),
                row.stop_signal,
                row.stop_timeout.map(|v| v as i64),
                row.cordoned,
                lease.map(|l| l.nonce.clone()),
                lease.map(|l| l.expires_at),
                lease.map(|l| l.owner.clone()),
                lease.map(|l| l.description.clone()),
                lease.map(|l| l.version.clone()),
                revision as i64,
                row.created_at,
                row.updated_at,
            ],
        )?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        for event in extra.events {
            conn.execute(
                "INSERT INTO machine_events (id, machine_id, kind, status, source, timestamp, request)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    crate::core::ids::ulid(),
                    row.id,
                    event.kind,
                    event.status,
                    event.source,
                    now_ms,
                    event.request.map(|r| r.to_string()),
                ],
            )?;
        }
        if extra.new_version {
            conn.execute(
                "INSERT OR REPLACE INTO machine_versions (machine_id, version, config, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.version, to_json(&row.config)?, row.updated_at],
            )?;
        }
        Ok(())
    }

    /// The newest `limit` events, newest first.
    pub fn machine_events(&self, id: &str, limit: i64) -> Result<Vec<MachineEvent>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, kind, status, source, timestamp, request FROM machine_events
             WHERE machine_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![id, limit], |r| {
            let request: Option<String> = r.get(5)?;
            Ok(MachineEvent {
                id: r.get(0)?,
                kind: r.get(1)?,
                status: r.get(2)?,
                source: r.get(3)?,
                timestamp: r.get(4)?,
                request: request.and_then(|t| serde_json::from_str(&t).ok()),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every config version, newest first.
    pub fn machine_versions(&self, id: &str) -> Result<Vec<MachineVersion>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT version, config, created_at FROM machine_versions WHERE machine_id = ?1
             ORDER BY rowid DESC",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(MachineVersion {
                version: r.get(0)?,
                user_config: json_col(r, 1)?,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The region of the app's oldest machine that is not destroyed.
    pub fn first_machine_region(&self, app: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT region FROM machines WHERE app = ?1 AND state != 'destroyed' ORDER BY rowid LIMIT 1",
                [app],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The app's machines whose launch event came from `source`.
    pub fn machines_launched_by(
        &self,
        app: &str,
        source: &str,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT e.machine_id FROM machine_events e JOIN machines m ON m.id = e.machine_id
             WHERE m.app = ?1 AND e.kind = 'launch' AND e.source = ?2",
        )?;
        let ids = stmt.query_map([app, source], |r| r.get::<_, String>(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    /// How many machines (not destroyed) of every app, or of `only`, are in each (region,
    /// state).
    pub fn machine_counts(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT region, state, count(*) FROM machines
             WHERE state != 'destroyed' AND (?1 IS NULL OR app = ?1) GROUP BY region, state",
        )?;
        let rows = stmt.query_map(params![only], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn desired_str(d: DesiredState) -> &'static str {
    match d {
        DesiredState::Started => "started",
        DesiredState::Stopped => "stopped",
        DesiredState::Suspended => "suspended",
        DesiredState::Destroyed => "destroyed",
    }
}
