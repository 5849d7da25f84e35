//! Demand-driven regional scaling: the load edges report per app, the per-app policies, and
//! the views `aloft status` and `aloft regions` show. The scaler itself is in [`scaler`].

pub mod scaler;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aloft_api::{AppLoad, AppLoadStatus, AutoscalePolicy, LoadReport, MachineState, RegionLoad};

use super::hosts::{HostError, Hosts};
use super::machines::{MachineError, Machines};
use crate::core::{Inner, Store, StoreError};

pub use scaler::{run_scaler, ScalerOptions, ScalerState};

/// A report older than this counts as no load.
pub const LOAD_STALE: Duration = Duration::from_secs(10);
/// Most apps one load report may carry.
pub const MAX_REPORT_APPS: usize = 10_000;
/// Most machines a region's policy may ask for.
pub const MAX_SCALE: u32 = 1000;

/// The latest load report of one host.
#[derive(Debug, Clone)]
struct HostLoad {
    region: String,
    at: Instant,
    apps: Vec<AppLoad>,
}

/// Why an autoscaling call failed.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// A policy or a load report is not valid.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The latest load report of each host (in memory: a restarted control plane waits for the
/// next reports).
#[derive(Debug, Default)]
struct Loads {
    loads: Mutex<HashMap<String, HostLoad>>,
}

/// The autoscaling service: load reports, policies, and the scaler with its memory.
#[derive(Debug)]
pub struct Autoscale {
    store: Arc<Store>,
    hosts: Arc<Hosts>,
    machines: Arc<Machines>,
    loads: Loads,
    scaler: Mutex<ScalerState>,
}

/// An app's load in one region, summed over the region's fresh reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    pub concurrency: u32,
    pub requests_per_second: f64,
}

impl Loads {
    fn record(&self, host: &str, region: &str, apps: Vec<AppLoad>) {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        loads.insert(
            host.to_owned(),
            HostLoad {
                region: region.to_owned(),
                at: Instant::now(),
                apps,
            },
        );
    }

    /// Per (app, region), the load of reports younger than [`LOAD_STALE`].
    pub fn demand(&self) -> HashMap<(String, String), Demand> {
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: HashMap<(String, String), Demand> = HashMap::new();
        for host in loads.values().filter(|h| h.at.elapsed() <= LOAD_STALE) {
            for app in &host.apps {
                let d = out
                    .entry((app.app.clone(), host.region.clone()))
                    .or_default();
                d.concurrency = d.concurrency.saturating_add(app.concurrency);
                if app.interval_ms > 0 {
                    d.requests_per_second += app.requests as f64 * 1000.0 / app.interval_ms as f64;
                }
            }
        }
        out
    }
}

/// Checks a policy: known regions, `min <= max <= MAX_SCALE`, a target of at least 1.
fn validate_policy(inner: &Inner, policy: &AutoscalePolicy) -> Result<(), AutoscaleError> {
    for (region, s) in &policy.regions {
        let known = inner.hosts().iter().any(|h| &h.region == region);
        if !known {
            return Err(AutoscaleError::Invalid(format!(
                "Region {region:?} has no host; autoscaling needs a region some host has joined"
            )));
        }
        if s.min > s.max {
            return Err(AutoscaleError::Invalid(format!(
                "Region {region:?}: min {} is above max {}",
                s.min, s.max
            )));
        }
        if s.max > MAX_SCALE {
            return Err(AutoscaleError::Invalid(format!(
                "Region {region:?}: max {} is above the limit of {MAX_SCALE} machines",
                s.max
            )));
        }
        if s.target_concurrency == 0 {
            return Err(AutoscaleError::Invalid(format!(
                "Region {region:?}: target_concurrency must be at least 1"
            )));
        }
    }
    Ok(())
}

fn validate_report(report: &LoadReport) -> Result<(), AutoscaleError> {
    if report.apps.len() > MAX_REPORT_APPS {
        return Err(AutoscaleError::Invalid(format!(
            "A load report carries {} apps; the limit is {MAX_REPORT_APPS}",
            report.apps.len()
        )));
    }
    if let Some(bad) = report.apps.iter().find(|a| a.app.is_empty()) {
        return Err(AutoscaleError::Invalid(format!(
            "A load report entry has an empty app name (concurrency {})",
            bad.concurrency
        )));
    }
    Ok(())
}

impl Autoscale {
    pub fn new(store: Arc<Store>, hosts: Arc<Hosts>, machines: Arc<Machines>) -> Autoscale {
        Autoscale {
            store,
            hosts,
            machines,
            loads: Loads::default(),
            scaler: Mutex::default(),
        }
    }

    fn scaler(&self) -> std::sync::MutexGuard<'_, ScalerState> {
        self.scaler.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a host's latest load report, attributed to the host's region.
    pub fn record_load(&self, host: &str, report: LoadReport) -> Result<(), AutoscaleError> {
        validate_report(&report)?;
        let region = self.hosts.region_of(host)?;
        self.loads.record(host, &region, report.apps);
        Ok(())
    }

    /// The app's policy (an empty one when it has none).
    pub fn policy(&self, app: &str) -> Result<AutoscalePolicy, AutoscaleError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        Ok(inner.db().autoscale_policy(app)?)
    }

    /// Replaces the app's policy; an empty one turns autoscaling off.
    pub fn set_policy(
        &self,
        app: &str,
        policy: AutoscalePolicy,
    ) -> Result<AutoscalePolicy, AutoscaleError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        validate_policy(&inner, &policy)?;
        inner.db().set_autoscale_policy(app, &policy)?;
        tracing::info!(app, regions = policy.regions.len(), "autoscale policy set");
        Ok(policy)
    }

    /// The app's live load and machines per region (every region with machines, load or a policy).
    pub fn app_load(&self, app: &str) -> Result<AppLoadStatus, AutoscaleError> {
        let (rows, policy) = {
            let inner = self.store.lock();
            let db = inner.db();
            db.require_app(app)?;
            (db.machines(app, false)?, db.autoscale_policy(app)?)
        };
        let demand = self.loads.demand();
        let desired = self.scaler().desired_of(app);
        let mut regions: BTreeMap<String, RegionLoad> = BTreeMap::new();
        for row in &rows {
            count_machine(slot(&mut regions, &row.region), row.state);
        }
        for ((a, region), d) in &demand {
            if a == app {
                let r = slot(&mut regions, region);
                r.concurrency = d.concurrency;
                r.requests_per_second = d.requests_per_second;
            }
        }
        for (region, scaling) in &policy.regions {
            let r = slot(&mut regions, region);
            r.scaling = Some(*scaling);
            r.desired = desired.get(region).copied();
        }
        Ok(AppLoadStatus {
            app: app.to_owned(),
            regions: regions.into_values().collect(),
        })
    }

    /// Live load and machines per region, summed over every app or only over `only`; every
    /// region with a host is listed.
    pub fn platform_load(&self, only: Option<&str>) -> Result<Vec<RegionLoad>, AutoscaleError> {
        let mut regions: BTreeMap<String, RegionLoad> = BTreeMap::new();
        let counts = {
            let inner = self.store.lock();
            for h in inner.hosts() {
                slot(&mut regions, &h.region);
            }
            inner.db().machine_counts(only)?
        };
        for (region, state, n) in counts {
            let r = slot(&mut regions, &region);
            if let Some(state) = MachineState::parse(&state) {
                for _ in 0..n {
                    count_machine(r, state);
                }
            }
        }
        for ((app, region), d) in self.loads.demand() {
            if only.is_some_and(|o| o != app) {
                continue;
            }
            let r = slot(&mut regions, &region);
            r.concurrency = r.concurrency.saturating_add(d.concurrency);
            r.requests_per_second += d.requests_per_second;
        }
        Ok(regions.into_values().collect())
    }
}

fn slot<'a>(regions: &'a mut BTreeMap<String, RegionLoad>, region: &str) -> &'a mut RegionLoad {
    regions
        .entry(region.to_owned())
        .or_insert_with(|| RegionLoad {
            region: region.to_owned(),
            ..RegionLoad::default()
        })
}

fn count_machine(r: &mut RegionLoad, state: MachineState) {
    if scaler::is_running(state) {
        r.started += 1;
    } else if matches!(state, MachineState::Stopped | MachineState::Suspended) {
        r.stopped += 1;
    }
}
