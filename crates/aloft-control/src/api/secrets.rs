//! `/v1/apps/{app_name}/secrets`: Fly's shapes (`{secrets, version}`), values never shown.

use std::collections::BTreeMap;
use std::sync::Arc;

use aloft_api::{
    AppSecrets, ErrorBody, SecretInfo, SecretsVersion, SetSecretRequest, SetSecretsRequest,
    UnsetSecretsRequest,
};
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, Routes, Scope};
use crate::control::Control;

const ONE: &str = "/v1/apps/{app_name}/secrets/{secret_name}";

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/apps/{app_name}/secrets", list_secrets)
        .at(Method::POST, "/v1/apps/{app_name}/secrets", set_secrets)
        .at(
            Method::POST,
            "/v1/apps/{app_name}/secrets/unset",
            unset_secrets,
        )
        .at(Method::GET, ONE, get_secret)
        .at(Method::POST, ONE, set_secret)
        .at(Method::DELETE, ONE, delete_secret)
}

type Ctx = State<Arc<Control>>;

/// List an app's secrets (names and digests, never values) and their version.
#[utoipa::path(get, path = "/v1/apps/{app_name}/secrets", tag = "secrets", params(("app_name" = String, Path)),
    responses((status = 200, body = AppSecrets), (status = 404, body = ErrorBody)))]
pub(super) async fn list_secrets(
    State(control): Ctx,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<AppSecrets>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.secrets().list(&app)?))
}

/// Set secrets (encrypted at rest); a `null` value removes one. Machines get them on their
/// next update.
#[utoipa::path(post, path = "/v1/apps/{app_name}/secrets", tag = "secrets", params(("app_name" = String, Path)),
    request_body = SetSecretsRequest,
    responses((status = 200, body = AppSecrets), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_secrets(
    State(control): Ctx,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(req): ApiJson<SetSecretsRequest>,
) -> Result<Json<AppSecrets>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.secrets().set(&app, &req.values)?))
}

/// Remove secrets by name (404 naming the first unknown one; nothing is removed then).
#[utoipa::path(post, path = "/v1/apps/{app_name}/secrets/unset", tag = "secrets", params(("app_name" = String, Path)),
    request_body = UnsetSecretsRequest,
    responses((status = 200, body = AppSecrets), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn unset_secrets(
    State(control): Ctx,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(req): ApiJson<UnsetSecretsRequest>,
) -> Result<Json<AppSecrets>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.secrets().unset(&app, &req.names)?))
}

/// One secret's name and digest (never its value).
#[utoipa::path(get, path = "/v1/apps/{app_name}/secrets/{secret_name}", tag = "secrets",
    params(("app_name" = String, Path), ("secret_name" = String, Path)),
    responses((status = 200, body = SecretInfo), (status = 404, body = ErrorBody)))]
pub(super) async fn get_secret(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, name)): ApiPath<(String, String)>,
) -> Result<Json<SecretInfo>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.secrets().get(&app, &name)?))
}

/// Set one secret (201 with the new version).
#[utoipa::path(post, path = "/v1/apps/{app_name}/secrets/{secret_name}", tag = "secrets",
    params(("app_name" = String, Path), ("secret_name" = String, Path)), request_body = SetSecretRequest,
    responses((status = 201, body = SecretsVersion), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_secret(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SetSecretRequest>,
) -> Result<(StatusCode, Json<SecretsVersion>), ApiError> {
    scope.require_app(&app)?;
    let values = BTreeMap::from([(name, Some(req.value))]);
    let version = control.secrets().set(&app, &values)?.version;
    Ok((StatusCode::CREATED, Json(SecretsVersion { version })))
}

/// Remove one secret by name (404 if the app has no such secret).
#[utoipa::path(delete, path = "/v1/apps/{app_name}/secrets/{secret_name}", tag = "secrets",
    params(("app_name" = String, Path), ("secret_name" = String, Path)),
    responses((status = 200, body = SecretsVersion), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_secret(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, name)): ApiPath<(String, String)>,
) -> Result<Json<SecretsVersion>, ApiError> {
    scope.require_app(&app)?;
    let version = control.secrets().unset(&app, &[name])?.version;
    Ok(Json(SecretsVersion { version }))
}
