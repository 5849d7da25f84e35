//! Deploys through the router (no sockets): bad plans, other apps' deploys, unknown deploys.
//! Deploys that run on real hosts are tested end to end in `crates/aloft/tests/deploy_server.rs`.

mod common;

use axum::http::StatusCode;
use common::env;
use serde_json::json;

fn plan(image: &str) -> serde_json::Value {
    json!({
        "image": image,
        "configs": {"app": {"image": image, "metadata": {"fly_process_group": "app"}}},
        "strategy": "rolling",
        "region": "ams",
    })
}

#[tokio::test]
async fn bad_plans_are_refused_with_what_to_fix() {
    let env = env().await;
    env.app("web").await;
    let cases = [
        (
            json!({"image": "registry.local/web:1", "configs": {}, "region": "ams"}),
            "at least one process group",
        ),
        (
            json!({"image": "registry.local/web:1", "configs": {"app": {"image": "registry.local/web:1"}}, "region": "ams", "max_unavailable": 1.5}),
            "max_unavailable",
        ),
        (
            json!({"image": "registry.local/web:1", "configs": {"app": {"image": "registry.local/web:1"}}, "region": "ams", "strategy": "bluegreen"}),
            "needs at least one health check",
        ),
        (
            json!({"image": "registry.local/web:1", "configs": {"app": {"image": "registry.local/web:1"}}, "region": "ams", "release_command": {"command": "sh -c 'x", "timeout_secs": 5}}),
            "unbalanced quotes",
        ),
        (
            json!({"image": "registry.local/web:1", "configs": {"app": {"image": "registry.local/web:1"}}, "region": "ams", "surprise": true}),
            "surprise",
        ),
    ];
    for (body, says) in cases {
        let (status, answer) = env.post("/v1/apps/web/deploys").json(body).send().await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    let (_, releases) = env.get("/v1/apps/web/releases").send().await;
    assert_eq!(releases, json!([]), "a refused plan records no release");
}

#[tokio::test]
async fn an_app_token_reaches_only_its_own_deploys() {
    let env = env().await;
    env.app("web").await;
    env.app("other").await;
    let token = env.app_token("other").await;
    let (status, answer) = env
        .post("/v1/apps/web/deploys")
        .token(Some(&token))
        .json(plan("registry.local/web:1"))
        .send()
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    for path in ["/v1/apps/web/deploys/v1", "/v1/apps/web/deploys/v1/events"] {
        let (status, _) = env.get(path).token(Some(&token)).send().await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, answer) = env.get("/v1/apps/web/deploys/nope").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("\"nope\""),
        "{answer}"
    );
    let (status, _) = env
        .post("/v1/apps/web/deploys/v9/cancel")
        .json(json!({}))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
