//! Client connections: the HTTP and HTTPS listeners' accept loops, the connection workers
//! they hand connections to, TLS handshakes, and the choice of engine per connection (the
//! relay in `h1` for HTTP/1.1, hyper for HTTP/2 and for what the relay hands over). Also the
//! admin listener and the sweep of idle machine connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::headers::ConnInfo;
use crate::hyper_engine;
use crate::shared::Shared;

/// The connection workers' queues (empty without workers), and the next one to use.
pub(crate) struct Workers {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `opts.workers` connection workers (none: connections are served on the runtime
    /// that started the edge).
    pub fn start(shared: &Arc<Shared>) -> std::io::Result<Workers> {
        let mut queues = Vec::new();
        for i in 0..shared.opts().workers {
            let (tx, rx) = mpsc::unbounded_channel();
            start_worker(shared, i, rx)?;
            queues.push(tx);
        }
        Ok(Workers {
            queues,
            next: AtomicUsize::new(0),
        })
    }
}

/// Accepts client connections on the HTTP or HTTPS listener (`tls` set) for public `port`
/// until shutdown, then gives them the drain timeout to finish.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    workers: Arc<Workers>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    port: u16,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shared.shutdown_signal().cancelled() => break,
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
        if !workers.queues.is_empty() {
            let i = workers.next.fetch_add(1, Ordering::Relaxed) % workers.queues.len();
            // Off this runtime's reactor, onto the worker's.
            match stream.into_std() {
                Ok(stream) => {
                    let _ = workers.queues[i].send(Accepted {
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
        shared.spawn_connection(|shared| async move {
            client_conn(&shared, stream, tls, conn, watcher).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(shared.opts().drain_timeout, graceful.shutdown())
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
    shared: &Arc<Shared>,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Accepted>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("edge-worker-{index}"))
        .spawn(move || {
            crate::upstream::set_worker(index + 1);
            rt.block_on(async move {
                let local = TaskTracker::new();
                loop {
                    let accepted = tokio::select! {
                        a = rx.recv() => a,
                        () = shared.shutdown_signal().cancelled() => None,
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
                        let shared = shared.clone();
                        async move { client_conn(&shared, stream, tls, conn, watcher).await }
                    };
                    // Tracked by the edge (for its drain) and by this worker (which must not
                    // drop its runtime under them).
                    local.spawn(
                        shared
                            .tracker()
                            .track_future(shared.clone().counted(served)),
                    );
                }
                // After a shutdown: what runs on this runtime (connections, and tunnels they
                // started) gets the drain timeout, as on the edge's own runtime.
                local.close();
                let drain = shared.opts().drain_timeout;
                let _ = tokio::time::timeout(drain, async {
                    local.wait().await;
                    shared.tracker().wait().await;
                })
                .await;
            });
        })?;
    Ok(())
}

async fn client_conn(
    shared: &Arc<Shared>,
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conn: ConnInfo,
    watcher: Watcher,
) {
    let limit = shared.opts().header_read_timeout;
    let peer = conn.peer;
    let stop = shared.shutdown_signal().clone();
    match tls {
        None => serve_plain(shared, stream, conn, (watcher, stop)).await,
        Some(acceptor) => match tokio::time::timeout(limit, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                if s.get_ref().1.alpn_protocol() == Some(crate::acme::ALPN) {
                    // An ACME validation: the handshake was the answer.
                    return;
                }
                let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                serve_conn(shared.clone(), s, conn, (watcher, stop), Some(h2)).await;
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
    shared: &Arc<Shared>,
    stream: tokio::net::TcpStream,
    conn: ConnInfo,
    (watcher, stop): (Watcher, CancellationToken),
) {
    let limit = shared.opts().header_read_timeout;
    let mut first = [0u8; H2_PREFACE.len()];
    if let Ok(Ok(n @ 1..)) = tokio::time::timeout(limit, stream.peek(&mut first)).await {
        let h2 = if first[..n] != H2_PREFACE[..n] {
            Some(false)
        } else if n == H2_PREFACE.len() {
            Some(true)
        } else {
            None
        };
        serve_conn(shared.clone(), stream, conn, (watcher, stop), h2).await;
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
    shared: Arc<Shared>,
    io: I,
    conn: ConnInfo,
    (watcher, stop): (Watcher, CancellationToken),
    h2: Option<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match h2 {
        Some(false) => {
            if let Some(h) = crate::h1::serve(&shared, io, conn, (watcher, stop)).await {
                serve_http1(shared, h.io, h.conn, (h.watcher, h.stop)).await;
            }
        }
        Some(true) => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(H2_KEEP_ALIVE));
            let served = builder.serve_connection(TokioIo::new(io), service(shared, conn));
            if let Err(e) = watcher.watch(served).await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        }
        None => {
            let header_timeout = shared.opts().header_read_timeout;
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
                builder.serve_connection_with_upgrades(TokioIo::new(io), service(shared, conn));
            if let Err(e) = watcher.watch(served).await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        }
    }
}

/// The hyper service that runs every request of a connection through
/// [`hyper_engine::handle`].
fn service(
    shared: Arc<Shared>,
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
        let shared = shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(hyper_engine::handle(shared, req, conn).await) }
    })
}

/// Serves an HTTP/1 client connection with hyper (upgrades included) for the requests the
/// relay in `h1` leaves to it. Drained by hand: on `stop` it finishes the request in flight
/// and closes.
async fn serve_http1<I>(
    shared: Arc<Shared>,
    io: I,
    conn: ConnInfo,
    (watcher, stop): (Watcher, CancellationToken),
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.opts().header_read_timeout);
    let served = builder
        .serve_connection(TokioIo::new(io), service(shared, conn))
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
pub(crate) async fn sweep_loop(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(shared.upstream().sweep_interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown_signal().cancelled() => return,
            _ = every.tick() => shared.upstream().sweep(),
        }
    }
}

/// Serves `/metrics` on the admin listener until shutdown.
pub(crate) async fn admin_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = tokio::select! {
            _ = shared.shutdown_signal().cancelled() => return,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(hyper_engine::admin(&shared, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
