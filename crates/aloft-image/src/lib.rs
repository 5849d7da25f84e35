//! The host image store: turns an image reference into unpacked, read-only layer
//! directories (overlayfs lower dirs, bottom-most first) plus the image config.
//!
//! Images come from an OCI distribution registry ([`ImageStore::pull`]), a local OCI image
//! layout ([`ImageStore::import_oci_layout`]) or a `docker save` archive
//! ([`ImageStore::import_docker_archive`]). Every blob is verified against its digest while
//! it is read. Each layer is unpacked once per host into
//! `<root>/layers/<algo>/<hex>/rootfs`, through a temporary directory and an atomic rename,
//! and shared by every image that lists it; hostile layers are refused
//! ([`ImageError::HostileLayer`]). Concurrent pulls fetch and unpack each blob once.
//!
//! This crate must not mount anything, run containers or talk to the control plane: the
//! agent stacks the returned directories with overlayfs and decides what is in use
//! ([`ImageStore::gc`]).

#![forbid(unsafe_code)]

pub mod build;
mod digest;
mod error;
mod local;
mod oci;
pub mod push;
mod registry;
mod store;
mod unpack;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use aloft_digest::{Algorithm, Digest, DigestError};
pub use error::ImageError;
pub use store::ImageStore;
pub use unpack::UnpackLimits;

/// Basic credentials for a registry (sent to its token service, or directly on a Basic challenge).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to reach one registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// Credentials, sent to this registry only (and to its token service only when that is
    /// served from the same host).
    pub credentials: Option<Credentials>,
    /// Speak plain `http://` (the built-in registry on a private address, insecure registries).
    pub plain_http: bool,
}

/// How to reach registries for [`ImageStore::pull`].
///
/// A registry not listed in `registries` is reached anonymously over HTTPS: credentials are
/// never sent to a registry (or token service) a reference happens to name.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registry host (`host[:port]`) for references that name none, e.g. the built-in one.
    pub default_registry: Option<String>,
    /// Names that stand for another registry host (`name` → `host[:port]`), e.g. the built-in
    /// registry's cluster-wide name mapped to this host's route to the control plane.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// Per registry host (after aliases): credentials and scheme.
    pub registries: std::collections::BTreeMap<String, RegistryAccess>,
}

impl PullOptions {
    /// Options that reach one registry with `access` (and every other anonymously).
    pub fn for_registry(registry: impl Into<String>, access: RegistryAccess) -> PullOptions {
        let mut registries = std::collections::BTreeMap::new();
        registries.insert(registry.into(), access);
        PullOptions {
            registries,
            ..PullOptions::default()
        }
    }

    /// The registry host a reference's registry name stands for.
    pub fn resolve<'a>(&'a self, registry: &'a str) -> &'a str {
        self.aliases.get(registry).map_or(registry, String::as_str)
    }

    fn access(&self, host: &str) -> RegistryAccess {
        self.registries.get(host).cloned().unwrap_or_default()
    }
}

/// The runtime settings from an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Entrypoint argv.
    pub entrypoint: Vec<String>,
    /// Default arguments.
    pub cmd: Vec<String>,
    /// `user[:group]`, if set.
    pub user: Option<String>,
    /// Working directory, if set.
    pub working_dir: Option<String>,
    /// Exposed ports such as `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Signal to stop the entrypoint with, if set.
    pub stop_signal: Option<String>,
}

/// One unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Digest of the layer blob as distributed (compressed).
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// The unpacked directory, usable as an overlayfs lower dir.
    pub path: PathBuf,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference it was pulled or imported as.
    pub reference: String,
    /// Digest of its (platform) manifest; the key for [`ImageStore::get`] and [`ImageStore::gc`].
    pub manifest_digest: String,
    /// Runtime settings.
    pub config: ImageConfig,
    /// Layers, bottom-most first.
    pub layers: Vec<LayerRef>,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifest digests of the image records removed.
    pub images_removed: Vec<String>,
    /// Digests of the unpacked layers removed.
    pub layers_removed: Vec<String>,
    /// Number of manifest and config blobs removed.
    pub blobs_removed: usize,
}
