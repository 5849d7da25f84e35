//! Machines: the Fly Machines API's operations. Each loads the machine, checks its lease,
//! goes through the transition function, and saves row + events in one transaction
//! ([`Machines::mutate`]). Agents' reports are in `agent.rs`, waits in `wait.rs`, leases and
//! metadata in `leases.rs`, exec and log targets in `exec.rs`.

mod agent;
mod error;
pub mod exec;
mod inspect;
mod leases;
mod ops;
mod validate;
mod wait;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use aloft_api::{CreateMachineRequest, DesiredState, Lease, Machine, MachineState};

use super::hosts::Hosts;
use super::image::Images;
use super::limits::{AppLimits, AppUsage};
use super::placement::{place, PlacementRequest};
use crate::core::state::transition;
use crate::core::store::{unix_now, MachineRow, NewMachine, PendingEvent};
use crate::core::{now_rfc3339, Inner, Store};

pub use error::MachineError;
pub use inspect::{parse_states, OrgFilter};
pub use validate::validate_config;
use validate::validate_signal;
pub use wait::{wait_targets, WaitFor};

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
pub enum Caller<'a> {
    User(Option<&'a str>),
    Agent,
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
) -> Result<(), MachineError> {
    row.state = transition(row.state, to).map_err(|transition| MachineError::Transition {
        id: row.id.clone(),
        transition,
    })?;
    extra.events.push(event(kind, to.as_str(), source));
    Ok(())
}

pub(crate) fn check_lease(row: &MachineRow, nonce: Option<&str>) -> Result<(), MachineError> {
    match row.active_lease(unix_now()) {
        Some(lease) if nonce != Some(lease.nonce.as_str()) => Err(MachineError::Leased(format!(
            "Machine {} is leased by {} until {}; send its nonce in the fly-machine-lease-nonce header",
            row.id,
            lease.owner,
            chrono::DateTime::from_timestamp(lease.expires_at, 0).map_or_else(|| lease.expires_at.to_string(), |t| t.to_rfc3339()),
        ))),
        _ => Ok(()),
    }
}

/// The machine service.
#[derive(Debug)]
pub struct Machines {
    store: Arc<Store>,
    hosts: Arc<Hosts>,
    images: Arc<Images>,
    limits: std::sync::OnceLock<AppLimits>,
}

impl Machines {
    pub fn new(store: Arc<Store>, hosts: Arc<Hosts>, images: Arc<Images>) -> Machines {
        Machines {
            store,
            hosts,
            images,
            limits: std::sync::OnceLock::new(),
        }
    }

    /// The operator's per-app totals (once, before serving).
    pub fn set_limits(&self, limits: AppLimits) {
        let _ = self.limits.set(limits);
    }

    /// Refuses a change after which `app` would hold more than the operator allows: its
    /// machines (except `replacing`, the one being changed) plus `added`.
    fn check_limits(
        &self,
        db: crate::core::Db<'_>,
        app: &str,
        replacing: Option<&str>,
        added: (i64, i64),
    ) -> Result<(), MachineError> {
        let small = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        let Some(limits) = self.limits.get().filter(|l| **l != AppLimits::default()) else {
            return Ok(());
        };
        let mut usage = AppUsage {
            machines: 1,
            cpus: small(added.0),
            memory_mb: small(added.1),
        };
        for m in db.machines(app, false)? {
            if Some(m.id.as_str()) == replacing
                || matches!(m.state, MachineState::Destroying | MachineState::Destroyed)
            {
                continue;
            }
            usage.machines += 1;
            usage.cpus = usage.cpus.saturating_add(small(m.cpus));
            usage.memory_mb = usage.memory_mb.saturating_add(small(m.memory_mb));
        }
        Ok(limits.check(app, usage)?)
    }

    fn render(&self, inner: &Inner, row: &MachineRow) -> Result<Machine, MachineError> {
        let events = inner.db().machine_events(&row.id, EVENTS_IN_MACHINE)?;
        Ok(row.to_machine(
            events,
            inner.host_status(&row.host_id, self.hosts.live_since()),
        ))
    }

    /// Loads, lease-checks, changes and saves one machine in one transaction.
    pub fn mutate<T>(
        &self,
        app: &str,
        id: &str,
        caller: Caller<'_>,
        change: impl FnOnce(&mut MachineRow, &mut NewMachine, &Inner) -> Result<T, MachineError>,
    ) -> Result<(T, Machine), MachineError> {
        let _span = tracing::debug_span!("machine", app, machine = id).entered();
        let mut guard = self.store.lock();
        let inner = &mut *guard;
        let mut row = inner.db().machine(app, id)?;
        if let Caller::User(nonce) = caller {
            check_lease(&row, nonce)?;
        }
        let mut extra = NewMachine::default();
        let out = change(&mut row, &mut extra, inner)?;
        let ((), revision) =
            inner.write(|db, revision| db.save_machine(&mut row, extra, revision))?;
        inner.refresh_host_usage(&row.host_id)?;
        let machine = self.render(inner, &row)?;
        drop(guard);
        self.store.notify(revision);
        Ok((out, machine))
    }

    /// Places and creates a machine; starts it unless `skip_launch`. Without a region, the
    /// app's oldest live machine's region is used, else the alphabetically first region
    /// with a live host.
    pub fn create(
        &self,
        app: &str,
        req: CreateMachineRequest,
        owner: &str,
    ) -> Result<Machine, MachineError> {
        self.create_by(app, req, owner, "user")
    }

    /// [`Machines::create`], recording `source` on its events (`user`, `autoscale`).
    pub fn create_by(
        &self,
        app: &str,
        req: CreateMachineRequest,
        owner: &str,
        source: &'static str,
    ) -> Result<Machine, MachineError> {
        let mut req = req;
        let (cpus, memory_mb) = validate_config(&req.config)?;
        let (image, image_ref) = self.images.pin(app, &req.config.image)?;
        req.config.image = image;
        let lease_ttl = req.lease_ttl.map(checked_ttl).transpose()?;
        let _span = tracing::debug_span!("create_machine", app).entered();
        let mut guard = self.store.lock();
        let inner = &mut *guard;
        inner.db().require_app(app)?;
        self.check_limits(inner.db(), app, None, (cpus, memory_mb))?;
        let live_since = self.hosts.live_since();
        let region = match req.region.as_deref().filter(|r| !r.is_empty()) {
            Some(region) => region.to_owned(),
            None => default_region(inner, app, live_since)?,
        };
        let no_machines = HashMap::new();
        let counts = inner.app_hosts(app).unwrap_or(&no_machines);
        let host = place(
            inner.hosts(),
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
        let id = crate::core::ids::machine_id();
        let now = now_rfc3339();
        let version = crate::core::ids::ulid();
        let mut row = MachineRow {
            name: req
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("{app}-{}", &id[..6])),
            private_ip: crate::core::ids::private_ip(&host, &id),
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
            return Err(MachineError::Invalid(format!(
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
        let ((), revision) =
            inner.write(|db, revision| db.save_machine(&mut row, extra, revision))?;
        inner.refresh_host_usage(&row.host_id)?;
        let mut machine = self.render(inner, &row)?;
        machine.nonce = row.lease.as_ref().map(|l| l.nonce.clone());
        drop(guard);
        self.store.notify(revision);
        tracing::info!(app, machine = %machine.id, region = %machine.region, "machine created");
        Ok(machine)
    }

    pub fn get(&self, app: &str, id: &str) -> Result<Machine, MachineError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        let row = inner.db().machine(app, id)?;
        self.render(&inner, &row)
    }

    /// Machines of an app matching the filters.
    pub fn list(
        &self,
        app: &str,
        region: Option<&str>,
        states: Option<&str>,
        include_deleted: bool,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<Machine>, MachineError> {
        let states = states
            .filter(|s| !s.is_empty())
            .map(parse_states)
            .transpose()?;
        let include_destroyed = include_deleted
            || states
                .as_ref()
                .is_some_and(|s| s.contains(&MachineState::Destroyed));
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        let rows = inner.db().machines(app, include_destroyed)?;
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
}

pub(crate) fn checked_ttl(ttl: u64) -> Result<u64, MachineError> {
    if (1..=MAX_LEASE_TTL).contains(&ttl) {
        Ok(ttl)
    } else {
        Err(MachineError::Invalid(format!(
            "Lease ttl {ttl} must be between 1 and {MAX_LEASE_TTL} seconds"
        )))
    }
}

pub(crate) fn new_lease(row: &MachineRow, ttl: u64, owner: &str, description: &str) -> Lease {
    Lease {
        nonce: crate::core::ids::short_id()[..12].to_owned(),
        expires_at: unix_now() + ttl as i64,
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
) -> Result<String, MachineError> {
    if let Some(region) = inner.db().first_machine_region(app)? {
        return Ok(region);
    }
    inner
        .hosts()
        .iter()
        .filter(|h| h.last_seen >= live_since)
        .map(|h| h.region.clone())
        .min()
        .ok_or_else(|| {
            MachineError::Unplaceable(
                "No region given and no host is live to place the machine on".to_owned(),
            )
        })
}
