//! The route table survives restarts and never goes back to an older revision.

mod common;

use aloft_proxy::{EdgeOptions, RouteStore, RouteTable};
use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn routes_from_disk_after_a_restart_and_ignores_older_revisions() {
    let port = shared_port().await;
    let _a = Backend::start((ip(2), port).into(), "a1").await;
    let _b = Backend::start((ip(3), port).into(), "a2").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge").join("routes.json");
    let opts = || {
        let mut o = EdgeOptions::new("127.0.0.1:0".parse().unwrap(), DOMAIN, "ams", "h1");
        o.route_store = Some(RouteStore::open(&path).unwrap());
        o
    };
    let edge = aloft_proxy::Edge::new(opts()).await.unwrap();
    assert_eq!(
        get(edge.http_addr(), "alpha.aloft.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    let v5 = RouteTable {
        revision: 5,
        apps: vec![app("alpha", port, vec![machine("a1", "ams", "h1", 2)])],
    };
    assert!(edge.update_routes(v5.clone()).unwrap());
    let v4 = RouteTable {
        revision: 4,
        apps: vec![app("alpha", port, vec![machine("a2", "ams", "h1", 3)])],
    };
    assert!(!edge.update_routes(v4.clone()).unwrap());
    assert!(!edge.update_routes(v5.clone()).unwrap());
    assert_eq!(
        get(edge.http_addr(), "alpha.aloft.test", "/").await.body,
        "machine=a1"
    );
    edge.shutdown().await;

    // The control plane is gone: a new edge routes from the saved copy.
    let again = aloft_proxy::Edge::new(opts()).await.unwrap();
    assert_eq!(again.routes(), v5);
    assert_eq!(again.revision(), 5);
    assert_eq!(
        get(again.http_addr(), "alpha.aloft.test", "/").await.body,
        "machine=a1"
    );
    assert!(!again.update_routes(v4).unwrap());
    assert_eq!(RouteStore::open(&path).unwrap().load().unwrap(), Some(v5));
}
