//! Raw TCP services through the edge: passthrough with balancing, the PROXY protocol (v1 and
//! v2) as the machine receives it, TLS termination in front of raw TCP, autostart, retry of a
//! refused connect, and listeners that follow the route table.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aloft_proxy::proxy_proto::{self, ProxyHeader, ProxyProtoError};
use aloft_proxy::{
    AppRoutes, Ca, Edge, MachineState, PortRoute, ProxyProtoVersion, RouteTable, Waker,
};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A machine's TCP app: reads an optional PROXY header, then a line, answers
/// `<name> <what the header said> <line>` and echoes everything after.
struct EchoMachine {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoMachine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoMachine {
    async fn start(addr: SocketAddr, name: &str) -> EchoMachine {
        let listener = TcpListener::bind(addr).await.expect("bind echo machine");
        let name = name.to_string();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream, name.clone()));
            }
        });
        EchoMachine { task }
    }
}

async fn echo(mut stream: TcpStream, name: String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let (said, used) = loop {
        match proxy_proto::parse(&buf) {
            Ok((
                ProxyHeader::Tcp {
                    source,
                    destination,
                },
                n,
            )) => break (format!("proxy:{source}>{destination}"), n),
            Ok((ProxyHeader::Local, n)) => break ("proxy:local".to_string(), n),
            Err(ProxyProtoError::Incomplete)
                if buf.len() < 6 || buf.starts_with(b"PROXY ") || buf[0] == b'\r' => {}
            Err(ProxyProtoError::Incomplete | ProxyProtoError::NotProxy) => {
                break ("plain".to_string(), 0);
            }
            Err(ProxyProtoError::Malformed(why)) => break (format!("malformed:{why}"), 0),
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.first().is_some_and(|b| *b != b'P' && *b != b'\r') {
            break ("plain".to_string(), 0);
        }
    };
    let mut rest = buf.split_off(used);
    while !rest.contains(&b'\n') {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
        }
    }
    let nl = rest.iter().position(|b| *b == b'\n').unwrap_or(0);
    let line = String::from_utf8_lossy(&rest[..nl]).to_string();
    let reply = format!("{name} {said} {line}\n");
    if stream.write_all(reply.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.write_all(&rest[nl + 1..]).await;
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

/// A port free on 127.0.0.1 for the edge to bind as a public service port.
/// A port for the edge to listen on, chosen below the kernel's ephemeral range (32768 and
/// up): a port the kernel handed out and this test released could be handed to another
/// process's connection before the edge binds it.
async fn free_public_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..32_000u16);
        if TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return port;
        }
    }
}

fn tcp_app(
    name: &str,
    internal: u16,
    public: u16,
    handlers: &[&str],
    machines: Vec<aloft_proxy::MachineRoute>,
) -> AppRoutes {
    let mut a = app(name, internal, machines);
    a.services[0].concurrency.kind = aloft_proxy::ConcurrencyKind::Connections;
    a.services[0].ports = vec![PortRoute {
        port: public,
        handlers: handlers.iter().map(|h| h.to_string()).collect(),
        force_https: false,
        proxy_proto: None,
    }];
    a
}

async fn tcp_edge(apps: Vec<AppRoutes>, f: impl FnOnce(&mut aloft_proxy::EdgeOptions)) -> Edge {
    edge_with(apps, |o| {
        o.tcp_listen = Some("127.0.0.1".parse().unwrap());
        f(o);
    })
    .await
}

/// Sends `line` on a stream and reads the machine's first answer line, then checks the echo.
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(stream: S, line: &str) -> String {
    let mut s = BufReader::new(stream);
    s.get_mut()
        .write_all(format!("{line}\nafter\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_line(&mut answer))
        .await
        .expect("the machine answers")
        .unwrap();
    let mut echoed = String::new();
    s.read_line(&mut echoed).await.unwrap();
    assert_eq!(echoed, "after\n", "bytes after the first line are echoed");
    answer.trim_end().to_string()
}

async fn connect(edge: &Edge, public: u16) -> TcpStream {
    let addr = edge.port_addrs()[&public];
    TcpStream::connect(addr)
        .await
        .expect("connect to the edge's TCP port")
}

#[tokio::test]
async fn raw_tcp_passes_through_and_balances_over_machines() {
    let internal = shared_port().await;
    let public = free_public_port().await;
    let _a = EchoMachine::start((ip(21), internal).into(), "m-a").await;
    let _b = EchoMachine::start((ip(22), internal).into(), "m-b").await;
    let machines = vec![
        machine("m-a", "ams", "h1", 21),
        machine("m-b", "ams", "h1", 22),
    ];
    let edge = tcp_edge(
        vec![tcp_app("echo", internal, public, &[], machines)],
        |_| {},
    )
    .await;
    assert_eq!(edge.port_addrs()[&public].port(), public);

    // Held connections count as load, so the second goes to the other machine.
    let first = connect(&edge, public).await;
    let mut first = BufReader::new(first);
    first.get_mut().write_all(b"one\n").await.unwrap();
    let mut a1 = String::new();
    first.read_line(&mut a1).await.unwrap();
    let a2 = talk(connect(&edge, public).await, "two").await;
    let (n1, n2) = (a1.split(' ').next().unwrap(), a2.split(' ').next().unwrap());
    assert_ne!(n1, n2, "{a1} / {a2}");
    assert_eq!(a1.trim_end(), format!("{n1} plain one"));
    assert!(edge
        .metrics_text()
        .contains("aloft_edge_tcp_connections_total{app=\"echo\"} 2"));
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_tell_the_machine_the_client_address() {
    let internal = shared_port().await;
    let (p1, p2) = (free_public_port().await, free_public_port().await);
    let _m = EchoMachine::start((ip(23), internal).into(), "m").await;
    let mut a = tcp_app(
        "pp",
        internal,
        p1,
        &["proxy_proto"],
        vec![machine("m", "ams", "h1", 23)],
    );
    a.services[0].ports[0].proxy_proto = Some(ProxyProtoVersion::V1);
    let mut v2 = a.services[0].ports[0].clone();
    v2.port = p2;
    v2.proxy_proto = Some(ProxyProtoVersion::V2);
    a.services[0].ports.push(v2);
    let edge = tcp_edge(vec![a], |_| {}).await;

    for public in [p1, p2] {
        let stream = connect(&edge, public).await;
        let me = stream.local_addr().unwrap();
        let answer = talk(stream, "hi").await;
        assert_eq!(
            answer,
            format!("m proxy:{me}>127.0.0.1:{public} hi"),
            "port {public}"
        );
    }
}

#[tokio::test]
async fn tls_terminates_before_raw_tcp_and_routes_by_sni() {
    let internal = shared_port().await;
    let public = free_public_port().await;
    let _s = EchoMachine::start((ip(24), internal).into(), "shop-m").await;
    let _b = EchoMachine::start((ip(25), internal).into(), "blog-m").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::load_or_create(dir.path()).unwrap());
    let apps = vec![
        tcp_app(
            "shop",
            internal,
            public,
            &["tls"],
            vec![machine("shop-m", "ams", "h1", 24)],
        ),
        tcp_app(
            "blog",
            internal,
            public,
            &["tls"],
            vec![machine("blog-m", "ams", "h1", 25)],
        ),
    ];
    let edge = tcp_edge(apps, |o| o.ca = Some(ca.clone())).await;
    let addr = edge.port_addrs()[&public];

    let connector = tls_connector(ca.root_pem());
    for (app, machine) in [("shop", "shop-m"), ("blog", "blog-m")] {
        let name = format!("{app}.{DOMAIN}");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(name.try_into().unwrap(), tcp)
            .await
            .expect("the handshake verifies against the CA");
        assert_eq!(talk(tls, "x").await, format!("{machine} plain x"));
    }
    // A name no app answers to gets no certificate: the handshake fails cleanly.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = connector
        .connect("nobody.aloft.test".try_into().unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
}

pub fn tls_connector(root_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn a_stopped_machine_is_woken_for_a_connection_and_refused_connects_go_elsewhere() {
    let internal = shared_port().await;
    let public = free_public_port().await;
    let mut sleeper = machine("sleeper", "ams", "h1", 26);
    sleeper.state = MachineState::Stopped;
    sleeper.healthy = false;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waker = Arc::new(RecordingWaker::default());
    *waker.start_tx.lock().unwrap() = Some(tx);
    let w: Arc<dyn Waker> = waker.clone();
    let edge = tcp_edge(
        vec![tcp_app("lazy", internal, public, &[], vec![sleeper])],
        |o| o.waker = Some(w),
    )
    .await;
    let stream = connect(&edge, public).await;
    let pending = tokio::spawn(talk(stream, "wake"));
    let woken = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap();
    assert_eq!(woken.as_deref(), Some("sleeper"));
    let _m = EchoMachine::start((ip(26), internal).into(), "sleeper").await;
    assert_eq!(pending.await.unwrap(), "sleeper plain wake");

    // A machine listed as started that refuses connections: the edge goes to the next one.
    let dead = machine("dead", "ams", "h1", 27);
    let _ok = EchoMachine::start((ip(28), internal).into(), "alive").await;
    let alive = machine("alive", "ams", "h1", 28);
    let public2 = free_public_port().await;
    assert!(edge
        .update_routes(RouteTable {
            revision: 2,
            apps: vec![tcp_app("flaky", internal, public2, &[], vec![dead, alive])],
        })
        .unwrap());
    for i in 0..6 {
        let answer = talk(connect(&edge, public2).await, &format!("n{i}")).await;
        assert_eq!(answer, format!("alive plain n{i}"));
    }
    // The first app's port left the table: its listener is closed.
    assert!(!edge.port_addrs().contains_key(&public));
    eventually("the old port to close", || {
        std::net::TcpStream::connect(("127.0.0.1", public)).is_err()
    })
    .await;
}

#[tokio::test]
async fn hard_limit_on_connections_queues_the_next_connection() {
    let internal = shared_port().await;
    let public = free_public_port().await;
    let _m = EchoMachine::start((ip(29), internal).into(), "solo").await;
    let mut a = tcp_app(
        "one",
        internal,
        public,
        &[],
        vec![machine("solo", "ams", "h1", 29)],
    );
    a.services[0].concurrency.soft_limit = 1;
    a.services[0].concurrency.hard_limit = Some(1);
    let edge = tcp_edge(vec![a], |_| {}).await;

    let mut held = BufReader::new(connect(&edge, public).await);
    held.get_mut().write_all(b"first\n").await.unwrap();
    let mut line = String::new();
    held.read_line(&mut line).await.unwrap();
    assert_eq!(line, "solo plain first\n");
    let second = tokio::spawn({
        let s = connect(&edge, public).await;
        talk(s, "second")
    });
    // The second connection is not forwarded while the first holds the only slot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished());
    drop(held);
    assert_eq!(second.await.unwrap(), "solo plain second");
}

#[tokio::test]
async fn a_dedicated_address_gives_its_app_every_connection_to_it() {
    let internal = shared_port().await;
    let public = free_public_port().await;
    let web = free_public_port().await;
    let _a = EchoMachine::start((ip(83), internal).into(), "m-alpha").await;
    let _b = EchoMachine::start((ip(84), internal).into(), "m-beta").await;
    let _g = Backend::start((ip(85), internal).into(), "g1").await;
    let mut alpha = tcp_app(
        "alpha",
        internal,
        public,
        &[],
        vec![machine("m-alpha", "ams", "h1", 83)],
    );
    alpha.addresses = vec![ip(81)];
    let mut beta = tcp_app(
        "beta",
        internal,
        public,
        &[],
        vec![machine("m-beta", "ams", "h1", 84)],
    );
    beta.addresses = vec![ip(82)];
    let mut gamma = tcp_app(
        "gamma",
        internal,
        web,
        &["http"],
        vec![machine("g1", "ams", "h1", 85)],
    );
    gamma.addresses = vec![ip(86)];
    let _edge = edge_with(vec![alpha, beta, gamma], |o| {
        o.tcp_listen = Some("0.0.0.0".parse().unwrap());
    })
    .await;
    // Both apps list the raw port; each one's address reaches its own machine.
    for (n, want) in [(81, "m-alpha plain hi"), (82, "m-beta plain hi")] {
        let s = TcpStream::connect(SocketAddr::new(ip(n), public))
            .await
            .unwrap();
        assert_eq!(talk(s, "hi").await, want);
    }
    // On an address that is no app's, two apps list the port: refused.
    let mut s = TcpStream::connect(SocketAddr::new(ip(1), public))
        .await
        .unwrap();
    let _ = s.write_all(b"hi\n").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got))
        .await
        .expect("closed");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // HTTP on the dedicated address: a Host no app has, and no Host at all, reach the app.
    for req in [
        "GET / HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(SocketAddr::new(ip(86), web))
            .await
            .unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut got))
            .await
            .expect("answered")
            .unwrap();
        assert!(
            got.starts_with("HTTP/1.") && got.contains(" 200 OK") && got.ends_with("machine=g1"),
            "{req:?}: {got}"
        );
    }
    // The same Host on the edge's shared address is nobody's.
    let mut s = TcpStream::connect(SocketAddr::new(ip(1), web))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
}
