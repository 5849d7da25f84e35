//! Machine operations on `Control`: each loads the machine, checks its lease, goes through
//! the transition function, and saves row + events in one transaction.

mod agent;
pub mod exec;
mod leases;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use aloft_api::{
    CreateMachineRequest, DesiredState, Lease, Machine, MachineState, StartResponse, StopRequest,
};

use crate::api::ApiError;
use crate::control::Control;
use crate::image::parse_image_ref;
use crate::placement::{place, PlacementRequest};
use crate::state::{is_active, transition};
use crate::store::{bump_revision, now_rfc3339, Inner, MachineRow, NewMachine, PendingEvent};

pub use validate::validate_config;
use validate::validate_signal;

/// Events shown inside a machine object.
const EVENTS_IN_MACHINE: i64 = 10;
/// Default and largest lease TTL, in seconds.
pub(crate) const DEFAULT_LEASE_TTL: u64 = 30;
const MAX_LEASE_TTL: u64 = 86_400;
/// Default and largest `wait` timeout, in seconds.
pub(crate) const DEFAULT_WAIT: u64 = 60;
pub(crate) const MAX_WAIT: u64 = 300;

/// Who is changing a machine: users must hold its lease (if any), agents need not.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Caller<'a> {
    User(Option<&'a str>),
    Agent,
}

pub(crate) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn event(kind: &str, status: &str, source: &'static str) -> PendingEvent {
    PendingEvent {
        kind: kind.to_owned(),
        status: status.to_owned(),
        source,
        request: None,
    }
}

/// Moves a machine to `to` through the transition function, recording an event.
pub(crate) fn go(
    row: &mut MachineRow,
    extra: &mut NewMachine,
    to: MachineState,
    kind: &str,
    source: &'static str,
) -> Result<(), ApiError> {
    row.state = transition(row.state, to)
        .map_err(|e| ApiError::Precondition(format!("Machine {}: {e}", row.id)))?;
    extra.events.push(event(kind, to.as_str(), source));
    Ok(())
}

pub(crate) fn check_lease(row: &MachineRow, nonce: Option<&str>) -> Result<(), ApiError> {
    match row.active_lease(now_unix()) {
        Some(lease) if nonce != Some(lease.nonce.as_str()) => Err(ApiError::Conflict(format!(
            "Machine {} is leased by {} until {}; send its nonce in the fly-machine-lease-nonce header",
            row.id,
            lease.owner,
            chrono::DateTime::from_timestamp(lease.expires_at, 0).map_or_else(|| lease.expires_at.to_string(), |t| t.to_rfc3339()),
        ))),
        _ => Ok(()),
    }
}

impl Control {
    fn render(&self, inner: &Inner, row: &MachineRow) -> Result<Machine, ApiError> {
        let events = MachineRow::events(&inner.conn, &row.id, EVENTS_IN_MACHINE)?;
        Ok(row.to_machine(events, inner.host_status(&row.host_id, self.live_since())))
    }

    /// Loads, lease-checks, changes and saves one machine in one transaction.
    pub(crate) fn mutate<T>(
        &self,
        app: &str,
        id: &str,
        caller: Caller<'_>,
        change: impl FnOnce(&mut MachineRow, &mut NewMachine, &Inner) -> Result<T, ApiError>,
    ) -> Result<(T, Machine), ApiError> {
        let _span = tracing::debug_span!("machine", app, machine = id).entered();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut row = MachineRow::load(&inner.conn, app, id)?;
        if let Caller::User(nonce) = caller {
            check_lease(&row, nonce)?;
        }
        let mut extra = NewMachine::default();
        let out = change(&mut row, &mut extra, inner)?;
        let tx = inner.conn.transaction()?;
        let revision = bump_revision(&tx)?;
        row.save(&tx, extra, revision)?;
        tx.commit()?;
        inner.revision = revision;
        inner.refresh_host_usage(&row.host_id)?;
        let machine = self.render(inner, &row)?;
        drop(guard);
        self.notify(revision);
        Ok((out, machine))
    }

    /// Places and creates a machine; starts it unless `skip_launch`. Without a region, the
    /// app's oldest live machine's region is used, else the alphabetically first region
    /// with a live host.
    pub fn create_machine(
        &self,
        app: &str,
        req: CreateMachineRequest,
        owner: &str,
    ) -> Result<Machine, ApiError> {
        self.create_machine_by(app, req, owner, "user")
    }

    /// [`Control::create_machine`], recording `source` on its events (`user`, `autoscale`).
    pub(crate) fn create_machine_by(
        &self,
        app: &str,
        req: CreateMachineRequest,
        owner: &str,
        source: &'static str,
    ) -> Result<Machine, ApiError> {
        let (cpus, memory_mb) = validate_config(&req.config)?;
        let image_ref = parse_image_ref(&req.config.image)?;
        let lease_ttl = req.lease_ttl.map(checked_ttl).transpose()?;
        let _span = tracing::debug_span!("create_machine", app).entered();
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.get_app(app)?;
        let live_since = self.live_since();
        let region = match req.region.as_deref().filter(|r| !r.is_empty()) {
            Some(region) => region.to_owned(),
            None => default_region(inner, app, live_since)?,
        };
        let no_machines = HashMap::new();
        let counts = inner.app_hosts.get(app).unwrap_or(&no_machines);
        let host = place(
            &inner.hosts,
            &PlacementRequest {
                region: &region,
                cpus,
                memory_mb,
                live_since,
                app_machines: counts,
            },
        )?
        .id
        .clone();
        let id = crate::ids::machine_id();
        let now = now_rfc3339();
        let version = crate::ids::ulid();
        let mut row = MachineRow {
            name: req
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("{app}-{}", &id[..6])),
            private_ip: crate::ids::private_ip(&host, &id),
            id,
            app: app.to_owned(),
            region,
            host_id: host,
            state: MachineState::Created,
            desired: DesiredState::Stopped,
            instance_id: version.clone(),
            version,
            config: req.config,
            image_ref,
            cpus,
            memory_mb,
            checks: Vec::new(),
            restart_seq: 0,
            signal: None,
            stop_signal: None,
            stop_timeout: None,
            cordoned: false,
            lease: None,
            revision: 0,
            created_at: now.clone(),
            updated_at: now,
        };
        if row.name.len() > 63 {
            return Err(ApiError::BadRequest(format!(
                "Machine name {:?} is longer than 63 characters",
                row.name
            )));
        }
        let mut extra = NewMachine {
            events: vec![event("launch", "created", source)],
            new_version: true,
        };
        if !req.skip_launch {
            row.desired = DesiredState::Started;
            go(
                &mut row,
                &mut extra,
                MachineState::Starting,
                "start",
                source,
            )?;
        }
        if let Some(ttl) = lease_ttl {
            row.lease = Some(new_lease(&row, ttl, owner, ""));
        }
        let tx = inner.conn.transaction()?;
        let revision = bump_revision(&tx)?;
        row.save(&tx, extra, revision)?;
        tx.commit()?;
        inner.revision = revision;
        inner.refresh_host_usage(&row.host_id)?;
        let mut machine = self.render(inner, &row)?;
        machine.nonce = row.lease.as_ref().map(|l| l.nonce.clone());
        drop(guard);
        self.notify(revision);
        tracing::info!(app, machine = %machine.id, region = %machine.region, "machine created");
        Ok(machine)
    }

    pub fn get_machine(&self, app: &str, id: &str) -> Result<Machine, ApiError> {
        let inner = self.lock();
        inner.get_app(app)?;
        let row = MachineRow::load(&inner.conn, app, id)?;
        self.render(&inner, &row)
    }

    /// Machines of an app matching the filters.
    pub fn list_machines(
        &self,
        app: &str,
        region: Option<&str>,
        states: Option<&str>,
        include_deleted: bool,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<Machine>, ApiError> {
        let states: Option<Vec<MachineState>> = states
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.split(',')
                    .map(|name| {
                        MachineState::parse(name.trim()).ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "Unknown machine state {name:?} in state filter"
                            ))
                        })
                    })
                    .collect()
            })
            .transpose()?;
        let include_destroyed = include_deleted
            || states
                .as_ref()
                .is_some_and(|s| s.contains(&MachineState::Destroyed));
        let inner = self.lock();
        inner.get_app(app)?;
        let rows = MachineRow::list(&inner.conn, app, include_destroyed)?;
        rows.iter()
            .filter(|r| region.is_none_or(|want| r.region == want))
            .filter(|r| states.as_ref().is_none_or(|s| s.contains(&r.state)))
            .filter(|r| {
                metadata
                    .iter()
                    .all(|(k, v)| r.config.metadata.as_ref().and_then(|m| m.get(k)) == Some(v))
            })
            .map(|r| self.render(&inner, r))
            .collect()
    }

    /// A new config: a new version and instance; a running machine is replaced.
    pub fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: CreateMachineRequest,
        nonce: Option<&str>,
    ) -> Result<Machine, ApiError> {
        let (cpus, memory_mb) = validate_config(&req.config)?;
        let image_ref = parse_image_ref(&req.config.image)?;
        let (_, machine) = self.mutate(app, id, Caller::User(nonce), |row, extra, inner| {
            if row.state == MachineState::Destroyed || row.state == MachineState::Destroying {
                return Err(ApiError::Precondition(format!("Machine {id} is {} and cannot be updated", row.state)));
            }
            if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty() && *r != row.region) {
                return Err(ApiError::BadRequest(format!(
                    "Machine {id} is in region {:?} and cannot move to {region:?}; create a new machine there",
                    row.region
                )));
            }
            if let Some(&i) = inner.host_index.get(&row.host_id) {
                let host = &inner.hosts[i];
                if host.free_cpus() + row.cpus < cpus || host.free_memory_mb() + row.memory_mb < memory_mb {
                    return Err(ApiError::Precondition(format!(
                        "Host of machine {id} in region {:?} has no room for {cpus} CPUs and {memory_mb} MB",
                        row.region
                    )));
                }
            }
            if let Some(name) = req.name.as_deref().filter(|n| !n.is_empty()) {
                name.clone_into(&mut row.name);
            }
            row.config = req.config;
            row.image_ref = image_ref;
            row.cpus = cpus;
            row.memory_mb = memory_mb;
            row.version = crate::ids::ulid();
            row.instance_id = row.version.clone();
            // Check results describe the old instance; the new one reports its own.
            row.checks.clear();
            extra.new_version = true;
            extra.events.push(event("update", "replacing", "user"));
            if matches!(row.state, MachineState::Started | MachineState::Starting) {
                row.desired = DesiredState::Started;
                go(row, extra, MachineState::Replacing, "update", "user")?;
            } else if !req.skip_launch {
                row.desired = DesiredState::Started;
                go(row, extra, MachineState::Starting, "start", "user")?;
            }
            Ok(())
        })?;
        Ok(machine)
    }

    pub fn start_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<StartResponse, ApiError> {
        let (previous_state, _) = self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            let previous = row.state;
            row.desired = DesiredState::Started;
            if !matches!(row.state, MachineState::Started | MachineState::Starting) {
                go(row, extra, MachineState::Starting, "start", "user")?;
                // A failed machine already wants to be started: the new sequence number is
                // what tells its agent to try again.
                row.restart_seq += 1;
            }
            Ok(previous)
        })?;
        Ok(StartResponse {
            previous_state,
            migrated: false,
            new_host: String::new(),
        })
    }

    pub fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: StopRequest,
        nonce: Option<&str>,
    ) -> Result<(), ApiError> {
        if let Some(signal) = &req.signal {
            validate_signal(signal)?;
        }
        let timeout = match &req.timeout {
            Some(value) => Some(
                aloft_api::parse_fly_duration(value)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "Stop timeout {value} is not a duration such as \"10s\""
                        ))
                    })?
                    .as_secs(),
            ),
            None => None,
        };
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            row.desired = DesiredState::Stopped;
            row.stop_signal = req.signal;
            row.stop_timeout = timeout;
            if !matches!(row.state, MachineState::Stopped | MachineState::Stopping) {
                go(row, extra, MachineState::Stopping, "stop", "user")?;
            }
            Ok(())
        })?;
        Ok(())
    }

    pub fn suspend_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<(), ApiError> {
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            row.desired = DesiredState::Suspended;
            if !matches!(
                row.state,
                MachineState::Suspended | MachineState::Suspending
            ) {
                go(row, extra, MachineState::Suspending, "suspend", "user")?;
            }
            Ok(())
        })?;
        Ok(())
    }

    pub fn restart_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<(), ApiError> {
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            if row.state != MachineState::Started {
                return Err(ApiError::Precondition(format!(
                    "Machine {id} is {}, not started; start it instead",
                    row.state
                )));
            }
            row.restart_seq += 1;
            row.desired = DesiredState::Started;
            go(row, extra, MachineState::Starting, "restart", "user")
        })?;
        Ok(())
    }

    pub fn signal_machine(
        &self,
        app: &str,
        id: &str,
        signal: &str,
        nonce: Option<&str>,
    ) -> Result<(), ApiError> {
        validate_signal(signal)?;
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            if row.state != MachineState::Started {
                return Err(ApiError::Precondition(format!(
                    "Machine {id} is {}, not started",
                    row.state
                )));
            }
            let seq = row.signal.as_ref().map_or(0, |s| s.seq) + 1;
            row.signal = Some(aloft_api::SignalOrder {
                seq,
                signal: signal.to_owned(),
            });
            extra.events.push(event("signal", signal, "user"));
            Ok(())
        })?;
        Ok(())
    }

    pub fn set_cordon(
        &self,
        app: &str,
        id: &str,
        cordoned: bool,
        nonce: Option<&str>,
    ) -> Result<(), ApiError> {
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            row.cordoned = cordoned;
            extra.events.push(event(
                if cordoned { "cordon" } else { "uncordon" },
                row.state.as_str(),
                "user",
            ));
            Ok(())
        })?;
        Ok(())
    }

    /// Destroys a machine: the agent confirms, unless its host is unreachable and `force`.
    pub fn delete_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> Result<(), ApiError> {
        let live_since = self.live_since();
        self.mutate(app, id, Caller::User(nonce), |row, extra, inner| {
            if row.state == MachineState::Destroyed {
                return Ok(());
            }
            if is_active(row.state) && !force {
                return Err(ApiError::Precondition(format!(
                    "Machine {id} is {}; stop it first or delete with force=true",
                    row.state
                )));
            }
            row.desired = DesiredState::Destroyed;
            row.lease = None;
            if row.state != MachineState::Destroying {
                go(row, extra, MachineState::Destroying, "destroy", "user")?;
            }
            if force && inner.host_status(&row.host_id, live_since) != aloft_api::HostStatus::Ok {
                go(row, extra, MachineState::Destroyed, "destroy", "user")?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

pub(crate) fn checked_ttl(ttl: u64) -> Result<u64, ApiError> {
    if (1..=MAX_LEASE_TTL).contains(&ttl) {
        Ok(ttl)
    } else {
        Err(ApiError::BadRequest(format!(
            "Lease ttl {ttl} must be between 1 and {MAX_LEASE_TTL} seconds"
        )))
    }
}

pub(crate) fn new_lease(row: &MachineRow, ttl: u64, owner: &str, description: &str) -> Lease {
    Lease {
        nonce: crate::ids::short_id()[..12].to_owned(),
        expires_at: now_unix() + ttl as i64,
        owner: owner.to_owned(),
        description: description.to_owned(),
        version: row.version.clone(),
    }
}

/// The region of the app's oldest live machine, else the first region with a live host.
pub(crate) fn default_region(
    inner: &Inner,
    app: &str,
    live_since: Instant,
) -> Result<String, ApiError> {
    let existing: Option<String> = inner
        .conn
        .query_row(
            "SELECT region FROM machines WHERE app = ?1 AND state != 'destroyed' ORDER BY rowid LIMIT 1",
            [app],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })?;
    if let Some(region) = existing {
        return Ok(region);
    }
    inner
        .hosts
        .iter()
        .filter(|h| h.last_seen >= live_since)
        .map(|h| h.region.clone())
        .min()
        .ok_or_else(|| {
            ApiError::Precondition(
                "No region given and no host is live to place the machine on".to_owned(),
            )
        })
}
