//! Listeners for every other public port of the route table's services (not the HTTP and HTTPS
//! listeners' ports), kept in step with the table, and raw TCP forwarding: a port whose
//! handlers lack `http` is passed through byte for byte (after TLS termination when it has
//! `tls`), with a PROXY protocol header first when it has `proxy_proto`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::balance::Steering;
use crate::flow::acquire;
use crate::headers::ConnInfo;
use crate::proxy_proto;
use crate::routes::{AppRoutes, PortRoute, Routing, ServiceRoutes};
use crate::serve::{serve_conn, serve_plain};
use crate::shared::Shared;

/// One bound public port.
struct PortListener {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for PortListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The bound listeners by public port.
#[derive(Default)]
pub(crate) struct PortListeners {
    ports: std::sync::Mutex<BTreeMap<u16, PortListener>>,
}

/// One app's claim on a public port.
struct Claim<'a> {
    app: &'a AppRoutes,
    svc: &'a ServiceRoutes,
    port: &'a PortRoute,
}

fn has(p: &PortRoute, handler: &str) -> bool {
    p.handlers.iter().any(|h| h == handler)
}

/// Every (app, service, port) listing public port `port`.
fn claims(routing: &Routing, port: u16) -> Vec<Claim<'_>> {
    let mut out = Vec::new();
    for app in &routing.table.apps {
        for svc in &app.services {
            if let Some(p) = svc.port(port) {
                out.push(Claim { app, svc, port: p });
                break;
            }
        }
    }
    out
}

impl PortListeners {
    /// Binds listeners for public ports that appeared in the route table and closes those of
    /// ports that left it (their open connections go on). A port that cannot be bound is
    /// logged and tried again with the next table.
    pub fn sync(&self, shared: &Arc<Shared>) {
        let opts = shared.opts();
        let Some(ip) = opts.tcp_listen else {
            return;
        };
        let routing = shared.routing();
        let mut wanted: Vec<u16> = routing
            .table
            .apps
            .iter()
            .flat_map(|a| a.services.iter())
            .flat_map(|s| s.ports.iter().map(|p| p.port))
            .filter(|p| *p != opts.http_port && *p != opts.https_port)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        ports.retain(|port, l| {
            let keep = wanted.binary_search(port).is_ok();
            if !keep {
                tracing::info!(port, addr = %l.addr, "closing the listener of a port no service lists");
            }
            keep
        });
        if shared.shutdown_signal().is_cancelled() {
            return;
        }
        for port in wanted {
            if ports.contains_key(&port) {
                continue;
            }
            match bind_port(shared, ip, port) {
                Ok(l) => {
                    ports.insert(port, l);
                }
                Err(e) => tracing::warn!(port, %ip, error = %e, "cannot listen on a service port"),
            }
        }
    }

    /// The addresses the service-port listeners are bound to, by public port.
    pub fn bound(&self) -> HashMap<u16, SocketAddr> {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, l)| (*p, l.addr))
            .collect()
    }
}

fn bind_port(shared: &Arc<Shared>, ip: IpAddr, port: u16) -> std::io::Result<PortListener> {
    let std_listener = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let _in_runtime = shared.runtime().enter();
    let listener = TcpListener::from_std(std_listener)?;
    let stop = shared.shutdown_signal().child_token();
    tracing::info!(port, %addr, "listening on a service port");
    shared
        .tracker()
        .spawn(port_loop(shared.clone(), listener, port, stop.clone()));
    Ok(PortListener { addr, stop })
}

async fn port_loop(shared: Arc<Shared>, listener: TcpListener, port: u16, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = (graceful.watcher(), stop.clone());
        shared.spawn_connection(|shared| async move {
            port_conn(&shared, stream, peer, port, watcher).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(shared.opts().drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(port, "connections still open after the drain timeout");
    }
}

/// One client connection on a service port: HTTP when a service there has the `http` handler,
/// raw TCP otherwise.
async fn port_conn(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    (watcher, stop): (Watcher, CancellationToken),
) {
    let local = stream.local_addr().unwrap_or(peer);
    let routing = shared.routing();
    let mut claims = claims(&routing, port);
    if claims.is_empty() {
        return;
    }
    // On an app's dedicated address the port is that app's alone.
    if let Some(owner) = routing.app_for_address(local.ip()) {
        claims.retain(|c| c.app.app == owner.app);
        if claims.is_empty() {
            return;
        }
    }
    let tls = claims.iter().any(|c| has(c.port, "tls"));
    let http = claims.iter().any(|c| has(c.port, "http"));
    let limit = shared.opts().header_read_timeout;
    if !tls {
        if http {
            let conn = ConnInfo::new(peer, local.ip(), false, port);
            serve_plain(shared, stream, conn, (watcher, stop)).await;
            return;
        }
        let [claim] = &claims[..] else {
            let apps: Vec<&str> = claims.iter().map(|c| c.app.app.as_str()).collect();
            tracing::warn!(
                port,
                ?apps,
                "several apps list this raw TCP port; refusing the connection"
            );
            return;
        };
        forward(shared, stream, claim, peer, local).await;
        return;
    }
    let acceptor = shared.tls_acceptor().clone();
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, port, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, port, "TLS handshake timed out");
            return;
        }
    };
    if http {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let conn = ConnInfo::new(peer, local.ip(), true, port);
        serve_conn(shared.clone(), stream, conn, (watcher, stop), Some(h2)).await;
        return;
    }
    let sni = stream.get_ref().1.server_name().map(str::to_string);
    let by_name = sni
        .as_deref()
        .and_then(|n| routing.app_for_host(n))
        .and_then(|a| claims.iter().find(|c| c.app.app == a.app));
    let claim = match (by_name, &claims[..]) {
        (Some(c), _) | (None, [c]) => c,
        (None, _) => {
            tracing::debug!(%peer, port, ?sni, "no app on this port answers to the TLS name");
            return;
        }
    };
    forward(shared, stream, claim, peer, local).await;
}

/// Takes a slot on a machine of the claim's app (waking one if needed), connects to it (another
/// machine if connecting fails: no byte was sent yet), writes the PROXY header if the port asks
/// for one, then copies bytes both ways until either side closes.
async fn forward<I>(
    shared: &Shared,
    mut client: I,
    claim: &Claim<'_>,
    peer: SocketAddr,
    local: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (app, svc) = (claim.app, claim.svc);
    let mut steer = Steering::default();
    let mut attempts = 0;
    let (machine, _slot, mut backend) = loop {
        let (m, slot) = match acquire(shared, app, svc, &steer).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(app = %app.app, %peer, reason = %e.message, "no machine for a TCP connection");
                return;
            }
        };
        let addr = SocketAddr::new(m.address, svc.internal_port);
        let connecting = TcpStream::connect(addr);
        match tokio::time::timeout(shared.opts().connect_timeout, connecting).await {
            Ok(Ok(s)) => break (m, slot, s),
            Ok(Err(e)) => {
                tracing::warn!(app = %app.app, machine = %m.id, %addr, error = %e, "connect failed");
            }
            Err(_) => tracing::warn!(app = %app.app, machine = %m.id, %addr, "connect timed out"),
        }
        attempts += 1;
        if attempts >= shared.opts().max_attempts {
            tracing::warn!(app = %app.app, %peer, "no machine accepted a TCP connection");
            return;
        }
        steer.exclude.insert(m.id.clone());
    };
    let _ = backend.set_nodelay(true);
    shared.metrics().tcp_connection(&app.app);
    if let Some(version) = claim.port.proxy_proto {
        let header = proxy_proto::encode(version, peer, local);
        if let Err(e) = backend.write_all(&header).await {
            tracing::debug!(machine = %machine.id, error = %e, "cannot send the PROXY header");
            return;
        }
    }
    tracing::debug!(app = %app.app, machine = %machine.id, %peer, "forwarding a TCP connection");
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(machine = %machine.id, error = %e, "TCP connection ended with an error");
    }
}
