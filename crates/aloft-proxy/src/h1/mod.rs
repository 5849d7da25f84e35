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
//! cannot route it (no Host, unknown app, no service on the port). The relay does not serve
//! those itself: [`serve`] gives the connection back as a [`Handoff`], and the connection
//! module starts hyper on it. Both engines choose machines, retry, replay and count through the
//! same [`flow`](crate::flow).
//!
//! `head` parses request heads, `answer` writes what goes to machines and clients, `relay`
//! plans a request and runs it through the flow.

mod answer;
mod head;
mod relay;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use self::answer::{conn_headers, simple};
use self::head::{may_end_head, parse_request, Refusal, RequestHead, MAX_HEAD};
use self::relay::{plan, relay};
use crate::headers::ConnInfo;
use crate::shared::Shared;

/// A connection the relay leaves to hyper from its current request on, with the bytes read so
/// far put back in front.
pub(crate) struct Handoff<I> {
    pub io: Rewind<I>,
    pub conn: ConnInfo,
    pub watcher: Watcher,
    pub stop: CancellationToken,
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

/// Serves an HTTP/1.1 client connection; see the module's description. Returns the
/// connection when hyper is to serve the rest of it.
pub(crate) async fn serve<I>(
    shared: &Shared,
    io: I,
    conn: ConnInfo,
    (watcher, stop): (Watcher, CancellationToken),
) -> Option<Handoff<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Client {
        io,
        buf: BytesMut::with_capacity(8192),
        out: Vec::with_capacity(4096),
        timer: HeadTimer::new(shared.opts().header_read_timeout),
        stop: Box::pin(stop.clone().cancelled_owned()),
    };
    let fwd = conn_headers(shared, &conn);
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
                        return None;
                    }
                }
            }
            match c.read(true).await {
                Ok(Read::Data) => {}
                Ok(Read::Eof | Read::TimedOut | Read::Stopped) | Err(_) => return None,
            }
        };
        let routing = shared.routing();
        head.bytes = c.buf.split_to(head_len).freeze();
        let Some(plan) = plan(shared, &routing, &head, &conn) else {
            // hyper serves the rest of the connection, from this request on.
            let mut read = BytesMut::with_capacity(head.bytes.len() + c.buf.len());
            read.extend_from_slice(&head.bytes);
            read.extend_from_slice(&c.buf);
            let io = Rewind {
                prefix: read.freeze(),
                io: c.io,
            };
            return Some(Handoff {
                io,
                conn,
                watcher,
                stop,
            });
        };
        while c.buf.len() < plan.body_len {
            match c.read(false).await {
                Ok(Read::Data) => {}
                _ => return None,
            }
        }
        let body = c.buf.split_to(plan.body_len).freeze();
        let closing = plan.close || stop.is_cancelled();
        let keep = match relay(shared, &mut c, (&head, &plan, &conn), &fwd, body, closing).await {
            Ok(keep) => keep,
            Err(e) => {
                tracing::debug!(error = %e, "client connection ended with an error");
                false
            }
        };
        if !keep || closing || stop.is_cancelled() {
            let _ = c.io.shutdown().await;
            drop(watcher);
            return None;
        }
    }
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
