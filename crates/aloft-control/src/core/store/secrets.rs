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
            Ok(SecretInfo {
                name: r.get(0)?,
                digest: r.get(1)?,
                created_at: r.get(2)?,
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
}
