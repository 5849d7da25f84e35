//! End-to-end ACME against a real ACME CA (Debian's `pebble`, with `pebble-challtestsrv` as
//! its DNS): a server started with `--acme-directory`, an agent whose edge serves HTTP and
//! HTTPS, and an app with a machine. `aloft certs add HOST --app APP` orders a certificate, the
//! control plane solves the challenge through the edge (TLS-ALPN-01 by default since the edge
//! serves HTTPS, HTTP-01 on request), and the edge then serves a certificate that verifies
//! against pebble's root for HOST, which routes to the app. A name that resolves to no edge fails with the CA's
//! reason, and nothing else breaks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aloft_testkit::edge::{curl_https, free_port, WebMachine};
use aloft_testkit::{ok, stderr, stdout, wait_for, Agent, Proc, Server};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aloft"))
}

/// A program from Debian's `pebble` package (scripts/setup.sh installs it).
fn pebble_bin(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: install Debian's pebble package (scripts/setup.sh)",
        path.display()
    );
    path
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test root and a certificate it signs for pebble's own HTTPS listeners (127.0.0.1 and
/// localhost): (root, certificate, key).
fn pebble_listener_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (root, root_key) = (p("pebble-root.pem"), p("pebble-root-key.pem"));
    let (cert, key, csr, ext) = (
        p("pebble-cert.pem"),
        p("pebble-key.pem"),
        p("pebble.csr"),
        p("pebble.ext"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=test ACME listener root",
    ];
    args.extend(ec);
    args.extend(["-keyout", &root_key, "-out", &root]);
    openssl(&args);
    let mut args = vec!["req", "-subj", "/CN=localhost"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr]);
    openssl(&args);
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &root,
        "-CAkey",
        &root_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (root.into(), cert.into(), key.into())
}

/// pebble and its DNS, validating challenges on the edge's HTTP and HTTPS ports.
struct Pebble {
    _ca: Proc,
    _dns: Proc,
    directory: String,
    /// pebble's DNS (`127.0.0.1:PORT`), also the server's resolver.
    dns: String,
    management: u16,
    dns_management: u16,
    /// The root pebble's own HTTPS listeners chain to.
    root: PathBuf,
}

impl Pebble {
    fn start(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
        let (root, cert, key) = pebble_listener_cert(dir);
        let (listen, management) = (free_port(), free_port());
        let (dns, dns_management) = (free_port(), free_port());
        let dns_addr = format!("127.0.0.1:{dns}");
        let dns_mgmt_addr = format!("127.0.0.1:{dns_management}");
        // Every name resolves to the edge's address (127.0.0.1) unless told otherwise.
        let (dns_proc, _) = Proc::spawn_until(
            "pebble-challtestsrv",
            &pebble_bin("pebble-challtestsrv"),
            &[
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &dns_addr,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &dns_mgmt_addr,
            ],
            &[],
            "Starting management server",
        )
        .unwrap();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let (ca, _) = Proc::spawn_until(
            "pebble",
            &pebble_bin("pebble"),
            &[
                "-config",
                &config_path.to_string_lossy(),
                "-dnsserver",
                &dns_addr,
            ],
            &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
            "Listening on",
        )
        .unwrap();
        Pebble {
            _ca: ca,
            _dns: dns_proc,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            dns: dns_addr,
            management,
            dns_management,
            root,
        }
    }

    /// The root pebble issues under (from its management interface), written to `path`.
    fn issuing_root(&self, path: &Path) {
        let root = self.root.to_string_lossy();
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        std::fs::write(path, management_call(&["--cacert", &root, &url])).unwrap();
    }

    /// Makes `host` resolve to `ip` for pebble.
    fn add_a(&self, host: &str, ip: &str) {
        let body = serde_json::json!({ "host": format!("{host}."), "addresses": [ip] });
        let url = format!("http://127.0.0.1:{}/add-a", self.dns_management);
        management_call(&["-d", &body.to_string(), &url]);
    }
}

/// `curl -sS --fail --max-time 10 ARGS…` against a management interface of pebble, which
/// must succeed; returns the body.
fn management_call(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn show(server: &Server, host: &str) -> Value {
    serde_json::from_str(&ok(server.cli(&["certs", "show", host, "--json"]))).unwrap()
}

#[test]
fn certificates_are_ordered_from_an_acme_ca_with_both_challenges_and_served_by_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), http, https);
    let ca_root = pebble.root.to_string_lossy().into_owned();
    let server = Server::start_with(
        bin(),
        &[
            "--acme-directory",
            &pebble.directory,
            "--acme-ca-root",
            &ca_root,
            "--acme-email",
            "ops@example.org",
            "--dns-resolver",
            &pebble.dns,
        ],
    )
    .unwrap();
    let edge_http: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let edge_https: SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let (listen_http, listen_https) = (edge_http.to_string(), edge_https.to_string());
    let _agent = Agent::start_joining(
        bin(),
        &server,
        "ams",
        &dir.path().join("agent"),
        "acme",
        &["--http", &listen_http, "--https", &listen_https],
    )
    .unwrap();
    let _machine = WebMachine::run(&server, dir.path(), "test");
    let root = dir.path().join("pebble-issuing-root.pem");
    pebble.issuing_root(&root);

    // Before any order, test.example is no app's name: the edge has no certificate for it.
    wait_for("the edge serves HTTPS", Duration::from_secs(30), || {
        let r = curl_https(edge_https, "test.localhost", &root);
        (r.code != 7).then_some(r)
    })
    .unwrap();
    let code = curl_https(edge_https, "test.example", &root).code;
    assert_ne!(code, 0, "nothing verifies for test.example yet");

    // TLS-ALPN-01 by default (the edge serves HTTPS). The name routes to the app.
    let out = server.cli(&["certs", "add", "test.example", "--app", "test", "--wait"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("Status:      issued"),
        "{}",
        stdout(&out)
    );
    let info = show(&server, "test.example");
    assert_eq!(info["source"], "acme", "{info}");
    assert_eq!(info["app"], "test", "{info}");
    assert_eq!(info["status"], "issued", "{info}");
    assert_eq!(info["challenge"], "tls-alpn-01", "{info}");
    assert!(
        info["expires_at"].as_str().is_some_and(|e| e > "2026"),
        "{info}"
    );
    assert_eq!(info["fingerprint"].as_str().unwrap().len(), 64, "{info}");
    let answer = wait_for(
        "the edge serves the ACME certificate for test.example",
        Duration::from_secs(30),
        || Some(curl_https(edge_https, "test.example", &root)).filter(|r| r.code == 0),
    )
    .unwrap();
    assert_eq!(
        answer.body, "hello from test\n",
        "the request reached the app"
    );

    // HTTP-01 when asked: pebble fetches the key authorization from the edge's HTTP port.
    let out = server.cli(&[
        "certs",
        "add",
        "www.example",
        "--app",
        "test",
        "--challenge",
        "http-01",
        "--wait",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let info = show(&server, "www.example");
    assert_eq!(info["status"], "issued", "{info}");
    assert_eq!(info["challenge"], "http-01", "{info}");
    let answer = wait_for(
        "the edge serves the ACME certificate for www.example",
        Duration::from_secs(30),
        || Some(curl_https(edge_https, "www.example", &root)).filter(|r| r.code == 0),
    )
    .unwrap();
    assert_eq!(
        answer.body, "hello from test\n",
        "www.example routes to the app too"
    );

    // A name that resolves to no edge: the order fails with the CA's reason.
    pebble.add_a("nowhere.example", "127.0.0.2");
    let out = server.cli(&["certs", "add", "nowhere.example", "--app", "test", "--wait"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let info = show(&server, "nowhere.example");
    assert_eq!(info["status"], "failed", "{info}");
    let error = info["error"].as_str().unwrap_or_default();
    eprintln!("the failed order says: {error}");
    assert!(error.contains("did not validate nowhere.example"), "{info}");
    assert!(
        error.len() > "did not validate nowhere.example: ".len() + 40,
        "{info}"
    );
    assert!(info.get("expires_at").is_none(), "{info}");
    let code = curl_https(edge_https, "nowhere.example", &root).code;
    assert_ne!(code, 0, "nothing is served for a failed order");

    // Nothing else broke: the list shows all three, and the issued ones are still served.
    let list = ok(server.cli(&["certs", "list"]));
    for want in [
        "test.example",
        "www.example",
        "nowhere.example",
        "failed",
        "issued",
    ] {
        assert!(list.contains(want), "{want} missing from\n{list}");
    }
    let answer = curl_https(edge_https, "test.example", &root);
    assert_eq!(
        (answer.code, answer.body.as_str()),
        (0, "hello from test\n"),
        "{}",
        answer.stderr
    );

    // Removing an ACME certificate stops serving it.
    ok(server.cli(&["certs", "remove", "www.example"]));
    wait_for(
        "the edge drops the removed certificate",
        Duration::from_secs(30),
        || (curl_https(edge_https, "www.example", &root).code != 0).then_some(()),
    )
    .unwrap();
}

#[test]
fn ordering_without_an_acme_directory_or_for_a_wildcard_is_refused() {
    let server = Server::start(bin()).unwrap();
    ok(server.cli(&["apps", "create", "shop"]));
    let out = server.cli(&["certs", "add", "shop.example.com", "--app", "shop"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--acme-directory"),
        "{}",
        stderr(&out)
    );
    let server =
        Server::start_with(bin(), &["--acme-directory", "https://127.0.0.1:9/dir"]).unwrap();
    ok(server.cli(&["apps", "create", "shop"]));
    let out = server.cli(&["certs", "add", "*.example.com", "--app", "shop"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("DNS-01"), "{}", stderr(&out));
    // An unreachable CA: the order fails with a message, and the server keeps serving.
    let out = server.cli(&[
        "certs",
        "add",
        "shop.example.com",
        "--app",
        "shop",
        "--wait",
    ]);
    assert!(!out.status.success());
    let info = show(&server, "shop.example.com");
    assert_eq!(info["status"], "failed", "{info}");
    assert!(
        info["error"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1:9"),
        "{info}"
    );
    ok(server.cli(&["certs", "list"]));
}
