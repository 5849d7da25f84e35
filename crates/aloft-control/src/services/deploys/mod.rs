//! Deploys run by the control plane: each one is an [`aloft_deploy::Deploy`] state machine
//! driven by a tracked task over the machines service, stored after every step so that it
//! continues when the CLI that started it goes away and resumes when the control plane
//! restarts. One deploy at a time per app; a cancel rolls it back.
//!
//! Followers (`…/events?follow=true`) read the stored state again whenever a deploy steps.

mod ops;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aloft_api::deploy::{DeployInfo, DeployPlan, DeployStatus};
use aloft_api::{CreateReleaseRequest, ReleaseStatus};
use aloft_deploy::Deploy;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::exec::Exec;
use super::machines::Machines;
use super::releases::{ReleaseError, Releases};
use crate::core::store::DeployRow;
use crate::core::{ids, Store, StoreError};
use ops::ControlOps;

/// Why a deploy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployServiceError {
    /// What the caller sent is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The app already has a deploy running.
    #[error("A deploy of app {app:?} is already running (deploy {id}, release v{version}); follow it with `aloft releases watch {version}` or cancel it with `aloft releases cancel {version}`")]
    Busy {
        app: String,
        id: String,
        version: u64,
    },
    #[error("Deploy {id:?} of app {app:?} not found")]
    NotFound { app: String, id: String },
    /// The deploy is over and cannot be cancelled.
    #[error("Deploy {id} is already {status}")]
    Finished { id: String, status: DeployStatus },
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("Deploy {id} cannot be read back")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A deploy being driven by this process.
struct Running {
    id: String,
    version: u64,
    cancel: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The deploy service.
pub struct Deploys {
    store: Arc<Store>,
    machines: Arc<Machines>,
    releases: Releases,
    /// By app.
    running: Mutex<HashMap<String, Running>>,
    /// Bumped whenever any deploy takes a step.
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for Deploys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deploys").finish_non_exhaustive()
    }
}

impl Deploys {
    pub fn new(store: Arc<Store>, machines: Arc<Machines>) -> Deploys {
        Deploys {
            releases: Releases::new(store.clone()),
            store,
            machines,
            running: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a release for `plan` and starts rolling it out; returns at once.
    pub fn start(
        self: &Arc<Self>,
        app: &str,
        plan: DeployPlan,
        user: &str,
    ) -> Result<DeployInfo, DeployServiceError> {
        check(&plan)?;
        let mut running = self.running();
        if let Some(r) = running.get(app) {
            return Err(DeployServiceError::Busy {
                app: app.to_owned(),
                id: r.id.clone(),
                version: r.version,
            });
        }
        let release = self.releases.create(
            app,
            &CreateReleaseRequest {
                image: plan.image.clone(),
                configs: plan.configs.clone(),
                strategy: plan.strategy.as_str().to_owned(),
                description: plan.description.clone(),
            },
            user,
        )?;
        self.releases
            .set_status(app, release.version, ReleaseStatus::Running.as_str(), None)?;
        let id = ids::short_id();
        let deploy = Deploy::new(&id, app, release.version, plan);
        self.save(&deploy)?;
        tracing::info!(%app, deploy = %id, version = release.version, "deploy started");
        let info = deploy.info();
        self.spawn(&mut running, deploy, user.to_owned());
        Ok(info)
    }

    /// Resumes every deploy a previous run of the control plane left unfinished.
    pub fn resume(self: &Arc<Self>) -> Result<usize, DeployServiceError> {
        let rows = self.store.lock().db().unfinished_deploys()?;
        let mut running = self.running();
        let mut resumed = 0;
        for row in rows {
            if running.contains_key(&row.app) {
                continue;
            }
            let deploy = decode(&row)?;
            tracing::info!(app = %row.app, deploy = %row.id, step = deploy.cursor(), "deploy resumed");
            self.spawn(&mut running, deploy, "deploy".to_owned());
            resumed += 1;
        }
        Ok(resumed)
    }

    fn spawn(
        self: &Arc<Self>,
        running: &mut HashMap<String, Running>,
        mut deploy: Deploy,
        owner: String,
    ) {
        let cancel = Arc::new(AtomicBool::new(false));
        let app = deploy.app.clone();
        running.insert(
            app.clone(),
            Running {
                id: deploy.id.clone(),
                version: deploy.version,
                cancel: cancel.clone(),
                task: None,
            },
        );
        let this = self.clone();
        let ops = ControlOps {
            machines: self.machines.clone(),
            owner,
            cancel,
            exec: Exec::new(self.machines.clone()),
        };
        let span = tracing::info_span!("deploy", app = %deploy.app, deploy = %deploy.id);
        let task = tokio::spawn(
            async move {
                this.drive(&mut deploy, &ops).await;
                this.finish(&deploy);
            }
            .instrument(span),
        );
        if let Some(r) = running.get_mut(&app) {
            r.task = Some(task);
        }
    }

    /// Takes the deploy's steps, storing it after each.
    async fn drive(&self, deploy: &mut Deploy, ops: &ControlOps) {
        loop {
            match deploy.advance(ops).await {
                Ok(more) => {
                    if let Err(e) = self.save(deploy) {
                        tracing::error!(error = %e, "deploy state not stored");
                    }
                    if !more {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "deploy stopped");
                    return;
                }
            }
        }
    }

    /// Records the outcome on the release and lets the app deploy again.
    fn finish(&self, deploy: &Deploy) {
        let (status, reason) = match deploy.status() {
            DeployStatus::Succeeded => (ReleaseStatus::Succeeded, None),
            _ => (ReleaseStatus::Failed, deploy.error_message()),
        };
        if let Err(e) = self.releases.set_status(
            &deploy.app,
            deploy.version,
            status.as_str(),
            reason.as_deref(),
        ) {
            tracing::error!(app = %deploy.app, error = %e, "release status not recorded");
        }
        tracing::info!(app = %deploy.app, deploy = %deploy.id, status = %deploy.status(), "deploy over");
        let mut running = self.running();
        if running.get(&deploy.app).is_some_and(|r| r.id == deploy.id) {
            running.remove(&deploy.app);
        }
        drop(running);
        self.changes.send_modify(|n| *n += 1);
    }

    fn save(&self, deploy: &Deploy) -> Result<(), DeployServiceError> {
        let state =
            serde_json::to_string(deploy).map_err(|source| DeployServiceError::Corrupt {
                id: deploy.id.clone(),
                source,
            })?;
        let row = DeployRow {
            id: deploy.id.clone(),
            app: deploy.app.clone(),
            version: deploy.version,
            status: deploy.status().as_str().to_owned(),
            state,
        };
        self.store.lock().transaction(|db| db.save_deploy(&row))?;
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// A deploy by id, or by the version of the release it rolls out (`v3` or `3`).
    pub fn get(&self, app: &str, id: &str) -> Result<DeployInfo, DeployServiceError> {
        let inner = self.store.lock();
        let db = inner.db();
        db.require_app(app)?;
        let version = id.strip_prefix('v').unwrap_or(id).parse::<u64>().ok();
        let row = match db.deploy(app, id)? {
            Some(row) => Some(row),
            None => match version {
                Some(v) => db.deploy_of_release(app, v)?,
                None => None,
            },
        };
        let row = row.ok_or_else(|| DeployServiceError::NotFound {
            app: app.to_owned(),
            id: id.to_owned(),
        })?;
        drop(inner);
        Ok(decode(&row)?.info())
    }

    /// Asks a running deploy to stop and roll back.
    pub fn cancel(&self, app: &str, id: &str) -> Result<DeployInfo, DeployServiceError> {
        let info = self.get(app, id)?;
        if info.status.is_final() {
            return Err(DeployServiceError::Finished {
                id: info.id,
                status: info.status,
            });
        }
        let running = self.running();
        match running.get(app) {
            Some(r) if r.id == info.id => r.cancel.store(true, Ordering::Relaxed),
            // Stored as running but not driven here (not resumed yet): nothing to stop.
            _ => {
                return Err(DeployServiceError::Finished {
                    id: info.id,
                    status: info.status,
                })
            }
        }
        tracing::info!(%app, deploy = %info.id, "deploy cancel requested");
        Ok(info)
    }

    /// A receiver that wakes whenever any deploy took a step.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How many deploys this process drives now.
    pub fn active(&self) -> usize {
        self.running().len()
    }

    /// Stops driving every deploy (they stay stored, to resume on the next start).
    pub fn abort_all(&self) {
        for r in self.running().values() {
            if let Some(task) = &r.task {
                task.abort();
            }
        }
    }
}

fn decode(row: &DeployRow) -> Result<Deploy, DeployServiceError> {
    serde_json::from_str(&row.state).map_err(|source| DeployServiceError::Corrupt {
        id: row.id.clone(),
        source,
    })
}

/// Refuses a plan that cannot be rolled out, with a message a person can act on.
fn check(plan: &DeployPlan) -> Result<(), DeployServiceError> {
    let invalid = |m: String| Err(DeployServiceError::Invalid(m));
    if plan.configs.is_empty() {
        return invalid("A deploy needs a machine config for at least one process group".into());
    }
    if plan.region.is_empty() {
        return invalid("A deploy needs a primary region".into());
    }
    if plan.wait_timeout_secs == 0 {
        return invalid("wait_timeout_secs must be at least 1".into());
    }
    if let aloft_api::deploy::MaxUnavailableSpec::Fraction(f) = plan.max_unavailable {
        if !(f > 0.0 && f < 1.0) {
            return invalid(format!(
                "max_unavailable {f} must be a fraction in (0, 1) or a count of at least 1"
            ));
        }
    }
    if plan.max_unavailable == aloft_api::deploy::MaxUnavailableSpec::Count(0) {
        return invalid(
            "max_unavailable must be a fraction in (0, 1) or a count of at least 1".into(),
        );
    }
    if let Some(rc) = &plan.release_command {
        aloft_deploy::release_argv(&rc.command)
            .map_err(|e| DeployServiceError::Invalid(e.to_string()))?;
    }
    if plan.strategy == aloft_api::deploy::DeployStrategy::Bluegreen
        && !plan.configs.values().any(|c| {
            c.checks.as_ref().is_some_and(|m| !m.is_empty())
                || c.services
                    .iter()
                    .flatten()
                    .any(|s| s.checks.as_ref().is_some_and(|v| !v.is_empty()))
        })
    {
        return invalid("The bluegreen strategy needs at least one health check".into());
    }
    Ok(())
}
