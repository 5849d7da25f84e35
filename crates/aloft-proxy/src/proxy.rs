//! One request through the edge: find the app, pick a machine, forward with the platform's
//! headers, retry failed connects, follow replay answers, and tunnel upgrades.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use crate::balance::{self, Locality, SlotGuard, Steering};
use crate::body::{buffer_body, Tracked};
use crate::edge::Inner;
use crate::headers::{forward_headers, hdr, steering, strip_hop_by_hop};
use crate::replay::{Replay, REPLAY_HEADERS};
use crate::routes::{self, AppRoutes, MachineRoute, Routing, ServiceRoutes};
use crate::upstream::UpstreamError;

/// The body type the edge sends and answers with.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The client connection a request arrived on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// The address the client connected to (for apps' dedicated addresses).
    pub local: std::net::IpAddr,
    pub tls: bool,
    /// The public port the listener stands for.
    pub port: u16,
    /// The client's address (IPv4-mapped addresses as IPv4) and `port` as header values, made
    /// once per connection.
    pub ip_header: HeaderValue,
    pub port_header: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: std::net::IpAddr, tls: bool, port: u16) -> ConnInfo {
        let value = |s: String| {
            HeaderValue::from_maybe_shared(Bytes::from(s))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        ConnInfo {
            peer,
            local,
            tls,
            port,
            ip_header: value(peer.ip().to_canonical().to_string()),
            port_header: value(port.to_string()),
        }
    }
}

pub(crate) const MAX_REPLAYS: usize = 3;

/// Answers up to this size (by `content-length`) to idempotent, buffered requests are read whole
/// before they are passed on, so a machine failing mid-answer can be retried.
pub(crate) const MAX_BUFFERED_RESPONSE: u64 = 64 * 1024;

pub(crate) fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answers the admin listener: `/metrics` only.
pub(crate) fn admin(inner: &Inner, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.uri().path() == "/metrics" {
        let mut r = full(StatusCode::OK, inner.metrics.render());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    } else {
        full(StatusCode::NOT_FOUND, "not found\n")
    }
}

/// Serves one request and records it in the metrics.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    if let Some(answer) = inner.acme.http01(&req) {
        return answer;
    }
    let started = Instant::now();
    let request_id = RequestId::new().header();
    let span = tracing::debug_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        peer = %conn.peer
    );
    // One snapshot of the route table for the whole request; the outcome borrows from it.
    let routing = inner.routes.load_full();
    let mut out = Outcome::default();
    let mut resp = route(&inner, &routing, req, &conn, &request_id, &mut out)
        .instrument(span)
        .await;
    inner.metrics.request(
        out.app,
        out.machine,
        resp.status().as_u16(),
        started.elapsed(),
    );
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("aloft"));
    h.insert(hdr::FLY_REQUEST_ID, request_id.clone());
    h.insert(hdr::ALOFT_REQUEST_ID, request_id);
    resp
}

/// A request id: 32 random lowercase hex digits, made without a formatting allocation.
pub(crate) struct RequestId([u8; 32]);

impl RequestId {
    pub fn new() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = rand::random::<u128>();
        let mut buf = [0u8; 32];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
        }
        RequestId(buf)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn header(&self) -> HeaderValue {
        HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&self.0))
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// What answered a request, for the metrics.
#[derive(Default)]
struct Outcome<'r> {
    app: &'r str,
    machine: &'r str,
}

fn host_of<'a>(headers: &'a http::HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

async fn route<'r>(
    inner: &Arc<Inner>,
    routing: &'r Routing,
    req: Request<Incoming>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    out: &mut Outcome<'r>,
) -> Response<ProxyBody> {
    let port = conn.port;
    let (mut parts, body) = req.into_parts();
    let by_address = routing.app_for_address(conn.local);
    let address_name;
    let (host, found) = match host_of(&parts.headers, &parts.uri) {
        Some(host) => (host, routing.app_for_host(host).or(by_address)),
        // On an app's dedicated address a request without a Host still has an app.
        None if by_address.is_some() => {
            address_name = match conn.local {
                std::net::IpAddr::V6(a) => format!("[{a}]"),
                a => a.to_string(),
            };
            (address_name.as_str(), by_address)
        }
        None => return full(StatusCode::BAD_REQUEST, "the request has no Host header\n"),
    };
    let Some(mut app) = found else {
        return full(
            StatusCode::NOT_FOUND,
            format!("no app is configured for host {host}\n"),
        );
    };
    out.app = &app.app;
    let _entered = inner.entries.enter(&app.app);
    let Some(mut svc) = routes::service_for_port(app, conn.port) else {
        return full(
            StatusCode::NOT_FOUND,
            format!("app {} has no service on port {}\n", app.app, conn.port),
        );
    };
    if !conn.tls && svc.port(conn.port).is_some_and(|p| p.force_https) {
        return redirect_https(inner, host, &parts.uri);
    }
    let mut steer = steering(&parts.headers);
    let upgrade = parts.headers.contains_key(header::UPGRADE) && parts.version == Version::HTTP_11;
    // What `hyper::upgrade::on` takes from a request, taken from its parts (`None` inside when
    // hyper offered no upgrade for it).
    let mut client_upgrade =
        upgrade.then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let forwarded = |replay_src: Option<&HeaderValue>| {
        let mut h = forward_headers(
            inner,
            &parts.headers,
            host,
            conn,
            request_id,
            parts.version,
            upgrade,
        );
        if let Some(v) = replay_src {
            h.insert(hdr::FLY_REPLAY_SRC, v.clone());
            h.insert(hdr::ALOFT_REPLAY_SRC, v.clone());
        }
        h
    };
    // The headers of the next attempt; rebuilt only when a request is sent again.
    let mut next_headers = Some(forwarded(None));
    let mut replay_src: Option<HeaderValue> = None;
    let limit = inner.opts.max_buffered_body;
    let mut streamed: Option<ProxyBody> = None;
    let buffered: Option<Bytes> = if upgrade || body.is_end_stream() {
        Some(Bytes::new())
    } else if body.size_hint().lower() > limit as u64 {
        streamed = Some(body.boxed());
        None
    } else {
        match buffer_body(body, limit).await {
            Ok(Ok(bytes)) => Some(bytes),
            Ok(Err(rest)) => {
                streamed = Some(rest);
                None
            }
            Err(_) => return full(StatusCode::BAD_REQUEST, "cannot read the request body\n"),
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let (mut attempts, mut replays) = (0, 0);
    loop {
        let (m, guard) = match acquire(inner, app, svc, &steer).await {
            Ok(x) => x,
            Err(_) if attempts > 0 => {
                return full(
                    StatusCode::BAD_GATEWAY,
                    format!("no machine of app {} accepted a connection\n", app.app),
                );
            }
            Err(e) => return full(e.status, format!("{}\n", e.message)),
        };
        out.machine = &m.id;
        let body = match (&buffered, streamed.take()) {
            (Some(b), _) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            (None, Some(s)) => s,
            (None, None) => Empty::new().map_err(|never| match never {}).boxed(),
        };
        let addr = SocketAddr::new(m.address, svc.internal_port);
        let mut fwd = Request::new(body);
        *fwd.method_mut() = parts.method.clone();
        *fwd.headers_mut() = next_headers
            .take()
            .unwrap_or_else(|| forwarded(replay_src.as_ref()));
        let h2 = svc.h2_backend && !upgrade;
        if h2 {
            let Some(uri) = machine_uri(addr, &path) else {
                return full(StatusCode::BAD_REQUEST, "the request path is not valid\n");
            };
            *fwd.uri_mut() = uri;
            *fwd.version_mut() = Version::HTTP_2;
        } else {
            // HTTP/1.1 to a machine: origin-form target, the `Host` header names the app.
            *fwd.uri_mut() = Uri::from(path.clone());
        }
        let send = async {
            if h2 {
                match inner.h2_client.request(fwd).await {
                    Ok(r) => Ok((r, None)),
                    Err(e) => Err(UpstreamError::H2(e)),
                }
            } else {
                let (r, conn) = inner.upstream.send(addr, fwd).await?;
                Ok((r, Some(conn)))
            }
        };
        // A request waiting on a host that turns unreachable over the mesh (a partition, a
        // dead host) would wait for ever: it is given up, and retried elsewhere if it can be.
        let Some(sent) = until_unreachable(inner, &m.host_id, send).await else {
            if parts.method.is_idempotent()
                && buffered.is_some()
                && attempts + 1 < inner.opts.max_attempts
            {
                tracing::warn!(app = %app.app, machine = %m.id, "host unreachable, trying another machine");
                attempts += 1;
                steer.exclude.insert(m.id.clone());
                continue;
            }
            tracing::warn!(app = %app.app, machine = %m.id, "host unreachable while forwarding");
            return full(
                StatusCode::BAD_GATEWAY,
                format!("machine {} of app {} became unreachable\n", m.id, app.app),
            );
        };
        let (mut resp, conn) = match sent {
            Ok(r) => r,
            Err(e)
                if retryable(&e, &parts.method)
                    && buffered.is_some()
                    && attempts + 1 < inner.opts.max_attempts =>
            {
                tracing::warn!(app = %app.app, machine = %m.id, error = %e, "machine unreachable, trying another machine");
                attempts += 1;
                steer.exclude.insert(m.id.clone());
                continue;
            }
            Err(e) => {
                tracing::warn!(app = %app.app, machine = %m.id, error = %e, "forwarding failed");
                return full(
                    StatusCode::BAD_GATEWAY,
                    format!("machine {} of app {} did not answer\n", m.id, app.app),
                );
            }
        };
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        // Taken only on a 101, so an upgrade request can still be replayed elsewhere.
        if let Some(client_upgrade) = client_upgrade.take_if(|_| switching) {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            inner
                .tracker
                .spawn(tunnel(client_upgrade, backend_upgrade, guard));
            let (parts, _) = resp.into_parts();
            return Response::from_parts(
                parts,
                Empty::new().map_err(|never| match never {}).boxed(),
            );
        }
        let replay = REPLAY_HEADERS
            .iter()
            .find_map(|n| resp.headers().get(*n))
            .and_then(|v| v.to_str().ok())
            .and_then(Replay::parse);
        if let Some(replay) = replay.filter(|_| buffered.is_some()) {
            replays += 1;
            if replays > MAX_REPLAYS {
                return full(
                    StatusCode::BAD_GATEWAY,
                    format!("too many replays for app {}\n", app.app),
                );
            }
            inner.metrics.replay(&app.app);
            tracing::debug!(app = %app.app, machine = %m.id, ?replay, "replaying");
            match replay_target(routing, &replay, (app, svc), port) {
                Ok((a, s)) => (app, svc, out.app) = (a, s, &a.app),
                Err(e) => return full(StatusCode::BAD_GATEWAY, e),
            }
            if let Ok(v) = HeaderValue::from_str(&replay.source(&m.id, &m.region)) {
                replay_src = Some(v);
            }
            steer = replay_steering(&replay, m);
            drop(guard);
            continue;
        }
        // A small answer to a request that could be sent again is read whole before it is
        // passed on: a machine that dies in the middle of it (stopped under load) costs a
        // retry on another machine instead of a truncated answer.
        let small = resp
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_BUFFERED_RESPONSE);
        if small && buffered.is_some() && parts.method.is_idempotent() {
            let (mut rparts, rbody) = resp.into_parts();
            match rbody.collect().await {
                Ok(collected) => {
                    drop(guard);
                    if let Some(conn) = conn {
                        conn.release();
                    }
                    strip_hop_by_hop(&mut rparts.headers);
                    let body = Full::new(collected.to_bytes())
                        .map_err(|never| match never {})
                        .boxed();
                    return Response::from_parts(rparts, body);
                }
                Err(e) if attempts + 1 < inner.opts.max_attempts => {
                    tracing::warn!(app = %app.app, machine = %m.id, error = %e, "answer cut short, trying another machine");
                    attempts += 1;
                    steer.exclude.insert(m.id.clone());
                    continue;
                }
                Err(e) => {
                    tracing::warn!(app = %app.app, machine = %m.id, error = %e, "answer cut short");
                    return full(
                        StatusCode::BAD_GATEWAY,
                        format!("machine {} of app {} did not answer\n", m.id, app.app),
                    );
                }
            }
        }
        strip_hop_by_hop(resp.headers_mut());
        let (parts, body) = resp.into_parts();
        return Response::from_parts(
            parts,
            Tracked {
                inner: body,
                guard: Some(guard),
                conn,
            }
            .boxed(),
        );
    }
}

/// The app and service a replay's `app=` field sends the request to: an app of the same
/// organization, by its service on the request's port; the current ones without the field.
pub(crate) fn replay_target<'r>(
    routing: &'r Routing,
    replay: &Replay,
    (app, svc): (&'r AppRoutes, &'r ServiceRoutes),
    port: u16,
) -> Result<(&'r AppRoutes, &'r ServiceRoutes), String> {
    let Some(name) = &replay.app else {
        return Ok((app, svc));
    };
    let target = routing
        .app_named(name)
        .filter(|a| a.org == app.org)
        .ok_or_else(|| {
            format!(
                "app {} asked for a replay to app {name}, which is not an app of its organization\n",
                app.app
            )
        })?;
    let svc = routes::service_for_port(target, port)
        .ok_or_else(|| format!("app {name} has no service on port {port}\n"))?;
    Ok((target, svc))
}

/// Where a replay asked by machine `m` goes next.
pub(crate) fn replay_steering(replay: &Replay, m: &MachineRoute) -> Steering {
    let mut steer = Steering {
        force_instance: replay.instance.clone(),
        prefer_instance: replay.prefer_instance.clone(),
        prefer_regions: replay.regions.clone(),
        force_regions: Vec::new(),
        exclude: HashSet::new(),
    };
    if replay.elsewhere || (!replay.regions.is_empty() && !replay.regions.contains(&m.region)) {
        steer.exclude.insert(m.id.clone());
    }
    steer
}

/// `http://ADDR/PATH` for a machine, built from parts (no string formatting and reparsing).
fn machine_uri(addr: SocketAddr, path: &PathAndQuery) -> Option<Uri> {
    use std::io::Write;
    // The longest socket address, `[v6%scope]:port`, is well under 64 bytes.
    let mut buf = [0u8; 64];
    let mut w = &mut buf[..];
    write!(w, "{addr}").ok()?;
    let len = 64 - w.len();
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(Authority::from_maybe_shared(Bytes::copy_from_slice(&buf[..len])).ok()?);
    parts.path_and_query = Some(path.clone());
    Uri::from_parts(parts).ok()
}

/// Runs `work` unless `host` (another host than the edge's) becomes unreachable over the mesh
/// first; `None` then.
pub(crate) async fn until_unreachable<T>(
    inner: &Inner,
    host: &str,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    if host.is_empty() || host == inner.opts.host_id {
        return Some(work.await);
    }
    let mut cut = inner.unreachable.subscribe();
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

/// Whether a failed forward can go to another machine: connecting failed (nothing was sent),
/// or, for an idempotent method, the connection was refused, reset or closed before any
/// response came back (a machine going down under a pooled connection).
fn retryable(e: &UpstreamError, method: &http::Method) -> bool {
    if e.is_connect() {
        return true;
    }
    if !method.is_idempotent() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            ) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn redirect_https(inner: &Inner, host: &str, uri: &Uri) -> Response<ProxyBody> {
    let name = routes::strip_port(host);
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_string()
    };
    let port = match inner.opts.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{name}{port}{pq}");
    let mut r = full(
        StatusCode::MOVED_PERMANENTLY,
        format!("moved to {location}\n"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Why no machine could take a request or connection.
#[derive(Debug)]
pub(crate) struct Unavailable {
    pub status: StatusCode,
    pub message: String,
}

/// Picks a machine and takes a slot on it: wakes one when none is under its soft limit, and
/// queues (up to the queue timeout) when all are at their hard limit.
pub(crate) async fn acquire<'a>(
    inner: &Arc<Inner>,
    app: &'a AppRoutes,
    svc: &ServiceRoutes,
    steer: &Steering,
) -> Result<(&'a MachineRoute, SlotGuard), Unavailable> {
    let deadline = tokio::time::Instant::now() + inner.opts.queue_timeout;
    let mut wake_failed: HashSet<String> = HashSet::new();
    loop {
        let rtts = inner.rtts.read().unwrap_or_else(|e| e.into_inner()).clone();
        let unreachable = inner.unreachable.borrow().clone();
        let here = Locality {
            region: &inner.opts.region,
            host_id: &inner.opts.host_id,
            rtts: &rtts,
            unreachable: &unreachable,
        };
        let state = |m: &MachineRoute| inner.state_of(m);
        let limits = &svc.concurrency;
        let serving = |m: &MachineRoute| inner.serving(m);
        let ranked = balance::rank(&app.machines, &serving, &inner.loads, limits, &here, steer);
        let mut wake_steer = steer.clone();
        wake_steer.exclude.extend(wake_failed.iter().cloned());
        if svc.autostart
            && inner.waker.is_some()
            && (balance::needs_wake(&ranked, &inner.loads, limits)
                || balance::wake_here_first(&ranked, &app.machines, &state, &here, &wake_steer))
        {
            if let Some(m) = balance::wake_candidate(&app.machines, &state, &here, &wake_steer) {
                let m = m.clone();
                match inner.wake(&app.app, svc, &m).await {
                    Ok(()) => continue,
                    Err(e) => {
                        tracing::warn!(app = %app.app, error = %e, "cannot wake a machine");
                        wake_failed.insert(m.id.clone());
                        continue;
                    }
                }
            }
        }
        for m in &ranked {
            if let Some(g) = inner.loads.try_acquire(&m.id, limits.hard_limit) {
                return Ok((*m, g));
            }
        }
        let any_at_hard = app.machines.iter().any(|m| {
            inner.serving(m)
                && !m.cordoned
                && steer.admits(m)
                && limits
                    .hard_limit
                    .is_some_and(|h| inner.loads.load(&m.id) >= h)
        });
        if !any_at_hard {
            return Err(Unavailable {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "no machine of app {} is available to take the request",
                    app.app
                ),
            });
        }
        // Arm the wait, then look once more so a slot freed in between is not missed.
        let released = inner.loads.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        for m in &ranked {
            if let Some(g) = inner.loads.try_acquire(&m.id, limits.hard_limit) {
                return Ok((*m, g));
            }
        }
        if tokio::time::timeout_at(deadline, released).await.is_err() {
            return Err(Unavailable {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("every machine of app {} is at its hard limit", app.app),
            });
        }
    }
}

async fn tunnel(
    client: Option<hyper::upgrade::OnUpgrade>,
    backend: hyper::upgrade::OnUpgrade,
    guard: SlotGuard,
) {
    let Some(client) = client else {
        tracing::debug!("the client connection cannot be upgraded");
        return;
    };
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut c, mut b) = (TokioIo::new(client), TokioIo::new(backend));
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
    drop(guard);
}
