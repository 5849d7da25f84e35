//! Helpers for tests that go through an agent's edge: plain HTTP requests with a `Host`
//! header, HTTPS with curl trusting a given root, a busybox web machine to route to, and free
//! loopback ports for the edge's listeners.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{busybox_layout, ok, skopeo_push, Agent, Server};

/// How long [`http_get`] waits for the edge's answer (it may have to start a machine).
pub const EDGE_ANSWER_DEADLINE: Duration = Duration::from_secs(40);

/// A loopback port nothing listens on now, for a listener the test configures.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port is free")
        .port()
}

/// `GET path` with `Host: host` over a fresh connection to `edge`, waiting up to
/// `read_timeout` for the answer: the whole response, or `None` if none came.
fn http_response(
    edge: SocketAddr,
    host: &str,
    path: &str,
    read_timeout: Duration,
) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&edge, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    Some(response)
}

/// `GET /` through the edge with `Host: host`: the status code and the body, or `None` if no
/// complete answer came within [`EDGE_ANSWER_DEADLINE`].
pub fn http_get(edge: SocketAddr, host: &str) -> Option<(u16, String)> {
    http_get_within(edge, host, "/", EDGE_ANSWER_DEADLINE)
}

/// [`http_get`] of `path`, waiting up to `read_timeout` for the answer.
pub fn http_get_within(
    edge: SocketAddr,
    host: &str,
    path: &str,
    read_timeout: Duration,
) -> Option<(u16, String)> {
    let response = http_response(edge, host, path, read_timeout)?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The status code of `GET path` through the edge with `Host: host`, waiting up to
/// `read_timeout`; `None` if no answer came.
pub fn http_status(
    edge: SocketAddr,
    host: &str,
    path: &str,
    read_timeout: Duration,
) -> Option<u16> {
    let response = http_response(edge, host, path, read_timeout)?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// What `curl` did with one HTTPS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlAnswer {
    /// curl's exit code (0: a verified answer came), -1 if it was killed.
    pub code: i32,
    /// The response body.
    pub body: String,
    /// What curl printed on stderr (why it failed).
    pub stderr: String,
}

/// `curl` over HTTPS to `name` at the edge's `https` address (SNI and `Host` are `name`),
/// trusting only the certificates in `ca`, for at most 20 s.
pub fn curl_https(https: SocketAddr, name: &str, ca: &Path) -> CurlAnswer {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", https.port()))
        .arg(format!("https://{name}:{}/", https.port()))
        .output()
        .expect("curl runs (scripts/setup.sh installs it)");
    CurlAnswer {
        code: out.status.code().unwrap_or(-1),
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A self-signed certificate and key for `host`, made with openssl: (certificate, key).
pub fn self_signed_cert(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{host}.pem")),
        dir.join(format!("{host}.key")),
    );
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Creates app `app` and runs one busybox httpd machine of it in ams, serving
/// `hello from APP\n` on the edge's port 80 (service `80:8080/tcp:http`); the image is built
/// under `dir` and pushed to the server's registry. Returns the machine's id once it started.
pub fn run_web_machine(server: &Server, dir: &Path, app: &str) -> String {
    let layout = dir.join(format!("layout-{app}"));
    let page = format!("hello from {app}\n");
    let entry = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"];
    busybox_layout(&layout, "1", &page, &entry).expect("the busybox image builds");
    let registry = server.url.trim_start_matches("http://");
    let image = format!("{registry}/{app}/busybox:1");
    skopeo_push(&layout, "1", &image, &server.token).expect("the image is pushed");
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
    let m: serde_json::Value = serde_json::from_str(&run).expect("machine run --json prints JSON");
    assert_eq!(m["state"], "started", "{m}");
    m["id"].as_str().expect("the machine has an id").to_string()
}

/// A machine destroyed (its network namespace with it) when this is dropped, also when the
/// test fails; the agent removes whatever is left when it is dropped after this.
#[derive(Debug)]
pub struct WebMachine<'a> {
    server: &'a Server,
    app: String,
    /// The machine's id.
    pub id: String,
}

impl<'a> WebMachine<'a> {
    /// [`run_web_machine`], destroying the machine on drop.
    pub fn run(server: &'a Server, dir: &Path, app: &str) -> WebMachine<'a> {
        let id = run_web_machine(server, dir, app);
        WebMachine {
            server,
            app: app.to_string(),
            id,
        }
    }
}

impl Drop for WebMachine<'_> {
    fn drop(&mut self) {
        let _ = self.server.cli(&[
            "machine", "destroy", &self.id, "--app", &self.app, "--force",
        ]);
    }
}

impl Agent {
    /// The address of this agent's edge for `scheme` (`http` or `https`), from the last
    /// `edge listening on SCHEME://ADDR` line it printed.
    pub fn edge_listen_addr(&mut self, scheme: &str) -> Option<SocketAddr> {
        let marker = format!("edge listening on {scheme}://");
        let out = self.proc.output();
        out.lines()
            .filter_map(|l| l.split(marker.as_str()).nth(1))
            .next_back()
            .and_then(|a| a.trim().parse().ok())
    }
}
