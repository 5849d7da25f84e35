//! The Machines API: Fly's own example bodies, config round-trips, filters, leases, metadata,
//! versions and the user-facing lifecycle endpoints.

mod common;

use axum::http::StatusCode;
use common::env;
use serde_json::{json, Value};

/// The create-machine request from Fly's Machines API reference (image, env, services, guest).
fn fly_docs_create_body() -> Value {
    json!({
        "name": "web-docs-example",
        "region": "ams",
        "config": {
            "image": "flyio/fastify-functions",
            "env": {"APP_ENV": "production"},
            "services": [{
                "ports": [
                    {"port": 443, "handlers": ["tls", "http"]},
                    {"port": 80, "handlers": ["http"]}
                ],
                "protocol": "tcp",
                "internal_port": 8080
            }],
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}
        }
    })
}

#[tokio::test]
async fn fly_docs_create_example_answers_a_fly_shaped_machine() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let (status, m) = env
        .post("/v1/apps/web/machines")
        .json(fly_docs_create_body())
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    let id = m["id"].as_str().unwrap();
    assert_eq!(id.len(), 14);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(m["name"], "web-docs-example");
    assert_eq!(m["state"], "starting");
    assert_eq!(m["region"], "ams");
    assert_eq!(m["instance_id"].as_str().unwrap().len(), 26);
    assert!(m["private_ip"]
        .as_str()
        .unwrap()
        .parse::<std::net::Ipv6Addr>()
        .is_ok());
    assert_eq!(m["image_ref"]["registry"], "registry-1.docker.io");
    assert_eq!(m["image_ref"]["repository"], "flyio/fastify-functions");
    assert_eq!(m["image_ref"]["tag"], "latest");
    assert_eq!(m["config"], fly_docs_create_body()["config"]);
    assert_eq!(m["host_status"], "ok");
    assert!(chrono::DateTime::parse_from_rfc3339(m["created_at"].as_str().unwrap()).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(m["updated_at"].as_str().unwrap()).is_ok());
    let events = m["events"].as_array().unwrap();
    assert_eq!(events[0]["type"], "start");
    assert_eq!(events[0]["status"], "starting");
    assert_eq!(events[1]["type"], "launch");
    assert!(
        events[0]["timestamp"].as_i64().unwrap() > 1_600_000_000_000,
        "timestamps are milliseconds"
    );
    assert_eq!(events[0]["source"], "user");
}

#[tokio::test]
async fn config_fields_aloft_does_not_know_are_kept_at_every_level() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let config = json!({
        "image": "registry.example.com/team/app:v3",
        "future_feature": {"enabled": true},
        "init": {"cmd": ["serve"], "kernel_hint": 7},
        "guest": {"cpu_kind": "performance", "cpus": 2, "memory_mb": 1024, "gpu_kind": "l40s"},
        "services": [{"internal_port": 8080, "protocol": "tcp", "proxy_mode": "x",
                      "ports": [{"port": 443, "handlers": ["tls"], "tls_options": {"alpn": ["h2"]}}]}],
        "checks": {"alive": {"type": "http", "port": 8080, "path": "/", "interval": "15s", "tls_server_name": "a"}},
        "restart": {"policy": "on-failure", "max_retries": 3, "gpu_bid_price": 0.5},
        "statics": [{"guest_path": "/srv", "url_prefix": "/static"}]
    });
    let m = env
        .machine(
            "web",
            json!({"config": config.clone(), "skip_launch": true}),
        )
        .await;
    assert_eq!(m["config"], config);
    assert_eq!(m["state"], "created");
    let id = m["id"].as_str().unwrap();
    let (_, fetched) = env.get(format!("/v1/apps/web/machines/{id}")).send().await;
    assert_eq!(fetched["config"], config);
    let (_, versions) = env
        .get(format!("/v1/apps/web/machines/{id}/versions"))
        .send()
        .await;
    assert_eq!(versions[0]["user_config"], config);
}

#[tokio::test]
async fn update_makes_a_new_version_and_instance_and_replaces_a_running_machine() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 4, 4096).await;
    let m = env.machine("web", json!({})).await;
    let id = m["id"].as_str().unwrap();
    assert_eq!(env.report("h1", &m, "started").await.0, StatusCode::OK);
    let (status, updated) = env
        .post(format!("/v1/apps/web/machines/{id}"))
        .json(json!({"config": {"image": "nginx:1.27", "guest": {"cpus": 2, "memory_mb": 512}}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["state"], "replacing");
    assert_ne!(updated["instance_id"], m["instance_id"]);
    assert_ne!(updated["version"], m["version"]);
    assert_eq!(updated["image_ref"]["tag"], "1.27");
    let (_, versions) = env
        .get(format!("/v1/apps/web/machines/{id}/versions"))
        .send()
        .await;
    assert_eq!(versions.as_array().unwrap().len(), 2);
    let (_, regions) = env.get("/v1/platform/regions").send().await;
    assert_eq!(
        regions["Regions"][0]["free_cpus"], 2,
        "capacity follows the new guest"
    );
    let (status, body) = env
        .post(format!("/v1/apps/web/machines/{id}"))
        .json(json!({"region": "ord", "config": {"image": "nginx"}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = env
        .post(format!("/v1/apps/web/machines/{id}"))
        .json(json!({"config": {"image": "nginx", "guest": {"cpus": 8, "memory_mb": 512}}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
}

#[tokio::test]
async fn list_filters_by_region_state_metadata_and_deleted() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 8, 8192).await;
    env.host("h2", "ord", 8, 8192).await;
    let a = env
        .machine(
            "web",
            json!({"region": "ams", "config": {"metadata": {"role": "db"}}}),
        )
        .await;
    let b = env
        .machine("web", json!({"region": "ord", "skip_launch": true}))
        .await;
    let c = env
        .machine("web", json!({"region": "ord", "skip_launch": true}))
        .await;
    env.delete(format!(
        "/v1/apps/web/machines/{}",
        c["id"].as_str().unwrap()
    ))
    .send()
    .await;
    env.report("h2", &c, "destroyed").await;
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let id = |m: &Value| m["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ids(&env.get("/v1/apps/web/machines").send().await.1),
        vec![id(&a), id(&b)]
    );
    assert_eq!(
        ids(&env.get("/v1/apps/web/machines?region=ord").send().await.1),
        vec![id(&b)]
    );
    assert_eq!(
        ids(&env
            .get("/v1/apps/web/machines?state=created,stopped")
            .send()
            .await
            .1),
        vec![id(&b)]
    );
    assert_eq!(
        ids(&env
            .get("/v1/apps/web/machines?metadata.role=db")
            .send()
            .await
            .1),
        vec![id(&a)]
    );
    assert_eq!(
        ids(&env
            .get("/v1/apps/web/machines?include_deleted=true")
            .send()
            .await
            .1)
        .len(),
        3
    );
    assert_eq!(
        ids(&env
            .get("/v1/apps/web/machines?state=destroyed")
            .send()
            .await
            .1),
        vec![id(&c)]
    );
    let (_, apps) = env.get("/v1/apps").send().await;
    assert_eq!(apps["apps"][0]["machine_count"], 2);
}

#[tokio::test]
async fn a_lease_blocks_other_callers_until_they_send_its_nonce() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({})).await;
    let base = format!("/v1/apps/web/machines/{}", m["id"].as_str().unwrap());
    let (status, body) = env.get(format!("{base}/lease")).send().await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, lease) = env.post(format!("{base}/lease?ttl=60")).send().await;
    assert_eq!(status, StatusCode::CREATED, "{lease}");
    assert_eq!(lease["status"], "success");
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_owned();
    assert_eq!(lease["data"]["owner"], "admin");
    assert_eq!(lease["data"]["version"], m["version"]);
    let expires = lease["data"]["expires_at"].as_i64().unwrap();
    assert!(expires > chrono::Utc::now().timestamp() + 30);

    let (status, body) = env
        .post(format!("{base}/lease"))
        .json(json!({"ttl": 30}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap().contains("leased by admin"),
        "{body}"
    );
    let (status, body) = env.post(format!("{base}/stop")).send().await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = env
        .post(format!("{base}/metadata/k"))
        .json(json!({"value": "v"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        env.state("web", m["id"].as_str().unwrap()).await,
        "starting",
        "refused stop changed nothing"
    );

    let (status, _) = env
        .post(format!("{base}/cordon"))
        .header("fly-machine-lease-nonce", &nonce)
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, extended) = env
        .post(format!("{base}/lease"))
        .header("fly-machine-lease-nonce", &nonce)
        .json(json!({"ttl": 600, "description": "deploy"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{extended}");
    assert_eq!(extended["data"]["nonce"], nonce.as_str());
    assert_eq!(extended["data"]["description"], "deploy");
    assert_eq!(
        env.get(format!("{base}/lease")).send().await.1["data"]["nonce"],
        nonce.as_str()
    );

    assert_eq!(
        env.delete(format!("{base}/lease")).send().await.0,
        StatusCode::CONFLICT
    );
    let (status, released) = env
        .delete(format!("{base}/lease"))
        .header("fly-machine-lease-nonce", &nonce)
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        released,
        json!({"status": "success", "data": {"ok": true}}),
        "Fly's release body"
    );
    assert_eq!(
        env.post(format!("{base}/stop")).send().await.0,
        StatusCode::OK
    );
    assert_eq!(
        env.post(format!("{base}/lease?ttl=0")).send().await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn create_with_lease_ttl_returns_the_nonce() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({"lease_ttl": 120})).await;
    let nonce = m["nonce"].as_str().expect("nonce in the create answer");
    let base = format!("/v1/apps/web/machines/{}", m["id"].as_str().unwrap());
    assert_eq!(
        env.post(format!("{base}/stop")).send().await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        env.post(format!("{base}/stop"))
            .header("fly-machine-lease-nonce", nonce)
            .send()
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn metadata_can_be_set_read_and_removed_without_a_new_version() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env
        .machine("web", json!({"config": {"metadata": {"a": "1"}}}))
        .await;
    let base = format!("/v1/apps/web/machines/{}", m["id"].as_str().unwrap());
    let (status, body) = env
        .post(format!("{base}/metadata/team"))
        .json(json!({"value": "infra"}))
        .send()
        .await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(
        env.get(format!("{base}/metadata")).send().await.1,
        json!({"a": "1", "team": "infra"})
    );
    assert_eq!(
        env.delete(format!("{base}/metadata/a")).send().await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        env.get(format!("{base}/metadata")).send().await.1,
        json!({"team": "infra"})
    );
    assert_eq!(
        env.get(format!("{base}/versions"))
            .send()
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, _) = env
        .post(format!("{base}/metadata/x"))
        .json(json!({"value": 5}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn lifecycle_endpoints_follow_the_transition_rules() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({})).await;
    let id = m["id"].as_str().unwrap();
    let base = format!("/v1/apps/web/machines/{id}");
    let (status, body) = env.post(format!("{base}/restart")).send().await;
    assert_eq!(
        status,
        StatusCode::PRECONDITION_FAILED,
        "restart needs started: {body}"
    );
    let (status, body) = env
        .post(format!("{base}/signal"))
        .json(json!({"signal": "SIGUSR1"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    env.report("h1", &m, "started").await;
    assert_eq!(
        env.post(format!("{base}/signal"))
            .json(json!({"signal": "SIGUSR1"}))
            .send()
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = env
        .post(format!("{base}/signal"))
        .json(json!({"signal": "SIGBOGUS"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("SIGBOGUS"));
    let (status, body) = env.delete(&base).send().await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert!(
        body["error"].as_str().unwrap().contains("force=true"),
        "{body}"
    );

    assert_eq!(
        env.post(format!("{base}/restart")).send().await.0,
        StatusCode::OK
    );
    assert_eq!(env.state("web", id).await, "starting");
    env.report("h1", &m, "started").await;
    assert_eq!(
        env.post(format!("{base}/suspend")).send().await.0,
        StatusCode::OK
    );
    assert_eq!(env.state("web", id).await, "suspending");
    env.report("h1", &m, "suspended").await;
    let (status, started) = env.post(format!("{base}/start")).send().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started["previous_state"], "suspended");
    env.report("h1", &m, "started").await;
    let (status, _) = env
        .post(format!("{base}/stop"))
        .json(json!({"signal": "SIGTERM", "timeout": "5s"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.state("web", id).await, "stopping");
    let (status, body) = env
        .post(format!("{base}/stop"))
        .json(json!({"timeout": "soon"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    env.report("h1", &m, "stopped").await;
    assert_eq!(
        env.post(format!("{base}/cordon")).send().await.0,
        StatusCode::OK
    );
    assert_eq!(
        env.post(format!("{base}/uncordon")).send().await.0,
        StatusCode::OK
    );
    assert_eq!(env.delete(&base).send().await.0, StatusCode::OK);
    assert_eq!(env.state("web", id).await, "destroying");
    let (status, body) = env.post(format!("{base}/start")).send().await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert!(body["error"].as_str().unwrap().contains("destroying"));

    let (_, events) = env.get(format!("{base}/events")).send().await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for kind in [
        "launch", "start", "signal", "restart", "suspend", "stop", "cordon", "uncordon", "destroy",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn an_expired_lease_no_longer_blocks_anyone() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({})).await;
    let base = format!("/v1/apps/web/machines/{}", m["id"].as_str().unwrap());
    let (status, first) = env.post(format!("{base}/lease?ttl=1")).send().await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        env.post(format!("{base}/cordon")).send().await.0,
        StatusCode::CONFLICT
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let second = loop {
        let (status, body) = env.post(format!("{base}/lease?ttl=60")).send().await;
        if status == StatusCode::CREATED {
            break body;
        }
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the 1 s lease never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_ne!(
        second["data"]["nonce"], first["data"]["nonce"],
        "a fresh lease gets a fresh nonce"
    );
}
