//! The state every part of the edge shares: the route table in use, what the edge learnt about
//! machines itself (states it set by waking or stopping them, load, hosts it cannot reach),
//! the machine connection pools, certificates, metrics, and the shutdown signal with the tasks
//! it waits for. Fields are private; the rest of the crate goes through the methods, so each
//! rule (say, that a new table forgets the states the edge set) lives in one place.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::Challenges;
use crate::balance::Loads;
use crate::body::ProxyBody;
use crate::load::{EntryGuard, EntryLoad};
use crate::metrics::Metrics;
use crate::options::{EdgeOptions, Waker};
use crate::routes::{MachineRoute, MachineState, RouteTable, Routing};
use crate::tls::{self, CertResolver, TlsError};
use crate::upstream::Upstream;

/// One edge's shared state; see the module's description.
pub(crate) struct Shared {
    opts: EdgeOptions,
    routes: Arc<ArcSwap<Routing>>,
    loads: Arc<Loads>,
    rtts: RwLock<Arc<HashMap<String, Duration>>>,
    /// `opts.region` as a header value, made once.
    region_header: HeaderValue,
    /// Hosts this edge cannot reach over the mesh (by host id); requests waiting on one of
    /// them are retried elsewhere when it joins the set.
    unreachable: tokio::sync::watch::Sender<Arc<HashSet<String>>>,
    /// Machine states the edge learnt itself (it woke or stopped them) since the last table.
    overlay: Mutex<HashMap<String, MachineState>>,
    /// One lock per machine being woken, so concurrent requests share one start.
    wake_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Keep-alive HTTP/1.1 connections to machines.
    upstream: Arc<Upstream>,
    /// HTTP/2 (h2c) connections to machines of services with `h2_backend`.
    h2_client: Client<HttpConnector, ProxyBody>,
    metrics: Metrics,
    /// Requests that entered at this edge, per app (for the host's load reports).
    entries: Arc<EntryLoad>,
    certs: Arc<CertResolver>,
    tls_acceptor: tokio_rustls::TlsAcceptor,
    /// The runtime that started the edge (listeners bound later are served there).
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Shared {
    /// The state of an edge that starts with `table`. Must be called inside a tokio runtime.
    pub fn new(opts: EdgeOptions, table: RouteTable) -> Result<Shared, TlsError> {
        let routes = Arc::new(ArcSwap::from_pointee(Routing::new(table, &opts.domain)));
        let certs = Arc::new(CertResolver::new(opts.ca.clone(), routes.clone()));
        let tls_acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(certs.clone())?));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(opts.connect_timeout));
        connector.set_nodelay(true);
        let h2_client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.idle_timeout)
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        let region_header =
            HeaderValue::from_str(&opts.region).unwrap_or_else(|_| HeaderValue::from_static(""));
        Ok(Shared {
            upstream: Arc::new(Upstream::new(opts.connect_timeout, opts.idle_timeout)),
            opts,
            routes,
            loads: Arc::default(),
            rtts: RwLock::default(),
            region_header,
            unreachable: tokio::sync::watch::Sender::default(),
            overlay: Mutex::default(),
            wake_locks: Mutex::default(),
            h2_client,
            metrics: Metrics::default(),
            entries: Arc::default(),
            certs,
            tls_acceptor,
            runtime: tokio::runtime::Handle::current(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
    }

    #[inline]
    pub fn opts(&self) -> &EdgeOptions {
        &self.opts
    }

    /// The route table in use, as one snapshot (a request keeps the one it started with).
    #[inline]
    pub fn routing(&self) -> Arc<Routing> {
        self.routes.load_full()
    }

    /// The revision of the route table in use.
    pub fn revision(&self) -> u64 {
        self.routes.load().table.revision
    }

    /// Serves `table` from now on. What the edge learnt about machine states itself is
    /// forgotten: the new table is newer.
    pub fn install(&self, table: RouteTable) {
        self.routes
            .store(Arc::new(Routing::new(table, &self.opts.domain)));
        self.overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    #[inline]
    pub fn state_of(&self, m: &MachineRoute) -> MachineState {
        let overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        overlay.get(&m.id).copied().unwrap_or(m.state)
    }

    /// Whether `m` is started and healthy. A machine the edge woke itself counts as healthy
    /// until the next route table says otherwise (a stopped machine fails its checks, so the
    /// table that listed it stopped usually also listed it unhealthy).
    #[inline]
    pub fn serving(&self, m: &MachineRoute) -> bool {
        let overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        match overlay.get(&m.id) {
            Some(state) => *state == MachineState::Started,
            None => m.state == MachineState::Started && m.healthy,
        }
    }

    /// Records a state the edge gave `machine` itself (it woke or stopped it).
    pub fn set_state(&self, machine: &str, state: MachineState) {
        self.overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(machine.to_string(), state);
    }

    #[inline]
    pub fn loads(&self) -> &Arc<Loads> {
        &self.loads
    }

    #[inline]
    pub fn rtts(&self) -> Arc<HashMap<String, Duration>> {
        self.rtts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_rtts(&self, rtts: HashMap<String, Duration>) {
        *self.rtts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rtts);
    }

    #[inline]
    pub fn unreachable_hosts(&self) -> Arc<HashSet<String>> {
        self.unreachable.borrow().clone()
    }

    /// Replaces the hosts this edge cannot reach; requests waiting on a host that joins them
    /// are given up.
    pub fn set_unreachable_hosts(&self, hosts: HashSet<String>) {
        self.unreachable.send_if_modified(|current| {
            if **current == hosts {
                return false;
            }
            tracing::warn!(hosts = ?hosts, "hosts unreachable over the mesh changed");
            *current = Arc::new(hosts);
            true
        });
    }

    /// Runs `work` unless `host` (another host than the edge's) becomes unreachable over the
    /// mesh first; `None` then.
    pub async fn until_unreachable<T>(
        &self,
        host: &str,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        if host.is_empty() || host == self.opts.host_id {
            return Some(work.await);
        }
        let mut cut = self.unreachable.subscribe();
        let cut_off = async move {
            if cut.wait_for(|u| u.contains(host)).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = work => Some(r),
            () = cut_off => None,
        }
    }

    #[inline]
    pub fn region_header(&self) -> &HeaderValue {
        &self.region_header
    }

    #[inline]
    pub fn waker(&self) -> Option<&Arc<dyn Waker>> {
        self.opts.waker.as_ref()
    }

    /// The lock a wake of `machine` holds, so concurrent requests share one start.
    pub fn wake_lock(&self, machine: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.wake_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(machine.to_string()).or_default().clone()
    }

    #[inline]
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    #[inline]
    pub fn h2_client(&self) -> &Client<HttpConnector, ProxyBody> {
        &self.h2_client
    }

    #[inline]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a request of `app` entering at this edge until the guard drops.
    #[inline]
    pub fn enter(&self, app: &str) -> EntryGuard {
        self.entries.enter(app)
    }

    pub fn entries(&self) -> Arc<EntryLoad> {
        self.entries.clone()
    }

    pub fn certs(&self) -> &CertResolver {
        &self.certs
    }

    #[inline]
    pub fn acme(&self) -> &Challenges {
        self.certs.acme()
    }

    #[inline]
    pub fn tls_acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.tls_acceptor
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Cancelled when the edge shuts down.
    #[inline]
    pub fn shutdown_signal(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The tasks the edge's drain waits for.
    #[inline]
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Stops accepting, then waits for the tracked tasks up to the drain timeout; `false` if
    /// some were still running then.
    pub async fn drain(&self) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(self.opts.drain_timeout, self.tracker.wait())
            .await
            .is_ok()
    }

    /// `conn`, counted in the open-connections gauge while it runs.
    pub async fn counted(self: Arc<Self>, conn: impl Future<Output = ()>) {
        self.metrics.connections(1);
        conn.await;
        self.metrics.connections(-1);
    }

    /// Runs one client connection as a tracked task (so shutdown waits for it), counted in
    /// the open-connections gauge while it lasts.
    pub fn spawn_connection<F, Fut>(self: &Arc<Self>, conn: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(self.clone().counted(conn(self.clone())));
    }
}
