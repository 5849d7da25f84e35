//! Tokens and organizations through the router: who may mint, list and revoke what, and
//! what a revoked token or a reopened store sees.

mod common;

use axum::http::StatusCode;
use common::env;
use serde_json::{json, Value};

#[tokio::test]
async fn minting_listing_and_revoking_follow_the_scopes() {
    let env = env().await;
    assert_eq!(
        env.post("/v1/orgs")
            .json(json!({"slug": "acme"}))
            .send()
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        env.post("/v1/orgs")
            .json(json!({"slug": "acme"}))
            .send()
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        env.post("/v1/orgs")
            .json(json!({"slug": "Bad Org"}))
            .send()
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let org = env.token(json!({"scope": "org", "org": "acme"})).await;
    // An org token creates apps in its org, and deploy tokens for them, not admin tokens.
    let (status, app) = env
        .post("/v1/apps")
        .token(Some(&org))
        .json(json!({"app_name": "web"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    assert_eq!(app["organization"]["slug"], "acme");
    let (status, minted) = env
        .post("/v1/tokens")
        .token(Some(&org))
        .json(json!({"scope": "deploy", "app": "web", "expires_in": 3600, "name": "ci"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let deploy_id = minted["id"].as_str().unwrap().to_string();
    for body in [json!({"scope": "admin"}), json!({"scope": "join"})] {
        let (status, _) = env
            .post("/v1/tokens")
            .token(Some(&org))
            .json(body)
            .send()
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // Bad requests say what is wrong.
    for body in [
        json!({"scope": "deploy"}),
        json!({"scope": "org"}),
        json!({"scope": "admin", "app": "web"}),
        json!({"app": "web", "expires_in": 0}),
    ] {
        let (status, err) = env.post("/v1/tokens").json(body.clone()).send().await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
    }
    // The org token lists its org's tokens, the admin every token; never a secret.
    let (_, by_org) = env.get("/v1/tokens").token(Some(&org)).send().await;
    let mut kinds: Vec<&str> = by_org
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["deploy", "org"], "{by_org}");
    let (_, all) = env.get("/v1/tokens").send().await;
    assert!(!all.to_string().contains("aloft_"), "{all}");
    let ci = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == deploy_id.as_str())
        .unwrap();
    assert_eq!(ci["name"], "ci");
    assert_eq!(ci["app"], "web");
    // The admin's own token is not the org token's to revoke (or see).
    let admin_id = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = env
        .delete(format!("/v1/tokens/{admin_id}"))
        .token(Some(&org))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The last admin token stays.
    let (status, err) = env.delete(format!("/v1/tokens/{admin_id}")).send().await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    // Revoked by its org: refused at once.
    let deploy = minted["token"].as_str().unwrap().to_string();
    assert_eq!(
        env.get("/v1/apps/web").token(Some(&deploy)).send().await.0,
        StatusCode::OK
    );
    let (status, _) = env
        .delete(format!("/v1/tokens/{deploy_id}"))
        .token(Some(&org))
        .send()
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        env.get("/v1/apps/web").token(Some(&deploy)).send().await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn orgs_keep_their_apps_and_go_only_when_empty() {
    let env = env().await;
    env.post("/v1/orgs")
        .json(json!({"slug": "acme", "name": "Acme Inc"}))
        .send()
        .await;
    let org = env.token(json!({"scope": "org", "org": "acme"})).await;
    env.post("/v1/apps")
        .json(json!({"app_name": "web", "org_slug": "acme"}))
        .send()
        .await;
    let (_, orgs) = env.get("/v1/orgs").token(Some(&org)).send().await;
    assert_eq!(
        orgs,
        json!([{"slug": "acme", "name": "Acme Inc", "app_count": 1}])
    );
    let (status, _) = env.delete("/v1/orgs/acme").send().await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        env.delete("/v1/orgs/personal").send().await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        env.delete("/v1/orgs/acme").token(Some(&org)).send().await.0,
        StatusCode::FORBIDDEN
    );
    env.delete("/v1/apps/web").send().await;
    assert_eq!(
        env.delete("/v1/orgs/acme").send().await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        env.get("/v1/orgs").token(Some(&org)).send().await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, orgs) = env.get("/v1/orgs").send().await;
    let slugs: Vec<&Value> = orgs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["slug"])
        .collect();
    assert_eq!(slugs, [&json!("personal")]);
}

#[tokio::test]
async fn tokens_keep_their_ids_and_expiry_across_a_restart() {
    let env = env().await;
    env.app("web").await;
    let (_, minted) = env
        .post("/v1/tokens")
        .json(json!({"scope": "deploy", "app": "web"}))
        .send()
        .await;
    let token = minted["token"].as_str().unwrap().to_string();
    let env = common::reopen(env, std::time::Duration::from_secs(30)).await;
    let (status, _) = env.get("/v1/apps/web").token(Some(&token)).send().await;
    assert_eq!(status, StatusCode::OK);
    let (_, all) = env.get("/v1/tokens").send().await;
    let listed = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == minted["id"])
        .unwrap()
        .clone();
    assert_eq!(listed["expires_at"], minted["expires_at"]);
    assert!(listed["last_used_at"].is_string(), "{listed}");
}
