//! Digests come from `aloft-digest`; this module turns its errors into the registry's.

pub(crate) use aloft_digest::{Algorithm, Digest, DigestError, Hasher};

use crate::error::RegistryError;

impl From<DigestError> for RegistryError {
    fn from(e: DigestError) -> Self {
        RegistryError::DigestInvalid(e.to_string())
    }
}
