//! Who a host is: join tokens (they only enrol; they expire or run out of uses) and the
//! per-host credential enrolment hands out (a random token bound to one host id, stored as
//! its sha256, revocable). Both are mirrored in memory so that a bearer resolves without the
//! store's lock, and a revocation takes effect on the next request.
//!
//! Lookups go by the sha256 of the presented secret. The secrets are 256 random bits, so
//! learning how a lookup of one hash compares to stored ones tells an attacker nothing about
//! a secret.

use std::collections::HashMap;
use std::sync::RwLock;

use aloft_api::{CreateJoinTokenRequest, JoinToken};

use super::{HostError, Hosts};
use crate::core::store::{unix_now, JoinTokenRow};
use crate::core::{Db, StoreError};
use crate::services::tokens::hash_token;

/// The longest a join token may live: 30 days.
pub const MAX_JOIN_TTL_SECS: u64 = 30 * 86_400;
/// How long a join token lives when the operator gives neither a lifetime nor a use count.
pub const DEFAULT_JOIN_TTL_SECS: u64 = 3_600;

/// What a presented secret is to the hosts service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPrincipal {
    /// A join token that may still enrol a host.
    Join,
    /// The credential of this host.
    Host(String),
}

/// The host credentials and limited join tokens, by hash.
#[derive(Debug, Default)]
pub(super) struct HostAuth {
    credentials: HashMap<[u8; 32], String>,
    joins: HashMap<[u8; 32], JoinTokenRow>,
}

impl HostAuth {
    fn lock_read(this: &RwLock<HostAuth>) -> std::sync::RwLockReadGuard<'_, HostAuth> {
        this.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_write(this: &RwLock<HostAuth>) -> std::sync::RwLockWriteGuard<'_, HostAuth> {
        this.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fresh host credential: `aloft_host_` and 256 random bits in hex.
fn new_credential() -> String {
    format!(
        "aloft_host_{}",
        crate::core::ids::token().trim_start_matches("aloft_")
    )
}

impl Hosts {
    /// Reads every host credential and live join token from the store.
    pub fn load_credentials(&self) -> Result<(), StoreError> {
        let inner = self.store.lock();
        let db = inner.db();
        let credentials = db.host_credentials()?.into_iter().collect();
        let joins = db
            .join_tokens(unix_now())?
            .into_iter()
            .map(|row| (row.hash, row))
            .collect();
        *HostAuth::lock_write(&self.auth) = HostAuth { credentials, joins };
        Ok(())
    }

    /// The principal of a bearer secret: a host's credential, or a join token that has not
    /// expired and has uses left. `None` otherwise.
    /// Whether host `host` still holds a credential (not revoked, not removed).
    pub fn holds_credential(&self, host: &str) -> bool {
        HostAuth::lock_read(&self.auth)
            .credentials
            .values()
            .any(|h| h == host)
    }

    pub fn authenticate(&self, bearer: &str) -> Option<HostPrincipal> {
        let hash = hash_token(bearer);
        let auth = HostAuth::lock_read(&self.auth);
        if let Some(host) = auth.credentials.get(&hash) {
            return Some(HostPrincipal::Host(host.clone()));
        }
        let join = auth.joins.get(&hash)?;
        let live = join.expires_at.is_none_or(|at| at > unix_now())
            && join.uses_left.is_none_or(|n| n > 0);
        live.then_some(HostPrincipal::Join)
    }

    /// Issues a join token that expires after `ttl_secs` and/or enrols at most `uses` hosts
    /// (with neither, it expires after an hour).
    pub fn create_join_token(&self, req: &CreateJoinTokenRequest) -> Result<JoinToken, HostError> {
        if let Some(ttl) = req.ttl_secs {
            if !(1..=MAX_JOIN_TTL_SECS).contains(&ttl) {
                return Err(HostError::Invalid(format!(
                    "Join token ttl_secs {ttl} must be between 1 and {MAX_JOIN_TTL_SECS} (30 days)"
                )));
            }
        }
        if let Some(uses) = req.uses {
            if !(1..=10_000).contains(&uses) {
                return Err(HostError::Invalid(format!(
                    "Join token uses {uses} must be between 1 and 10000"
                )));
            }
        }
        let ttl = match (req.ttl_secs, req.uses) {
            (None, None) => Some(DEFAULT_JOIN_TTL_SECS),
            (ttl, _) => ttl,
        };
        let expires_at = ttl.map(|t| unix_now() + i64::try_from(t).unwrap_or(i64::MAX / 2));
        let uses = req.uses.map(i64::from);
        let token = crate::core::ids::token();
        let hash = hash_token(&token);
        self.store
            .lock()
            .db()
            .insert_join_token(hash, expires_at, uses)?;
        HostAuth::lock_write(&self.auth).joins.insert(
            hash,
            JoinTokenRow {
                hash,
                expires_at,
                uses_left: uses,
            },
        );
        Ok(JoinToken {
            token,
            expires_at: expires_at.and_then(|at| {
                chrono::DateTime::from_timestamp(at, 0)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }),
            uses: req.uses,
        })
    }

    /// Takes one use of the join token `bearer` (through the caller's locked store); a join
    /// token from the token service (no limits) has none to take.
    pub(super) fn use_join_token(&self, db: Db<'_>, bearer: &str) -> Result<(), HostError> {
        let hash = hash_token(bearer);
        let Some(row) = db.use_join_token(hash)? else {
            return Ok(());
        };
        let mut auth = HostAuth::lock_write(&self.auth);
        if row.uses_left.is_some_and(|n| n <= 0) {
            auth.joins.remove(&hash);
        } else {
            auth.joins.insert(hash, row);
        }
        Ok(())
    }

    /// Gives `host` a fresh credential (through the caller's locked store), replacing any it
    /// had, and returns it.
    pub(super) fn issue_credential(&self, db: Db<'_>, host: &str) -> Result<String, HostError> {
        let credential = new_credential();
        let hash = hash_token(&credential);
        db.set_host_credential(host, hash)?;
        let mut auth = HostAuth::lock_write(&self.auth);
        auth.credentials.retain(|_, h| h != host);
        auth.credentials.insert(hash, host.to_owned());
        Ok(credential)
    }

    /// Forgets every credential of `host` in memory (the store's row is already gone).
    pub(super) fn forget_credential(&self, host: &str) {
        HostAuth::lock_write(&self.auth)
            .credentials
            .retain(|_, h| h != host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_long_random_and_distinct() {
        let a = new_credential();
        let b = new_credential();
        assert!(a.starts_with("aloft_host_"));
        assert_eq!(a.len(), "aloft_host_".len() + 64);
        assert_ne!(a, b);
    }
}
