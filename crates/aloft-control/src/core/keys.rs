//! The data directory's sealing key (`secrets.key`, 32 random bytes, mode 0600, created on
//! first use) and sealing with ChaCha20-Poly1305 bound to associated data, so a sealed value
//! copied to another row does not open.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Cannot read or create the secrets key {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("Secrets key {0} is not 32 bytes")]
    Length(PathBuf),
}

/// The key file of a data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets.key")
}

/// Reads the key, creating it (mode 0600) if it does not exist.
pub fn load_or_create_key(path: &Path) -> Result<[u8; 32], KeyError> {
    let io = |e| KeyError::Io(path.to_owned(), e);
    match std::fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes).map_err(|_| KeyError::Length(path.to_owned())),
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

/// Seals `plain` under `key`, bound to `aad`; returns (nonce, sealed).
pub fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        // Encryption only fails for messages over 256 GiB.
        .unwrap_or_default();
    (nonce.to_vec(), sealed)
}

/// Opens what [`seal`] sealed with the same key and `aad`; `None` when it does not open.
pub fn open(key: &[u8; 32], aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if nonce.len() != 12 {
        return None;
    }
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_own_aad() {
        let key = [7u8; 32];
        let (nonce, sealed) = seal(&key, b"web\0TOKEN", b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            open(&key, b"web\0TOKEN", &nonce, &sealed).as_deref(),
            Some(&b"hunter2"[..])
        );
        assert!(open(&key, b"web\0OTHER", &nonce, &sealed).is_none());
        let (nonce2, _) = seal(&key, b"web\0TOKEN", b"hunter2");
        assert_ne!(nonce, nonce2, "a fresh nonce per value");
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path());
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
