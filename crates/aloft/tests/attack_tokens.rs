//! Attacks on tokens and organizations, against the real binaries: one control plane and one
//! host shared by every case (they run in order in one test, each named by its step).
//!
//! What must hold: a revoked token is refused at once by the API and the registry and its open
//! streams end; an expired token is refused; a deploy token deploys its app and nothing else;
//! an org token sees and touches only its org; token lists never show secrets; tokens are
//! refused on the command line.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use aloft_testkit::{busybox_layout, ok, skopeo_push, stderr, stdout, wait_for, Agent, Server};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// One request over a fresh connection: the status and the body (de-chunked).
fn http(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, String) {
    let host = server.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("server reachable");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

fn status(server: &Server, method: &str, path: &str, token: &str) -> u16 {
    http(server, method, path, token, None).0
}

/// Opens a streamed GET and returns the connection once the head has arrived with `200`.
fn open_stream(server: &Server, path: &str, token: &str) -> TcpStream {
    let host = server.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("server reachable");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n\
         connection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"200", "the stream opens");
    s
}

/// Whether the server ended the stream (EOF) within the deadline.
fn stream_ends(mut s: TcpStream, deadline: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let until = Instant::now() + deadline;
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Creates a token with the CLI as `as_token`, returning (secret, id).
fn create_token(server: &Server, as_token: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["tokens", "create"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = ok(server.cli_as(as_token, &all));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

struct World {
    dir: tempfile::TempDir,
    server: Server,
    agent: Agent,
    registry: String,
}

#[test]
fn tokens_and_organizations_hold_against_their_attacks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(bin()).unwrap();
    let agent = Agent::start_with(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        &["--cpus", "8", "--memory-mb", "8192"],
    )
    .unwrap();
    let registry = server.url.trim_start_matches("http://").to_string();
    let mut world = World {
        dir,
        server,
        agent,
        registry,
    };
    let admin = world.server.token.clone();
    // Two tenants, each with apps; and an app in the default org.
    ok(world.server.cli(&["orgs", "create", "acme"]));
    ok(world.server.cli(&["orgs", "create", "rival"]));
    ok(world
        .server
        .cli(&["apps", "create", "acme-web", "--org", "acme"]));
    ok(world
        .server
        .cli(&["apps", "create", "acme-api", "--org", "acme"]));
    ok(world
        .server
        .cli(&["apps", "create", "rival-db", "--org", "rival"]));
    ok(world.server.cli(&["apps", "create", "loner"]));
    let layout = world.dir.path().join("layout");
    busybox_layout(
        &layout,
        "1",
        "hi from a machine\n",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .unwrap();

    tokens_on_argv_are_refused(&world);
    token_lists_never_show_secrets(&world, &admin);
    a_revoked_token_is_refused_at_once(&world, &admin);
    an_expired_token_is_refused(&world, &admin);
    let acme_machine = a_deploy_token_deploys_its_app_and_nothing_else(&world, &admin, &layout);
    an_org_token_stays_in_its_org(&world, &admin, &layout, &acme_machine);
    orgs_with_apps_cannot_be_deleted(&world, &admin);
    world.agent.remove_machines();
}

fn tokens_on_argv_are_refused(w: &World) {
    let out = w.server.cli(&["apps", "list", "--token", "aloft_whatever"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ALOFT_API_TOKEN") && stderr(&out).contains("ps"),
        "the refusal says where tokens go: {}",
        stderr(&out)
    );
    let out = w
        .server
        .cli(&["auth", "login", "--url", &w.server.url, "--token", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--token-file"), "{}", stderr(&out));
    // The agent is refused before it starts (it would otherwise run until killed).
    let mut child = std::process::Command::new(bin())
        .args([
            "agent",
            "--token",
            "x",
            "--region",
            "ams",
            "--control",
            &w.server.url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(
        "the agent to refuse --token",
        Duration::from_secs(30),
        || child.try_wait().ok().flatten(),
    );
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("aloft agent --token was accepted");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.contains("ALOFT_JOIN_TOKEN"),
        "{err}"
    );
}

fn token_lists_never_show_secrets(w: &World, admin: &str) {
    let (deploy, deploy_id) = create_token(&w.server, admin, &["deploy", "--app", "acme-web"]);
    let (org, org_id) = create_token(&w.server, admin, &["org", "--org", "acme", "--name", "ci"]);
    for args in [vec!["tokens", "list"], vec!["tokens", "list", "--json"]] {
        let listed = ok(w.server.cli(&args));
        assert!(
            listed.contains(&deploy_id) && listed.contains(&org_id),
            "{listed}"
        );
        assert!(
            !listed.contains(&deploy) && !listed.contains(&org),
            "a secret is listed"
        );
        assert!(!listed.contains(admin), "the admin secret is listed");
    }
    let listed: Value =
        serde_json::from_str(&ok(w.server.cli(&["tokens", "list", "--json"]))).unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == deploy_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["kind"], "deploy", "{entry}");
    assert_eq!(entry["app"], "acme-web", "{entry}");
    assert!(
        entry["expires_at"]
            .as_str()
            .is_some_and(|e| e.starts_with("20")),
        "{entry}"
    );
    // An org token lists its org's tokens only, and never the admin's.
    let by_org = ok(w.server.cli_as(&org, &["tokens", "list", "--json"]));
    let by_org: Value = serde_json::from_str(&by_org).unwrap();
    let kinds: Vec<&str> = by_org
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"admin"), "{by_org}");
    // A deploy token lists nothing.
    let denied = w.server.cli_as(&deploy, &["tokens", "list"]);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
}

fn a_revoked_token_is_refused_at_once(w: &World, admin: &str) {
    let (app, app_id) = create_token(&w.server, admin, &["app", "--app", "acme-web"]);
    let (join, join_id) = create_token(&w.server, admin, &["join"]);
    let (second_admin, second_admin_id) = create_token(&w.server, admin, &["admin"]);
    assert_eq!(status(&w.server, "GET", "/v1/apps/acme-web", &app), 200);
    assert_eq!(status(&w.server, "GET", "/v2/", &app), 200);
    // A route-table watch stream, open while its token is revoked, ends.
    let watch = open_stream(&w.server, "/v1/routes/watch", &second_admin);

    ok(w.server
        .cli(&["tokens", "revoke", &app_id, &join_id, &second_admin_id]));
    assert_eq!(
        status(&w.server, "GET", "/v1/apps/acme-web", &app),
        401,
        "API after revoke"
    );
    assert_eq!(
        status(&w.server, "GET", "/v2/", &app),
        401,
        "registry after revoke"
    );
    assert_eq!(
        status(&w.server, "GET", "/v2/acme-web/busybox/tags/list", &app),
        401,
        "registry repository after revoke"
    );
    assert_eq!(
        status(&w.server, "POST", "/v1/hosts", &join),
        401,
        "join token after revoke"
    );
    assert!(
        stream_ends(watch, Duration::from_secs(30)),
        "the watch stream outlived its token"
    );
    let listed = ok(w.server.cli(&["tokens", "list"]));
    assert!(
        !listed.contains(&app_id),
        "a revoked token is still listed: {listed}"
    );
    // Revoking it again says it is gone.
    let again = w.server.cli(&["tokens", "revoke", &app_id]);
    assert_eq!(again.status.code(), Some(4), "{}", stderr(&again));
}

fn an_expired_token_is_refused(w: &World, admin: &str) {
    let out = ok(w.server.cli(&[
        "tokens", "create", "app", "--app", "acme-web", "--expiry", "3s", "--json",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let expires = v["expires_at"].as_str().unwrap().to_string();
    wait_for("the token to expire", Duration::from_secs(60), || {
        (status(&w.server, "GET", "/v1/apps/acme-web", &token) == 401).then_some(())
    })
    .unwrap();
    let (code, body) = http(&w.server, "GET", "/v1/apps", &token, None);
    assert_eq!(code, 401);
    assert!(body.contains("expired"), "{body}");
    assert!(body.contains(&expires), "the refusal says when: {body}");
    assert_eq!(
        status(&w.server, "GET", "/v2/", &token),
        401,
        "registry after expiry"
    );
    let _ = admin;
}

/// Returns the machine it deployed (started, in org `acme`).
fn a_deploy_token_deploys_its_app_and_nothing_else(w: &World, admin: &str, layout: &Path) -> Value {
    let (deploy, _) = create_token(&w.server, admin, &["deploy", "--app", "acme-web"]);
    // Deploys its app: pushes its image, creates a machine, sets a secret, records a release.
    let image = format!("{}/acme-web/busybox:1", w.registry);
    skopeo_push(layout, "1", &image, &deploy).expect("a deploy token pushes its app's image");
    let run = ok(w.server.cli_as(
        &deploy,
        &[
            "machine", "run", &image, "--app", "acme-web", "--region", "ams", "--json",
        ],
    ));
    let m: Value = serde_json::from_str(&run).unwrap();
    let id = m["id"].as_str().unwrap().to_string();
    ok(w.server.cli_as(
        &deploy,
        &[
            "secrets",
            "set",
            "DB_URL=postgres://x",
            "--app",
            "acme-web",
            "--stage",
        ],
    ));

    // Nothing else: another app of the same org, its registry repository, creating apps,
    // minting tokens, hosts, exec in its own machine.
    let other = format!("{}/acme-api/busybox:1", w.registry);
    assert!(
        skopeo_push(layout, "1", &other, &deploy).is_err(),
        "pushed to another app"
    );
    for (method, path) in [
        ("GET", "/v1/apps/acme-api"),
        ("GET", "/v1/apps/acme-api/machines"),
        ("GET", "/v1/apps/acme-api/secrets"),
        ("GET", "/v1/hosts"),
        ("GET", "/v1/tokens"),
        ("GET", "/v1/orgs"),
        ("GET", "/v1/routes"),
    ] {
        assert_eq!(
            status(&w.server, method, path, &deploy),
            403,
            "{method} {path}"
        );
    }
    let (code, _) = http(
        &w.server,
        "POST",
        "/v1/apps",
        &deploy,
        Some(json!({"app_name": "sneaky"})),
    );
    assert_eq!(code, 403, "a deploy token created an app");
    let (code, _) = http(
        &w.server,
        "POST",
        "/v1/tokens",
        &deploy,
        Some(json!({"scope": "deploy", "app": "acme-web"})),
    );
    assert_eq!(code, 403, "a deploy token minted a token");
    let (code, _) = http(
        &w.server,
        "POST",
        &format!("/v1/apps/acme-web/machines/{id}/exec"),
        &deploy,
        Some(json!({"cmd": "cat /proc/self/environ"})),
    );
    assert_eq!(
        code, 403,
        "a deploy token ran a command in its app's machine"
    );
    let (code, _) = http(
        &w.server,
        "POST",
        "/v1/apps/acme-api/machines",
        &deploy,
        Some(json!({"region": "ams", "config": {"image": other}})),
    );
    assert_eq!(code, 403, "a deploy token created a machine of another app");
    m
}

/// The 6PN network field of a machine's private address (`fdaa` | network (32) | …).
fn sixpn_network(machine: &Value) -> u32 {
    let ip: std::net::Ipv6Addr = machine["private_ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no 6PN address: {machine}"));
    let s = ip.segments();
    assert_eq!(s[0], 0xfdaa, "{ip}");
    (u32::from(s[1]) << 16) | u32::from(s[2])
}

fn an_org_token_stays_in_its_org(w: &World, admin: &str, layout: &Path, acme_machine: &Value) {
    let (acme, _) = create_token(&w.server, admin, &["org", "--org", "acme"]);
    // The rival org has a machine, a secret and an image.
    let image = format!("{}/rival-db/busybox:1", w.registry);
    skopeo_push(layout, "1", &image, admin).unwrap();
    let run = ok(w.server.cli(&[
        "machine", "run", &image, "--app", "rival-db", "--region", "ams", "--json",
    ]));
    let rival = serde_json::from_str::<Value>(&run).unwrap();
    let rival_machine = rival["id"].as_str().unwrap().to_string();
    // The host put each org's machine on that org's own private network: the org reached
    // the agent with the assignment.
    assert_ne!(
        sixpn_network(&rival),
        sixpn_network(acme_machine),
        "machines of two orgs share a private network: {rival} {acme_machine}"
    );
    ok(w.server.cli(&[
        "secrets",
        "set",
        "PASSWORD=hunter2",
        "--app",
        "rival-db",
        "--stage",
    ]));

    // Listing shows the org's apps only.
    let (code, body) = http(&w.server, "GET", "/v1/apps", &acme, None);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("acme-web") && body.contains("acme-api"),
        "{body}"
    );
    assert!(
        !body.contains("rival-db") && !body.contains("loner"),
        "{body}"
    );
    assert_eq!(
        status(&w.server, "GET", "/v1/apps?org_slug=rival", &acme),
        403
    );
    // Nothing of the other org can be read or touched.
    for (method, path) in [
        ("GET", "/v1/apps/rival-db".to_string()),
        ("GET", "/v1/apps/rival-db/machines".to_string()),
        ("GET", format!("/v1/apps/rival-db/machines/{rival_machine}")),
        (
            "POST",
            format!("/v1/apps/rival-db/machines/{rival_machine}/stop"),
        ),
        (
            "DELETE",
            format!("/v1/apps/rival-db/machines/{rival_machine}?force=true"),
        ),
        ("GET", "/v1/apps/rival-db/secrets".to_string()),
        ("DELETE", "/v1/apps/rival-db/secrets/PASSWORD".to_string()),
        ("GET", "/v1/apps/rival-db/certificates".to_string()),
        ("GET", "/v1/orgs/rival/machines".to_string()),
        ("DELETE", "/v1/apps/loner".to_string()),
        ("GET", "/v1/hosts".to_string()),
    ] {
        assert_eq!(
            status(&w.server, method, &path, &acme),
            403,
            "{method} {path}"
        );
    }
    let (code, body) = http(&w.server, "GET", "/v1/orgs/acme/machines", &acme, None);
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(&rival_machine), "{body}");
    let (code, _) = http(
        &w.server,
        "POST",
        "/v1/apps",
        &acme,
        Some(json!({"app_name": "planted", "org_slug": "rival"})),
    );
    assert_eq!(code, 403, "an org token created an app in another org");
    let (code, _) = http(
        &w.server,
        "POST",
        "/v1/tokens",
        &acme,
        Some(json!({"scope": "deploy", "app": "rival-db"})),
    );
    assert_eq!(
        code, 403,
        "an org token minted a token for another org's app"
    );
    let (code, _) = http(
        &w.server,
        "POST",
        "/v1/tokens",
        &acme,
        Some(json!({"scope": "admin"})),
    );
    assert_eq!(code, 403, "an org token minted an admin token");
    assert!(
        skopeo_push(
            layout,
            "1",
            &format!("{}/rival-db/evil:1", w.registry),
            &acme
        )
        .is_err(),
        "an org token pushed to another org's repository"
    );
    assert_eq!(
        status(&w.server, "GET", "/v2/rival-db/busybox/tags/list", &acme),
        403
    );

    // Within its org it works: apps of its own org, created there by default.
    let (code, body) = http(
        &w.server,
        "POST",
        "/v1/apps",
        &acme,
        Some(json!({"app_name": "acme-new"})),
    );
    assert_eq!(code, 201, "{body}");
    assert!(body.contains("\"slug\":\"acme\""), "{body}");
    let (_, mint) = http(
        &w.server,
        "POST",
        "/v1/tokens",
        &acme,
        Some(json!({"scope": "deploy", "app": "acme-new"})),
    );
    assert!(mint.contains("aloft_"), "{mint}");
    // The admin sees every org's machines and the other org's secret is intact.
    let (code, body) = http(&w.server, "GET", "/v1/orgs/rival/machines", admin, None);
    assert_eq!(code, 200);
    assert!(body.contains(&rival_machine), "{body}");
    machines_of_two_orgs_cannot_reach_each_other(w, admin, layout, acme_machine, &rival);
    let secrets = ok(w.server.cli(&["secrets", "list", "--app", "rival-db"]));
    assert!(secrets.contains("PASSWORD"), "{secrets}");
    ok(w.server.cli(&[
        "machine",
        "destroy",
        &rival_machine,
        "--app",
        "rival-db",
        "--force",
    ]));
    let acme_id = acme_machine["id"].as_str().unwrap();
    ok(w.server.cli(&[
        "machine", "destroy", acme_id, "--app", "acme-web", "--force",
    ]));
    ok(w.server.cli(&["apps", "destroy", "acme-new", "--yes"]));
}

/// `wget` of another machine's page on its private address, run inside `from` (app `app`).
fn fetch_from(w: &World, admin: &str, app: &str, from: &str, to: &Value) -> (i64, String) {
    let ip = to["private_ip"].as_str().unwrap();
    let (code, body) = http(
        &w.server,
        "POST",
        &format!("/v1/apps/{app}/machines/{from}/exec"),
        admin,
        Some(json!({
            "command": ["/bin/sh", "-c", format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/nc -w 3 {ip} 8080")],
            "timeout": 20,
        })),
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let out = format!(
        "{}{}",
        v["stdout"].as_str().unwrap_or(""),
        v["stderr"].as_str().unwrap_or("")
    );
    (v["exit_code"].as_i64().unwrap_or(-1), out)
}

/// Machines of one org reach each other over their private addresses; of two orgs, never.
fn machines_of_two_orgs_cannot_reach_each_other(
    w: &World,
    admin: &str,
    layout: &Path,
    acme_web: &Value,
    rival: &Value,
) {
    let image = format!("{}/acme-api/busybox:1", w.registry);
    skopeo_push(layout, "1", &image, admin).unwrap();
    let run = ok(w.server.cli(&[
        "machine", "run", &image, "--app", "acme-api", "--region", "ams", "--json",
    ]));
    let acme_api: Value = serde_json::from_str(&run).unwrap();
    let web_id = acme_web["id"].as_str().unwrap();
    // Within the org (Fly's model): the page comes back, so the probe itself works.
    let mut last = (0, String::new());
    let page = wait_for(
        "acme-web to reach acme-api",
        Duration::from_secs(60),
        || {
            last = fetch_from(w, admin, "acme-web", web_id, &acme_api);
            (last.0 == 0 && last.1.contains("hi from a machine")).then_some(())
        },
    );
    assert!(
        page.is_ok(),
        "machines of one org cannot reach each other: {last:?} {acme_web} {acme_api}"
    );
    // Across orgs: nothing, in either direction.
    let (code, out) = fetch_from(w, admin, "acme-web", web_id, rival);
    assert!(
        code != 0 && !out.contains("hi from a machine"),
        "acme reached rival: {code} {out}"
    );
    let rival_id = rival["id"].as_str().unwrap();
    let (code, out) = fetch_from(w, admin, "rival-db", rival_id, &acme_api);
    assert!(
        code != 0 && !out.contains("hi from a machine"),
        "rival reached acme: {code} {out}"
    );
    let api_id = acme_api["id"].as_str().unwrap();
    ok(w.server
        .cli(&["machine", "destroy", api_id, "--app", "acme-api", "--force"]));
}

fn orgs_with_apps_cannot_be_deleted(w: &World, admin: &str) {
    let (rival, _) = create_token(&w.server, admin, &["org", "--org", "rival"]);
    let refused = w.server.cli(&["orgs", "delete", "rival", "--yes"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("still has 1 apps"),
        "{}",
        stderr(&refused)
    );
    // Not by its own org token either.
    let own = w
        .server
        .cli_as(&rival, &["orgs", "delete", "rival", "--yes"]);
    assert_eq!(own.status.code(), Some(3), "{}", stderr(&own));
    // Its machine was destroyed a moment ago; the app goes once the host confirms that.
    wait_for("rival-db to be destroyed", Duration::from_secs(60), || {
        let out = w.server.cli(&["apps", "destroy", "rival-db", "--yes"]);
        out.status.success().then_some(())
    })
    .unwrap();
    ok(w.server.cli(&["orgs", "delete", "rival", "--yes"]));
    let orgs = ok(w.server.cli(&["orgs", "list"]));
    assert!(!orgs.contains("rival") && orgs.contains("acme"), "{orgs}");
    // Its org tokens went with it.
    assert_eq!(status(&w.server, "GET", "/v1/apps", &rival), 401);
    let _ = stdout;
}
