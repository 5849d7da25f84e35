//! `/v1/apps` and `/v1/platform/regions`.

use std::sync::Arc;

use aloft_api::{
    App, ClusterInfo, CreateAppRequest, ErrorBody, ListAppsQuery, ListAppsResponse, RegionsResponse,
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
        .at(Method::GET, "/v1/platform/regions", regions)
        .at(Method::GET, "/v1/cluster", cluster)
}

/// List apps (an org token sees its org's, an app or deploy token only its app).
#[utoipa::path(get, path = "/v1/apps", tag = "apps", params(ListAppsQuery),
    responses((status = 200, body = ListAppsResponse), (status = 401, body = ErrorBody)))]
pub(super) async fn list_apps(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiQuery(query): ApiQuery<ListAppsQuery>,
) -> Result<Json<ListAppsResponse>, ApiError> {
    let org = query.org_slug.as_deref().filter(|o| !o.is_empty());
    let (org, only) = match &scope.0 {
        TokenScope::Admin => (org, None),
        TokenScope::Org(own) => {
            if let Some(org) = org {
                scope.require_org(org)?;
            }
            (Some(own.as_str()), None)
        }
        TokenScope::App(app) | TokenScope::Deploy(app) => (org, Some(app.as_str())),
        TokenScope::Join | TokenScope::Host(_) => {
            return Err(ApiError::Forbidden(
                "A join token or host credential cannot list apps".to_owned(),
            ))
        }
    };
    let apps = control.apps().list(org, only)?;
    Ok(Json(ListAppsResponse {
        total_apps: apps.len() as u64,
        apps,
    }))
}

/// Create an app (admin: in any org; an org token: in its own org, the default).
#[utoipa::path(post, path = "/v1/apps", tag = "apps", request_body = CreateAppRequest,
    responses((status = 201, body = App), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_app(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<CreateAppRequest>,
) -> Result<(StatusCode, Json<App>), ApiError> {
    let org = match (&scope.0, req.org_slug.as_deref().filter(|o| !o.is_empty())) {
        (TokenScope::Org(own), None) => Some(own.as_str()),
        (TokenScope::Org(_), Some(org)) => {
            scope.require_org(org)?;
            Some(org)
        }
        (_, org) => {
            scope.require_admin()?;
            org
        }
    };
    let app = control
        .apps()
        .create(&req.app_name, org, req.network.as_deref())?;
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
