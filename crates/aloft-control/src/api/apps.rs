//! `/v1/apps`, `/v1/tokens` and `/v1/platform/regions`.

use std::sync::Arc;

use aloft_api::{
    App, ClusterInfo, CreateAppRequest, CreateTokenRequest, CreateTokenResponse, ErrorBody,
    ListAppsQuery, ListAppsResponse, RegionsResponse,
};
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, Routes, Scope};
use crate::control::Control;
use crate::services::tokens::TokenScope;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/apps", list_apps)
        .at(Method::POST, "/v1/apps", create_app)
        .at(Method::GET, "/v1/apps/{app_name}", get_app)
        .at(Method::DELETE, "/v1/apps/{app_name}", delete_app)
        .at(Method::POST, "/v1/tokens", create_token)
        .at(Method::GET, "/v1/platform/regions", regions)
        .at(Method::GET, "/v1/cluster", cluster)
}

/// List apps (an app token sees only its app).
#[utoipa::path(get, path = "/v1/apps", tag = "apps", params(ListAppsQuery),
    responses((status = 200, body = ListAppsResponse), (status = 401, body = ErrorBody)))]
pub(super) async fn list_apps(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiQuery(query): ApiQuery<ListAppsQuery>,
) -> Result<Json<ListAppsResponse>, ApiError> {
    let only = match &scope.0 {
        TokenScope::App(app) => Some(app.as_str()),
        TokenScope::Admin => None,
        TokenScope::Join | TokenScope::Host(_) => {
            return Err(ApiError::Forbidden(
                "A join token or host credential cannot list apps".to_owned(),
            ))
        }
    };
    let apps = control.apps().list(query.org_slug.as_deref(), only)?;
    Ok(Json(ListAppsResponse {
        total_apps: apps.len() as u64,
        apps,
    }))
}

/// Create an app (admin).
#[utoipa::path(post, path = "/v1/apps", tag = "apps", request_body = CreateAppRequest,
    responses((status = 201, body = App), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_app(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<CreateAppRequest>,
) -> Result<(StatusCode, Json<App>), ApiError> {
    scope.require_admin()?;
    let app = control.apps().create(
        &req.app_name,
        req.org_slug.as_deref(),
        req.network.as_deref(),
    )?;
    Ok((StatusCode::CREATED, Json(app)))
}

/// Get an app.
#[utoipa::path(get, path = "/v1/apps/{app_name}", tag = "apps", params(("app_name" = String, Path)),
    responses((status = 200, body = App), (status = 404, body = ErrorBody)))]
pub(super) async fn get_app(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<App>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.apps().get(&app)?))
}

/// Delete an app that has no machines left (202).
#[utoipa::path(delete, path = "/v1/apps/{app_name}", tag = "apps", params(("app_name" = String, Path)),
    responses((status = 202), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(super) async fn delete_app(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    scope.require_admin()?;
    control.apps().delete(&app)?;
    Ok(StatusCode::ACCEPTED)
}

/// Create a token: `{"app": NAME}`, `{"scope": "join"}` or `{"scope": "admin"}` (admin).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreateTokenResponse), (status = 403, body = ErrorBody)))]
pub(super) async fn create_token(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreateTokenResponse>), ApiError> {
    scope.require_admin()?;
    let token = control.tokens().create(&req)?;
    Ok((StatusCode::CREATED, Json(CreateTokenResponse { token })))
}

/// Regions with live hosts and their free capacity.
#[utoipa::path(get, path = "/v1/platform/regions", tag = "platform",
    responses((status = 200, body = RegionsResponse)))]
pub(super) async fn regions(
    State(control): State<Arc<Control>>,
    _scope: Scope,
) -> Json<RegionsResponse> {
    Json(RegionsResponse {
        regions: control.hosts().regions(),
    })
}

/// The registry's cluster-wide name and the apps' domain (any token).
#[utoipa::path(get, path = "/v1/cluster", tag = "platform",
    responses((status = 200, body = ClusterInfo), (status = 401, body = ErrorBody)))]
pub(super) async fn cluster(
    State(control): State<Arc<Control>>,
    _scope: Scope,
) -> Json<ClusterInfo> {
    Json(control.cluster().clone())
}
