//! Shared helpers: a server on a temp data dir, driven through `Router::oneshot`.
#![allow(dead_code)]

pub mod dns;

use std::time::Duration;

use aloft_control::acme::AcmeOptions;
use aloft_control::{Server, ServerOptions};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub router: Router,
    pub admin: String,
}

pub async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(ServerOptions::new(dir.path())).await.unwrap();
    let admin = server
        .admin_token_created
        .clone()
        .expect("first start creates an admin token");
    let router = server.router();
    Env {
        dir,
        server,
        router,
        admin,
    }
}

/// A server that asks `dns` for hostname ownership records.
pub async fn env_with_dns(dns: &dns::TestDns) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(ServerOptions::new(dir.path()))
        .await
        .unwrap()
        .dns_resolver(Some(dns.addr));
    let admin = server
        .admin_token_created
        .clone()
        .expect("first start creates an admin token");
    let router = server.router();
    Env {
        dir,
        server,
        router,
        admin,
    }
}

/// Reopens the same data dir (after dropping the old server) with another heartbeat timeout.
pub async fn reopen(env: Env, heartbeat_timeout: Duration) -> Env {
    let Env {
        dir, server, admin, ..
    } = env;
    drop(server);
    let mut options = ServerOptions::new(dir.path());
    options.heartbeat_timeout = heartbeat_timeout;
    let server = Server::open(options).await.unwrap();
    let router = server.router();
    Env {
        dir,
        server,
        router,
        admin,
    }
}

pub struct Call<'a> {
    router: &'a Router,
    method: Method,
    path: String,
    token: Option<String>,
    body: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

impl Env {
    pub fn call(&self, method: Method, path: impl Into<String>) -> Call<'_> {
        Call {
            router: &self.router,
            method,
            path: path.into(),
            token: Some(self.admin.clone()),
            body: None,
            headers: Vec::new(),
        }
    }

    pub fn get(&self, path: impl Into<String>) -> Call<'_> {
        self.call(Method::GET, path)
    }

    pub fn post(&self, path: impl Into<String>) -> Call<'_> {
        self.call(Method::POST, path)
    }

    pub fn delete(&self, path: impl Into<String>) -> Call<'_> {
        self.call(Method::DELETE, path)
    }

    /// Creates an app and registers host(s); returns nothing, panics on failure.
    pub async fn app(&self, name: &str) {
        let (status, body) = self
            .post("/v1/apps")
            .json(json!({"app_name": name, "org_slug": "personal"}))
            .send()
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    pub async fn host(&self, id: &str, region: &str, cpus: i64, memory_mb: i64) {
        let (status, body) = self
            .post("/v1/hosts")
            .json(json!({"id": id, "region": region, "address": "127.0.0.1:1", "cpus": cpus, "memory_mb": memory_mb}))
            .send()
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Registers a host with the admin token and returns the credential it was handed
    /// (what the host's agent and edge then speak with).
    pub async fn host_credential(&self, id: &str, region: &str) -> String {
        let (status, body) = self
            .post("/v1/hosts")
            .json(json!({"id": id, "region": region, "address": "127.0.0.1:1", "cpus": 4, "memory_mb": 4096}))
            .send()
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["credential"]
            .as_str()
            .expect("a credential")
            .to_owned()
    }

    /// Creates a machine from a small config and returns its JSON.
    pub async fn machine(&self, app: &str, extra: Value) -> Value {
        let mut body =
            json!({"config": {"image": "nginx:1.25", "guest": {"cpus": 1, "memory_mb": 256}}});
        merge(&mut body, extra);
        let (status, machine) = self
            .post(format!("/v1/apps/{app}/machines"))
            .json(body)
            .send()
            .await;
        assert_eq!(status, StatusCode::OK, "{machine}");
        machine
    }

    /// An agent report for a machine's current instance.
    pub async fn report(&self, host: &str, machine: &Value, state: &str) -> (StatusCode, Value) {
        let id = machine["id"].as_str().unwrap();
        let current = self
            .get(format!("/v1/apps/{}/machines/{id}", app_of(machine)))
            .send()
            .await
            .1;
        self.post(format!("/v1/hosts/{host}/machines/{id}/status"))
            .json(json!({"instance_id": current["instance_id"], "state": state}))
            .send()
            .await
    }

    /// `POST /v1/tokens` with `body` as admin (e.g. `{"app": "web"}` or `{"scope": "join"}`),
    /// which must create it; returns the new token.
    pub async fn token(&self, body: Value) -> String {
        let (status, token) = self.post("/v1/tokens").json(body).send().await;
        assert_eq!(status, StatusCode::CREATED, "{token}");
        token["token"].as_str().unwrap().to_owned()
    }

    /// A new token scoped to app `app`.
    pub async fn app_token(&self, app: &str) -> String {
        self.token(json!({ "app": app })).await
    }

    /// Points the control plane's ACME client at a directory nothing listens on, so orders
    /// are accepted and then fail.
    pub fn use_unreachable_acme(&self) {
        self.server.control().acme().configure(AcmeOptions {
            directory: "https://127.0.0.1:9/dir".to_owned(),
            email: None,
            ca_root: None,
            challenge: None,
        });
    }

    /// Sets the networks dedicated addresses are allocated from, as `--ip-pool` does.
    pub fn use_ip_pools(&self, pools: &[&str]) {
        let pools = pools.iter().map(|p| p.parse().unwrap()).collect();
        self.server.control().ips().configure(pools);
    }

    pub async fn state(&self, app: &str, id: &str) -> String {
        let (status, m) = self
            .get(format!("/v1/apps/{app}/machines/{id}"))
            .send()
            .await;
        assert_eq!(status, StatusCode::OK, "{m}");
        m["state"].as_str().unwrap().to_owned()
    }
}

/// Test machines are named `<app>-...` by default; tests pass `"name"` only with that prefix.
pub fn app_of(machine: &Value) -> String {
    machine["name"]
        .as_str()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .to_owned()
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, e) => *b = e,
    }
}

impl Call<'_> {
    pub fn token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(serde_json::to_vec(&body).unwrap());
        self
    }

    pub fn raw(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn request(self) -> (Router, Request<Body>) {
        let mut builder = Request::builder().method(self.method).uri(self.path);
        if let Some(token) = self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if self.body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        for (k, v) in self.headers {
            builder = builder.header(k, v);
        }
        let request = builder
            .body(Body::from(self.body.unwrap_or_default()))
            .unwrap();
        (self.router.clone(), request)
    }

    /// Sends and returns status and JSON body (`null` when empty).
    pub async fn send(self) -> (StatusCode, Value) {
        let (router, request) = self.request();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }
}

/// Reads newline-delimited JSON from a streaming body.
pub struct Lines {
    body: Body,
    buf: Vec<u8>,
}

impl Lines {
    pub async fn open(call: Call<'_>) -> Lines {
        let (router, request) = call.request();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Lines {
            body: response.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next line, failing the test if none arrives within 10 s.
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=pos).collect();
                    return serde_json::from_slice::<Value>(&line).unwrap();
                }
                let frame = self.body.frame().await.expect("stream ended").unwrap();
                if let Ok(data) = frame.into_data() {
                    self.buf.extend_from_slice(&data);
                }
            }
        })
        .await
        .expect("no watch line within 10 s")
    }

    /// The next full route table on a routes watch (keep-alive lines carry none).
    pub async fn next_table(&mut self) -> Value {
        loop {
            let line = self.next().await;
            if !line["table"].is_null() {
                return line["table"].clone();
            }
        }
    }
}

/// Field `field` of app `app` in route table `table`.
pub fn app_field(table: &Value, app: &str, field: &str) -> Value {
    table["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == app)
        .unwrap_or_else(|| panic!("no app {app} in {table}"))[field]
        .clone()
}
