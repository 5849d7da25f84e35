//! The relay as an engine of the request flow: which requests it takes, the request written
//! once and sent over a plain pooled machine connection, the answer head read and rewritten,
//! and the body relayed as it comes.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::answer::{machine_request, parse_answer, simple, Answer, ConnHeaders, Framing};
use super::head::{parse_length, Kind, RequestHead};
use super::Client;
use crate::balance::{SlotGuard, Steering};
use crate::chunked::Chunked;
use crate::flow::{self, Dest, Engine, Failure, Flow, Forwarded, Sending};
use crate::headers::{steering_with, ConnInfo, RequestId};
use crate::replay::Replay;
use crate::routes::{AppRoutes, Routing, ServiceRoutes};
use crate::shared::Shared;
use crate::upstream::{MachineConn, Upstream};

/// What the relay makes of a parsed request.
pub(super) struct Plan<'r> {
    routing: &'r Routing,
    app: &'r AppRoutes,
    svc: &'r ServiceRoutes,
    host: &'r str,
    pub body_len: usize,
    pub close: bool,
}

/// Whether the relay serves this request, and with what; `None` hands the connection to hyper.
pub(super) fn plan<'r>(
    shared: &Shared,
    routing: &'r Routing,
    head: &'r RequestHead,
    conn: &ConnInfo,
) -> Option<Plan<'r>> {
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
    if body_len > shared.opts().max_buffered_body {
        return None;
    }
    // What the flow would refuse or redirect, hyper's path answers.
    let host = host?;
    let app = flow::app_for(routing, Some(host), conn.local).ok()?;
    let svc = flow::service_for(app, conn.port).ok()?;
    if svc.h2_backend || flow::must_redirect(svc, conn) {
        return None;
    }
    Some(Plan {
        routing,
        app,
        svc,
        host,
        body_len,
        close,
    })
}

/// Forwards one planned request through the flow with the relay as its engine, then relays
/// the answer's body. Returns whether the client connection can serve another request.
pub(super) async fn relay<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    c: &mut Client<I>,
    (head, plan, conn): (&RequestHead, &Plan<'_>, &ConnInfo),
    fwd: &ConnHeaders,
    body: Bytes,
    closing: bool,
) -> std::io::Result<bool> {
    let started = Instant::now();
    let mut flow = Flow::new(
        shared,
        plan.routing,
        (plan.app, plan.svc),
        conn.port,
        started,
    );
    let request_id = RequestId::new();
    let steer = if head.headers.iter().any(|h| h.kind == Kind::Steer) {
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
    let idempotent = head.idempotent();
    let mut request = Vec::with_capacity(head.bytes.len() + 512 + body.len());
    machine_request(&mut request, head, plan.host, fwd, &request_id, None, &body);
    let mut engine = Relay {
        shared,
        out: &mut c.out,
        head,
        host: plan.host,
        fwd,
        body,
        request,
        request_id: &request_id,
        idempotent,
        head_request: head.method() == b"HEAD",
        closing,
        answer: None,
    };
    let sending = Sending {
        steer,
        idempotent,
        resendable: true,
    };
    match flow.forward(&mut engine, sending).await {
        Ok(Forwarded {
            machine,
            addr,
            slot,
        }) => {
            // The flow gives a machine only with its answer kept; without one, the client
            // connection cannot be told anything more than a close.
            let Some((up, answer)) = engine.answer.take() else {
                return Ok(false);
            };
            // `exchange` read a small answer whole already; the rest is relayed as it comes.
            flow.account(&machine.id, answer.status);
            relay_body(shared, c, addr, up, &answer, slot).await
        }
        Err(refused) => {
            c.out.clear();
            simple(
                &mut c.out,
                refused.status,
                &refused.message,
                Some(&request_id),
                false,
            );
            flow.account(refused.machine, refused.status.as_u16());
            c.write_out().await?;
            Ok(true)
        }
    }
}

/// One request through the relay: its bytes for the machine, and where the answer head goes.
struct Relay<'a> {
    shared: &'a Shared,
    /// What is written next to the client.
    out: &'a mut Vec<u8>,
    head: &'a RequestHead,
    host: &'a str,
    fwd: &'a ConnHeaders,
    body: Bytes,
    /// The request as sent to machines.
    request: Vec<u8>,
    request_id: &'a RequestId,
    idempotent: bool,
    head_request: bool,
    closing: bool,
    /// The last machine's answer: its connection, and the head (already in `out`).
    answer: Option<(MachineConn, Answer)>,
}

impl Engine for Relay<'_> {
    async fn send(&mut self, to: &Dest<'_>) -> Result<(), Failure> {
        self.out.clear();
        self.answer = None;
        let shape = (self.request_id, self.head_request, self.closing);
        let answer = exchange(
            self.shared.upstream(),
            to.addr,
            &self.request,
            self.idempotent,
            self.out,
            shape,
        )
        .await?;
        self.answer = Some(answer);
        Ok(())
    }

    fn replay(&mut self) -> Option<Replay> {
        let (_, answer) = self.answer.as_mut()?;
        answer.replay.take().map(|r| *r)
    }

    fn replaying(&mut self, to: &Dest<'_>, src: &str) {
        self.out.clear();
        // The answer's body is not wanted; a connection with a body left on it is closed.
        if let Some((up, answer)) = self.answer.take() {
            if answer.reuse && up.buf.is_empty() && answer.framing == Framing::Empty {
                self.shared.upstream().put_raw(to.addr, up);
            }
        }
        machine_request(
            &mut self.request,
            self.head,
            self.host,
            self.fwd,
            self.request_id,
            Some(src),
            &self.body,
        );
    }
}

/// Sends `request` to the machine at `addr` over a pooled connection (or a new one) and reads
/// its answer head, writing the client's version of it into `out`. A small answer with a
/// known length is read whole and appended to `out` too, so a machine failing in the middle of
/// it can be retried.
async fn exchange(
    upstream: &Upstream,
    addr: SocketAddr,
    request: &[u8],
    idempotent: bool,
    out: &mut Vec<u8>,
    shape: (&RequestId, bool, bool),
) -> Result<(MachineConn, Answer), Failure> {
    loop {
        let (mut up, reused) = match upstream.checkout_raw(addr) {
            Some(up) => (up, true),
            None => match upstream.connect_raw(addr).await {
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
                    if n <= flow::MAX_BUFFERED_RESPONSE {
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
    shared: &Shared,
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
        shared.upstream().put_raw(addr, up);
    }
    Ok(client_keep)
}

async fn read_more(up: &mut MachineConn) -> std::io::Result<usize> {
    if up.buf.capacity() - up.buf.len() < 8192 {
        up.buf.reserve(16 * 1024);
    }
    tokio::io::AsyncReadExt::read_buf(&mut up.stream, &mut up.buf).await
}
