//! App secrets as stored: sealed values (the service seals and opens them) and digests.

use aloft_api::SecretInfo;
use rusqlite::params;

use super::Db;
use crate::core::error::StoreError;

/// A sealed secret value.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub name: String,
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
}

impl Db<'_> {
    /// The app's sealed secrets, by name.
    pub fn sealed_secrets(&self, app: &str) -> Result<Vec<SealedSecret>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, nonce, ciphertext FROM secrets WHERE app = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([app], |r| {
            Ok(SealedSecret {
                name: r.get(0)?,
                nonce: r.get(1)?,
                sealed: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Names and digests of the app's secrets, by name.
    pub fn secrets(&self, app: &str) -> Result<Vec<SecretInfo>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, digest, created_at FROM secrets WHERE app = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([app], |r| {
            let changed: String = r.get(2)?;
            Ok(SecretInfo {
                name: r.get(0)?,
                digest: r.get(1)?,
                updated_at: changed.clone(),
                created_at: changed,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets (or replaces) one sealed secret.
    pub fn put_secret(
        &self,
        app: &str,
        secret: &SealedSecret,
        digest: &str,
        created_at: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO secrets (app, name, nonce, ciphertext, digest, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (app, name) DO UPDATE SET nonce = ?3, ciphertext = ?4, digest = ?5, created_at = ?6",
            params![app, secret.name, secret.nonce, secret.sealed, digest, created_at],
        )?;
        Ok(())
    }

    /// Removes one secret; returns whether it existed.
    pub fn delete_secret(&self, app: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM secrets WHERE app = ?1 AND name = ?2",
            params![app, name],
        )? > 0)
    }

    /// The app's secrets version: it grows by one with every change of its secrets.
    pub fn secrets_version(&self, app: &str) -> Result<u64, StoreError> {
        let version: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [secrets_version_key(app)],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        Ok(version.unwrap_or(0) as u64)
    }

    /// Counts one change of the app's secrets and returns the new version.
    pub fn bump_secrets_version(&self, app: &str) -> Result<u64, StoreError> {
        let version: i64 = self.conn.query_row(
            "INSERT INTO meta (key, value) VALUES (?1, 1)
             ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
            [secrets_version_key(app)],
            |r| r.get(0),
        )?;
        Ok(version as u64)
    }
}

/// Versions live in `meta`; a recreated app continues from where its name left off, so a
/// version never repeats.
fn secrets_version_key(app: &str) -> String {
    format!("secrets_version:{app}")
}
