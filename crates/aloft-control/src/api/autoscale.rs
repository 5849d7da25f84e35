//! Regional autoscaling policies and live load: `/v1/apps/{app_name}/autoscale`,
//! `/v1/apps/{app_name}/load` and `/v1/platform/load`.

use std::sync::Arc;

use aloft_api::{AppLoadStatus, AutoscalePolicy, ErrorBody, RegionLoad};
use axum::extract::State;
use axum::http::Method;
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, Routes, Scope};
use crate::control::Control;
use crate::services::tokens::TokenScope;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/apps/{app_name}/autoscale", get_policy)
        .at(Method::PUT, "/v1/apps/{app_name}/autoscale", put_policy)
        .at(Method::GET, "/v1/apps/{app_name}/load", app_load)
        .at(Method::GET, "/v1/platform/load", platform_load)
}

/// The app's autoscaling policy (`{"regions": {}}` when it has none).
#[utoipa::path(get, path = "/v1/apps/{app_name}/autoscale", tag = "autoscale", params(("app_name" = String, Path)),
    responses((status = 200, body = AutoscalePolicy), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_policy(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<AutoscalePolicy>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.autoscale().policy(&app)?))
}

/// Replaces the app's autoscaling policy; `{"regions": {}}` turns autoscaling off.
#[utoipa::path(put, path = "/v1/apps/{app_name}/autoscale", tag = "autoscale", params(("app_name" = String, Path)),
    request_body = AutoscalePolicy,
    responses((status = 200, body = AutoscalePolicy), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn put_policy(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(policy): ApiJson<AutoscalePolicy>,
) -> Result<Json<AutoscalePolicy>, ApiError> {
    scope.require_app_manage(&app)?;
    Ok(Json(control.autoscale().set_policy(&app, policy)?))
}

/// The app's live load entering each region, its machines there, and the scaler's target.
#[utoipa::path(get, path = "/v1/apps/{app_name}/load", tag = "autoscale", params(("app_name" = String, Path)),
    responses((status = 200, body = AppLoadStatus), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn app_load(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<AppLoadStatus>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.autoscale().app_load(&app)?))
}

/// Live load and machines per region, summed over the apps the token can see.
#[utoipa::path(get, path = "/v1/platform/load", tag = "platform",
    responses((status = 200, body = Vec<RegionLoad>), (status = 403, body = ErrorBody)))]
pub(super) async fn platform_load(
    State(control): State<Arc<Control>>,
    scope: Scope,
) -> Result<Json<Vec<RegionLoad>>, ApiError> {
    let only = match &scope.0 {
        TokenScope::App(app) | TokenScope::Deploy(app) => Some(app.as_str()),
        TokenScope::Admin => None,
        TokenScope::Org(_) => {
            // Summed over the org's apps, region by region.
            let mut regions: std::collections::BTreeMap<String, RegionLoad> = Default::default();
            for app in scope.org_apps() {
                for load in control.autoscale().platform_load(Some(app))? {
                    let r = regions
                        .entry(load.region.clone())
                        .or_insert_with(|| RegionLoad {
                            region: load.region.clone(),
                            ..RegionLoad::default()
                        });
                    r.concurrency = r.concurrency.saturating_add(load.concurrency);
                    r.requests_per_second += load.requests_per_second;
                    r.started += load.started;
                    r.stopped += load.stopped;
                }
            }
            return Ok(Json(regions.into_values().collect()));
        }
        TokenScope::Join | TokenScope::Host(_) => {
            return Err(ApiError::Forbidden(
                "A join token or host credential cannot read app load".to_owned(),
            ))
        }
    };
    Ok(Json(control.autoscale().platform_load(only)?))
}
