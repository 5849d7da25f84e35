//! The agent protocol: `/v1/hosts`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use aloft_api::{
    CreateJoinTokenRequest, EnrolledHost, ErrorBody, Host, JoinToken, LoadReport, MeshPeer,
    OkResponse, RegisterHostRequest, StatusReport, WatchEvent, WatchQuery,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, Routes, Scope};
use crate::control::Control;
use crate::services::hosts::Enroller;
use crate::services::tokens::TokenScope;

/// How often an idle watch stream sends a keep-alive line.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/hosts", list_hosts)
        .at(Method::POST, "/v1/hosts", register_host)
        .at(Method::POST, "/v1/hosts/join-tokens", create_join_token)
        .at(Method::DELETE, "/v1/hosts/{host}", remove_host)
        .at(Method::POST, "/v1/hosts/{host}/revoke", revoke_host)
        .at(Method::POST, "/v1/hosts/{host}/drain", drain_host)
        .at(Method::POST, "/v1/hosts/{host}/undrain", undrain_host)
        .at(Method::POST, "/v1/hosts/{host}/heartbeat", heartbeat)
        .at(Method::GET, "/v1/hosts/{host}/watch", watch)
        .at(
            Method::POST,
            "/v1/hosts/{host}/machines/{machine}/status",
            report_status,
        )
        .at(Method::POST, "/v1/hosts/{host}/load", report_load)
        .at(Method::GET, "/v1/mesh/peers", mesh_peers)
}

/// Every registered host that has mesh info, by host index (a host credential or the admin token). Agents
/// poll it and mirror it, leaving themselves out.
#[utoipa::path(get, path = "/v1/mesh/peers", tag = "hosts",
    responses((status = 200, body = Vec<MeshPeer>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn mesh_peers(
    State(control): State<Arc<Control>>,
    scope: Scope,
) -> Result<Json<Vec<MeshPeer>>, ApiError> {
    scope.require_hosts()?;
    Ok(Json(control.hosts().mesh_peers()?))
}

/// An agent reports the load that entered at its edge since its previous report; the
/// control plane attributes it to the host's region and keeps the latest per host.
#[utoipa::path(post, path = "/v1/hosts/{host}/load", tag = "hosts", params(("host" = String, Path)),
    request_body = LoadReport,
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn report_load(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(host): ApiPath<String>,
    ApiJson(report): ApiJson<LoadReport>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_host(&host)?;
    control.autoscale().record_load(&host, report)?;
    Ok(Json(OkResponse { ok: true }))
}

/// List hosts (admin).
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = Vec<Host>), (status = 403, body = ErrorBody)))]
pub(super) async fn list_hosts(
    State(control): State<Arc<Control>>,
    scope: Scope,
) -> Result<Json<Vec<Host>>, ApiError> {
    scope.require_admin()?;
    Ok(Json(control.hosts().list()?))
}

/// Enrols a host with a join token (a new id only: 409 for a registered one) and answers
/// with its credential; re-registers a host with its own credential; registers any id with
/// the admin token (and hands it a fresh credential).
#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", request_body = RegisterHostRequest,
    responses((status = 200, body = EnrolledHost), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn register_host(
    State(control): State<Arc<Control>>,
    scope: Scope,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterHostRequest>,
) -> Result<Json<EnrolledHost>, ApiError> {
    let bearer = bearer(&headers);
    let by = match &scope.0 {
        TokenScope::Admin => Enroller::Admin,
        TokenScope::Join => Enroller::Join(&bearer),
        TokenScope::Host(_) => {
            scope.require_host(&req.id)?;
            Enroller::Host
        }
        TokenScope::App(_) | TokenScope::Deploy(_) | TokenScope::Org(_) => {
            return Err(ApiError::Forbidden(
                "Registering a host needs a join token, the host's credential or the admin token"
                    .to_owned(),
            ))
        }
    };
    Ok(Json(control.hosts().enrol(&req, by)?))
}

/// The bearer secret of a request (the auth layer already resolved it to a scope).
fn bearer(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, secret)| secret.trim().to_owned())
        .unwrap_or_default()
}

/// Issues a join token (admin): it only enrols hosts, and expires after `ttl_secs` and/or
/// `uses` enrolments (an hour when neither is given).
#[utoipa::path(post, path = "/v1/hosts/join-tokens", tag = "hosts", request_body = CreateJoinTokenRequest,
    responses((status = 200, body = JoinToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn create_join_token(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<CreateJoinTokenRequest>,
) -> Result<Json<JoinToken>, ApiError> {
    scope.require_admin()?;
    Ok(Json(control.hosts().create_join_token(&req)?))
}

/// Revokes a host (admin): its credential gets 401 from the next request on, it counts as
/// down at once (its machines leave the route table), and only the operator can register
/// its id again.
#[utoipa::path(post, path = "/v1/hosts/{host}/revoke", tag = "hosts", params(("host" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_host(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_admin()?;
    control.hosts().revoke(&host)?;
    Ok(Json(OkResponse { ok: true }))
}

/// Drains a host (admin): it keeps its machines and gets no new ones.
#[utoipa::path(post, path = "/v1/hosts/{host}/drain", tag = "hosts", params(("host" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn drain_host(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_admin()?;
    control.hosts().set_draining(&host, true)?;
    Ok(Json(OkResponse { ok: true }))
}

/// Takes a drained host back into placement (admin).
#[utoipa::path(post, path = "/v1/hosts/{host}/undrain", tag = "hosts", params(("host" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn undrain_host(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_admin()?;
    control.hosts().set_draining(&host, false)?;
    Ok(Json(OkResponse { ok: true }))
}

/// Forgets a host that runs no machine (admin); its id may then enrol again.
#[utoipa::path(delete, path = "/v1/hosts/{host}", tag = "hosts", params(("host" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 412, body = ErrorBody)))]
pub(super) async fn remove_host(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_admin()?;
    control.hosts().remove(&host)?;
    Ok(Json(OkResponse { ok: true }))
}

/// Record a heartbeat; a host silent for the heartbeat timeout becomes unreachable.
#[utoipa::path(post, path = "/v1/hosts/{host}/heartbeat", tag = "hosts", params(("host" = String, Path)),
    responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
pub(super) async fn heartbeat(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<Host>, ApiError> {
    scope.require_host(&host)?;
    Ok(Json(control.hosts().heartbeat(&host)?))
}

/// Newline-delimited JSON `WatchEvent`s: every assignment changed after `since`, then live
/// changes, and a keep-alive `{"revision": N}` every 10 s of quiet.
#[utoipa::path(get, path = "/v1/hosts/{host}/watch", tag = "hosts", params(("host" = String, Path), WatchQuery),
    responses((status = 200, description = "application/x-ndjson stream", body = WatchEvent), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn watch(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(host): ApiPath<String>,
    ApiQuery(query): ApiQuery<WatchQuery>,
) -> Result<Response, ApiError> {
    scope.require_host(&host)?;
    // Subscribe before the first query so no change falls between them; an unknown host
    // fails with a status rather than a broken stream.
    let mut revisions = control.subscribe();
    let (first, mut since) = control.machines().host_changes(&host, query.since)?;
    let mut shutdown = control.shutdown_signal();
    let stream = async_stream::stream! {
        for event in first {
            yield Ok::<Bytes, Infallible>(line(&event));
        }
        loop {
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    match control.machines().host_changes(&host, since) {
                        Ok((events, reached)) => {
                            for event in events {
                                yield Ok(line(&event));
                            }
                            since = reached;
                        }
                        Err(e) => {
                            tracing::warn!(host = %host, error = %e, "watch stream ended");
                            break;
                        }
                    }
                }
                () = tokio::time::sleep(KEEPALIVE) => {
                    yield Ok(line(&WatchEvent { revision: since, machine: None }));
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

fn line(event: &WatchEvent) -> Bytes {
    let mut bytes = serde_json::to_vec(event).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// An agent reports a machine's state, an event, exit code and check results.
#[utoipa::path(post, path = "/v1/hosts/{host}/machines/{machine}/status", tag = "hosts",
    params(("host" = String, Path), ("machine" = String, Path)), request_body = StatusReport,
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(super) async fn report_status(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((host, machine)): ApiPath<(String, String)>,
    ApiJson(report): ApiJson<StatusReport>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_host(&host)?;
    control.machines().report_status(&host, &machine, report)?;
    Ok(Json(OkResponse { ok: true }))
}
