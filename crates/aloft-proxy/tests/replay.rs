//! `fly-replay` answers through a real edge to real backend servers.

mod common;

use common::*;
use hyper::StatusCode;

async fn three_machines() -> (aloft_proxy::Edge, Vec<Backend>) {
    let port = shared_port().await;
    let backends = vec![
        Backend::start((ip(2), port).into(), "near").await,
        Backend::start((ip(3), port).into(), "fra1").await,
        Backend::start((ip(4), port).into(), "syd1").await,
    ];
    let ms = vec![
        machine("near", "ams", "h1", 2),
        machine("fra1", "fra", "h2", 3),
        machine("syd1", "syd", "h3", 4),
    ];
    let edge = edge_with(vec![app("alpha", port, ms)], |_| {}).await;
    (edge, backends)
}

async fn replay(edge: &aloft_proxy::Edge, header: &str, ask: &str) -> Reply {
    send(
        edge.http_addr(),
        "POST",
        "alpha.aloft.test",
        "/replay",
        &[(header, ask)],
        b"the body".to_vec(),
    )
    .await
}

#[tokio::test]
async fn replays_to_an_instance_with_the_source_and_body() {
    let (edge, backends) = three_machines().await;
    let r = replay(&edge, "x-test-replay", "instance=syd1;state=cart-42").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body
            .starts_with("machine=syd1 src=instance=near;region=ams;t="),
        "{}",
        r.body
    );
    assert!(
        r.body.ends_with(";state=cart-42 body=the body"),
        "{}",
        r.body
    );
    assert_eq!(
        backends[0].hits.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(edge
        .metrics_text()
        .contains("aloft_edge_replays_total{app=\"alpha\"} 1"));
}

#[tokio::test]
async fn replays_to_a_region_or_elsewhere() {
    let (edge, _backends) = three_machines().await;
    let r = replay(&edge, "x-test-replay", "region=fra").await;
    assert!(
        r.body
            .starts_with("machine=fra1 src=instance=near;region=ams"),
        "{}",
        r.body
    );
    let r = replay(&edge, "x-test-replay", "region=nrt,syd").await;
    assert!(r.body.starts_with("machine=syd1 "), "{}", r.body);
    let r = replay(&edge, "x-test-replay", "elsewhere=true").await;
    assert!(
        r.body.contains("src=instance=near;") && !r.body.starts_with("machine=near"),
        "{}",
        r.body
    );
    let r = replay(&edge, "x-test-replay", "prefer_instance=fra1").await;
    assert!(r.body.starts_with("machine=fra1 "), "{}", r.body);
}

#[tokio::test]
async fn replay_to_a_missing_instance_is_503() {
    let (edge, _backends) = three_machines().await;
    let r = replay(&edge, "x-test-replay", "instance=ghost").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn aloft_replay_is_honoured_too() {
    let (edge, _backends) = three_machines().await;
    let r = replay(&edge, "x-test-replay", "instance=fra1;state=aloft").await;
    assert!(
        r.body
            .starts_with("machine=fra1 src=instance=near;region=ams;"),
        "{}",
        r.body
    );
    assert!(r.body.contains(";state=aloft body=the body"), "{}", r.body);
}

#[tokio::test]
async fn replays_to_another_app_of_the_same_organization_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = shared_port().await;
    let _backends = [
        Backend::start((ip(71), port).into(), "a1").await,
        Backend::start((ip(72), port).into(), "b1").await,
        Backend::start((ip(73), port).into(), "g1").await,
    ];
    let alpha = app("alpha", port, vec![machine("a1", "ams", "h1", 71)]);
    let beta = app("beta", port, vec![machine("b1", "ams", "h1", 72)]);
    let mut gamma = app("gamma", port, vec![machine("g1", "ams", "h1", 73)]);
    gamma.org = "other-org".into();
    let edge = edge_with(vec![alpha, beta, gamma], |_| {}).await;
    let ask = |to: &str| format!("app={to}");
    let r = replay(&edge, "x-test-replay", &ask("beta")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.starts_with("machine=b1 src=instance=a1;"),
        "{}",
        r.body
    );
    assert!(r.body.ends_with("body=the body"), "{}", r.body);
    for to in ["gamma", "nosuchapp"] {
        let r = replay(&edge, "x-test-replay", &ask(to)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
        assert!(
            r.body.contains("not an app of its organization"),
            "{}",
            r.body
        );
    }
    // The same through hyper's path (an HTTP/1.0 client).
    for (to, want) in [("beta", "200 OK"), ("gamma", "502 Bad Gateway")] {
        let mut s = tokio::net::TcpStream::connect(edge.http_addr())
            .await
            .unwrap();
        let req = format!(
            "POST /replay HTTP/1.0\r\nHost: alpha.aloft.test\r\nx-test-replay: app={to}\r\n\
             Content-Length: 4\r\n\r\ndata"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert!(got.contains(want), "{to}: {got}");
        if to == "beta" {
            assert!(got.contains("machine=b1 src=instance=a1;"), "{got}");
        }
    }
}
