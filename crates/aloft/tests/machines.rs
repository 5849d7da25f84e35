//! End-to-end: a real server, a real agent running machines with runc, a real image pushed
//! with skopeo into the built-in registry.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use aloft_testkit::{busybox_layout, ok, skopeo_push, stderr, wait_for, Agent, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// `GET /` on the machine's private address, port 8080.
fn get_page(ip: &str) -> Option<String> {
    let ip: IpAddr = ip.parse().ok()?;
    let addr = SocketAddr::new(ip, 8080);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nhost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The pids of the machine's httpd, found by the machine's cgroup.
fn pid_of_httpd(id: &str) -> Vec<String> {
    // busybox httpd forks a child per request; only the server itself (an httpd whose parent
    // is not an httpd) counts.
    let mut found: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        let cmd = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        if cgroup.contains(&format!("/aloft/{id}")) && cmd.contains("httpd") {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The fields after the parenthesised command: state, then the parent's pid.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .unwrap_or_default()
                .to_string();
            found.push((entry.file_name().to_string_lossy().to_string(), ppid));
        }
    }
    let servers: Vec<String> = found
        .iter()
        .filter(|(_, ppid)| !found.iter().any(|(pid, _)| pid == ppid))
        .map(|(pid, _)| pid.clone())
        .collect();
    servers
}

#[test]
fn a_machine_runs_from_a_pushed_image_and_survives_its_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let mut agent = Agent::start(bin(), &server, "ams", &dir.path().join("agent")).unwrap();

    let layout = dir.path().join("layout");
    busybox_layout(
        &layout,
        "1",
        "hello from busybox\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/web/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();

    ok(server.cli(&["apps", "create", "web"]));
    let run = ok(server.cli(&[
        "machine", "run", &image, "--app", "web", "--region", "ams", "--json",
    ]));
    let m: Value = serde_json::from_str(&run).unwrap();
    assert_eq!(m["state"], "started", "{m}");
    let id = m["id"].as_str().unwrap().to_string();
    let ip = m["private_ip"].as_str().unwrap().to_string();
    let log = dir
        .path()
        .join(format!("agent/machines/machines/{id}/log/app.log"));
    let page = wait_for(
        "the machine serves its page",
        Duration::from_secs(20),
        || get_page(&ip),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}; the machine's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(page.contains("hello from busybox"), "{page}");
    let before = pid_of_httpd(&id);
    assert_eq!(before.len(), 1, "one httpd runs: {before:?}");

    // Killing the agent does not stop the machine; a new agent adopts it without a restart.
    agent.crash_and_restart().unwrap();
    assert!(get_page(&ip).is_some_and(|p| p.contains("hello from busybox")));
    assert_eq!(pid_of_httpd(&id), before, "the same process still runs");
    assert_eq!(server.machine_json("web", &id)["state"], "started");

    // Stop and start through the CLI.
    ok(server.cli(&["machine", "stop", &id, "--app", "web"]));
    wait_for("stopped", Duration::from_secs(30), || {
        (server.machine_json("web", &id)["state"] == "stopped").then_some(())
    })
    .unwrap();
    assert!(pid_of_httpd(&id).is_empty(), "httpd ended");
    ok(server.cli(&["machine", "start", &id, "--app", "web"]));
    wait_for("started again", Duration::from_secs(30), || {
        (server.machine_json("web", &id)["state"] == "started").then_some(())
    })
    .unwrap();
    wait_for("serving again", Duration::from_secs(20), || get_page(&ip)).unwrap();

    // Destroy removes it from the host.
    ok(server.cli(&["machine", "destroy", &id, "--app", "web", "--force"]));
    wait_for("httpd gone", Duration::from_secs(30), || {
        pid_of_httpd(&id).is_empty().then_some(())
    })
    .unwrap();
    let events = machine_events(&server, "web", &id);
    assert!(events.iter().any(|e| e == "start"), "{events:?}");
}

fn machine_events(server: &Server, app: &str, id: &str) -> Vec<String> {
    let out = server.cli(&["machine", "list", "--app", app, "--all", "--json"]);
    let list: Value = serde_json::from_str(&ok(out)).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == id)
        .flat_map(|m| m["events"].as_array().cloned().unwrap_or_default())
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_machine_whose_image_is_missing_fails_fast_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &dir.path().join("agent")).unwrap();
    ok(server.cli(&["apps", "create", "broken"]));
    let registry = server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/broken/nothing:1");
    let out = server.cli(&[
        "machine", "run", &image, "--app", "broken", "--region", "ams",
    ]);
    assert!(!out.status.success());
    // The wait ends as soon as the machine fails, and says why (not a 408 after a minute).
    let err = stderr(&out);
    assert!(
        err.contains("failed") && err.contains("broken/nothing"),
        "{err}"
    );
    assert!(!err.contains("HTTP 408"), "{err}");
}

#[test]
fn a_host_whose_agent_is_gone_becomes_unreachable_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(bin(), &["--heartbeat-timeout", "2"]).unwrap();
    let mut agent = Agent::start(bin(), &server, "syd", &dir.path().join("agent")).unwrap();
    ok(server.cli(&["apps", "create", "far"]));
    let m: Value = serde_json::from_str(&ok(server.cli(&[
        "machine",
        "run",
        "registry.example/far:1",
        "--app",
        "far",
        "--region",
        "syd",
        "--skip-launch",
        "--json",
    ])))
    .unwrap();
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["host_status"], "ok");
    let regions = ok(server.cli(&["regions", "list"]));
    assert!(regions.contains("syd"), "{regions}");

    agent.proc.kill9();
    wait_for("host unreachable", Duration::from_secs(20), || {
        (server.machine_json("far", &id)["host_status"] == "unreachable").then_some(())
    })
    .unwrap();
    let regions = ok(server.cli(&["regions", "list"]));
    let syd = regions.lines().find(|l| l.starts_with("syd"));
    assert!(
        syd.is_some_and(|l| l.contains(" 0 (1 down)")),
        "a region without live hosts shows its host down: {regions}"
    );
    let refused = server.cli(&[
        "machine",
        "run",
        "registry.example/far:1",
        "--app",
        "far",
        "--region",
        "syd",
        "--skip-launch",
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("syd"), "{}", stderr(&refused));

    agent.crash_and_restart().unwrap();
    wait_for("host back", Duration::from_secs(20), || {
        (server.machine_json("far", &id)["host_status"] == "ok").then_some(())
    })
    .unwrap();
}

#[test]
fn images_are_pushed_listed_and_removed_per_app_with_app_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    ok(server.cli(&["apps", "create", "pics"]));
    ok(server.cli(&["apps", "create", "other"]));
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "1", "pics\n", &["/bin/busybox", "true"]).unwrap();
    let source = format!("{}:1", layout.display());

    let pushed = ok(server.cli(&["image", "push", &source, "--app", "pics", "--tag", "v1"]));
    assert!(pushed.contains("/pics:v1@sha256:"), "{pushed}");
    let listed = ok(server.cli(&["image", "list", "--app", "pics"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("pics") && l.contains("v1")),
        "{listed}"
    );

    // An app token reaches its own repositories only.
    let token = ok(server.cli(&["tokens", "create", "--app", "pics"]))
        .trim()
        .to_string();
    let registry = server.url.trim_start_matches("http://").to_string();
    skopeo_push(&layout, "1", &format!("{registry}/pics:v2"), &token).unwrap();
    let denied = skopeo_push(&layout, "1", &format!("{registry}/other:v1"), &token);
    assert!(denied.is_err(), "an app token cannot push to another app");

    ok(server.cli(&["image", "rm", "pics:v1"]));
    let listed = ok(server.cli(&["image", "list", "--app", "pics", "--json"]));
    let images: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(images["pics"], serde_json::json!(["v2"]), "{listed}");
    let missing = server.cli(&["image", "rm", "pics:nope"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("pics:nope"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn a_machine_runs_a_multi_layer_docker_image_through_its_whole_life() {
    let dir = tempfile::tempdir().unwrap();
    let Some(image) =
        aloft_testkit::multilayer_image(dir.path(), "layers", "served from four layers\n").unwrap()
    else {
        return;
    };
    assert!(image.layers >= 4, "{image:?}");
    let server = Server::start(bin()).unwrap();
    let mut agent = Agent::start(bin(), &server, "ams", &dir.path().join("agent")).unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let reference = format!("{registry}/layers/web:1");
    image.push(&reference, &server.token).unwrap();

    ok(server.cli(&["apps", "create", "layers"]));
    let m: Value = serde_json::from_str(&ok(server.cli(&[
        "machine", "run", &reference, "--app", "layers", "--region", "ams", "--json",
    ])))
    .unwrap();
    assert_eq!(m["state"], "started", "{m}");
    let id = m["id"].as_str().unwrap().to_string();
    let ip = m["private_ip"].as_str().unwrap().to_string();

    // The image's CMD serves the document root of one layer with the binary of another.
    let page = wait_for("the machine serves", Duration::from_secs(20), || {
        get_page(&ip)
    })
    .unwrap();
    assert!(page.contains("served from four layers"), "{page}");

    // httpd -v logs each answer on stderr; the machine's log shows it.
    wait_for("the request in the logs", Duration::from_secs(20), || {
        ok(server.cli(&["logs", "--app", "layers", "--machine", &id]))
            .contains("response:200")
            .then_some(())
    })
    .unwrap();

    // Exec sees files of every layer: applet links, /etc, the web root.
    let out = ok(server.cli(&[
        "machine",
        "exec",
        &id,
        "--app",
        "layers",
        "--",
        "sh",
        "-c",
        "ls /bin/httpd && cat /etc/passwd /www/index.html",
    ]));
    assert!(out.contains("/bin/httpd"), "{out}");
    assert!(out.contains("www-data:x:33"), "{out}");
    assert!(out.contains("served from four layers"), "{out}");

    // An agent killed with SIGKILL and restarted adopts the machine without restarting it.
    let before = pid_of_httpd(&id);
    assert_eq!(before.len(), 1, "one httpd runs: {before:?}");
    agent.crash_and_restart().unwrap();
    assert_eq!(pid_of_httpd(&id), before, "the same process still runs");
    assert!(get_page(&ip).is_some_and(|p| p.contains("four layers")));
    assert_eq!(server.machine_json("layers", &id)["state"], "started");

    // Stop, then start again.
    ok(server.cli(&["machine", "stop", &id, "--app", "layers"]));
    wait_for("stopped", Duration::from_secs(30), || {
        (server.machine_json("layers", &id)["state"] == "stopped").then_some(())
    })
    .unwrap();
    assert!(pid_of_httpd(&id).is_empty(), "httpd ended");
    ok(server.cli(&["machine", "start", &id, "--app", "layers"]));
    wait_for("started again", Duration::from_secs(30), || {
        (server.machine_json("layers", &id)["state"] == "started").then_some(())
    })
    .unwrap();
    let page = wait_for("serving again", Duration::from_secs(20), || get_page(&ip)).unwrap();
    assert!(page.contains("served from four layers"), "{page}");
}
