//! The one error type of the image store.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while pulling, importing, unpacking or collecting images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation on the store or on an input failed.
    #[error("I/O error on {path}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A digest string is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("Invalid digest {0:?}")]
    InvalidDigest(String),
    /// A blob's content does not hash to its digest.
    #[error("Blob {expected} has digest {actual}")]
    DigestMismatch {
        /// The digest the blob was requested by.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A layer tries to write outside its root, through a symlink, or ships a device node.
    #[error("Layer {digest} is hostile: {reason} at {path:?}")]
    HostileLayer {
        /// The layer's (compressed) digest.
        digest: String,
        /// The offending entry path as written in the archive.
        path: String,
        /// What the entry tried to do.
        reason: String,
    },
    /// An image unpacks to more than the host's limit.
    #[error("Image is too large: its layers unpack to more than {limit} {what} (the host's limit), reached in layer {digest}")]
    TooLarge {
        /// The layer's (compressed) digest where the limit was reached.
        digest: String,
        /// `bytes` or `entries`.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A layer archive cannot be read (bad tar, bad compression, unsupported entry).
    #[error("Layer {digest} is malformed: {reason}")]
    MalformedLayer {
        /// The layer's (compressed) digest.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The uncompressed layer does not hash to the diff id listed in the image config.
    #[error("Layer {digest} has diff id {actual}, the image config says {expected}")]
    DiffIdMismatch {
        /// The layer's (compressed) digest.
        digest: String,
        /// The diff id from the config.
        expected: String,
        /// The diff id computed while unpacking.
        actual: String,
    },
    /// An image reference cannot be parsed or names no registry.
    #[error("Invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// An HTTP request to a registry failed below the HTTP level.
    #[error("Request to {url} failed")]
    Http {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// A registry answered with an unexpected status.
    #[error("Registry answered {status} to {url}")]
    RegistryStatus {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The registry's authentication challenge could not be met.
    #[error("Authentication with {registry} failed: {reason}")]
    Auth {
        /// The registry host.
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// A manifest, index, config or archive is structurally wrong.
    #[error("Invalid image {what}: {reason}")]
    InvalidImage {
        /// Which document or input.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An index has no linux/amd64 manifest.
    #[error("Index {0} has no linux/amd64 image")]
    NoMatchingPlatform(String),
    /// A blocking task panicked or was cancelled.
    #[error("Background unpack task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> ImageError {
        ImageError::InvalidImage {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
