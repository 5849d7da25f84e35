//! The edge's HTTP/1.1 relay against a machine that answers with hand-written bytes: chunked,
//! until-close, interim, empty, large, cut-short and malformed answers, pipelined requests,
//! machine connections reused and closed, the request head as the machine sees it, and the
//! requests the relay leaves to hyper.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A machine speaking HTTP/1.1 by hand. Each connection gets a number (from 1); answers by path:
/// `/chunked`, `/close` (until close), `/early` (103 then 200), `/big` (200 000 bytes),
/// `/nocontent` (204), `/garbage`, `/cut` (content-length 100, 5 bytes, close), `/bye`
/// (answers, then closes the connection), `/head` (the request head it got as the body),
/// anything else `conn=N`.
struct RawMachine {
    conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawMachine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawMachine {
    async fn start(addr: SocketAddr) -> RawMachine {
        let listener = TcpListener::bind(addr).await.unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let count = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(machine_conn(s, n));
            }
        });
        RawMachine { conns, task }
    }
}

/// Reads one HTTP/1.1 message head (and a `content-length` body) from `s`.
async fn read_message<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut more = [0u8; 4096];
                let n = s.read(&mut more).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&more[..n]);
            }
            buf.drain(..end + 4 + len);
            return Some(head);
        }
        let mut more = [0u8; 4096];
        let n = s.read(&mut more).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&more[..n]);
    }
}

async fn w(s: &mut TcpStream, b: Vec<u8>) -> bool {
    s.write_all(&b).await.is_ok()
}

async fn machine_conn(mut s: TcpStream, n: usize) {
    let mut buf = Vec::new();
    while let Some(head) = read_message(&mut s, &mut buf).await {
        let target = head.split(' ').nth(1).unwrap_or("/");
        let path = target.split('?').next().unwrap_or("/").to_string();
        let plain = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nserver: rawmachine\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        match path.as_str() {
            "/chunked" => {
                let _ = w(&mut s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x-private\r\nx-private: 1\r\n\r\n5\r\nhello".to_vec()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = w(&mut s, b"\r\n6\r\n world\r\n".to_vec()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                if !w(&mut s, b"0\r\nx-trailer: t\r\n\r\n".to_vec()).await {
                    return;
                }
            }
            "/close" => {
                let _ = w(&mut s, b"HTTP/1.1 200 OK\r\n\r\nuntil ".to_vec()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = w(&mut s, b"the end".to_vec()).await;
                return;
            }
            "/early" => {
                let _ = w(
                    &mut s,
                    b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n".to_vec(),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                if !w(&mut s, plain("ok")).await {
                    return;
                }
            }
            "/big" => {
                let _ = w(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n".to_vec(),
                )
                .await;
                for _ in 0..20 {
                    if !w(&mut s, vec![b'x'; 10_000]).await {
                        return;
                    }
                }
            }
            "/nocontent" => {
                if !w(&mut s, b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()).await {
                    return;
                }
            }
            "/garbage" => {
                let _ = w(&mut s, b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
                return;
            }
            "/cut" => {
                let _ = w(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort".to_vec(),
                )
                .await;
                return;
            }
            "/bye" => {
                let _ = w(&mut s, plain(&format!("conn={n}"))).await;
                return;
            }
            "/head" => {
                if !w(&mut s, plain(&head)).await {
                    return;
                }
            }
            _ => {
                let body = if head.starts_with("HEAD ") {
                    // The length of the body a GET would get, and no body.
                    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n".to_vec()
                } else {
                    plain(&format!("conn={n}"))
                };
                if !w(&mut s, body).await {
                    return;
                }
            }
        }
    }
}

/// One answer as a client reads it: status, head, and the body decoded from its framing.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut more = [0u8; 16384];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut more))
        .await
        .expect("the edge answers")
        .unwrap_or(0);
    buf.extend_from_slice(&more[..n]);
    n
}

/// Reads one answer from `s` (an interim one too); `head_request` answers have no body.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Answer {
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        assert!(fill(s, buf).await > 0, "closed before a head: {buf:?}");
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let status: u16 = head[9..12].parse().unwrap();
    let mut a = Answer {
        status,
        head,
        body: String::new(),
    };
    if head_request || status < 200 || status == 204 || status == 304 {
        return a;
    }
    if a.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(fill(s, buf).await > 0, "closed inside a chunk size");
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()
                    .unwrap(),
                16,
            )
            .unwrap();
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        buf.drain(..i + 2);
                        if empty {
                            return a;
                        }
                        continue;
                    }
                    assert!(fill(s, buf).await > 0, "closed inside the trailers");
                }
            }
            while buf.len() < size + 2 {
                assert!(fill(s, buf).await > 0, "closed inside a chunk");
            }
            a.body.push_str(&String::from_utf8_lossy(&buf[..size]));
            buf.drain(..size + 2);
        }
    }
    match a
        .header("content-length")
        .map(|v| v.parse::<usize>().unwrap())
    {
        Some(n) => {
            while buf.len() < n {
                assert!(fill(s, buf).await > 0, "closed inside the body");
            }
            a.body = String::from_utf8_lossy(&buf[..n]).into_owned();
            buf.drain(..n);
        }
        None => {
            while fill(s, buf).await > 0 {}
            a.body = String::from_utf8_lossy(buf).into_owned();
            buf.clear();
        }
    }
    a
}

async fn setup() -> (RawMachine, aloft_proxy::Edge) {
    let port = shared_port().await;
    let m = RawMachine::start((ip(61), port).into()).await;
    let edge = edge_with(
        vec![app("alpha", port, vec![machine("r1", "ams", "h1", 61)])],
        |_| {},
    )
    .await;
    (m, edge)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: alpha.aloft.test\r\n\r\n")
}

async fn client(edge: &aloft_proxy::Edge) -> TcpStream {
    TcpStream::connect(edge.http_addr()).await.unwrap()
}

#[tokio::test]
async fn chunked_answers_are_relayed_and_the_connection_goes_on() {
    let (m, edge) = setup().await;
    let mut s = client(&edge).await;
    let mut buf = Vec::new();
    s.write_all(get("/chunked").as_bytes()).await.unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!((a.status, a.body.as_str()), (200, "hello world"), "{a:?}");
    assert_eq!(a.header("server"), Some("aloft"));
    assert_eq!(
        a.header("x-private"),
        None,
        "a header named in Connection is hop-by-hop"
    );
    assert_eq!(a.header("fly-request-id").map(str::len), Some(32));
    // The same client connection, and the same machine connection, serve the next requests.
    for _ in 0..3 {
        s.write_all(get("/").as_bytes()).await.unwrap();
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!((a.status, a.body.as_str()), (200, "conn=1"), "{a:?}");
    }
    assert_eq!(m.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_m, edge) = setup().await;
    let mut s = client(&edge).await;
    let mut buf = Vec::new();
    let all = [get("/early"), get("/chunked"), get("/nocontent"), get("/")].concat();
    s.write_all(all.as_bytes()).await.unwrap();
    let early = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(early.status, 103);
    assert_eq!(early.header("link"), Some("</a.css>"));
    let statuses_bodies = [
        (200, "ok"),
        (200, "hello world"),
        (204, ""),
        (200, "conn=1"),
    ];
    for (status, body) in statuses_bodies {
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!((a.status, a.body.as_str()), (status, body), "{a:?}");
    }
}

#[tokio::test]
async fn an_answer_until_close_is_passed_on_and_closes_the_client_connection() {
    let (_m, edge) = setup().await;
    let mut s = client(&edge).await;
    let mut buf = Vec::new();
    s.write_all(get("/close").as_bytes()).await.unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!((a.status, a.body.as_str()), (200, "until the end"), "{a:?}");
    assert_eq!(a.header("connection"), Some("close"));
}

#[tokio::test]
async fn head_requests_and_large_answers_keep_their_framing() {
    let (_m, edge) = setup().await;
    let mut s = client(&edge).await;
    let mut buf = Vec::new();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: alpha.aloft.test\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, true).await;
    assert_eq!((a.status, a.header("content-length")), (200, Some("6")));
    s.write_all(get("/big").as_bytes()).await.unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(a.body.len(), 200_000);
    assert!(a.body.bytes().all(|b| b == b'x'));
    s.write_all(get("/").as_bytes()).await.unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!((a.status, a.body.as_str()), (200, "conn=1"), "{a:?}");
}

#[tokio::test]
async fn a_machine_closing_its_connections_costs_no_error() {
    let (m, edge) = setup().await;
    let mut s = client(&edge).await;
    let mut buf = Vec::new();
    for i in 1..=3 {
        s.write_all(get("/bye").as_bytes()).await.unwrap();
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!((a.status, a.body), (200, format!("conn={i}")));
        // The close reaches the edge before the next request, or as it is sent.
        if i == 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(m.conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn malformed_and_cut_short_answers_are_bad_gateways() {
    let (_m, edge) = setup().await;
    for path in ["/garbage", "/cut"] {
        let mut s = client(&edge).await;
        let mut buf = Vec::new();
        s.write_all(get(path).as_bytes()).await.unwrap();
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(a.status, 502, "{path}: {a:?}");
        assert!(a.body.contains("app alpha"), "{a:?}");
        // The client connection is still good.
        s.write_all(get("/").as_bytes()).await.unwrap();
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
}

#[tokio::test]
async fn the_machine_gets_the_clients_head_rewritten() {
    let (_m, edge) = setup().await;
    let mut s = client(&edge).await;
    let mut buf = Vec::new();
    s.write_all(
        b"POST /head?q=1 HTTP/1.1\r\nHost: alpha.aloft.test\r\nConnection: keep-alive\r\n\
          Keep-Alive: timeout=5\r\nFly-Client-IP: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.1\r\n\
          Via: 1.1 cdn\r\nX-Custom: a\r\nX-Custom: b\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await
    .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(a.status, 200, "{a:?}");
    let got = a.body;
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "POST /head?q=1 HTTP/1.1");
    let has = |l: &str| lines.iter().any(|x| x.eq_ignore_ascii_case(l));
    for l in [
        "host: alpha.aloft.test",
        "fly-client-ip: 127.0.0.1",
        "x-forwarded-for: 10.0.0.1, 127.0.0.1",
        "via: 1.1 cdn, 1.1 aloft",
        "x-custom: a",
        "x-custom: b",
        "content-length: 4",
        "fly-region: ams",
        "x-forwarded-proto: http",
        "fly-forwarded-port: 80",
    ] {
        assert!(has(l), "missing {l:?} in {got}");
    }
    for name in ["connection:", "keep-alive:"] {
        assert!(
            !lines
                .iter()
                .any(|x| x.to_ascii_lowercase().starts_with(name)),
            "{name} passed on: {got}"
        );
    }
    assert!(!got.contains("6.6.6.6"), "{got}");
}

#[tokio::test]
async fn requests_left_to_hyper_are_served_too() {
    let (_m, edge) = setup().await;
    // A first request through the relay, then one it hands over, then more on the same
    // connection, now hyper's.
    let mut s = client(&edge).await;
    let mut buf = Vec::new();
    s.write_all(get("/").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf, false).await.status, 200);
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: alpha.aloft.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(a.status, 200, "{a:?}");
    s.write_all(get("/chunked").as_bytes()).await.unwrap();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!((a.status, a.body.as_str()), (200, "hello world"), "{a:?}");
    // HTTP/1.0, `Expect` and an unknown app.
    for req in [
        "GET / HTTP/1.0\r\nHost: alpha.aloft.test\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: alpha.aloft.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        "GET / HTTP/1.1\r\nHost: nope.aloft.test\r\nConnection: close\r\n\r\n",
    ] {
        let mut s = client(&edge).await;
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got))
            .await
            .expect("answered and closed")
            .unwrap();
        let got = String::from_utf8_lossy(&got);
        let want = if req.contains("nope") { "404" } else { "200" };
        assert!(got.contains(&format!(" {want} ")), "{req:?}: {got}");
    }
}

#[tokio::test]
async fn oversized_and_invalid_heads_are_refused() {
    let (_m, edge) = setup().await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: alpha.aloft.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let many: String = (0..150).map(|i| format!("x-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: alpha.aloft.test\r\n{many}\r\n");
    for (req, status) in [
        (big.as_str(), 431),
        (many.as_str(), 431),
        ("GET / HTTP/1.1\r\nHost alpha\r\n\r\n", 400),
        ("\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
    ] {
        let mut s = client(&edge).await;
        let _ = s.write_all(req.as_bytes()).await;
        let mut buf = Vec::new();
        let a = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(a.status, status, "{:?}", &req[..20]);
    }
}

#[tokio::test]
async fn connection_workers_serve_and_drain() {
    let port = shared_port().await;
    let m = RawMachine::start((ip(62), port).into()).await;
    let edge = edge_with(
        vec![app("alpha", port, vec![machine("r1", "ams", "h1", 62)])],
        |o| o.workers = 2,
    )
    .await;
    // Clients on both workers, several requests each; each worker keeps its own machine
    // connections, so at most one per worker.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut s = client(&edge).await;
        let mut buf = Vec::new();
        for _ in 0..3 {
            s.write_all(get("/chunked").as_bytes()).await.unwrap();
            let a = read_answer(&mut s, &mut buf, false).await;
            assert_eq!((a.status, a.body.as_str()), (200, "hello world"), "{a:?}");
        }
        clients.push(s);
    }
    assert!(
        (1..=2).contains(&m.conns.load(Ordering::SeqCst)),
        "{} machine connections",
        m.conns.load(Ordering::SeqCst)
    );
    assert!(edge
        .metrics_text()
        .contains("aloft_edge_open_connections 4"));
    // A drain closes idle keep-alive connections and returns.
    tokio::time::timeout(Duration::from_secs(20), edge.shutdown())
        .await
        .expect("the edge drains");
    for mut s in clients {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest));
        assert!(read.await.is_ok(), "the connection is closed");
    }
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_served() {
    let (_m, edge) = setup().await;
    let mut s = client(&edge).await;
    s.set_nodelay(true).unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: alpha.aloft.test\r\nX-A: 1\r\n\r\n";
    for (i, b) in req.iter().enumerate() {
        s.write_all(&[*b]).await.unwrap();
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut buf = Vec::new();
    let a = read_answer(&mut s, &mut buf, false).await;
    assert_eq!((a.status, a.body.as_str()), (200, "conn=1"), "{a:?}");
}
