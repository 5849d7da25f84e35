//! Certificates under Fly's paths, `/v1/apps/{app_name}/certificates/...`: the same
//! certificates as `/v1/certs` (which stays), scoped to one app by the path.

use std::sync::Arc;

use aloft_api::certs::{AddCertificateRequest, CertificateInfo, OrderCertificateRequest};
use aloft_api::ErrorBody;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiJson, ApiPath, Routes, Scope};
use crate::control::Control;

const ONE: &str = "/v1/apps/{app_name}/certificates/{hostname}";

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/apps/{app_name}/certificates", list)
        .at(Method::POST, "/v1/apps/{app_name}/certificates/acme", acme)
        .at(
            Method::POST,
            "/v1/apps/{app_name}/certificates/custom",
            custom,
        )
        .at(Method::GET, ONE, show)
        .at(
            Method::POST,
            "/v1/apps/{app_name}/certificates/{hostname}/check",
            check,
        )
        .at(Method::DELETE, ONE, remove)
}

type Ctx = State<Arc<Control>>;

/// Answer of `GET /v1/apps/{app_name}/certificates`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertificateList {
    pub certificates: Vec<CertificateInfo>,
    pub total_count: usize,
}

/// Body of `POST .../certificates/acme` (Fly's).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcmeCertificateRequest {
    pub hostname: String,
}

/// Body of `POST .../certificates/custom` (Fly's): the certificate chain and its key, PEM.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomCertificateRequest {
    pub hostname: String,
    pub fullchain: String,
    pub private_key: String,
}

/// The app's certificates (hostnames and fingerprints, never keys).
#[utoipa::path(get, path = "/v1/apps/{app_name}/certificates", tag = "certs", params(("app_name" = String, Path)),
    responses((status = 200, body = CertificateList), (status = 403, body = ErrorBody)))]
pub(super) async fn list(
    State(control): Ctx,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<CertificateList>, ApiError> {
    scope.require_app_manage(&app)?;
    let certificates = control.certs().list(Some(&app))?;
    Ok(Json(CertificateList {
        total_count: certificates.len(),
        certificates,
    }))
}

/// Order a certificate for a hostname of the app from the server's ACME CA (201; the order
/// runs in the background, its outcome shows in `GET .../certificates/{hostname}`).
#[utoipa::path(post, path = "/v1/apps/{app_name}/certificates/acme", tag = "certs", params(("app_name" = String, Path)),
    request_body = AcmeCertificateRequest,
    responses((status = 201, body = CertificateInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn acme(
    State(control): Ctx,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(req): ApiJson<AcmeCertificateRequest>,
) -> Result<(StatusCode, Json<CertificateInfo>), ApiError> {
    scope.require_app_manage(&app)?;
    let order = OrderCertificateRequest {
        hostname: req.hostname,
        app,
        challenge: None,
    };
    Ok((
        StatusCode::CREATED,
        Json(control.acme().order(control.certs(), &order).await?),
    ))
}

/// Store a custom certificate for a hostname of the app (201).
#[utoipa::path(post, path = "/v1/apps/{app_name}/certificates/custom", tag = "certs", params(("app_name" = String, Path)),
    request_body = CustomCertificateRequest,
    responses((status = 201, body = CertificateInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn custom(
    State(control): Ctx,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(req): ApiJson<CustomCertificateRequest>,
) -> Result<(StatusCode, Json<CertificateInfo>), ApiError> {
    scope.require_app_manage(&app)?;
    let add = AddCertificateRequest {
        hostname: req.hostname,
        app,
        certificate: req.fullchain,
        private_key: req.private_key,
    };
    Ok((StatusCode::CREATED, Json(control.certs().add(&add).await?)))
}

/// The certificate of one hostname of the app (404 if the app has none for it).
fn of_app(control: &Control, app: &str, hostname: &str) -> Result<CertificateInfo, ApiError> {
    let info = control.certs().get(hostname)?;
    if info.app.as_deref() != Some(app) {
        return Err(ApiError::NotFound(format!(
            "App {app:?} has no certificate for {hostname:?}"
        )));
    }
    Ok(info)
}

/// One certificate of the app, with its status and expiry.
#[utoipa::path(get, path = "/v1/apps/{app_name}/certificates/{hostname}", tag = "certs",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 200, body = CertificateInfo), (status = 404, body = ErrorBody)))]
pub(super) async fn show(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, hostname)): ApiPath<(String, String)>,
) -> Result<Json<CertificateInfo>, ApiError> {
    scope.require_app_manage(&app)?;
    Ok(Json(of_app(&control, &app, &hostname)?))
}

/// Look up DNS again for a hostname of the app whose control is not proven yet (`422` with
/// what DNS needs while it is not).
#[utoipa::path(post, path = "/v1/apps/{app_name}/certificates/{hostname}/check", tag = "certs",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 200, body = CertificateInfo), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn check(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, hostname)): ApiPath<(String, String)>,
) -> Result<Json<CertificateInfo>, ApiError> {
    scope.require_app(&app)?;
    of_app(&control, &app, &hostname)?;
    Ok(Json(control.certs().check(&hostname).await?))
}

/// Remove a certificate of the app (204); the name no longer routes to it.
#[utoipa::path(delete, path = "/v1/apps/{app_name}/certificates/{hostname}", tag = "certs",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn remove(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, hostname)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    scope.require_app_manage(&app)?;
    of_app(&control, &app, &hostname)?;
    control.certs().remove(&hostname)?;
    Ok(StatusCode::NO_CONTENT)
}
