//! The edge role inside the agent: an [`aloft_proxy::Edge`] that routes by the control plane's
//! route table, keeps a durable copy of it under the data dir (so a restarted agent routes
//! even while the control plane is down), and wakes stopped machines through the Machines API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aloft_api::routes::{IdleRequest, RoutesClient, RoutesClientError, WakeRequest};
use aloft_proxy::{Autostop, Ca, Edge, EdgeOptions, RouteStore, WakeFuture, Waker};
use futures::StreamExt as _;
use tracing::{info, warn};

use crate::agent::AgentOptions;

/// A route watch silent for this long (keep-alives come every 10 s) is reopened.
const ROUTES_SILENCE: Duration = Duration::from_secs(30);
/// How long a woken machine has to reach `started` on the control plane.
const START_WAIT_SECS: u64 = 30;

/// Where the agent tells its embedder the edge's bound HTTP address, or why it did not start.
pub type EdgeReady = tokio::sync::mpsc::UnboundedSender<Result<SocketAddr, String>>;

/// Errors starting the edge role.
#[derive(Debug, thiserror::Error)]
pub enum EdgeRoleError {
    #[error("The edge cannot start")]
    Edge(#[from] aloft_proxy::EdgeError),
    #[error("The edge's route table store in {path} cannot be opened")]
    Store {
        path: std::path::PathBuf,
        source: aloft_proxy::RouteStoreError,
    },
    #[error("The edge's certificate authority in {path} cannot be loaded")]
    Ca {
        path: std::path::PathBuf,
        source: aloft_proxy::TlsError,
    },
    #[error("The edge cannot follow routes from the control plane")]
    Routes(#[from] RoutesClientError),
}

/// The running edge and the task that keeps its routes current.
pub struct EdgeRole {
    edge: Arc<Edge>,
    follow: tokio::task::JoinHandle<()>,
}

impl EdgeRole {
    /// Binds the edge's listeners, loads the saved route table and starts following the
    /// control plane's. Prints `edge listening on http://ADDR`.
    pub async fn start(opts: &AgentOptions, host_id: &str) -> Result<EdgeRole, EdgeRoleError> {
        let dir = opts.data_dir.join("edge");
        let path = dir.join("routes.json");
        let store = RouteStore::open(&path).map_err(|source| EdgeRoleError::Store {
            path: path.clone(),
            source,
        })?;
        if let Err(e) = store.load() {
            // A torn or foreign file must not keep the host's edge down: start empty.
            warn!(error = %e, "ignoring the saved route table");
            let _ = std::fs::remove_file(&path);
        }
        let http = opts
            .http
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let domain = opts.domain.as_deref().unwrap_or("localhost");
        let mut edge_opts = EdgeOptions::new(http, domain, &opts.region, host_id);
        edge_opts.route_store = Some(store);
        let client = RoutesClient::new(&opts.control_url, opts.token.clone())?;
        edge_opts.waker = Some(Arc::new(ControlWaker {
            client: client.clone(),
        }));
        if let Some(https) = opts.https {
            let ca_dir = dir.join("ca");
            let ca = Ca::load_or_create(&ca_dir).map_err(|source| EdgeRoleError::Ca {
                path: ca_dir,
                source,
            })?;
            edge_opts.https_listen = Some(https);
            edge_opts.ca = Some(Arc::new(ca));
        }
        let edge = Arc::new(Edge::new(edge_opts).await?);
        println!("edge listening on http://{}", edge.http_addr());
        if let Some(addr) = edge.https_addr() {
            println!("edge listening on https://{addr}");
        }
        if edge.revision() > 0 {
            info!(
                revision = edge.revision(),
                "edge routes by its saved table until the control plane answers"
            );
        }
        if let Some(ready) = &opts.edge_ready {
            let _ = ready.send(Ok(edge.http_addr()));
        }
        let follow = tokio::spawn(follow_routes(edge.clone(), client));
        Ok(EdgeRole { edge, follow })
    }

    /// [`EdgeRole::start`], logging a failure instead: a host whose edge cannot listen still
    /// runs its machines.
    pub async fn start_or_log(opts: &AgentOptions, host_id: &str) -> Option<EdgeRole> {
        match EdgeRole::start(opts, host_id).await {
            Ok(role) => Some(role),
            Err(e) => {
                let mut chain = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    chain.push_str(&format!(": {s}"));
                    source = s.source();
                }
                tracing::error!(error = %chain, "the edge is not running on this host");
                if let Some(ready) = &opts.edge_ready {
                    let _ = ready.send(Err(chain));
                }
                None
            }
        }
    }

    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    /// Stops following routes and drains the edge's connections.
    pub async fn shutdown(&self) {
        self.follow.abort();
        self.edge.shutdown().await;
    }
}

impl Drop for EdgeRole {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

/// Follows `/v1/routes/watch` forever, resuming from the edge's revision and reconnecting with
/// backoff; each table is installed (and saved) by the edge.
async fn follow_routes(edge: Arc<Edge>, client: RoutesClient) {
    let mut delay = Duration::from_millis(200);
    loop {
        match client.watch(edge.revision()).await {
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                loop {
                    let event = match tokio::time::timeout(ROUTES_SILENCE, stream.next()).await {
                        Ok(Some(Ok(event))) => event,
                        Ok(Some(Err(e))) => {
                            warn!(error = %e, "route watch broke");
                            break;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            warn!("route watch went silent; reopening");
                            break;
                        }
                    };
                    delay = Duration::from_millis(200);
                    let Some(table) = event.table else { continue };
                    let revision = table.revision;
                    match edge.update_routes(table) {
                        Ok(true) => info!(revision, "edge routes updated"),
                        Ok(false) => {}
                        Err(e) => warn!(revision, error = %e, "cannot save the route table"),
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot open the route watch"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Starts and stops machines for the edge through the control plane's edge endpoints (a join
/// token cannot use the Machines API), so machine state stays owned there and the agent on the
/// machine's host runs it.
struct ControlWaker {
    client: RoutesClient,
}

impl Waker for ControlWaker {
    fn start<'a>(&'a self, app: &'a str, machine_id: &'a str) -> WakeFuture<'a> {
        Box::pin(async move {
            let req = WakeRequest {
                app: app.to_owned(),
                machine_id: machine_id.to_owned(),
                timeout: Some(START_WAIT_SECS),
            };
            self.client.wake(&req).await.map_err(|e| e.to_string())
        })
    }

    fn stop<'a>(&'a self, app: &'a str, machine_id: &'a str, mode: Autostop) -> WakeFuture<'a> {
        Box::pin(async move {
            let req = IdleRequest {
                app: app.to_owned(),
                machine_id: machine_id.to_owned(),
                mode,
            };
            self.client.idle(&req).await.map_err(|e| e.to_string())
        })
    }
}
