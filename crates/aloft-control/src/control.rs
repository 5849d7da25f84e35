//! `Control`: the one owner of control-plane state. Handlers call its methods; each mutation
//! is one SQLite transaction under one lock, followed by a revision notification.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use aloft_api::{
    App, AppSummary, CreateTokenRequest, Host, RegionInfo, RegisterHostRequest, TokenKind,
    WatchEvent,
};
use tokio::sync::watch;

use crate::api::ApiError;
use crate::auth::{hash_token, TokenScope, TokenSet};
use crate::store::{self, Inner, MachineRow, StoreError};

/// The control plane's state and operations.
pub struct Control {
    inner: Mutex<Inner>,
    tokens: RwLock<TokenSet>,
    revision: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    heartbeat_timeout: Duration,
    cluster: aloft_api::ClusterInfo,
    started: Instant,
    pub(crate) autoscale: crate::autoscale::AutoscaleState,
    pub(crate) liveness: crate::liveness::Liveness,
    pub(crate) acme: crate::acme::AcmeState,
    pub(crate) ip_pools: crate::ips::IpPools,
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
        let conn = store::open(data_dir)?;
        let mut inner = Inner::load(conn)?;
        let admin = inner.bootstrap()?;
        let tokens = inner.load_tokens()?;
        let revision = inner.revision;
        let control = Control {
            inner: Mutex::new(inner),
            tokens: RwLock::new(tokens),
            revision: watch::Sender::new(revision),
            shutdown: watch::Sender::new(false),
            heartbeat_timeout,
            cluster,
            started: Instant::now(),
            autoscale: crate::autoscale::AutoscaleState::default(),
            liveness: crate::liveness::Liveness::default(),
            acme: crate::acme::AcmeState::default(),
            ip_pools: crate::ips::IpPools::default(),
        };
        Ok((control, admin))
    }

    /// Locks the store. A panic while holding it cannot leave SQLite half-written (the
    /// transaction rolls back on drop), so a poisoned lock is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Hosts last seen at or after this instant are live.
    pub(crate) fn live_since(&self) -> Instant {
        Instant::now()
            .checked_sub(self.heartbeat_timeout)
            .unwrap_or(self.started)
    }

    /// Tells waiters and watchers that the store reached `revision`.
    pub(crate) fn notify(&self, revision: u64) {
        self.revision.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    /// The registry's cluster-wide name and the apps' domain.
    pub fn cluster(&self) -> &aloft_api::ClusterInfo {
        &self.cluster
    }

    /// How many `wait` requests and watch streams are listening for changes.
    pub fn listeners(&self) -> usize {
        self.revision.receiver_count()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Ends watch streams and waits so a graceful shutdown does not hang on them.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Resolves once shutdown has begun (or the sender is gone).
pub(crate) async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    // Drop the borrowed guard here so callers' futures stay `Send`.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

impl Control {
    /// The scope of a bearer token, or `None`.
    pub fn authenticate(&self, bearer: &str) -> Option<TokenScope> {
        self.tokens
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .lookup(bearer)
    }

    /// Creates a token for an app, for joining hosts, or another admin token.
    pub fn create_token(&self, req: &CreateTokenRequest) -> Result<String, ApiError> {
        let scope = match (&req.app, req.scope) {
            (Some(app), None | Some(TokenKind::App)) => TokenScope::App(app.clone()),
            (None, Some(TokenKind::Join)) => TokenScope::Join,
            (None, Some(TokenKind::Admin)) => TokenScope::Admin,
            (None, Some(TokenKind::App)) | (None, None) => {
                return Err(ApiError::BadRequest(
                    "Give \"app\" for an app token, or \"scope\": \"join\" or \"admin\"".to_owned(),
                ))
            }
            (Some(_), Some(kind)) => {
                return Err(ApiError::BadRequest(format!(
                    "An app token cannot also have scope {kind:?}"
                )))
            }
        };
        let token = crate::ids::token();
        let hash = hash_token(&token);
        {
            let mut inner = self.lock();
            if let TokenScope::App(app) = &scope {
                inner.get_app(app)?;
            }
            inner.insert_token(hash, &scope)?;
        }
        self.tokens
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(hash, scope);
        Ok(token)
    }

    // Apps.

    pub fn create_app(
        &self,
        name: &str,
        org: Option<&str>,
        network: Option<&str>,
    ) -> Result<App, ApiError> {
        validate_app_name(name)?;
        let org = org.filter(|o| !o.is_empty()).unwrap_or(store::DEFAULT_ORG);
        let mut inner = self.lock();
        if !inner.org_exists(org)? {
            return Err(ApiError::NotFound(format!(
                "Organization {org:?} not found"
            )));
        }
        let app = inner.insert_app(name, org, network.unwrap_or("default"))?;
        let revision = inner.revision;
        drop(inner);
        self.notify(revision);
        Ok(app)
    }

    pub fn get_app(&self, name: &str) -> Result<App, ApiError> {
        self.lock().get_app(name)
    }

    pub fn list_apps(
        &self,
        org: Option<&str>,
        scope: &TokenScope,
    ) -> Result<Vec<AppSummary>, ApiError> {
        let only = match scope {
            TokenScope::App(app) => Some(app.as_str()),
            _ => None,
        };
        self.lock().list_apps(org, only)
    }

    /// Deletes an app without machines, and revokes its app tokens at once.
    pub fn delete_app(&self, name: &str) -> Result<(), ApiError> {
        let mut inner = self.lock();
        inner.delete_app(name)?;
        let tokens = inner.load_tokens()?;
        let revision = inner.revision;
        drop(inner);
        *self
            .tokens
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = tokens;
        self.notify(revision);
        Ok(())
    }

    // Hosts.

    pub fn register_host(&self, req: &RegisterHostRequest) -> Result<Host, ApiError> {
        validate_host(req)?;
        let mut inner = self.lock();
        inner.register_host(req)?;
        tracing::info!(host = %req.id, region = %req.region, "host registered");
        inner.host(&req.id, self.live_since())
    }

    pub fn heartbeat(&self, id: &str) -> Result<Host, ApiError> {
        let mut inner = self.lock();
        inner.heartbeat(id)?;
        let host = inner.host(id, self.live_since());
        drop(inner);
        // A host that was down is routable again at once, not at the next liveness check.
        if self.liveness.down().contains(id) {
            self.refresh_liveness()?;
        }
        host
    }

    /// Every registered host with mesh info (agents mirror this list).
    pub fn mesh_peers(&self) -> Result<Vec<aloft_api::MeshPeer>, ApiError> {
        self.lock().mesh_peers(self.live_since())
    }

    pub fn list_hosts(&self) -> Result<Vec<Host>, ApiError> {
        let inner = self.lock();
        let live_since = self.live_since();
        inner
            .hosts
            .iter()
            .map(|h| inner.host(&h.id, live_since))
            .collect()
    }

    /// Regions with at least one live host, with their free capacity.
    pub fn regions(&self) -> Vec<RegionInfo> {
        let inner = self.lock();
        let live_since = self.live_since();
        let mut regions: BTreeMap<&str, RegionInfo> = BTreeMap::new();
        for host in inner.hosts.iter().filter(|h| h.last_seen >= live_since) {
            let entry = regions.entry(&host.region).or_insert_with(|| RegionInfo {
                code: host.region.clone(),
                name: region_name(&host.region).to_owned(),
                free_cpus: 0,
                free_memory_mb: 0,
                hosts: 0,
            });
            entry.free_cpus += host.free_cpus();
            entry.free_memory_mb += host.free_memory_mb();
            entry.hosts += 1;
        }
        regions.into_values().collect()
    }

    /// Assignments of `host` changed after `since`, and the revision the answer is complete to.
    pub fn host_changes(&self, host: &str, since: u64) -> Result<(Vec<WatchEvent>, u64), ApiError> {
        let inner = self.lock();
        if !inner.host_index.contains_key(host) {
            return Err(ApiError::NotFound(format!(
                "Host {host:?} is not registered"
            )));
        }
        if inner
            .host_revision
            .get(host)
            .is_none_or(|&last| last <= since)
        {
            return Ok((Vec::new(), inner.revision.max(since)));
        }
        let rows = MachineRow::changed_on_host(&inner.conn, host, since)?;
        let mut orgs: BTreeMap<String, String> = BTreeMap::new();
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            if !orgs.contains_key(&row.app) {
                orgs.insert(
                    row.app.clone(),
                    store::machines_app_org(&inner.conn, &row.app)?,
                );
            }
            let org = orgs
                .get(&row.app)
                .map_or(store::DEFAULT_ORG, String::as_str);
            let mut assigned = row.to_assigned(org);
            assigned.secrets = crate::secrets::decrypt_all(&inner.conn, &row.app)?;
            events.push(WatchEvent {
                revision: row.revision,
                machine: Some(assigned),
            });
        }
        Ok((events, inner.revision.max(since)))
    }
}

fn validate_app_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "App name {name:?} must be 1-63 lowercase letters, digits and inner dashes"
        )))
    }
}

fn validate_host(req: &RegisterHostRequest) -> Result<(), ApiError> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if !ident(&req.id) {
        return Err(ApiError::BadRequest(format!(
            "Host id {:?} must be 1-64 letters, digits, '.', '_' or '-'",
            req.id
        )));
    }
    if !ident(&req.region) || req.region.len() > 16 {
        return Err(ApiError::BadRequest(format!(
            "Region {:?} must be 1-16 letters, digits, '.', '_' or '-'",
            req.region
        )));
    }
    if req.address.trim().is_empty() {
        return Err(ApiError::BadRequest("Host address is empty".to_owned()));
    }
    if !(1..=4096).contains(&req.cpus) {
        return Err(ApiError::BadRequest(format!(
            "Host cpus {} must be between 1 and 4096",
            req.cpus
        )));
    }
    if !(128..=64 * 1024 * 1024).contains(&req.memory_mb) {
        return Err(ApiError::BadRequest(format!(
            "Host memory_mb {} must be between 128 and 67108864",
            req.memory_mb
        )));
    }
    if let Some(mesh) = &req.mesh {
        validate_mesh(mesh)?;
    }
    Ok(())
}

fn validate_mesh(mesh: &aloft_api::MeshInfo) -> Result<(), ApiError> {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(mesh.public_key.trim())
        .ok()
        .filter(|k| k.len() == 32);
    if key.is_none() {
        return Err(ApiError::BadRequest(format!(
            "Mesh public_key {:?} is not the base64 of a 32-byte X25519 key",
            mesh.public_key
        )));
    }
    if mesh.endpoint.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::BadRequest(format!(
            "Mesh endpoint {:?} is not an ip:port address",
            mesh.endpoint
        )));
    }
    Ok(())
}

/// A human name for well-known Fly region codes; the code itself otherwise.
fn region_name(code: &str) -> &str {
    match code {
        "ams" => "Amsterdam, Netherlands",
        "arn" => "Stockholm, Sweden",
        "cdg" => "Paris, France",
        "dfw" => "Dallas, Texas (US)",
        "ewr" => "Secaucus, NJ (US)",
        "fra" => "Frankfurt, Germany",
        "gru" => "Sao Paulo, Brazil",
        "iad" => "Ashburn, Virginia (US)",
        "jnb" => "Johannesburg, South Africa",
        "lax" => "Los Angeles, California (US)",
        "lhr" => "London, United Kingdom",
        "nrt" => "Tokyo, Japan",
        "ord" => "Chicago, Illinois (US)",
        "sin" => "Singapore, Singapore",
        "sjc" => "San Jose, California (US)",
        "syd" => "Sydney, Australia",
        "yyz" => "Toronto, Canada",
        other => other,
    }
}
