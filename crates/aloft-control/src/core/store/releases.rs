//! Releases: one numbered record per deploy of an app.

use std::collections::BTreeMap;

use aloft_api::{MachineConfig, Release, ReleaseStatus};
use rusqlite::{params, OptionalExtension as _, Row};

use super::{now_rfc3339, Db};
use crate::core::error::StoreError;

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

fn decode((mut release, configs): (Release, String)) -> Result<Release, StoreError> {
    release.configs = serde_json::from_str::<BTreeMap<String, MachineConfig>>(&configs)
        .map_err(|e| StoreError::encoding("release configs", e))?;
    Ok(release)
}

/// What a new release records.
#[derive(Debug, Clone, Copy)]
pub struct NewRelease<'a> {
    pub image: &'a str,
    pub configs: &'a BTreeMap<String, MachineConfig>,
    pub strategy: &'a str,
    pub description: &'a str,
    pub user: &'a str,
}

impl Db<'_> {
    /// Records a release (status `pending`) with the app's next version number; returns it.
    pub fn insert_release(&self, app: &str, new: NewRelease<'_>) -> Result<u64, StoreError> {
        let configs = serde_json::to_string(new.configs)
            .map_err(|e| StoreError::encoding("release configs", e))?;
        let version: i64 = self.conn.query_row(
            "SELECT coalesce(max(version), 0) + 1 FROM releases WHERE app = ?1",
            [app],
            |r| r.get(0),
        )?;
        self.conn.execute(
            "INSERT INTO releases (app, version, image, configs, strategy, status, reason, description, user,
                                   created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', NULL, ?6, ?7, ?8, ?8)",
            params![app, version, new.image, configs, new.strategy, new.description, new.user, now_rfc3339()],
        )?;
        Ok(version as u64)
    }

    /// One release of an app.
    pub fn release(&self, app: &str, version: u64) -> Result<Option<Release>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM releases WHERE app = ?1 AND version = ?2"),
                params![app, version as i64],
                from_row,
            )
            .optional()?
            .map(decode)
            .transpose()
    }

    /// The app's releases, newest first.
    pub fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError> {
        let rows: Vec<(Release, String)> = {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {COLUMNS} FROM releases WHERE app = ?1 ORDER BY version DESC"
            ))?;
            let rows = stmt.query_map([app], from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        rows.into_iter().map(decode).collect()
    }

    /// Sets a release's status, and its reason when one is given.
    pub fn set_release_status(
        &self,
        app: &str,
        version: u64,
        status: ReleaseStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE releases SET status = ?3, reason = coalesce(?4, reason), updated_at = ?5
             WHERE app = ?1 AND version = ?2",
            params![app, version as i64, status.as_str(), reason, now_rfc3339()],
        )?;
        Ok(())
    }
}
