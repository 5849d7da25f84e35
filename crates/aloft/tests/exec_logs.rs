//! End-to-end: exec into a machine, read and follow its logs, and see its health checks, with
//! a real server, a real agent running busybox under runc, and the CLI.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aloft_testkit::{busybox_layout, ok, skopeo_push, stderr, stdout, wait_for, Agent, Server};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// `POST path` with a JSON body on the server; returns status and body.
fn post_json(server: &Server, path: &str, body: &Value) -> (u16, String) {
    let addr = server.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        server.token,
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The CLI as a child with piped stdin and stdout.
fn spawn_cli(server: &Server, args: &[&str]) -> std::process::Child {
    Command::new(bin())
        .args(args)
        .env("ALOFT_API_URL", &server.url)
        .env("ALOFT_API_TOKEN", &server.token)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn exec_logs_and_checks_of_a_running_machine() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let _agent = Agent::start(bin(), &server, "ams", &dir.path().join("agent")).unwrap();

    // The app prints a marker, then prints whatever lands in /tmp/say, and serves HTTP.
    let script = "echo aloft-log-marker; \
        (while true; do if [ -f /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; sleep 1; done) & \
        exec /bin/busybox httpd -f -p 8080 -h /www";
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "1", "hello\n", &["/bin/sh", "-c", script]).unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let image = format!("{registry}/web/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).unwrap();
    ok(server.cli(&["apps", "create", "web"]));
    ok(server.cli(&["apps", "create", "other"]));

    let (status, body) = post_json(
        &server,
        "/v1/apps/web/machines",
        &json!({
            "region": "ams",
            "config": {
                "image": image,
                "checks": {
                    "home": {"type": "http", "port": 8080, "path": "/", "interval": "1s", "timeout": "2s"},
                    "missing": {"type": "http", "port": 8080, "path": "/missing", "interval": "1s"},
                    "port": {"type": "tcp", "port": 8080, "interval": "1s"}
                }
            }
        }),
    );
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("machine started", Duration::from_secs(30), || {
        (server.machine_json("web", &id)["state"] == "started").then_some(())
    })
    .unwrap();

    // Exec: stdout, stderr and the exit code come back; the CLI exits with that code.
    let out = server.cli(&[
        "machine",
        "exec",
        &id,
        "--app",
        "web",
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "to-stdout\n");
    assert_eq!(stderr(&out), "to-stderr\n");

    // Stdin is fed to the command.
    let mut child = spawn_cli(
        &server,
        &[
            "machine", "exec", &id, "--app", "web", "--stdin", "--", "cat",
        ],
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"fed through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "fed through stdin\n");

    // ssh console -C runs through a shell.
    let out = ok(server.cli(&["ssh", "console", "--app", "web", "-C", "echo $((6 * 7))"]));
    assert_eq!(out, "42\n");

    // An app token cannot exec into another app's machine.
    let other = ok(server.cli(&["tokens", "create", "--app", "other"]))
        .trim()
        .to_string();
    let refused = server.cli_as(
        &other,
        &["machine", "exec", &id, "--app", "web", "--", "true"],
    );
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("403"), "{}", stderr(&refused));

    // Logs show what the app printed.
    wait_for("the marker in the logs", Duration::from_secs(20), || {
        ok(server.cli(&["logs", "--app", "web"]))
            .contains("aloft-log-marker")
            .then_some(())
    })
    .unwrap();
    let json_lines = ok(server.cli(&["logs", "--app", "web", "--json", "--machine", &id]));
    let entry: Value = json_lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["message"] == "aloft-log-marker")
        .unwrap();
    assert_eq!(entry["instance"], id.as_str());
    assert_eq!(entry["region"], "ams");
    assert_eq!(entry["stream"], "stdout");

    // Follow mode delivers a line printed after it started.
    let mut follow = spawn_cli(&server, &["logs", "--app", "web", "-f"]);
    let (tx, rx) = mpsc::channel::<String>();
    let reader = BufReader::new(follow.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_line = |marker: &str| {
        wait_for(marker, Duration::from_secs(20), || {
            while let Ok(line) = rx.try_recv() {
                seen.push(line);
            }
            seen.iter().any(|l| l.contains(marker)).then_some(())
        })
    };
    wait_line("aloft-log-marker").unwrap();
    ok(server.cli(&[
        "machine",
        "exec",
        &id,
        "--app",
        "web",
        "--",
        "sh",
        "-c",
        "echo printed-while-following > /tmp/say",
    ]));
    wait_line("printed-while-following").unwrap();
    let _ = follow.kill();
    let _ = follow.wait();

    // Checks: the failing one is critical, the others pass.
    wait_for("check results", Duration::from_secs(20), || {
        let m = server.machine_json("web", &id);
        let checks = m["checks"].as_array().cloned().unwrap_or_default();
        let status = |name: &str| {
            checks
                .iter()
                .find(|c| c["name"] == name)
                .map(|c| c["status"].as_str().unwrap_or_default().to_string())
        };
        (status("home").as_deref() == Some("passing")
            && status("port").as_deref() == Some("passing")
            && status("missing").as_deref() == Some("critical"))
        .then_some(())
    })
    .unwrap();
    // A failing check does not restart the machine.
    let m = server.machine_json("web", &id);
    assert_eq!(m["state"], "started");
    let restarts = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "restarting")
        .count();
    assert_eq!(restarts, 0, "{m}");

    // Exec on a stopped machine is a 412 that says so.
    ok(server.cli(&["machine", "stop", &id, "--app", "web"]));
    wait_for("stopped", Duration::from_secs(30), || {
        (server.machine_json("web", &id)["state"] == "stopped").then_some(())
    })
    .unwrap();
    let out = server.cli(&["machine", "exec", &id, "--app", "web", "--", "true"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("412") && err.contains("not started"), "{err}");
}
