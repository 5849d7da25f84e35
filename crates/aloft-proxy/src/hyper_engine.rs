//! The hyper engine: a request hyper's server parsed (HTTP/2, upgrades, and what the relay in
//! `h1` leaves to it) goes through the [`flow`](crate::flow) with hyper's client (HTTP/1.1 over
//! the edge's pool, or h2c), and the answer goes back as hyper's response, its body streamed
//! while it holds its machine's slot. Upgrades become a byte tunnel once the machine says `101`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use crate::balance::SlotGuard;
use crate::body::{self, buffer_body, full, ProxyBody};
use crate::flow::{self, Dest, Engine, Failure, Flow, Forwarded, Sending};
use crate::headers::{forward_headers, hdr, steering, strip_hop_by_hop, ConnInfo, RequestId};
use crate::replay::{Replay, REPLAY_HEADERS};
use crate::routes::{self, Routing};
use crate::shared::Shared;
use crate::upstream::{Pooled, UpstreamError};

/// Answers the admin listener: `/metrics` only.
pub(crate) fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.uri().path() == "/metrics" {
        let mut r = full(StatusCode::OK, shared.metrics().render());
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
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    if let Some(answer) = shared.acme().http01(&req) {
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
    let routing = shared.routing();
    let mut out = Outcome::default();
    let mut resp = serve(
        &shared,
        &routing,
        req,
        &conn,
        &request_id,
        started,
        &mut out,
    )
    .instrument(span)
    .await;
    shared.metrics().request(
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

/// Routes the request and runs it through the flow with this engine.
async fn serve<'r>(
    shared: &'r Shared,
    routing: &'r Routing,
    req: Request<Incoming>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    started: Instant,
    out: &mut Outcome<'r>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let host = host_of(&parts.headers, &parts.uri);
    let app = match flow::app_for(routing, host, conn.local) {
        Ok(app) => app,
        Err(e) => return full(e.status(), format!("{e}\n")),
    };
    out.app = &app.app;
    let svc = match flow::service_for(app, conn.port) {
        Ok(svc) => svc,
        Err(e) => {
            // Counted as a request for the app all the same.
            drop(shared.enter(&app.app));
            return full(e.status(), format!("{e}\n"));
        }
    };
    // On an app's dedicated address a request without a Host still has an app.
    let address_name;
    let host = match host {
        Some(host) => host,
        None => {
            address_name = match conn.local {
                std::net::IpAddr::V6(a) => format!("[{a}]"),
                a => a.to_string(),
            };
            address_name.as_str()
        }
    };
    let mut flow = Flow::new(shared, routing, (app, svc), conn.port, started);
    if flow::must_redirect(svc, conn) {
        return redirect_https(shared, host, &parts.uri);
    }
    let steer = steering(&parts.headers);
    let upgrade = parts.headers.contains_key(header::UPGRADE) && parts.version == Version::HTTP_11;
    // What `hyper::upgrade::on` takes from a request, taken from its parts (`None` inside when
    // hyper offered no upgrade for it).
    let mut client_upgrade =
        upgrade.then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let limit = shared.opts().max_buffered_body;
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
    let idempotent = parts.method.is_idempotent();
    let sending = Sending {
        steer,
        idempotent,
        resendable: buffered.is_some(),
    };
    let mut engine = Hyper {
        shared,
        path: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        next_headers: Some(forward_headers(
            shared.region_header(),
            &parts.headers,
            host,
            conn,
            request_id,
            parts.version,
            upgrade,
        )),
        parts: &parts,
        host,
        conn,
        request_id,
        upgrade,
        buffered,
        streamed,
        replay_src: None,
        answer: None,
    };
    let forwarded = flow.forward(&mut engine, sending).await;
    out.app = &flow.app().app;
    let Forwarded { machine, slot, .. } = match forwarded {
        Ok(f) => f,
        Err(refused) => {
            out.machine = refused.machine;
            return full(refused.status, refused.message);
        }
    };
    out.machine = &machine.id;
    // The flow gives a machine only with its answer kept.
    let Some(answer) = engine.answer.take() else {
        let message = format!("machine {} of app {} did not answer\n", machine.id, out.app);
        return full(StatusCode::BAD_GATEWAY, message);
    };
    match answer {
        Answer::Whole(parts, bytes, conn) => {
            drop(slot);
            if let Some(conn) = conn {
                conn.release();
            }
            Response::from_parts(parts, body::whole(bytes))
        }
        Answer::Streaming(mut resp, conn, _) => {
            // Taken only on a 101, so an upgrade request can still be replayed elsewhere.
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_upgrade) = client_upgrade.take() {
                    let backend_upgrade = hyper::upgrade::on(&mut resp);
                    shared
                        .tracker()
                        .spawn(tunnel(client_upgrade, backend_upgrade, slot));
                    let (parts, _) = resp.into_parts();
                    return Response::from_parts(parts, body::empty());
                }
            }
            strip_hop_by_hop(resp.headers_mut());
            let (parts, body) = resp.into_parts();
            Response::from_parts(
                parts,
                Tracked {
                    inner: body,
                    guard: Some(slot),
                    conn,
                }
                .boxed(),
            )
        }
    }
}

/// A machine's response body that holds the machine's slot until it is fully sent, and gives
/// its connection back for the next request once it was read whole.
struct Tracked {
    inner: Incoming,
    guard: Option<SlotGuard>,
    conn: Option<Pooled>,
}

impl Tracked {
    fn finish(&mut self, whole: bool) {
        self.guard.take();
        if let Some(conn) = self.conn.take() {
            if whole {
                conn.release();
            }
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            // hyper stops polling once `is_end_stream` says so, so the end is noticed here.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(true),
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A machine's answer through hyper: read whole (a small answer to a request that can be sent
/// again), or with its body still to come.
enum Answer {
    Whole(http::response::Parts, Bytes, Option<Pooled>),
    /// With the replay it asks for, read once (boxed: rare, and the answer is moved about).
    Streaming(Response<Incoming>, Option<Pooled>, Option<Box<Replay>>),
}

/// One request through hyper's client.
struct Hyper<'a> {
    shared: &'a Shared,
    parts: &'a Parts,
    host: &'a str,
    conn: &'a ConnInfo,
    request_id: &'a HeaderValue,
    path: PathAndQuery,
    upgrade: bool,
    /// The request body when it is whole in memory (so it can be sent again).
    buffered: Option<Bytes>,
    /// Otherwise the body, sent once.
    streamed: Option<ProxyBody>,
    /// The headers of the next attempt; rebuilt only when a request is sent again.
    next_headers: Option<HeaderMap>,
    replay_src: Option<HeaderValue>,
    /// The last machine's answer.
    answer: Option<Answer>,
}

impl Hyper<'_> {
    fn headers(&mut self) -> HeaderMap {
        if let Some(h) = self.next_headers.take() {
            return h;
        }
        let mut h = forward_headers(
            self.shared.region_header(),
            &self.parts.headers,
            self.host,
            self.conn,
            self.request_id,
            self.parts.version,
            self.upgrade,
        );
        if let Some(v) = &self.replay_src {
            h.insert(hdr::FLY_REPLAY_SRC, v.clone());
            h.insert(hdr::ALOFT_REPLAY_SRC, v.clone());
        }
        h
    }

    /// Whether the answer becomes the client's upgraded connection.
    fn tunnels(&self, resp: &Response<Incoming>) -> bool {
        self.upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    }
}

impl Engine for Hyper<'_> {
    async fn send(&mut self, to: &Dest<'_>) -> Result<(), Failure> {
        self.answer = None;
        let answer = self.exchange(to).await?;
        self.answer = Some(answer);
        Ok(())
    }

    fn replay(&mut self) -> Option<Replay> {
        match self.answer.as_mut()? {
            Answer::Streaming(_, _, replay) => replay.take().map(|r| *r),
            Answer::Whole(..) => None,
        }
    }

    fn replaying(&mut self, _to: &Dest<'_>, src: &str) {
        self.answer = None;
        if let Ok(v) = HeaderValue::from_str(src) {
            self.replay_src = Some(v);
        }
    }
}

impl Hyper<'_> {
    /// Sends the request to `to` and reads the answer's head (a small answer to a request
    /// that can be sent again: the whole answer).
    async fn exchange(&mut self, to: &Dest<'_>) -> Result<Answer, Failure> {
        let body = match (&self.buffered, self.streamed.take()) {
            (Some(b), _) => body::whole(b.clone()),
            (None, Some(s)) => s,
            (None, None) => body::empty(),
        };
        let mut fwd = Request::new(body);
        *fwd.method_mut() = self.parts.method.clone();
        *fwd.headers_mut() = self.headers();
        let h2 = to.svc.h2_backend && !self.upgrade;
        if h2 {
            let Some(uri) = machine_uri(to.addr, &self.path) else {
                return Err(Failure::Answer(
                    StatusCode::BAD_REQUEST,
                    "the request path is not valid\n".into(),
                ));
            };
            *fwd.uri_mut() = uri;
            *fwd.version_mut() = Version::HTTP_2;
        } else {
            // HTTP/1.1 to a machine: origin-form target, the `Host` header names the app.
            *fwd.uri_mut() = Uri::from(self.path.clone());
        }
        let sent = if h2 {
            match self.shared.h2_client().request(fwd).await {
                Ok(r) => Ok((r, None)),
                Err(e) => Err(UpstreamError::H2(e)),
            }
        } else {
            match self.shared.upstream().send(to.addr, fwd).await {
                Ok((r, conn)) => Ok((r, Some(conn))),
                Err(e) => Err(e),
            }
        };
        let (resp, conn) = match sent {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(machine = %to.machine.id, error = %e, "machine did not answer");
                return Err(if retryable(&e, &self.parts.method) {
                    Failure::Retry("did not answer".into())
                } else {
                    Failure::Fail("did not answer".into())
                });
            }
        };
        // A small answer to a request that could be sent again is read whole before it is
        // passed on: a machine that dies in the middle of it (stopped under load) costs a
        // retry on another machine instead of a truncated answer.
        let small = resp
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= flow::MAX_BUFFERED_RESPONSE);
        let tunnels = self.tunnels(&resp);
        let replay = if tunnels {
            None
        } else {
            replay_header(&resp).map(Box::new)
        };
        if !small
            || self.buffered.is_none()
            || !self.parts.method.is_idempotent()
            || tunnels
            || replay.is_some()
        {
            return Ok(Answer::Streaming(resp, conn, replay));
        }
        let (mut parts, body) = resp.into_parts();
        match body.collect().await {
            Ok(collected) => {
                strip_hop_by_hop(&mut parts.headers);
                Ok(Answer::Whole(parts, collected.to_bytes(), conn))
            }
            Err(e) => {
                tracing::debug!(machine = %to.machine.id, error = %e, "answer cut short");
                Err(Failure::Retry("did not answer".into()))
            }
        }
    }
}

fn replay_header(resp: &Response<Incoming>) -> Option<Replay> {
    REPLAY_HEADERS
        .iter()
        .find_map(|n| resp.headers().get(*n))
        .and_then(|v| v.to_str().ok())
        .and_then(Replay::parse)
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

fn redirect_https(shared: &Shared, host: &str, uri: &Uri) -> Response<ProxyBody> {
    let name = routes::strip_port(host);
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_string()
    };
    let port = match shared.opts().https_port {
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
