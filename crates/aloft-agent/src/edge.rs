//! The edge role inside the agent: an [`aloft_proxy::Edge`] that routes by the control plane's
//! route table, keeps a durable copy of it under the data dir (so a restarted agent routes
//! even while the control plane is down), wakes stopped machines through the control plane,
//! and terminates TLS with the cluster CA and the user certificates the control plane hands
//! out (kept in `edge/tls.json`, mode 0600, for the same reason). It also answers the ACME
//! challenges the control plane is solving (`GET /v1/edge/acme`, a long poll).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aloft_api::certs::EdgeTls;
use aloft_api::routes::{IdleRequest, RoutesClient, RoutesClientError, WakeRequest};
use aloft_proxy::{Autostop, Ca, Edge, EdgeOptions, RouteStore, WakeFuture, Waker};
use futures::StreamExt as _;
use tracing::{info, warn};

use crate::agent::AgentOptions;

/// A route watch silent for this long (keep-alives come every 10 s) is reopened.
const ROUTES_SILENCE: Duration = Duration::from_secs(30);
/// How long a woken machine has to reach `started` on the control plane.
const START_WAIT_SECS: u64 = 30;
/// How often the edge asks the control plane for certificate changes.
const TLS_POLL: Duration = Duration::from_secs(5);

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
    #[error("The edge cannot reach the control plane for certificates")]
    Client(#[from] aloft_api::ClientError),
}

/// The running edge and the task that keeps its routes current.
pub struct EdgeRole {
    edge: Arc<Edge>,
    follow: tokio::task::JoinHandle<()>,
    tls: Option<tokio::task::JoinHandle<()>>,
    acme: tokio::task::JoinHandle<()>,
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
        edge_opts.workers = opts.edge_workers;
        // Services' other public ports (raw TCP, TLS, PROXY protocol) on the edge's address.
        edge_opts.tcp_listen = Some(http.ip());
        let client = RoutesClient::new(&opts.control_url, opts.token.clone())?;
        edge_opts.waker = Some(Arc::new(ControlWaker {
            client: client.clone(),
        }));
        let api = aloft_api::Client::new(&opts.control_url, opts.token.clone())?;
        let tls_path = dir.join("tls.json");
        let mut saved_tls = load_tls(&tls_path);
        if let Some(https) = opts.https {
            edge_opts.https_listen = Some(https);
            // The cluster CA, so certificates verify against `aloft certs root` from the first
            // handshake; a host that never reached the control plane starts with its own CA
            // and switches as soon as it does.
            match tokio::time::timeout(Duration::from_secs(5), api.edge_tls()).await {
                Ok(Ok(bundle)) => {
                    save_tls(&tls_path, &bundle);
                    saved_tls = Some(bundle);
                }
                Ok(Err(e)) => warn!(error = %e, "cannot fetch the cluster certificates yet"),
                Err(_) => warn!("the control plane did not send the cluster certificates in time"),
            }
            let ca = match &saved_tls {
                Some(b) => Ca::from_pem(&b.ca_certificate, &b.ca_private_key),
                None => Ca::load_or_create(dir.join("ca")),
            };
            edge_opts.ca = Some(Arc::new(ca.map_err(|source| EdgeRoleError::Ca {
                path: tls_path.clone(),
                source,
            })?));
        }
        let edge = Arc::new(Edge::new(edge_opts).await?);
        let tls = opts.https.map(|_| {
            if let Some(b) = &saved_tls {
                install_user_certs(&edge, b);
            }
            let version = saved_tls.map(|b| b.version);
            tokio::spawn(follow_tls(edge.clone(), api, tls_path, version))
        });
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
        let acme_api = aloft_api::Client::new(&opts.control_url, opts.token.clone())?;
        let acme = tokio::spawn(follow_acme(
            edge.clone(),
            acme_api,
            host_id.to_owned(),
            opts.https.is_some(),
        ));
        Ok(EdgeRole {
            edge,
            follow,
            tls,
            acme,
        })
    }

    /// [`EdgeRole::start`], logging a failure instead: a host whose edge cannot listen still
    /// runs its machines.
    pub async fn start_or_log(opts: &AgentOptions, host_id: &str) -> Option<EdgeRole> {
        match EdgeRole::start(opts, host_id).await {
            Ok(role) => Some(role),
            Err(e) => {
                let chain = aloft_api::error::error_chain(&e);
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
        self.acme.abort();
        if let Some(t) = &self.tls {
            t.abort();
        }
        self.edge.shutdown().await;
    }
}

impl Drop for EdgeRole {
    fn drop(&mut self) {
        self.follow.abort();
        self.acme.abort();
        if let Some(t) = &self.tls {
            t.abort();
        }
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

/// The saved certificate bundle, if any (an unreadable one is ignored: the control plane
/// sends a fresh one).
fn load_tls(path: &std::path::Path) -> Option<EdgeTls> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring the saved certificate bundle");
            None
        }
    }
}

/// Saves the bundle (it holds private keys: mode 0600, written to a temp file then renamed).
fn save_tls(path: &std::path::Path, bundle: &EdgeTls) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec(bundle)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "cannot save the certificate bundle");
    }
}

fn install_user_certs(edge: &Edge, bundle: &EdgeTls) {
    let certs: Vec<(String, String, String)> = bundle
        .certificates
        .iter()
        .map(|c| {
            (
                c.hostname.clone(),
                c.certificate.clone(),
                c.private_key.clone(),
            )
        })
        .collect();
    for e in edge.set_certificates(&certs) {
        warn!(error = %e, "a user certificate is not served");
    }
}

/// Polls the control plane's certificate bundle and installs each new version (the cluster CA
/// and the user certificates), saving it for restarts.
async fn follow_tls(
    edge: Arc<Edge>,
    api: aloft_api::Client,
    path: std::path::PathBuf,
    mut version: Option<String>,
) {
    loop {
        match api.edge_tls().await {
            Ok(bundle) if version.as_deref() != Some(bundle.version.as_str()) => {
                match Ca::from_pem(&bundle.ca_certificate, &bundle.ca_private_key) {
                    Ok(ca) => edge.set_ca(Arc::new(ca)),
                    Err(e) => {
                        warn!(error = %e, "the cluster CA from the control plane is not usable")
                    }
                }
                install_user_certs(&edge, &bundle);
                save_tls(&path, &bundle);
                info!(
                    certificates = bundle.certificates.len(),
                    "edge certificates updated"
                );
                version = Some(bundle.version);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot fetch the certificate bundle"),
        }
        tokio::time::sleep(TLS_POLL).await;
    }
}

/// Follows the control plane's pending ACME challenges (a long poll that also tells it which
/// version this edge has installed) and has the edge answer them.
async fn follow_acme(edge: Arc<Edge>, api: aloft_api::Client, host_id: String, https: bool) {
    let mut seen = None;
    let mut delay = Duration::from_millis(200);
    loop {
        match api.edge_acme(&host_id, https, seen).await {
            Ok(set) => {
                if seen != Some(set.version) {
                    for e in edge.set_acme_challenges(&set.challenges) {
                        warn!(error = %e, "an ACME challenge is not answered");
                    }
                    if !set.challenges.is_empty() {
                        info!(
                            challenges = set.challenges.len(),
                            "ACME challenges installed"
                        );
                    }
                    seen = Some(set.version);
                }
                delay = Duration::from_millis(200);
                continue;
            }
            Err(e) => tracing::debug!(error = %e, "cannot fetch the ACME challenges"),
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
