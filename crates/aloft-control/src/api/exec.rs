//! `POST /v1/apps/{app_name}/machines/{machine_id}/exec` and `GET /v1/apps/{app_name}/logs`: proxied to
//! the host agents that run the machines (the exec service).

use std::convert::Infallible;
use std::sync::Arc;

use aloft_api::{ErrorBody, ExecRequest, ExecResponse, LogEntry, LogsQuery};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, Routes, Scope};
use crate::control::Control;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(
        Method::POST,
        "/v1/apps/{app_name}/machines/{machine_id}/exec",
        exec,
    )
    .at(Method::GET, "/v1/apps/{app_name}/logs", logs)
}

/// Run a command in a started machine and wait for it (Fly's exec).
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/exec", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)), request_body = ExecRequest,
    responses((status = 200, body = ExecResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, description = "machine not started", body = ErrorBody), (status = 503, description = "host unreachable", body = ErrorBody)))]
pub(super) async fn exec(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((app, machine)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Json<ExecResponse>, ApiError> {
    scope.require_app_manage(&app)?;
    Ok(Json(control.exec().run(&app, &machine, &req).await?))
}

/// Newline-delimited JSON `LogEntry`s of the app's machines, oldest first; with
/// `follow=true` the stream stays open and carries new lines as the machines write them.
#[utoipa::path(get, path = "/v1/apps/{app_name}/logs", tag = "apps", params(("app_name" = String, Path), LogsQuery),
    responses((status = 200, description = "application/x-ndjson stream", body = LogEntry), (status = 404, body = ErrorBody)))]
pub(super) async fn logs(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    scope.require_app(&app)?;
    let mut lines = control.exec().logs(
        &app,
        query.region.as_deref(),
        query.machine.as_deref(),
        query.follow,
    )?;
    let stream = async_stream::stream! {
        while let Some(line) = lines.next().await {
            yield Ok::<Bytes, Infallible>(Bytes::from(line));
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
