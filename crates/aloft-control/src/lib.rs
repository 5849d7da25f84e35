//! The control plane: the Fly-compatible Machines API (`/v1`), tokens, hosts, placement and
//! the agent protocol, over an embedded SQLite store in the data directory.
//!
//! It owns apps, machines' desired config and state, hosts, releases, secrets, certificates,
//! dedicated addresses and the global revision. It must not run machines (the agent does) nor
//! parse `aloft.toml` (the CLI does); it talks to both only through the wire types in
//! `aloft-api`.
//!
//! Three layers, each importing only downwards (`layering.rs` tests it):
//! - [`core`]: the store and all its SQL, revisions and change notification, the machine
//!   lifecycle. It must never import `services`, `api` or `control`, nor any HTTP type.
//! - [`services`]: one service per subject with its own state and error enum. A service must
//!   never import `api` or `control`, and chooses no HTTP status.
//! - [`api`]: axum handlers (extract, authorize, call a service) and the one place service
//!   errors become HTTP statuses.
//!
//! [`Control`] composes the services and starts the singleton loops; [`Server`] serves it.

#![forbid(unsafe_code)]

pub mod api;
pub mod control;
pub mod core;
#[cfg(test)]
mod layering;
pub mod services;

pub use services::{acme, autoscale, geodns, ips, limits, placement};

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use control::Control;
pub use services::hosts::HostLimits;
pub use services::image::{ImageResolver, ResolvedImage};
pub use services::tokens::{AuthError, Principal, TokenScope};

/// Where and how the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A host silent this long is unreachable (default 15 s).
    pub heartbeat_timeout: Duration,
    /// The names hosts and clients share: the registry's cluster-wide name and the apps'
    /// domain.
    pub cluster: aloft_api::ClusterInfo,
}

impl ServerOptions {
    /// Defaults: listen on 127.0.0.1:4280, 15 s heartbeat timeout, apps at `<app>.localhost`,
    /// the registry named `registry.localhost`.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerOptions {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 4280)),
            data_dir: data_dir.into(),
            heartbeat_timeout: Duration::from_secs(15),
            cluster: aloft_api::ClusterInfo {
                registry: aloft_api::ClusterInfo::default_registry("localhost"),
                domain: "localhost".to_owned(),
            },
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("Cannot create data directory {0}")]
    DataDir(PathBuf, #[source] std::io::Error),
    #[error("Cannot open the store")]
    Store(#[from] core::StoreError),
    #[error("Cannot write admin token to {0}")]
    AdminToken(PathBuf, #[source] std::io::Error),
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// An opened control plane, ready to serve.
pub struct Server {
    control: Arc<Control>,
    extra: Option<axum::Router>,
    scaler: autoscale::ScalerOptions,
    /// The admin token, only on the first start (also written to `DATA_DIR/admin-token`).
    pub admin_token_created: Option<String>,
    pub options: ServerOptions,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the store in the data dir (creating and migrating it), bootstraps org
    /// `personal` and an admin token on first start, written to `admin-token` (mode 0600).
    pub async fn open(options: ServerOptions) -> Result<Server, ControlError> {
        let dir = options.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| ControlError::DataDir(dir.clone(), e))?;
        // Owner-only: the store, keys, tokens and registry blobs live here.
        std::fs::set_permissions(
            &dir,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
        )
        .map_err(|e| ControlError::DataDir(dir.clone(), e))?;
        let (control, admin) =
            Control::open(&dir, options.heartbeat_timeout, options.cluster.clone())?;
        if let Some(token) = &admin {
            let path = dir.join("admin-token");
            write_secret(&path, token).map_err(|e| ControlError::AdminToken(path, e))?;
        }
        Ok(Server {
            control: Arc::new(control),
            extra: None,
            scaler: autoscale::ScalerOptions::default(),
            admin_token_created: admin,
            options,
        })
    }

    /// The shared state, for callers that need operations without HTTP.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// The principal of a bearer token (for other roles, e.g. the registry, to reuse tokens).
    pub fn authenticate(&self, bearer: &str) -> Result<Principal, AuthError> {
        self.control.authenticate(bearer)
    }

    /// Adds routes (e.g. the registry's `/v2`) served next to the API. They get neither the
    /// API's auth nor its body limit, and must not set their own fallback.
    pub fn merge_router(mut self, extra: axum::Router) -> Self {
        self.extra = Some(match self.extra.take() {
            Some(existing) => existing.merge(extra),
            None => extra,
        });
        self
    }

    /// Resolves tags in the built-in registry, so machines created from its images are
    /// pinned to the digest their tag named (see `docs/machines-api.md`, "Images").
    pub fn image_resolver(self, resolver: Arc<dyn ImageResolver>) -> Self {
        self.control.images().set_resolver(resolver);
        self
    }

    /// How the regional autoscaler paces itself (see `docs/autoscale.md`).
    pub fn scaler_options(mut self, opts: autoscale::ScalerOptions) -> Self {
        self.scaler = opts;
        self
    }

    /// Orders certificates for custom hostnames from an ACME CA (`docs/edge.md`, "ACME").
    pub fn acme(self, options: acme::AcmeOptions) -> Self {
        self.control.acme().configure(options);
        self
    }

    /// Asks this DNS resolver for hostname ownership records (`docs/edge.md`, "Custom
    /// hostnames") instead of the first nameserver of `/etc/resolv.conf`.
    pub fn dns_resolver(self, resolver: Option<SocketAddr>) -> Self {
        if let Some(resolver) = resolver {
            self.control.certs().set_dns_resolver(resolver);
        }
        self
    }

    /// The operator's limits: per-app machine, CPU and memory totals and the API's request
    /// rate per token (`docs/security.md`, "Limits").
    pub fn limits(self, apps: limits::AppLimits, rate: Option<limits::RateLimit>) -> Self {
        self.control.configure_limits(apps, rate);
        self
    }

    /// Allocates dedicated app addresses from these networks (`docs/edge.md`, "Dedicated
    /// addresses").
    pub fn ip_pools(self, pools: Vec<ips::IpPool>) -> Self {
        self.control.ips().configure(pools);
        self
    }

    /// The full router: `/v1` API, merged routes, and a JSON 404 fallback.
    pub fn router(&self) -> axum::Router {
        api::router(self.control.clone(), self.extra.clone())
    }

    /// Serves until `shutdown` resolves, then ends watch streams and waits and drains.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlError> {
        let control = self.control.clone();
        let router = self.router();
        if let Ok(addr) = listener.local_addr() {
            control.images().note_address(addr);
        }
        let loops = control.start_loops(self.scaler);
        tracing::info!(addr = ?listener.local_addr().ok(), "control plane listening");
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                control.begin_shutdown();
            })
            .await
            .map_err(ControlError::Serve)?;
        drop(loops);
        Ok(())
    }
}

fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
