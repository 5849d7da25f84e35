//! ACME orders through the router (no sockets): refused without a directory and for wildcards,
//! edges' challenge polls need a host token, and an unreachable CA ends in `failed` with a
//! message while the rest of the API keeps answering.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::env;
use serde_json::json;

#[tokio::test]
async fn orders_need_a_directory_and_an_exact_name_and_fail_with_the_reason() {
    let env = env().await;
    env.app("web").await;
    let (status, body) = env
        .post("/v1/certs/acme")
        .json(json!({"hostname": "shop.example.com", "app": "web"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--acme-directory"),
        "{body}"
    );

    // A directory nothing listens on.
    env.use_unreachable_acme();
    let (status, body) = env
        .post("/v1/certs/acme")
        .json(json!({"hostname": "*.example.com", "app": "web"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("DNS-01"), "{body}");
    let (status, _) = env
        .post("/v1/certs/acme")
        .json(json!({"hostname": "not a name", "app": "web"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Edges poll challenges with a host (join or admin) token only.
    let app_token = env.app_token("web").await;
    let poll = "/v1/edge/acme?edge=e1&https=true";
    let (status, _) = env.get(poll).token(Some(&app_token)).send().await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, set) = env.get(poll).send().await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert!(set["version"].as_u64().unwrap() > 0, "{set}");
    assert_eq!(set["challenges"], json!([]));

    // The order is accepted as pending, then fails: the CA cannot be reached.
    let (status, info) = env
        .post("/v1/certs/acme")
        .json(json!({"hostname": "Shop.Example.com", "app": "web"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{info}");
    assert_eq!(info["hostname"], "shop.example.com");
    assert_eq!(info["source"], "acme");
    assert_eq!(info["app"], "web");
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let (status, info) = env.get("/v1/certs/shop.example.com").send().await;
        assert_eq!(status, StatusCode::OK, "{info}");
        if info["status"] != "pending" || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(info["status"], "failed", "{info}");
    assert!(
        info["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{info}"
    );
    let (status, list) = env.get("/v1/certs").send().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (status, _) = env.delete("/v1/certs/shop.example.com").send().await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = env.get("/v1/certs/shop.example.com").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
