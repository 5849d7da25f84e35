//! `/v1/orgs` and `/v1/tokens`: organisations, and the tokens that reach them.
//!
//! Who may mint what: an admin token any token; an org token app, deploy and org tokens of
//! its own organisation; app, deploy and join tokens none. Listing and revoking follow the
//! same lines (an org token sees the tokens of its org and of its org's apps).

use std::sync::Arc;

use aloft_api::{
    CreateOrgRequest, CreateTokenRequest, CreateTokenResponse, ErrorBody, OrgInfo, TokenInfo,
    TokenKind,
};
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, Routes, Scope};
use crate::control::Control;
use crate::services::tokens::{rfc3339, TokenScope};

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/orgs", list_orgs)
        .at(Method::POST, "/v1/orgs", create_org)
        .at(Method::DELETE, "/v1/orgs/{org_slug}", delete_org)
        .at(Method::GET, "/v1/tokens", list_tokens)
        .at(Method::POST, "/v1/tokens", create_token)
        .at(Method::DELETE, "/v1/tokens/{token_id}", revoke_token)
}

/// List organisations (admin: all; an org token: its own).
#[utoipa::path(get, path = "/v1/orgs", tag = "orgs",
    responses((status = 200, body = Vec<OrgInfo>), (status = 403, body = ErrorBody)))]
pub(super) async fn list_orgs(
    State(control): State<Arc<Control>>,
    scope: Scope,
) -> Result<Json<Vec<OrgInfo>>, ApiError> {
    let only = match &scope.0 {
        TokenScope::Admin => None,
        TokenScope::Org(org) => Some(org.as_str()),
        _ => {
            return Err(ApiError::Forbidden(
                "Listing organizations needs an admin or organization token".to_owned(),
            ))
        }
    };
    Ok(Json(control.apps().list_orgs(only)?))
}

/// Create an organisation (admin).
#[utoipa::path(post, path = "/v1/orgs", tag = "orgs", request_body = CreateOrgRequest,
    responses((status = 201, body = OrgInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_org(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(req): ApiJson<CreateOrgRequest>,
) -> Result<(StatusCode, Json<OrgInfo>), ApiError> {
    scope.require_admin()?;
    let org = control.apps().create_org(&req.slug, req.name.as_deref())?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// Delete an organisation that has no apps (admin); its org tokens stop working at once.
#[utoipa::path(delete, path = "/v1/orgs/{org_slug}", tag = "orgs", params(("org_slug" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(super) async fn delete_org(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(org): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    scope.require_admin()?;
    control.apps().delete_org(&org)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a token (see the module docs for who may mint what). The answer is the only time
/// the token is shown.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreateTokenResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn create_token(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiJson(mut req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreateTokenResponse>), ApiError> {
    match &scope.0 {
        TokenScope::Admin => {}
        TokenScope::Org(own) => {
            let kind = req.scope.unwrap_or(TokenKind::App);
            match kind {
                TokenKind::App | TokenKind::Deploy => {
                    if let Some(app) = &req.app {
                        scope.require_app(app)?;
                    }
                }
                TokenKind::Org => {
                    let org = req.org.get_or_insert_with(|| own.clone());
                    scope.require_org(org)?;
                }
                TokenKind::Admin | TokenKind::Join | TokenKind::Host => {
                    return Err(ApiError::Forbidden(format!(
                        "An organization token cannot create {} tokens",
                        kind.as_str()
                    )))
                }
            }
        }
        _ => {
            return Err(ApiError::Forbidden(
                "Creating tokens needs an admin or organization token".to_owned(),
            ))
        }
    }
    let new = control.tokens().create(&req)?;
    Ok((
        StatusCode::CREATED,
        Json(CreateTokenResponse {
            token: new.token,
            id: new.id,
            expires_at: rfc3339(new.expires_at),
        }),
    ))
}

/// The tokens this token may see, never their secrets (admin: all; an org token: its
/// org's and its org's apps').
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenInfo>), (status = 403, body = ErrorBody)))]
pub(super) async fn list_tokens(
    State(control): State<Arc<Control>>,
    scope: Scope,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    require_token_admin(&scope)?;
    let tokens = control.tokens().list()?;
    Ok(Json(
        tokens
            .into_iter()
            .filter(|(_, of)| manages(&scope, of))
            .map(|(info, _)| info)
            .collect(),
    ))
}

/// Revoke a token: it is refused at once by the API and the registry, and streams opened
/// with it end (204).
#[utoipa::path(delete, path = "/v1/tokens/{token_id}", tag = "tokens", params(("token_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(control): State<Arc<Control>>,
    scope: Scope,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require_token_admin(&scope)?;
    let visible = control
        .tokens()
        .list()?
        .into_iter()
        .any(|(info, of)| info.id == id && manages(&scope, &of));
    if !visible {
        return Err(ApiError::NotFound(format!("Token {id:?} not found")));
    }
    control.tokens().revoke(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

fn require_token_admin(scope: &Scope) -> Result<(), ApiError> {
    match &scope.0 {
        TokenScope::Admin | TokenScope::Org(_) => Ok(()),
        _ => Err(ApiError::Forbidden(
            "Managing tokens needs an admin or organization token".to_owned(),
        )),
    }
}

/// Whether `scope` may see and revoke a token that grants `of`.
fn manages(scope: &Scope, of: &TokenScope) -> bool {
    match (&scope.0, of) {
        (TokenScope::Admin, _) => true,
        (TokenScope::Org(own), TokenScope::Org(org)) => own == org,
        (TokenScope::Org(_), TokenScope::App(app) | TokenScope::Deploy(app)) => scope.sees(app),
        _ => false,
    }
}
