//! Real HTTP servers standing in for machines' apps, a real waker, and an HTTP client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aloft_proxy::{
    AppRoutes, Autostop, Concurrency, ConcurrencyKind, MachineRoute, MachineState, PortRoute,
    ServiceRoutes, WakeFuture, Waker,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

pub const DOMAIN: &str = "aloft.test";

/// A machine's app: answers with its name, echoes headers and bodies, holds requests on `/hold`
/// until released, asks for replays on request, and echoes bytes after an upgrade.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub release: Arc<Semaphore>,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(addr: SocketAddr, name: &str) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let (n, h, r) = (name.to_string(), hits.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (n, h, r, tx) = (n.clone(), h.clone(), r.clone(), tx.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (n, h, r, tx) = (n.clone(), h.clone(), r.clone(), tx.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(answer(req, &n, &h, &r, &tx).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            hits,
            release,
            arrivals: tokio::sync::Mutex::new(rx),
            task,
        }
    }

    /// Waits until a request has arrived on `/hold`.
    pub async fn arrived(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.arrivals.lock().await.recv())
            .await
            .expect("a held request should arrive")
            .expect("backend alive");
    }
}

async fn answer(
    mut req: Request<Incoming>,
    name: &str,
    hits: &AtomicUsize,
    release: &Semaphore,
    arrivals: &mpsc::UnboundedSender<()>,
) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    let version = format!("{:?}", req.version());
    let mut resp = match req.uri().path() {
        "/hold" => {
            let _ = arrivals.send(());
            release.acquire().await.expect("semaphore open").forget();
            Response::new(Full::new(Bytes::from(format!("machine={name}"))))
        }
        "/headers" => {
            let map: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            Response::new(Full::new(Bytes::from(serde_json::to_vec(&map).unwrap())))
        }
        "/echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::new(Full::new(body))
        }
        "/replay" => {
            let src = req
                .headers()
                .get("fly-replay-src")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let ask = req.headers().get("x-test-replay").cloned();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            match (src, ask) {
                (None, Some(ask)) => {
                    let mut r = Response::new(Full::new(Bytes::from("replay me")));
                    let name = if String::from_utf8_lossy(ask.as_bytes()).contains("aloft") {
                        "aloft-replay"
                    } else {
                        "fly-replay"
                    };
                    r.headers_mut().insert(name, ask);
                    r
                }
                (src, _) => Response::new(Full::new(Bytes::from(format!(
                    "machine={name} src={} body={}",
                    src.unwrap_or_default(),
                    String::from_utf8_lossy(&body)
                )))),
            }
        }
        "/ws"
            if req.headers().contains_key("x-test-replay")
                && !req.headers().contains_key("fly-replay-src") =>
        {
            let mut r = Response::new(Full::new(Bytes::from("replay me")));
            r.headers_mut()
                .insert("fly-replay", req.headers()["x-test-replay"].clone());
            r
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "Upgrade".parse().unwrap());
            r
        }
        _ => Response::new(Full::new(Bytes::from(format!("machine={name}")))),
    };
    resp.headers_mut()
        .insert("x-machine", name.parse().unwrap());
    resp.headers_mut()
        .insert("x-version", version.parse().unwrap());
    resp
}

/// A port free on 127.0.0.2; other loopback addresses (127.0.0.3, ...) share it so that several
/// machines can have the same internal port, as real machines do.
pub async fn shared_port() -> u16 {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    l.local_addr().unwrap().port()
}

pub fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

pub fn machine(id: &str, region: &str, host: &str, n: u8) -> MachineRoute {
    MachineRoute {
        id: id.into(),
        region: region.into(),
        host_id: host.into(),
        address: ip(n),
        state: MachineState::Started,
        healthy: true,
        cordoned: false,
    }
}

pub fn service(port: u16) -> ServiceRoutes {
    ServiceRoutes {
        protocol: "tcp".into(),
        internal_port: port,
        ports: vec![
            PortRoute {
                port: 80,
                handlers: vec!["http".into()],
                force_https: false,
                proxy_proto: None,
            },
            PortRoute {
                port: 443,
                handlers: vec!["tls".into(), "http".into()],
                force_https: false,
                proxy_proto: None,
            },
        ],
        concurrency: Concurrency {
            kind: ConcurrencyKind::Requests,
            soft_limit: 20,
            hard_limit: None,
        },
        autostart: true,
        autostop: Autostop::Off,
        min_machines_running: 0,
        h2_backend: false,
    }
}

pub fn app(name: &str, port: u16, machines: Vec<MachineRoute>) -> AppRoutes {
    AppRoutes {
        app: name.into(),
        org: "personal".into(),
        hostnames: vec![],
        addresses: Vec::new(),
        services: vec![service(port)],
        machines,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// Sends one request to the edge at `edge` with `Host: host`.
pub async fn send(
    edge: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(edge)
        .await
        .expect("connect to edge");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tx
        .send_request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("edge answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(edge: SocketAddr, host: &str, path: &str) -> Reply {
    send(edge, "GET", host, path, &[], vec![]).await
}

/// Polls `cond` until it holds, failing the test after 20 seconds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A waker that records what it was asked and tells the test, which then starts (or not) the
/// machine's real server itself.
#[derive(Default)]
pub struct RecordingWaker {
    pub started: Mutex<Vec<String>>,
    pub stopped: Mutex<Vec<(String, Autostop)>>,
    pub start_tx: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl Waker for RecordingWaker {
    fn start<'a>(&'a self, _app: &'a str, machine_id: &'a str) -> WakeFuture<'a> {
        Box::pin(async move {
            self.started.lock().unwrap().push(machine_id.to_string());
            if let Some(tx) = self.start_tx.lock().unwrap().as_ref() {
                let _ = tx.send(machine_id.to_string());
            }
            Ok(())
        })
    }

    fn stop<'a>(&'a self, _app: &'a str, machine_id: &'a str, mode: Autostop) -> WakeFuture<'a> {
        Box::pin(async move {
            self.stopped
                .lock()
                .unwrap()
                .push((machine_id.to_string(), mode));
            Ok(())
        })
    }
}

/// An edge in region `ams` on host `h1` serving `apps` at revision 1.
pub async fn edge_with(
    apps: Vec<AppRoutes>,
    f: impl FnOnce(&mut aloft_proxy::EdgeOptions),
) -> aloft_proxy::Edge {
    let mut o = aloft_proxy::EdgeOptions::new("127.0.0.1:0".parse().unwrap(), DOMAIN, "ams", "h1");
    f(&mut o);
    let e = aloft_proxy::Edge::new(o).await.expect("edge starts");
    assert!(e
        .update_routes(aloft_proxy::RouteTable { revision: 1, apps })
        .unwrap());
    e
}
