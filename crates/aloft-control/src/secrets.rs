//! App secrets, encrypted at rest with ChaCha20-Poly1305.
//!
//! The key is 32 random bytes in `DATA_DIR/secrets.key` (mode 0600), created on first use;
//! each value gets a random 96-bit nonce and is bound to its app and name as associated data,
//! so a ciphertext copied to another row does not decrypt. Only agents get values back (with
//! their machine assignments); the API lists names and keyed digests.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aloft_api::SecretInfo;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;
use rusqlite::{params, Connection};
use sha2::{Digest as _, Sha256};

use crate::api::ApiError;
use crate::control::Control;
use crate::store::now_rfc3339;

/// Why a secret could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("Cannot read or create the secrets key {0}")]
    Key(PathBuf, #[source] std::io::Error),
    #[error("Secrets key {0} is not 32 bytes")]
    KeyLength(PathBuf),
    #[error("Secret {name:?} of app {app:?} does not decrypt with the current key")]
    Decrypt { app: String, name: String },
    #[error("The store has no data directory for the secrets key")]
    NoDataDir,
}

impl From<SecretsError> for ApiError {
    fn from(e: SecretsError) -> Self {
        let mut detail = e.to_string();
        if let Some(source) = std::error::Error::source(&e) {
            detail.push_str(&format!(": {source}"));
        }
        ApiError::Internal(detail)
    }
}

/// The key of the store behind `conn` (`secrets.key` next to the database file).
fn key_for(conn: &Connection) -> Result<[u8; 32], SecretsError> {
    let db = conn
        .path()
        .filter(|p| !p.is_empty())
        .ok_or(SecretsError::NoDataDir)?;
    let dir = Path::new(db).parent().ok_or(SecretsError::NoDataDir)?;
    load_or_create_key(&dir.join("secrets.key"))
}

/// Reads the key, creating it (mode 0600) if it does not exist.
pub fn load_or_create_key(path: &Path) -> Result<[u8; 32], SecretsError> {
    let io = |e| SecretsError::Key(path.to_owned(), e);
    match std::fs::read(path) {
        Ok(bytes) => {
            <[u8; 32]>::try_from(bytes).map_err(|_| SecretsError::KeyLength(path.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            match created {
                Ok(mut file) => {
                    file.write_all(&key).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    Ok(key)
                }
                // Someone else created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
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

fn seal(key: &[u8; 32], app: &str, name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let aad = aad(app, name);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: value.as_bytes(),
                aad: &aad,
            },
        )
        // Encryption only fails for messages over 256 GiB.
        .unwrap_or_default();
    (nonce.to_vec(), sealed)
}

/// Every secret of `app`, decrypted (for agents' assignments).
pub fn decrypt_all(conn: &Connection, app: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT name, nonce, ciphertext FROM secrets WHERE app = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([app], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    if rows.is_empty() {
        return Ok(BTreeMap::new());
    }
    let key = key_for(conn)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
    let mut out = BTreeMap::new();
    for (name, nonce, sealed) in rows {
        let fail = || SecretsError::Decrypt {
            app: app.to_owned(),
            name: name.clone(),
        };
        if nonce.len() != 12 {
            return Err(fail().into());
        }
        let aad = aad(app, &name);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| fail())?;
        let value = String::from_utf8(plain).map_err(|_| fail())?;
        out.insert(name, value);
    }
    Ok(out)
}

fn list(conn: &Connection, app: &str) -> Result<Vec<SecretInfo>, ApiError> {
    let mut stmt = conn.prepare_cached(
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

/// A secret name: an environment variable name not reserved by the platform.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "Secret name {name:?} must be letters, digits and '_', not starting with a digit"
        )));
    }
    if name.starts_with("FLY_") || name.starts_with("ALOFT_") {
        return Err(ApiError::BadRequest(format!(
            "Secret name {name:?} is reserved: FLY_ and ALOFT_ names are set by the platform"
        )));
    }
    Ok(())
}

impl Control {
    /// Names and digests of an app's secrets.
    pub fn list_secrets(&self, app: &str) -> Result<Vec<SecretInfo>, ApiError> {
        let inner = self.lock();
        inner.get_app(app)?;
        list(&inner.conn, app)
    }

    /// Sets (or replaces) secrets; every value is encrypted before it reaches SQLite.
    pub fn set_secrets(
        &self,
        app: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<Vec<SecretInfo>, ApiError> {
        if values.is_empty() {
            return Err(ApiError::BadRequest("No secrets given".to_owned()));
        }
        for (name, value) in values {
            validate_name(name)?;
            if value.len() > 64 * 1024 {
                return Err(ApiError::BadRequest(format!(
                    "Secret {name:?} is larger than 64 KiB"
                )));
            }
        }
        let mut inner = self.lock();
        inner.get_app(app)?;
        let key = key_for(&inner.conn)?;
        let tx = inner.conn.transaction()?;
        let now = now_rfc3339();
        for (name, value) in values {
            let (nonce, sealed) = seal(&key, app, name, value);
            tx.execute(
                "INSERT INTO secrets (app, name, nonce, ciphertext, digest, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (app, name) DO UPDATE SET nonce = ?3, ciphertext = ?4, digest = ?5, created_at = ?6",
                params![app, name, nonce, sealed, digest(&key, value), now],
            )?;
        }
        tx.commit()?;
        tracing::info!(%app, count = values.len(), "secrets set");
        list(&inner.conn, app)
    }

    /// Removes secrets; unknown names are a 404 and nothing is removed.
    pub fn unset_secrets(&self, app: &str, names: &[String]) -> Result<Vec<SecretInfo>, ApiError> {
        if names.is_empty() {
            return Err(ApiError::BadRequest("No secret names given".to_owned()));
        }
        let mut inner = self.lock();
        inner.get_app(app)?;
        let tx = inner.conn.transaction()?;
        for name in names {
            let n = tx.execute(
                "DELETE FROM secrets WHERE app = ?1 AND name = ?2",
                params![app, name],
            )?;
            if n == 0 {
                return Err(ApiError::NotFound(format!(
                    "Secret {name:?} of app {app:?} not found"
                )));
            }
        }
        tx.commit()?;
        list(&inner.conn, app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_own_name() {
        let key = [7u8; 32];
        let (nonce, sealed) = seal(&key, "web", "TOKEN", "hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
        let open = |name: &str| {
            cipher.decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &aad("web", name),
                },
            )
        };
        assert_eq!(open("TOKEN").unwrap(), b"hunter2");
        assert!(open("OTHER").is_err());
        let (nonce2, _) = seal(&key, "web", "TOKEN", "hunter2");
        assert_ne!(nonce, nonce2, "a fresh nonce per value");
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn reserved_and_malformed_names_are_refused() {
        for bad in ["", "FLY_REGION", "ALOFT_X", "1ABC", "A-B", "A B"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_name("DATABASE_URL").unwrap();
    }
}
