//! Certificates: the cluster root (`GET /v1/certs/root`), user certificates (`/v1/certs`) and
//! the edges' bundle (`GET /v1/edge/tls`, join or admin token); ACME orders
//! (`POST /v1/certs/acme`) and the challenges edges answer (`GET /v1/edge/acme`). A certificate
//! belongs to an app: an admin token manages all of them, an app token those of its app.

use std::sync::Arc;

use aloft_api::certs::{
    AddCertificateRequest, CertificateInfo, EdgeAcme, EdgeTls, OrderCertificateRequest,
    RootCertificate,
};
use aloft_api::ErrorBody;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, Routes, Scope};
use crate::control::Control;
use crate::services::tokens::TokenScope;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/certs/root", root)
        .at(Method::GET, "/v1/certs", list)
        .at(Method::POST, "/v1/certs", add)
        .at(Method::POST, "/v1/certs/acme", order)
        .at(Method::GET, "/v1/certs/{hostname}", show)
        .at(Method::DELETE, "/v1/certs/{hostname}", remove)
        .at(Method::POST, "/v1/certs/{hostname}/check", check)
        .at(Method::GET, "/v1/edge/tls", edge_tls)
        .at(Method::GET, "/v1/edge/acme", edge_acme)
}

/// The cluster's root CA certificate (PEM): trust it to verify HTTPS through any edge. Any
/// valid token may read it.
#[utoipa::path(get, path = "/v1/certs/root", tag = "certs",
    responses((status = 200, body = RootCertificate), (status = 401, body = ErrorBody)))]
pub(super) async fn root(
    State(control): State<Arc<Control>>,
    _scope: Scope,
) -> Result<Json<RootCertificate>, ApiError> {
    Ok(Json(control.certs().root_certificate()?))
}

/// Query of `GET /v1/certs`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub(super) struct ListQuery {
    /// Only this app's certificates (an app token always sees its own app's only).
    app: Option<String>,
}

/// Certificates (hostnames, apps and fingerprints, never keys).
#[utoipa::path(get, path = "/v1/certs", tag = "certs", params(ListQuery),
    responses((status = 200, body = Vec<CertificateInfo>), (status = 403, body = ErrorBody)))]
pub(super) async fn list(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<CertificateInfo>>, ApiError> {
    let app = match (&scope.0, q.app) {
        (TokenScope::Admin, app) => app,
        (TokenScope::App(own) | TokenScope::Deploy(own), app) => {
            let app = app.unwrap_or_else(|| own.clone());
            scope.require_app_manage(&app)?;
            Some(app)
        }
        (TokenScope::Org(_), Some(app)) => {
            scope.require_app(&app)?;
            Some(app)
        }
        (TokenScope::Org(_), None) => {
            // The org's apps' certificates only.
            let all = control.certs().list(None)?;
            return Ok(Json(
                all.into_iter()
                    .filter(|c| c.app.as_deref().is_some_and(|a| scope.sees(a)))
                    .collect(),
            ));
        }
        (TokenScope::Join | TokenScope::Host(_), _) => {
            scope.require_admin()?;
            None
        }
    };
    Ok(Json(control.certs().list(app.as_deref())?))
}

/// Allows the certificate of an app to the admin and to that app's tokens; a certificate
/// that belongs to no app, to the admin only.
fn require_owner(scope: &Scope, info: &CertificateInfo) -> Result<(), ApiError> {
    match &info.app {
        Some(app) => scope.require_app_manage(app),
        None => scope.require_admin(),
    }
}

/// Stores a user certificate for a hostname of an app (replacing one already there); every
/// edge serves it for that name by SNI and routes the name to the app once its control is
/// proven (`verified`: `<app>.<domain>` always; a custom name when DNS has a CNAME to
/// `<app>.<domain>` or a TXT `_aloft-challenge.<name>` of `app=<app>`). `409` when the
/// hostname belongs to another app (or is another app's `<app>.<domain>`, or DNS names
/// another app).
#[utoipa::path(post, path = "/v1/certs", tag = "certs", request_body = AddCertificateRequest,
    responses((status = 201, body = CertificateInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn add(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<AddCertificateRequest>,
) -> Result<(StatusCode, Json<CertificateInfo>), ApiError> {
    scope.require_app_manage(&req.app)?;
    Ok((StatusCode::CREATED, Json(control.certs().add(&req).await?)))
}

/// Removes the certificate (user or ACME) of a hostname; the name no longer routes to its app.
#[utoipa::path(delete, path = "/v1/certs/{hostname}", tag = "certs",
    params(("hostname" = String, Path, description = "The certificate's hostname")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(hostname): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !matches!(scope.0, TokenScope::Admin) {
        require_owner(&scope, &control.certs().get(&hostname)?)?;
    }
    control.certs().remove(&hostname)?;
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
    Ok(Json(control.certs().edge_tls()?))
}

/// Orders a certificate for a hostname of an app from the server's ACME CA (needs
/// `--acme-directory`). Answers at once with status `pending` (the name routes to the app from
/// then on); the order runs in the background and its outcome shows in
/// `GET /v1/certs/{hostname}` (`issued`, or `failed` with the CA's reason). `409` when the
/// hostname belongs to another app.
#[utoipa::path(post, path = "/v1/certs/acme", tag = "certs", request_body = OrderCertificateRequest,
    responses((status = 202, body = CertificateInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn order(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<OrderCertificateRequest>,
) -> Result<(StatusCode, Json<CertificateInfo>), ApiError> {
    scope.require_app_manage(&req.app)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(control.acme().order(control.certs(), &req).await?),
    ))
}

/// Looks up DNS again for a hostname whose control is not proven yet; once proven it routes
/// to its app. `422` (with what to add to DNS) while DNS does not prove it.
#[utoipa::path(post, path = "/v1/certs/{hostname}/check", tag = "certs",
    params(("hostname" = String, Path, description = "The certificate's hostname")),
    responses((status = 200, body = CertificateInfo), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(super) async fn check(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(hostname): ApiPath<String>,
) -> Result<Json<CertificateInfo>, ApiError> {
    require_owner(&scope, &control.certs().get(&hostname)?)?;
    Ok(Json(control.certs().check(&hostname).await?))
}

/// One certificate (user or ACME) with its status and expiry.
#[utoipa::path(get, path = "/v1/certs/{hostname}", tag = "certs",
    params(("hostname" = String, Path, description = "The certificate's hostname")),
    responses((status = 200, body = CertificateInfo), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(hostname): ApiPath<String>,
) -> Result<Json<CertificateInfo>, ApiError> {
    let info = control.certs().get(&hostname)?;
    require_owner(&scope, &info)?;
    Ok(Json(info))
}

/// Query of `GET /v1/edge/acme`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub(super) struct EdgeAcmeQuery {
    /// The calling edge (its host id).
    edge: String,
    /// Whether the edge serves HTTPS (so TLS-ALPN-01 can be used).
    #[serde(default)]
    https: bool,
    /// The version the edge has installed; the answer waits (about 25 s) until it changes.
    seen: Option<u64>,
}

/// The ACME challenges every edge answers now. Join or admin tokens only.
#[utoipa::path(get, path = "/v1/edge/acme", tag = "certs", params(EdgeAcmeQuery),
    responses((status = 200, body = EdgeAcme), (status = 403, body = ErrorBody)))]
pub(super) async fn edge_acme(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiQuery(q): ApiQuery<EdgeAcmeQuery>,
) -> Result<Json<EdgeAcme>, ApiError> {
    scope.require_hosts()?;
    Ok(Json(
        control.acme().edge_acme(&q.edge, q.https, q.seen).await,
    ))
}
