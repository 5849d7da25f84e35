//! What the relay writes: the request for a machine (the client's head with hop-by-hop headers
//! out and the platform's forwarding headers in), the machine's answer head rewritten for the
//! client, and the edge's own short answers.

use http::StatusCode;

use super::head::{classify, parse_length, Kind, RequestHead, MAX_HEAD, MAX_HEADERS};
use crate::headers::{hdr, ConnInfo, RequestId};
use crate::replay::Replay;
use crate::shared::Shared;

/// The forwarding headers that are the same for every request of a connection (`lines`), and
/// the client's address for `X-Forwarded-For`.
pub(super) struct ConnHeaders {
    lines: Vec<u8>,
    ip: http::HeaderValue,
}

pub(super) fn conn_headers(shared: &Shared, conn: &ConnInfo) -> ConnHeaders {
    let mut v = Vec::with_capacity(256);
    let ip = conn.ip_header.as_bytes();
    let port = conn.port_header.as_bytes();
    let region = shared.region_header().as_bytes();
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

#[inline(always)]
pub(super) fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request for a machine into `out`: the client's head with hop-by-hop headers
/// dropped and the platform's added, then the body.
pub(super) fn machine_request(
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
pub(super) fn simple(
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

pub(super) fn status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a machine's answer body is delimited (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the machine closes the connection.
    Close,
}

/// A machine's answer head, rewritten for the client.
pub(super) struct Answer {
    pub status: u16,
    pub framing: Framing,
    /// Whether the machine keeps the connection open after this answer.
    pub reuse: bool,
    /// Boxed: rare, and the answer is moved about on every request.
    pub replay: Option<Box<Replay>>,
    pub head_len: usize,
}

/// Parses the answer head at the start of `buf` and writes the client's version of it into
/// `out` (without the final empty line). `shape` is the request's id, whether it was a HEAD
/// request, and whether the client connection closes after this answer. `Ok(None)` while more
/// is needed.
pub(super) fn parse_answer(
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
                replay = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(Replay::parse)
                    .map(Box::new);
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

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::head::tests::REQUEST;
    use super::super::head::{parse_request, RequestHead};
    use super::*;
    use crate::chunked::Chunked;

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, x-a\r\nx-a: 1\r\nServer: nginx\r\nTransfer-Encoding: chunked\r\nfly-replay: region=fra\r\n\r\n";

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
