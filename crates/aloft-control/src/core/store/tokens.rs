//! Token hashes (the tokens themselves are never stored) and organisations.

use rusqlite::{params, OptionalExtension};

use super::{now_rfc3339, Db};
use crate::core::error::StoreError;

/// A stored token: its sha256, its kind (`admin`, `app`, `join`) and its app.
pub type TokenRow = ([u8; 32], String, Option<String>);

impl Db<'_> {
    /// Creates the organisation unless it exists.
    pub fn ensure_org(&self, slug: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO orgs (slug, name) VALUES (?1, ?1)",
            params![slug],
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

    /// How many tokens of `kind` exist.
    pub fn count_tokens(&self, kind: &str) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM tokens WHERE kind = ?1", [kind], |r| {
                r.get(0)
            })?)
    }

    /// Every stored token (rows whose hash is not 32 bytes are left out).
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT hash, kind, app FROM tokens")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let hash: Vec<u8> = row.get(0)?;
            if let Ok(hash) = <[u8; 32]>::try_from(hash) {
                out.push((hash, row.get(1)?, row.get(2)?));
            }
        }
        Ok(out)
    }

    /// Stores a new token's hash.
    pub fn insert_token(
        &self,
        hash: [u8; 32],
        kind: &str,
        app: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tokens (hash, kind, app, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash.to_vec(), kind, app, now_rfc3339()],
        )?;
        Ok(())
    }
}
