//! End-to-end tests of `aloft server` and the CLI, against the real binary.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use aloft_testkit::{ok, stderr, stdout, Server};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// A tiny blocking HTTP client over std, so the tests speak raw JSON like Fly's docs do.
fn http(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    use std::io::{Read as _, Write as _};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).expect("server reachable");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\n{auth}content-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text[9..12].parse().unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, value)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn join_host(server: &Server, id: &str, region: &str) {
    let (status, body) = http(
        "POST",
        &format!("{}/v1/hosts", server.url),
        Some(&server.token),
        Some(
            &json!({"id": id, "region": region, "address": "127.0.0.1:1", "cpus": 4, "memory_mb": 8192}),
        ),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn first_start_writes_a_private_admin_token_and_every_call_needs_it() {
    let mut server = Server::start(bin()).unwrap();
    let out = server.proc.output();
    assert!(
        out.contains(&format!("admin token: {}", server.token)),
        "{out}"
    );
    let mode = std::fs::metadata(server.data_dir.join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let apps = format!("{}/v1/apps", server.url);
    assert_eq!(http("GET", &apps, None, None).0, 401);
    assert_eq!(http("GET", &apps, Some("not-a-token"), None).0, 401);
    let (status, body) = http("GET", &apps, Some(&server.token), None);
    assert_eq!(status, 200, "{body}");

    // A restart does not mint or print a new token.
    server.crash_and_restart().unwrap();
    assert!(!server.proc.output().contains("admin token:"));
    assert_eq!(http("GET", &apps, Some(&server.token), None).0, 200);
}

#[test]
fn fly_docs_bodies_work_and_state_survives_kill_9() {
    let mut server = Server::start(bin()).unwrap();
    join_host(&server, "h1", "ams");
    // The app and machine bodies from Fly's Machines API reference.
    let (status, body) = http(
        "POST",
        &format!("{}/v1/apps", server.url),
        Some(&server.token),
        Some(&json!({"app_name": "my-app-name", "org_slug": "personal"})),
    );
    assert_eq!(status, 201, "{body}");
    let create = json!({
        "name": "quirky-machine",
        "region": "ams",
        "skip_launch": true,
        "config": {
            "image": "flyio/fastify-functions",
            "env": {"APP_ENV": "production"},
            "services": [{
                "ports": [{"port": 443, "handlers": ["tls", "http"]}, {"port": 80, "handlers": ["http"]}],
                "protocol": "tcp",
                "internal_port": 8080
            }],
            "checks": {"httpget": {"type": "http", "port": 8080, "method": "GET", "path": "/", "interval": "15s", "timeout": "10s"}},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
            "some_future_field": {"kept": [1, 2, 3]}
        }
    });
    let (status, machine) = http(
        "POST",
        &format!("{}/v1/apps/my-app-name/machines", server.url),
        Some(&server.token),
        Some(&create),
    );
    assert_eq!(status, 200, "{machine}");
    let id = machine["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 14);
    assert_eq!(machine["name"], "quirky-machine");
    assert_eq!(machine["state"], "created");
    assert_eq!(machine["region"], "ams");
    assert_eq!(
        machine["config"]["some_future_field"],
        json!({"kept": [1, 2, 3]})
    );
    assert_eq!(
        machine["config"]["services"][0]["ports"][0]["handlers"],
        json!(["tls", "http"])
    );

    server.crash_and_restart().unwrap();
    let (status, again) = http(
        "GET",
        &format!("{}/v1/apps/my-app-name/machines/{id}", server.url),
        Some(&server.token),
        None,
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["config"], machine["config"]);
    assert_eq!(again["instance_id"], machine["instance_id"]);
}

#[test]
fn bad_input_is_a_4xx_with_a_message() {
    let server = Server::start(bin()).unwrap();
    join_host(&server, "h1", "ams");
    let t = Some(server.token.as_str());
    let (status, body) = http(
        "POST",
        &format!("{}/v1/apps", server.url),
        t,
        Some(&json!({"app_name": "ok-app"})),
    );
    assert_eq!(status, 201, "{body}");
    let machines = format!("{}/v1/apps/ok-app/machines", server.url);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"config": {"image": "x"}, "region": "zzz"}), "zzz"),
        (
            json!({"config": {"image": "UPPER CASE::bad"}, "region": "ams"}),
            "image",
        ),
        (
            json!({"config": {"image": "x", "guest": {"cpus": 0, "memory_mb": 256}}, "region": "ams"}),
            "cpus",
        ),
        (
            json!({"config": {"image": "x", "guest": {"cpus": 1, "memory_mb": 99999999}}, "region": "ams"}),
            "memory",
        ),
        (
            json!({"config": {"image": "x", "guest": {"cpus": "many"}}, "region": "ams"}),
            "cpus",
        ),
    ];
    for (body, needle) in cases {
        let (status, answer) = http("POST", &machines, t, Some(&body));
        assert!((400..500).contains(&status), "{body} -> {status} {answer}");
        let msg = answer["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            msg.contains(needle),
            "{body} -> {answer} should mention {needle}"
        );
    }
    let (status, answer) = http(
        "GET",
        &format!("{}/v1/apps/nope/machines", server.url),
        t,
        None,
    );
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("nope"));
    // Nothing half-written: the app still has no machines.
    let (_, list) = http("GET", &machines, t, None);
    assert_eq!(list, json!([]));
}

#[test]
fn cli_verbs_and_app_scoped_tokens() {
    let server = Server::start(bin()).unwrap();
    join_host(&server, "h1", "ams");
    ok(server.cli(&["apps", "create", "alpha"]));
    ok(server.cli(&["apps", "create", "beta"]));
    let list = ok(server.cli(&["apps", "list"]));
    assert!(list.contains("alpha") && list.contains("beta"), "{list}");

    let run = ok(server.cli(&[
        "machine",
        "run",
        "registry.example/alpha:1",
        "--app",
        "alpha",
        "--region",
        "ams",
        "--skip-launch",
        "--env",
        "A=1",
        "--json",
    ]));
    let machine: Value = serde_json::from_str(&run).unwrap();
    let id = machine["id"].as_str().unwrap().to_string();
    assert_eq!(machine["config"]["env"]["A"], "1");
    let listed = ok(server.cli(&["machine", "list", "--app", "alpha"]));
    assert!(listed.contains(&id), "{listed}");
    let status = ok(server.cli(&["machine", "status", &id, "--app", "alpha"]));
    assert!(status.contains("created"), "{status}");

    let token = ok(server.cli(&["tokens", "create", "--app", "alpha"]))
        .trim()
        .to_string();
    assert!(server
        .cli_as(&token, &["machine", "list", "--app", "alpha"])
        .status
        .success());
    let denied = server.cli_as(&token, &["machine", "list", "--app", "beta"]);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    assert!(stderr(&denied).contains("beta"), "{}", stderr(&denied));
    let bad = server.cli_as("garbage", &["apps", "list"]);
    assert_eq!(bad.status.code(), Some(3));

    // The host here has no agent behind it, so the machine waits in `destroying` for one.
    ok(server.cli(&["machine", "destroy", &id, "--app", "alpha", "--force"]));
    let status = ok(server.cli(&["machine", "status", &id, "--app", "alpha"]));
    assert!(status.contains("destroying"), "{status}");
    let refused = server.cli(&["apps", "destroy", "beta"]);
    assert_eq!(refused.status.code(), Some(2));
    ok(server.cli(&["apps", "destroy", "beta", "--yes"]));
    assert!(!ok(server.cli(&["apps", "list"])).contains("beta"));
}

#[test]
fn openapi_document_is_served() {
    let server = Server::start(bin()).unwrap();
    let (status, doc) = http(
        "GET",
        &format!("{}/v1/openapi.json", server.url),
        Some(&server.token),
        None,
    );
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/apps",
        "/v1/apps/{app_name}/machines",
        "/v1/apps/{app_name}/machines/{machine_id}/wait",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
}

#[test]
fn auth_login_saves_the_url_and_token_for_later_commands() {
    let server = Server::start(bin()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let config_s = config.to_string_lossy().to_string();
    let env = [("ALOFT_CONFIG", config_s.as_str())];
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let bad = aloft_testkit::cli(
        bin(),
        &[
            "auth",
            "login",
            "--url",
            &server.url,
            "--token-file",
            &wrong.to_string_lossy(),
        ],
        &env,
    );
    assert_eq!(bad.status.code(), Some(3), "{}", stderr(&bad));
    assert!(!config.exists(), "a refused token is not saved");
    let good_file = dir.path().join("token");
    std::fs::write(&good_file, &server.token).unwrap();
    let good = aloft_testkit::cli(
        bin(),
        &[
            "auth",
            "login",
            "--url",
            &server.url,
            "--token-file",
            &good_file.to_string_lossy(),
        ],
        &env,
    );
    assert!(good.status.success(), "{}", stderr(&good));
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let created = aloft_testkit::cli(bin(), &["apps", "create", "saved"], &env);
    assert!(created.status.success(), "{}", stderr(&created));
    let listed = aloft_testkit::cli(bin(), &["apps", "list"], &env);
    assert!(stdout(&listed).contains("saved"), "{}", stdout(&listed));
}
