//! Demand-driven regional scaling: the load edges report per app, the per-app policies, and
//! the views `aloft status` and `aloft regions` show. The scaler itself is in [`scaler`].

pub mod scaler;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aloft_api::{AppLoad, AppLoadStatus, AutoscalePolicy, LoadReport, MachineState, RegionLoad};
use rusqlite::{params, OptionalExtension};

use crate::api::ApiError;
use crate::auth::TokenScope;
use crate::control::Control;
use crate::store::{now_rfc3339, Inner, MachineRow};

pub use scaler::{ScalerOptions, ScalerState};

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

/// Load reports (in memory: a restarted control plane waits for the next reports) and the
/// scaler's memory.
#[derive(Debug, Default)]
pub struct AutoscaleState {
    loads: Mutex<HashMap<String, HostLoad>>,
    pub(crate) scaler: Mutex<ScalerState>,
}

/// An app's load in one region, summed over the region's fresh reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    pub concurrency: u32,
    pub requests_per_second: f64,
}

impl AutoscaleState {
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
fn validate_policy(inner: &Inner, policy: &AutoscalePolicy) -> Result<(), ApiError> {
    for (region, s) in &policy.regions {
        let known = inner.hosts.iter().any(|h| &h.region == region);
        if !known {
            return Err(ApiError::BadRequest(format!(
                "Region {region:?} has no host; autoscaling needs a region some host has joined"
            )));
        }
        if s.min > s.max {
            return Err(ApiError::BadRequest(format!(
                "Region {region:?}: min {} is above max {}",
                s.min, s.max
            )));
        }
        if s.max > MAX_SCALE {
            return Err(ApiError::BadRequest(format!(
                "Region {region:?}: max {} is above the limit of {MAX_SCALE} machines",
                s.max
            )));
        }
        if s.target_concurrency == 0 {
            return Err(ApiError::BadRequest(format!(
                "Region {region:?}: target_concurrency must be at least 1"
            )));
        }
    }
    Ok(())
}

fn validate_report(report: &LoadReport) -> Result<(), ApiError> {
    if report.apps.len() > MAX_REPORT_APPS {
        return Err(ApiError::BadRequest(format!(
            "A load report carries {} apps; the limit is {MAX_REPORT_APPS}",
            report.apps.len()
        )));
    }
    if let Some(bad) = report.apps.iter().find(|a| a.app.is_empty()) {
        return Err(ApiError::BadRequest(format!(
            "A load report entry has an empty app name (concurrency {})",
            bad.concurrency
        )));
    }
    Ok(())
}

/// The stored policy of an app (empty when none).
pub(crate) fn load_policy(inner: &Inner, app: &str) -> Result<AutoscalePolicy, ApiError> {
    let text: Option<String> = inner
        .conn
        .query_row("SELECT policy FROM autoscale WHERE app = ?1", [app], |r| {
            r.get(0)
        })
        .optional()?;
    match text {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| ApiError::Internal(format!("Stored autoscale policy of {app}: {e}"))),
        None => Ok(AutoscalePolicy::default()),
    }
}

/// Every app with a non-empty policy.
pub(crate) fn all_policies(inner: &Inner) -> Result<Vec<(String, AutoscalePolicy)>, ApiError> {
    let mut stmt = inner
        .conn
        .prepare("SELECT app, policy FROM autoscale ORDER BY app")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (app, text) = row?;
        match serde_json::from_str::<AutoscalePolicy>(&text) {
            Ok(policy) if !policy.regions.is_empty() => out.push((app, policy)),
            Ok(_) => {}
            Err(e) => tracing::warn!(app, error = %e, "ignoring an unreadable autoscale policy"),
        }
    }
    Ok(out)
}

impl Control {
    /// Keeps a host's latest load report, attributed to the host's region.
    pub fn record_load(&self, host: &str, report: LoadReport) -> Result<(), ApiError> {
        validate_report(&report)?;
        let region = {
            let inner = self.lock();
            let i = *inner
                .host_index
                .get(host)
                .ok_or_else(|| ApiError::NotFound(format!("Host {host:?} is not registered")))?;
            inner.hosts[i].region.clone()
        };
        self.autoscale.record(host, &region, report.apps);
        Ok(())
    }

    /// The app's policy (an empty one when it has none).
    pub fn get_autoscale(&self, app: &str) -> Result<AutoscalePolicy, ApiError> {
        let inner = self.lock();
        inner.get_app(app)?;
        load_policy(&inner, app)
    }

    /// Replaces the app's policy; an empty one turns autoscaling off.
    pub fn set_autoscale(
        &self,
        app: &str,
        policy: AutoscalePolicy,
    ) -> Result<AutoscalePolicy, ApiError> {
        let inner = self.lock();
        inner.get_app(app)?;
        validate_policy(&inner, &policy)?;
        if policy.regions.is_empty() {
            inner
                .conn
                .execute("DELETE FROM autoscale WHERE app = ?1", [app])?;
        } else {
            let text = serde_json::to_string(&policy)
                .map_err(|e| ApiError::Internal(format!("Cannot encode a policy: {e}")))?;
            inner.conn.execute(
                "INSERT INTO autoscale (app, policy, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app) DO UPDATE SET policy = ?2, updated_at = ?3",
                params![app, text, now_rfc3339()],
            )?;
        }
        tracing::info!(app, regions = policy.regions.len(), "autoscale policy set");
        Ok(policy)
    }

    /// The app's live load and machines per region (every region with machines, load or a policy).
    pub fn app_load(&self, app: &str) -> Result<AppLoadStatus, ApiError> {
        let (rows, policy) = {
            let inner = self.lock();
            inner.get_app(app)?;
            (
                MachineRow::list(&inner.conn, app, false)?,
                load_policy(&inner, app)?,
            )
        };
        let demand = self.autoscale.demand();
        let desired = self
            .autoscale
            .scaler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .desired_of(app);
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

    /// Live load and machines per region, summed over the apps `scope` can see; every region
    /// with a host is listed.
    pub fn platform_load(&self, scope: &TokenScope) -> Result<Vec<RegionLoad>, ApiError> {
        let only = match scope {
            TokenScope::App(app) => Some(app.clone()),
            TokenScope::Admin => None,
            TokenScope::Join => {
                return Err(ApiError::Forbidden(
                    "A join token cannot read app load".to_owned(),
                ))
            }
        };
        let mut regions: BTreeMap<String, RegionLoad> = BTreeMap::new();
        let counts: Vec<(String, String, i64)> = {
            let inner = self.lock();
            for h in &inner.hosts {
                slot(&mut regions, &h.region);
            }
            let mut stmt = inner.conn.prepare(
                "SELECT region, state, count(*) FROM machines
                 WHERE state != 'destroyed' AND (?1 IS NULL OR app = ?1) GROUP BY region, state",
            )?;
            let rows = stmt.query_map(params![only], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (region, state, n) in counts {
            let r = slot(&mut regions, &region);
            if let Some(state) = MachineState::parse(&state) {
                for _ in 0..n {
                    count_machine(r, state);
                }
            }
        }
        for ((app, region), d) in self.autoscale.demand() {
            if only.as_ref().is_some_and(|o| o != &app) {
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
