//! Per-app autoscaling policies, stored as JSON.

use aloft_api::AutoscalePolicy;
use rusqlite::{params, OptionalExtension};

use super::{now_rfc3339, Db};
use crate::core::error::StoreError;

impl Db<'_> {
    /// The stored policy of an app (empty when none).
    pub fn autoscale_policy(&self, app: &str) -> Result<AutoscalePolicy, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT policy FROM autoscale WHERE app = ?1", [app], |r| {
                r.get(0)
            })
            .optional()?;
        match text {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::encoding("autoscale policy", format!("{app}: {e}"))),
            None => Ok(AutoscalePolicy::default()),
        }
    }

    /// Every app with a non-empty policy; unreadable ones are logged and left out.
    pub fn autoscale_policies(&self) -> Result<Vec<(String, AutoscalePolicy)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT app, policy FROM autoscale ORDER BY app")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (app, text) = row?;
            match serde_json::from_str::<AutoscalePolicy>(&text) {
                Ok(policy) if !policy.regions.is_empty() => out.push((app, policy)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(app, error = %e, "ignoring an unreadable autoscale policy")
                }
            }
        }
        Ok(out)
    }

    /// Replaces the app's policy; an empty one removes it.
    pub fn set_autoscale_policy(
        &self,
        app: &str,
        policy: &AutoscalePolicy,
    ) -> Result<(), StoreError> {
        if policy.regions.is_empty() {
            self.conn
                .execute("DELETE FROM autoscale WHERE app = ?1", [app])?;
        } else {
            let text = serde_json::to_string(policy)
                .map_err(|e| StoreError::encoding("autoscale policy", e))?;
            self.conn.execute(
                "INSERT INTO autoscale (app, policy, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app) DO UPDATE SET policy = ?2, updated_at = ?3",
                params![app, text, now_rfc3339()],
            )?;
        }
        Ok(())
    }
}
