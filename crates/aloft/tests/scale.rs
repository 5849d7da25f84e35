//! End-to-end: `aloft scale count`, `scale memory` and `scale show` against a real server and
//! a real agent running busybox machines with runc.

use std::path::Path;

use aloft_testkit::{busybox_layout, ok, skopeo_push, stderr, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// The app's live machines, oldest first.
fn machines(server: &Server, app: &str) -> Vec<Value> {
    let list: Value =
        serde_json::from_str(&ok(server.cli(&["machine", "list", "--app", app, "--json"])))
            .unwrap();
    let mut live: Vec<Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] != "destroyed" && m["state"] != "destroying")
        .cloned()
        .collect();
    live.sort_by_key(|m| m["created_at"].as_str().unwrap_or_default().to_owned());
    live
}

fn ids(list: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = list
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn scale_count_up_and_down_keeps_the_oldest_and_memory_resizes_every_machine() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start_with(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        &["--cpus", "8", "--memory-mb", "8192"],
    )
    .unwrap();
    let layout = dir.path().join("layout");
    busybox_layout(
        &layout,
        "1",
        "scaled\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/web/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();
    ok(server.cli(&["apps", "create", "web"]));
    let first: Value = serde_json::from_str(&ok(server.cli(&[
        "machine", "run", &image, "--app", "web", "--region", "ams", "--json",
    ])))
    .unwrap();
    let first_id = first["id"].as_str().unwrap().to_owned();

    // 1 → 3: two clones of the first machine, both started when the command returns.
    let up: Value = serde_json::from_str(&ok(server.cli(&[
        "scale", "count", "3", "--app", "web", "--region", "ams", "--json",
    ])))
    .unwrap();
    assert_eq!(up[0]["before"], 1, "{up}");
    assert_eq!(up[0]["after"], 3, "{up}");
    assert_eq!(up[0]["created"].as_array().unwrap().len(), 2, "{up}");
    let three = machines(&server, "web");
    assert_eq!(three.len(), 3);
    for m in &three {
        assert_eq!(m["state"], "started", "{m}");
        assert_eq!(m["region"], "ams");
        assert_eq!(m["config"]["image"], first["config"]["image"]);
    }

    // 3 → 1 (region from the existing machines): the newest go, the first survives.
    let down = ok(server.cli(&["scale", "count", "1", "--app", "web", "--yes"]));
    assert!(down.contains("2 destroyed"), "{down}");
    assert_eq!(ids(&machines(&server, "web")), vec![first_id.clone()]);

    // 1 → 2, then every machine gets 512 MB and runs again with it.
    ok(server.cli(&["scale", "count", "2", "--app", "web"]));
    let before = machines(&server, "web");
    assert_eq!(before.len(), 2);
    let out = ok(server.cli(&["scale", "memory", "512", "--app", "web"]));
    assert!(out.contains("Scaled 2 machine(s)"), "{out}");
    let after = machines(&server, "web");
    assert_eq!(ids(&after), ids(&before));
    for m in &after {
        assert_eq!(m["config"]["guest"]["memory_mb"], 512, "{m}");
        assert_eq!(m["state"], "started", "{m}");
        let old = before.iter().find(|b| b["id"] == m["id"]).unwrap();
        assert_ne!(m["instance_id"], old["instance_id"], "{m}");
    }
    let show: Value =
        serde_json::from_str(&ok(server.cli(&["scale", "show", "--app", "web", "--json"])))
            .unwrap();
    let lines = show.as_array().unwrap();
    assert_eq!(lines.len(), 1, "{show}");
    assert_eq!(lines[0]["count"], 2);
    assert_eq!(lines[0]["memory_mb"], 512);
    assert_eq!(lines[0]["process_group"], "app");
    assert_eq!(lines[0]["region"], "ams");

    // Absurd counts and sizes are usage errors that change nothing.
    for bad in [
        &["scale", "count", "-1", "--app", "web"][..],
        &["scale", "count", "1001", "--app", "web"],
        &["scale", "vm", "huge-cpu-99x", "--app", "web"],
        &["scale", "memory", "lots", "--app", "web"],
    ] {
        let out = server.cli(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
    assert_eq!(machines(&server, "web").len(), 2);
}
