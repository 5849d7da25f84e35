//! End-to-end: deploys under constant load through the agent's edge lose no request. Rolling
//! (in place, and surging a group of one), canary and bluegreen deploys, and deploys that fail
//! and roll back by themselves, against a real server, a real agent and its edge running
//! busybox images (one of them a multi-layer image built by Docker) with runc.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aloft_testkit::edge::http_get_within;
use aloft_testkit::{busybox_layout, ok, skopeo_push, stderr, stdout, wait_for, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

const CHECKS: &str = "[checks.web]\ntype = \"http\"\nport = 8080\npath = \"/\"\n\
                      interval = \"1s\"\ntimeout = \"1s\"\n";

/// A server, an agent with its edge, and an app directory.
struct Env {
    app: String,
    dir: PathBuf,
    edge: SocketAddr,
    registry: String,
    // Dropped in this order: the agent removes its machines before the server goes.
    _agent: Agent,
    server: Server,
    tmp: tempfile::TempDir,
}

impl Env {
    /// Starts everything and writes `aloft.toml` (the four lines, then `extra`) unless `extra`
    /// is `None` (for `aloft launch`).
    fn start(app: &str, extra: Option<&str>) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(bin()).unwrap();
        let mut agent = Agent::start_with(
            bin(),
            &server,
            "ams",
            &tmp.path().join("agent"),
            &["--cpus", "16"],
        )
        .unwrap();
        let edge = agent
            .edge_addr()
            .expect("the agent prints its edge address");
        let dir = tmp.path().join(app);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(extra) = extra {
            std::fs::write(
                dir.join("aloft.toml"),
                format!(
                    "app = \"{app}\"\nprimary_region = \"ams\"\n[http_service]\n\
                     internal_port = 8080\n{extra}"
                ),
            )
            .unwrap();
            ok(server.cli(&["apps", "create", app]));
        }
        let registry = server.url.trim_start_matches("http://").to_string();
        Env {
            app: app.to_owned(),
            dir,
            edge,
            registry,
            _agent: agent,
            server,
            tmp,
        }
    }

    /// Runs the CLI in the app directory.
    fn cli(&self, args: &[&str]) -> Output {
        self.server.cli_in(&self.dir, args)
    }

    /// A busybox httpd image serving `page` (or running `entrypoint`), pushed as `APP/web:TAG`.
    fn image(&self, tag: &str, page: &str, entrypoint: &[&str]) -> String {
        let layout = self.tmp.path().join(format!("layout-{tag}"));
        busybox_layout(&layout, "1", page, entrypoint).unwrap();
        let reference = format!("{}/{}/web:{tag}", self.registry, self.app);
        skopeo_push(&layout, "1", &reference, &self.server.token).unwrap();
        reference
    }

    fn httpd(&self, tag: &str, page: &str) -> String {
        self.image(
            tag,
            page,
            &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        )
    }

    /// The app's live machines: id → image as deployed (without the digest the control plane
    /// pinned its tag to).
    fn machines(&self) -> BTreeMap<String, String> {
        let list: Value = serde_json::from_str(&ok(self
            .server
            .cli(&["machine", "list", "--app", &self.app, "--json"])))
        .unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] != "destroyed" && m["state"] != "destroying")
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["config"]["image"]
                        .as_str()
                        .unwrap()
                        .split('@')
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }

    /// Waits until the edge answers with `text`.
    fn wait_edge(&self, text: &str) {
        let host = format!("{}.localhost", self.app);
        wait_for(
            &format!("the edge answers {text:?}"),
            Duration::from_secs(30),
            || get(self.edge, &host).filter(|(s, b)| *s == 200 && b.contains(text)),
        )
        .unwrap();
    }

    /// Starts constant load on the app through the edge.
    fn load(&self) -> Load {
        Load::start(self.edge, &format!("{}.localhost", self.app))
    }
}

/// `GET /` through the edge with `Host: host` (waiting at most 20 s): status and body.
fn get(edge: SocketAddr, host: &str) -> Option<(u16, String)> {
    http_get_within(edge, host, "/", Duration::from_secs(20))
}

/// What the load saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    failed: u64,
    /// The first few failures, for the assertion message.
    failures: Vec<String>,
    /// Each distinct body answered, with how many times.
    bodies: BTreeMap<String, u64>,
}

/// Two clients sending requests one after the other, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(edge: SocketAddr, host: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let threads = (0..2)
            .map(|_| {
                let (stop, seen, host) = (stop.clone(), seen.clone(), host.to_owned());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = get(edge, &host);
                        let mut seen = seen.lock().unwrap();
                        match answer {
                            Some((200, body)) => {
                                seen.ok += 1;
                                *seen.bodies.entry(body.trim().to_owned()).or_default() += 1;
                            }
                            other => {
                                seen.failed += 1;
                                if seen.failures.len() < 5 {
                                    seen.failures.push(format!("{other:?}"));
                                }
                            }
                        }
                        drop(seen);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            threads,
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Asserts the load lost nothing and saw every page of `pages`.
fn assert_no_failures(seen: &Seen, pages: &[&str]) {
    assert_eq!(seen.failed, 0, "failed requests: {seen:?}");
    assert!(seen.ok > 0, "{seen:?}");
    for page in pages {
        assert!(
            seen.bodies.keys().any(|b| b.contains(page)),
            "no answer said {page:?}: {seen:?}"
        );
    }
}

#[test]
fn launch_of_a_multi_layer_image_answers_and_a_group_of_one_deploys_without_a_gap() {
    let env = Env::start("layers", None);
    let Some(v1) = aloft_testkit::multilayer_image(env.tmp.path(), "v1", "layers one\n").unwrap()
    else {
        return;
    };
    let Some(v2) = aloft_testkit::multilayer_image(env.tmp.path(), "v2", "layers two\n").unwrap()
    else {
        return;
    };
    assert!(v1.layers >= 4, "{v1:?}");

    // launch: a four-line aloft.toml, a `docker save` archive, an app that answers at the edge.
    let archive = v1.archive.to_string_lossy().to_string();
    let out = ok(env.cli(&[
        "launch", "--name", "layers", "--region", "ams", "--image", &archive,
    ]));
    assert!(out.contains("Release v1"), "{out}");
    let toml = std::fs::read_to_string(env.dir.join("aloft.toml")).unwrap();
    assert_eq!(toml.lines().filter(|l| !l.trim().is_empty()).count(), 4);
    env.wait_edge("layers one");
    let before = env.machines();
    assert_eq!(before.len(), 1, "{before:?}");

    // One machine: the replacement starts and is healthy before the old one stops.
    let load = env.load();
    let archive = v2.archive.to_string_lossy().to_string();
    let out = ok(env.cli(&["deploy", "--image", &archive]));
    env.wait_edge("layers two");
    let seen = load.finish();
    assert_no_failures(&seen, &["layers one", "layers two"]);
    let after = env.machines();
    assert_eq!(after.len(), 1, "{after:?}\n{out}");
    assert!(
        after.keys().all(|id| !before.contains_key(id)),
        "a new machine replaced the old one: {before:?} {after:?}"
    );
}

#[test]
fn rolling_deploys_under_load_lose_no_request_even_when_a_check_fails() {
    let env = Env::start("roll", Some(CHECKS));
    let v1 = env.httpd("v1", "roll one\n");
    let v2 = env.httpd("v2", "roll two\n");
    let deaf = env.image("deaf", "", &["/bin/busybox", "sleep", "3600"]);
    ok(env.cli(&["deploy", "--image", &v1]));
    ok(env.cli(&["scale", "count", "3", "--yes"]));
    env.wait_edge("roll one");
    let before = env.machines();
    assert_eq!(before.len(), 3, "{before:?}");

    let load = env.load();
    ok(env.cli(&["deploy", "--image", &v2]));
    let seen = load.finish();
    assert_no_failures(&seen, &["roll one", "roll two"]);
    let after = env.machines();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "machines are updated in place"
    );
    assert!(after.values().all(|image| image == &v2), "{after:?}");

    // The new image never answers its check: the deploy rolls back by itself, and no request
    // reaches the machine while it is being replaced or rolled back.
    let load = env.load();
    let failed = env.cli(&["deploy", "--image", &deaf, "--wait-timeout", "4s"]);
    let seen = load.finish();
    assert!(!failed.status.success(), "{}", stdout(&failed));
    let err = stderr(&failed);
    assert!(
        err.contains("Release v3 failed") && err.contains("check web is critical"),
        "{err}"
    );
    assert!(err.contains("rolled back 1 machine"), "{err}");
    assert_no_failures(&seen, &["roll two"]);
    assert!(env.machines().values().all(|image| image == &v2));
}

#[test]
fn canary_deploys_one_machine_first_and_a_failed_canary_changes_nothing() {
    let env = Env::start("bird", Some(""));
    let v1 = env.httpd("v1", "bird one\n");
    let v2 = env.httpd("v2", "bird two\n");
    let crash = env.image("crash", "", &["/bin/sh", "-c", "exit 1"]);
    ok(env.cli(&["deploy", "--image", &v1]));
    ok(env.cli(&["scale", "count", "2", "--yes"]));
    env.wait_edge("bird one");
    let before = env.machines();

    // Bad input is refused before anything changes.
    let bad = env.cli(&["deploy", "--image", &v2, "--strategy", "yolo"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("\"yolo\""), "{}", stderr(&bad));
    let bad = env.cli(&["deploy", "--image", &v2, "--strategy", "bluegreen"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("bluegreen strategy needs at least one health check"),
        "{}",
        stderr(&bad)
    );

    let load = env.load();
    let out = ok(env.cli(&["deploy", "--image", &v2, "--strategy", "canary"]));
    let seen = load.finish();
    assert!(out.contains("canary"), "{out}");
    assert_no_failures(&seen, &["bird one", "bird two"]);
    let after = env.machines();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.values().all(|image| image == &v2), "{after:?}");
    assert_eq!(
        after.keys().filter(|id| before.contains_key(*id)).count(),
        1,
        "one machine was updated in place, the canary replaced the other: {before:?} {after:?}"
    );

    // A canary that exits at once is destroyed; the others were never touched.
    let settled = env.machines();
    let load = env.load();
    let failed = env.cli(&["deploy", "--image", &crash, "--strategy", "canary"]);
    let seen = load.finish();
    assert!(!failed.status.success(), "{}", stdout(&failed));
    let err = stderr(&failed);
    assert!(err.contains("exited"), "{err}");
    assert!(
        stdout(&failed).contains("destroyed new machine"),
        "{}",
        stdout(&failed)
    );
    assert_no_failures(&seen, &["bird two"]);
    assert_eq!(env.machines(), settled);
}

#[test]
fn bluegreen_cuts_over_to_a_healthy_green_set_and_a_failed_one_leaves_blue_serving() {
    let env = Env::start("sky", Some(CHECKS));
    let v1 = env.httpd("v1", "sky one\n");
    let v2 = env.httpd("v2", "sky two\n");
    let deaf = env.image("deaf", "", &["/bin/busybox", "sleep", "3600"]);
    ok(env.cli(&["deploy", "--image", &v1]));
    ok(env.cli(&["scale", "count", "2", "--yes"]));
    env.wait_edge("sky one");
    let blue = env.machines();

    let load = env.load();
    let out = ok(env.cli(&["deploy", "--image", &v2, "--strategy", "bluegreen"]));
    let seen = load.finish();
    assert!(out.contains("green set healthy"), "{out}");
    assert_no_failures(&seen, &["sky one", "sky two"]);
    let green = env.machines();
    assert_eq!(green.len(), 2, "{green:?}");
    assert!(
        green.keys().all(|id| !blue.contains_key(id)),
        "{blue:?} {green:?}"
    );
    assert!(green.values().all(|image| image == &v2), "{green:?}");

    let load = env.load();
    let failed = env.cli(&[
        "deploy",
        "--image",
        &deaf,
        "--strategy",
        "bluegreen",
        "--wait-timeout",
        "4s",
    ]);
    let seen = load.finish();
    assert!(!failed.status.success(), "{}", stdout(&failed));
    let err = stderr(&failed);
    assert!(err.contains("check web is critical"), "{err}");
    assert!(err.contains("rolled back 2 machine"), "{err}");
    assert_no_failures(&seen, &["sky two"]);
    assert_eq!(
        env.machines(),
        green,
        "the green set of the failed deploy is gone"
    );
}
