//! Hosts, placement, the watch stream, status reports, `wait`, and unreachable hosts.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{env, reopen, Lines};
use serde_json::json;

#[tokio::test]
async fn machines_spread_across_hosts_and_full_regions_are_refused_by_name() {
    let env = env().await;
    env.app("web").await;
    env.host("big", "ams", 4, 8192).await;
    env.host("small", "ams", 4, 2048).await;
    env.host("far", "syd", 1, 512).await;
    for _ in 0..4 {
        env.machine("web", json!({"region": "ams"})).await;
    }
    let (_, list) = env.get("/v1/hosts").send().await;
    let free = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .unwrap()["free_cpus"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(
        (free("big"), free("small")),
        (2, 2),
        "four machines alternate between the two hosts: {list}"
    );

    let (status, body) = env
        .post("/v1/apps/web/machines")
        .json(json!({"region": "syd", "config": {"image": "nginx", "guest": {"cpus": 1, "memory_mb": 1024}}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert!(
        body["error"].as_str().unwrap().contains("\"syd\""),
        "{body}"
    );

    let (_, regions) = env.get("/v1/platform/regions").send().await;
    assert_eq!(
        regions["Regions"],
        json!([
            {"code": "ams", "name": "Amsterdam, Netherlands", "free_cpus": 4, "free_memory_mb": 10240 - 1024, "hosts": 2},
            {"code": "syd", "name": "Sydney, Australia", "free_cpus": 1, "free_memory_mb": 512, "hosts": 1}
        ])
    );
    let m = env.machine("web", json!({})).await;
    assert_eq!(
        m["region"], "ams",
        "without a region, the app's region is used"
    );
}

#[tokio::test]
async fn watch_streams_assignments_then_live_changes_and_resumes_from_a_revision() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 4, 4096).await;
    let (status, body) = env.get("/v1/hosts/nope/watch").send().await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let m = env
        .machine("web", json!({"config": {"env": {"A": "1"}}}))
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let mut watch = Lines::open(env.get("/v1/hosts/h1/watch?since=0")).await;
    let first = watch.next().await;
    let assigned = &first["machine"];
    assert_eq!(assigned["id"], id.as_str());
    assert_eq!(assigned["app"], "web");
    assert_eq!(assigned["org"], "personal");
    assert_eq!(assigned["desired_state"], "started");
    assert_eq!(assigned["state"], "starting");
    assert_eq!(assigned["config"]["env"]["A"], "1");
    assert_eq!(assigned["instance_id"], m["instance_id"]);
    let rev1 = first["revision"].as_u64().unwrap();

    assert_eq!(env.report("h1", &m, "started").await.0, StatusCode::OK);
    let change = watch.next().await;
    assert_eq!(change["machine"]["state"], "started");
    let rev2 = change["revision"].as_u64().unwrap();
    assert!(rev2 > rev1);

    env.post(format!("/v1/apps/web/machines/{id}/stop"))
        .json(json!({"signal": "SIGTERM", "timeout": "7s"}))
        .send()
        .await;
    let stop = watch.next().await;
    assert_eq!(stop["machine"]["desired_state"], "stopped");
    assert_eq!(stop["machine"]["stop_signal"], "SIGTERM");
    assert_eq!(stop["machine"]["stop_timeout_secs"], 7);

    let mut resumed = Lines::open(env.get(format!("/v1/hosts/h1/watch?since={rev2}"))).await;
    let again = resumed.next().await;
    assert_eq!(
        again["revision"], stop["revision"],
        "resuming skips what was already seen"
    );
    assert_eq!(again["machine"]["desired_state"], "stopped");
}

#[tokio::test]
async fn agent_reports_drive_state_through_the_transition_function() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    env.host("h2", "ams", 2, 2048).await;
    let m = env.machine("web", json!({})).await;
    let id = m["id"].as_str().unwrap();
    let (_, placed) = env.get("/v1/hosts").send().await;
    let host = placed
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["free_cpus"] == 1)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = if host == "h1" { "h2" } else { "h1" };

    let (status, body) = env.report(other, &m, "started").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another host cannot report: {body}"
    );
    let (status, body) = env
        .post(format!("/v1/hosts/{host}/machines/{id}/status"))
        .json(json!({"instance_id": "01OLDINSTANCE0000000000000", "state": "started"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = env.report(&host, &m, "suspended").await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        body["error"],
        format!("Machine {id}: Machine cannot go from starting to suspended")
    );

    let (status, _) = env
        .post(format!("/v1/hosts/{host}/machines/{id}/status"))
        .json(json!({
            "instance_id": m["instance_id"], "state": "started",
            "event": {"type": "start", "status": "started", "message": "booted in 20ms"},
            "checks": [{"name": "alive", "status": "passing", "output": "200 OK"}]
        }))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, now) = env.get(format!("/v1/apps/web/machines/{id}")).send().await;
    assert_eq!(now["state"], "started");
    assert_eq!(now["checks"][0]["name"], "alive");
    assert_eq!(now["checks"][0]["status"], "passing");
    assert_eq!(now["events"][0]["source"], "flyd");
    assert_eq!(now["events"][0]["request"]["message"], "booted in 20ms");
    let (_, app) = env.get("/v1/apps/web").send().await;
    assert_eq!(app["status"], "deployed");

    let (status, _) = env
        .post(format!("/v1/hosts/{host}/machines/{id}/status"))
        .json(json!({"instance_id": m["instance_id"], "state": "stopped", "exit_code": 3}))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, events) = env
        .get(format!("/v1/apps/web/machines/{id}/events"))
        .send()
        .await;
    assert_eq!(events[0]["type"], "exit");
    assert_eq!(events[0]["request"]["exit_event"]["exit_code"], 3);

    let (status, body) = env
        .post(format!("/v1/hosts/{host}/machines/{id}/status"))
        .json(json!({"state": "started"}))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("instance_id"));

    env.delete(format!("/v1/apps/web/machines/{id}"))
        .send()
        .await;
    assert_eq!(env.report(&host, &m, "destroyed").await.0, StatusCode::OK);
    let (_, hosts) = env.get("/v1/hosts").send().await;
    assert!(
        hosts
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["free_cpus"] == 2),
        "destroyed machines free their host: {hosts}"
    );
}

#[tokio::test]
async fn wait_returns_when_the_agent_reports_the_state() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    let (router, request) = env
        .get(format!(
            "/v1/apps/web/machines/{id}/wait?state=started&timeout=60"
        ))
        .request();
    let waiter = tokio::spawn(async move {
        tower::ServiceExt::oneshot(router, request)
            .await
            .unwrap()
            .status()
    });
    // Let the waiter subscribe first, so the report is what wakes it.
    let control = env.server.control();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while control.listeners() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wait request never started listening"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        !waiter.is_finished(),
        "wait returned before the machine started"
    );
    assert_eq!(env.report("h1", &m, "started").await.0, StatusCode::OK);
    let status = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait returned")
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    let (status, body) = env
        .get(format!(
            "/v1/apps/web/machines/{id}/wait?state=started&instance_id={}",
            m["instance_id"].as_str().unwrap()
        ))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["state"], "started");
    assert_eq!(body["version"], m["instance_id"]);

    // Several states, repeated or as a comma list: the first one reached answers.
    for query in ["state=stopped&state=started", "state=stopped,started"] {
        let (status, body) = env
            .get(format!("/v1/apps/web/machines/{id}/wait?{query}&timeout=1"))
            .send()
            .await;
        assert_eq!(
            (status, &body["state"]),
            (StatusCode::OK, &json!("started"))
        );
    }
}

#[tokio::test]
async fn wait_times_out_with_408_and_refuses_bad_states() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env.machine("web", json!({})).await;
    let id = m["id"].as_str().unwrap();
    let (status, body) = env
        .get(format!(
            "/v1/apps/web/machines/{id}/wait?state=stopped&timeout=1"
        ))
        .send()
        .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert!(
        body["error"].as_str().unwrap().contains("stopped"),
        "{body}"
    );
    let (status, _) = env
        .get(format!("/v1/apps/web/machines/{id}/wait?state=starting"))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = env
        .get(format!("/v1/apps/web/machines/{id}/wait?timeout=forever"))
        .send()
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn silent_hosts_become_unreachable_and_force_destroy_does_not_wait_for_them() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let a = env.machine("web", json!({})).await;
    let b = env.machine("web", json!({"skip_launch": true})).await;
    let (_, host) = env.post("/v1/hosts/h1/heartbeat").send().await;
    assert_eq!(host["status"], "ok");
    assert_eq!(
        env.post("/v1/hosts/ghost/heartbeat").send().await.0,
        StatusCode::NOT_FOUND
    );

    // Reopened with a zero timeout, every host is silent for longer than allowed.
    let env = reopen(env, Duration::ZERO).await;
    let (_, got) = env
        .get(format!(
            "/v1/apps/web/machines/{}",
            a["id"].as_str().unwrap()
        ))
        .send()
        .await;
    assert_eq!(got["host_status"], "unreachable");
    let (_, regions) = env.get("/v1/platform/regions").send().await;
    assert_eq!(regions["Regions"], json!([]));
    let (status, body) = env
        .post("/v1/apps/web/machines")
        .json(json!({"region": "ams", "config": {"image": "nginx"}}))
        .send()
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("No live host in region \"ams\""),
        "{body}"
    );

    let a_id = a["id"].as_str().unwrap();
    assert_eq!(
        env.delete(format!("/v1/apps/web/machines/{a_id}?force=true"))
            .send()
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(env.state("web", a_id).await, "destroyed");
    let b_id = b["id"].as_str().unwrap();
    assert_eq!(
        env.delete(format!("/v1/apps/web/machines/{b_id}"))
            .send()
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        env.state("web", b_id).await,
        "destroying",
        "without force the agent must confirm"
    );
}

#[tokio::test]
async fn host_registration_validates_its_input() {
    let env = env().await;
    for (body, needle) in [
        (
            json!({"id": "", "region": "ams", "address": "a:1", "cpus": 1, "memory_mb": 512}),
            "Host id",
        ),
        (
            json!({"id": "h", "region": "ams", "address": "a:1", "cpus": 0, "memory_mb": 512}),
            "cpus",
        ),
        (
            json!({"id": "h", "region": "ams", "address": "a:1", "cpus": 1, "memory_mb": 1}),
            "memory_mb",
        ),
        (
            json!({"id": "h", "region": "a m s", "address": "a:1", "cpus": 1, "memory_mb": 512}),
            "Region",
        ),
        (
            json!({"id": "h", "region": "ams", "cpus": 1, "memory_mb": 512}),
            "address",
        ),
    ] {
        let (status, answer) = env.post("/v1/hosts").json(body).send().await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_failed_machine_restarts_on_start_and_auto_destroy_is_recorded() {
    let env = env().await;
    env.app("web").await;
    env.host("h1", "ams", 2, 2048).await;
    let m = env
        .machine("web", json!({"config": {"auto_destroy": true}}))
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let mut watch = Lines::open(env.get("/v1/hosts/h1/watch?since=0")).await;
    let before = watch.next().await["machine"]["restart_seq"]
        .as_u64()
        .unwrap();
    assert_eq!(env.report("h1", &m, "failed").await.0, StatusCode::OK);
    watch.next().await;
    let (status, started) = env
        .post(format!("/v1/apps/web/machines/{id}/start"))
        .send()
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started["previous_state"], "failed");
    let order = watch.next().await;
    assert_eq!(order["machine"]["state"], "starting");
    assert!(
        order["machine"]["restart_seq"].as_u64().unwrap() > before,
        "the agent needs a new sequence number to retry a failed machine: {order}"
    );

    assert_eq!(env.report("h1", &m, "started").await.0, StatusCode::OK);
    assert_eq!(env.report("h1", &m, "stopped").await.0, StatusCode::OK);
    let (status, body) = env.report("h1", &m, "destroyed").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(env.state("web", &id).await, "destroyed");
    let (_, events) = env
        .get(format!("/v1/apps/web/machines/{id}/events"))
        .send()
        .await;
    let statuses: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["destroyed", "destroying"]);
    let (_, hosts) = env.get("/v1/hosts").send().await;
    assert_eq!(hosts[0]["free_cpus"], 2);
}
