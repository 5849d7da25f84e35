//! Apps: creating, reading, listing and deleting (with everything that goes with them).

use aloft_api::{App, AppSummary, Organization};
use rusqlite::{params, OptionalExtension};

use super::{now_rfc3339, Db, DEFAULT_ORG};
use crate::core::error::StoreError;

impl Db<'_> {
    /// Creates an app; its name must be free.
    pub fn insert_app(&self, name: &str, org: &str, network: &str) -> Result<(), StoreError> {
        if self.app_exists(name)? {
            return Err(StoreError::AppExists(name.to_owned()));
        }
        self.conn.execute(
            "INSERT INTO apps (name, id, org_slug, network, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, crate::core::ids::short_id(), org, network, now_rfc3339()],
        )?;
        Ok(())
    }

    pub fn app_exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM apps WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The app.
    pub fn app(&self, name: &str) -> Result<App, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT a.id, a.org_slug, o.name,
                        EXISTS (SELECT 1 FROM machines m WHERE m.app = a.name AND m.state = 'started')
                 FROM apps a JOIN orgs o ON o.slug = a.org_slug WHERE a.name = ?1",
                [name],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, bool>(3)?)),
            )
            .optional()?;
        let (id, slug, org_name, deployed) =
            row.ok_or_else(|| StoreError::AppNotFound(name.to_owned()))?;
        Ok(App {
            id,
            name: name.to_owned(),
            organization: Organization {
                name: org_name,
                slug,
            },
            status: if deployed { "deployed" } else { "pending" }.to_owned(),
        })
    }

    /// Fails unless the app exists.
    pub fn require_app(&self, name: &str) -> Result<(), StoreError> {
        if self.app_exists(name)? {
            Ok(())
        } else {
            Err(StoreError::AppNotFound(name.to_owned()))
        }
    }

    /// Apps, optionally of one org or only one app, by name.
    pub fn list_apps(
        &self,
        org: Option<&str>,
        only: Option<&str>,
    ) -> Result<Vec<AppSummary>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT a.id, a.name, a.network,
                    (SELECT count(*) FROM machines m WHERE m.app = a.name AND m.state != 'destroyed')
             FROM apps a WHERE (?1 IS NULL OR a.org_slug = ?1) AND (?2 IS NULL OR a.name = ?2) ORDER BY a.name",
        )?;
        let rows = stmt.query_map(params![org, only], |r| {
            Ok(AppSummary {
                id: r.get(0)?,
                name: r.get(1)?,
                network: r.get(2)?,
                machine_count: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every app's name and org, by name.
    pub fn app_orgs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, org_slug FROM apps ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The org of an app (the default org for one that is gone).
    pub fn app_org(&self, app: &str) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT org_slug FROM apps WHERE name = ?1", [app], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or_else(|| DEFAULT_ORG.to_owned()))
    }

    /// Deletes an app with no machines left, its machines' history and its app and deploy tokens (its
    /// releases, secrets, certificates, policies and addresses go by trigger).
    pub fn delete_app(&self, name: &str) -> Result<(), StoreError> {
        self.require_app(name)?;
        let live: i64 = self.conn.query_row(
            "SELECT count(*) FROM machines WHERE app = ?1 AND state != 'destroyed'",
            [name],
            |r| r.get(0),
        )?;
        if live > 0 {
            return Err(StoreError::AppHasMachines {
                app: name.to_owned(),
                count: live,
            });
        }
        self.conn.execute(
            "DELETE FROM machine_events WHERE machine_id IN (SELECT id FROM machines WHERE app = ?1)",
            [name],
        )?;
        self.conn.execute(
            "DELETE FROM machine_versions WHERE machine_id IN (SELECT id FROM machines WHERE app = ?1)",
            [name],
        )?;
        self.conn
            .execute("DELETE FROM machines WHERE app = ?1", [name])?;
        self.conn.execute(
            "DELETE FROM tokens WHERE kind IN ('app', 'deploy') AND app = ?1",
            [name],
        )?;
        self.conn
            .execute("DELETE FROM apps WHERE name = ?1", [name])?;
        Ok(())
    }
}
