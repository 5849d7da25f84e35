//! End-to-end attacks by a host: a real server and two real agents, A (region ams) and B
//! (region iad), each enrolled with its own single-use join token. App `alpha` runs a machine
//! on A with a secret; app `beta` runs one on B. B then plays a compromised host: with its
//! own credential, and with join tokens, it tries every way across the host boundary that
//! worked before hosts had credentials of their own (docs/security.md, "Hosts").
//!
//! One topology serves every case (machines are slow to bring up); the cases run in order
//! and revocation comes last.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use aloft_testkit::{busybox_layout, ok, skopeo_push, wait_for, Agent, Server};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// A raw HTTP/1.1 exchange: the status and whatever body arrived before the server closed
/// the connection or `wait` passed in silence (for streams).
fn exchange(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    extra: &[(&str, &str)],
    wait: Duration,
) -> (u16, String) {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).expect("server reachable");
    s.set_read_timeout(Some(wait)).unwrap();
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A JSON API call that waits for the whole answer.
fn api(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let body = body.map(Value::to_string);
    exchange(
        method,
        &format!("{}{path}", server.url),
        Some(token),
        body.as_deref(),
        &[("content-type", "application/json")],
        Duration::from_secs(60),
    )
}

fn join_token(server: &Server, args: &[&str]) -> String {
    let mut all = vec!["hosts", "join-token", "create"];
    all.extend_from_slice(args);
    ok(server.cli(&all)).trim().to_owned()
}

fn host_json(server: &Server, id: &str) -> Value {
    let list: Value = serde_json::from_str(&ok(server.cli(&["hosts", "list", "--json"]))).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("host {id} is listed: {list}"))
}

/// Runs a machine of `app`'s image in `region` and waits until it has started.
fn run_machine(server: &Server, image: &str, app: &str, region: &str) -> Value {
    let run = ok(server.cli(&[
        "machine", "run", image, "--app", app, "--region", region, "--json",
    ]));
    let m: Value = serde_json::from_str(&run).unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    wait_for("the machine starts", Duration::from_secs(60), || {
        let now = server.machine_json(app, &id);
        (now["state"] == "started").then_some(now)
    })
    .unwrap()
}

#[test]
fn a_host_credential_reaches_its_own_host_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let admin = server.token.clone();
    let pid = std::process::id();
    let (id_a, id_b) = (format!("hka{pid}"), format!("hkb{pid}"));

    // Enrolment: one single-use join token per host; each host keeps its own credential.
    let join_a = join_token(&server, &["--uses", "1"]);
    let join_b = join_token(&server, &["--uses", "1", "--ttl", "10m"]);
    let mut agent_a = Agent::start_with_token(
        bin(),
        &server,
        &join_a,
        "ams",
        &dir.path().join("a"),
        &id_a,
        &[],
    )
    .unwrap();
    let agent_b = Agent::start_with_token(
        bin(),
        &server,
        &join_b,
        "iad",
        &dir.path().join("b"),
        &id_b,
        &[],
    )
    .unwrap();
    let cred_a = agent_a.credential().unwrap();
    let cred_b = agent_b.credential().unwrap();
    assert!(cred_a.starts_with("aloft_host_") && cred_a != cred_b);
    let mode = std::fs::metadata(dir.path().join("a/host-credential"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the credential file is private");

    let layout = dir.path().join("layout");
    busybox_layout(
        &layout,
        "1",
        "hello\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    for app in ["alpha", "beta"] {
        ok(server.cli(&["apps", "create", app]));
        skopeo_push(&layout, "1", &format!("{registry}/{app}/busybox:1"), &admin).unwrap();
    }
    let secret = format!("alpha-only-{pid}");
    ok(server.cli(&[
        "secrets",
        "set",
        &format!("TOP={secret}"),
        "--app",
        "alpha",
        "--stage",
    ]));
    let alpha = run_machine(
        &server,
        &format!("{registry}/alpha/busybox:1"),
        "alpha",
        "ams",
    );
    let beta = run_machine(
        &server,
        &format!("{registry}/beta/busybox:1"),
        "beta",
        "iad",
    );
    let alpha_id = alpha["id"].as_str().unwrap();
    let beta_id = beta["id"].as_str().unwrap();
    let alpha_ip = alpha["private_ip"].as_str().unwrap();

    // A join token that was used, or that expired, is refused.
    let fresh = json!({"id": format!("hkc{pid}"), "region": "ams", "address": "127.0.0.1:1",
                       "cpus": 1, "memory_mb": 512});
    let (status, body) = api(&server, "POST", "/v1/hosts", &join_a, Some(&fresh));
    assert_eq!(status, 401, "a used single-use join token: {body}");
    let short = join_token(&server, &["--ttl", "1s"]);
    wait_for("the join token expires", Duration::from_secs(30), || {
        (api(&server, "GET", "/v1/cluster", &short, None).0 == 401).then_some(())
    })
    .unwrap();
    let (status, body) = api(&server, "POST", "/v1/hosts", &short, Some(&fresh));
    assert_eq!(status, 401, "an expired join token: {body}");

    // B's credential cannot read A's watch; B's own watch holds nothing of A's.
    let watch = |host: &str, token: &str| {
        exchange(
            "GET",
            &format!("{}/v1/hosts/{host}/watch?since=0", server.url),
            Some(token),
            None,
            &[],
            Duration::from_secs(3),
        )
    };
    let (status, body) = watch(&id_a, &cred_b);
    assert_eq!(status, 403, "B reads A's watch: {body}");
    assert!(!body.contains(&secret), "{body}");
    let (status, own) = watch(&id_b, &cred_b);
    assert_eq!(status, 200, "{own}");
    assert!(own.contains(beta_id), "B's watch has B's machine: {own}");
    assert!(
        !own.contains(&secret) && !own.contains(alpha_id),
        "B's watch leaks A's machine: {own}"
    );
    // A's own watch does carry the secret: the check above could see it.
    assert!(watch(&id_a, &cred_a).1.contains(&secret));
    let (status, _) = api(
        &server,
        "POST",
        &format!("/v1/hosts/{id_a}/heartbeat"),
        &cred_b,
        None,
    );
    assert_eq!(status, 403, "B heartbeats as A");

    // A's id cannot be taken over: not with a join token, not with B's credential.
    let before = host_json(&server, &id_a);
    let impostor = json!({"id": id_a, "region": "ams", "address": "127.0.0.1:9", "cpus": 8,
                          "memory_mb": 8192, "api_secret": "impostor",
                          "mesh": {"public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                                   "endpoint": "127.0.0.1:9"}});
    let join_many = join_token(&server, &["--uses", "5"]);
    let (status, body) = api(&server, "POST", "/v1/hosts", &join_many, Some(&impostor));
    assert_eq!(status, 409, "re-registering A with a join token: {body}");
    let (status, body) = api(&server, "POST", "/v1/hosts", &cred_b, Some(&impostor));
    assert_eq!(status, 403, "re-registering A with B's credential: {body}");
    let after = host_json(&server, &id_a);
    assert_eq!(after["address"], before["address"]);
    assert_eq!(after["cpus"], before["cpus"]);
    let (status, body) = api(
        &server,
        "POST",
        &format!("/v1/hosts/{id_a}/heartbeat"),
        &cred_a,
        None,
    );
    assert_eq!(status, 200, "A keeps working: {body}");

    // A forged status report: B claims A's machine's address for its own machine, and
    // reports for A's machine under A's id.
    let forged = json!({"instance_id": beta["instance_id"], "state": "started",
                        "private_ip": alpha_ip});
    let path = format!("/v1/hosts/{id_b}/machines/{beta_id}/status");
    let (status, body) = api(&server, "POST", &path, &cred_b, Some(&forged));
    assert_eq!(status, 400, "a private_ip outside B's prefix: {body}");
    let forged_a = json!({"instance_id": alpha["instance_id"], "state": "started",
                          "private_ip": beta["private_ip"]});
    let path = format!("/v1/hosts/{id_a}/machines/{alpha_id}/status");
    let (status, body) = api(&server, "POST", &path, &cred_b, Some(&forged_a));
    assert_eq!(status, 403, "B reports for A's machine: {body}");
    assert_eq!(
        server.machine_json("beta", beta_id)["private_ip"],
        beta["private_ip"]
    );
    assert_eq!(
        server.machine_json("alpha", alpha_id)["private_ip"],
        alpha["private_ip"]
    );
    let (_, routes) = api(&server, "GET", "/v1/routes", &admin, None);
    assert!(
        routes.contains(alpha_ip),
        "alpha still routes to A: {routes}"
    );

    // The registry: B pulls its own app's image, and nothing else; it never writes.
    let reg = |method: &str, path: &str, token: &str, body: Option<&str>| {
        exchange(
            method,
            &format!("{}{path}", server.url),
            Some(token),
            body,
            &[(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            ), ("content-type", "application/vnd.oci.image.manifest.v1+json")],
            Duration::from_secs(60),
        )
    };
    let (status, manifest) = reg("GET", "/v2/beta/busybox/manifests/1", &cred_b, None);
    assert_eq!(
        status, 200,
        "B pulls the image of its own machine: {manifest}"
    );
    let (status, body) = reg("GET", "/v2/alpha/busybox/manifests/1", &cred_b, None);
    assert_eq!(status, 403, "B pulls an app with no machine on B: {body}");
    let (status, body) = reg(
        "PUT",
        "/v2/beta/busybox/manifests/1",
        &cred_b,
        Some(&manifest),
    );
    assert_eq!(status, 403, "B overwrites a tag: {body}");
    let (status, body) = reg("POST", "/v2/beta/busybox/blobs/uploads/", &cred_b, None);
    assert_eq!(status, 403, "B pushes a blob: {body}");
    let (status, body) = reg("DELETE", "/v2/beta/busybox/manifests/1", &cred_b, None);
    assert_eq!(status, 403, "B deletes a tag: {body}");
    let (status, _) = reg("GET", "/v2/beta/busybox/manifests/1", &admin, None);
    assert_eq!(status, 200, "the tag is still there");
    let (status, body) = reg("GET", "/v2/beta/busybox/manifests/1", &join_many, None);
    assert_eq!(status, 401, "a join token pulls: {body}");

    // Capacity beyond the operator's limit attracts no placement: it is refused.
    let b_now = host_json(&server, &id_b);
    let huge = json!({"id": id_b, "region": "iad", "address": b_now["address"], "cpus": 4096,
                      "memory_mb": 64 * 1024 * 1024});
    let (status, body) = api(&server, "POST", "/v1/hosts", &cred_b, Some(&huge));
    assert_eq!(status, 400, "absurd capacity: {body}");
    assert!(body.contains("host-max-cpus"), "{body}");
    assert_eq!(host_json(&server, &id_b)["cpus"], b_now["cpus"]);

    // The operator drains A: it keeps its machine and gets no new one.
    ok(server.cli(&["hosts", "drain", &id_a]));
    assert_eq!(host_json(&server, &id_a)["draining"], true);
    let image_a = format!("{registry}/alpha/busybox:1");
    let refused = server.cli(&[
        "machine", "run", &image_a, "--app", "alpha", "--region", "ams",
    ]);
    assert!(
        !refused.status.success(),
        "a drained host gets a new machine"
    );
    ok(server.cli(&["hosts", "drain", &id_a, "--undo"]));
    assert_eq!(host_json(&server, &id_a)["draining"], false);

    // A restarted agent speaks with its saved credential (its join token is used up).
    agent_a.crash_and_restart().unwrap();
    wait_for(
        "A heartbeats after its restart",
        Duration::from_secs(30),
        || (host_json(&server, &id_a)["status"] == "ok").then_some(()),
    )
    .unwrap();

    // Revocation: B's credential is refused at once, everywhere, and B is down.
    ok(server.cli(&["hosts", "revoke", &id_b]));
    let (status, body) = api(
        &server,
        "POST",
        &format!("/v1/hosts/{id_b}/heartbeat"),
        &cred_b,
        None,
    );
    assert_eq!(status, 401, "a revoked credential heartbeats: {body}");
    assert_eq!(watch(&id_b, &cred_b).0, 401);
    assert_eq!(
        reg("GET", "/v2/beta/busybox/manifests/1", &cred_b, None).0,
        401
    );
    assert_eq!(host_json(&server, &id_b)["status"], "unreachable");
    // Its id cannot join again with a join token either.
    let (status, body) = api(&server, "POST", "/v1/hosts", &join_many, Some(&huge));
    assert!(
        status == 409 || status == 400,
        "a revoked id rejoins: {status} {body}"
    );
    let rejoin = json!({"id": id_b, "region": "iad", "address": "127.0.0.1:9", "cpus": 1,
                        "memory_mb": 512});
    let (status, body) = api(&server, "POST", "/v1/hosts", &join_many, Some(&rejoin));
    assert_eq!(status, 409, "a revoked id rejoins: {body}");
    // A is untouched.
    assert_eq!(server.machine_json("alpha", alpha_id)["state"], "started");
    let (status, _) = api(
        &server,
        "POST",
        &format!("/v1/hosts/{id_a}/heartbeat"),
        &agent_a.credential().unwrap(),
        None,
    );
    assert_eq!(status, 200);
}
