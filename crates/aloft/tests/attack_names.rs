//! End-to-end attacks on hostnames, data at rest and the operator's limits, against the real
//! binaries on one topology: a server (with a test DNS server as its resolver, an ACME
//! directory so orders reach the ownership check, and limits), an agent whose edge serves HTTP,
//! and app `a` with a running machine.
//!
//! - App `b` cannot take `a.<domain>` (409 with a certificate or an ACME order) and the edge
//!   keeps routing it to `a`; `b` cannot take a custom name `a` proved (409); a custom name
//!   nobody proved does not route, until DNS proves it and `aloft certs check` says so.
//! - The data directory is 0700, the database and key files 0600, and no file under it holds
//!   an uploaded private key's PEM.
//! - Per-app machine, CPU and memory limits and the registry quota refuse with 403 naming the
//!   limit (nothing half-written in the registry); a token over the API rate gets 429 with
//!   Retry-After and the server keeps serving.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aloft_testkit::dns::TestDns;
use aloft_testkit::edge::{http_get, self_signed_cert, WebMachine};
use aloft_testkit::{ok, stderr, wait_for, Agent, Server};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// The registry quota per app: room for `a`'s busybox image, not for a 9 MiB blob.
const QUOTA: u64 = 8_000_000;

/// `curl` with the token; returns (status, headers, body).
fn curl(token: &str, method: &str, url: &str, body: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-D", "-", "-X", method, "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    split_response(&cmd.output().expect("curl runs").stdout)
}

fn split_response(out: &[u8]) -> (u16, String, String) {
    let mut text = String::from_utf8_lossy(out).into_owned();
    // Interim `100 Continue` heads come before the answer's.
    while text.starts_with("HTTP/1.1 100") {
        text = text
            .split_once("\r\n\r\n")
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default();
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A registry upload of `file` to `repo` with basic auth; returns (status, body).
fn upload(server: &Server, args: &[&str], url: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-u"])
        .arg(format!("aloft:{}", server.token))
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    split_response(&out.stdout)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under `dir`.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Whether the edge knows an app for `host` (anything but its "no app" 404).
fn routed(http: SocketAddr, host: &str) -> bool {
    http_get(http, host).is_some_and(|(s, body)| {
        !(s == 404 && body.contains(&format!("no app is configured for host {host}")))
    })
}

#[test]
fn apps_cannot_take_names_keys_stay_sealed_and_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start().unwrap();
    let quota = QUOTA.to_string();
    let server = Server::start_with(
        bin(),
        &[
            "--dns-resolver",
            &dns.addr,
            "--acme-directory",
            "https://127.0.0.1:9/dir",
            "--max-machines-per-app",
            "2",
            "--max-cpus-per-app",
            "2",
            "--max-memory-per-app",
            "1024",
            "--registry-quota-per-app",
            &quota,
            "--api-rate-limit",
            "5",
            "--api-rate-burst",
            "40",
        ],
    )
    .unwrap();
    let mut agent = Agent::start_joining(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        "names",
        &["--no-https", "--cpus", "16", "--memory-mb", "65536"],
    )
    .unwrap();
    let http = agent
        .edge_listen_addr("http")
        .expect("the edge serves HTTP");
    let _web = WebMachine::run(&server, dir.path(), "a");
    ok(server.cli(&["apps", "create", "b"]));
    wait_for(
        "a answers through the edge",
        Duration::from_secs(60),
        || http_get(http, "a.localhost").filter(|(s, _)| *s == 200),
    )
    .unwrap();

    // 1. b claims a.localhost: 409 with a certificate and with an ACME order; a keeps it.
    let (cert, key) = self_signed_cert(dir.path(), "a.localhost");
    let (c, k) = (cert.to_string_lossy(), key.to_string_lossy());
    let out = server.cli(&[
        "certs",
        "add",
        "a.localhost",
        "--app",
        "b",
        "--cert",
        &c,
        "--key",
        &k,
    ]);
    assert!(
        !out.status.success(),
        "b took a.localhost with a certificate"
    );
    assert!(
        stderr(&out).contains("409") || stderr(&out).contains("belongs to app \"a\""),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&["certs", "add", "a.localhost", "--app", "b"]);
    assert!(
        !out.status.success(),
        "b ordered a certificate for a.localhost"
    );
    assert!(
        stderr(&out).contains("belongs to app \"a\""),
        "{}",
        stderr(&out)
    );
    let (status, body) = http_get(http, "a.localhost").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from a\n"));

    // 2. a proves shop.test by DNS; b gets 409 for it (certificate or ACME), a keeps routing.
    dns.set_txt("_aloft-challenge.shop.test", "app=a");
    let (shop_cert, shop_key) = self_signed_cert(dir.path(), "shop.test");
    let (sc, sk) = (shop_cert.to_string_lossy(), shop_key.to_string_lossy());
    ok(server.cli(&[
        "certs",
        "add",
        "shop.test",
        "--app",
        "a",
        "--cert",
        &sc,
        "--key",
        &sk,
    ]));
    wait_for("shop.test reaches a", Duration::from_secs(30), || {
        http_get(http, "shop.test").filter(|(s, _)| *s == 200)
    })
    .unwrap();
    dns.set_txt("_aloft-challenge.shop.test", "app=b");
    for args in [
        vec![
            "certs",
            "add",
            "shop.test",
            "--app",
            "b",
            "--cert",
            &sc,
            "--key",
            &sk,
        ],
        vec!["certs", "add", "shop.test", "--app", "b"],
    ] {
        let out = server.cli(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains("belongs to app \"a\""),
            "{}",
            stderr(&out)
        );
    }
    let (status, body) = http_get(http, "shop.test").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from a\n"));

    // 3. An unproven custom name does not route (while a proven one of the same app, added
    //    after it, does); once DNS proves it, `certs check` makes it route.
    let (u_cert, u_key) = self_signed_cert(dir.path(), "unproven.test");
    let out = ok(server.cli(&[
        "certs",
        "add",
        "unproven.test",
        "--app",
        "a",
        "--cert",
        &u_cert.to_string_lossy(),
        "--key",
        &u_key.to_string_lossy(),
    ]));
    assert!(out.contains("does not route"), "{out}");
    dns.set_cname("proven.test", "a.localhost");
    let (p_cert, p_key) = self_signed_cert(dir.path(), "proven.test");
    ok(server.cli(&[
        "certs",
        "add",
        "proven.test",
        "--app",
        "a",
        "--cert",
        &p_cert.to_string_lossy(),
        "--key",
        &p_key.to_string_lossy(),
    ]));
    wait_for("proven.test routes", Duration::from_secs(30), || {
        routed(http, "proven.test").then_some(())
    })
    .unwrap();
    assert!(!routed(http, "unproven.test"), "an unproven name routes");
    let out = server.cli(&["certs", "check", "unproven.test"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("_aloft-challenge.unproven.test"),
        "{}",
        stderr(&out)
    );
    dns.set_txt("_aloft-challenge.unproven.test", "app=a");
    ok(server.cli(&["certs", "check", "unproven.test"]));
    wait_for(
        "unproven.test routes once proven",
        Duration::from_secs(30),
        || routed(http, "unproven.test").then_some(()),
    )
    .unwrap();

    // 4. At rest: modes, and no uploaded key's PEM anywhere in the data directory.
    ok(server.cli(&["certs", "root"])); // the cluster CA exists from here on
    let data = &server.data_dir;
    assert_eq!(mode(data), 0o700, "data directory");
    for file in ["aloft.db", "secrets.key", "admin-token", "ca/ca-key.pem"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    for file in ["aloft.db-wal", "aloft.db-shm"] {
        if data.join(file).exists() {
            assert_eq!(mode(&data.join(file)), 0o600, "{file}");
        }
    }
    let mut all = Vec::new();
    files(data, &mut all);
    for key in [&shop_key, &p_key, &u_key] {
        let pem = std::fs::read_to_string(key).unwrap();
        let line = pem.lines().nth(1).unwrap().to_owned();
        for file in &all {
            let bytes = std::fs::read(file).unwrap_or_default();
            assert!(
                !bytes.windows(line.len()).any(|w| w == line.as_bytes()),
                "{} holds an uploaded private key in the clear",
                file.display()
            );
        }
    }

    // 5. Machine limits (2 machines, 2 CPUs, 1024 MB per app): each refusal names its limit.
    ok(server.cli(&["apps", "create", "c"]));
    let machines = format!("{}/v1/apps/c/machines", server.url);
    let create = |cpus: u32, memory: u32| {
        let body = json!({
            "region": "ams", "skip_launch": true,
            "config": {"image": "docker.io/library/busybox:latest",
                       "guest": {"cpu_kind": "shared", "cpus": cpus, "memory_mb": memory}}
        });
        curl(&server.token, "POST", &machines, Some(&body.to_string()))
    };
    let (status, _, first) = create(1, 256);
    assert_eq!(status, 200, "{first}");
    let first: Value = serde_json::from_str(&first).unwrap();
    for (cpus, memory, flag) in [
        (2, 256, "--max-cpus-per-app"),
        (1, 1024, "--max-memory-per-app"),
    ] {
        let (status, _, body) = create(cpus, memory);
        assert_eq!(status, 403, "{cpus} CPUs {memory} MB: {body}");
        assert!(body.contains(flag), "{body}");
    }
    let (status, _, body) = create(1, 256);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = create(1, 128);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--max-machines-per-app"), "{body}");
    let update = json!({"config": {"image": "docker.io/library/busybox:latest",
        "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 256}}, "skip_launch": true});
    let url = format!("{machines}/{}", first["id"].as_str().unwrap());
    let (status, _, body) = curl(&server.token, "POST", &url, Some(&update.to_string()));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--max-cpus-per-app"), "{body}");

    // 6. Registry quota: a 9 MiB blob for app q is refused (monolithic and chunked), nothing
    //    of it is kept, and a small blob still fits.
    let big = dir.path().join("big.bin");
    let mut bytes = vec![0u8; 9 * 1024 * 1024];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    std::fs::write(&big, &bytes).unwrap();
    let sum = Command::new("sha256sum").arg(&big).output().unwrap();
    let hex = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let digest = format!("sha256:{hex}");
    let registry = format!("{}/v2/q", server.url);
    let big_arg = format!("@{}", big.display());
    let (status, _, body) = upload(
        &server,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &big_arg,
        ],
        &format!("{registry}/blobs/uploads/?digest={digest}"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("DENIED") && body.contains("--registry-quota-per-app"),
        "{body}"
    );
    let (status, head, _) = upload(
        &server,
        &["-X", "POST"],
        &format!("{registry}/blobs/uploads/"),
    );
    assert_eq!(status, 202, "{head}");
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap()
        .trim()
        .to_owned();
    let location = if location.starts_with('/') {
        format!("{}{location}", server.url)
    } else {
        location
    };
    let (status, _, body) = upload(
        &server,
        &[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &big_arg,
        ],
        &location,
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = upload(&server, &["-I"], &format!("{registry}/blobs/{digest}"));
    assert_eq!(status, 404, "a refused blob is stored");
    let mut stored = Vec::new();
    files(&data.join("registry"), &mut stored);
    for file in &stored {
        let len = std::fs::metadata(file).unwrap().len();
        assert!(
            len < 9 * 1024 * 1024,
            "{} kept {len} bytes of a refused upload",
            file.display()
        );
    }
    let small = dir.path().join("small.bin");
    std::fs::write(&small, b"small blob").unwrap();
    let sum = Command::new("sha256sum").arg(&small).output().unwrap();
    let small_hex = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let (status, _, body) = upload(
        &server,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", small.display()),
        ],
        &format!("{registry}/blobs/uploads/?digest=sha256:{small_hex}"),
    );
    assert_eq!(status, 201, "{body}");

    // 7. API rate per token (5/s, burst 40): a burst of 150 requests from one app token gets
    //    429 with Retry-After; other tokens and the server go on.
    let token = ok(server.cli(&["tokens", "create", "--app", "b"]))
        .trim()
        .to_owned();
    let url = format!("{}/v1/apps/b", server.url);
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code}\n", "-H"])
        .arg(format!("Authorization: Bearer {token}"));
    for _ in 0..150 {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let out = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    let statuses: Vec<&str> = out.lines().collect();
    assert_eq!(statuses.len(), 150, "{out}");
    assert!(statuses.contains(&"200"), "{statuses:?}");
    assert!(statuses.contains(&"429"), "no 429 in {statuses:?}");
    let (status, head, body) = curl(&token, "GET", &url, None);
    assert_eq!(status, 429, "{head}{body}");
    let retry: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without Retry-After:\n{head}"));
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert!(body.contains("--api-rate-limit"), "{body}");
    let (status, _, body) = curl(
        &server.token,
        "GET",
        &format!("{}/v1/apps/a", server.url),
        None,
    );
    assert_eq!(status, 200, "another token is still served: {body}");
    let (status, body) = http_get(http, "a.localhost").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from a\n"));
    drop(_web);
    agent.remove_machines();
}
