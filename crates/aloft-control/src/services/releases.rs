//! Releases: a numbered record per deploy of an app (image, per-group machine configs,
//! strategy, status). The CLI drives the rollout and reports the status back; the control
//! plane keeps the record. A server-side deploy engine (a persisted rollout state machine) is
//! meant to live next to this service and drive the machines service.

use std::sync::Arc;

use aloft_api::{CreateReleaseRequest, Release, ReleaseStatus};

use super::image::{parse_image_ref, ImageRefError};
use crate::core::store::NewRelease;
use crate::core::{Store, StoreError};

/// The strategies `aloft deploy` knows.
pub const STRATEGIES: &[&str] = &["rolling", "immediate", "canary", "bluegreen"];

/// Why a release operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// What the caller sent is not valid.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Image(#[from] ImageRefError),
    #[error("Release v{version} of app {app:?} not found")]
    NotFound { app: String, version: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The release service.
#[derive(Debug)]
pub struct Releases {
    store: Arc<Store>,
}

impl Releases {
    pub fn new(store: Arc<Store>) -> Releases {
        Releases { store }
    }

    /// Records a new release (status `pending`) with the next version number of the app,
    /// made by `user`.
    pub fn create(
        &self,
        app: &str,
        req: &CreateReleaseRequest,
        user: &str,
    ) -> Result<Release, ReleaseError> {
        parse_image_ref(&req.image)?;
        if !STRATEGIES.contains(&req.strategy.as_str()) {
            return Err(ReleaseError::Invalid(format!(
                "Strategy {:?} must be one of {}",
                req.strategy,
                STRATEGIES.join(", ")
            )));
        }
        if req.configs.is_empty() {
            return Err(ReleaseError::Invalid(
                "A release needs a machine config for at least one process group".to_owned(),
            ));
        }
        for (group, config) in &req.configs {
            if group.is_empty() {
                return Err(ReleaseError::Invalid(
                    "Process group name is empty".to_owned(),
                ));
            }
            parse_image_ref(&config.image)?;
        }
        let mut inner = self.store.lock();
        inner.db().require_app(app)?;
        let version = inner.transaction(|db| {
            db.insert_release(
                app,
                NewRelease {
                    image: &req.image,
                    configs: &req.configs,
                    strategy: &req.strategy,
                    description: &req.description,
                    user,
                },
            )
        })?;
        tracing::info!(%app, version, image = %req.image, "release created");
        get(&inner.db(), app, version)
    }

    /// The app's releases, newest first.
    pub fn list(&self, app: &str) -> Result<Vec<Release>, ReleaseError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        Ok(inner.db().releases(app)?)
    }

    pub fn get(&self, app: &str, version: u64) -> Result<Release, ReleaseError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        get(&inner.db(), app, version)
    }

    /// Sets a release's status (and the reason, for `failed`).
    pub fn set_status(
        &self,
        app: &str,
        version: u64,
        status: &str,
        reason: Option<&str>,
    ) -> Result<Release, ReleaseError> {
        let status = ReleaseStatus::parse(status).ok_or_else(|| {
            ReleaseError::Invalid(format!(
                "Release status {status:?} must be one of pending, running, succeeded, failed, rolled_back"
            ))
        })?;
        let inner = self.store.lock();
        let db = inner.db();
        db.require_app(app)?;
        get(&db, app, version)?;
        db.set_release_status(app, version, status, reason)?;
        tracing::info!(%app, version, %status, "release status");
        get(&db, app, version)
    }
}

fn get(db: &crate::core::Db<'_>, app: &str, version: u64) -> Result<Release, ReleaseError> {
    db.release(app, version)?
        .ok_or_else(|| ReleaseError::NotFound {
            app: app.to_owned(),
            version,
        })
}
