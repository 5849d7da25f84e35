//! The edge itself: options, listeners, route updates and graceful drain.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::Loads;
use crate::metrics::Metrics;
use crate::proxy::{self, ConnInfo, ProxyBody};
use crate::routes::{MachineRoute, MachineState, RouteStore, RouteStoreError, RouteTable, Routing};
use crate::tcp::{self, PortListeners};
use crate::tls::{self, Ca, CertResolver, TlsError};
use crate::upstream::Upstream;
use crate::wake::{self, Waker};

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

/// How to run an edge. [`EdgeOptions::new`] fills in the defaults.
#[derive(Clone)]
pub struct EdgeOptions {
    pub http_listen: SocketAddr,
    pub https_listen: Option<SocketAddr>,
    /// The address the other public ports of services (raw TCP, TLS, PROXY protocol, HTTP on
    /// other ports) are bound on, one listener per port; `None` serves only the HTTP and HTTPS
    /// listeners.
    pub tcp_listen: Option<std::net::IpAddr>,
    /// Serves `/metrics` in Prometheus text format.
    pub admin_listen: Option<SocketAddr>,
    /// Apps answer at `<app>.<domain>`.
    pub domain: String,
    pub region: String,
    pub host_id: String,
    /// The public port the HTTP listener stands for (matched against services' ports).
    pub http_port: u16,
    /// The public port the HTTPS listener stands for.
    pub https_port: u16,
    /// Issues certificates for app hostnames; without it only user certificates are served.
    pub ca: Option<Arc<Ca>>,
    pub waker: Option<Arc<dyn Waker>>,
    /// Where the latest route table is kept; loaded at start.
    pub route_store: Option<RouteStore>,
    /// How long a request waits for a slot when every machine is at its hard limit.
    pub queue_timeout: Duration,
    /// How long a woken machine has to accept connections.
    pub start_timeout: Duration,
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections to machines are closed after this.
    pub idle_timeout: Duration,
    pub autostop_interval: Duration,
    /// A machine with nothing in flight for this long may be stopped.
    pub idle_period: Duration,
    /// Request bodies up to this size are buffered so they can be retried and replayed.
    pub max_buffered_body: usize,
    pub drain_timeout: Duration,
    /// Machines tried for one request when connecting fails.
    pub max_attempts: usize,
    /// Threads that serve the HTTP and HTTPS listeners' client connections, each running its
    /// own single-threaded runtime with its own machine connections (thread per core, as
    /// HAProxy's threads and nginx's workers do); connections are handed to them in turn. 0
    /// serves them on the runtime that started the edge.
    pub workers: usize,
}

impl EdgeOptions {
    pub fn new(http_listen: SocketAddr, domain: &str, region: &str, host_id: &str) -> Self {
        EdgeOptions {
            http_listen,
            https_listen: None,
            tcp_listen: None,
            admin_listen: None,
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            region: region.to_string(),
            host_id: host_id.to_string(),
            http_port: 80,
            https_port: 443,
            ca: None,
            waker: None,
            route_store: None,
            queue_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            autostop_interval: Duration::from_secs(60),
            idle_period: Duration::from_secs(300),
            max_buffered_body: 1 << 20,
            drain_timeout: Duration::from_secs(10),
            max_attempts: 3,
            workers: 0,
        }
    }
}

pub(crate) struct Inner {
    pub opts: EdgeOptions,
    pub routes: Arc<ArcSwap<Routing>>,
    pub loads: Arc<Loads>,
    pub rtts: RwLock<Arc<HashMap<String, Duration>>>,
    /// `opts.region` as a header value, made once.
    pub region_header: http::HeaderValue,
    /// Hosts this edge cannot reach over the mesh (by host id); requests waiting on one of
    /// them are retried elsewhere when it joins the set.
    pub unreachable: tokio::sync::watch::Sender<Arc<HashSet<String>>>,
    /// Machine states the edge learnt itself (it woke or stopped them) since the last table.
    overlay: Mutex<HashMap<String, MachineState>>,
    pub wake_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub waker: Option<Arc<dyn Waker>>,
    /// Keep-alive HTTP/1.1 connections to machines.
    pub upstream: Arc<Upstream>,
    /// HTTP/2 (h2c) connections to machines of services with `h2_backend`.
    pub h2_client: Client<HttpConnector, ProxyBody>,
    pub metrics: Metrics,
    /// Requests that entered at this edge, per app (for the host's load reports).
    pub entries: Arc<crate::load::EntryLoad>,
    certs: Arc<CertResolver>,
    pub acme: Arc<crate::acme::Challenges>,
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub listeners: PortListeners,
    pub runtime: tokio::runtime::Handle,
    /// The connection workers' queues (empty without workers), and the next one to use.
    workers: Vec<tokio::sync::mpsc::UnboundedSender<Accepted>>,
    next_worker: std::sync::atomic::AtomicUsize,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    update_lock: Mutex<()>,
}

impl Inner {
    /// Runs one client connection as a tracked task (so shutdown waits for it), counted in
    /// the open-connections gauge while it lasts.
    pub(crate) fn spawn_connection<F, Fut>(self: &Arc<Self>, conn: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(self.clone().counted(conn(self.clone())));
    }

    /// `conn`, counted in the open-connections gauge while it runs.
    async fn counted(self: Arc<Self>, conn: impl std::future::Future<Output = ()>) {
        self.metrics
            .open_connections
            .fetch_add(1, Ordering::Relaxed);
        conn.await;
        self.metrics
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }

    pub fn state_of(&self, m: &MachineRoute) -> MachineState {
        let overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        overlay.get(&m.id).copied().unwrap_or(m.state)
    }

    /// Whether `m` is started and healthy. A machine the edge woke itself counts as healthy
    /// until the next route table says otherwise (a stopped machine fails its checks, so the
    /// table that listed it stopped usually also listed it unhealthy).
    pub fn serving(&self, m: &MachineRoute) -> bool {
        let overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        match overlay.get(&m.id) {
            Some(state) => *state == MachineState::Started,
            None => m.state == MachineState::Started && m.healthy,
        }
    }

    pub fn set_state(&self, machine: &str, state: MachineState) {
        self.overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(machine.to_string(), state);
    }
}

/// A running edge proxy. Cloning gives another handle to the same edge.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
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
        let routes = Arc::new(ArcSwap::from_pointee(Routing::new(table, &opts.domain)));
        let certs = Arc::new(CertResolver::new(opts.ca.clone(), routes.clone()));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(opts.connect_timeout));
        connector.set_nodelay(true);
        let upstream = Arc::new(Upstream::new(opts.connect_timeout, opts.idle_timeout));
        let h2_client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.idle_timeout)
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
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
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(certs.clone())?));
        let tls = https.as_ref().map(|_| acceptor.clone());
        let region_header = http::HeaderValue::from_str(&opts.region)
            .unwrap_or_else(|_| http::HeaderValue::from_static(""));
        let (queues, worker_rxs): (Vec<_>, Vec<_>) = (0..opts.workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let inner = Arc::new(Inner {
            waker: opts.waker.clone(),
            opts,
            routes,
            loads: Arc::default(),
            rtts: RwLock::default(),
            region_header,
            unreachable: tokio::sync::watch::Sender::default(),
            overlay: Mutex::default(),
            wake_locks: Mutex::default(),
            upstream,
            h2_client,
            metrics: Metrics::default(),
            entries: Arc::default(),
            acme: certs.acme.clone(),
            certs,
            tls_acceptor: Some(acceptor),
            listeners: PortListeners::default(),
            runtime: tokio::runtime::Handle::current(),
            workers: queues,
            next_worker: Default::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            update_lock: Mutex::new(()),
        });
        for (i, rx) in worker_rxs.into_iter().enumerate() {
            start_worker(&inner, i, rx).map_err(|source| EdgeError::Listen {
                addr: http_addr,
                source,
            })?;
        }
        let port = inner.opts.http_port;
        inner
            .tracker
            .spawn(accept_loop(inner.clone(), http, None, port));
        if let Some(l) = https {
            let port = inner.opts.https_port;
            inner
                .tracker
                .spawn(accept_loop(inner.clone(), l, tls, port));
        }
        if let Some(l) = admin {
            inner.tracker.spawn(admin_loop(inner.clone(), l));
        }
        inner.sync_port_listeners();
        wake::spawn_autostop(&inner);
        inner.tracker.spawn(sweep_loop(inner.clone()));
        tracing::info!(%http_addr, ?https_addr, ?admin_addr, region = %inner.opts.region, "edge listening");
        Ok(Edge {
            inner,
            http_addr,
            https_addr,
            admin_addr,
        })
    }

    /// Per-app counts of the requests that entered at this edge.
    pub fn entry_load(&self) -> Arc<crate::load::EntryLoad> {
        self.inner.entries.clone()
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
        tcp::bound(&self.inner.listeners)
    }

    /// Installs `table` if it is newer than the current one (and persists it when a store is
    /// set). Returns whether it was installed; an older or equal revision is ignored.
    pub fn update_routes(&self, table: RouteTable) -> Result<bool, EdgeError> {
        let _one_at_a_time = self
            .inner
            .update_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.inner.routes.load().table.revision;
        if table.revision <= current && current != 0 {
            return Ok(false);
        }
        if let Some(store) = &self.inner.opts.route_store {
            store.save(&table)?;
        }
        tracing::info!(
            revision = table.revision,
            apps = table.apps.len(),
            "route table updated"
        );
        self.inner
            .routes
            .store(Arc::new(Routing::new(table, &self.inner.opts.domain)));
        self.inner
            .overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner.sync_port_listeners();
        Ok(true)
    }

    /// The revision of the route table in use (0 before the first one).
    pub fn revision(&self) -> u64 {
        self.inner.routes.load().table.revision
    }

    /// The route table in use.
    pub fn routes(&self) -> RouteTable {
        self.inner.routes.load().table.clone()
    }

    /// The round-trip times in use (the same `Arc` until [`Edge::set_rtts`] replaces them).
    pub fn rtts(&self) -> Arc<HashMap<String, Duration>> {
        self.inner
            .rtts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Round-trip times from this edge to other regions, for nearness.
    pub fn set_rtts(&self, rtts: HashMap<String, Duration>) {
        *self.inner.rtts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rtts);
    }

    /// Hosts (by id) whose mesh peer stopped answering this host: their machines are skipped
    /// until they answer again, before the control plane notices anything.
    pub fn set_unreachable_hosts(&self, hosts: HashSet<String>) {
        self.inner.unreachable.send_if_modified(|current| {
            if **current == hosts {
                return false;
            }
            tracing::warn!(hosts = ?hosts, "hosts unreachable over the mesh changed");
            *current = Arc::new(hosts);
            true
        });
    }

    /// The hosts this edge currently cannot reach.
    pub fn unreachable_hosts(&self) -> Arc<HashSet<String>> {
        self.inner.unreachable.borrow().clone()
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
        let mut user = self
            .inner
            .certs
            .user
            .write()
            .unwrap_or_else(|e| e.into_inner());
        user.insert(host, Arc::new(key));
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
        *self
            .inner
            .certs
            .user
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fresh;
        errors
    }

    /// Answers these ACME challenges from now on (and no others): HTTP-01 on plain HTTP,
    /// TLS-ALPN-01 on HTTPS. Challenges whose certificate cannot be built are left out and
    /// reported.
    pub fn set_acme_challenges(
        &self,
        challenges: &[aloft_api::certs::AcmeChallenge],
    ) -> Vec<EdgeError> {
        let errors = self.inner.acme.set(challenges);
        errors.into_iter().map(EdgeError::from).collect()
    }

    /// Issues app certificates from `ca` (e.g. the cluster CA) from now on.
    pub fn set_ca(&self, ca: Arc<Ca>) {
        self.inner.certs.set_ca(ca);
    }

    /// Prometheus text exposition of the edge's metrics (also served on the admin listener).
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render()
    }

    /// Runs one autostop pass now (the periodic task runs the same).
    pub async fn autostop_now(&self) {
        self.inner.autostop_pass().await;
    }

    /// Stops accepting connections, lets in-flight requests finish for up to the drain timeout,
    /// then returns.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(self.inner.opts.drain_timeout, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout passed with requests still in flight");
        }
    }
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    port: u16,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_or(peer.ip(), |a| a.ip());
        let conn = ConnInfo::new(peer, local, tls.is_some(), port);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        if !inner.workers.is_empty() {
            let i = inner.next_worker.fetch_add(1, Ordering::Relaxed) % inner.workers.len();
            // Off this runtime's reactor, onto the worker's.
            match stream.into_std() {
                Ok(stream) => {
                    let _ = inner.workers[i].send(Accepted {
                        stream,
                        tls,
                        conn,
                        watcher,
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot hand a connection to a worker"),
            }
            continue;
        }
        inner.spawn_connection(|inner| async move {
            client_conn(&inner, stream, tls, conn, watcher).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(inner.opts.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}

/// A client connection accepted on the HTTP or HTTPS listener, for a worker.
struct Accepted {
    stream: std::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conn: ConnInfo,
    watcher: Watcher,
}

/// Starts connection worker `index`: a thread with a single-threaded runtime that serves the
/// connections sent to it, until the queue closes and its connections are done (or the
/// drain timeout passes after shutdown).
fn start_worker(
    inner: &Arc<Inner>,
    index: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let inner = inner.clone();
    std::thread::Builder::new()
        .name(format!("edge-worker-{index}"))
        .spawn(move || {
            crate::upstream::set_worker(index + 1);
            rt.block_on(async move {
                let local = TaskTracker::new();
                loop {
                    let accepted = tokio::select! {
                        a = rx.recv() => a,
                        () = inner.shutdown.cancelled() => None,
                    };
                    let Some(Accepted {
                        stream,
                        tls,
                        conn,
                        watcher,
                    }) = accepted
                    else {
                        break;
                    };
                    let stream = match tokio::net::TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "worker cannot take a connection");
                            continue;
                        }
                    };
                    let served = {
                        let inner = inner.clone();
                        async move { client_conn(&inner, stream, tls, conn, watcher).await }
                    };
                    // Tracked by the edge (for its drain) and by this worker (which must not
                    // drop its runtime under them).
                    local.spawn(inner.tracker.track_future(inner.clone().counted(served)));
                }
                // After a shutdown: what runs on this runtime (connections, and tunnels they
                // started) gets the drain timeout, as on the edge's own runtime.
                local.close();
                let drain = inner.opts.drain_timeout;
                let _ = tokio::time::timeout(drain, async {
                    local.wait().await;
                    inner.tracker.wait().await;
                })
                .await;
            });
        })?;
    Ok(())
}

async fn client_conn(
    inner: &Arc<Inner>,
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conn: ConnInfo,
    watcher: Watcher,
) {
    let limit = inner.opts.header_read_timeout;
    let peer = conn.peer;
    let stop = inner.shutdown.clone();
    match tls {
        None => serve_plain(inner, stream, conn, (watcher, stop)).await,
        Some(acceptor) => match tokio::time::timeout(limit, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                if s.get_ref().1.alpn_protocol() == Some(crate::acme::ALPN) {
                    // An ACME validation: the handshake was the answer.
                    return;
                }
                let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                serve_conn(inner.clone(), s, conn, (watcher, stop), Some(h2)).await;
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

/// Serves HTTP on a plain client connection. The first bytes tell HTTP/1 from h2c (prior
/// knowledge) without a read through hyper's detection; waiting for them is also what cuts off
/// a client that never sends a byte.
pub(crate) async fn serve_plain(
    inner: &Arc<Inner>,
    stream: tokio::net::TcpStream,
    conn: ConnInfo,
    (watcher, stop): (Watcher, CancellationToken),
) {
    let limit = inner.opts.header_read_timeout;
    let mut first = [0u8; H2_PREFACE.len()];
    if let Ok(Ok(n @ 1..)) = tokio::time::timeout(limit, stream.peek(&mut first)).await {
        let h2 = if first[..n] != H2_PREFACE[..n] {
            Some(false)
        } else if n == H2_PREFACE.len() {
            Some(true)
        } else {
            None
        };
        serve_conn(inner.clone(), stream, conn, (watcher, stop), h2).await;
    }
}

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often an idle HTTP/2 client connection is pinged.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Serves HTTP on one client connection; `h2` is what ALPN chose, `None` to detect it. The
/// connection is drained when `stop` (its listener's stop) is cancelled, and the watcher of
/// the listener's graceful shutdown lives until it ends.
pub(crate) async fn serve_conn<I>(
    inner: Arc<Inner>,
    io: I,
    conn: ConnInfo,
    (watcher, stop): (Watcher, CancellationToken),
    h2: Option<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match h2 {
        Some(false) => crate::h1::serve(inner, io, conn, (watcher, stop)).await,
        Some(true) => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(H2_KEEP_ALIVE));
            let served = builder.serve_connection(TokioIo::new(io), service(inner, conn));
            if let Err(e) = watcher.watch(served).await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        }
        None => {
            let header_timeout = inner.opts.header_read_timeout;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(H2_KEEP_ALIVE));
            let served =
                builder.serve_connection_with_upgrades(TokioIo::new(io), service(inner, conn));
            if let Err(e) = watcher.watch(served).await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        }
    }
}

/// The hyper service that runs every request of a connection through [`proxy::handle`].
fn service(
    inner: Arc<Inner>,
    conn: ConnInfo,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = hyper::Response<ProxyBody>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<hyper::Response<ProxyBody>, std::convert::Infallible>,
    > + Send,
> + Clone {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let inner = inner.clone();
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy::handle(inner, req, conn).await) }
    })
}

/// Serves an HTTP/1 client connection with hyper (upgrades included) for the requests the
/// relay in `h1` leaves to it. Drained by hand: on `stop` it finishes the request in flight
/// and closes.
pub(crate) async fn serve_http1<I>(
    inner: Arc<Inner>,
    io: I,
    conn: ConnInfo,
    (watcher, stop): (Watcher, CancellationToken),
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(inner.opts.header_read_timeout);
    let served = builder
        .serve_connection(TokioIo::new(io), service(inner, conn))
        .with_upgrades();
    tokio::pin!(served);
    let r = tokio::select! {
        biased;
        r = served.as_mut() => r,
        () = stop.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    drop(watcher);
    if let Err(e) = r {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Closes idle machine connections past the idle timeout, until shutdown.
async fn sweep_loop(inner: Arc<Inner>) {
    let mut every = tokio::time::interval(inner.upstream.sweep_interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = every.tick() => inner.upstream.sweep(),
        }
    }
}

async fn admin_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let stream = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let inner = inner.clone();
                async move { Ok::<_, std::convert::Infallible>(proxy::admin(&inner, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
