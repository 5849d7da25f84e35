//! Machine operations on `Control`: each loads the machine, checks its lease, goes through
//! the transition function, and saves row + events in one transaction.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aloft_api::{
    CheckStatus, CreateMachineRequest, DesiredState, Lease, Machine, MachineConfig, MachineEvent,
    MachineState, MachineVersion, StartResponse, StatusReport, StopRequest,
};
use rusqlite::params;
use serde_json::json;

use crate::api::ApiError;
use crate::control::Control;
use crate::image::parse_image_ref;
use crate::placement::{place, PlacementRequest};
use crate::state::{is_active, transition};
use crate::store::{bump_revision, now_rfc3339, Inner, MachineRow, NewMachine, PendingEvent};

/// Events shown inside a machine object.
const EVENTS_IN_MACHINE: i64 = 10;
/// Default and largest lease TTL, in seconds.
const DEFAULT_LEASE_TTL: u64 = 30;
const MAX_LEASE_TTL: u64 = 86_400;
/// Default and largest `wait` timeout, in seconds.
const DEFAULT_WAIT: u64 = 60;
const MAX_WAIT: u64 = 300;

const SIGNALS: &[&str] = &[
    "SIGABRT", "SIGALRM", "SIGHUP", "SIGINT", "SIGKILL", "SIGQUIT", "SIGTERM", "SIGUSR1",
    "SIGUSR2", "SIGSTOP", "SIGCONT", "SIGTSTP", "SIGWINCH",
];

/// Who is changing a machine: users must hold its lease (if any), agents need not.
#[derive(Debug, Clone, Copy)]
enum Caller<'a> {
    User(Option<&'a str>),
    Agent,
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

fn event(kind: &str, status: &str, source: &'static str) -> PendingEvent {
    PendingEvent {
        kind: kind.to_owned(),
        status: status.to_owned(),
        source,
        request: None,
    }
}

/// Moves a machine to `to` through the transition function, recording an event.
fn go(
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

fn check_lease(row: &MachineRow, nonce: Option<&str>) -> Result<(), ApiError> {
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

fn validate_signal(signal: &str) -> Result<(), ApiError> {
    if SIGNALS.contains(&signal) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "Unknown signal {signal:?}; use one of {}",
            SIGNALS.join(", ")
        )))
    }
}

/// Checks a config and returns its guest size (cpus, memory_mb).
pub fn validate_config(config: &MachineConfig) -> Result<(i64, i64), ApiError> {
    if config.image.trim().is_empty() {
        return Err(ApiError::BadRequest("config.image is required".to_owned()));
    }
    parse_image_ref(&config.image)?;
    let guest = config.guest.clone().unwrap_or_default();
    if !(1..=64).contains(&guest.cpus) {
        return Err(ApiError::BadRequest(format!(
            "config.guest.cpus {} must be between 1 and 64",
            guest.cpus
        )));
    }
    if !(128..=262_144).contains(&guest.memory_mb) {
        return Err(ApiError::BadRequest(format!(
            "config.guest.memory_mb {} must be between 128 and 262144",
            guest.memory_mb
        )));
    }
    if !matches!(guest.cpu_kind.as_str(), "shared" | "performance") {
        return Err(ApiError::BadRequest(format!(
            "config.guest.cpu_kind {:?} must be \"shared\" or \"performance\"",
            guest.cpu_kind
        )));
    }
    for (i, service) in config.services.iter().flatten().enumerate() {
        if !(1..=65_535).contains(&service.internal_port) {
            return Err(ApiError::BadRequest(format!(
                "config.services[{i}].internal_port {} must be between 1 and 65535",
                service.internal_port
            )));
        }
    }
    if let Some(policy) = config.restart.as_ref().and_then(|r| r.policy.as_deref()) {
        if !matches!(policy, "" | "no" | "always" | "on-failure") {
            return Err(ApiError::BadRequest(format!(
                "config.restart.policy {policy:?} must be \"no\", \"always\" or \"on-failure\""
            )));
        }
    }
    if let Some(signal) = config
        .stop_config
        .as_ref()
        .and_then(|s| s.signal.as_deref())
    {
        validate_signal(signal)?;
    }
    if let Some(key) = config
        .env
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .find(|k| k.is_empty() || k.contains('='))
    {
        return Err(ApiError::BadRequest(format!(
            "config.env name {key:?} is not a valid variable name"
        )));
    }
    Ok((guest.cpus, guest.memory_mb))
}

impl Control {
    fn render(&self, inner: &Inner, row: &MachineRow) -> Result<Machine, ApiError> {
        let events = MachineRow::events(&inner.conn, &row.id, EVENTS_IN_MACHINE)?;
        Ok(row.to_machine(events, inner.host_status(&row.host_id, self.live_since())))
    }

    /// Loads, lease-checks, changes and saves one machine in one transaction.
    fn mutate<T>(
        &self,
        app: &str,
        id: &str,
        caller: Caller<'_>,
        change: impl FnOnce(&mut MachineRow, &mut NewMachine, &Inner) -> Result<T, ApiError>,
    ) -> Result<(T, Machine), ApiError> {
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

    /// Places and creates a machine; starts it unless `skip_launch`.
    pub fn create_machine(
        &self,
        app: &str,
        req: CreateMachineRequest,
        owner: &str,
    ) -> Result<Machine, ApiError> {
        let (cpus, memory_mb) = validate_config(&req.config)?;
        let image_ref = parse_image_ref(&req.config.image)?;
        let lease_ttl = req.lease_ttl.map(checked_ttl).transpose()?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.get_app(app)?;
        let live_since = self.live_since();
        let region = match req.region.as_deref().filter(|r| !r.is_empty()) {
            Some(region) => region.to_owned(),
            None => default_region(inner, app, live_since)?,
        };
        let counts = app_machines_per_host(inner, app)?;
        let host = place(
            &inner.hosts,
            &PlacementRequest {
                region: &region,
                cpus,
                memory_mb,
                live_since,
                app_machines: &counts,
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
            events: vec![event("launch", "created", "user")],
            new_version: true,
        };
        if !req.skip_launch {
            row.desired = DesiredState::Started;
            go(
                &mut row,
                &mut extra,
                MachineState::Starting,
                "start",
                "user",
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

    pub fn get_lease(&self, app: &str, id: &str) -> Result<Lease, ApiError> {
        let inner = self.lock();
        let row = MachineRow::load(&inner.conn, app, id)?;
        row.active_lease(now_unix())
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("Machine {id} has no active lease")))
    }

    /// Takes a lease, or extends it when `nonce` is the current one.
    pub fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Option<u64>,
        description: Option<String>,
        owner: &str,
        nonce: Option<&str>,
    ) -> Result<Lease, ApiError> {
        let ttl = checked_ttl(ttl.unwrap_or(DEFAULT_LEASE_TTL))?;
        let (lease, _) = self.mutate(app, id, Caller::User(nonce), |row, _, _| {
            let lease = match row.active_lease(now_unix()) {
                Some(current) => Lease {
                    expires_at: now_unix() + ttl as i64,
                    description: description.unwrap_or_else(|| current.description.clone()),
                    ..current.clone()
                },
                None => new_lease(row, ttl, owner, description.as_deref().unwrap_or("")),
            };
            row.lease = Some(lease.clone());
            Ok(lease)
        })?;
        Ok(lease)
    }

    pub fn release_lease(&self, app: &str, id: &str, nonce: Option<&str>) -> Result<(), ApiError> {
        self.mutate(app, id, Caller::User(nonce), |row, _, _| {
            if row.active_lease(now_unix()).is_none() {
                return Err(ApiError::NotFound(format!(
                    "Machine {id} has no active lease"
                )));
            }
            row.lease = None;
            Ok(())
        })?;
        Ok(())
    }

    pub fn metadata(&self, app: &str, id: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let inner = self.lock();
        let row = MachineRow::load(&inner.conn, app, id)?;
        Ok(row.config.metadata.unwrap_or_default())
    }

    /// Sets (`Some`) or removes (`None`) a metadata key without a new version.
    pub fn set_metadata(
        &self,
        app: &str,
        id: &str,
        key: &str,
        value: Option<String>,
        nonce: Option<&str>,
    ) -> Result<(), ApiError> {
        if key.is_empty() || key.len() > 256 {
            return Err(ApiError::BadRequest(format!(
                "Metadata key {key:?} must be 1-256 characters"
            )));
        }
        self.mutate(app, id, Caller::User(nonce), |row, _, _| {
            let metadata = row.config.metadata.get_or_insert_with(BTreeMap::new);
            match value {
                Some(value) => {
                    metadata.insert(key.to_owned(), value);
                }
                None => {
                    metadata.remove(key);
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    pub fn events(&self, app: &str, id: &str) -> Result<Vec<MachineEvent>, ApiError> {
        let inner = self.lock();
        MachineRow::load(&inner.conn, app, id)?;
        MachineRow::events(&inner.conn, id, 1000)
    }

    pub fn versions(&self, app: &str, id: &str) -> Result<Vec<MachineVersion>, ApiError> {
        let inner = self.lock();
        MachineRow::load(&inner.conn, app, id)?;
        MachineRow::versions(&inner.conn, id)
    }

    /// Returns once the machine is in `state` (and at `instance_id`), 408 after `timeout`.
    pub async fn wait(
        &self,
        app: &str,
        id: &str,
        state: Option<&str>,
        timeout: Option<u64>,
        instance_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let target = match state.unwrap_or("started") {
            name @ ("started" | "stopped" | "suspended" | "destroyed") => {
                MachineState::parse(name).unwrap_or(MachineState::Started)
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Cannot wait for state {other:?}; use started, stopped, suspended or destroyed"
                )))
            }
        };
        let timeout = timeout.unwrap_or(DEFAULT_WAIT);
        if timeout > MAX_WAIT {
            return Err(ApiError::BadRequest(format!(
                "Wait timeout {timeout} is more than {MAX_WAIT} seconds"
            )));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut revisions = self.subscribe();
        let mut shutdown = self.shutdown_signal();
        loop {
            revisions.borrow_and_update();
            let (current, current_instance) = {
                let inner = self.lock();
                let row = MachineRow::load(&inner.conn, app, id)?;
                (row.state, row.instance_id)
            };
            let instance_ok = instance_id.is_none_or(|want| want == current_instance);
            if current == target && instance_ok {
                return Ok(());
            }
            if current == MachineState::Destroyed {
                return Err(ApiError::Precondition(format!(
                    "Machine {id} was destroyed while waiting for {target}"
                )));
            }
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::Unavailable("Server is shutting down".to_owned()));
                    }
                }
                () = crate::control::shutting_down(&mut shutdown) => return Err(ApiError::Unavailable("Server is shutting down".to_owned())),
                () = tokio::time::sleep_until(deadline) => {
                    return Err(ApiError::Timeout(format!(
                        "Machine {id} did not reach state {target} within {timeout}s (it is {current})"
                    )));
                }
            }
        }
    }

    /// Applies an agent's status report through the transition function.
    pub fn report_status(
        &self,
        host: &str,
        id: &str,
        report: StatusReport,
    ) -> Result<(), ApiError> {
        let app = {
            let inner = self.lock();
            let row = MachineRow::load_by_id(&inner.conn, id)?
                .ok_or_else(|| ApiError::NotFound(format!("Machine {id:?} not found")))?;
            if row.host_id != host {
                return Err(ApiError::NotFound(format!(
                    "Machine {id} is not assigned to host {host:?}"
                )));
            }
            if row.instance_id != report.instance_id {
                return Err(ApiError::Conflict(format!(
                    "Report names instance {} but machine {id} is at instance {}",
                    report.instance_id, row.instance_id
                )));
            }
            row.app
        };
        self.mutate(&app, id, Caller::Agent, |row, extra, _| {
            agent_update(row, extra, report)
        })?;
        Ok(())
    }
}

/// Applies a report: a state change (through `transition`), an event, an exit code, checks.
fn agent_update(
    row: &mut MachineRow,
    extra: &mut NewMachine,
    report: StatusReport,
) -> Result<(), ApiError> {
    let exit = report
        .exit_code
        .map(|code| json!({"exit_event": {"exit_code": code}}));
    if report.state != row.state {
        row.state = transition(row.state, report.state)
            .map_err(|e| ApiError::Precondition(format!("Machine {}: {e}", row.id)))?;
        let kind = report.event.as_ref().map_or_else(
            || default_event_kind(report.state).to_owned(),
            |e| e.kind.clone(),
        );
        extra.events.push(PendingEvent {
            kind,
            status: report.state.as_str().to_owned(),
            source: "flyd",
            request: merge_request(exit, report.event.as_ref().and_then(|e| e.message.clone())),
        });
        if report.state == MachineState::Destroyed {
            row.lease = None;
        }
    } else if let Some(ev) = &report.event {
        extra.events.push(PendingEvent {
            kind: ev.kind.clone(),
            status: ev.status.clone(),
            source: "flyd",
            request: merge_request(exit, ev.message.clone()),
        });
    }
    if let Some(checks) = report.checks {
        let updated_at = now_rfc3339();
        row.checks = checks
            .into_iter()
            .map(|c| CheckStatus {
                name: c.name,
                status: c.status,
                output: c.output,
                updated_at: updated_at.clone(),
            })
            .collect();
    }
    Ok(())
}

fn merge_request(
    exit: Option<serde_json::Value>,
    message: Option<String>,
) -> Option<serde_json::Value> {
    match (exit, message) {
        (None, None) => None,
        (exit, message) => {
            let mut value = exit.unwrap_or_else(|| json!({}));
            if let (Some(map), Some(message)) = (value.as_object_mut(), message) {
                map.insert("message".to_owned(), json!(message));
            }
            Some(value)
        }
    }
}

fn default_event_kind(state: MachineState) -> &'static str {
    match state {
        MachineState::Starting | MachineState::Started => "start",
        MachineState::Stopping | MachineState::Stopped => "exit",
        MachineState::Suspending | MachineState::Suspended => "suspend",
        MachineState::Destroying | MachineState::Destroyed => "destroy",
        MachineState::Replacing => "update",
        MachineState::Created => "launch",
        MachineState::Failed => "failed",
    }
}

fn checked_ttl(ttl: u64) -> Result<u64, ApiError> {
    if (1..=MAX_LEASE_TTL).contains(&ttl) {
        Ok(ttl)
    } else {
        Err(ApiError::BadRequest(format!(
            "Lease ttl {ttl} must be between 1 and {MAX_LEASE_TTL} seconds"
        )))
    }
}

fn new_lease(row: &MachineRow, ttl: u64, owner: &str, description: &str) -> Lease {
    Lease {
        nonce: crate::ids::short_id()[..12].to_owned(),
        expires_at: now_unix() + ttl as i64,
        owner: owner.to_owned(),
        description: description.to_owned(),
        version: row.version.clone(),
    }
}

/// The region of the app's oldest live machine, else the first region with a live host.
fn default_region(inner: &Inner, app: &str, live_since: Instant) -> Result<String, ApiError> {
    let existing: Option<String> = inner
        .conn
        .query_row(
            "SELECT region FROM machines WHERE app = ?1 AND state != 'destroyed' ORDER BY created_at, id LIMIT 1",
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

fn app_machines_per_host(inner: &Inner, app: &str) -> Result<HashMap<String, u32>, ApiError> {
    let mut stmt = inner
        .conn
        .prepare_cached("SELECT host_id, count(*) FROM machines WHERE app = ?1 AND state != 'destroyed' GROUP BY host_id")?;
    let rows = stmt.query_map(params![app], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u32))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
