//! The host's X25519 key pair, kept in a file (base64 of the 32-byte private key, mode 0600).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::RngCore;

use crate::MeshError;

/// A host's WireGuard identity.
#[derive(Clone)]
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public_base64())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_secret(bytes)
    }

    /// The key pair of a private key.
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// Reads the private key from `path`, or creates it there (mode 0600) if the file does
    /// not exist. A file readable by others is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, MeshError> {
        let key_error = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| MeshError::KeyFile { path, op, source }
        };
        match fs::read_to_string(path) {
            Ok(text) => {
                let mode = fs::metadata(path)
                    .map_err(key_error("read the mode of"))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(MeshError::InvalidKeyFile {
                        path: path.to_path_buf(),
                        reason: format!("its mode is {:o}; it must be 600", mode & 0o777),
                    });
                }
                let bytes =
                    decode_key(text.trim()).map_err(|reason| MeshError::InvalidKeyFile {
                        path: path.to_path_buf(),
                        reason,
                    })?;
                Ok(Self::from_secret(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(key_error("create the directory of"))?;
                }
                let pair = Self::generate();
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(key_error("create"))?;
                let text = format!("{}\n", STANDARD.encode(pair.secret.to_bytes()));
                file.write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(key_error("write"))?;
                Ok(pair)
            }
            Err(e) => Err(key_error("read")(e)),
        }
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The public key as base64 (what the control plane stores).
    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.public.as_bytes())
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

/// Parses a base64 public key (44 characters, 32 bytes).
pub fn parse_public_key(text: &str) -> Result<PublicKey, MeshError> {
    decode_key(text.trim())
        .map(PublicKey::from)
        .map_err(|reason| MeshError::InvalidPublicKey {
            key: text.to_string(),
            reason,
        })
}

fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("it is not base64 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("it holds {} bytes instead of 32", bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("aloft-mesh-key-{}", std::process::id()));
        let path = dir.join("sub/mesh.key");
        let _ = fs::remove_dir_all(&dir);
        let first = KeyPair::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(first.public_base64(), second.public_base64());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyPair::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("must be 600"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a key").unwrap();
        assert!(KeyPair::load_or_create(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn public_keys_parse_or_say_why_not() {
        let pair = KeyPair::generate();
        let parsed = parse_public_key(&pair.public_base64()).unwrap();
        assert_eq!(parsed.as_bytes(), pair.public().as_bytes());
        let err = parse_public_key("AAAA").unwrap_err().to_string();
        assert!(err.contains("3 bytes instead of 32"), "{err}");
        assert!(parse_public_key("!!").is_err());
    }
}
