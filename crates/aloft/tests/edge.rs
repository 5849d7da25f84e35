//! End-to-end: the agent's edge routes `<app>.localhost` to the app's machine by the control
//! plane's route table, wakes a stopped machine for a request, keeps routing from its saved
//! table after a restart while the control plane is down, and never crosses apps.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use aloft_testkit::edge::{curl_https, free_port, http_get, run_web_machine, self_signed_cert};
use aloft_testkit::{busybox_layout, ok, skopeo_push, wait_for, Agent, Proc, Server};
use serde_json::Value;

/// Each control plane numbers its hosts from the same start, and a host's machine addresses
/// come from its number, so agents of different control planes on one box get the same machine
/// addresses. The tests here run one at a time so an edge never reaches another test's machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// An agent with its edge on a free loopback port, joined with a join token (as real hosts are).
struct EdgeAgent {
    proc: Proc,
    args: Vec<String>,
    edge: SocketAddr,
    data_dir: std::path::PathBuf,
}

/// The agent's machines go with it, also when a test fails.
impl Drop for EdgeAgent {
    fn drop(&mut self) {
        self.proc.kill9();
        aloft_testkit::remove_agent_machines(&self.data_dir);
    }
}

impl EdgeAgent {
    /// `host` names the agent's host (unique per test: hosts' networks are named after it).
    fn start(server: &Server, data_dir: &Path, host: &str) -> EdgeAgent {
        let join = ok(server.cli(&["tokens", "create", "--join"]));
        let token_file = aloft_testkit::write_token_file(data_dir, join.trim()).unwrap();
        let args: Vec<String> = [
            "agent",
            "--control",
            &server.url,
            "--token-file",
            &token_file.to_string_lossy(),
            "--region",
            "ams",
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--host-id",
            &format!("{host}{}", std::process::id()),
            "--http",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (proc, edge) = Self::spawn(&args);
        EdgeAgent {
            proc,
            args,
            edge,
            data_dir: data_dir.to_path_buf(),
        }
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

fn state(server: &Server, app: &str, id: &str) -> String {
    let out = server.cli(&["machine", "status", id, "--app", app, "--json"]);
    let m: Value = serde_json::from_str(&ok(out)).unwrap();
    m["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_edge_routes_by_host_wakes_stopped_machines_and_outlives_the_control_plane() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(bin()).unwrap();
    let agent_dir = dir.path().join("agent");
    let mut agent = EdgeAgent::start(&server, &agent_dir, "edge");
    agent.wait_joined();

    let web = run_web_machine(&server, dir.path(), "web");
    let other = run_web_machine(&server, dir.path(), "other");

    // Each app answers at its own name, and only there.
    let edge = agent.edge;
    let (status, body) = wait_for(
        "web answers through the edge",
        Duration::from_secs(20),
        || http_get(edge, "web.localhost").filter(|(s, _)| *s == 200),
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from web\n"));
    let (status, body) = wait_for(
        "other answers through the edge",
        Duration::from_secs(20),
        || http_get(edge, "other.localhost:80").filter(|(s, _)| *s == 200),
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from other\n"));
    let (status, body) = http_get(edge, "nope.localhost").unwrap();
    assert_eq!(status, 404, "an unknown host reaches no machine: {body}");
    assert!(!body.contains("hello from"), "{body}");

    // A stopped machine is started by the first request, which succeeds.
    ok(server.cli(&["machine", "stop", &web, "--app", "web"]));
    wait_for("the edge sees web stopped", Duration::from_secs(30), || {
        (saved_state(&agent_dir, "web", &web).as_deref() == Some("stopped")).then_some(())
    })
    .unwrap();
    let (status, body) = http_get(edge, "web.localhost").unwrap();
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
    let (status, body) = http_get(agent.edge, "web.localhost").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from web\n"));
    let (status, body) = http_get(agent.edge, "other.localhost").unwrap();
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

/// Sends `line` to the edge's TCP port and reads until `want` bytes came back.
fn tcp_exchange(port: u16, line: &str, want: usize) -> Option<(SocketAddr, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let me = s.local_addr().ok()?;
    s.write_all(line.as_bytes()).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some((me, String::from_utf8_lossy(&got).into_owned()))
}

#[test]
fn raw_tcp_proxy_protocol_and_https_verified_against_the_cluster_root() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // DNS proves web controls custom.example.com, so the name routes once added.
    let dns = aloft_testkit::dns::TestDns::start().unwrap();
    dns.set_txt("_aloft-challenge.custom.example.com", "app=web");
    let server = Server::start_with(bin(), &["--dns-resolver", &dns.addr]).unwrap();
    let mut agent = Agent::start_joining(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        "tls",
        &["--https", "127.0.0.1:0"],
    )
    .unwrap();
    let https = agent
        .edge_listen_addr("https")
        .expect("the edge serves HTTPS");

    // A TCP echo machine published twice: plain, and with the PROXY protocol (v1).
    let layout = dir.path().join("layout-echo");
    let entry = ["/bin/busybox", "nc", "-ll", "-p", "5000", "-e", "/bin/cat"];
    busybox_layout(&layout, "1", "", &entry).unwrap();
    let registry = server.url.trim_start_matches("http://");
    let image = format!("{registry}/echo/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();
    ok(server.cli(&["apps", "create", "echo"]));
    let (plain, proxied) = (free_port(), free_port());
    let run = ok(server.cli(&[
        "machine",
        "run",
        &image,
        "--app",
        "echo",
        "--region",
        "ams",
        "--port",
        &format!("{plain}:5000/tcp"),
        "--port",
        &format!("{proxied}:5000/tcp:proxy_proto"),
        "--json",
    ]));
    let m: Value = serde_json::from_str(&run).unwrap();
    let echo = m["id"].as_str().unwrap().to_string();

    let (_, answer) = wait_for(
        "the echo answers through the edge",
        Duration::from_secs(30),
        || tcp_exchange(plain, "hello\n", 6).filter(|(_, a)| a == "hello\n"),
    )
    .unwrap();
    assert_eq!(answer, "hello\n");
    let (me, answer) = tcp_exchange(proxied, "hello\n", 200).unwrap_or_else(|| panic!("no answer"));
    let header = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {proxied}\r\n", me.port());
    assert_eq!(
        answer,
        format!("{header}hello\n"),
        "the machine got the PROXY header first"
    );

    // HTTPS for <app>.localhost verifies against the root `aloft certs root` exports.
    let web = run_web_machine(&server, dir.path(), "web");
    let root = dir.path().join("root.pem");
    let out = ok(server.cli(&["certs", "root", "--output", &root.to_string_lossy()]));
    assert!(out.contains("root.pem"), "{out}");
    let pem = ok(server.cli(&["certs", "root"]));
    assert_eq!(std::fs::read_to_string(&root).unwrap(), pem);
    let answer = wait_for("HTTPS through the edge", Duration::from_secs(30), || {
        Some(curl_https(https, "web.localhost", &root)).filter(|a| a.code == 0)
    })
    .unwrap();
    assert_eq!((answer.code, answer.body.as_str()), (0, "hello from web\n"));
    let code = curl_https(https, "nope.localhost", &root).code;
    assert_ne!(code, 0, "a name without a certificate fails the handshake");

    // A user certificate is served by SNI once added, and no longer once removed.
    let (cert, key) = self_signed_cert(dir.path(), "custom.example.com");
    let (c, k) = (cert.to_string_lossy(), key.to_string_lossy());
    let err = server.cli(&[
        "certs",
        "add",
        "other.example.com",
        "--app",
        "web",
        "--cert",
        &c,
        "--key",
        &k,
    ]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("not valid for other.example.com"));
    ok(server.cli(&[
        "certs",
        "add",
        "custom.example.com",
        "--app",
        "web",
        "--cert",
        &c,
        "--key",
        &k,
    ]));
    assert!(ok(server.cli(&["certs", "list"])).contains("custom.example.com"));
    let answer = wait_for(
        "the edge serves the user certificate",
        Duration::from_secs(30),
        || Some(curl_https(https, "custom.example.com", &cert)).filter(|a| a.code == 0),
    )
    .unwrap();
    assert_eq!(
        answer.body, "hello from web\n",
        "the name routes to its app"
    );
    ok(server.cli(&["certs", "remove", "custom.example.com"]));
    wait_for(
        "the edge drops the user certificate",
        Duration::from_secs(30),
        || (curl_https(https, "custom.example.com", &cert).code != 0).then_some(()),
    )
    .unwrap();
    let err = server.cli(&["certs", "remove", "custom.example.com"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("No certificate is stored"));

    for (app, id) in [("echo", &echo), ("web", &web)] {
        ok(server.cli(&["machine", "destroy", id, "--app", app, "--force"]));
    }
    wait_for("machines destroyed", Duration::from_secs(30), || {
        (destroyed(&server, "echo", &echo) && destroyed(&server, "web", &web)).then_some(())
    })
    .unwrap();
    agent.proc.kill9();
}

#[test]
fn requests_keep_succeeding_while_one_of_two_machines_stops_and_starts() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let mut agent = EdgeAgent::start(&server, &dir.path().join("agent"), "load");
    agent.wait_joined();
    let first = run_web_machine(&server, dir.path(), "pair");
    let image = format!(
        "{}/pair/busybox:1",
        server.url.trim_start_matches("http://")
    );
    let run = ok(server.cli(&[
        "machine",
        "run",
        &image,
        "--app",
        "pair",
        "--region",
        "ams",
        "--port",
        "80:8080/tcp:http",
        "--json",
    ]));
    let second: Value = serde_json::from_str(&run).unwrap();
    let second = second["id"].as_str().unwrap().to_string();
    let edge = agent.edge;
    wait_for(
        "pair answers through the edge",
        Duration::from_secs(20),
        || http_get(edge, "pair.localhost").filter(|(s, _)| *s == 200),
    )
    .unwrap();

    // Load from another thread until told to stop; every answer must be a 200.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http_get(edge, "pair.localhost") {
                    Some((200, body)) if body == "hello from pair\n" => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }
    });
    for _ in 0..2 {
        ok(server.cli(&["machine", "stop", &first, "--app", "pair"]));
        wait_for("first stopped", Duration::from_secs(30), || {
            (state(&server, "pair", &first) == "stopped").then_some(())
        })
        .unwrap();
        ok(server.cli(&["machine", "start", &first, "--app", "pair"]));
        wait_for("first started", Duration::from_secs(30), || {
            (state(&server, "pair", &first) == "started").then_some(())
        })
        .unwrap();
    }
    // Let requests reach the restarted machine too before stopping the load.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        served as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(served > 20, "only {served} requests were made");

    for id in [&first, &second] {
        ok(server.cli(&["machine", "destroy", id, "--app", "pair", "--force"]));
    }
    wait_for("machines destroyed", Duration::from_secs(30), || {
        (destroyed(&server, "pair", &first) && destroyed(&server, "pair", &second)).then_some(())
    })
    .unwrap();
    agent.proc.kill9();
}
