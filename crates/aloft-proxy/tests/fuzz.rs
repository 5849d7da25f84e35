//! Seeded random input for the edge's parsers: `fly-replay` values, PROXY protocol headers, and
//! whole requests with random Host, forwarding and steering headers and random replay answers
//! sent through a real edge. Nothing may panic (a panic hook counts panics on any thread), and
//! the edge answers every request that hyper accepts with a status.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aloft_proxy::proxy_proto::{self, ProxyHeader, ProxyProtoError};
use aloft_proxy::{ProxyProtoVersion, Replay};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

const PIECES: &[&str] = &[
    "region",
    "instance",
    "prefer_instance",
    "elsewhere",
    "state",
    "app",
    "=",
    ";",
    ",",
    " ",
    "true",
    "TRUE",
    "ams",
    "fra",
    "m1",
    "\t",
    "==",
    ";;",
    "é",
    "\u{0}",
    "%",
    "*",
    ":",
    "[",
    "]",
    ".",
    "80",
    "65536",
    "-",
    "_",
    "\"",
];

fn random_text(rng: &mut StdRng, max_pieces: usize) -> String {
    let n = rng.random_range(0..=max_pieces);
    let mut s = String::new();
    for _ in 0..n {
        if rng.random_bool(0.2) {
            s.push(char::from(rng.random_range(0x20u8..0x7f)));
        } else {
            s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
        }
    }
    s
}

#[test]
fn replay_values_never_panic_and_read_back_what_was_written() {
    count_panics();
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    for _ in 0..20_000 {
        let v = random_text(&mut rng, 16);
        if let Some(r) = Replay::parse(&v) {
            assert!(
                !r.regions.is_empty()
                    || r.instance.is_some()
                    || r.prefer_instance.is_some()
                    || r.app.is_some()
                    || r.elsewhere,
                "{v:?} parsed to an empty replay"
            );
            assert!(r.regions.iter().all(|r| !r.is_empty() && r.trim() == r));
        }
    }
    for _ in 0..2_000 {
        let regions: Vec<String> = (0..rng.random_range(1..4))
            .map(|i| format!("r{i}{}", rng.random_range(0..100)))
            .collect();
        let instance = format!("m{}", rng.random::<u32>());
        let v = format!(
            " Region = {} ; instance={instance};unknown=x",
            regions.join(" , ")
        );
        let r = Replay::parse(&v).unwrap();
        assert_eq!(r.regions, regions, "{v}");
        assert_eq!(r.instance.as_deref(), Some(instance.as_str()));
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

fn random_addr(rng: &mut StdRng) -> SocketAddr {
    let port = rng.random::<u16>();
    if rng.random_bool(0.5) {
        SocketAddr::from((rng.random::<[u8; 4]>(), port))
    } else {
        SocketAddr::from((rng.random::<[u16; 8]>(), port))
    }
}

#[test]
fn proxy_protocol_headers_round_trip_and_garbage_never_panics() {
    count_panics();
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    for _ in 0..5_000 {
        let (s, d) = (random_addr(&mut rng), random_addr(&mut rng));
        let version = if rng.random_bool(0.5) {
            ProxyProtoVersion::V1
        } else {
            ProxyProtoVersion::V2
        };
        let mut bytes = proxy_proto::encode(version, s, d);
        let len = bytes.len();
        let (header, used) = proxy_proto::parse(&bytes).unwrap();
        assert_eq!(used, len);
        let ProxyHeader::Tcp {
            source,
            destination,
        } = header
        else {
            panic!("not a TCP header");
        };
        assert_eq!((source.port(), destination.port()), (s.port(), d.port()));
        let canon = |a: std::net::IpAddr| match a {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, std::net::IpAddr::V4),
            v4 => v4,
        };
        assert_eq!(canon(source.ip()), canon(s.ip()));
        assert_eq!(canon(destination.ip()), canon(d.ip()));
        // Every strict prefix is incomplete, never a wrong header.
        let cut = rng.random_range(0..len);
        assert_eq!(
            proxy_proto::parse(&bytes[..cut]),
            Err(ProxyProtoError::Incomplete),
            "{:?}",
            &bytes[..cut]
        );
        // Random corruption: an answer or an error, and never a length past the input.
        for _ in 0..4 {
            let i = rng.random_range(0..len);
            bytes[i] = rng.random();
        }
        if let Ok((_, n)) = proxy_proto::parse(&bytes) {
            assert!(n <= bytes.len());
        }
    }
    for _ in 0..20_000 {
        let n = rng.random_range(0..120);
        let mut bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if rng.random_bool(0.3) {
            bytes.splice(0..0, b"PROXY ".iter().copied());
        } else if rng.random_bool(0.3) {
            bytes.splice(0..0, proxy_proto::V2_SIGNATURE.iter().copied());
        }
        if let Ok((_, used)) = proxy_proto::parse(&bytes) {
            assert!(used <= bytes.len());
        }
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

const HOST_PIECES: &[&str] = &[
    "alpha",
    "beta",
    ".aloft.test",
    ".",
    ":",
    "80",
    ":65536",
    "[",
    "]",
    "::1",
    "ALPHA",
    "é",
    " ",
    "-",
    "*",
    "..",
    ":abc",
    "%2e",
    "\t",
];

fn random_header_value(rng: &mut StdRng, pieces: &[&str]) -> String {
    let n = rng.random_range(0..6);
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(pieces[rng.random_range(0..pieces.len())]);
    }
    s
}

/// Sends one raw HTTP/1.1 request and returns the status code, or `None` if the connection
/// closed without an answer.
async fn raw(edge: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(edge).await.ok()?;
    s.write_all(request).await.ok()?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the edge neither answered nor closed");
    let text = String::from_utf8_lossy(&out);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some(status)
}

#[tokio::test]
async fn random_requests_through_the_edge_get_answers_and_never_panic() {
    count_panics();
    let port = shared_port().await;
    let _a = Backend::start((ip(41), port).into(), "f1").await;
    let _b = Backend::start((ip(42), port).into(), "f2").await;
    let mut alpha = app(
        "alpha",
        port,
        vec![
            machine("f1", "ams", "h1", 41),
            machine("f2", "fra", "h2", 42),
        ],
    );
    alpha.hostnames = vec!["Alpha.Example.COM.".into()];
    let edge = edge_with(vec![alpha], |_| {}).await;
    let addr = edge.http_addr();
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    let steering = [
        "fly-prefer-region",
        "fly-force-region",
        "fly-force-instance-id",
        "fly-prefer-instance-id",
        "aloft-prefer-region",
        "x-forwarded-for",
        "fly-client-ip",
        "connection",
        "via",
    ];
    let mut answered = 0;
    for i in 0..400 {
        let host = if i % 3 == 0 {
            "alpha.aloft.test".to_string()
        } else {
            random_header_value(&mut rng, HOST_PIECES)
        };
        let mut req = format!("GET /replay HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
        for _ in 0..rng.random_range(0..4) {
            let name = steering[rng.random_range(0..steering.len())];
            let value = random_text(&mut rng, 6).replace(['\r', '\n', '\u{0}'], "");
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if rng.random_bool(0.6) {
            let ask = random_text(&mut rng, 8).replace(['\r', '\n', '\u{0}'], "");
            req.push_str(&format!("x-test-replay: {ask}\r\n"));
        }
        req.push_str("\r\n");
        if let Some(status) = raw(addr, req.as_bytes()).await {
            assert!((200..600).contains(&status), "{status} for {req:?}");
            answered += 1;
        }
    }
    assert!(
        answered > 300,
        "only {answered} of 400 requests got a status"
    );
    // Still serving normally.
    assert_eq!(
        get(addr, "alpha.aloft.test", "/").await.status,
        hyper::StatusCode::OK
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}
