//! Body types: the edge's own answers, and request bodies buffered so they can be sent again
//! (or streamed past the limit).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};

/// The body type the edge sends and answers with.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A whole body of `bytes`.
pub(crate) fn whole(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A short plain-text answer from the edge itself.
pub(crate) fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(whole(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Reads a request body of unknown or small size into memory while it stays within `limit`
/// (`Ok(Ok(bytes))`); past the limit, gives back a body that replays what was read and streams
/// the rest (`Ok(Err(body))`). Trailers of buffered bodies are dropped.
pub(crate) async fn buffer_body(
    mut body: Incoming,
    limit: usize,
) -> Result<Result<Bytes, ProxyBody>, hyper::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                let read = Some(buf.freeze());
                return Ok(Err(Prefixed { read, rest: body }.boxed()));
            }
        }
    }
    Ok(Ok(buf.freeze()))
}

/// A request body whose first bytes were already read.
struct Prefixed {
    read: Option<Bytes>,
    rest: Incoming,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(read) = self.read.take() {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none() && self.rest.is_end_stream()
    }
}
