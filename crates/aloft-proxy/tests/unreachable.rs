//! Hosts the edge cannot reach over the mesh (their peer stopped answering RTT probes): their
//! machines are skipped, a request already waiting on one of them is retried on the next
//! nearest machine, and they are used again once reachable.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper::StatusCode;

/// Accepts connections and never answers, as a host cut off behind a partition looks.
async fn black_hole(addr: std::net::SocketAddr) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    accepted
}

#[tokio::test]
async fn machines_behind_an_unreachable_host_are_skipped_and_waiting_requests_retried() {
    let port = shared_port().await;
    // lhr (near) on h2, iad (far) on h3; the edge is in ams on h1.
    let _near = Backend::start((ip(2), port).into(), "near").await;
    let _far = Backend::start((ip(3), port).into(), "far").await;
    let accepted = black_hole((ip(4), port).into()).await;
    let edge = edge_with(
        vec![
            app(
                "alpha",
                port,
                vec![
                    machine("near", "lhr", "h2", 2),
                    machine("far", "iad", "h3", 3),
                ],
            ),
            app(
                "beta",
                port,
                vec![
                    machine("hole", "lhr", "h2", 4),
                    machine("far", "iad", "h3", 3),
                ],
            ),
        ],
        |_| {},
    )
    .await;
    let addr = edge.http_addr();
    edge.set_rtts(HashMap::from([
        ("lhr".into(), Duration::from_millis(5)),
        ("iad".into(), Duration::from_millis(85)),
    ]));
    assert_eq!(
        get(addr, "alpha.aloft.test", "/").await.body,
        "machine=near"
    );

    edge.set_unreachable_hosts(HashSet::from(["h2".to_string()]));
    for _ in 0..3 {
        assert_eq!(get(addr, "alpha.aloft.test", "/").await.body, "machine=far");
    }
    edge.set_unreachable_hosts(HashSet::new());
    assert_eq!(
        get(addr, "alpha.aloft.test", "/").await.body,
        "machine=near"
    );

    // A request waiting on h2 when it becomes unreachable is retried on the next nearest.
    let waiting = tokio::spawn(async move { get(addr, "beta.aloft.test", "/").await });
    eventually("the request reached the silent machine", || {
        accepted.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(!waiting.is_finished());
    edge.set_unreachable_hosts(HashSet::from(["h2".to_string()]));
    let reply = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting request is answered")
        .unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "machine=far")
    );
    assert_eq!(*edge.unreachable_hosts(), HashSet::from(["h2".to_string()]));
}
