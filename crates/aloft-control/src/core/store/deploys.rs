//! Deploys run by the control plane: one row per deploy, its state as the engine serialised it.

use rusqlite::{params, OptionalExtension as _};

use super::{now_rfc3339, Db};
use crate::core::error::StoreError;

/// A stored deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRow {
    pub id: String,
    pub app: String,
    pub version: u64,
    /// `running`, `rolling_back`, `succeeded`, `failed`, `cancelled`.
    pub status: String,
    /// The engine's state, JSON.
    pub state: String,
}

const COLUMNS: &str = "id, app, version, status, state";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeployRow> {
    Ok(DeployRow {
        id: r.get(0)?,
        app: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        status: r.get(3)?,
        state: r.get(4)?,
    })
}

impl Db<'_> {
    /// Inserts or replaces a deploy's row.
    pub fn save_deploy(&self, row: &DeployRow) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.conn.execute(
            "INSERT INTO deploys (id, app, version, status, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state,
                updated_at = excluded.updated_at",
            params![
                row.id,
                row.app,
                row.version as i64,
                row.status,
                row.state,
                now
            ],
        )?;
        Ok(())
    }

    /// One deploy of an app.
    pub fn deploy(&self, app: &str, id: &str) -> Result<Option<DeployRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM deploys WHERE app = ?1 AND id = ?2"),
                params![app, id],
                from_row,
            )
            .optional()?)
    }

    /// An app's deploy of release `version` (the newest, should there be several).
    pub fn deploy_of_release(
        &self,
        app: &str,
        version: u64,
    ) -> Result<Option<DeployRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM deploys WHERE app = ?1 AND version = ?2
                     ORDER BY created_at DESC LIMIT 1"
                ),
                params![app, version as i64],
                from_row,
            )
            .optional()?)
    }

    /// Deploys that are not over (to resume on start).
    pub fn unfinished_deploys(&self) -> Result<Vec<DeployRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM deploys WHERE status IN ('running', 'rolling_back') ORDER BY created_at"
        ))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
