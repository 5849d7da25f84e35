//! A host silent for the heartbeat timeout is down: `/v1/hosts` says so, its machines leave the
//! route table at a new revision (the watch stream sends it), new machines are not placed
//! there, and everything comes back when it heartbeats again.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{env, reopen, Lines};
use serde_json::{json, Value};

fn machines_of(table: &Value, app: &str) -> Vec<String> {
    table["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == app)
        .unwrap_or_else(|| panic!("no app {app} in {table}"))["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn status_of(hosts: &Value, id: &str) -> String {
    hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == id)
        .unwrap_or_else(|| panic!("no host {id} in {hosts}"))["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_silent_host_leaves_the_route_table_and_comes_back_when_it_heartbeats() {
    let env = env().await;
    env.app("web").await;
    env.host("near", "ams", 4, 4096).await;
    env.host("far", "syd", 4, 4096).await;
    let near = env.machine("web", json!({"region": "ams"})).await;
    let far = env.machine("web", json!({"region": "syd"})).await;
    let (near, far) = (
        near["id"].as_str().unwrap().to_owned(),
        far["id"].as_str().unwrap().to_owned(),
    );

    // Reopened with a short timeout; both hosts count as seen at the start.
    let env = reopen(env, Duration::from_millis(1500)).await;
    let control = env.server.control();
    assert_eq!(
        control.hosts().refresh_liveness().unwrap(),
        Default::default(),
        "nothing is down right after a start"
    );
    let (_, before) = env.get("/v1/routes").send().await;
    let mut ids = machines_of(&before, "web");
    ids.sort();
    let mut both = vec![near.clone(), far.clone()];
    both.sort();
    assert_eq!(ids, both);
    let mut watch =
        Lines::open(env.get(format!("/v1/routes/watch?since={}", before["revision"]))).await;

    // ams keeps heartbeating, syd goes silent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let change = loop {
        let (status, _) = env.post("/v1/hosts/near/heartbeat").send().await;
        assert_eq!(status, StatusCode::OK);
        let change = control.hosts().refresh_liveness().unwrap();
        if change.revision.is_some() {
            break change;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "syd never went down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(change.down, ["far"]);
    assert!(change.back.is_empty());
    let revision = change.revision.unwrap();
    assert!(revision > before["revision"].as_u64().unwrap());

    let (_, hosts) = env.get("/v1/hosts").send().await;
    assert_eq!(status_of(&hosts, "far"), "unreachable");
    assert_eq!(status_of(&hosts, "near"), "ok");
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(table["revision"], revision);
    assert_eq!(machines_of(&table, "web"), [near.as_str()]);
    // Edges following the watch get the table without syd's machine.
    let event = loop {
        let event = watch.next().await;
        if event["table"].is_object() {
            break event;
        }
    };
    assert_eq!(event["revision"], revision);
    assert_eq!(machines_of(&event["table"], "web"), [near.as_str()]);
    // Nothing new is placed on the down host.
    let (status, body) = env
        .post("/v1/apps/web/machines")
        .json(json!({"region": "syd", "config": {"image": "nginx"}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    // A second check changes nothing.
    assert_eq!(
        control.hosts().refresh_liveness().unwrap(),
        Default::default()
    );

    // syd heartbeats again: its machine is routable at once, at a newer revision.
    let (status, host) = env.post("/v1/hosts/far/heartbeat").send().await;
    assert_eq!(status, StatusCode::OK, "{host}");
    assert_eq!(host["status"], "ok");
    let (_, table) = env.get("/v1/routes").send().await;
    assert!(table["revision"].as_u64().unwrap() > revision);
    let mut ids = machines_of(&table, "web");
    ids.sort();
    assert_eq!(ids, both);
    let event = loop {
        let event = watch.next().await;
        if event["table"].is_object() {
            break event;
        }
    };
    assert_eq!(event["table"], table);
}
