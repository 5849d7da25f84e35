//! Request heads as the relay reads them: parsed in place with `httparse`, each header
//! classified once by name, with ranges into the bytes read instead of copies.

use std::ops::Range;

use bytes::Bytes;

/// Request and response heads larger than this are refused.
pub(super) const MAX_HEAD: usize = 64 * 1024;
pub(super) const MAX_HEADERS: usize = 100;

/// What a header is to the relay, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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

#[inline]
pub(super) fn classify(name: &[u8]) -> Kind {
    NAMES
        .iter()
        .find(|(n, _)| n.len() == name.len() && name.eq_ignore_ascii_case(n.as_bytes()))
        .map_or(Kind::Other, |(_, k)| *k)
}

/// One header of a parsed head, as ranges into the head's bytes.
#[derive(Debug, Clone)]
pub(super) struct Header {
    pub name: Range<usize>,
    pub value: Range<usize>,
    pub kind: Kind,
}

#[inline]
pub(super) fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// A client's request head, parsed where it was read.
#[derive(Debug, Default)]
pub(super) struct RequestHead {
    pub bytes: Bytes,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub minor: u8,
    pub headers: Vec<Header>,
}

impl RequestHead {
    #[inline]
    pub fn method(&self) -> &[u8] {
        &self.bytes[self.method.clone()]
    }

    #[inline]
    pub fn target(&self) -> &[u8] {
        &self.bytes[self.target.clone()]
    }

    #[inline]
    pub fn name(&self, h: &Header) -> &[u8] {
        &self.bytes[h.name.clone()]
    }

    #[inline]
    pub fn value(&self, h: &Header) -> &[u8] {
        &self.bytes[h.value.clone()]
    }

    #[inline]
    pub fn first(&self, kind: Kind) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.kind == kind)
            .map(|h| self.value(h))
    }

    #[inline]
    pub fn idempotent(&self) -> bool {
        http::Method::from_bytes(self.method()).is_ok_and(|m| m.is_idempotent())
    }
}

/// Parses the request head at the start of `buf`: `Ok(Some(len))` once it is whole (and
/// `head` describes it, with ranges into `buf`), `Ok(None)` while more is needed.
pub(super) fn parse_request(buf: &[u8], head: &mut RequestHead) -> Result<Option<usize>, Refusal> {
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
pub(super) fn may_end_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3).min(buf.len())..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Why a request head is answered with an error and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    TooLarge,
    Invalid,
}

/// A `Content-Length` value: digits only.
#[inline]
pub(super) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::h1) const REQUEST: &[u8] = b"POST /a?b=c HTTP/1.1\r\nHost: alpha.aloft.test\r\nContent-Length: 3\r\nConnection: keep-alive\r\nFly-Prefer-Region: ams\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabc";

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
}
