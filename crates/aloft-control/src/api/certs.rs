//! Certificates: the cluster root (`GET /v1/certs/root`), user certificates (`/v1/certs`,
//! admin token) and the edges' bundle (`GET /v1/edge/tls`, join or admin token).

use std::sync::Arc;

use aloft_api::certs::{AddCertificateRequest, CertificateInfo, EdgeTls, RootCertificate};
use aloft_api::ErrorBody;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, Routes, Scope};
use crate::control::Control;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/certs/root", root)
        .at(Method::GET, "/v1/certs", list)
        .at(Method::POST, "/v1/certs", add)
        .at(Method::DELETE, "/v1/certs/{hostname}", remove)
        .at(Method::GET, "/v1/edge/tls", edge_tls)
}

/// The cluster's root CA certificate (PEM): trust it to verify HTTPS through any edge. Any
/// valid token may read it.
#[utoipa::path(get, path = "/v1/certs/root", tag = "certs",
    responses((status = 200, body = RootCertificate), (status = 401, body = ErrorBody)))]
pub(super) async fn root(
    State(control): State<Arc<Control>>,
    _scope: Scope,
) -> Result<Json<RootCertificate>, ApiError> {
    Ok(Json(control.root_certificate()?))
}

/// User certificates (hostnames and fingerprints, never keys).
#[utoipa::path(get, path = "/v1/certs", tag = "certs",
    responses((status = 200, body = Vec<CertificateInfo>), (status = 403, body = ErrorBody)))]
pub(super) async fn list(
    State(control): State<Arc<Control>>,
    scope: Scope,
) -> Result<Json<Vec<CertificateInfo>>, ApiError> {
    scope.require_admin()?;
    Ok(Json(control.list_certificates()?))
}

/// Stores a user certificate for a hostname (replacing one already there); every edge serves
/// it for that name by SNI.
#[utoipa::path(post, path = "/v1/certs", tag = "certs", request_body = AddCertificateRequest,
    responses((status = 201, body = CertificateInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn add(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<AddCertificateRequest>,
) -> Result<(StatusCode, Json<CertificateInfo>), ApiError> {
    scope.require_admin()?;
    Ok((StatusCode::CREATED, Json(control.add_certificate(&req)?)))
}

/// Removes the user certificate of a hostname.
#[utoipa::path(delete, path = "/v1/certs/{hostname}", tag = "certs",
    params(("hostname" = String, Path, description = "The certificate's hostname")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(hostname): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    scope.require_admin()?;
    control.remove_certificate(&hostname)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What an edge needs to terminate TLS: the cluster CA (certificate and key) and every user
/// certificate with its key. Join or admin tokens only.
#[utoipa::path(get, path = "/v1/edge/tls", tag = "certs",
    responses((status = 200, body = EdgeTls), (status = 403, body = ErrorBody)))]
pub(super) async fn edge_tls(
    State(control): State<Arc<Control>>,
    scope: Scope,
) -> Result<Json<EdgeTls>, ApiError> {
    scope.require_hosts()?;
    Ok(Json(control.edge_tls()?))
}
