//! `Control`: the composition root. It opens the store, builds every service over it (each
//! service gets only what it uses), hands them to the API, and starts the singleton loops
//! (host liveness, the autoscaler, ACME renewal) from one place.
//!
//! Several control-plane replicas would share one store; the singleton loops are then the
//! part to run under a leader lease, which is why they start only in [`Control::start_loops`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::{Store, StoreError};
use crate::services::acme::{self, Acme};
use crate::services::apps::Apps;
use crate::services::autoscale::{self, Autoscale, ScalerOptions};
use crate::services::certs::Certs;
use crate::services::deploys::Deploys;
use crate::services::exec::Exec;
use crate::services::geodns::{LiveEdge, Zone};
use crate::services::hosts::{self, Hosts};
use crate::services::image::Images;
use crate::services::ips::Ips;
use crate::services::limits::{AppLimits, Limits, RateLimit};
use crate::services::machines::Machines;
use crate::services::releases::Releases;
use crate::services::routes::RouteTables;
use crate::services::secrets::Secrets;
use crate::services::tokens::{AuthError, Principal, TokenScope, Tokens};

/// Principal ids of the hosts service's credentials: `host:<id>`, and one for join tokens.
const HOST_PRINCIPAL: &str = "host:";
const JOIN_PRINCIPAL: &str = "join-token";

/// The control plane: the store and the services built over it.
pub struct Control {
    store: Arc<Store>,
    tokens: Arc<Tokens>,
    apps: Arc<Apps>,
    hosts: Arc<Hosts>,
    machines: Arc<Machines>,
    exec: Exec,
    secrets: Secrets,
    releases: Releases,
    deploys: Arc<Deploys>,
    autoscale: Arc<Autoscale>,
    certs: Certs,
    acme: Arc<Acme>,
    ips: Ips,
    limits: Limits,
    routes: RouteTables,
    images: Arc<Images>,
    cluster: aloft_api::ClusterInfo,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Opens the store in `data_dir`, bootstraps it, and returns the new admin token on first start.
    pub fn open(
        data_dir: &std::path::Path,
        heartbeat_timeout: Duration,
        cluster: aloft_api::ClusterInfo,
    ) -> Result<(Control, Option<String>), StoreError> {
        let store = Arc::new(Store::open(data_dir)?);
        let (tokens, admin) = Tokens::open(store.clone())?;
        let tokens = Arc::new(tokens);
        let hosts = Arc::new(Hosts::new(store.clone(), heartbeat_timeout));
        hosts.load_credentials()?;
        let images = Arc::new(Images::new(cluster.registry.clone()));
        let machines = Arc::new(Machines::new(store.clone(), hosts.clone(), images.clone()));
        let control = Control {
            apps: Arc::new(Apps::new(store.clone(), tokens.clone())),
            exec: Exec::new(machines.clone()),
            secrets: Secrets::new(store.clone()),
            releases: Releases::new(store.clone()),
            deploys: Arc::new(Deploys::new(store.clone(), machines.clone())),
            autoscale: Arc::new(Autoscale::new(
                store.clone(),
                hosts.clone(),
                machines.clone(),
            )),
            certs: Certs::new(store.clone(), &cluster.domain),
            acme: Arc::new(Acme::new(store.clone())),
            ips: Ips::new(store.clone()),
            limits: Limits::default(),
            routes: RouteTables::new(store.clone(), hosts.clone()),
            tokens,
            hosts,
            machines,
            store,
            images,
            cluster,
        };
        if let Err(e) = control.certs.seal_legacy_keys() {
            tracing::error!(error = %aloft_api::error::error_chain(&e), "cannot seal certificate keys stored in the clear");
        }
        Ok((control, admin))
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// Which image references are the built-in registry's, and how their tags resolve.
    pub fn images(&self) -> &Images {
        &self.images
    }

    pub fn machines(&self) -> &Machines {
        &self.machines
    }

    pub fn exec(&self) -> &Exec {
        &self.exec
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    pub fn releases(&self) -> &Releases {
        &self.releases
    }

    pub fn deploys(&self) -> &Arc<Deploys> {
        &self.deploys
    }

    pub fn autoscale(&self) -> &Autoscale {
        &self.autoscale
    }

    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    pub fn acme(&self) -> &Arc<Acme> {
        &self.acme
    }

    pub fn ips(&self) -> &Ips {
        &self.ips
    }

    /// The operator's limits and the API's token buckets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sets the operator's limits (once, before serving).
    pub fn configure_limits(&self, apps: AppLimits, rate: Option<RateLimit>) {
        self.limits.configure(apps, rate);
        self.machines.set_limits(apps);
    }

    pub fn routes(&self) -> &RouteTables {
        &self.routes
    }

    /// The principal of a bearer token: an API token, else a host's credential or a join
    /// token of the hosts service (also the registry's token check).
    pub fn authenticate(&self, bearer: &str) -> Result<Principal, AuthError> {
        use crate::services::hosts::HostPrincipal;
        match self.tokens.authenticate(bearer) {
            Err(AuthError::Unknown) => match self.hosts.authenticate(bearer) {
                Some(HostPrincipal::Host(host)) => Ok(Principal {
                    id: format!("{HOST_PRINCIPAL}{host}"),
                    scope: TokenScope::Host(host),
                }),
                Some(HostPrincipal::Join) => Ok(Principal {
                    id: JOIN_PRINCIPAL.to_owned(),
                    scope: TokenScope::Join,
                }),
                None => Err(AuthError::Unknown),
            },
            other => other,
        }
    }

    /// Resolves when token `id` is revoked or expires.
    pub fn token_ended(
        &self,
        id: String,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let hosts = self.hosts.clone();
        let mut revisions = self.subscribe();
        let tokens = self.tokens.ended(id.clone());
        async move {
            if let Some(host) = id.strip_prefix(HOST_PRINCIPAL) {
                // A host's credential ends when the host is revoked or removed.
                while hosts.holds_credential(host) {
                    tokio::select! {
                        changed = revisions.changed() => if changed.is_err() { return },
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            } else if id == JOIN_PRINCIPAL {
                // A join token streams nothing; it only enrols.
                std::future::pending::<()>().await;
            } else {
                tokens.await;
            }
        }
    }

    /// A receiver that wakes whenever the store reaches a newer revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.store.revisions().subscribe()
    }

    /// The registry's cluster-wide name and the apps' domain.
    pub fn cluster(&self) -> &aloft_api::ClusterInfo {
        &self.cluster
    }

    /// How many `wait` requests and watch streams are listening for changes.
    pub fn listeners(&self) -> usize {
        self.store.revisions().listeners()
    }

    /// Ends watch streams and waits so a graceful shutdown does not hang on them.
    pub fn begin_shutdown(&self) {
        self.store.revisions().begin_shutdown();
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.store.revisions().shutdown_signal()
    }

    /// Starts the loops that must run once per cluster: host liveness, the autoscaler and
    /// (with ACME on) certificate renewal. They stop when the returned value is dropped.
    pub fn start_loops(&self, scaler: ScalerOptions) -> Loops {
        let mut tasks = vec![
            tokio::spawn(hosts::run_liveness(self.hosts.clone())),
            tokio::spawn(autoscale::run_scaler(self.autoscale.clone(), scaler)),
        ];
        if self.acme.enabled() {
            tasks.push(tokio::spawn(acme::renew_loop(self.acme.clone())));
        }
        match self.deploys.resume() {
            Ok(0) => {}
            Ok(n) => tracing::info!(deploys = n, "unfinished deploys resumed"),
            Err(e) => tracing::error!(error = %e, "unfinished deploys not resumed"),
        }
        Loops(tasks)
    }
}

/// The running singleton loops; dropping this stops them.
#[derive(Debug)]
pub struct Loops(Vec<JoinHandle<()>>);

impl Drop for Loops {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Zone for Control {
    fn app_exists(&self, name: &str) -> bool {
        self.apps.exists(name)
    }

    fn live_edges(&self) -> Vec<LiveEdge> {
        self.hosts.live_edges()
    }
}
