//! Exec and logs routing on the control plane, and check reports, without an agent: the
//! statuses a caller sees before any command runs.

mod common;

use axum::http::StatusCode;
use common::env;
use serde_json::json;

#[tokio::test]
async fn exec_needs_a_command_a_started_machine_its_apps_token_and_a_reachable_agent() {
    let env = env().await;
    env.app("web").await;
    env.app("other").await;
    // Nothing listens at the registered address.
    let (status, body) = env
        .post("/v1/hosts")
        .json(
            json!({"id": "h1", "region": "ams", "address": "127.0.0.1:1", "cpus": 2,
                     "memory_mb": 2048, "api_secret": "s3cret"}),
        )
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let m = env.machine("web", json!({"region": "ams"})).await;
    let id = m["id"].as_str().unwrap();
    let exec = format!("/v1/apps/web/machines/{id}/exec");

    let (status, body) = env.post(&exec).json(json!({})).send().await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = env
        .post(&exec)
        .json(json!({"command": ["true"]}))
        .send()
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not started"),
        "{body}"
    );

    env.report("h1", &m, "started").await;
    let (status, body) = env.post(&exec).json(json!({"cmd": "ls -la"})).send().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("h1"),
        "names the host: {body}"
    );

    let other = env.app_token("other").await;
    let (status, body) = env
        .post(&exec)
        .token(Some(&other))
        .json(json!({"command": ["true"]}))
        .send()
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = env
        .get("/v1/apps/web/logs")
        .token(Some(&other))
        .send()
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Logs of machines whose agent cannot be reached are left out, not an error.
    let (status, body) = env.get("/v1/apps/web/logs?follow=false").send().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::Value::Null, "no lines");
    let (status, _) = env.get("/v1/apps/web/logs?machine=nope").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn check_results_alone_never_move_a_stopping_machine_back_to_started() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({"region": "ams"})).await;
    let id = m["id"].as_str().unwrap();
    env.report("h1", &m, "started").await;
    let (status, _) = env
        .post(format!("/v1/apps/web/machines/{id}/stop"))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.state("web", id).await, "stopping");

    let (status, body) = env
        .post(format!("/v1/hosts/h1/machines/{id}/status"))
        .json(json!({"instance_id": m["instance_id"], "state": "started",
                     "checks": [{"name": "alive", "status": "critical", "output": "refused"}]}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(env.state("web", id).await, "stopping");
    let (_, now) = env.get(format!("/v1/apps/web/machines/{id}")).send().await;
    assert_eq!(now["checks"][0]["status"], "critical", "{now}");
}
