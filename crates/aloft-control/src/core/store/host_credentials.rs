//! Per-host credentials (only their sha256 is stored), join tokens with an expiry and a use
//! count, revoked hosts, and removing a host.

use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension};

use super::{now_rfc3339, Db, Inner};
use crate::core::error::StoreError;

/// What the store knows of a host id before it registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRecord {
    /// The operator revoked its credential; only the operator may bring it back.
    pub revoked: bool,
    /// It holds a credential.
    pub has_credential: bool,
}

/// A stored join token: when it expires (Unix seconds) and how many enrolments it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinTokenRow {
    pub hash: [u8; 32],
    pub expires_at: Option<i64>,
    pub uses_left: Option<i64>,
}

impl Db<'_> {
    /// Whether a host id is registered, revoked, and holds a credential.
    pub fn host_record(&self, id: &str) -> Result<Option<HostRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT coalesce(f.revoked, 0), c.host_id IS NOT NULL FROM hosts h
                 LEFT JOIN host_credentials c ON c.host_id = h.id
                 LEFT JOIN host_flags f ON f.host_id = h.id WHERE h.id = ?1",
                [id],
                |r| {
                    Ok(HostRecord {
                        revoked: r.get::<_, i64>(0)? != 0,
                        has_credential: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every host credential's hash with its host.
    pub fn host_credentials(&self) -> Result<Vec<([u8; 32], String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT hash, host_id FROM host_credentials")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let hash: Vec<u8> = row.get(0)?;
            if let Ok(hash) = <[u8; 32]>::try_from(hash) {
                out.push((hash, row.get(1)?));
            }
        }
        Ok(out)
    }

    /// Gives a host a credential, replacing the one it had.
    pub fn set_host_credential(&self, host: &str, hash: [u8; 32]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO host_credentials (host_id, hash, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (host_id) DO UPDATE SET hash = ?2, created_at = ?3",
            params![host, hash.to_vec(), now_rfc3339()],
        )?;
        Ok(())
    }

    /// Marks a host revoked (or not) and, when revoking, drops its credential. False for an
    /// unknown host.
    pub fn set_host_revoked(&self, host: &str, revoked: bool) -> Result<bool, StoreError> {
        let known = self
            .conn
            .query_row("SELECT 1 FROM hosts WHERE id = ?1", [host], |_| Ok(()))
            .optional()?
            .is_some();
        if !known {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT INTO host_flags (host_id, revoked) VALUES (?1, ?2)
             ON CONFLICT (host_id) DO UPDATE SET revoked = ?2",
            params![host, i64::from(revoked)],
        )?;
        if revoked {
            self.conn
                .execute("DELETE FROM host_credentials WHERE host_id = ?1", [host])?;
        }
        Ok(true)
    }

    /// The revoked hosts' ids.
    pub fn revoked_hosts(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT host_id FROM host_flags WHERE revoked != 0")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many machines that are not destroyed are placed on a host.
    pub fn live_machines_on_host(&self, host: &str) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM machines WHERE host_id = ?1 AND state != 'destroyed'",
            [host],
            |r| r.get(0),
        )?)
    }

    /// The host index of a registered host.
    pub fn host_index_of(&self, host: &str) -> Result<Option<u32>, StoreError> {
        let index: Option<Option<i64>> = self
            .conn
            .query_row("SELECT host_index FROM hosts WHERE id = ?1", [host], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(index.flatten().and_then(|i| u32::try_from(i).ok()))
    }

    /// Stores a new join token's hash.
    pub fn insert_join_token(
        &self,
        hash: [u8; 32],
        expires_at: Option<i64>,
        uses: Option<i64>,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO join_tokens (hash, expires_at, uses_left, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash.to_vec(), expires_at, uses, now_rfc3339()],
        )?;
        Ok(())
    }

    /// Every join token that is neither expired at `now` nor used up.
    pub fn join_tokens(&self, now: i64) -> Result<Vec<JoinTokenRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT hash, expires_at, uses_left FROM join_tokens
             WHERE (expires_at IS NULL OR expires_at > ?1) AND (uses_left IS NULL OR uses_left > 0)",
        )?;
        let mut rows = stmt.query([now])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let hash: Vec<u8> = row.get(0)?;
            if let Ok(hash) = <[u8; 32]>::try_from(hash) {
                out.push(JoinTokenRow {
                    hash,
                    expires_at: row.get(1)?,
                    uses_left: row.get(2)?,
                });
            }
        }
        Ok(out)
    }

    /// Takes one use of a join token; the row as it is after, or `None` if it is unknown.
    pub fn use_join_token(&self, hash: [u8; 32]) -> Result<Option<JoinTokenRow>, StoreError> {
        self.conn.execute(
            "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE hash = ?1 AND uses_left > 0",
            [hash.to_vec()],
        )?;
        Ok(self
            .conn
            .query_row(
                "SELECT expires_at, uses_left FROM join_tokens WHERE hash = ?1",
                [hash.to_vec()],
                |r| {
                    Ok(JoinTokenRow {
                        hash,
                        expires_at: r.get(0)?,
                        uses_left: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }
}

/// An instant long enough ago that a host last seen then is down.
fn long_ago(now: Instant) -> Instant {
    [86_400, 3_600, 60]
        .into_iter()
        .find_map(|secs| now.checked_sub(Duration::from_secs(secs)))
        .unwrap_or(now)
}

impl Inner {
    /// Counts a host as silent since long ago (a revoked host is down at once).
    pub fn mark_host_down(&mut self, id: &str) {
        if let Some(&i) = self.host_index.get(id) {
            self.hosts[i].last_seen = long_ago(Instant::now());
        }
    }

    /// Drains a host (no new placements) or takes it back. False for an unknown host.
    pub fn set_host_draining(&mut self, id: &str, draining: bool) -> Result<bool, StoreError> {
        let Some(&i) = self.host_index.get(id) else {
            return Ok(false);
        };
        self.conn.execute(
            "INSERT INTO host_flags (host_id, draining) VALUES (?1, ?2)
             ON CONFLICT (host_id) DO UPDATE SET draining = ?2",
            params![id, i64::from(draining)],
        )?;
        self.hosts[i].draining = draining;
        Ok(true)
    }

    /// Forgets a host: its row, agent API secret, credential and in-memory views.
    pub fn remove_host(&mut self, id: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let removed = tx.execute("DELETE FROM hosts WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM host_secrets WHERE host_id = ?1", [id])?;
        tx.execute("DELETE FROM host_credentials WHERE host_id = ?1", [id])?;
        tx.execute("DELETE FROM host_flags WHERE host_id = ?1", [id])?;
        tx.commit()?;
        if let Some(i) = self.host_index.remove(id) {
            self.hosts.remove(i);
            for (_, at) in self.host_index.iter_mut() {
                if *at > i {
                    *at -= 1;
                }
            }
        }
        self.edge_addresses.remove(id);
        self.host_revision.remove(id);
        for app in self.host_apps.remove(id).unwrap_or_default() {
            if let Some(per_host) = self.app_hosts.get_mut(&app) {
                per_host.remove(id);
                if per_host.is_empty() {
                    self.app_hosts.remove(&app);
                }
            }
        }
        Ok(removed > 0)
    }

    /// The apps with a machine that is not destroyed on the host.
    pub fn apps_on_host(&self, id: &str) -> Vec<String> {
        self.host_apps.get(id).cloned().unwrap_or_default()
    }
}
