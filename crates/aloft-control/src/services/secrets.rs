//! App secrets, encrypted at rest with ChaCha20-Poly1305 under the data directory's key
//! (`core::keys`). Each value gets a random nonce and is bound to its app and name as
//! associated data, so a ciphertext copied to another row does not decrypt. Only agents get
//! values back (with their machine assignments); the API lists names and keyed digests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aloft_api::{AppSecrets, SecretInfo};
use sha2::{Digest as _, Sha256};

use crate::core::keys::{self, KeyError};
use crate::core::store::SealedSecret;
use crate::core::{now_rfc3339, Db, Store, StoreError};

/// Why a secret could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// What the caller sent is not valid.
    #[error("{0}")]
    Invalid(String),
    #[error("Secret {name:?} of app {app:?} not found")]
    NotFound { app: String, name: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("Secret {name:?} of app {app:?} does not decrypt with the current key")]
    Decrypt { app: String, name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn aad(app: &str, name: &str) -> Vec<u8> {
    format!("aloft-secret\0{app}\0{name}").into_bytes()
}

/// A digest that identifies a value without revealing it (keyed, so guesses need the key).
fn digest(key: &[u8; 32], value: &str) -> String {
    let mut h = Sha256::new();
    h.update(key);
    h.update(value.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// Every secret of `app`, decrypted (for agents' assignments), read through `db`.
pub fn decrypt_all(
    db: Db<'_>,
    data_dir: &Path,
    app: &str,
) -> Result<BTreeMap<String, String>, SecretsError> {
    let rows = db.sealed_secrets(app)?;
    if rows.is_empty() {
        return Ok(BTreeMap::new());
    }
    let key = keys::load_or_create_key(&keys::key_path(data_dir))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let fail = || SecretsError::Decrypt {
            app: app.to_owned(),
            name: row.name.clone(),
        };
        let plain =
            keys::open(&key, &aad(app, &row.name), &row.nonce, &row.sealed).ok_or_else(fail)?;
        let value = String::from_utf8(plain).map_err(|_| fail())?;
        out.insert(row.name, value);
    }
    Ok(out)
}

/// A secret name: an environment variable name not reserved by the platform.
pub fn validate_name(name: &str) -> Result<(), SecretsError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(SecretsError::Invalid(format!(
            "Secret name {name:?} must be letters, digits and '_', not starting with a digit"
        )));
    }
    if name.starts_with("FLY_") || name.starts_with("ALOFT_") {
        return Err(SecretsError::Invalid(format!(
            "Secret name {name:?} is reserved: FLY_ and ALOFT_ names are set by the platform"
        )));
    }
    Ok(())
}

/// The secrets service.
#[derive(Debug)]
pub struct Secrets {
    store: Arc<Store>,
}

impl Secrets {
    pub fn new(store: Arc<Store>) -> Secrets {
        Secrets { store }
    }

    /// Names and digests of an app's secrets, and their version.
    pub fn list(&self, app: &str) -> Result<AppSecrets, SecretsError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        current(&inner.db(), app)
    }

    /// One secret's name and digest.
    pub fn get(&self, app: &str, name: &str) -> Result<SecretInfo, SecretsError> {
        self.list(app)?
            .secrets
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| SecretsError::NotFound {
                app: app.to_owned(),
                name: name.to_owned(),
            })
    }

    /// Sets (or replaces) secrets, and removes those given as `None`; every value is
    /// encrypted before it reaches the store. One change, one new version.
    pub fn set(
        &self,
        app: &str,
        values: &BTreeMap<String, Option<String>>,
    ) -> Result<AppSecrets, SecretsError> {
        if values.is_empty() {
            return Err(SecretsError::Invalid("No secrets given".to_owned()));
        }
        for (name, value) in values {
            validate_name(name)?;
            if value.as_ref().is_some_and(|v| v.len() > 64 * 1024) {
                return Err(SecretsError::Invalid(format!(
                    "Secret {name:?} is larger than 64 KiB"
                )));
            }
        }
        let mut inner = self.store.lock();
        inner.db().require_app(app)?;
        let key = keys::load_or_create_key(&keys::key_path(self.store.data_dir()))?;
        let now = now_rfc3339();
        inner.transaction(|db| {
            for (name, value) in values {
                let Some(value) = value else {
                    db.delete_secret(app, name)?;
                    continue;
                };
                let (nonce, sealed) = keys::seal(&key, &aad(app, name), value.as_bytes());
                let secret = SealedSecret {
                    name: name.clone(),
                    nonce,
                    sealed,
                };
                db.put_secret(app, &secret, &digest(&key, value), &now)?;
            }
            db.bump_secrets_version(app)?;
            Ok::<_, SecretsError>(())
        })?;
        tracing::info!(%app, count = values.len(), "secrets set");
        current(&inner.db(), app)
    }

    /// Removes secrets; unknown names fail and nothing is removed.
    pub fn unset(&self, app: &str, names: &[String]) -> Result<AppSecrets, SecretsError> {
        if names.is_empty() {
            return Err(SecretsError::Invalid("No secret names given".to_owned()));
        }
        let mut inner = self.store.lock();
        inner.db().require_app(app)?;
        inner.transaction(|db| {
            for name in names {
                if !db.delete_secret(app, name)? {
                    return Err(SecretsError::NotFound {
                        app: app.to_owned(),
                        name: name.clone(),
                    });
                }
            }
            db.bump_secrets_version(app)?;
            Ok(())
        })?;
        current(&inner.db(), app)
    }
}

fn current(db: &Db<'_>, app: &str) -> Result<AppSecrets, SecretsError> {
    Ok(AppSecrets {
        secrets: db.secrets(app)?,
        version: db.secrets_version(app)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_own_name() {
        let key = [7u8; 32];
        let (nonce, sealed) = keys::seal(&key, &aad("web", "TOKEN"), b"hunter2");
        assert_eq!(
            keys::open(&key, &aad("web", "TOKEN"), &nonce, &sealed).as_deref(),
            Some(&b"hunter2"[..])
        );
        assert!(keys::open(&key, &aad("web", "OTHER"), &nonce, &sealed).is_none());
        assert!(keys::open(&key, &aad("api", "TOKEN"), &nonce, &sealed).is_none());
    }

    #[test]
    fn reserved_and_malformed_names_are_refused() {
        for bad in ["", "FLY_REGION", "ALOFT_X", "1ABC", "A-B", "A B"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_name("DATABASE_URL").unwrap();
    }
}
