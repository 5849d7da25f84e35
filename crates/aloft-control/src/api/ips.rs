//! Dedicated public addresses of an app (`/v1/apps/{app_name}/ips`): an admin token manages any
//! app's, an app token its own app's; join tokens are refused.

use std::sync::Arc;

use aloft_api::ips::{AllocateIpRequest, AppIp};
use aloft_api::ErrorBody;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, Routes, Scope};
use crate::control::Control;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/apps/{app_name}/ips", list)
        .at(Method::POST, "/v1/apps/{app_name}/ips", allocate)
        .at(Method::DELETE, "/v1/apps/{app_name}/ips/{address}", release)
}

/// Allocates a dedicated address to the app: the lowest free one of the first pool of that
/// family the server was started with (`aloft server --ip-pool CIDR`). Every edge routes
/// connections to it to the app. `422` when the server has no pool of that family, `409` when
/// its pools are full.
#[utoipa::path(post, path = "/v1/apps/{app_name}/ips", tag = "ips", request_body = AllocateIpRequest,
    params(("app_name" = String, Path, description = "App name")),
    responses((status = 201, body = AppIp), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn allocate(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(req): ApiJson<AllocateIpRequest>,
) -> Result<(StatusCode, Json<AppIp>), ApiError> {
    scope.require_app_manage(&app)?;
    Ok((
        StatusCode::CREATED,
        Json(control.ips().allocate(&app, req.kind)?),
    ))
}

/// The app's dedicated addresses, sorted by address.
#[utoipa::path(get, path = "/v1/apps/{app_name}/ips", tag = "ips",
    params(("app_name" = String, Path, description = "App name")),
    responses((status = 200, body = Vec<AppIp>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<Vec<AppIp>>, ApiError> {
    scope.require_app_manage(&app)?;
    Ok(Json(control.ips().list(&app)?))
}

/// Releases one of the app's dedicated addresses; edges stop routing it to the app. `404`
/// when the app does not hold it.
#[utoipa::path(delete, path = "/v1/apps/{app_name}/ips/{address}", tag = "ips",
    params(("app_name" = String, Path, description = "App name"),
           ("address" = String, Path, description = "The address to release")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn release(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath((app, address)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    scope.require_app_manage(&app)?;
    control.ips().release(&app, &address)?;
    Ok(StatusCode::NO_CONTENT)
}
