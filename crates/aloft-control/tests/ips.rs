//! Dedicated app addresses: allocated from the server's pools (lowest free first), listed,
//! shown in the route table (and sent on the watch at once), released, refused with a clear
//! status, scoped to app tokens, and freed when their app is deleted.

mod common;

use axum::http::StatusCode;
use common::{app_field, env, Lines};
use serde_json::{json, Value};

fn addresses(table: &Value, app: &str) -> Value {
    app_field(table, app, "addresses")
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn addresses_are_allocated_listed_routed_and_released() {
    let env = env().await;
    env.use_ip_pools(&["203.0.113.0/28", "2001:db8:1::/120", "198.51.100.0/24"]);
    env.app("web").await;
    env.app("api").await;
    let mut watch = Lines::open(env.get("/v1/routes/watch?since=0")).await;
    let first = watch.next_table().await;
    assert_eq!(addresses(&first, "web"), json!([]));

    // The lowest free address of the first pool of each family (not the network address).
    let (status, v4) = env
        .post("/v1/apps/web/ips")
        .json(json!({"type": "v4"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v4}");
    assert_eq!(
        (&v4["address"], &v4["type"], &v4["app"]),
        (&json!("203.0.113.1"), &json!("v4"), &json!("web"))
    );
    assert!(v4["created_at"].as_str().unwrap().ends_with('Z'), "{v4}");
    let table = watch.next_table().await;
    assert!(table["revision"].as_u64() > first["revision"].as_u64());
    assert_eq!(addresses(&table, "web"), json!(["203.0.113.1"]));

    let (status, v6) = env
        .post("/v1/apps/web/ips")
        .json(json!({"type": "v6"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v6}");
    assert_eq!(v6["address"], "2001:db8:1::");
    let (_, other) = env
        .post("/v1/apps/api/ips")
        .json(json!({"type": "v4"}))
        .send()
        .await;
    assert_eq!(other["address"], "203.0.113.2");
    let (status, again) = env
        .post("/v1/apps/web/ips")
        .json(json!({"type": "v4"}))
        .send()
        .await;
    assert_eq!(
        (status, &again["address"]),
        (StatusCode::CREATED, &json!("203.0.113.3"))
    );

    // Listed by address, per app; the route table carries them too.
    let (status, list) = env.get("/v1/apps/web/ips").send().await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["203.0.113.1", "203.0.113.3", "2001:db8:1::"]);
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(
        addresses(&table, "web"),
        json!(["203.0.113.1", "203.0.113.3", "2001:db8:1::"])
    );
    assert_eq!(addresses(&table, "api"), json!(["203.0.113.2"]));

    // Released: gone from the list and, at once, from the watched table; the hole is reused.
    let (status, _) = env.delete("/v1/apps/web/ips/203.0.113.1").send().await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let table = loop {
        let table = watch.next_table().await;
        if addresses(&table, "web") == json!(["203.0.113.3", "2001:db8:1::"]) {
            break table;
        }
    };
    assert_eq!(addresses(&table, "api"), json!(["203.0.113.2"]));
    let (_, reused) = env
        .post("/v1/apps/api/ips")
        .json(json!({"type": "v4"}))
        .send()
        .await;
    assert_eq!(reused["address"], "203.0.113.1");
    // Releasing it again, or another app's address, is a 404; a malformed one a 400.
    for (path, want) in [
        ("/v1/apps/web/ips/203.0.113.1", StatusCode::NOT_FOUND),
        ("/v1/apps/web/ips/203.0.113.2", StatusCode::NOT_FOUND),
        ("/v1/apps/web/ips/203.0.113.999", StatusCode::BAD_REQUEST),
        ("/v1/apps/nope/ips/203.0.113.3", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = env.delete(path).send().await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(!error_of(&body).is_empty(), "{path}: {body}");
    }
    let (_, list) = env.get("/v1/apps/api/ips").send().await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test]
async fn allocation_errors_say_what_is_wrong() {
    let env = env().await;
    env.app("web").await;
    // No pool configured at all.
    let (status, body) = env
        .post("/v1/apps/web/ips")
        .json(json!({"type": "v4"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(error_of(&body).contains("aloft server --ip-pool"), "{body}");

    // Only a /30 of IPv4: two usable addresses, then the pool is full; no IPv6 pool.
    let env = common::env().await;
    env.use_ip_pools(&["192.0.2.0/30"]);
    env.app("web").await;
    for want in ["192.0.2.1", "192.0.2.2"] {
        let (status, body) = env
            .post("/v1/apps/web/ips")
            .json(json!({"type": "v4"}))
            .send()
            .await;
        assert_eq!(
            (status, &body["address"]),
            (StatusCode::CREATED, &json!(want))
        );
    }
    let (status, body) = env
        .post("/v1/apps/web/ips")
        .json(json!({"type": "v4"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error_of(&body).contains("No free IPv4 address left in the pool(s) 192.0.2.0/30"),
        "{body}"
    );
    let (status, body) = env
        .post("/v1/apps/web/ips")
        .json(json!({"type": "v6"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(error_of(&body).contains("IPv6"), "{body}");

    // Unknown app, unknown type.
    let (status, body) = env
        .post("/v1/apps/nope/ips")
        .json(json!({"type": "v4"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = env.get("/v1/apps/nope/ips").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = env
        .post("/v1/apps/web/ips")
        .json(json!({"type": "v5"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_of(&body).contains("type"), "{body}");
}

#[tokio::test]
async fn app_tokens_manage_their_own_apps_addresses_only() {
    let env = env().await;
    env.use_ip_pools(&["198.51.100.0/31"]);
    env.app("web").await;
    env.app("api").await;
    let web = env.app_token("web").await;
    let api = env.app_token("api").await;
    let join = env.token(json!({"scope": "join"})).await;

    for (token, want) in [
        (&api, StatusCode::FORBIDDEN),
        (&join, StatusCode::FORBIDDEN),
        (&web, StatusCode::CREATED),
    ] {
        let (status, body) = env
            .post("/v1/apps/web/ips")
            .token(Some(token))
            .json(json!({"type": "v4"}))
            .send()
            .await;
        assert_eq!(status, want, "{body}");
    }
    // A /31 hands out both of its addresses.
    let (_, body) = env.get("/v1/apps/web/ips").token(Some(&web)).send().await;
    assert_eq!(body[0]["address"], "198.51.100.0");
    for (token, want) in [
        (&api, StatusCode::FORBIDDEN),
        (&join, StatusCode::FORBIDDEN),
    ] {
        let (status, _) = env.get("/v1/apps/web/ips").token(Some(token)).send().await;
        assert_eq!(status, want);
        let (status, _) = env
            .delete("/v1/apps/web/ips/198.51.100.0")
            .token(Some(token))
            .send()
            .await;
        assert_eq!(status, want);
    }
    let (status, _) = env
        .delete("/v1/apps/web/ips/198.51.100.0")
        .token(Some(&web))
        .send()
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn deleting_an_app_frees_its_addresses() {
    let env = env().await;
    env.use_ip_pools(&["192.0.2.0/30"]);
    env.app("gone").await;
    env.app("kept").await;
    for app in ["gone", "kept"] {
        let (status, body) = env
            .post(format!("/v1/apps/{app}/ips"))
            .json(json!({"type": "v4"}))
            .send()
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, _) = env.delete("/v1/apps/gone").send().await;
    assert!(status.is_success(), "{status}");
    // A new app of the same name starts without them, and the freed address is handed out.
    env.app("gone").await;
    let (_, table) = env.get("/v1/routes").send().await;
    assert_eq!(addresses(&table, "gone"), json!([]));
    assert_eq!(addresses(&table, "kept"), json!(["192.0.2.2"]));
    let (_, body) = env
        .post("/v1/apps/kept/ips")
        .json(json!({"type": "v4"}))
        .send()
        .await;
    assert_eq!(body["address"], "192.0.2.1");
}
