//! `POST /v1/apps/{app}/machines/{machine}/exec` and `GET /v1/apps/{app}/logs`: proxied to
//! the host agents that run the machines.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aloft_api::{ErrorBody, ExecRequest, ExecResponse, LogEntry, LogsQuery};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::mpsc;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, Routes, Scope};
use crate::control::Control;
use crate::services::machines::exec::AgentTarget;

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time an exec answer may take beyond the command's own timeout.
const EXEC_SLACK: Duration = Duration::from_secs(15);

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::POST, "/v1/apps/{app}/machines/{machine}/exec", exec)
        .at(Method::GET, "/v1/apps/{app}/logs", logs)
}

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

fn agent_url(t: &AgentTarget, rest: &str) -> String {
    format!("http://{}/machines/{}/{rest}", t.address, t.machine)
}

fn unreachable(t: &AgentTarget, e: &reqwest::Error) -> ApiError {
    tracing::warn!(host = %t.host, machine = %t.machine, error = %e, "agent API unreachable");
    ApiError::Unavailable(format!(
        "Host {} of machine {} cannot be reached",
        t.host, t.machine
    ))
}

/// An agent's error answer as ours.
async fn agent_error(t: &AgentTarget, response: reqwest::Response) -> ApiError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error)
        .unwrap_or(text);
    match status {
        400 => ApiError::BadRequest(message),
        404 => ApiError::NotFound(message),
        412 => ApiError::Precondition(message),
        _ => {
            tracing::warn!(host = %t.host, machine = %t.machine, status, %message, "agent API failed");
            ApiError::Unavailable(format!(
                "Host {} could not run the request in machine {}",
                t.host, t.machine
            ))
        }
    }
}

/// Run a command in a started machine and wait for it (Fly's exec).
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/exec", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)), request_body = ExecRequest,
    responses((status = 200, body = ExecResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, description = "machine not started", body = ErrorBody), (status = 503, description = "host unreachable", body = ErrorBody)))]
pub(super) async fn exec(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((app, machine)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Json<ExecResponse>, ApiError> {
    scope.require_app(&app)?;
    req.argv().map_err(ApiError::BadRequest)?;
    let target = control.machines().exec_target(&app, &machine)?;
    let timeout = Duration::from_secs(req.timeout_secs()) + EXEC_SLACK;
    let response = http()
        .post(agent_url(&target, "exec"))
        .bearer_auth(&target.secret)
        .json(&req)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| unreachable(&target, &e))?;
    if !response.status().is_success() {
        return Err(agent_error(&target, response).await);
    }
    let out = response
        .json::<ExecResponse>()
        .await
        .map_err(|e| unreachable(&target, &e))?;
    tracing::info!(app, machine, exit_code = out.exit_code, "exec finished");
    Ok(Json(out))
}

/// Newline-delimited JSON `LogEntry`s of the app's machines, oldest first; with
/// `follow=true` the stream stays open and carries new lines as the machines write them.
#[utoipa::path(get, path = "/v1/apps/{app}/logs", tag = "apps", params(("app" = String, Path), LogsQuery),
    responses((status = 200, description = "application/x-ndjson stream", body = LogEntry), (status = 404, body = ErrorBody)))]
pub(super) async fn logs(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    scope.require_app(&app)?;
    let targets =
        control
            .machines()
            .log_targets(&app, query.region.as_deref(), query.machine.as_deref())?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    for target in targets {
        tokio::spawn(pump(target, query.follow, tx.clone()));
    }
    drop(tx);
    let follow = query.follow;
    let stream = async_stream::stream! {
        if !follow {
            // Everything, merged by time.
            let mut lines: Vec<(String, Bytes)> = Vec::new();
            while let Some(line) = rx.recv().await {
                let ts = serde_json::from_slice::<LogEntry>(&line)
                    .map(|e| e.timestamp)
                    .unwrap_or_default();
                lines.push((ts, line));
            }
            lines.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, line) in lines {
                yield Ok::<Bytes, Infallible>(line);
            }
        } else {
            while let Some(line) = rx.recv().await {
                yield Ok(line);
            }
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Copies one machine's log lines from its agent into `tx` until the agent ends the stream
/// or nobody listens any more.
async fn pump(target: AgentTarget, follow: bool, tx: mpsc::Sender<Bytes>) {
    let url = agent_url(&target, "logs");
    let response = http()
        .get(&url)
        .query(&[("follow", if follow { "true" } else { "false" })])
        .bearer_auth(&target.secret)
        .send()
        .await;
    let mut response = match response {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let e = agent_error(&target, r).await;
            tracing::warn!(machine = %target.machine, error = %e, "logs not available");
            return;
        }
        Err(e) => {
            unreachable(&target, &e);
            return;
        }
    };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            chunk = response.chunk() => match chunk {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        if tx.send(Bytes::from(line)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(machine = %target.machine, error = %e, "log stream from agent ended");
                    return;
                }
            },
            () = tx.closed() => return,
        }
    }
}
