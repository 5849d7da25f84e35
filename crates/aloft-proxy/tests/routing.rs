//! Routing, balancing and headers through a real edge to real backend servers.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aloft_proxy::RouteTable;
use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn routes_by_host_and_answers_404_for_unknown_hosts() {
    let port = shared_port().await;
    let a = Backend::start((ip(2), port).into(), "a1").await;
    let b = Backend::start((ip(3), port).into(), "b1").await;
    let mut app_b = app("bravo", port, vec![machine("b1", "ams", "h1", 3)]);
    app_b.hostnames = vec!["www.bravo.example".into()];
    let edge = edge_with(
        vec![
            app("alpha", port, vec![machine("a1", "ams", "h1", 2)]),
            app_b,
        ],
        |_| {},
    )
    .await;
    let addr = edge.http_addr();

    let r = get(addr, "alpha.aloft.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "machine=a1"));
    assert_eq!(r.header("server"), "aloft");
    assert_eq!(r.header("fly-request-id").len(), 32);
    assert_eq!(
        get(addr, "BRAVO.aloft.test:8080", "/").await.body,
        "machine=b1"
    );
    assert_eq!(get(addr, "www.bravo.example", "/").await.body, "machine=b1");

    let r = get(addr, "charlie.aloft.test", "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body
            .contains("no app is configured for host charlie.aloft.test"),
        "{}",
        r.body
    );
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn adds_forwarding_headers() {
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "a1").await;
    let edge = edge_with(
        vec![app("alpha", port, vec![machine("a1", "ams", "h1", 2)])],
        |_| {},
    )
    .await;
    let r = send(
        edge.http_addr(),
        "GET",
        "alpha.aloft.test",
        "/headers",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("fly-client-ip", "6.6.6.6"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
        ],
        vec![],
    )
    .await;
    let seen: HashMap<String, String> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(seen["fly-client-ip"], "127.0.0.1");
    assert_eq!(seen["aloft-client-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-port"], "80");
    assert_eq!(seen["fly-forwarded-port"], "80");
    assert_eq!(seen["x-forwarded-ssl"], "off");
    assert_eq!(seen["fly-region"], "ams");
    assert_eq!(seen["via"], "1.1 aloft");
    assert_eq!(seen["host"], "alpha.aloft.test");
    assert_eq!(seen["fly-request-id"], r.header("fly-request-id"));
    assert!(
        !seen.contains_key("x-secret"),
        "headers named in Connection are hop-by-hop"
    );
}

#[tokio::test]
async fn force_https_redirects_with_301() {
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "a1").await;
    let mut alpha = app("alpha", port, vec![machine("a1", "ams", "h1", 2)]);
    alpha.services[0].ports[0].force_https = true;
    let edge = edge_with(vec![alpha], |o| o.https_port = 8443).await;
    let r = get(edge.http_addr(), "alpha.aloft.test:80", "/cart?item=3").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.header("location"),
        "https://alpha.aloft.test:8443/cart?item=3"
    );
}

#[tokio::test]
async fn skips_unhealthy_cordoned_and_stopped_machines() {
    let port = shared_port().await;
    let bad = Backend::start((ip(2), port).into(), "sick").await;
    let cordoned = Backend::start((ip(3), port).into(), "cordoned").await;
    let _good = Backend::start((ip(4), port).into(), "good").await;
    let mut ms = vec![
        machine("sick", "ams", "h1", 2),
        machine("cordoned", "ams", "h1", 3),
        machine("good", "fra", "h5", 4),
    ];
    ms[0].healthy = false;
    ms[1].cordoned = true;
    let edge = edge_with(vec![app("alpha", port, ms)], |_| {}).await;
    for _ in 0..10 {
        assert_eq!(
            get(edge.http_addr(), "alpha.aloft.test", "/").await.body,
            "machine=good"
        );
    }
    assert_eq!(bad.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(cordoned.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn retries_a_failed_connect_on_another_machine() {
    let port = shared_port().await;
    // "dead" is on this host (the nearest) but nothing listens on its address.
    let _live = Backend::start((ip(3), port).into(), "live").await;
    let ms = vec![
        machine("dead", "ams", "h1", 9),
        machine("live", "syd", "h7", 3),
    ];
    let edge = edge_with(vec![app("alpha", port, ms)], |_| {}).await;
    let r = send(
        edge.http_addr(),
        "POST",
        "alpha.aloft.test",
        "/echo",
        &[],
        b"order 66".to_vec(),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str(), r.header("x-machine")),
        (StatusCode::OK, "order 66", "live")
    );
    assert_eq!(
        get(edge.http_addr(), "alpha.aloft.test", "/").await.body,
        "machine=live"
    );
}

#[tokio::test]
async fn only_dead_machines_give_502() {
    let port = shared_port().await;
    let edge = edge_with(
        vec![app("alpha", port, vec![machine("dead", "ams", "h1", 9)])],
        |_| {},
    )
    .await;
    let r = get(edge.http_addr(), "alpha.aloft.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.body.contains("app alpha"), "{}", r.body);
}

#[tokio::test]
async fn prefers_same_host_then_region_then_lowest_rtt() {
    let port = shared_port().await;
    let _fra = Backend::start((ip(2), port).into(), "fra1").await;
    let _syd = Backend::start((ip(3), port).into(), "syd1").await;
    let _ams = Backend::start((ip(4), port).into(), "ams-other-host").await;
    let _host = Backend::start((ip(5), port).into(), "ams-this-host").await;
    let remote = vec![
        machine("fra1", "fra", "h2", 2),
        machine("syd1", "syd", "h3", 3),
    ];
    let edge = edge_with(vec![app("alpha", port, remote.clone())], |_| {}).await;
    let addr = edge.http_addr();
    edge.set_rtts(HashMap::from([
        ("fra".into(), Duration::from_millis(12)),
        ("syd".into(), Duration::from_millis(280)),
    ]));
    for _ in 0..5 {
        assert_eq!(
            get(addr, "alpha.aloft.test", "/").await.body,
            "machine=fra1"
        );
    }
    edge.set_rtts(HashMap::from([
        ("fra".into(), Duration::from_millis(400)),
        ("syd".into(), Duration::from_millis(280)),
    ]));
    assert_eq!(
        get(addr, "alpha.aloft.test", "/").await.body,
        "machine=syd1"
    );

    let mut ms = remote.clone();
    ms.push(machine("ams-other-host", "ams", "h9", 4));
    edge.update_routes(RouteTable {
        revision: 2,
        apps: vec![app("alpha", port, ms.clone())],
    })
    .unwrap();
    assert_eq!(
        get(addr, "alpha.aloft.test", "/").await.body,
        "machine=ams-other-host"
    );
    ms.push(machine("ams-this-host", "ams", "h1", 5));
    edge.update_routes(RouteTable {
        revision: 3,
        apps: vec![app("alpha", port, ms)],
    })
    .unwrap();
    for _ in 0..5 {
        assert_eq!(
            get(addr, "alpha.aloft.test", "/").await.body,
            "machine=ams-this-host"
        );
    }
}

#[tokio::test]
async fn request_headers_force_and_prefer_machines() {
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "near").await;
    let _b = Backend::start((ip(3), port).into(), "fra1").await;
    let _c = Backend::start((ip(4), port).into(), "syd1").await;
    let ms = vec![
        machine("near", "ams", "h1", 2),
        machine("fra1", "fra", "h2", 3),
        machine("syd1", "syd", "h3", 4),
    ];
    let edge = edge_with(vec![app("alpha", port, ms)], |_| {}).await;
    let addr = edge.http_addr();
    let with = |h: &'static str, v: &'static str| async move {
        send(addr, "GET", "alpha.aloft.test", "/", &[(h, v)], vec![]).await
    };
    assert_eq!(
        with("fly-force-instance-id", "syd1").await.body,
        "machine=syd1"
    );
    assert_eq!(
        with("aloft-force-instance-id", "fra1").await.body,
        "machine=fra1"
    );
    assert_eq!(
        with("fly-prefer-instance-id", "fra1").await.body,
        "machine=fra1"
    );
    assert_eq!(
        with("fly-prefer-instance-id", "nope").await.body,
        "machine=near"
    );
    assert_eq!(with("fly-prefer-region", "syd").await.body, "machine=syd1");
    assert_eq!(
        with("fly-prefer-region", "nrt,fra").await.body,
        "machine=fra1"
    );
    assert_eq!(with("fly-force-region", "fra").await.body, "machine=fra1");
    assert_eq!(with("aloft-force-region", "syd").await.body, "machine=syd1");
    assert_eq!(
        with("fly-force-region", "nrt").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = with("fly-force-instance-id", "missing").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn soft_limit_spills_over_and_hard_limit_queues_then_503s() {
    let port = shared_port().await;
    let near = Backend::start((ip(2), port).into(), "near").await;
    let far = Backend::start((ip(3), port).into(), "far").await;
    let mut alpha = app(
        "alpha",
        port,
        vec![
            machine("near", "ams", "h1", 2),
            machine("far", "fra", "h2", 3),
        ],
    );
    alpha.services[0].concurrency.soft_limit = 1;
    alpha.services[0].concurrency.hard_limit = Some(2);
    let edge = edge_with(vec![alpha], |o| o.queue_timeout = Duration::from_secs(1)).await;
    let addr = edge.http_addr();
    let hold = || tokio::spawn(async move { get(addr, "alpha.aloft.test", "/hold").await });

    let first = hold();
    near.arrived().await;
    // near is at its soft limit: the farther machine under its soft limit wins.
    let second = hold();
    far.arrived().await;
    // both at soft: nearness decides again.
    let third = hold();
    near.arrived().await;
    let fourth = hold();
    far.arrived().await;
    // both at hard: the request waits out the queue bound, then 503.
    let r = get(addr, "alpha.aloft.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("hard limit"), "{}", r.body);

    // a queued request takes the slot a finished one gives back.
    let queued = tokio::spawn(async move { get(addr, "alpha.aloft.test", "/").await });
    near.release.add_permits(1);
    let q = queued.await.unwrap();
    assert_eq!(
        (q.status, q.body.as_str()),
        (StatusCode::OK, "machine=near")
    );
    near.release.add_permits(1);
    far.release.add_permits(2);
    for h in [first, second, third, fourth] {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
}

#[tokio::test]
async fn large_bodies_stream_through() {
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "a1").await;
    let edge = edge_with(
        vec![app("alpha", port, vec![machine("a1", "ams", "h1", 2)])],
        |o| o.max_buffered_body = 1024,
    )
    .await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = send(
        edge.http_addr(),
        "POST",
        "alpha.aloft.test",
        "/echo",
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), String::from_utf8_lossy(&body).len());
}

#[tokio::test]
async fn h2c_to_machines_when_the_service_asks() {
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "a1").await;
    let mut alpha = app("alpha", port, vec![machine("a1", "ams", "h1", 2)]);
    let edge = edge_with(vec![alpha.clone()], |_| {}).await;
    assert_eq!(
        get(edge.http_addr(), "alpha.aloft.test", "/")
            .await
            .header("x-version"),
        "HTTP/1.1"
    );
    alpha.services[0].h2_backend = true;
    edge.update_routes(RouteTable {
        revision: 2,
        apps: vec![alpha],
    })
    .unwrap();
    let r = get(edge.http_addr(), "alpha.aloft.test", "/").await;
    assert_eq!(
        (r.body.as_str(), r.header("x-version")),
        ("machine=a1", "HTTP/2.0")
    );
}

async fn upgrade_and_echo(addr: std::net::SocketAddr, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: alpha.aloft.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "edge closed before the 101"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for msg in [&b"hello through the edge"[..], b"and again"] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
    head
}

#[tokio::test]
async fn upgrades_pass_through_as_a_tunnel() {
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "a1").await;
    let _b = Backend::start((ip(3), port).into(), "b1").await;
    let ms = vec![machine("a1", "ams", "h1", 2), machine("b1", "fra", "h2", 3)];
    let edge = edge_with(vec![app("alpha", port, ms)], |_| {}).await;
    let head = upgrade_and_echo(edge.http_addr(), "").await;
    assert!(head.contains("x-machine: a1"), "{head}");
    // An upgrade request can be replayed to another machine before it upgrades.
    let head = upgrade_and_echo(edge.http_addr(), "x-test-replay: instance=b1\r\n").await;
    assert!(head.contains("x-machine: b1"), "{head}");
}

#[tokio::test]
async fn metrics_count_requests_per_machine_and_status() {
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "a1").await;
    let edge = edge_with(
        vec![app("alpha", port, vec![machine("a1", "ams", "h1", 2)])],
        |o| o.admin_listen = Some("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    for _ in 0..3 {
        get(edge.http_addr(), "alpha.aloft.test", "/").await;
    }
    get(edge.http_addr(), "nobody.aloft.test", "/").await;
    let admin = edge.admin_addr().unwrap();
    let text = get(admin, "localhost", "/metrics").await.body;
    assert!(
        text.contains("aloft_edge_requests_total{app=\"alpha\",machine=\"a1\",status=\"2xx\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("aloft_edge_requests_total{app=\"\",machine=\"\",status=\"4xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("aloft_edge_request_duration_seconds_count{app=\"alpha\"} 3"),
        "{text}"
    );
    assert!(text.contains("aloft_edge_open_connections "), "{text}");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let port = shared_port().await;
    let a = Backend::start((ip(2), port).into(), "a1").await;
    let edge = edge_with(
        vec![app("alpha", port, vec![machine("a1", "ams", "h1", 2)])],
        |_| {},
    )
    .await;
    let addr = edge.http_addr();
    let held = tokio::spawn(async move { get(addr, "alpha.aloft.test", "/hold").await });
    a.arrived().await;
    let e2 = edge.clone();
    let draining = tokio::spawn(async move { e2.shutdown().await });
    let mut refused = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !refused && tokio::time::Instant::now() < deadline {
        refused = tokio::net::TcpStream::connect(addr).await.is_err();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the edge should stop accepting connections");
    assert!(
        !draining.is_finished(),
        "shutdown waits for the in-flight request"
    );
    a.release.add_permits(1);
    let r = held.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "machine=a1"));
    draining.await.unwrap();
}

async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = s.read_to_end(&mut got);
    // A reset instead of a clean close is a close too.
    let _ = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the edge closes the connection");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn idle_client_connections_are_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "a1").await;
    let edge = edge_with(
        vec![app("alpha", port, vec![machine("a1", "ams", "h1", 2)])],
        |o| o.header_read_timeout = Duration::from_millis(100),
    )
    .await;
    // Silent from the start.
    let mut s = tokio::net::TcpStream::connect(edge.http_addr())
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut s).await, "");
    // Idle after one request on a keep-alive connection.
    let mut s = tokio::net::TcpStream::connect(edge.http_addr())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.aloft.test\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.contains("machine=a1"),
        "{got}"
    );
    // Stalled in the middle of the headers.
    let mut s = tokio::net::TcpStream::connect(edge.http_addr())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: alpha.aloft.test\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got))
        .await
        .expect("the edge answers and closes")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn chunked_bodies_are_buffered_for_retry_up_to_the_limit_then_streamed() {
    let port = shared_port().await;
    let _live = Backend::start((ip(3), port).into(), "live").await;
    // "dead" is nearest but refuses connections, so the request has to be retried.
    let ms = vec![
        machine("dead", "ams", "h1", 9),
        machine("live", "syd", "h7", 3),
    ];
    let edge = edge_with(vec![app("alpha", port, ms)], |o| o.max_buffered_body = 1024).await;
    let head = b"POST /echo HTTP/1.1\r\nHost: alpha.aloft.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let mut small = head.to_vec();
    small.extend_from_slice(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let got = raw_exchange(edge.http_addr(), &small).await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("hello world"),
        "{got}"
    );

    // Over the limit: streamed with what was already read in front, to the live machine only.
    let ms = vec![machine("live", "syd", "h7", 3)];
    edge.update_routes(RouteTable {
        revision: 2,
        apps: vec![app("alpha", port, ms)],
    })
    .unwrap();
    let mut big = head.to_vec();
    let mut expected = String::new();
    for i in 0..3u8 {
        let chunk = vec![b'a' + i; 1000];
        big.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        big.extend_from_slice(&chunk);
        big.extend_from_slice(b"\r\n");
        expected.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    big.extend_from_slice(b"0\r\n\r\n");
    let got = raw_exchange(edge.http_addr(), &big).await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with(&expected),
        "{}",
        &got[..200.min(got.len())]
    );
}
