//! Waking stopped machines for requests and stopping idle ones, through a real waker and real
//! backend servers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aloft_proxy::{Autostop, MachineState, Waker};
use common::*;
use hyper::StatusCode;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn autostart_holds_the_request_until_the_machine_listens() {
    let port = shared_port().await;
    let mut sleeper = machine("sleeper", "ams", "h1", 6);
    sleeper.state = MachineState::Stopped;
    // A stopped machine fails its checks; once the edge has woken it, it is served anyway.
    sleeper.healthy = false;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waker = Arc::new(RecordingWaker::default());
    *waker.start_tx.lock().unwrap() = Some(tx);
    let w: Arc<dyn Waker> = waker.clone();
    let edge = edge_with(vec![app("alpha", port, vec![sleeper])], |o| {
        o.waker = Some(w)
    })
    .await;
    let addr = edge.http_addr();

    let pending = tokio::spawn(async move { get(addr, "alpha.aloft.test", "/").await });
    let woken = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(woken, "sleeper");
    assert!(!pending.is_finished(), "the request waits for the machine");
    // The machine "boots": its app starts listening only now.
    let _backend = Backend::start((ip(6), port).into(), "sleeper").await;
    let r = pending.await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "machine=sleeper")
    );

    // Now started: later requests go straight through without another start.
    assert_eq!(
        get(addr, "alpha.aloft.test", "/").await.body,
        "machine=sleeper"
    );
    assert_eq!(*waker.started.lock().unwrap(), ["sleeper"]);
    assert_eq!(
        metric(
            &edge.metrics_text(),
            "aloft_edge_autostarts_total{app=\"alpha\"}"
        ),
        1
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_start() {
    let port = shared_port().await;
    let mut sleeper = machine("sleeper", "ams", "h1", 6);
    sleeper.state = MachineState::Stopped;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waker = Arc::new(RecordingWaker::default());
    *waker.start_tx.lock().unwrap() = Some(tx);
    let w: Arc<dyn Waker> = waker.clone();
    let edge = edge_with(vec![app("alpha", port, vec![sleeper])], |o| {
        o.waker = Some(w)
    })
    .await;
    let addr = edge.http_addr();
    let pending: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(addr, "alpha.aloft.test", "/").await }))
        .collect();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap(),
        "sleeper"
    );
    let _backend = Backend::start((ip(6), port).into(), "sleeper").await;
    for p in pending {
        assert_eq!(p.await.unwrap().body, "machine=sleeper");
    }
    assert_eq!(*waker.started.lock().unwrap(), ["sleeper"]);
}

#[tokio::test]
async fn autostart_wakes_a_stopped_machine_when_started_ones_are_over_soft() {
    let port = shared_port().await;
    let busy = Backend::start((ip(2), port).into(), "busy").await;
    let mut sleeper = machine("sleeper", "fra", "h2", 3);
    sleeper.state = MachineState::Suspended;
    let mut alpha = app(
        "alpha",
        port,
        vec![machine("busy", "ams", "h1", 2), sleeper],
    );
    alpha.services[0].concurrency.soft_limit = 1;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waker = Arc::new(RecordingWaker::default());
    *waker.start_tx.lock().unwrap() = Some(tx);
    let w: Arc<dyn Waker> = waker.clone();
    let edge = edge_with(vec![alpha], |o| o.waker = Some(w)).await;
    let addr = edge.http_addr();

    let held = tokio::spawn(async move { get(addr, "alpha.aloft.test", "/hold").await });
    busy.arrived().await;
    let pending = tokio::spawn(async move { get(addr, "alpha.aloft.test", "/").await });
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap(),
        "sleeper"
    );
    let _b = Backend::start((ip(3), port).into(), "sleeper").await;
    assert_eq!(pending.await.unwrap().body, "machine=sleeper");
    busy.release.add_permits(1);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn no_autostart_when_the_service_disables_it() {
    let port = shared_port().await;
    let mut sleeper = machine("sleeper", "ams", "h1", 6);
    sleeper.state = MachineState::Stopped;
    let mut alpha = app("alpha", port, vec![sleeper]);
    alpha.services[0].autostart = false;
    let waker = Arc::new(RecordingWaker::default());
    let w: Arc<dyn Waker> = waker.clone();
    let edge = edge_with(vec![alpha], |o| o.waker = Some(w)).await;
    assert_eq!(
        get(edge.http_addr(), "alpha.aloft.test", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(waker.started.lock().unwrap().is_empty());
}

#[tokio::test]
async fn autostop_stops_idle_machines_down_to_the_minimum() {
    let port = shared_port().await;
    let ms = vec![
        machine("a1", "ams", "h1", 2),
        machine("a2", "ams", "h2", 3),
        machine("f1", "fra", "h3", 4),
        machine("f2", "fra", "h4", 5),
    ];
    let mut alpha = app("alpha", port, ms);
    alpha.services[0].autostop = Autostop::Suspend;
    alpha.services[0].min_machines_running = 1;
    let mut other = app("beta", port, vec![machine("b1", "ams", "h1", 7)]);
    other.services[0].autostop = Autostop::Off;
    let waker = Arc::new(RecordingWaker::default());
    let w: Arc<dyn Waker> = waker.clone();
    let edge = edge_with(vec![alpha, other], |o| {
        o.waker = Some(w);
        o.idle_period = Duration::from_millis(50);
        o.autostop_interval = Duration::from_millis(20);
    })
    .await;
    eventually("three machines to stop", || {
        waker.stopped.lock().unwrap().len() >= 3
    })
    .await;
    let cycles = metric(&edge.metrics_text(), "aloft_edge_autostop_cycles_total");
    eventually("three more autostop passes", || {
        metric(&edge.metrics_text(), "aloft_edge_autostop_cycles_total") >= cycles + 3
    })
    .await;
    let stopped = waker.stopped.lock().unwrap().clone();
    assert_eq!(stopped.len(), 3, "one machine stays running: {stopped:?}");
    assert!(
        stopped
            .iter()
            .all(|(id, mode)| id != "b1" && *mode == Autostop::Suspend),
        "{stopped:?}"
    );
    assert_eq!(
        metric(
            &edge.metrics_text(),
            "aloft_edge_autostops_total{app=\"alpha\"}"
        ),
        3
    );
}

#[tokio::test]
async fn autostop_spares_busy_machines() {
    let port = shared_port().await;
    let busy = Backend::start((ip(2), port).into(), "busy").await;
    let mut alpha = app("alpha", port, vec![machine("busy", "ams", "h1", 2)]);
    alpha.services[0].autostop = Autostop::Stop;
    let waker = Arc::new(RecordingWaker::default());
    let w: Arc<dyn Waker> = waker.clone();
    let edge = edge_with(vec![alpha], |o| {
        o.waker = Some(w);
        o.idle_period = Duration::from_millis(1);
        o.autostop_interval = Duration::from_secs(3600);
    })
    .await;
    let addr = edge.http_addr();
    let held = tokio::spawn(async move { get(addr, "alpha.aloft.test", "/hold").await });
    busy.arrived().await;
    edge.autostop_now().await;
    assert!(
        waker.stopped.lock().unwrap().is_empty(),
        "a machine with a request in flight is not idle"
    );
    busy.release.add_permits(1);
    held.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while waker.stopped.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle machine should be stopped"
        );
        edge.autostop_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        *waker.stopped.lock().unwrap(),
        [("busy".to_string(), Autostop::Stop)]
    );
    // The edge now knows the machine is stopped: the next request wakes it first.
    assert!(waker.started.lock().unwrap().is_empty());
    assert_eq!(
        get(addr, "alpha.aloft.test", "/").await.body,
        "machine=busy"
    );
    assert_eq!(*waker.started.lock().unwrap(), ["busy"]);
}
