//! The HTTP/1.1 relay: the edge's own path for the common request on an HTTP/1.1 client
//! connection (plain or TLS). The request head is parsed in place, rewritten straight into the
//! bytes sent to the machine (hop-by-hop headers out, the platform's forwarding headers in),
//! and the machine's answer is passed back with its body relayed as it comes, over a pool of
//! plain keep-alive connections to machines. No header map, request object or body stream is
//! built per request.
//!
//! Anything else goes to hyper's server for the rest of the connection, with the bytes read so
//! far given back: upgrades (WebSockets), `Expect`, chunked request bodies, bodies over the
//! buffering limit, HTTP/1.0 clients, other request-target forms, services with `h2_backend`
//! or `force_https`, ACME validations, and every request the edge answers by itself because it
//! cannot route it (no Host, unknown app, no service on the port). Both paths choose machines,
//! retry, replay and count the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::balance::{SlotGuard, Steering};
use crate::chunked::Chunked;
use crate::edge::Inner;
use crate::headers::{hdr, steering_with};
use crate::proxy::{self, ConnInfo, RequestId};
use crate::replay::Replay;
use crate::routes::{self, AppRoutes, Routing, ServiceRoutes};

/// Request and response heads larger than this are refused.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// What a header is to the relay, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Hop-by-hop headers other than `Connection`, `Transfer-Encoding` and `Upgrade`.
    HopByHop,
    Upgrade,
    Expect,
    /// Set by the edge on the way to machines; the client's own are dropped.
    Forwarding,
    RequestId,
    XForwardedFor,
    Via,
    ReplaySrc,
    Steer,
    Server,
    Replay,
}

const NAMES: [(&str, Kind); 38] = [
    ("host", Kind::Host),
    ("content-length", Kind::ContentLength),
    ("transfer-encoding", Kind::TransferEncoding),
    ("connection", Kind::Connection),
    ("keep-alive", Kind::HopByHop),
    ("proxy-connection", Kind::HopByHop),
    ("proxy-authenticate", Kind::HopByHop),
    ("proxy-authorization", Kind::HopByHop),
    ("te", Kind::HopByHop),
    ("trailer", Kind::HopByHop),
    ("upgrade", Kind::Upgrade),
    ("expect", Kind::Expect),
    ("fly-client-ip", Kind::Forwarding),
    ("aloft-client-ip", Kind::Forwarding),
    ("fly-forwarded-port", Kind::Forwarding),
    ("aloft-forwarded-port", Kind::Forwarding),
    ("x-forwarded-port", Kind::Forwarding),
    ("fly-region", Kind::Forwarding),
    ("aloft-region", Kind::Forwarding),
    ("x-forwarded-proto", Kind::Forwarding),
    ("x-forwarded-ssl", Kind::Forwarding),
    ("fly-request-id", Kind::RequestId),
    ("aloft-request-id", Kind::RequestId),
    ("x-forwarded-for", Kind::XForwardedFor),
    ("via", Kind::Via),
    ("fly-replay-src", Kind::ReplaySrc),
    ("aloft-replay-src", Kind::ReplaySrc),
    ("fly-force-instance-id", Kind::Steer),
    ("aloft-force-instance-id", Kind::Steer),
    ("fly-prefer-instance-id", Kind::Steer),
    ("aloft-prefer-instance-id", Kind::Steer),
    ("fly-prefer-region", Kind::Steer),
    ("aloft-prefer-region", Kind::Steer),
    ("fly-force-region", Kind::Steer),
    ("aloft-force-region", Kind::Steer),
    ("server", Kind::Server),
    ("fly-replay", Kind::Replay),
    ("aloft-replay", Kind::Replay),
];

fn classify(name: &[u8]) -> Kind {
    NAMES
        .iter()
        .find(|(n, _)| n.len() == name.len() && name.eq_ignore_ascii_case(n.as_bytes()))
        .map_or(Kind::Other, |(_, k)| *k)
}

/// One header of a parsed head, as ranges into the head's bytes.
#[derive(Debug, Clone)]
struct Header {
    name: Range<usize>,
    value: Range<usize>,
    kind: Kind,
}

fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// A client's request head, parsed where it was read.
#[derive(Debug, Default)]
struct RequestHead {
    bytes: Bytes,
    method: Range<usize>,
    target: Range<usize>,
    minor: u8,
    headers: Vec<Header>,
}

impl RequestHead {
    fn method(&self) -> &[u8] {
        &self.bytes[self.method.clone()]
    }

    fn target(&self) -> &[u8] {
        &self.bytes[self.target.clone()]
    }

    fn name(&self, h: &Header) -> &[u8] {
        &self.bytes[h.name.clone()]
    }

    fn value(&self, h: &Header) -> &[u8] {
        &self.bytes[h.value.clone()]
    }

    fn first(&self, kind: Kind) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.kind == kind)
            .map(|h| self.value(h))
    }

    fn idempotent(&self) -> bool {
        http::Method::from_bytes(self.method()).is_ok_and(|m| m.is_idempotent())
    }
}

/// Parses the request head at the start of `buf`: `Ok(Some(len))` once it is whole (and
/// `head` describes it, with ranges into `buf`), `Ok(None)` while more is needed.
fn parse_request(buf: &[u8], head: &mut RequestHead) -> Result<Option<usize>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Refusal::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::Invalid),
    };
    if len > MAX_HEAD {
        return Err(Refusal::TooLarge);
    }
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Refusal::Invalid);
    };
    head.method = offset(buf, method.as_bytes());
    head.target = offset(buf, path.as_bytes());
    head.minor = minor;
    head.headers.clear();
    for h in req.headers.iter() {
        head.headers.push(Header {
            name: offset(buf, h.name.as_bytes()),
            value: offset(buf, h.value),
            kind: classify(h.name.as_bytes()),
        });
    }
    Ok(Some(len))
}

/// Whether `buf` may hold a whole head (an empty line after a line end), looking only at what
/// came after the first `from` bytes (and the three before, where a line end may have started).
fn may_end_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3).min(buf.len())..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Why a request head is answered with an error and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    TooLarge,
    Invalid,
}

/// What the relay makes of a parsed request.
struct Plan<'r> {
    routing: &'r Routing,
    app: &'r AppRoutes,
    svc: &'r ServiceRoutes,
    host: &'r str,
    /// The public port the request came in on.
    port: u16,
    body_len: usize,
    close: bool,
}

/// Whether the relay serves this request, and with what; `None` hands the connection to hyper.
fn plan<'r>(
    inner: &Inner,
    routing: &'r Routing,
    head: &'r RequestHead,
    conn: &ConnInfo,
) -> Option<Plan<'r>> {
    let (port, tls) = (conn.port, conn.tls);
    if head.minor != 1
        || !head.target().starts_with(b"/")
        || head
            .target()
            .starts_with(crate::acme::HTTP_PREFIX.as_bytes())
    {
        return None;
    }
    if head.method() == b"CONNECT" {
        return None;
    }
    let (mut host, mut body_len, mut close) = (None, 0usize, false);
    for h in &head.headers {
        let v = head.value(h);
        match h.kind {
            Kind::Host if host.is_some() => return None,
            Kind::Host => host = Some(std::str::from_utf8(v).ok()?),
            Kind::ContentLength => {
                let n = parse_length(v)?;
                if body_len != 0 && body_len as u64 != n {
                    return None;
                }
                body_len = usize::try_from(n).ok()?;
            }
            Kind::TransferEncoding | Kind::Upgrade | Kind::Expect => return None,
            Kind::Connection => {
                for token in v.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                        // It names other headers as hop-by-hop: hyper's path strips them.
                        return None;
                    }
                }
            }
            _ => {}
        }
    }
    if body_len > inner.opts.max_buffered_body {
        return None;
    }
    let host = host?;
    let app = routing
        .app_for_host(host)
        .or_else(|| routing.app_for_address(conn.local))?;
    let svc = routes::service_for_port(app, port)?;
    if svc.h2_backend || (!tls && svc.port(port).is_some_and(|p| p.force_https)) {
        return None;
    }
    Some(Plan {
        routing,
        app,
        svc,
        host,
        port,
        body_len,
        close,
    })
}

/// A `Content-Length` value: digits only.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The client side of one connection.
struct Client<I> {
    io: I,
    /// Bytes read and not yet used: the next request's head (and body) start here.
    buf: BytesMut,
    /// What is written next to the client.
    out: Vec<u8>,
    /// Started when the connection begins waiting for a request head; see `HeadTimer`.
    timer: HeadTimer,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// The header-read deadline of a connection: one timer per connection, moved forward only when
/// it would otherwise fire early by more than a small slack, instead of a timer per request.
struct HeadTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    slack: Duration,
}

impl HeadTimer {
    fn new(limit: Duration) -> HeadTimer {
        HeadTimer {
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit,
            slack: (limit / 32).min(Duration::from_secs(1)),
        }
    }

    /// A wait for a request head starts now.
    fn start(&mut self) {
        let want = tokio::time::Instant::now() + self.limit;
        if self.sleep.deadline() + self.slack < want {
            self.sleep.as_mut().reset(want);
        }
    }
}

/// How a wait for more request bytes ended.
enum Read {
    Data,
    Eof,
    TimedOut,
    Stopped,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Client<I> {
    /// Reads more bytes into `buf`. While waiting for a head (`head_wait`) the header-read
    /// deadline and the listener's stop apply (a stop ends only a connection with nothing
    /// read of its next request).
    async fn read(&mut self, head_wait: bool) -> std::io::Result<Read> {
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(8192);
        }
        let Client {
            io,
            buf,
            timer,
            stop,
            ..
        } = self;
        std::future::poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Read::Eof)),
                Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Read::Data)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if head_wait {
                if buf.is_empty() && stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Read::Stopped));
                }
                if timer.sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Read::TimedOut));
                }
            }
            Poll::Pending
        })
        .await
    }

    async fn write_out(&mut self) -> std::io::Result<()> {
        self.io.write_all(&self.out).await?;
        self.out.clear();
        self.io.flush().await
    }
}

/// Serves an HTTP/1.1 client connection; see the module's description.
pub(crate) async fn serve<I>(
    inner: Arc<Inner>,
    io: I,
    conn: ConnInfo,
    (watcher, stop): (Watcher, CancellationToken),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut c = Client {
        io,
        buf: BytesMut::with_capacity(8192),
        out: Vec::with_capacity(4096),
        timer: HeadTimer::new(inner.opts.header_read_timeout),
        stop: Box::pin(stop.clone().cancelled_owned()),
    };
    let fwd = conn_headers(&inner, &conn);
    let mut head = RequestHead::default();
    loop {
        c.timer.start();
        // What of `buf` was already looked at for the end of the head: a head sent in small
        // pieces is parsed once its end is there, not again on every read.
        let mut scanned = 0;
        let head_len = loop {
            let complete = may_end_head(&c.buf, scanned);
            scanned = c.buf.len();
            if complete || c.buf.len() >= MAX_HEAD {
                match parse_request(&c.buf, &mut head) {
                    Ok(Some(n)) => break n,
                    Ok(None) => {}
                    Err(r) => {
                        let (status, msg) = match r {
                            Refusal::TooLarge => (
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "the request head is too large\n",
                            ),
                            Refusal::Invalid => {
                                (StatusCode::BAD_REQUEST, "the request is not valid HTTP\n")
                            }
                        };
                        simple(&mut c.out, status, msg, None, true);
                        let _ = c.write_out().await;
                        return;
                    }
                }
            }
            match c.read(true).await {
                Ok(Read::Data) => {}
                Ok(Read::Eof | Read::TimedOut | Read::Stopped) | Err(_) => return,
            }
        };
        let routing = inner.routes.load_full();
        head.bytes = c.buf.split_to(head_len).freeze();
        let Some(plan) = plan(&inner, &routing, &head, &conn) else {
            // hyper serves the rest of the connection, from this request on.
            let mut read = BytesMut::with_capacity(head.bytes.len() + c.buf.len());
            read.extend_from_slice(&head.bytes);
            read.extend_from_slice(&c.buf);
            let io = Rewind {
                prefix: read.freeze(),
                io: c.io,
            };
            crate::edge::serve_http1(inner, io, conn, (watcher, stop)).await;
            return;
        };
        while c.buf.len() < plan.body_len {
            match c.read(false).await {
                Ok(Read::Data) => {}
                _ => return,
            }
        }
        let body = c.buf.split_to(plan.body_len).freeze();
        let closing = plan.close || stop.is_cancelled();
        let keep = match relay(&inner, &mut c, &head, &plan, &fwd, body, closing).await {
            Ok(keep) => keep,
            Err(e) => {
                tracing::debug!(error = %e, "client connection ended with an error");
                false
            }
        };
        if !keep || closing || stop.is_cancelled() {
            let _ = c.io.shutdown().await;
            drop(watcher);
            return;
        }
    }
}

/// The forwarding headers that are the same for every request of a connection (`lines`), and
/// the client's address for `X-Forwarded-For`.
struct ConnHeaders {
    lines: Vec<u8>,
    ip: http::HeaderValue,
}

fn conn_headers(inner: &Inner, conn: &ConnInfo) -> ConnHeaders {
    let mut v = Vec::with_capacity(256);
    let ip = conn.ip_header.as_bytes();
    let port = conn.port_header.as_bytes();
    let region = inner.region_header.as_bytes();
    for (name, value) in [
        (hdr::FLY_CLIENT_IP.as_str(), ip),
        (hdr::ALOFT_CLIENT_IP.as_str(), ip),
        (hdr::FLY_FORWARDED_PORT.as_str(), port),
        (hdr::ALOFT_FORWARDED_PORT.as_str(), port),
        (hdr::X_FORWARDED_PORT.as_str(), port),
        (hdr::FLY_REGION.as_str(), region),
        (hdr::ALOFT_REGION.as_str(), region),
    ] {
        line(&mut v, name.as_bytes(), value);
    }
    let (proto, ssl): (&[u8], &[u8]) = if conn.tls {
        (b"https", b"on")
    } else {
        (b"http", b"off")
    };
    line(&mut v, hdr::X_FORWARDED_PROTO.as_str().as_bytes(), proto);
    line(&mut v, hdr::X_FORWARDED_SSL.as_str().as_bytes(), ssl);
    ConnHeaders {
        lines: v,
        ip: conn.ip_header.clone(),
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request for a machine into `out`: the client's head with hop-by-hop headers
/// dropped and the platform's added, then the body.
fn machine_request(
    out: &mut Vec<u8>,
    head: &RequestHead,
    host: &str,
    fwd: &ConnHeaders,
    request_id: &RequestId,
    replay_src: Option<&str>,
    body: &[u8],
) {
    out.clear();
    out.extend_from_slice(head.method());
    out.push(b' ');
    out.extend_from_slice(head.target());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host_seen = false;
    for h in &head.headers {
        match h.kind {
            Kind::Connection
            | Kind::HopByHop
            | Kind::TransferEncoding
            | Kind::Upgrade
            | Kind::Expect
            | Kind::Forwarding
            | Kind::RequestId
            | Kind::XForwardedFor
            | Kind::Via => continue,
            Kind::ReplaySrc if replay_src.is_some() => continue,
            Kind::Host => host_seen = true,
            _ => {}
        }
        line(out, head.name(h), head.value(h));
    }
    if !host_seen {
        line(out, b"host", host.as_bytes());
    }
    out.extend_from_slice(&fwd.lines);
    line(out, b"fly-request-id", request_id.as_bytes());
    line(out, b"aloft-request-id", request_id.as_bytes());
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = head
        .first(Kind::XForwardedFor)
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
    {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(fwd.ip.as_bytes());
    out.extend_from_slice(b"\r\nvia: ");
    if let Some(prev) = head
        .first(Kind::Via)
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
    {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"1.1 aloft\r\n");
    if let Some(src) = replay_src {
        line(out, b"fly-replay-src", src.as_bytes());
        line(out, b"aloft-replay-src", src.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A short answer from the edge itself, appended to `out`.
fn simple(
    out: &mut Vec<u8>,
    status: StatusCode,
    body: &str,
    request_id: Option<&RequestId>,
    close: bool,
) {
    status_line(
        out,
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    line(out, b"content-type", b"text/plain; charset=utf-8");
    line(out, b"content-length", body.len().to_string().as_bytes());
    line(out, b"server", b"aloft");
    if let Some(id) = request_id {
        line(out, b"fly-request-id", id.as_bytes());
        line(out, b"aloft-request-id", id.as_bytes());
    }
    if close {
        line(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

fn status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a machine's answer body is delimited (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the machine closes the connection.
    Close,
}

/// A machine's answer head, rewritten for the client.
struct Answer {
    status: u16,
    framing: Framing,
    /// Whether the machine keeps the connection open after this answer.
    reuse: bool,
    replay: Option<Replay>,
    head_len: usize,
}

/// Parses the answer head at the start of `buf` and writes the client's version of it into
/// `out` (without the final empty line). `shape` is the request's id, whether it was a HEAD
/// request, and whether the client connection closes after this answer. `Ok(None)` while more
/// is needed.
fn parse_answer(
    buf: &[u8],
    out: &mut Vec<u8>,
    (request_id, head_request, closing): (&RequestId, bool, bool),
) -> Result<Option<Answer>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err("sent an answer head that is too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("sent an answer that is not valid HTTP"),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err("sent an answer that is not valid HTTP");
    };
    let mut length: Option<u64> = None;
    let (mut chunked, mut coded, mut close, mut keep_alive) = (false, false, false, false);
    let mut listed: Vec<&[u8]> = Vec::new();
    let mut replay = None;
    let mut kinds = [Kind::Other; MAX_HEADERS];
    for (h, kind) in resp.headers.iter().zip(kinds.iter_mut()) {
        *kind = classify(h.name.as_bytes());
        match *kind {
            Kind::ContentLength => {
                let n = parse_length(h.value).ok_or("sent a content-length that is not valid")?;
                if length.is_some_and(|l| l != n) {
                    return Err("sent two different content-lengths");
                }
                length = Some(n);
            }
            Kind::TransferEncoding => {
                coded = true;
                chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            Kind::Connection => {
                for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if !t.is_empty() {
                        listed.push(t);
                    }
                }
            }
            Kind::Replay if replay.is_none() => {
                replay = std::str::from_utf8(h.value).ok().and_then(Replay::parse);
            }
            _ => {}
        }
    }
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if coded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let reuse = framing != Framing::Close && if minor == 1 { !close } else { keep_alive };
    status_line(out, status, resp.reason.unwrap_or(""));
    for (h, kind) in resp.headers.iter().zip(kinds) {
        let name = h.name.as_bytes();
        match kind {
            Kind::Connection | Kind::HopByHop | Kind::Upgrade | Kind::Server | Kind::RequestId => {
                continue
            }
            // A chunked body is passed on as it is, framing included.
            Kind::TransferEncoding if framing != Framing::Chunked => continue,
            Kind::ContentLength if coded => continue,
            _ if listed.iter().any(|l| l.eq_ignore_ascii_case(name)) => continue,
            _ => {}
        }
        line(out, name, h.value);
    }
    line(out, b"server", b"aloft");
    line(out, b"fly-request-id", request_id.as_bytes());
    line(out, b"aloft-request-id", request_id.as_bytes());
    if status >= 200 && (closing || framing == Framing::Close) {
        line(out, b"connection", b"close");
    }
    Ok(Some(Answer {
        status,
        framing,
        reuse,
        replay,
        head_len,
    }))
}

/// A plain connection to a machine, with what was read from it and not used yet.
pub(crate) struct MachineConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

/// Why one attempt at a machine failed (what the machine did, as in "machine m1 of app a
/// ..."), and whether another may follow.
enum Failure {
    /// Nothing reached the machine, or it answered nothing to a request that can be sent
    /// again: another machine may take the request.
    Retry(String),
    /// The request may have been acted on: answer with this error.
    Fail(String),
}

/// Forwards one planned request: chooses a machine, sends, follows replays, and relays the
/// answer. Returns whether the client connection can serve another request.
async fn relay<I: AsyncRead + AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    c: &mut Client<I>,
    head: &RequestHead,
    plan: &Plan<'_>,
    fwd: &ConnHeaders,
    body: Bytes,
    closing: bool,
) -> std::io::Result<bool> {
    let started = Instant::now();
    let (mut app, mut svc) = (plan.app, plan.svc);
    let _entered = inner.entries.enter(&app.app);
    let request_id = RequestId::new();
    let mut steer = if head.headers.iter().any(|h| h.kind == Kind::Steer) {
        steering_with(|name| {
            head.headers
                .iter()
                .find(|h| {
                    h.kind == Kind::Steer && head.name(h).eq_ignore_ascii_case(name.as_bytes())
                })
                .and_then(|h| std::str::from_utf8(head.value(h)).ok())
        })
    } else {
        Steering::default()
    };
    let head_request = head.method() == b"HEAD";
    let idempotent = head.idempotent();
    let mut request = Vec::with_capacity(head.bytes.len() + 512 + body.len());
    machine_request(&mut request, head, plan.host, fwd, &request_id, None, &body);
    let (mut attempts, mut replays) = (0usize, 0usize);
    // The loop ends in the answer relayed, or with the edge's own error answer: the machine
    // it is counted against, its status and its text.
    let (machine, status, msg) = loop {
        let (m, guard) = match proxy::acquire(inner, app, svc, &steer).await {
            Ok(x) => x,
            Err(_) if attempts > 0 => {
                let msg = format!("no machine of app {} accepted a connection\n", app.app);
                break ("", StatusCode::BAD_GATEWAY, msg);
            }
            Err(e) => break ("", e.status, format!("{}\n", e.message)),
        };
        let addr = SocketAddr::new(m.address, svc.internal_port);
        let exchange = exchange(
            inner,
            addr,
            &request,
            idempotent,
            &mut c.out,
            (&request_id, head_request, closing),
        );
        let outcome = match proxy::until_unreachable(inner, &m.host_id, exchange).await {
            Some(r) => r,
            None => Err(if idempotent {
                Failure::Retry("became unreachable".into())
            } else {
                Failure::Fail("became unreachable".into())
            }),
        };
        let (up, answer) = match outcome {
            Ok(x) => x,
            Err(Failure::Retry(msg)) if attempts + 1 < inner.opts.max_attempts => {
                tracing::warn!(app = %app.app, machine = %m.id, reason = %msg, "trying another machine");
                attempts += 1;
                steer.exclude.insert(m.id.clone());
                c.out.clear();
                continue;
            }
            Err(Failure::Retry(msg) | Failure::Fail(msg)) => {
                tracing::warn!(app = %app.app, machine = %m.id, reason = %msg, "forwarding failed");
                c.out.clear();
                let msg = format!("machine {} of app {} {msg}\n", m.id, app.app);
                break (&m.id, StatusCode::BAD_GATEWAY, msg);
            }
        };
        if let Some(replay) = answer.replay {
            c.out.clear();
            replays += 1;
            if replays > proxy::MAX_REPLAYS {
                let msg = format!("too many replays for app {}\n", app.app);
                break (&m.id, StatusCode::BAD_GATEWAY, msg);
            }
            inner.metrics.replay(&app.app);
            tracing::debug!(app = %app.app, machine = %m.id, ?replay, "replaying");
            match proxy::replay_target(plan.routing, &replay, (app, svc), plan.port) {
                Ok(target) => (app, svc) = target,
                Err(e) => break (&m.id, StatusCode::BAD_GATEWAY, e),
            }
            // The answer's body is not wanted; a connection with a body left on it is closed.
            if answer.reuse && up.buf.is_empty() && answer.framing == Framing::Empty {
                inner.upstream.put_raw(addr, up);
            }
            let src = replay.source(&m.id, &m.region);
            steer = proxy::replay_steering(&replay, m);
            drop(guard);
            machine_request(
                &mut request,
                head,
                plan.host,
                fwd,
                &request_id,
                Some(&src),
                &body,
            );
            continue;
        }
        // `exchange` read a small answer whole already; the rest is relayed as it comes.
        inner
            .metrics
            .request(&app.app, &m.id, answer.status, started.elapsed());
        return relay_body(inner, c, addr, up, &answer, guard).await;
    };
    simple(&mut c.out, status, &msg, Some(&request_id), false);
    inner
        .metrics
        .request(&app.app, machine, status.as_u16(), started.elapsed());
    c.write_out().await?;
    Ok(true)
}

/// Sends `request` to the machine at `addr` over a pooled connection (or a new one) and reads
/// its answer head, writing the client's version of it into `out`. A small answer with a
/// known length is read whole and appended to `out` too, so a machine failing in the middle of
/// it can be retried.
async fn exchange(
    inner: &Inner,
    addr: SocketAddr,
    request: &[u8],
    idempotent: bool,
    out: &mut Vec<u8>,
    shape: (&RequestId, bool, bool),
) -> Result<(MachineConn, Answer), Failure> {
    loop {
        let (mut up, reused) = match inner.upstream.checkout_raw(addr) {
            Some(up) => (up, true),
            None => match inner.upstream.connect_raw(addr).await {
                Ok(up) => (up, false),
                Err(e) => {
                    return Err(Failure::Retry(format!(
                        "did not accept a connection: {}",
                        aloft_api::error::error_chain(&e)
                    )))
                }
            },
        };
        let mut got_any = false;
        let sent = up.stream.write_all(request).await;
        let answer = match sent {
            Ok(()) => read_answer(&mut up, out, shape, &mut got_any).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(Ok(a)) => {
                if let Framing::Length(n) = a.framing {
                    if n <= proxy::MAX_BUFFERED_RESPONSE {
                        match read_exact_body(&mut up, n).await {
                            Ok(()) => {
                                out.extend_from_slice(b"\r\n");
                                out.extend_from_slice(&up.buf[..n as usize]);
                                up.buf.advance(n as usize);
                                return Ok((
                                    up,
                                    Answer {
                                        framing: Framing::Empty,
                                        ..a
                                    },
                                ));
                            }
                            Err(e) if idempotent => {
                                out.clear();
                                return Err(Failure::Retry(format!("cut its answer short: {e}")));
                            }
                            Err(_) => {
                                out.clear();
                                return Err(Failure::Fail("cut its answer short".into()));
                            }
                        }
                    }
                }
                out.extend_from_slice(b"\r\n");
                return Ok((up, a));
            }
            Ok(Err(msg)) => {
                out.clear();
                return Err(Failure::Fail(msg.into()));
            }
            // A pooled connection the machine closed as the request went out: a new one.
            Err(_) if reused && !got_any && idempotent => {
                out.clear();
                continue;
            }
            Err(e) if !got_any && idempotent => {
                out.clear();
                return Err(Failure::Retry(format!("did not answer: {e}")));
            }
            Err(e) => {
                out.clear();
                return Err(Failure::Fail(format!("did not answer: {e}")));
            }
        }
    }
}

/// Reads until an answer head (not an interim one) is in `up.buf`; interim (1xx) heads go to
/// `out` as they are. The outer error is the connection's, the inner one a malformed answer.
async fn read_answer(
    up: &mut MachineConn,
    out: &mut Vec<u8>,
    shape: (&RequestId, bool, bool),
    got_any: &mut bool,
) -> std::io::Result<Result<Answer, &'static str>> {
    loop {
        if !up.buf.is_empty() {
            let mark = out.len();
            match parse_answer(&up.buf, out, shape) {
                Ok(Some(a)) if a.status == 101 => return Ok(Err("switched protocols unasked")),
                Ok(Some(a)) if a.status < 200 => {
                    out.extend_from_slice(b"\r\n");
                    up.buf.advance(a.head_len);
                    continue;
                }
                Ok(Some(a)) => {
                    up.buf.advance(a.head_len);
                    return Ok(Ok(a));
                }
                Ok(None) => out.truncate(mark),
                Err(msg) => return Ok(Err(msg)),
            }
        }
        if up.buf.capacity() - up.buf.len() < 2048 {
            up.buf.reserve(8192);
        }
        let n = tokio::io::AsyncReadExt::read_buf(&mut up.stream, &mut up.buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        *got_any = true;
    }
}

async fn read_exact_body(up: &mut MachineConn, n: u64) -> std::io::Result<()> {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    while up.buf.len() < n {
        up.buf.reserve(n - up.buf.len());
        if tokio::io::AsyncReadExt::read_buf(&mut up.stream, &mut up.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Writes the answer head (and whatever `exchange` already read) to the client, relays the
/// rest of the body, then gives the machine connection back if it can serve another request.
/// Returns whether the client connection can go on.
async fn relay_body<I: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    c: &mut Client<I>,
    addr: SocketAddr,
    mut up: MachineConn,
    answer: &Answer,
    guard: SlotGuard,
) -> std::io::Result<bool> {
    let mut reuse = answer.reuse;
    let client_keep = answer.framing != Framing::Close;
    match answer.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            let mut left = n;
            loop {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(up.buf.len());
                c.out.extend_from_slice(&up.buf[..take]);
                up.buf.advance(take);
                left -= take as u64;
                c.write_out().await?;
                if left == 0 {
                    break;
                }
                if read_more(&mut up).await? == 0 {
                    // Cut short: the client cannot be told otherwise than by a close.
                    return Ok(false);
                }
            }
        }
        Framing::Chunked => {
            let mut chunks = Chunked::default();
            loop {
                let (used, done) = chunks
                    .advance(&up.buf)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                c.out.extend_from_slice(&up.buf[..used]);
                up.buf.advance(used);
                c.write_out().await?;
                if done {
                    break;
                }
                if read_more(&mut up).await? == 0 {
                    return Ok(false);
                }
            }
        }
        Framing::Close => {
            reuse = false;
            loop {
                c.out.extend_from_slice(&up.buf);
                up.buf.clear();
                c.write_out().await?;
                if read_more(&mut up).await? == 0 {
                    break;
                }
            }
        }
    }
    if answer.framing == Framing::Empty {
        c.write_out().await?;
    }
    drop(guard);
    // Bytes past the answer mean the machine is out of step: its connection is not reused.
    if reuse && up.buf.is_empty() {
        inner.upstream.put_raw(addr, up);
    }
    Ok(client_keep)
}

async fn read_more(up: &mut MachineConn) -> std::io::Result<usize> {
    if up.buf.capacity() - up.buf.len() < 8192 {
        up.buf.reserve(16 * 1024);
    }
    tokio::io::AsyncReadExt::read_buf(&mut up.stream, &mut up.buf).await
}

/// A connection with bytes already read from it put back in front, for hyper.
pub(crate) struct Rewind<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const REQUEST: &[u8] = b"POST /a?b=c HTTP/1.1\r\nHost: alpha.aloft.test\r\nContent-Length: 3\r\nConnection: keep-alive\r\nFly-Prefer-Region: ams\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabc";
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, x-a\r\nx-a: 1\r\nServer: nginx\r\nTransfer-Encoding: chunked\r\nfly-replay: region=fra\r\n\r\n";

    #[test]
    fn request_heads_are_read_in_place() {
        let mut head = RequestHead::default();
        assert_eq!(parse_request(&REQUEST[..20], &mut head), Ok(None));
        let n = parse_request(REQUEST, &mut head).unwrap().unwrap();
        assert_eq!(&REQUEST[n..], b"abc");
        head.bytes = Bytes::copy_from_slice(&REQUEST[..n]);
        assert_eq!(head.method(), b"POST");
        assert_eq!(head.target(), b"/a?b=c");
        let kinds: Vec<Kind> = head.headers.iter().map(|h| h.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Host,
                Kind::ContentLength,
                Kind::Connection,
                Kind::Steer,
                Kind::XForwardedFor
            ]
        );
        assert_eq!(head.first(Kind::XForwardedFor), Some(&b"1.2.3.4"[..]));
    }

    #[test]
    fn answer_heads_are_rewritten_for_the_client() {
        let id = RequestId::new();
        let mut out = Vec::new();
        let a = parse_answer(ANSWER, &mut out, (&id, false, false))
            .unwrap()
            .unwrap();
        assert_eq!(a.head_len, ANSWER.len());
        assert_eq!(a.framing, Framing::Chunked, "transfer-encoding wins");
        assert!(!a.reuse);
        assert_eq!(a.replay.unwrap().regions, ["fra"]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(text.contains("server: aloft\r\n"), "{text}");
        for gone in ["Content-Length", "x-a", "nginx", "Connection"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
    }

    #[test]
    fn a_head_is_parsed_only_once_its_end_may_be_there() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(may_end_head(head, 0));
        assert!(!may_end_head(&head[..head.len() - 1], 0));
        // The end arriving in the last read, split from the line end before it.
        assert!(may_end_head(head, head.len() - 1));
        assert!(may_end_head(head, head.len() - 2));
        assert!(may_end_head(b"GET / HTTP/1.1\nHost: a\n\n", 20));
        assert!(!may_end_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(!may_end_head(b"", 0));
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        for bad in [
            &b""[..],
            b"-1",
            b"1e3",
            b"+5",
            b"99999999999999999999",
            b"4 2",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    /// Seeded random corruption of valid heads: parsing never panics and every range it gives
    /// lies inside the input.
    #[test]
    fn corrupted_heads_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0101);
        let id = RequestId::new();
        let mut head = RequestHead::default();
        for _ in 0..20_000 {
            let mut req = REQUEST.to_vec();
            let mut ans = ANSWER.to_vec();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..req.len());
                req[i] = rng.random();
                let j = rng.random_range(0..ans.len());
                ans[j] = rng.random();
            }
            let cut = rng.random_range(0..=req.len());
            if let Ok(Some(n)) = parse_request(&req[..cut], &mut head) {
                assert!(n <= cut);
                for h in &head.headers {
                    assert!(h.name.end <= n && h.value.end <= n);
                }
                assert!(head.method.end <= n && head.target.end <= n);
            }
            let mut out = Vec::new();
            if let Ok(Some(a)) = parse_answer(&ans, &mut out, (&id, rng.random(), rng.random())) {
                assert!(a.head_len <= ans.len());
            }
            let mut chunks = Chunked::default();
            if let Ok((used, _)) = chunks.advance(&ans) {
                assert!(used <= ans.len());
            }
        }
    }
}
