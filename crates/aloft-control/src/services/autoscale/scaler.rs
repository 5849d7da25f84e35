//! The scaler: every couple of seconds, for each app with a policy and each region in it, it
//! compares the started machines with what the load entering there asks for, and starts,
//! creates, stops or destroys machines within the region's bounds.
//!
//! [`decide`] is the whole policy, as a pure function of the region's machines and load;
//! [`Autoscale::tick`] gathers its inputs and carries out its actions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aloft_api::{AutoscalePolicy, CreateMachineRequest, DesiredState, MachineState, RegionScaling};

use super::{Autoscale, AutoscaleError, Demand};
use crate::core::shutting_down;
use crate::core::store::MachineRow;
use crate::services::machines::{go, Caller, MachineError};

/// The event source recorded on everything the scaler does.
pub const SOURCE: &str = "autoscale";
/// The process group of machines without one.
const DEFAULT_GROUP: &str = "app";

/// How often and how patiently the scaler acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalerOptions {
    /// Time between two passes (default 2 s).
    pub interval: Duration,
    /// How long a region must have more started machines than its load asks for before the
    /// extra ones are stopped; also how long a scaler-created machine above `max` must have
    /// been stopped before it is destroyed (default 30 s).
    pub scale_down_after: Duration,
    /// How long a scaler-created machine above `min` must have been stopped before it is
    /// destroyed (default 10 min).
    pub destroy_after: Duration,
}

impl Default for ScalerOptions {
    fn default() -> Self {
        ScalerOptions {
            interval: Duration::from_secs(2),
            scale_down_after: Duration::from_secs(30),
            destroy_after: Duration::from_secs(600),
        }
    }
}

/// What the scaler remembers between passes.
#[derive(Debug, Default)]
pub struct ScalerState {
    /// Per (app, region), since when it has had more started machines than desired.
    over_since: HashMap<(String, String), Instant>,
    /// Per (app, region), the last desired count.
    desired: HashMap<(String, String), u32>,
}

impl ScalerState {
    /// The last desired count of each of the app's policy regions.
    pub fn desired_of(&self, app: &str) -> HashMap<String, u32> {
        self.desired
            .iter()
            .filter(|((a, _), _)| a == app)
            .map(|((_, region), n)| (region.clone(), *n))
            .collect()
    }
}

/// A machine as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    pub id: String,
    pub state: MachineState,
    /// Created by the scaler (only those are ever destroyed).
    pub autoscaled: bool,
    /// Time since the machine last changed (for a stopped machine: how long it has been stopped).
    pub idle_for: Duration,
}

/// One region's inputs.
#[derive(Debug, Clone)]
pub struct RegionInput<'a> {
    pub scaling: RegionScaling,
    /// In-flight requests entering at the region's edges.
    pub concurrency: u32,
    /// The region's machines of the scaled group, oldest first.
    pub machines: &'a [MachineView],
    /// How long the region has had more started machines than desired (`None`: it has not).
    pub over_for: Option<Duration>,
}

/// Something the scaler does to a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(String),
    Create,
    Stop(String),
    Destroy(String),
}

/// What [`decide`] concluded for a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    /// More machines are started than desired (the caller times how long).
    pub over: bool,
    pub actions: Vec<Action>,
}

/// Whether a machine in this state counts as started.
pub fn is_running(state: MachineState) -> bool {
    matches!(
        state,
        MachineState::Starting | MachineState::Started | MachineState::Replacing
    )
}

fn is_startable(state: MachineState) -> bool {
    matches!(state, MachineState::Stopped | MachineState::Suspended)
}

/// Started machines wanted for `concurrency`: `ceil(concurrency / target)` within `min..=max`.
pub fn desired(scaling: &RegionScaling, concurrency: u32) -> u32 {
    let target = scaling.target_concurrency.max(1);
    concurrency
        .div_ceil(target)
        .clamp(scaling.min, scaling.max.max(scaling.min))
}

/// The scaler's policy for one region.
///
/// - Fewer started than desired: start stopped machines (oldest first), then create new
///   ones, never past `max`.
/// - More started than desired for `scale_down_after`: stop the extra ones, scaler-created
///   and newest first, never below `min`.
/// - Scaler-created machines stopped for `scale_down_after` while the region holds more
///   than `max` machines, or for `destroy_after` while it holds more than `min`, are
///   destroyed (newest first).
pub fn decide(input: &RegionInput<'_>, opts: &ScalerOptions) -> Decision {
    let s = &input.scaling;
    let want = desired(s, input.concurrency);
    let running = input
        .machines
        .iter()
        .filter(|m| is_running(m.state))
        .count() as u32;
    let mut actions = Vec::new();
    let mut over = false;
    if running < want {
        let mut need = want - running;
        for m in input.machines.iter().filter(|m| is_startable(m.state)) {
            if need == 0 {
                break;
            }
            actions.push(Action::Start(m.id.clone()));
            need -= 1;
        }
        actions.extend((0..need).map(|_| Action::Create));
        return Decision {
            desired: want,
            over,
            actions,
        };
    }
    if running > want {
        over = true;
        if input.over_for.is_some_and(|d| d >= opts.scale_down_after) {
            let mut victims: Vec<&MachineView> = input
                .machines
                .iter()
                .filter(|m| m.state == MachineState::Started)
                .collect();
            // Scaler-created first, newest first within each.
            victims.reverse();
            victims.sort_by_key(|m| !m.autoscaled);
            let extra = (running - want) as usize;
            actions.extend(
                victims
                    .into_iter()
                    .take(extra)
                    .map(|m| Action::Stop(m.id.clone())),
            );
        }
    }
    let mut total = input.machines.len() as u32;
    for m in input.machines.iter().rev() {
        if !(m.autoscaled && is_startable(m.state)) {
            continue;
        }
        let above_max = total > s.max && m.idle_for >= opts.scale_down_after;
        let above_min = total > s.min && m.idle_for >= opts.destroy_after;
        if above_max || above_min {
            actions.push(Action::Destroy(m.id.clone()));
            total -= 1;
        }
    }
    Decision {
        desired: want,
        over,
        actions,
    }
}

/// The process group of a machine.
fn group_of(row: &MachineRow) -> &str {
    row.config
        .metadata
        .as_ref()
        .and_then(|m| m.get("fly_process_group"))
        .map_or(DEFAULT_GROUP, String::as_str)
}

/// The machine new ones are cloned from: the newest in the app's primary region (its
/// `PRIMARY_REGION`), else the newest. `rows` are oldest first.
fn template(rows: &[MachineRow]) -> Option<&MachineRow> {
    let primary = |r: &&MachineRow| {
        r.config
            .env
            .as_ref()
            .and_then(|e| e.get("PRIMARY_REGION"))
            .is_some_and(|p| p == &r.region)
    };
    rows.iter()
        .rev()
        .find(primary)
        .or_else(|| rows.iter().next_back())
}

fn idle_for(row: &MachineRow, now: chrono::DateTime<chrono::Utc>) -> Duration {
    chrono::DateTime::parse_from_rfc3339(&row.updated_at)
        .ok()
        .and_then(|t| (now - t.with_timezone(&chrono::Utc)).to_std().ok())
        .unwrap_or_default()
}

impl Autoscale {
    /// One scaler pass over every app with a policy; returns what it did, per app and region.
    pub fn tick(&self, opts: &ScalerOptions) -> Vec<(String, String, Action)> {
        let policies = match self.store.lock().db().autoscale_policies() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "autoscaler cannot read policies");
                return Vec::new();
            }
        };
        let demand = self.loads.demand();
        let mut done = Vec::new();
        let mut seen = HashSet::new();
        for (app, policy) in policies {
            match self.scale_app(&app, &policy, &demand, opts, &mut seen) {
                Ok(mut actions) => done.append(&mut actions),
                Err(e) => tracing::warn!(app, error = %e, "autoscaler pass failed"),
            }
        }
        let mut state = self.scaler();
        state.over_since.retain(|k, _| seen.contains(k));
        state.desired.retain(|k, _| seen.contains(k));
        done
    }

    fn scale_app(
        &self,
        app: &str,
        policy: &AutoscalePolicy,
        demand: &HashMap<(String, String), Demand>,
        opts: &ScalerOptions,
        seen: &mut HashSet<(String, String)>,
    ) -> Result<Vec<(String, String, Action)>, AutoscaleError> {
        let (rows, autoscaled) = {
            let inner = self.store.lock();
            let db = inner.db();
            (
                db.machines(app, false)?,
                db.machines_launched_by(app, SOURCE)?,
            )
        };
        let Some(template) = template(&rows) else {
            // Nothing to clone from: the app has never had a machine.
            return Ok(Vec::new());
        };
        let group = group_of(template).to_owned();
        let now = chrono::Utc::now();
        let mut done = Vec::new();
        for (region, scaling) in &policy.regions {
            let key = (app.to_owned(), region.clone());
            seen.insert(key.clone());
            let machines: Vec<MachineView> = rows
                .iter()
                .filter(|r| &r.region == region && group_of(r) == group)
                .map(|r| MachineView {
                    id: r.id.clone(),
                    state: r.state,
                    autoscaled: autoscaled.contains(&r.id),
                    idle_for: idle_for(r, now),
                })
                .collect();
            let concurrency = demand.get(&key).map_or(0, |d| d.concurrency);
            let over_for = self.scaler().over_since.get(&key).map(Instant::elapsed);
            let decision = decide(
                &RegionInput {
                    scaling: *scaling,
                    concurrency,
                    machines: &machines,
                    over_for,
                },
                opts,
            );
            {
                let mut state = self.scaler();
                state.desired.insert(key.clone(), decision.desired);
                let stopping = decision
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Stop(_)));
                if decision.over && !stopping {
                    state
                        .over_since
                        .entry(key.clone())
                        .or_insert_with(Instant::now);
                } else {
                    state.over_since.remove(&key);
                }
            }
            for action in decision.actions {
                let result = match &action {
                    Action::Start(id) => self.autoscale_start(app, id),
                    Action::Stop(id) => self.autoscale_stop(app, id),
                    Action::Destroy(id) => self.autoscale_destroy(app, id),
                    Action::Create => self.autoscale_create(app, region, template).map(|id| {
                        tracing::info!(app, region = %region, machine = %id, concurrency, "autoscaler created a machine");
                    }),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(app, region = %region, ?action, concurrency, desired = decision.desired, "autoscaled");
                        done.push((app.to_owned(), region.clone(), action));
                    }
                    // A leased machine (a deploy at work) or a full region: try next pass.
                    Err(e) => {
                        tracing::warn!(app, region = %region, ?action, error = %e, "autoscaler action refused")
                    }
                }
            }
        }
        Ok(done)
    }

    fn autoscale_start(&self, app: &str, id: &str) -> Result<(), MachineError> {
        self.machines
            .mutate(app, id, Caller::User(None), |row, extra, _| {
                require_stopped(row)?;
                row.desired = DesiredState::Started;
                go(row, extra, MachineState::Starting, "start", SOURCE)?;
                row.restart_seq += 1;
                Ok(())
            })?;
        Ok(())
    }

    fn autoscale_stop(&self, app: &str, id: &str) -> Result<(), MachineError> {
        self.machines
            .mutate(app, id, Caller::User(None), |row, extra, _| {
                if row.state != MachineState::Started {
                    return Err(MachineError::WrongState(format!(
                        "Machine {} is {}, not started",
                        row.id, row.state
                    )));
                }
                row.desired = DesiredState::Stopped;
                row.stop_signal = None;
                row.stop_timeout = None;
                go(row, extra, MachineState::Stopping, "stop", SOURCE)
            })?;
        Ok(())
    }

    fn autoscale_destroy(&self, app: &str, id: &str) -> Result<(), MachineError> {
        self.machines
            .mutate(app, id, Caller::User(None), |row, extra, _| {
                require_stopped(row)?;
                row.desired = DesiredState::Destroyed;
                row.lease = None;
                go(row, extra, MachineState::Destroying, "destroy", SOURCE)
            })?;
        Ok(())
    }

    fn autoscale_create(
        &self,
        app: &str,
        region: &str,
        template: &MachineRow,
    ) -> Result<String, MachineError> {
        let req = CreateMachineRequest {
            config: template.config.clone(),
            region: Some(region.to_owned()),
            ..CreateMachineRequest::default()
        };
        let m = self.machines.create_by(app, req, SOURCE, SOURCE)?;
        Ok(m.id)
    }
}

/// Only a stopped (or suspended) machine is started or destroyed by the scaler.
fn require_stopped(row: &MachineRow) -> Result<(), MachineError> {
    if is_startable(row.state) {
        Ok(())
    } else {
        Err(MachineError::WrongState(format!(
            "Machine {} is {}, not stopped",
            row.id, row.state
        )))
    }
}

/// Runs [`Autoscale::tick`] every `opts.interval` until shutdown.
pub async fn run_scaler(autoscale: Arc<Autoscale>, opts: ScalerOptions) {
    let mut shutdown = autoscale.store.revisions().shutdown_signal();
    let mut every = tokio::time::interval(opts.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                let a = autoscale.clone();
                // SQLite work: keep it off the async workers.
                if let Err(e) = tokio::task::spawn_blocking(move || a.tick(&opts)).await {
                    tracing::warn!(error = %e, "autoscaler pass panicked");
                }
            }
            () = shutting_down(&mut shutdown) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachineState::*;

    fn m(id: &str, state: MachineState, autoscaled: bool, idle_secs: u64) -> MachineView {
        MachineView {
            id: id.to_owned(),
            state,
            autoscaled,
            idle_for: Duration::from_secs(idle_secs),
        }
    }

    fn scaling(min: u32, max: u32, target: u32) -> RegionScaling {
        RegionScaling {
            min,
            max,
            target_concurrency: target,
        }
    }

    fn run(
        s: RegionScaling,
        concurrency: u32,
        machines: &[MachineView],
        over_for: Option<u64>,
    ) -> Decision {
        decide(
            &RegionInput {
                scaling: s,
                concurrency,
                machines,
                over_for: over_for.map(Duration::from_secs),
            },
            &ScalerOptions::default(),
        )
    }

    #[test]
    fn desired_is_the_ceiling_within_bounds() {
        assert_eq!(desired(&scaling(0, 2, 1), 0), 0);
        assert_eq!(desired(&scaling(0, 2, 1), 1), 1);
        assert_eq!(desired(&scaling(0, 2, 1), 5), 2);
        assert_eq!(desired(&scaling(1, 10, 4), 0), 1);
        assert_eq!(desired(&scaling(1, 10, 4), 9), 3);
        assert_eq!(desired(&scaling(0, 10, 4), 8), 2);
    }

    #[test]
    fn load_in_an_empty_region_creates_machines_up_to_max() {
        let d = run(scaling(0, 2, 1), 3, &[], None);
        assert_eq!(d.desired, 2);
        assert_eq!(d.actions, vec![Action::Create, Action::Create]);
    }

    #[test]
    fn stopped_machines_are_started_before_new_ones_are_created() {
        let ms = [m("a", Stopped, false, 100), m("b", Started, false, 0)];
        let d = run(scaling(0, 5, 2), 8, &ms, None);
        assert_eq!(d.desired, 4);
        assert_eq!(
            d.actions,
            vec![Action::Start("a".into()), Action::Create, Action::Create]
        );
    }

    #[test]
    fn starting_machines_count_so_nothing_is_created_twice() {
        let ms = [m("a", Starting, true, 0)];
        let d = run(scaling(0, 2, 1), 1, &ms, None);
        assert!(d.actions.is_empty(), "{d:?}");
    }

    #[test]
    fn extra_machines_stop_only_after_the_idle_time_and_never_below_min() {
        let ms = [
            m("old", Started, false, 0),
            m("new1", Started, true, 0),
            m("new2", Started, true, 0),
        ];
        let early = run(scaling(1, 3, 1), 0, &ms, Some(5));
        assert!(early.over);
        assert!(early.actions.is_empty(), "{early:?}");
        let late = run(scaling(1, 3, 1), 0, &ms, Some(31));
        assert_eq!(
            late.actions,
            vec![Action::Stop("new2".into()), Action::Stop("new1".into())]
        );
    }

    #[test]
    fn only_scaler_created_stopped_machines_are_destroyed() {
        // Above max: destroyed after the short idle time.
        let ms = [
            m("user", Stopped, false, 1000),
            m("a1", Stopped, true, 40),
            m("a2", Stopped, true, 40),
        ];
        let d = run(scaling(0, 1, 1), 0, &ms, None);
        assert_eq!(
            d.actions,
            vec![Action::Destroy("a2".into()), Action::Destroy("a1".into())]
        );
        // Within max but above min: only after the long idle time.
        let ms = [m("a1", Stopped, true, 40)];
        assert!(run(scaling(0, 2, 1), 0, &ms, None).actions.is_empty());
        let ms = [m("a1", Stopped, true, 700)];
        assert_eq!(
            run(scaling(0, 2, 1), 0, &ms, None).actions,
            vec![Action::Destroy("a1".into())]
        );
        // Never below min.
        let ms = [m("a1", Stopped, true, 700)];
        let d = run(scaling(1, 2, 1), 0, &ms, None);
        assert_eq!(d.actions, vec![Action::Start("a1".into())]);
    }

    #[test]
    fn a_balanced_region_is_left_alone() {
        let ms = [m("a", Started, true, 0), m("b", Stopped, false, 5)];
        let d = run(scaling(0, 3, 2), 2, &ms, None);
        assert_eq!(d.desired, 1);
        assert!(!d.over);
        assert!(d.actions.is_empty(), "{d:?}");
    }
}
