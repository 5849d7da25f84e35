//! The route table edges follow: who may read it, what it holds, and its watch stream.

mod common;

use axum::http::StatusCode;
use common::{env, Lines};
use serde_json::{json, Value};

fn app<'a>(table: &'a Value, name: &str) -> &'a Value {
    table["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == name)
        .unwrap_or_else(|| panic!("no app {name} in {table}"))
}

#[tokio::test]
async fn host_credentials_and_admin_tokens_read_the_table_and_app_and_join_tokens_do_not() {
    let env = env().await;
    env.app("web").await;
    let only_enrols = env.token(json!({"scope": "join"})).await;
    let (status, _) = env.get("/v1/routes").token(Some(&only_enrols)).send().await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a join token reads the route table"
    );
    let join = env.host_credential("h1", "ams").await;
    let app_token = env.token(json!({"app": "web"})).await;
    for path in ["/v1/routes", "/v1/routes/watch?since=0"] {
        let (status, body) = env.get(path).token(Some(&app_token)).send().await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("host credential or the admin"),
            "{body}"
        );
        let (status, _) = env.get(path).token(None).send().await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, table) = env.get("/v1/routes").token(Some(&join)).send().await;
    assert_eq!(status, StatusCode::OK, "{table}");
    assert_eq!(app(&table, "web")["machines"], json!([]));
    let mut watch = Lines::open(env.get("/v1/routes/watch?since=0").token(Some(&join))).await;
    assert_eq!(watch.next().await["table"], table);
}

#[tokio::test]
async fn the_table_lists_services_machines_hosts_and_health_at_the_store_revision() {
    let env = env().await;
    env.app("web").await;
    env.app("api").await;
    env.host("h1", "ams", 4, 4096).await;
    let m = env
        .machine(
            "web",
            json!({"region": "ams", "config": {"services": [{
                "protocol": "tcp", "internal_port": 8080, "autostop": "stop", "min_machines_running": 1,
                "ports": [{"port": 80, "handlers": ["http"]}],
                "concurrency": {"type": "requests", "soft_limit": 3, "hard_limit": 6}}]}}),
        )
        .await;
    let id = m["id"].as_str().unwrap();
    let (_, table) = env.get("/v1/routes").send().await;
    let web = app(&table, "web");
    assert_eq!(web["org"], "personal");
    assert_eq!(web["hostnames"], json!([]));
    assert_eq!(
        web["services"],
        json!([{"protocol": "tcp", "internal_port": 8080,
                "ports": [{"port": 80, "handlers": ["http"], "force_https": false}],
                "concurrency": {"kind": "requests", "soft_limit": 3, "hard_limit": 6},
                "autostart": true, "autostop": "stop", "min_machines_running": 1, "h2_backend": false}])
    );
    let machine = &web["machines"][0];
    assert_eq!(machine["id"], id);
    assert_eq!(machine["host_id"], "h1");
    assert_eq!(machine["region"], "ams");
    assert_eq!(machine["address"], m["private_ip"]);
    assert_eq!(machine["state"], m["state"]);
    assert_eq!(
        (&machine["healthy"], &machine["cordoned"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(app(&table, "api")["machines"], json!([]));

    // A failing check makes the machine unhealthy; cordoning shows too.
    let (_, current) = env.get(format!("/v1/apps/web/machines/{id}")).send().await;
    let (status, body) = env
        .post(format!("/v1/hosts/h1/machines/{id}/status"))
        .json(json!({"instance_id": current["instance_id"], "state": "started"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Check results alone never change the state (a stop may be on its way to the agent).
    let (status, body) = env
        .post(format!("/v1/hosts/h1/machines/{id}/status"))
        .json(
            json!({"instance_id": current["instance_id"], "state": "started",
                     "checks": [{"name": "alive", "status": "critical"}]}),
        )
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = env
        .post(format!("/v1/apps/web/machines/{id}/cordon"))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, after) = env.get("/v1/routes").send().await;
    let machine = &app(&after, "web")["machines"][0];
    assert_eq!(machine["state"], "started");
    assert_eq!(
        (&machine["healthy"], &machine["cordoned"]),
        (&json!(false), &json!(true))
    );
    assert!(after["revision"].as_u64() > table["revision"].as_u64());
}

#[tokio::test]
async fn the_watch_sends_a_full_table_on_change_and_resumes_from_a_revision() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 4, 4096).await;
    let mut watch = Lines::open(env.get("/v1/routes/watch?since=0")).await;
    let first = watch.next().await;
    let revision = first["revision"].as_u64().unwrap();
    assert_eq!(first["table"]["revision"], revision);

    let m = env.machine("web", json!({"region": "ams"})).await;
    let next = watch.next().await;
    assert!(next["revision"].as_u64().unwrap() > revision, "{next}");
    assert_eq!(app(&next["table"], "web")["machines"][0]["id"], m["id"]);

    // Resuming at the current revision sends nothing until the next change.
    let current = next["revision"].as_u64().unwrap();
    let mut resumed = Lines::open(env.get(format!("/v1/routes/watch?since={current}"))).await;
    env.app("api").await;
    let line = resumed.next().await;
    assert!(line["revision"].as_u64().unwrap() > current, "{line}");
    app(&line["table"], "api");
}

#[tokio::test]
async fn edges_wake_and_idle_machines_with_host_credentials_and_app_tokens_cannot() {
    let env = env().await;
    env.app("web").await;
    let join = env.host_credential("h1", "ams").await;
    let app_token = env.token(json!({"app": "web"})).await;
    let m = env.machine("web", json!({"region": "ams"})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(env.report("h1", &m, "started").await.0, StatusCode::OK);

    let idle = json!({"app": "web", "machine_id": id, "mode": "stop"});
    for path in ["/v1/routes/idle", "/v1/routes/wake"] {
        let (status, body) = env
            .post(path)
            .token(Some(&app_token))
            .json(idle.clone())
            .send()
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    let (status, body) = env
        .post("/v1/routes/idle")
        .token(Some(&join))
        .json(idle)
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(env.report("h1", &m, "stopped").await.0, StatusCode::OK);
    assert_eq!(env.state("web", &id).await, "stopped");

    // A wake starts the machine and answers once the agent reports it started.
    let control = env.server.control();
    let before = control.listeners();
    let (router, request) = env
        .post("/v1/routes/wake")
        .token(Some(&join))
        .json(json!({"app": "web", "machine_id": id, "timeout": 10}))
        .request();
    let waker =
        tokio::spawn(async move { tower::ServiceExt::oneshot(router, request).await.unwrap() });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while control.listeners() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wake never waited"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(env.state("web", &id).await, "starting");
    assert!(
        !waker.is_finished(),
        "the wake answered before the machine started"
    );
    assert_eq!(env.report("h1", &m, "started").await.0, StatusCode::OK);
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), waker)
        .await
        .expect("the wake answered")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let (status, body) = env
        .post("/v1/routes/wake")
        .token(Some(&join))
        .json(json!({"app": "web", "machine_id": "nope"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
