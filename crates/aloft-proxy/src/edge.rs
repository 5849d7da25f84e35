//! The edge itself, the crate's top: it binds the listeners and starts what serves them,
//! installs route tables (and keeps the service-port listeners in step with them), takes the
//! host's certificates, RTTs and unreachable hosts, and drains on shutdown.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::options::EdgeOptions;
use crate::routes::{RouteStoreError, RouteTable};
use crate::serve::{self, Workers};
use crate::shared::Shared;
use crate::tcp::PortListeners;
use crate::tls::{self, Ca, TlsError};
use crate::wake;

/// Errors starting or updating the edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("Cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] RouteStoreError),
}

/// A running edge proxy. Cloning gives another handle to the same edge.
#[derive(Clone)]
pub struct Edge {
    shared: Arc<Shared>,
    ports: Arc<PortListeners>,
    /// Route tables are installed one at a time.
    update_lock: Arc<Mutex<()>>,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
}

impl Edge {
    /// Binds the listeners, loads the persisted route table (if a store is set) and starts
    /// serving. Must be called inside a tokio runtime.
    pub async fn new(opts: EdgeOptions) -> Result<Edge, EdgeError> {
        let table = match &opts.route_store {
            Some(store) => store.load()?.unwrap_or_default(),
            None => RouteTable::default(),
        };
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| EdgeError::Listen { addr, source })
        };
        let http = bind(opts.http_listen).await?;
        let https = match opts.https_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let admin = match opts.admin_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let local = |l: &TcpListener, a| {
            l.local_addr()
                .map_err(|source| EdgeError::Listen { addr: a, source })
        };
        let http_addr = local(&http, opts.http_listen)?;
        let https_addr = match (&https, opts.https_listen) {
            (Some(l), Some(a)) => Some(local(l, a)?),
            _ => None,
        };
        let admin_addr = match (&admin, opts.admin_listen) {
            (Some(l), Some(a)) => Some(local(l, a)?),
            _ => None,
        };
        let shared = Arc::new(Shared::new(opts, table)?);
        let workers = Arc::new(Workers::start(&shared).map_err(|source| EdgeError::Listen {
            addr: http_addr,
            source,
        })?);
        let opts = shared.opts();
        let tracker = shared.tracker();
        tracker.spawn(serve::accept_loop(
            shared.clone(),
            workers.clone(),
            http,
            None,
            opts.http_port,
        ));
        if let Some(l) = https {
            let tls = Some(shared.tls_acceptor().clone());
            tracker.spawn(serve::accept_loop(
                shared.clone(),
                workers,
                l,
                tls,
                opts.https_port,
            ));
        }
        if let Some(l) = admin {
            tracker.spawn(serve::admin_loop(shared.clone(), l));
        }
        let ports = Arc::new(PortListeners::default());
        ports.sync(&shared);
        wake::spawn_autostop(&shared);
        tracker.spawn(serve::sweep_loop(shared.clone()));
        tracing::info!(%http_addr, ?https_addr, ?admin_addr, region = %opts.region, "edge listening");
        Ok(Edge {
            shared,
            ports,
            update_lock: Arc::default(),
            http_addr,
            https_addr,
            admin_addr,
        })
    }

    /// Per-app counts of the requests that entered at this edge.
    pub fn entry_load(&self) -> Arc<crate::load::EntryLoad> {
        self.shared.entries()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where each public service port (other than the HTTP and HTTPS listeners') is bound.
    pub fn port_addrs(&self) -> HashMap<u16, SocketAddr> {
        self.ports.bound()
    }

    /// Installs `table` if it is newer than the current one (and persists it when a store is
    /// set). Returns whether it was installed; an older or equal revision is ignored.
    pub fn update_routes(&self, table: RouteTable) -> Result<bool, EdgeError> {
        let _one_at_a_time = self.update_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.shared.revision();
        if table.revision <= current && current != 0 {
            return Ok(false);
        }
        if let Some(store) = &self.shared.opts().route_store {
            store.save(&table)?;
        }
        tracing::info!(
            revision = table.revision,
            apps = table.apps.len(),
            "route table updated"
        );
        self.shared.install(table);
        self.ports.sync(&self.shared);
        Ok(true)
    }

    /// The revision of the route table in use (0 before the first one).
    pub fn revision(&self) -> u64 {
        self.shared.revision()
    }

    /// The route table in use.
    pub fn routes(&self) -> RouteTable {
        self.shared.routing().table.clone()
    }

    /// The round-trip times in use (the same `Arc` until [`Edge::set_rtts`] replaces them).
    pub fn rtts(&self) -> Arc<HashMap<String, Duration>> {
        self.shared.rtts()
    }

    /// Round-trip times from this edge to other regions, for nearness.
    pub fn set_rtts(&self, rtts: HashMap<String, Duration>) {
        self.shared.set_rtts(rtts);
    }

    /// Hosts (by id) whose mesh peer stopped answering this host: their machines are skipped
    /// until they answer again, before the control plane notices anything.
    pub fn set_unreachable_hosts(&self, hosts: HashSet<String>) {
        self.shared.set_unreachable_hosts(hosts);
    }

    /// The hosts this edge currently cannot reach.
    pub fn unreachable_hosts(&self) -> Arc<HashSet<String>> {
        self.shared.unreachable_hosts()
    }

    /// Serves `cert_pem` (a chain) and `key_pem` for `host` (which may be `*.example.com`).
    pub fn add_certificate(
        &self,
        host: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), EdgeError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let key = tls::certified_key(&host, cert_pem, key_pem)?;
        self.shared.certs().add_user(host, Arc::new(key));
        Ok(())
    }

    /// Replaces every user certificate with `certs` (hostname, chain PEM, key PEM): names
    /// missing from it lose their certificate. An entry that does not parse is left out and
    /// reported; the others are installed.
    pub fn set_certificates(&self, certs: &[(String, String, String)]) -> Vec<EdgeError> {
        let mut fresh = HashMap::new();
        let mut errors = Vec::new();
        for (host, cert, key) in certs {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            match tls::certified_key(&host, cert, key) {
                Ok(k) => {
                    fresh.insert(host, Arc::new(k));
                }
                Err(e) => errors.push(e.into()),
            }
        }
        self.shared.certs().set_users(fresh);
        errors
    }

    /// Answers these ACME challenges from now on (and no others): HTTP-01 on plain HTTP,
    /// TLS-ALPN-01 on HTTPS. Challenges whose certificate cannot be built are left out and
    /// reported.
    pub fn set_acme_challenges(
        &self,
        challenges: &[aloft_api::certs::AcmeChallenge],
    ) -> Vec<EdgeError> {
        let errors = self.shared.acme().set(challenges);
        errors
            .into_iter()
            .map(|e| EdgeError::Tls(e.into()))
            .collect()
    }

    /// Issues app certificates from `ca` (e.g. the cluster CA) from now on.
    pub fn set_ca(&self, ca: Arc<Ca>) {
        self.shared.certs().set_ca(ca);
    }

    /// Prometheus text exposition of the edge's metrics (also served on the admin listener).
    pub fn metrics_text(&self) -> String {
        self.shared.metrics().render()
    }

    /// Runs one autostop pass now (the periodic task runs the same).
    pub async fn autostop_now(&self) {
        wake::autostop_pass(&self.shared).await;
    }

    /// Stops accepting connections, lets in-flight requests finish for up to the drain timeout,
    /// then returns.
    pub async fn shutdown(&self) {
        if !self.shared.drain().await {
            tracing::warn!("drain timeout passed with requests still in flight");
        }
    }
}
