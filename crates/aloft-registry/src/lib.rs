//! The built-in OCI registry: distribution-spec 1.1 (pull, push, content discovery,
//! content management, referrers) served as an axum [`Router`](axum::Router) over a
//! content-addressed blob store on local disk.
//!
//! This crate owns the on-disk layout under its data directory (blobs, uploads in flight,
//! per-repository metadata) and garbage collection of unreferenced blobs. It does not know
//! about the control plane: who may touch which repository is answered by a
//! [`RegistryAuth`] implementation handed to [`router`]. Repository names map to apps by
//! their first path component (`<app>/<image>` or `<app>`).
//!
//! Token flow: `GET /v2/token` accepts HTTP Basic (any username, the password is an Aloft
//! API token) or a Bearer Aloft token and hands the *same* Aloft token back as
//! `token`/`access_token`; registry requests then carry it as `Bearer` (or `Basic`
//! directly). No second kind of token exists, so revoking the Aloft token revokes
//! registry access at once.
//!
//! ```no_run
//! use std::sync::Arc;
//! use aloft_registry::{router, Identity, Registry, RegistryAuth};
//!
//! struct Tokens;
//! impl RegistryAuth for Tokens {
//!     fn authenticate(&self, secret: &str) -> Option<Identity> {
//!         (secret == "admin-secret").then_some(Identity::Admin)
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::open("/var/lib/aloft/registry")?;
//! // The routes carry their `/v2` prefix: merge, do not nest. Uploads stream, so no
//! // request body limit may sit in front of them.
//! let app: axum::Router = axum::Router::new().merge(router(registry.clone(), Arc::new(Tokens)));
//! # let _ = app;
//! // Garbage collection is blocking file work.
//! let report = tokio::task::spawn_blocking(move || registry.gc()).await??;
//! println!("freed {} bytes", report.bytes_freed);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod auth;
mod digest;
mod error;
mod gc;
mod http;
mod manifest;
mod names;
mod store;
mod uploads;

pub use aloft_digest::{Algorithm, Digest, DigestError};
pub use error::RegistryError;
pub use gc::GcReport;
pub use http::router;
pub use manifest::media_types;
pub use store::{PutManifest, Registry, RegistryOptions, StoredManifest};

/// What a request wants to do to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
    Delete,
}

/// Who presented a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// May touch every repository.
    Admin,
    /// May only touch repositories whose first path component is this app name.
    App(String),
}

impl Identity {
    /// Whether this identity may perform `access` on repository `name`.
    pub fn allows(&self, name: &str, _access: Access) -> bool {
        match self {
            Identity::Admin => true,
            Identity::App(app) => name.split('/').next() == Some(app.as_str()),
        }
    }
}

/// The source of truth for registry credentials (the control plane's token table).
pub trait RegistryAuth: Send + Sync + 'static {
    /// Returns the identity for a presented secret (an Aloft API token), or None.
    fn authenticate(&self, secret: &str) -> Option<Identity>;
}
