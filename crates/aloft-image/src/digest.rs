//! Digests come from `aloft-digest`; this module turns its errors into the store's.

pub(crate) use aloft_digest::{Algorithm, Digest, DigestError, Hasher, HashingReader};

use crate::ImageError;

impl From<DigestError> for ImageError {
    fn from(e: DigestError) -> Self {
        match e {
            DigestError::Invalid(text) => ImageError::InvalidDigest(text),
            DigestError::Mismatch { expected, actual } => {
                ImageError::DigestMismatch { expected, actual }
            }
        }
    }
}
