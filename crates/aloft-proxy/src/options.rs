//! What the host hands the edge: its options and the [`Waker`] that starts and stops machines.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::routes::{Autostop, RouteStore};
use crate::tls::Ca;

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

/// The future a [`Waker`] returns; the error is a message for the logs.
pub type WakeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Starts and stops machines for the edge. The agent implements it by asking its runtime (or the
/// control plane); the edge only decides when.
pub trait Waker: Send + Sync {
    /// Starts (or resumes) `machine_id` of `app`. The edge then waits until the machine accepts
    /// connections on its service port.
    fn start<'a>(&'a self, app: &'a str, machine_id: &'a str) -> WakeFuture<'a>;
    /// Stops or suspends (per `mode`) an idle machine.
    fn stop<'a>(&'a self, app: &'a str, machine_id: &'a str, mode: Autostop) -> WakeFuture<'a>;
}
