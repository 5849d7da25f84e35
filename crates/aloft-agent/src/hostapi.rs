//! The agent's own HTTP API, called by the control plane only: exec a command in a machine
//! (`POST /machines/{id}/exec`) and read its log (`GET /machines/{id}/logs?follow=&since=`,
//! newline-delimited [`aloft_api::LogEntry`]).
//!
//! Every call carries `Authorization: Bearer <secret>`, the random secret this agent reported
//! when it registered. The API only reads the machines' state; it never changes it.

use std::convert::Infallible;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;
use std::time::Duration;

use aloft_api::{AgentLogsQuery, ErrorBody, ExecRequest, ExecResponse, LogEntry};
use aloft_init::protocol::LogRecord;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::runtime::{self, RuntimeStatus, SandboxDriver};
use crate::store::AgentStore;

/// The most of a log read in one poll.
const MAX_POLL_BYTES: u64 = 1 << 20;

/// How often a followed log is looked at for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Why a host API call failed.
#[derive(Debug, thiserror::Error)]
pub enum HostApiError {
    #[error("Missing or wrong bearer secret")]
    Unauthorized,
    #[error("Machine {0} is not on this host")]
    NotFound(String),
    #[error("Machine {0} is not running")]
    NotRunning(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("Exec in machine {id} failed")]
    Exec {
        id: String,
        #[source]
        source: runtime::RuntimeError,
    },
    #[error("Sandbox state of machine {id} cannot be read")]
    State {
        id: String,
        #[source]
        source: runtime::RuntimeError,
    },
    #[error("Agent store failed")]
    Store(#[from] crate::store::StoreError),
    #[error("Cannot listen on {addr} for the host API")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl IntoResponse for HostApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            HostApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            HostApiError::NotFound(_) => StatusCode::NOT_FOUND,
            HostApiError::NotRunning(_) => StatusCode::PRECONDITION_FAILED,
            HostApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let error = crate::supervisor::error_chain(&self);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            warn!(%error, "host API call failed");
        }
        (status, Json(ErrorBody { error })).into_response()
    }
}

/// What the host API serves from.
#[derive(Debug, Clone)]
pub struct HostApi {
    pub secret: String,
    pub region: String,
    pub driver: SandboxDriver,
    pub store: AgentStore,
}

/// The secret kept in the agent's store, made on first use.
pub fn secret(store: &AgentStore) -> Result<String, crate::store::StoreError> {
    if let Some(s) = store.meta("api_secret")? {
        return Ok(s);
    }
    use rand::Rng as _;
    let mut rng = rand::rng();
    let s: String = (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect();
    store.set_meta("api_secret", &s)?;
    Ok(s)
}

/// Binds the host API's listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HostApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HostApiError::Bind { addr, source })
}

/// The `ip:port` the control plane reaches the API at: the host's `address` with the bound
/// port (an address that already names a port is kept as is).
pub fn advertised(address: &str, bound: SocketAddr) -> String {
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return SocketAddr::new(ip, bound.port()).to_string();
    }
    if address.parse::<SocketAddr>().is_ok() {
        return address.to_owned();
    }
    format!("{address}:{}", bound.port())
}

/// Serves the API on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, api: HostApi) {
    let api = Arc::new(api);
    let router = Router::new()
        .route("/machines/{id}/exec", post(exec))
        .route("/machines/{id}/logs", get(logs))
        .layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "host API listening");
    }
    if let Err(e) = axum::serve(listener, router).await {
        warn!(error = %e, "host API stopped");
    }
}

async fn authorize(State(api): State<Arc<HostApi>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), api.secret.as_bytes()) {
        return HostApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Constant-time comparison of two secrets.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl HostApi {
    /// The machine must be assigned to this host.
    fn known(&self, id: &str) -> Result<(), HostApiError> {
        match self.store.machine(id)? {
            Some(_) => Ok(()),
            None => Err(HostApiError::NotFound(id.to_owned())),
        }
    }
}

async fn exec(
    State(api): State<Arc<HostApi>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Json<ExecResponse>, HostApiError> {
    let req: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| HostApiError::BadRequest(format!("Invalid exec body: {e}")))?;
    let cmd = req.argv().map_err(HostApiError::BadRequest)?;
    let timeout = Duration::from_secs(req.timeout_secs());
    api.known(&id)?;
    let state = api
        .driver
        .state(&id)
        .await
        .map_err(|source| HostApiError::State {
            id: id.clone(),
            source,
        })?;
    if !state.is_some_and(|s| s.status == RuntimeStatus::Running) {
        return Err(HostApiError::NotRunning(id));
    }
    let out = api
        .driver
        .exec(
            &id,
            &runtime::ExecRequest {
                cmd,
                stdin: req.stdin.map(String::into_bytes),
                timeout,
                env: Vec::new(),
            },
        )
        .await
        .map_err(|source| HostApiError::Exec {
            id: id.clone(),
            source,
        })?;
    Ok(Json(ExecResponse {
        exit_code: i64::from(out.exit_code),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: out.timed_out,
    }))
}

async fn logs(
    State(api): State<Arc<HostApi>>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<AgentLogsQuery>,
) -> Result<Response, HostApiError> {
    api.known(&id)?;
    let opener = |rotated: bool| {
        let driver = api.driver.clone();
        let id = id.clone();
        move || driver.open_log(&id, rotated).ok()
    };
    let (current, rotated) = (opener(false), opener(true));
    let region = api.region.clone();
    let since = query.since.unwrap_or(0);
    let stream = async_stream::stream! {
        let mut out = Vec::new();
        for line in Tail::new(rotated).poll() {
            push_entry(&mut out, &line, &id, &region, since);
        }
        let mut tail = Tail::new(current);
        for line in tail.poll() {
            push_entry(&mut out, &line, &id, &region, since);
        }
        yield Ok::<Bytes, Infallible>(Bytes::from(out));
        if query.follow {
            loop {
                tokio::time::sleep(FOLLOW_POLL).await;
                let mut out = Vec::new();
                for line in tail.poll() {
                    push_entry(&mut out, &line, &id, &region, since);
                }
                if !out.is_empty() {
                    yield Ok(Bytes::from(out));
                }
            }
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Appends one NDJSON [`LogEntry`] for a raw log record line (skipped when unreadable or
/// older than `since`).
fn push_entry(out: &mut Vec<u8>, raw: &[u8], id: &str, region: &str, since: u64) {
    let Ok(record) = serde_json::from_slice::<LogRecord>(raw) else {
        return;
    };
    if record.ts < since {
        return;
    }
    let entry = to_entry(record, id, region);
    if let Ok(mut bytes) = serde_json::to_vec(&entry) {
        bytes.push(b'\n');
        out.extend_from_slice(&bytes);
    }
}

/// A log record as the API shows it.
pub fn to_entry(record: LogRecord, id: &str, region: &str) -> LogEntry {
    let timestamp = chrono::DateTime::from_timestamp_millis(record.ts as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let level = match record.stream.as_str() {
        "stderr" => "error",
        "init" => "debug",
        _ => "info",
    };
    LogEntry {
        timestamp,
        message: record.line,
        level: Some(level.to_owned()),
        instance: id.to_owned(),
        region: region.to_owned(),
        stream: record.stream,
    }
}

/// Reads the complete lines appended to a file since the last poll; starts over when the
/// file is replaced (rotation) or truncated.
struct Tail<F> {
    open: F,
    offset: u64,
    inode: Option<u64>,
    partial: Vec<u8>,
}

impl<F: FnMut() -> Option<std::fs::File>> Tail<F> {
    /// `open` opens the file afresh (the driver's confined open of a machine log).
    fn new(open: F) -> Tail<F> {
        Tail {
            open,
            offset: 0,
            inode: None,
            partial: Vec::new(),
        }
    }

    fn poll(&mut self) -> Vec<Vec<u8>> {
        let Some(mut file) = (self.open)() else {
            return Vec::new();
        };
        let Ok(meta) = file.metadata() else {
            return Vec::new();
        };
        if self.inode != Some(meta.ino()) || meta.len() < self.offset {
            self.inode = Some(meta.ino());
            self.offset = 0;
            self.partial.clear();
        }
        if meta.len() == self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        // At most one chunk per poll: the machine writes this file and may grow it as
        // fast as the agent reads.
        let mut buf = Vec::new();
        let Ok(n) = (&mut file).take(MAX_POLL_BYTES).read_to_end(&mut buf) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            lines.push(line[..line.len() - 1].to_vec());
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address_takes_the_bound_port() {
        let bound: SocketAddr = "0.0.0.0:4281".parse().unwrap();
        assert_eq!(advertised("10.0.0.5", bound), "10.0.0.5:4281");
        assert_eq!(advertised("::1", bound), "[::1]:4281");
        assert_eq!(advertised("host.example", bound), "host.example:4281");
        assert_eq!(advertised("10.0.0.5:9", bound), "10.0.0.5:9");
    }

    #[test]
    fn tail_reads_appended_lines_and_restarts_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, b"a\nb\npart").unwrap();
        let mut tail = Tail::new(|| std::fs::File::open(&path).ok());
        assert_eq!(tail.poll(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(tail.poll().is_empty());
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"ial\n").unwrap();
        assert_eq!(tail.poll(), vec![b"partial".to_vec()]);
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        std::fs::write(&path, b"new\n").unwrap();
        assert_eq!(tail.poll(), vec![b"new".to_vec()]);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"", b"abc"));
    }
}
