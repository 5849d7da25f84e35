//! Regions: host indexes, mesh peers, load reports, autoscaling policies and the scaler.

mod common;

use std::time::Duration;

use aloft_api::{AppLoad, LoadReport};
use aloft_control::autoscale::scaler::{Action, ScalerOptions};
use axum::http::StatusCode;
use common::{env, reopen, Env};
use serde_json::{json, Value};

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "HxEREhMUFRYXGBkaGxwdHh8AAQIDBAUGBwgJCgsMDQ4=";

async fn register(env: &Env, body: Value) -> (StatusCode, Value) {
    let mut req = json!({"address": "127.0.0.1:1", "cpus": 4, "memory_mb": 4096});
    common::merge(&mut req, body);
    env.post("/v1/hosts").json(req).send().await
}

async fn index_of(env: &Env, body: Value) -> u64 {
    let (status, host) = register(env, body).await;
    assert_eq!(status, StatusCode::OK, "{host}");
    host["host_index"].as_u64().unwrap()
}

#[tokio::test]
async fn host_indexes_are_unique_stable_and_honour_free_hints() {
    let env = env().await;
    let a = index_of(&env, json!({"id": "a", "region": "ams"})).await;
    let b = index_of(&env, json!({"id": "b", "region": "syd"})).await;
    assert_ne!(a, b);
    assert!(a >= 1 && b >= 1);
    // Re-registering keeps the index, whatever hint comes with it.
    assert_eq!(
        index_of(&env, json!({"id": "a", "region": "ams", "host_index": 77})).await,
        a
    );
    // A free hint is honoured; a held one is not.
    assert_eq!(
        index_of(&env, json!({"id": "c", "region": "ams", "host_index": 40})).await,
        40
    );
    let d = index_of(&env, json!({"id": "d", "region": "ams", "host_index": b})).await;
    assert!(![a, b, 40].contains(&d), "held hint {b} gave {d}");
    // Fresh indexes go above every index handed out.
    assert!(d > 40, "{d}");

    // Out-of-range hints are refused with a message.
    let (status, body) = register(&env, json!({"id": "e", "region": "ams", "host_index": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Host index 0"),
        "{body}"
    );
    let (status, _) = register(
        &env,
        json!({"id": "e", "region": "ams", "host_index": 70000}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A control-plane restart keeps every index.
    let env = reopen(env, Duration::from_secs(15)).await;
    let (_, hosts) = env.get("/v1/hosts").send().await;
    let index = |id: &str| {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .unwrap()["host_index"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        (index("a"), index("b"), index("c"), index("d")),
        (a, b, 40, d)
    );
    assert_eq!(index_of(&env, json!({"id": "b", "region": "syd"})).await, b);
    let f = index_of(&env, json!({"id": "f", "region": "syd"})).await;
    assert!(f > d, "an index is never handed out twice: {f} after {d}");
}

#[tokio::test]
async fn mesh_peers_list_hosts_with_mesh_info() {
    let env = env().await;
    let (status, host) = register(
        &env,
        json!({"id": "m1", "region": "ams", "mesh": {"public_key": KEY_A, "endpoint": "10.0.0.1:51820"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{host}");
    assert_eq!(host["mesh"]["public_key"], KEY_A);
    index_of(
        &env,
        json!({"id": "m2", "region": "syd", "mesh": {"public_key": KEY_B, "endpoint": "10.0.0.2:51820"}}),
    )
    .await;
    index_of(&env, json!({"id": "plain", "region": "iad"})).await;

    // A join token only enrols; a host's credential reads the peers.
    let join = env.token(json!({"scope": "join"})).await;
    let (status, _) = env.get("/v1/mesh/peers").token(Some(&join)).send().await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let credential = host["credential"].as_str().unwrap().to_owned();
    let (status, peers) = env
        .get("/v1/mesh/peers")
        .token(Some(&credential))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{peers}");
    let peers = peers.as_array().unwrap();
    let ids: Vec<&str> = peers
        .iter()
        .map(|p| p["host_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m1", "m2"], "{peers:?}");
    assert_eq!(peers[1]["region"], "syd");
    assert_eq!(peers[1]["endpoint"], "10.0.0.2:51820");
    assert_eq!(peers[1]["status"], "ok");
    assert!(peers[1]["host_index"].as_u64().unwrap() >= 1);

    // Re-registering without mesh info takes the host out of the list.
    index_of(&env, json!({"id": "m2", "region": "syd"})).await;
    let (_, peers) = env.get("/v1/mesh/peers").send().await;
    assert_eq!(peers.as_array().unwrap().len(), 1, "{peers}");

    // Bad mesh info is refused with a message.
    for (mesh, what) in [
        (
            json!({"public_key": "not base64!", "endpoint": "10.0.0.3:51820"}),
            "public_key",
        ),
        (
            json!({"public_key": "AAEC", "endpoint": "10.0.0.3:51820"}),
            "public_key",
        ),
        (
            json!({"public_key": KEY_A, "endpoint": "nowhere"}),
            "endpoint",
        ),
    ] {
        let (status, body) =
            register(&env, json!({"id": "m3", "region": "ams", "mesh": mesh})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"].as_str().unwrap().contains(what), "{body}");
    }

    // Auth: no token, an app token.
    let (status, _) = env.get("/v1/mesh/peers").token(None).send().await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    env.app("meshy").await;
    let app_token = env.token(json!({"app": "meshy"})).await;
    let (status, _) = env
        .get("/v1/mesh/peers")
        .token(Some(&app_token))
        .send()
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn load_reports_need_a_host_token_and_show_per_region() {
    let env = env().await;
    env.app("web").await;
    env.host("h-ams", "ams", 4, 4096).await;
    let join = env.host_credential("h-syd", "syd").await;
    env.machine("web", json!({"region": "ams"})).await;
    let user = env.token(json!({"app": "web"})).await;
    let report =
        json!({"apps": [{"app": "web", "concurrency": 3, "requests": 10, "interval_ms": 2000}]});

    let (status, _) = env
        .post("/v1/hosts/h-syd/load")
        .token(None)
        .json(report.clone())
        .send()
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = env
        .post("/v1/hosts/h-syd/load")
        .token(Some(&user))
        .json(report.clone())
        .send()
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = env
        .post("/v1/hosts/h-ams/load")
        .token(Some(&join))
        .json(report.clone())
        .send()
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another host's load: {body}");
    let (status, body) = env
        .post("/v1/hosts/h-syd/load")
        .token(Some(&join))
        .json(json!({"apps": [{"app": "web", "concurrency": -1, "requests": 0, "interval_ms": 1}]}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("concurrency"),
        "{body}"
    );
    let (status, body) = env
        .post("/v1/hosts/h-syd/load")
        .token(Some(&join))
        .json(report)
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, load) = env.get("/v1/apps/web/load").token(Some(&user)).send().await;
    assert_eq!(status, StatusCode::OK, "{load}");
    let regions = load["regions"].as_array().unwrap();
    let syd = regions.iter().find(|r| r["region"] == "syd").unwrap();
    assert_eq!(syd["concurrency"], 3, "{load}");
    assert_eq!(syd["requests_per_second"], 5.0, "{load}");
    let ams = regions.iter().find(|r| r["region"] == "ams").unwrap();
    assert_eq!(
        (ams["started"].as_u64(), ams["concurrency"].as_u64()),
        (Some(1), Some(0)),
        "{load}"
    );

    let (status, platform) = env.get("/v1/platform/load").send().await;
    assert_eq!(status, StatusCode::OK, "{platform}");
    assert_eq!(platform.as_array().unwrap().len(), 2, "{platform}");
}

#[tokio::test]
async fn autoscale_policies_are_validated_and_scoped_to_the_app() {
    let env = env().await;
    env.app("web").await;
    env.app("other").await;
    env.host("h-syd", "syd", 4, 4096).await;
    let user = env.token(json!({"app": "web"})).await;
    let policy = json!({"regions": {"syd": {"min": 0, "max": 2, "target_concurrency": 1}}});

    let (status, body) = env
        .call(axum::http::Method::PUT, "/v1/apps/web/autoscale")
        .token(Some(&user))
        .json(policy.clone())
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, got) = env
        .get("/v1/apps/web/autoscale")
        .token(Some(&user))
        .send()
        .await;
    assert_eq!((status, &got), (StatusCode::OK, &policy));
    let (status, none) = env.get("/v1/apps/other/autoscale").send().await;
    assert_eq!((status, none), (StatusCode::OK, json!({"regions": {}})));

    let (status, _) = env
        .call(axum::http::Method::PUT, "/v1/apps/other/autoscale")
        .token(Some(&user))
        .json(policy.clone())
        .send()
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = env.get("/v1/apps/web/autoscale").token(None).send().await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = env.get("/v1/apps/ghost/autoscale").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for (bad, words) in [
        (
            json!({"regions": {"mars": {"min": 0, "max": 1, "target_concurrency": 1}}}),
            "mars",
        ),
        (
            json!({"regions": {"syd": {"min": 3, "max": 1, "target_concurrency": 1}}}),
            "min 3 is above max 1",
        ),
        (
            json!({"regions": {"syd": {"min": 0, "max": 1, "target_concurrency": 0}}}),
            "target_concurrency",
        ),
        (
            json!({"regions": {"syd": {"min": 0, "max": 5000, "target_concurrency": 1}}}),
            "limit",
        ),
        (
            json!({"regions": {"syd": {"min": 0, "max": 1}}}),
            "target_concurrency",
        ),
        (
            json!({"regions": {"syd": {"min": 0, "max": 1, "target_concurrency": 1, "x": 1}}}),
            "x",
        ),
    ] {
        let (status, body) = env
            .call(axum::http::Method::PUT, "/v1/apps/web/autoscale")
            .json(bad.clone())
            .send()
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(words),
            "{bad}: {body}"
        );
    }
    // Off: an empty policy.
    let (status, _) = env
        .call(axum::http::Method::PUT, "/v1/apps/web/autoscale")
        .json(json!({"regions": {}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = env.get("/v1/apps/web/autoscale").send().await;
    assert_eq!(got, json!({"regions": {}}));
}

/// Events of a machine recorded by the scaler.
async fn autoscale_events(env: &Env, id: &str) -> Vec<String> {
    let (_, events) = env
        .get(format!("/v1/apps/web/machines/{id}/events"))
        .send()
        .await;
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "autoscale")
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap(),
                e["status"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn the_scaler_follows_the_load_entering_a_region_within_bounds() {
    let env = env().await;
    env.app("web").await;
    env.host("h-ams", "ams", 8, 8192).await;
    env.host("h-syd", "syd", 8, 8192).await;
    let seed = env
        .machine("web", json!({"region": "ams", "config": {"env": {"PRIMARY_REGION": "ams"}, "metadata": {"fly_process_group": "app"}}}))
        .await;
    let (status, _) = env
        .call(axum::http::Method::PUT, "/v1/apps/web/autoscale")
        .json(json!({"regions": {"syd": {"min": 0, "max": 2, "target_concurrency": 1}}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    let control = env.server.control();
    let opts = ScalerOptions {
        interval: Duration::from_millis(10),
        scale_down_after: Duration::ZERO,
        destroy_after: Duration::from_secs(3600),
    };
    let load = |concurrency| LoadReport {
        apps: vec![AppLoad {
            app: "web".into(),
            concurrency,
            requests: 0,
            interval_ms: 2000,
        }],
    };

    // No load: nothing happens.
    assert!(control.autoscale().tick(&opts).is_empty());
    // Load entering at ams does not scale syd.
    control.autoscale().record_load("h-ams", load(5)).unwrap();
    assert!(control.autoscale().tick(&opts).is_empty());

    // Five in flight at syd with a target of 1 and a max of 2: two clones appear in syd.
    control.autoscale().record_load("h-syd", load(5)).unwrap();
    let done = control.autoscale().tick(&opts);
    assert_eq!(
        done.iter()
            .map(|(_, r, a)| (r.as_str(), a.clone()))
            .collect::<Vec<_>>(),
        vec![("syd", Action::Create), ("syd", Action::Create)]
    );
    let (_, list) = env.get("/v1/apps/web/machines?region=syd").send().await;
    let syd: Vec<Value> = list.as_array().unwrap().clone();
    assert_eq!(syd.len(), 2);
    for m in &syd {
        assert_eq!(m["config"]["image"], seed["config"]["image"]);
        assert_eq!(m["config"]["env"]["PRIMARY_REGION"], "ams");
        assert_eq!(m["state"], "starting");
        assert_eq!(
            autoscale_events(&env, m["id"].as_str().unwrap()).await,
            ["start:starting", "launch:created"]
        );
    }
    // Starting machines count: a second pass does not create more.
    assert!(control.autoscale().tick(&opts).is_empty());
    for m in &syd {
        let (status, body) = env.report("h-syd", m, "started").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, status_view) = env.get("/v1/apps/web/load").send().await;
    let region = status_view["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "syd")
        .unwrap()
        .clone();
    assert_eq!(
        (region["started"].as_u64(), region["desired"].as_u64()),
        (Some(2), Some(2)),
        "{status_view}"
    );

    // The load goes: after the (here zero) idle time both stop, never below min 0; the
    // machine in ams, outside the policy, is left alone.
    control.autoscale().record_load("h-syd", load(0)).unwrap();
    assert!(
        control.autoscale().tick(&opts).is_empty(),
        "the first quiet pass only starts the clock"
    );
    let done = control.autoscale().tick(&opts);
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done.iter()
            .all(|(_, r, a)| r == "syd" && matches!(a, Action::Stop(_))),
        "{done:?}"
    );
    for m in &syd {
        let id = m["id"].as_str().unwrap();
        assert_eq!(env.state("web", id).await, "stopping");
        assert!(autoscale_events(&env, id)
            .await
            .contains(&"stop:stopping".to_owned()));
        env.report("h-syd", m, "stopped").await;
    }
    assert_eq!(
        env.state("web", seed["id"].as_str().unwrap()).await,
        "starting"
    );

    // Load again: the stopped clones start before anything new is created.
    control.autoscale().record_load("h-syd", load(1)).unwrap();
    let done = control.autoscale().tick(&opts);
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(matches!(&done[0].2, Action::Start(_)), "{done:?}");

    // Stopped scaler-created machines above min are destroyed after the destroy time.
    let Action::Start(started) = done[0].2.clone() else {
        unreachable!()
    };
    let (_, m) = env
        .get(format!("/v1/apps/web/machines/{started}"))
        .send()
        .await;
    env.report("h-syd", &m, "started").await;
    control.autoscale().record_load("h-syd", load(0)).unwrap();
    let quick = ScalerOptions {
        destroy_after: Duration::ZERO,
        ..opts
    };
    let mut done = control.autoscale().tick(&quick);
    done.extend(control.autoscale().tick(&quick));
    let stopped: Vec<_> = done
        .iter()
        .filter(|(_, _, a)| matches!(a, Action::Stop(_)))
        .collect();
    let destroyed: Vec<_> = done
        .iter()
        .filter(|(_, _, a)| matches!(a, Action::Destroy(_)))
        .collect();
    assert_eq!((stopped.len(), destroyed.len()), (1, 1), "{done:?}");
    assert!(
        matches!(&destroyed[0].2, Action::Destroy(id) if *id != started),
        "{done:?}"
    );
    // The seed machine, which the scaler did not create, is never destroyed.
    assert!(
        done.iter().all(|(_, region, _)| region == "syd"),
        "{done:?}"
    );
}
