//! End-to-end: `aloft launch`, `deploy`, `releases`, `rollback`, `status` and `secrets` against
//! a real server and a real agent running busybox images with runc.

use std::path::Path;
use std::time::Duration;

use aloft_testkit::app::{machine_page, wait_machine_page};
use aloft_testkit::{busybox_layout, ok, skopeo_push, stderr, stdout, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// Waits until the app's only live machine serves a page containing `text`.
fn wait_page(server: &Server, app: &str, text: &str) {
    wait_machine_page(server, app, text, Duration::from_secs(30));
}

fn httpd() -> Vec<String> {
    ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
        .map(str::to_owned)
        .to_vec()
}

fn layout(dir: &Path, name: &str, page: &str, entrypoint: &[String]) -> std::path::PathBuf {
    let path = dir.join(name);
    let entry: Vec<&str> = entrypoint.iter().map(String::as_str).collect();
    busybox_layout(&path, "1", page, &entry).unwrap();
    path
}

fn releases(server: &Server, dir: &Path) -> Vec<(u64, String, String)> {
    let list: Value =
        serde_json::from_str(&ok(server.cli_in(dir, &["releases", "--json"]))).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_u64().unwrap(),
                r["status"].as_str().unwrap().to_owned(),
                r["image"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn launch_deploy_fail_with_rollback_and_rollback_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &tmp.path().join("agent")).unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let v1 = layout(tmp.path(), "v1", "page one\n", &httpd());
    let v2 = layout(tmp.path(), "v2", "page two\n", &httpd());
    let bad = layout(
        tmp.path(),
        "bad",
        "never served\n",
        &["/bin/sh", "-c", "exit 1"].map(str::to_owned),
    );
    let v2_ref = format!("{registry}/web/busybox:2");
    let bad_ref = format!("{registry}/web/busybox:bad");
    skopeo_push(&v2, "1", &v2_ref, &server.token).unwrap();
    skopeo_push(&bad, "1", &bad_ref, &server.token).unwrap();

    // launch: a four-line aloft.toml and a running machine, from a local OCI layout.
    let app_dir = tmp.path().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let v1_src = format!("{}:1", v1.display());
    let out = ok(server.cli_in(
        &app_dir,
        &[
            "launch", "--name", "web", "--region", "ams", "--image", &v1_src,
        ],
    ));
    assert!(out.contains("Release v1"), "{out}");
    let toml = std::fs::read_to_string(app_dir.join("aloft.toml")).unwrap();
    assert_eq!(
        toml.lines().filter(|l| !l.trim().is_empty()).count(),
        4,
        "{toml}"
    );
    wait_page(&server, "web", "page one");
    let first = server.machine_list("web", false);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["state"], "started");
    let id = first[0]["id"].as_str().unwrap().to_owned();
    let refused = server.cli_in(&app_dir, &["launch", "--name", "web2", "--no-deploy"]);
    assert!(
        !refused.status.success(),
        "launch does not overwrite aloft.toml"
    );

    // A rolling deploy of a group of one surges: a new machine runs the new image, and the old
    // one is destroyed once the new one is healthy.
    let out = ok(server.cli_in(&app_dir, &["deploy", "--image", &v2_ref]));
    assert!(
        out.contains(&format!("destroyed old machine {id}")),
        "{out}"
    );
    wait_page(&server, "web", "page two");
    let after = server.machine_list("web", false);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0]["id"], id.as_str());
    assert_pinned(&after[0], &v2_ref);
    let list = releases(&server, &app_dir);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!((list[0].0, list[0].1.as_str()), (2, "succeeded"));
    assert_eq!((list[1].0, list[1].1.as_str()), (1, "succeeded"));
    assert!(list[1].2.contains("/web:deployment-"), "{list:?}");

    // An image that exits at once fails the release and rolls the machine back by itself.
    let failed = server.cli_in(&app_dir, &["deploy", "--image", &bad_ref]);
    assert!(!failed.status.success(), "{}", stdout(&failed));
    let err = stderr(&failed);
    assert!(
        err.contains("Release v3 failed") && err.contains("exited"),
        "{err}"
    );
    assert!(err.contains("rolled back 1 machine"), "{err}");
    let list = releases(&server, &app_dir);
    assert_eq!((list[0].0, list[0].1.as_str()), (3, "failed"));
    assert_pinned(&server.machine_list("web", false)[0], &v2_ref);
    wait_page(&server, "web", "page two");

    // rollback goes back to the release before the current one (v1) as a new release.
    let out = ok(server.cli_in(&app_dir, &["rollback"]));
    assert!(out.contains("Release v4"), "{out}");
    wait_page(&server, "web", "page one");
    let status: Value =
        serde_json::from_str(&ok(server.cli_in(&app_dir, &["status", "--json"]))).unwrap();
    assert_eq!(status["release"]["version"], 4, "{status}");
    assert_eq!(status["release"]["description"], "rollback to v1");
    assert_eq!(status["machines"][0]["state"], "started", "{status}");
    assert_eq!(status["machines"][0]["region"], "ams");
}

#[test]
fn secrets_reach_the_machine_env_and_never_the_store_in_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &tmp.path().join("agent")).unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let script =
        "echo \"greeting=$GREETING\" > /www/index.html; exec /bin/busybox httpd -f -p 8080 -h /www";
    let image = layout(
        tmp.path(),
        "env",
        "",
        &["/bin/sh", "-c", script].map(str::to_owned),
    );
    let image_ref = format!("{registry}/sec/busybox:1");
    skopeo_push(&image, "1", &image_ref, &server.token).unwrap();
    let app_dir = tmp.path().join("sec");
    std::fs::create_dir_all(&app_dir).unwrap();
    ok(server.cli_in(
        &app_dir,
        &[
            "launch", "--name", "sec", "--region", "ams", "--image", &image_ref,
        ],
    ));
    wait_page(&server, "sec", "greeting=\n");

    let value = "hunter2-in-the-env";
    let out = ok(server.cli_in(&app_dir, &["secrets", "set", &format!("GREETING={value}")]));
    assert!(out.contains("Release v2"), "set redeploys: {out}");
    wait_page(&server, "sec", &format!("greeting={value}"));

    let list = ok(server.cli_in(&app_dir, &["secrets", "list", "--json"]));
    assert!(!list.contains(value), "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "GREETING");
    assert_eq!(list[0]["digest"].as_str().unwrap().len(), 16);

    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&server.data_dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("aloft.db") {
            bytes.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    assert!(!bytes.is_empty());
    assert!(
        !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
        "the secret is in the store in clear"
    );

    // --stage stores without restarting; the machine keeps the old value.
    ok(server.cli_in(&app_dir, &["secrets", "unset", "GREETING", "--stage"]));
    let page = {
        let ip = server.machine_list("sec", false)[0]["private_ip"]
            .as_str()
            .unwrap()
            .to_owned();
        machine_page(&ip).unwrap_or_default()
    };
    assert!(page.contains(value), "{page}");
}

#[test]
fn a_deploy_whose_http_check_fails_rolls_back_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &tmp.path().join("agent")).unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let good = layout(tmp.path(), "good", "healthy page\n", &httpd());
    let deaf = layout(
        tmp.path(),
        "deaf",
        "",
        &["/bin/busybox", "sleep", "3600"].map(str::to_owned),
    );
    let good_ref = format!("{registry}/chk/busybox:good");
    let deaf_ref = format!("{registry}/chk/busybox:deaf");
    skopeo_push(&good, "1", &good_ref, &server.token).unwrap();
    skopeo_push(&deaf, "1", &deaf_ref, &server.token).unwrap();
    let app_dir = tmp.path().join("chk");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("aloft.toml"),
        "app = \"chk\"\nprimary_region = \"ams\"\n[http_service]\ninternal_port = 8080\n\
         [checks.web]\ntype = \"http\"\nport = 8080\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
    )
    .unwrap();
    ok(server.cli(&["apps", "create", "chk"]));
    ok(server.cli_in(&app_dir, &["deploy", "--image", &good_ref]));
    let status: Value =
        serde_json::from_str(&ok(server.cli_in(&app_dir, &["status", "--json"]))).unwrap();
    assert_eq!(
        status["machines"][0]["checks"][0]["status"], "passing",
        "{status}"
    );

    // The new machine never answers: its check stays critical past wait_timeout.
    let failed = server.cli_in(
        &app_dir,
        &["deploy", "--image", &deaf_ref, "--wait-timeout", "4s"],
    );
    assert!(!failed.status.success(), "{}", stdout(&failed));
    let err = stderr(&failed);
    assert!(
        err.contains("Release v2 failed") && err.contains("check web is critical"),
        "{err}"
    );
    let list = releases(&server, &app_dir);
    assert_eq!((list[0].0, list[0].1.as_str()), (2, "failed"));
    assert_pinned(&server.machine_list("chk", false)[0], &good_ref);
    wait_page(&server, "chk", "healthy page");
}

/// The machine runs `reference` pinned to the digest its tag named when it was created.
fn assert_pinned(machine: &serde_json::Value, reference: &str) {
    let digest = machine["image_ref"]["digest"].as_str().unwrap_or_default();
    assert!(digest.starts_with("sha256:"), "{machine}");
    assert_eq!(
        machine["config"]["image"],
        format!("{reference}@{digest}"),
        "{machine}"
    );
}
