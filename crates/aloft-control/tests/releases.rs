//! Releases and secrets through the router (no sockets).

mod common;

use axum::http::{Method, StatusCode};
use common::env;
use serde_json::json;

fn release(image: &str) -> serde_json::Value {
    json!({
        "image": image,
        "configs": {"app": {"image": image, "metadata": {"fly_process_group": "app"}}},
        "strategy": "rolling",
        "description": "test"
    })
}

#[tokio::test]
async fn releases_are_numbered_per_app_and_their_status_changes() {
    let env = env().await;
    env.app("web").await;
    env.app("api").await;
    let (status, v1) = env
        .post("/v1/apps/web/releases")
        .json(release("registry.local/web:1"))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["status"], "pending");
    assert_eq!(v1["user"], "admin");
    assert_eq!(v1["configs"]["app"]["image"], "registry.local/web:1");
    let (_, v2) = env
        .post("/v1/apps/web/releases")
        .json(release("registry.local/web:2"))
        .send()
        .await;
    assert_eq!(v2["version"], 2);
    let (_, other) = env
        .post("/v1/apps/api/releases")
        .json(release("registry.local/api:1"))
        .send()
        .await;
    assert_eq!(other["version"], 1, "versions count per app");

    let (status, updated) = env
        .post("/v1/apps/web/releases/2/status")
        .json(json!({"status": "failed", "reason": "machine m1 exited"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["status"], "failed");
    assert_eq!(updated["reason"], "machine m1 exited");
    let (status, patched) = env
        .call(Method::PATCH, "/v1/apps/web/releases/1/status")
        .json(json!({"status": "succeeded"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");

    let (_, list) = env.get("/v1/apps/web/releases").send().await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["version"], 2, "newest first");
    assert_eq!(list[1]["status"], "succeeded");
    let (_, one) = env.get("/v1/apps/web/releases/1").send().await;
    assert_eq!(one["image"], "registry.local/web:1");
}

#[tokio::test]
async fn bad_release_input_is_a_4xx_naming_the_problem() {
    let env = env().await;
    env.app("web").await;
    let (status, body) = env.get("/v1/apps/web/releases/7").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("v7"), "{body}");
    let (status, _) = env.get("/v1/apps/nope/releases").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = env.get("/v1/apps/web/releases/latest").send().await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    env.post("/v1/apps/web/releases")
        .json(release("registry.local/web:1"))
        .send()
        .await;
    let (status, body) = env
        .post("/v1/apps/web/releases/1/status")
        .json(json!({"status": "done"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"done\""),
        "{body}"
    );
    let (status, _) = env
        .post("/v1/apps/web/releases/9/status")
        .json(json!({"status": "failed"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mut bad = release("registry.local/web:1");
    bad["strategy"] = json!("yolo");
    let (status, body) = env.post("/v1/apps/web/releases").json(bad).send().await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("yolo"), "{body}");
    let (status, body) = env
        .post("/v1/apps/web/releases")
        .json(json!({"image": "x:1", "configs": {}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = env
        .post("/v1/apps/web/releases")
        .json(json!({"image": "", "configs": {"app": {"image": "x"}}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn secrets_are_listed_by_digest_and_encrypted_at_rest() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = env().await;
    env.app("web").await;
    let value = "s3cr3t-value-for-the-store-test";
    let (status, list) = env
        .post("/v1/apps/web/secrets")
        .json(json!({"values": {"DATABASE_URL": value, "API_KEY": "k1"}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["version"], 1, "{list}");
    let secrets = &list["secrets"];
    assert_eq!(secrets.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(value), "{list}");
    assert_eq!(secrets[0]["name"], "API_KEY");
    let first_digest = secrets[1]["digest"].clone();

    let (_, list) = env
        .post("/v1/apps/web/secrets")
        .json(json!({"values": {"DATABASE_URL": "other"}}))
        .send()
        .await;
    assert_eq!(list["version"], 2, "each change is a version: {list}");
    assert_ne!(
        list["secrets"][1]["digest"], first_digest,
        "the digest follows the value"
    );

    let key = env.dir.path().join("secrets.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(env.dir.path()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("aloft.db") {
            bytes.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    assert!(!bytes.is_empty());
    for needle in [value, "other", "k1"] {
        let n = needle.as_bytes();
        assert!(
            !bytes.windows(n.len()).any(|w| w == n),
            "{needle} in the store"
        );
    }

    let (status, body) = env
        .post("/v1/apps/web/secrets/unset")
        .json(json!({"names": ["API_KEY", "MISSING"]}))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("MISSING"));
    let (_, list) = env.get("/v1/apps/web/secrets").send().await;
    assert_eq!(
        (list["secrets"].as_array().unwrap().len(), &list["version"]),
        (2, &json!(2)),
        "nothing removed: {list}"
    );
    let (status, list) = env
        .post("/v1/apps/web/secrets/unset")
        .json(json!({"names": ["API_KEY"]}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1);
    // Fly's one-secret delete, and a null value removing one.
    let (status, body) = env.delete("/v1/apps/web/secrets/DATABASE_URL").send().await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"version": 4})));
    let (status, _) = env.delete("/v1/apps/web/secrets/DATABASE_URL").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = env
        .post("/v1/apps/web/secrets/ONE")
        .json(json!({"value": "1"}))
        .send()
        .await;
    assert_eq!(
        (status, &body),
        (StatusCode::CREATED, &json!({"version": 5}))
    );
    let (_, list) = env
        .post("/v1/apps/web/secrets")
        .json(json!({"values": {"ONE": null}}))
        .send()
        .await;
    assert_eq!(list, json!({"secrets": [], "version": 6}));

    for bad in [
        json!({"values": {"FLY_REGION": "x"}}),
        json!({"values": {"a-b": "x"}}),
        json!({"values": {}}),
    ] {
        let (status, body) = env.post("/v1/apps/web/secrets").json(bad).send().await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (status, _) = env
        .post("/v1/apps/nope/secrets")
        .json(json!({"values": {"A": "b"}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn agents_receive_secrets_with_their_assignments() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 4, 4096).await;
    env.post("/v1/apps/web/secrets")
        .json(json!({"values": {"TOKEN": "abc"}}))
        .send()
        .await;
    env.machine("web", json!({"region": "ams"})).await;
    let events = env
        .server
        .control()
        .machines()
        .host_changes("h1", 0)
        .unwrap()
        .0;
    assert_eq!(events.len(), 1);
    let m = events[0].machine.as_ref().unwrap();
    assert_eq!(m.secrets.get("TOKEN").map(String::as_str), Some("abc"));
}

#[tokio::test]
async fn an_update_forgets_the_old_instances_check_results() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 4, 4096).await;
    let m = env.machine("web", json!({"region": "ams"})).await;
    let id = m["id"].as_str().unwrap();
    assert_eq!(env.report("h1", &m, "started").await.0, StatusCode::OK);
    let (status, body) = env
        .post(format!("/v1/hosts/h1/machines/{id}/status"))
        .json(json!({"instance_id": m["instance_id"], "state": "started",
                     "checks": [{"name": "web", "status": "passing", "output": "200"}]}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, before) = env.get(format!("/v1/apps/web/machines/{id}")).send().await;
    assert_eq!(before["checks"][0]["status"], "passing", "{before}");
    let (status, after) = env
        .post(format!("/v1/apps/web/machines/{id}"))
        .json(json!({"config": {"image": "nginx:1.26", "guest": {"cpus": 1, "memory_mb": 256}}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["checks"], json!([]), "{after}");
}

#[tokio::test]
async fn a_deleted_apps_releases_and_secrets_do_not_reach_a_new_app_of_the_same_name() {
    let env = env().await;
    env.app("web").await;
    env.post("/v1/apps/web/releases")
        .json(release("registry.local/web:1"))
        .send()
        .await;
    env.post("/v1/apps/web/secrets")
        .json(json!({"values": {"TOKEN": "abc"}}))
        .send()
        .await;
    let (status, body) = env.delete("/v1/apps/web").send().await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    env.app("web").await;
    let (_, secrets) = env.get("/v1/apps/web/secrets").send().await;
    assert_eq!(secrets["secrets"], json!([]));
    let (_, releases) = env.get("/v1/apps/web/releases").send().await;
    assert_eq!(releases, json!([]));
}
