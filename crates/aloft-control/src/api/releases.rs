//! `/v1/apps/{app_name}/releases`.

use std::sync::Arc;

use aloft_api::{CreateReleaseRequest, ErrorBody, Release, ReleaseStatusRequest};
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, Routes, Scope};
use crate::control::Control;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/apps/{app_name}/releases", list_releases)
        .at(Method::POST, "/v1/apps/{app_name}/releases", create_release)
        .at(
            Method::GET,
            "/v1/apps/{app_name}/releases/{version}",
            get_release,
        )
        .at(
            Method::POST,
            "/v1/apps/{app_name}/releases/{version}/status",
            set_status,
        )
        .at(
            Method::PATCH,
            "/v1/apps/{app_name}/releases/{version}/status",
            patch_status,
        )
}

/// List an app's releases, newest first.
#[utoipa::path(get, path = "/v1/apps/{app_name}/releases", tag = "releases", params(("app_name" = String, Path)),
    responses((status = 200, body = [Release]), (status = 404, body = ErrorBody)))]
pub(super) async fn list_releases(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<Vec<Release>>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.releases().list(&app)?))
}

/// Record a release (status `pending`, next version number).
#[utoipa::path(post, path = "/v1/apps/{app_name}/releases", tag = "releases", params(("app_name" = String, Path)),
    request_body = CreateReleaseRequest,
    responses((status = 201, body = Release), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn create_release(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(req): ApiJson<CreateReleaseRequest>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    scope.require_app(&app)?;
    let release = control.releases().create(&app, &req, &scope.0.owner())?;
    Ok((StatusCode::CREATED, Json(release)))
}

/// Get one release.
#[utoipa::path(get, path = "/v1/apps/{app_name}/releases/{version}", tag = "releases",
    params(("app_name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = Release), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_release(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((app, version)): ApiPath<(String, u64)>,
) -> Result<Json<Release>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.releases().get(&app, version)?))
}

/// Set a release's status.
#[utoipa::path(post, path = "/v1/apps/{app_name}/releases/{version}/status", tag = "releases",
    params(("app_name" = String, Path), ("version" = u64, Path)), request_body = ReleaseStatusRequest,
    responses((status = 200, body = Release), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_status(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((app, version)): ApiPath<(String, u64)>,
    ApiJson(req): ApiJson<ReleaseStatusRequest>,
) -> Result<Json<Release>, ApiError> {
    scope.require_app(&app)?;
    let release =
        control
            .releases()
            .set_status(&app, version, &req.status, req.reason.as_deref())?;
    Ok(Json(release))
}

/// Set a release's status (same as `POST`).
#[utoipa::path(patch, path = "/v1/apps/{app_name}/releases/{version}/status", tag = "releases",
    params(("app_name" = String, Path), ("version" = u64, Path)), request_body = ReleaseStatusRequest,
    responses((status = 200, body = Release), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn patch_status(
    state: State<Arc<Control>>,
    scope: Scope,
    path: ApiPath<(String, u64)>,
    body: ApiJson<ReleaseStatusRequest>,
) -> Result<Json<Release>, ApiError> {
    set_status(state, scope, path, body).await
}
