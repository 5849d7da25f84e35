//! The route table for edges: `/v1/routes` and its watch stream (join or admin tokens).

use std::convert::Infallible;
use std::sync::Arc;

use aloft_api::routes::{
    Autostop, IdleRequest, RouteTable, RoutesEvent, RoutesWatchQuery, WakeRequest,
};
use aloft_api::{ErrorBody, OkResponse, StopRequest};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::hosts::KEEPALIVE;
use super::{ApiError, ApiJson, ApiQuery, Routes, Scope};
use crate::control::Control;
use crate::services::machines::WaitFor;
use crate::services::tokens::TokenScope;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/routes", get_routes)
        .at(Method::GET, "/v1/routes/watch", watch_routes)
        .at(Method::POST, "/v1/routes/wake", wake)
        .at(Method::POST, "/v1/routes/idle", idle)
}

/// Edges run on hosts: they read the table with a join or admin token, never an app token.
fn require_edge(scope: &Scope) -> Result<(), ApiError> {
    match scope.0 {
        TokenScope::Admin | TokenScope::Join => Ok(()),
        _ => Err(ApiError::Forbidden(
            "The route table needs a join or admin token".to_owned(),
        )),
    }
}

/// The whole route table, at the control plane's current revision.
#[utoipa::path(get, path = "/v1/routes", tag = "routes",
    responses((status = 200, body = RouteTable), (status = 403, body = ErrorBody)))]
pub(super) async fn get_routes(
    State(control): State<Arc<Control>>,
    scope: Scope,
) -> Result<Json<RouteTable>, ApiError> {
    require_edge(&scope)?;
    Ok(Json(control.routes().table()?))
}

/// Newline-delimited JSON `RoutesEvent`s: the full table first if the revision is past
/// `since`, then a full table whenever routing changes, and a keep-alive `{"revision": N}`
/// every 10 s of quiet.
#[utoipa::path(get, path = "/v1/routes/watch", tag = "routes", params(RoutesWatchQuery),
    responses((status = 200, description = "application/x-ndjson stream", body = RoutesEvent), (status = 403, body = ErrorBody)))]
pub(super) async fn watch_routes(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiQuery(query): ApiQuery<RoutesWatchQuery>,
) -> Result<Response, ApiError> {
    require_edge(&scope)?;
    // Subscribe before the first build so no change falls between them.
    let mut revisions = control.subscribe();
    let first = control.routes().table()?;
    let mut shutdown = control.shutdown_signal();
    let stream = async_stream::stream! {
        let mut reached = first.revision.max(query.since);
        // Without a baseline the next change is always sent in full.
        let mut last = None;
        if first.revision > query.since {
            yield Ok::<Bytes, Infallible>(line(&RoutesEvent { revision: first.revision, table: Some(first.clone()) }));
            last = Some(first.apps);
        }
        loop {
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    match control.routes().table() {
                        Ok(table) => {
                            reached = table.revision;
                            if last.as_ref() != Some(&table.apps) {
                                last = Some(table.apps.clone());
                                yield Ok(line(&RoutesEvent { revision: table.revision, table: Some(table) }));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "route watch stream ended");
                            break;
                        }
                    }
                }
                () = tokio::time::sleep(KEEPALIVE) => {
                    yield Ok(line(&RoutesEvent { revision: reached, table: None }));
                }
                () = crate::core::shutting_down(&mut shutdown) => break,
            }
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// How long a wake waits for `started` unless the edge asks otherwise.
const WAKE_WAIT_SECS: u64 = 30;

/// An edge starts a stopped machine for a request and waits until it is `started`. Edges hold
/// join tokens, which cannot use the Machines API, so this is their way to autostart.
#[utoipa::path(post, path = "/v1/routes/wake", tag = "routes", request_body = WakeRequest,
    responses((status = 200, body = OkResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 408, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(super) async fn wake(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<WakeRequest>,
) -> Result<Json<OkResponse>, ApiError> {
    require_edge(&scope)?;
    control.machines().start(&req.app, &req.machine_id, None)?;
    let timeout = req.timeout.unwrap_or(WAKE_WAIT_SECS);
    control
        .machines()
        .wait(
            &req.app,
            &req.machine_id,
            &[WaitFor::State(aloft_api::MachineState::Started)],
            Some(timeout),
            None,
        )
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

/// An edge stops (or suspends) a machine it found idle.
#[utoipa::path(post, path = "/v1/routes/idle", tag = "routes", request_body = IdleRequest,
    responses((status = 200, body = OkResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 412, body = ErrorBody)))]
pub(super) async fn idle(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<IdleRequest>,
) -> Result<Json<OkResponse>, ApiError> {
    require_edge(&scope)?;
    match req.mode {
        Autostop::Suspend => control
            .machines()
            .suspend(&req.app, &req.machine_id, None)?,
        Autostop::Stop | Autostop::Off => {
            control
                .machines()
                .stop(&req.app, &req.machine_id, StopRequest::default(), None)?
        }
    }
    Ok(Json(OkResponse { ok: true }))
}

fn line(event: &RoutesEvent) -> Bytes {
    let mut bytes = serde_json::to_vec(event).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    Bytes::from(bytes)
}
