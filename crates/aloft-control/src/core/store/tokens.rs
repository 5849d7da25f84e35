//! Token hashes (the tokens themselves are never stored) and organisations.

use aloft_api::OrgInfo;
use rusqlite::{params, OptionalExtension};

use super::{now_rfc3339, Db};
use crate::core::error::StoreError;

/// A stored token: everything but the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// The sha256 of the token.
    pub hash: [u8; 32],
    pub id: String,
    /// `admin`, `org`, `app`, `deploy` or `join`.
    pub kind: String,
    pub app: Option<String>,
    pub org: Option<String>,
    pub name: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
}

impl Db<'_> {
    /// Creates the organisation unless it exists.
    pub fn ensure_org(&self, slug: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO orgs (slug, name, created_at) VALUES (?1, ?1, ?2)",
            params![slug, now_rfc3339()],
        )?;
        Ok(())
    }

    /// Creates an organisation; its slug must be free.
    pub fn insert_org(&self, slug: &str, name: &str) -> Result<(), StoreError> {
        if self.org_exists(slug)? {
            return Err(StoreError::OrgExists(slug.to_owned()));
        }
        self.conn.execute(
            "INSERT INTO orgs (slug, name, created_at) VALUES (?1, ?2, ?3)",
            params![slug, name, now_rfc3339()],
        )?;
        Ok(())
    }

    pub fn org_exists(&self, slug: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM orgs WHERE slug = ?1", [slug], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Organisations with their app counts, by slug (only `only` when given).
    pub fn list_orgs(&self, only: Option<&str>) -> Result<Vec<OrgInfo>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT o.slug, o.name, (SELECT count(*) FROM apps a WHERE a.org_slug = o.slug)
             FROM orgs o WHERE (?1 IS NULL OR o.slug = ?1) ORDER BY o.slug",
        )?;
        let rows = stmt.query_map(params![only], |r| {
            Ok(OrgInfo {
                slug: r.get(0)?,
                name: r.get(1)?,
                app_count: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes an organisation without apps, and its org tokens.
    pub fn delete_org(&self, slug: &str) -> Result<(), StoreError> {
        if !self.org_exists(slug)? {
            return Err(StoreError::OrgNotFound(slug.to_owned()));
        }
        let apps: i64 = self.conn.query_row(
            "SELECT count(*) FROM apps WHERE org_slug = ?1",
            [slug],
            |r| r.get(0),
        )?;
        if apps > 0 {
            return Err(StoreError::OrgHasApps {
                org: slug.to_owned(),
                count: apps,
            });
        }
        self.conn
            .execute("DELETE FROM tokens WHERE kind = 'org' AND org = ?1", [slug])?;
        self.conn
            .execute("DELETE FROM orgs WHERE slug = ?1", [slug])?;
        Ok(())
    }

    /// How many tokens of `kind` exist.
    pub fn count_tokens(&self, kind: &str) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM tokens WHERE kind = ?1", [kind], |r| {
                r.get(0)
            })?)
    }

    /// Every stored token by creation (rows whose hash is not 32 bytes are left out).
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT hash, id, kind, app, org, name, created_at, expires_at, last_used_at
             FROM tokens ORDER BY created_at, id",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let hash: Vec<u8> = row.get(0)?;
            if let Ok(hash) = <[u8; 32]>::try_from(hash) {
                out.push(TokenRow {
                    hash,
                    id: row.get(1)?,
                    kind: row.get(2)?,
                    app: row.get(3)?,
                    org: row.get(4)?,
                    name: row.get(5)?,
                    created_at: row.get(6)?,
                    expires_at: row.get(7)?,
                    last_used_at: row.get(8)?,
                });
            }
        }
        Ok(out)
    }

    /// Stores a new token's hash and what it may do (`created_at` and `last_used_at` are
    /// set here).
    pub fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tokens (hash, id, kind, app, org, name, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.hash.to_vec(),
                row.id,
                row.kind,
                row.app,
                row.org,
                row.name,
                now_rfc3339(),
                row.expires_at
            ],
        )?;
        Ok(())
    }

    /// Deletes a token by id.
    pub fn delete_token(&self, id: &str) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM tokens WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(StoreError::TokenNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Records when tokens were last used (ids that are gone are skipped).
    pub fn touch_tokens(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("UPDATE tokens SET last_used_at = ?2 WHERE id = ?1")?;
        for (id, at) in used {
            stmt.execute(params![id, at])?;
        }
        Ok(())
    }
}
