//! End-to-end: the agent's edge routes `<app>.localhost` to the app's machine by the control
//! plane's route table, wakes a stopped machine for a request, keeps routing from its saved
//! table after a restart while the control plane is down, and never crosses apps.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use aloft_testkit::{busybox_layout, ok, skopeo_push, wait_for, Proc, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// `GET /` through the edge with `Host: host`: the status code and the body.
fn get(edge: SocketAddr, host: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&edge, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(40))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// An agent with its edge on a free loopback port, joined with a join token (as real hosts are).
struct EdgeAgent {
    proc: Proc,
    args: Vec<String>,
    edge: SocketAddr,
}

impl EdgeAgent {
    fn start(server: &Server, data_dir: &Path) -> EdgeAgent {
        let join = ok(server.cli(&["tokens", "create", "--join"]));
        let args: Vec<String> = [
            "agent",
            "--control",
            &server.url,
            "--token",
            join.trim(),
            "--region",
            "ams",
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--host-id",
            &format!("edge{}", std::process::id()),
            "--http",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (proc, edge) = Self::spawn(&args);
        EdgeAgent { proc, args, edge }
    }

    /// Starts the agent and reads its edge address (printed before it joins).
    fn spawn(args: &[String]) -> (Proc, SocketAddr) {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (proc, line) = Proc::spawn_until(
            "aloft agent",
            bin(),
            &refs,
            &[],
            "edge listening on http://",
        )
        .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (proc, addr)
    }

    fn wait_joined(&mut self) {
        self.proc
            .wait_line(" joined ", Duration::from_secs(30))
            .unwrap();
    }

    fn crash_and_restart(&mut self) {
        self.proc.kill9();
        let (proc, edge) = Self::spawn(&self.args);
        self.proc = proc;
        self.edge = edge;
    }
}

/// The state of `app`'s machine `id` in the edge's saved route table.
fn saved_state(data_dir: &Path, app: &str, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("edge/routes.json")).ok()?;
    let table: Value = serde_json::from_str(&text).ok()?;
    let apps = table["apps"].as_array()?;
    let app = apps.iter().find(|a| a["app"] == app)?;
    let m = app["machines"].as_array()?.iter().find(|m| m["id"] == id)?;
    Some(m["state"].as_str()?.to_string())
}

fn run_machine(server: &Server, dir: &Path, app: &str) -> String {
    let layout = dir.join(format!("layout-{app}"));
    let page = format!("hello from {app}\n");
    let entry = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"];
    busybox_layout(&layout, "1", &page, &entry).unwrap();
    let registry = server.url.trim_start_matches("http://");
    let image = format!("{registry}/{app}/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();
    ok(server.cli(&["apps", "create", app]));
    let run = ok(server.cli(&[
        "machine",
        "run",
        &image,
        "--app",
        app,
        "--region",
        "ams",
        "--port",
        "80:8080/tcp:http",
        "--json",
    ]));
    let m: Value = serde_json::from_str(&run).unwrap();
    assert_eq!(m["state"], "started", "{m}");
    m["id"].as_str().unwrap().to_string()
}

fn state(server: &Server, app: &str, id: &str) -> String {
    let out = server.cli(&["machine", "status", id, "--app", app, "--json"]);
    let m: Value = serde_json::from_str(&ok(out)).unwrap();
    m["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_edge_routes_by_host_wakes_stopped_machines_and_outlives_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(bin()).unwrap();
    let agent_dir = dir.path().join("agent");
    let mut agent = EdgeAgent::start(&server, &agent_dir);
    agent.wait_joined();

    let web = run_machine(&server, dir.path(), "web");
    let other = run_machine(&server, dir.path(), "other");

    // Each app answers at its own name, and only there.
    let edge = agent.edge;
    let (status, body) = wait_for(
        "web answers through the edge",
        Duration::from_secs(20),
        || get(edge, "web.localhost").filter(|(s, _)| *s == 200),
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from web\n"));
    let (status, body) = wait_for(
        "other answers through the edge",
        Duration::from_secs(20),
        || get(edge, "other.localhost:80").filter(|(s, _)| *s == 200),
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from other\n"));
    let (status, body) = get(edge, "nope.localhost").unwrap();
    assert_eq!(status, 404, "an unknown host reaches no machine: {body}");
    assert!(!body.contains("hello from"), "{body}");

    // A stopped machine is started by the first request, which succeeds.
    ok(server.cli(&["machine", "stop", &web, "--app", "web"]));
    wait_for("the edge sees web stopped", Duration::from_secs(30), || {
        (saved_state(&agent_dir, "web", &web).as_deref() == Some("stopped")).then_some(())
    })
    .unwrap();
    let (status, body) = get(edge, "web.localhost").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from web\n"),
        "autostart"
    );
    assert_eq!(state(&server, "web", &web), "started");

    // With the control plane down, a restarted agent still routes from its saved table.
    wait_for(
        "the edge saves web started",
        Duration::from_secs(30),
        || (saved_state(&agent_dir, "web", &web).as_deref() == Some("started")).then_some(()),
    )
    .unwrap();
    server.proc.kill9();
    agent.crash_and_restart();
    let (status, body) = get(agent.edge, "web.localhost").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from web\n"));
    let (status, body) = get(agent.edge, "other.localhost").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from other\n"));

    // Bring the control plane back and clean up.
    server.crash_and_restart().unwrap();
    agent.wait_joined();
    for (app, id) in [("web", &web), ("other", &other)] {
        ok(server.cli(&["machine", "destroy", id, "--app", app, "--force"]));
    }
    wait_for("machines destroyed", Duration::from_secs(30), || {
        (destroyed(&server, "web", &web) && destroyed(&server, "other", &other)).then_some(())
    })
    .unwrap();
}

fn destroyed(server: &Server, app: &str, id: &str) -> bool {
    let out = server.cli(&["machine", "list", "--app", app, "--all", "--json"]);
    let list: Value = serde_json::from_str(&ok(out)).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == id && m["state"] == "destroyed")
}
