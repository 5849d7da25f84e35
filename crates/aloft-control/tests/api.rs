//! Apps, tokens and scopes, persistence, bad input, and the OpenAPI document.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use axum::http::StatusCode;
use common::{env, reopen};
use serde_json::json;
use utoipa::OpenApi;

#[tokio::test]
async fn first_start_writes_a_private_admin_token_and_a_reopen_keeps_everything() {
    let env = env().await;
    let path = env.dir.path().join("admin-token");
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), env.admin);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    env.app("web").await;
    env.host("h1", "ams", 4, 4096).await;
    let m = env.machine("web", json!({})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    let app_token = env.app_token("web").await;

    let env = reopen(env, Duration::from_secs(15)).await;
    assert!(
        env.server.admin_token_created.is_none(),
        "a second start must not make a new admin token"
    );
    let (status, again) = env.get(format!("/v1/apps/web/machines/{id}")).send().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "starting");
    assert_eq!(again["instance_id"], m["instance_id"]);
    assert_eq!(again["config"], m["config"]);
    let (status, _) = env.get("/v1/apps/web").token(Some(&app_token)).send().await;
    assert_eq!(status, StatusCode::OK, "app token survives a restart");
    let (_, regions) = env.get("/v1/platform/regions").send().await;
    assert_eq!(
        regions["Regions"][0]["free_memory_mb"],
        4096 - 256,
        "capacity use is rebuilt on open: {regions}"
    );
}

#[tokio::test]
async fn missing_or_bad_tokens_are_401_and_scoped_tokens_get_403_outside_their_scope() {
    let env = env().await;
    env.app("web").await;
    env.app("api").await;
    for token in [None, Some("aloft_nope"), Some("")] {
        let (status, body) = env.get("/v1/apps").token(token).send().await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(body["error"].as_str().unwrap().contains("oken"), "{body}");
    }
    let fly_scheme = format!("FlyV1 {}", env.admin);
    let (status, _) = env
        .get("/v1/apps")
        .token(None)
        .header("authorization", &fly_scheme)
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "Fly's FlyV1 scheme is accepted too");
    let (status, body) = env
        .post("/v1/tokens")
        .json(json!({"app": "web"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let web = body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        env.get("/v1/apps/web").token(Some(&web)).send().await.0,
        StatusCode::OK
    );
    let (status, body) = env.get("/v1/apps/api").token(Some(&web)).send().await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"].as_str().unwrap().contains("\"api\""),
        "{body}"
    );
    assert_eq!(
        env.post("/v1/apps")
            .token(Some(&web))
            .json(json!({"app_name": "x"}))
            .send()
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.post("/v1/tokens")
            .token(Some(&web))
            .json(json!({"scope": "join"}))
            .send()
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (_, listed) = env.get("/v1/apps").token(Some(&web)).send().await;
    assert_eq!(
        listed["total_apps"], 1,
        "an app token lists only its app: {listed}"
    );

    let (_, body) = env
        .post("/v1/tokens")
        .json(json!({"scope": "join"}))
        .send()
        .await;
    let join = body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        env.get("/v1/apps/web").token(Some(&join)).send().await.0,
        StatusCode::FORBIDDEN
    );
    let host = json!({"id": "h1", "region": "ams", "address": "10.0.0.1:4281", "cpus": 2, "memory_mb": 2048});
    assert_eq!(
        env.post("/v1/hosts")
            .token(Some(&join))
            .json(host.clone())
            .send()
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        env.post("/v1/hosts")
            .token(Some(&web))
            .json(host)
            .send()
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.server.authenticate(&join).map(|p| p.scope),
        Ok(aloft_control::TokenScope::Join)
    );
    assert_eq!(
        env.server.authenticate(&web).map(|p| p.scope),
        Ok(aloft_control::TokenScope::App("web".into()))
    );
    assert_eq!(
        env.server.authenticate("aloft_nope"),
        Err(aloft_control::AuthError::Unknown)
    );

    assert_eq!(
        env.post("/v1/tokens")
            .json(json!({"app": "ghost"}))
            .send()
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.post("/v1/tokens").json(json!({})).send().await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn apps_are_created_listed_fetched_and_deleted_with_fly_shapes() {
    let env = env().await;
    env.app("web").await;
    let (status, body) = env
        .post("/v1/apps")
        .json(json!({"app_name": "web", "org_slug": "personal"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = env
        .post("/v1/apps")
        .json(json!({"app_name": "x", "org_slug": "nope"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = env
        .post("/v1/apps")
        .json(json!({"app_name": "Bad_Name"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (_, list) = env.get("/v1/apps?org_slug=personal").send().await;
    assert_eq!(list["total_apps"], 1);
    assert_eq!(list["apps"][0]["name"], "web");
    assert_eq!(list["apps"][0]["machine_count"], 0);
    assert!(list["apps"][0]["id"].is_string() && list["apps"][0]["network"].is_string());
    let (_, app) = env.get("/v1/apps/web").send().await;
    assert_eq!(
        app["organization"],
        json!({"name": "personal", "slug": "personal"})
    );
    assert_eq!(app["status"], "pending");

    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({})).await;
    let (status, body) = env.delete("/v1/apps/web").send().await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    env.delete(format!(
        "/v1/apps/web/machines/{}?force=true",
        m["id"].as_str().unwrap()
    ))
    .send()
    .await;
    env.report("h1", &m, "destroyed").await;
    let web = env.app_token("web").await;
    assert_eq!(
        env.delete("/v1/apps/web").send().await.0,
        StatusCode::ACCEPTED
    );
    let (status, body) = env.get("/v1/apps/web").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "App \"web\" not found");
    assert_eq!(
        env.get("/v1/apps").token(Some(&web)).send().await.0,
        StatusCode::UNAUTHORIZED,
        "app tokens die with their app"
    );
    env.app("web").await;
    assert_eq!(
        env.get("/v1/apps/web").token(Some(&web)).send().await.0,
        StatusCode::UNAUTHORIZED,
        "and do not come back with a new app of the same name"
    );
}

#[tokio::test]
async fn bad_input_is_a_json_4xx_naming_the_problem_and_writes_nothing() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let cases: Vec<(serde_json::Value, StatusCode, &str)> = vec![
        (
            json!({"config": {"image": "nginx", "guest": {"cpus": 0, "memory_mb": 256}}}),
            StatusCode::BAD_REQUEST,
            "cpus",
        ),
        (
            json!({"config": {"image": "nginx", "guest": {"cpus": 65, "memory_mb": 256}}}),
            StatusCode::BAD_REQUEST,
            "cpus",
        ),
        (
            json!({"config": {"image": "nginx", "guest": {"cpus": 1, "memory_mb": 64}}}),
            StatusCode::BAD_REQUEST,
            "memory_mb",
        ),
        (
            json!({"config": {"image": "nginx", "guest": {"cpus": -1, "memory_mb": 256}}}),
            StatusCode::BAD_REQUEST,
            "cpus",
        ),
        (
            json!({"config": {"image": "nginx", "guest": {"cpus": "two"}}}),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            json!({"config": {"image": "Not A Ref!"}}),
            StatusCode::BAD_REQUEST,
            "Not A Ref!",
        ),
        (
            json!({"config": {"image": ""}}),
            StatusCode::BAD_REQUEST,
            "image",
        ),
        (
            json!({"region": "zzz", "config": {"image": "nginx"}}),
            StatusCode::BAD_REQUEST,
            "zzz",
        ),
        (
            json!({"config": {"image": "nginx", "guest": {"cpus": 4, "memory_mb": 256}}}),
            StatusCode::PRECONDITION_FAILED,
            "ams",
        ),
        (json!({"nope": 1}), StatusCode::BAD_REQUEST, "config"),
    ];
    for (body, want, needle) in cases {
        let (status, answer) = env
            .post("/v1/apps/web/machines")
            .json(body.clone())
            .send()
            .await;
        assert_eq!(status, want, "{body} -> {answer}");
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {answer}"));
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    let (status, answer) = env
        .post("/v1/apps/web/machines")
        .raw("{not json")
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON body"),
        "{answer}"
    );
    let huge = format!(
        "{{\"config\":{{\"image\":\"nginx\",\"env\":{{\"A\":\"{}\"}}}}}}",
        "x".repeat(1_100_000)
    );
    let (status, answer) = env.post("/v1/apps/web/machines").raw(huge).send().await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(answer["error"].is_string());
    let (status, answer) = env
        .post("/v1/apps/ghost/machines")
        .json(json!({"config": {"image": "nginx"}}))
        .send()
        .await;
    assert_eq!(
        (status, answer["error"].as_str().unwrap()),
        (StatusCode::NOT_FOUND, "App \"ghost\" not found")
    );
    let (status, answer) = env.get("/v1/apps/web/machines/00000000000000").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["error"].as_str().unwrap().contains("00000000000000"));
    let (status, answer) = env.get("/v1/nothing/here").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing/here"));
    let (status, answer) = env.get("/v1/apps/web/machines?state=bogus").send().await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    let (_, machines) = env
        .get("/v1/apps/web/machines?include_deleted=true")
        .send()
        .await;
    assert_eq!(machines, json!([]), "failed creates leave nothing behind");
    let (_, regions) = env.get("/v1/platform/regions").send().await;
    assert_eq!(regions["Regions"][0]["free_cpus"], 2);
}

#[tokio::test]
async fn openapi_document_matches_the_routes_exactly() {
    let (_, routes) = aloft_control::api::routes();
    let registered: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.as_str().to_lowercase(), (*p).to_owned()))
        .collect();
    assert_eq!(
        registered.len(),
        routes.len(),
        "a route is registered twice"
    );
    let doc = serde_json::to_value(aloft_control::api::openapi::ApiDoc::openapi()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    // Fly's parameter names, so clients generated from this document match Fly's.
    for (_, path) in &registered {
        if path.starts_with("/v1/apps/") {
            assert!(
                path.starts_with("/v1/apps/{app_name}"),
                "{path} names the app otherwise than Fly's {{app_name}}"
            );
        }
        if path.contains("/v1/apps/{app_name}/machines/{") {
            assert!(
                path.contains("/machines/{machine_id}"),
                "{path} names the machine otherwise than Fly's {{machine_id}}"
            );
        }
    }
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty() && phantom.is_empty(),
        "undocumented: {undocumented:?}; not routed: {phantom:?}"
    );

    let env = env().await;
    let (status, served) = env.get("/v1/openapi.json").send().await;
    assert_eq!(status, StatusCode::OK);
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    assert!(served["components"]["schemas"]["MachineConfig"].is_object());
    assert_eq!(
        served["paths"].as_object().unwrap().len(),
        doc["paths"].as_object().unwrap().len()
    );
}

#[tokio::test]
async fn state_survives_a_server_that_never_closed_its_database() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({"skip_launch": true})).await;
    let common::Env {
        dir,
        server,
        admin,
        router,
    } = env;
    // Like kill -9: the connection is never closed and the WAL is never checkpointed.
    std::mem::forget(server);
    std::mem::forget(router);
    let server = aloft_control::Server::open(aloft_control::ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let env = common::Env {
        router: server.router(),
        dir,
        server,
        admin,
    };
    let (status, again) = env
        .get(format!(
            "/v1/apps/web/machines/{}",
            m["id"].as_str().unwrap()
        ))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["state"], "created");
    assert_eq!(again["events"], m["events"]);
}
