//! `/v1/apps/{app_name}/deploys`: deploys run by the control plane (the deploys service).

use std::convert::Infallible;
use std::sync::Arc;

use aloft_api::deploy::{DeployEvent, DeployEventsQuery, DeployInfo, DeployPlan};
use aloft_api::ErrorBody;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, Routes, Scope};
use crate::control::Control;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::POST, "/v1/apps/{app_name}/deploys", start)
        .at(Method::GET, "/v1/apps/{app_name}/deploys/{deploy_id}", get)
        .at(
            Method::GET,
            "/v1/apps/{app_name}/deploys/{deploy_id}/events",
            events,
        )
        .at(
            Method::POST,
            "/v1/apps/{app_name}/deploys/{deploy_id}/cancel",
            cancel,
        )
}

/// Record a release and start rolling it out on the server; answers at once.
#[utoipa::path(post, path = "/v1/apps/{app_name}/deploys", tag = "releases", params(("app_name" = String, Path)),
    request_body = DeployPlan,
    responses((status = 201, body = DeployInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "a deploy of the app is running", body = ErrorBody)))]
pub(super) async fn start(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(plan): ApiJson<DeployPlan>,
) -> Result<(StatusCode, Json<DeployInfo>), ApiError> {
    scope.require_app(&app)?;
    let info = control.deploys().start(&app, plan, &scope.0.owner())?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// A deploy (by id, or by its release's version) with its state and events.
#[utoipa::path(get, path = "/v1/apps/{app_name}/deploys/{deploy_id}", tag = "releases",
    params(("app_name" = String, Path), ("deploy_id" = String, Path, description = "a deploy id, or a release version such as v3")),
    responses((status = 200, body = DeployInfo), (status = 404, body = ErrorBody)))]
pub(super) async fn get(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((app, id)): ApiPath<(String, String)>,
) -> Result<Json<DeployInfo>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.deploys().get(&app, &id)?))
}

/// Newline-delimited JSON `DeployEvent`s after `after`; with `follow=true` the stream stays
/// open until the deploy is over (its last event carries the final status).
#[utoipa::path(get, path = "/v1/apps/{app_name}/deploys/{deploy_id}/events", tag = "releases",
    params(("app_name" = String, Path), ("deploy_id" = String, Path), DeployEventsQuery),
    responses((status = 200, description = "application/x-ndjson stream", body = DeployEvent), (status = 404, body = ErrorBody)))]
pub(super) async fn events(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((app, id)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<DeployEventsQuery>,
) -> Result<Response, ApiError> {
    scope.require_app(&app)?;
    // Subscribe before the first read so no step falls between them.
    let mut changes = control.deploys().subscribe();
    let first = control.deploys().get(&app, &id)?;
    let mut shutdown = control.shutdown_signal();
    let stream = async_stream::stream! {
        let mut after = query.after;
        let mut info = first;
        loop {
            let from = after;
            for e in info.events.iter().filter(|e| e.seq > from) {
                after = e.seq;
                yield Ok::<Bytes, Infallible>(line(e));
            }
            if !query.follow || info.status.is_final() {
                break;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = crate::core::shutting_down(&mut shutdown) => break,
            }
            match control.deploys().get(&app, &info.id) {
                Ok(next) => info = next,
                Err(e) => {
                    tracing::warn!(error = %e, "deploy event stream ended");
                    break;
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

fn line(e: &DeployEvent) -> Bytes {
    let mut out = serde_json::to_vec(e).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// Stop a running deploy and roll back what it did.
#[utoipa::path(post, path = "/v1/apps/{app_name}/deploys/{deploy_id}/cancel", tag = "releases",
    params(("app_name" = String, Path), ("deploy_id" = String, Path)),
    responses((status = 202, body = DeployInfo), (status = 404, body = ErrorBody),
        (status = 409, description = "the deploy is over", body = ErrorBody)))]
pub(super) async fn cancel(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((app, id)): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<DeployInfo>), ApiError> {
    scope.require_app(&app)?;
    let info = control.deploys().cancel(&app, &id)?;
    Ok((StatusCode::ACCEPTED, Json(info)))
}
