//! Keep-alive HTTP/1.1 connections to machines: a list of idle connections per machine
//! address, checked out for one request and given back once the answer was read whole.
//!
//! A connection is never shared by two requests at once, so no lock is held while a request is
//! in flight; the only lock guards the idle lists for a push or a pop. Idle connections older
//! than the idle timeout are closed at checkout and by a periodic sweep.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ProxyBody;

/// A plain connection to a machine (the relay's), with what was read from it and not used yet.
pub(crate) struct MachineConn {
    pub stream: TcpStream,
    pub buf: bytes::BytesMut,
}

/// Why a request could not be sent to a machine or got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("Cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("Connecting to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("HTTP handshake with {addr} failed")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("The machine connection failed")]
    Request(#[source] hyper::Error),
    #[error("The HTTP/2 machine connection failed")]
    H2(#[source] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Whether nothing of the request reached the machine (connecting failed).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Handshake { .. } => true,
            UpstreamError::Request(_) => false,
            UpstreamError::H2(e) => e.is_connect(),
        }
    }
}

struct Idle {
    tx: SendRequest<ProxyBody>,
    since: Instant,
}

/// The idle HTTP/1.1 connections to machines, by address: hyper's, and the relay's plain ones
/// (see `h1`).
pub(crate) struct Upstream {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    /// The relay's, one pool per connection worker (a connection belongs to the reactor of the
    /// runtime that made it); see [`set_worker`].
    raw: [Mutex<RawPool>; RAW_SHARDS],
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// A connection checked out for one request. [`Pooled::release`] gives it back for the next
/// request; dropping it instead closes it (once hyper is done with it).
pub(crate) struct Pooled {
    tx: SendRequest<ProxyBody>,
    addr: SocketAddr,
    pool: Arc<Upstream>,
    /// Whether the machine keeps the connection open after this answer.
    reuse: bool,
}

impl Pooled {
    /// Gives the connection back: its answer was read whole.
    pub fn release(self) {
        if self.reuse {
            self.pool.put(self.addr, self.tx);
        }
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Upstream {
        Upstream {
            idle: Mutex::default(),
            raw: std::array::from_fn(|_| Mutex::default()),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Sends `req` (whose URI is the path, with the `Host` header set) to the machine at
    /// `addr` over an idle connection, or a new one when none is ready.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Pooled), UpstreamError> {
        while let Some(mut tx) = self.checkout(addr) {
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let conn = self.pooled(addr, tx, &resp);
                    return Ok((resp, conn));
                }
                Err(mut e) => match e.take_message() {
                    // The connection closed before the request was written: another one can
                    // take it as it is.
                    Some(r) => req = r,
                    None => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
        let mut tx = self.connect(addr).await?;
        let resp = tx.send_request(req).await.map_err(UpstreamError::Request)?;
        let conn = self.pooled(addr, tx, &resp);
        Ok((resp, conn))
    }

    fn pooled(
        self: &Arc<Self>,
        addr: SocketAddr,
        tx: SendRequest<ProxyBody>,
        resp: &Response<Incoming>,
    ) -> Pooled {
        Pooled {
            tx,
            addr,
            pool: self.clone(),
            reuse: keeps_alive(resp),
        }
    }

    /// The most recently used idle connection to `addr` that is ready for a request. Closed
    /// and expired ones are dropped; busy ones (still finishing a body) stay in the list.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(mut c) = list.pop() {
            if now.duration_since(c.since) >= self.idle_timeout {
                // The rest are older still.
                list.clear();
                break;
            }
            match poll_ready_now(&mut c.tx) {
                Poll::Ready(true) => {
                    found = Some(c.tx);
                    break;
                }
                Poll::Ready(false) => {}
                Poll::Pending => busy.push(c),
            }
        }
        list.extend(busy.into_iter().rev());
        found
    }

    fn put(&self, addr: SocketAddr, tx: SendRequest<ProxyBody>) {
        if tx.is_closed() {
            return;
        }
        let since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.entry(addr).or_default().push(Idle { tx, since });
    }

    /// Closes idle connections older than the idle timeout or closed by their machine.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| !c.tx.is_closed() && now.duration_since(c.since) < self.idle_timeout);
            !list.is_empty()
        });
        drop(idle);
        for shard in &self.raw {
            let mut raw = shard.lock().unwrap_or_else(|e| e.into_inner());
            raw.retain(|_, list| {
                list.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
                !list.is_empty()
            });
        }
    }

    /// The most recently used idle plain connection to `addr` that the machine has not closed.
    pub fn checkout_raw(&self, addr: SocketAddr) -> Option<MachineConn> {
        let mut raw = self.raw_shard().lock().unwrap_or_else(|e| e.into_inner());
        let list = raw.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((c, since)) = list.pop() {
            if now.duration_since(since) >= self.idle_timeout {
                list.clear();
                break;
            }
            if still_open(&c.stream) {
                return Some(c);
            }
        }
        None
    }

    /// Gives back a plain connection whose last answer was read whole.
    pub fn put_raw(&self, addr: SocketAddr, conn: MachineConn) {
        let mut raw = self.raw_shard().lock().unwrap_or_else(|e| e.into_inner());
        raw.entry(addr).or_default().push((conn, Instant::now()));
    }

    fn raw_shard(&self) -> &Mutex<RawPool> {
        &self.raw[WORKER.with(|w| w.get()) % RAW_SHARDS]
    }

    /// A new plain connection to `addr`.
    pub async fn connect_raw(&self, addr: SocketAddr) -> Result<MachineConn, UpstreamError> {
        let stream = self.tcp(addr).await?;
        Ok(MachineConn {
            stream,
            buf: bytes::BytesMut::with_capacity(8192),
        })
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
                Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
            };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// How often [`Upstream::sweep`] should run.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle_timeout / 2).max(Duration::from_secs(1))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let stream = self.tcp(addr).await?;
        let (tx, conn) = http1::Builder::new()
            .writev(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "machine connection ended with an error");
            }
        });
        Ok(tx)
    }
}

/// Whether the machine keeps the connection open after `resp`: HTTP/1.1 unless it says
/// `Connection: close`, HTTP/1.0 only when it says `Connection: keep-alive`. A connection it
/// closes is not offered to the next request, which would race the close.
fn keeps_alive(resp: &Response<Incoming>) -> bool {
    let has = |token: &str| {
        resp.headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match resp.version() {
        hyper::Version::HTTP_11 => !has("close"),
        hyper::Version::HTTP_10 => has("keep-alive"),
        _ => false,
    }
}

type RawPool = HashMap<SocketAddr, Vec<(MachineConn, Instant)>>;

/// Pools of plain machine connections: one for connections made outside connection workers,
/// and one per worker (workers past the last share pools round the ring, each pool still
/// serving one runtime's connections only when there are fewer workers than this).
const RAW_SHARDS: usize = 64;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as connection worker `n` (from 1): its machine connections are pooled
/// apart from other threads'.
pub(crate) fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n));
}

/// Whether an idle connection is still open: nothing (not even its close) arrived on it since
/// its last answer. Costs no system call unless the reactor saw it turn readable.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => matches!(
            stream.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ),
    }
}

/// Whether `tx` can take a request right now (`Ready(false)`: it is closed), without waiting.
fn poll_ready_now(tx: &mut SendRequest<ProxyBody>) -> Poll<bool> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match tx.poll_ready(&mut cx) {
        Poll::Ready(r) => Poll::Ready(r.is_ok()),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};

    use super::*;

    /// An HTTP/1.1 server on port 0 that counts the connections it accepted; it answers
    /// `Connection: close` when the request path is `/close`.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"hi")));
                    if req.uri().path() == "/close" {
                        resp.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &Arc<Upstream>, addr: SocketAddr, path: &'static str) {
        let mut req = Request::new(Empty::new().map_err(|never| match never {}).boxed());
        *req.uri_mut() = hyper::Uri::from_static(path);
        req.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_static("app.test"),
        );
        let (resp, conn) = pool.send(addr, req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
        conn.release();
    }

    #[tokio::test]
    async fn a_connection_given_back_serves_the_next_requests() {
        let (addr, accepted) = server().await;
        let pool = Arc::new(Upstream::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
        ));
        for _ in 0..5 {
            get(&pool, addr, "/").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_machine_closes_is_not_reused() {
        let (addr, accepted) = server().await;
        let pool = Arc::new(Upstream::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
        ));
        for _ in 0..3 {
            get(&pool, addr, "/close").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn expired_idle_connections_are_not_reused() {
        let (addr, accepted) = server().await;
        let pool = Arc::new(Upstream::new(Duration::from_secs(5), Duration::ZERO));
        get(&pool, addr, "/").await;
        get(&pool, addr, "/").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        pool.sweep();
        assert!(pool.idle.lock().unwrap().is_empty());
    }
}
