//! End-to-end: demand-driven regional scaling. An app runs one machine in `ams`; its policy
//! lets `syd` scale from 0 to 2. Slow requests held through the `syd` agent's edge make the
//! control plane create a machine in `syd` and start it; once the load is gone and the idle
//! time (short here, a server option) has passed, the autoscaler stops it again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aloft_testkit::edge::http_status;
use aloft_testkit::{busybox_layout, ok, skopeo_push, wait_for, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// A busybox httpd whose `/cgi-bin/slow` answers after two seconds.
const ENTRY: &str = "/bin/busybox mkdir -p /www/cgi-bin \
    && printf '#!/bin/sh\\nsleep 2\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nslow from %%s\\\\n\" \"$FLY_REGION\"\\n' > /www/cgi-bin/slow \
    && /bin/busybox chmod 755 /www/cgi-bin/slow \
    && exec /bin/busybox httpd -f -p 8080 -h /www";

fn machines(server: &Server, app: &str) -> Vec<Value> {
    let out = ok(server.cli(&["machine", "list", "--app", app, "--json"]));
    serde_json::from_str(&out).unwrap()
}

fn in_region<'a>(list: &'a [Value], region: &str) -> Vec<&'a Value> {
    list.iter().filter(|m| m["region"] == region).collect()
}

#[test]
fn load_entering_a_region_creates_machines_there_and_idle_ones_stop() {
    let server = Server::start_with(bin(), &["--autoscale-idle", "3"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _ams = Agent::start(bin(), &server, "ams", &dir.path().join("ams")).unwrap();
    let mut syd = Agent::start(bin(), &server, "syd", &dir.path().join("syd")).unwrap();
    let syd_edge = syd.edge_addr().expect("the agent prints its edge address");

    let app = "slow";
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "1", "hello\n", &["/bin/sh", "-c", ENTRY]).unwrap();
    let registry = server.url.trim_start_matches("http://");
    let image = format!("{registry}/{app}/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();
    ok(server.cli(&["apps", "create", app]));
    let seed: Value = serde_json::from_str(&ok(server.cli(&[
        "machine",
        "run",
        &image,
        "--app",
        app,
        "--region",
        "ams",
        "--port",
        "80:8080/tcp:http",
        "--env",
        "PRIMARY_REGION=ams",
        "--json",
    ])))
    .unwrap();
    assert_eq!(seed["state"], "started", "{seed}");

    // Bad bounds are usage errors; good ones show in `scale show`.
    let out = server.cli(&[
        "scale", "auto", "--app", app, "--region", "syd", "--min", "3", "--max", "1", "--target",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(
        aloft_testkit::stderr(&out).contains("min 3 is above max 1"),
        "{}",
        aloft_testkit::stderr(&out)
    );
    ok(server.cli(&[
        "scale", "auto", "--app", app, "--region", "syd", "--min", "0", "--max", "2", "--target",
        "1",
    ]));
    let show: Value =
        serde_json::from_str(&ok(server.cli(&["scale", "show", "--app", app, "--json"]))).unwrap();
    let syd_line = show
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["region"] == "syd")
        .cloned();
    assert_eq!(
        syd_line.map(|l| l["autoscale"].clone()),
        Some(serde_json::json!({"min": 0, "max": 2, "target_concurrency": 1})),
        "{show}"
    );
    assert!(in_region(&machines(&server, app), "syd").is_empty());

    // Three clients keep slow requests in flight through the syd edge.
    let stop = Arc::new(AtomicBool::new(false));
    let host = format!("{app}.localhost");
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, host) = (stop.clone(), host.clone());
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(http_status(
                        syd_edge,
                        &host,
                        "/cgi-bin/slow",
                        Duration::from_secs(60),
                    ));
                }
                answers
            })
        })
        .collect();

    let started = wait_for("a started machine in syd", Duration::from_secs(120), || {
        let list = machines(&server, app);
        in_region(&list, "syd")
            .into_iter()
            .find(|m| m["state"] == "started")
            .cloned()
    })
    .unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["config"]["image"], seed["config"]["image"]);
    // The status shows the load entering syd while it lasts.
    let status: Value =
        serde_json::from_str(&ok(server.cli(&["status", "--app", app, "--json"]))).unwrap();
    let region = status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "syd")
        .cloned()
        .unwrap();
    assert!(region["started"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(region["scaling"]["max"], 2, "{status}");
    let regions: Value =
        serde_json::from_str(&ok(server.cli(&["regions", "list", "--json"]))).unwrap();
    assert!(
        regions
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["code"] == "syd" && r["started"].as_u64() >= Some(1)),
        "{regions}"
    );

    stop.store(true, Ordering::Relaxed);
    let answers: Vec<Option<u16>> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        answers.contains(&Some(200)),
        "the slow requests were served: {answers:?}"
    );

    // No load: after the idle time the autoscaler stops what it started; never more than max.
    wait_for("the syd machines to stop", Duration::from_secs(90), || {
        let list = machines(&server, app);
        let here = in_region(&list, "syd");
        assert!(here.len() <= 2, "max 2 in syd: {here:?}");
        here.iter().all(|m| m["state"] == "stopped").then_some(())
    })
    .unwrap();
    let events: Value = serde_json::from_str(&ok(
        server.cli(&["machine", "status", &id, "--app", app, "--json"])
    ))
    .unwrap();
    let by_scaler: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "autoscale")
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for kind in ["launch", "start", "stop"] {
        assert!(
            by_scaler.iter().any(|k| k == kind),
            "no {kind} by the autoscaler: {events}"
        );
    }
    // The machine in ams, outside the policy, kept running.
    assert_eq!(
        server.machine_json(app, seed["id"].as_str().unwrap())["state"],
        "started"
    );

    // A pinned count wins: `scale count --region syd` takes syd out of the policy.
    let out = ok(server.cli(&[
        "scale", "count", "0", "--region", "syd", "--app", app, "--yes",
    ]));
    assert!(out.contains("Autoscaling is now off in syd"), "{out}");
    let show: Value =
        serde_json::from_str(&ok(server.cli(&["scale", "show", "--app", app, "--json"]))).unwrap();
    assert!(
        show.as_array()
            .unwrap()
            .iter()
            .all(|l| l.get("autoscale").is_none()),
        "{show}"
    );
}
