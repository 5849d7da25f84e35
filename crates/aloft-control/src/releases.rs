//! Releases: a numbered record per deploy of an app (image, per-group machine configs,
//! strategy, status). The CLI drives the rollout and reports the status back; the control
//! plane only keeps the record (moving orchestration here is later work).

use std::collections::BTreeMap;

use aloft_api::{CreateReleaseRequest, MachineConfig, Release, ReleaseStatus};
use rusqlite::{params, Connection, OptionalExtension as _, Row};

use crate::api::ApiError;
use crate::auth::TokenScope;
use crate::control::Control;
use crate::store::now_rfc3339;

/// The strategies `aloft deploy` knows.
pub const STRATEGIES: &[&str] = &["rolling", "immediate", "canary", "bluegreen"];

const COLUMNS: &str =
    "version, image, configs, strategy, status, reason, description, user, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Release, String)> {
    let configs: String = r.get(2)?;
    let status: String = r.get(4)?;
    Ok((
        Release {
            version: r.get::<_, i64>(0)? as u64,
            image: r.get(1)?,
            configs: BTreeMap::new(),
            strategy: r.get(3)?,
            status: ReleaseStatus::parse(&status).unwrap_or(ReleaseStatus::Failed),
            reason: r.get(5)?,
            description: r.get(6)?,
            user: r.get(7)?,
            created_at: r.get(8)?,
            updated_at: r.get(9)?,
        },
        configs,
    ))
}

fn decode((mut release, configs): (Release, String)) -> Result<Release, ApiError> {
    release.configs = serde_json::from_str::<BTreeMap<String, MachineConfig>>(&configs)
        .map_err(|e| ApiError::Internal(format!("Stored release configs do not parse: {e}")))?;
    Ok(release)
}

fn get(conn: &Connection, app: &str, version: u64) -> Result<Release, ApiError> {
    let row = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM releases WHERE app = ?1 AND version = ?2"),
            params![app, version as i64],
            from_row,
        )
        .optional()?
        .ok_or_else(|| {
            ApiError::NotFound(format!("Release v{version} of app {app:?} not found"))
        })?;
    decode(row)
}

impl Control {
    /// Records a new release (status `pending`) with the next version number of the app.
    pub fn create_release(
        &self,
        app: &str,
        req: &CreateReleaseRequest,
        scope: &TokenScope,
    ) -> Result<Release, ApiError> {
        crate::image::parse_image_ref(&req.image)?;
        if !STRATEGIES.contains(&req.strategy.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "Strategy {:?} must be one of {}",
                req.strategy,
                STRATEGIES.join(", ")
            )));
        }
        if req.configs.is_empty() {
            return Err(ApiError::BadRequest(
                "A release needs a machine config for at least one process group".to_owned(),
            ));
        }
        for (group, config) in &req.configs {
            if group.is_empty() {
                return Err(ApiError::BadRequest(
                    "Process group name is empty".to_owned(),
                ));
            }
            crate::image::parse_image_ref(&config.image)?;
        }
        let configs = serde_json::to_string(&req.configs)
            .map_err(|e| ApiError::Internal(format!("Cannot encode release configs: {e}")))?;
        let mut inner = self.lock();
        inner.get_app(app)?;
        let tx = inner.conn.transaction()?;
        let version: i64 = tx.query_row(
            "SELECT coalesce(max(version), 0) + 1 FROM releases WHERE app = ?1",
            [app],
            |r| r.get(0),
        )?;
        let now = now_rfc3339();
        tx.execute(
            "INSERT INTO releases (app, version, image, configs, strategy, status, reason, description, user,
                                   created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', NULL, ?6, ?7, ?8, ?8)",
            params![app, version, req.image, configs, req.strategy, req.description, scope.owner(), now],
        )?;
        tx.commit()?;
        tracing::info!(%app, version, image = %req.image, "release created");
        get(&inner.conn, app, version as u64)
    }

    /// The app's releases, newest first.
    pub fn list_releases(&self, app: &str) -> Result<Vec<Release>, ApiError> {
        let inner = self.lock();
        inner.get_app(app)?;
        let rows: Vec<(Release, String)> = {
            let mut stmt = inner.conn.prepare(&format!(
                "SELECT {COLUMNS} FROM releases WHERE app = ?1 ORDER BY version DESC"
            ))?;
            let rows = stmt.query_map([app], from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        rows.into_iter().map(decode).collect()
    }

    pub fn get_release(&self, app: &str, version: u64) -> Result<Release, ApiError> {
        let inner = self.lock();
        inner.get_app(app)?;
        get(&inner.conn, app, version)
    }

    /// Sets a release's status (and the reason, for `failed`).
    pub fn set_release_status(
        &self,
        app: &str,
        version: u64,
        status: &str,
        reason: Option<&str>,
    ) -> Result<Release, ApiError> {
        let status = ReleaseStatus::parse(status).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Release status {status:?} must be one of pending, running, succeeded, failed, rolled_back"
            ))
        })?;
        let inner = self.lock();
        inner.get_app(app)?;
        get(&inner.conn, app, version)?;
        inner.conn.execute(
            "UPDATE releases SET status = ?3, reason = coalesce(?4, reason), updated_at = ?5
             WHERE app = ?1 AND version = ?2",
            params![app, version as i64, status.as_str(), reason, now_rfc3339()],
        )?;
        tracing::info!(%app, version, %status, "release status");
        get(&inner.conn, app, version)
    }
}
