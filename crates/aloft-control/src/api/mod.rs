//! The HTTP API: routing, authentication and extractors; handlers extract, authorize, call
//! one service and map its error. `error.rs` is the one place errors become statuses.
//!
//! Status codes (every error body is `{"error": "..."}`):
//! - 400: malformed or mistyped JSON, bad query, invalid config (image reference, guest size
//!   outside cpus 1..=64 / memory_mb 128..=262144, signal), a region no host has ever joined.
//! - 401: no bearer token or an unknown one; 403: a token used outside its scope.
//! - 404: unknown app, machine, host, org, route, metadata key, secret or certificate; also a
//!   lease `GET` when none is held.
//! - 408: `wait` timed out. 409: the machine is leased and the request lacks its nonce; an
//!   agent report naming an old instance. 413: a body over 1 MiB.
//! - 422: the server is not configured for the request (no `--ip-pool` of the asked family).
//! - 412: the machine's state does not allow the action (an invalid transition, deleting a
//!   running machine without `force=true` or `kill=true`, a stale `machine_version`), or no
//!   live host in the region has room.
//! - 500: internal failures, logged with detail and answered with a generic message.

mod app_certs;
mod apps;
mod autoscale;
mod certs;
mod deploys;
mod error;
mod exec;
mod hosts;
mod ips;
mod machine_parts;
mod machines;
pub mod openapi;
mod releases;
mod routes;
mod secrets;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::control::Control;
use crate::services::tokens::TokenScope;

/// Largest request body the API accepts.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON body; malformed or mistyped JSON is a 400 with the parser's message.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// An optional JSON body: an empty body is `None`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// Parses a JSON body; a type error names the field's path (`config.guest.cpus`).
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::BadRequest(format!("Invalid JSON body: {inner}"))
        } else {
            ApiError::BadRequest(format!("Invalid JSON body at {path}: {inner}"))
        }
    })
}

/// Query parameters with JSON rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path parameters with JSON rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The caller's token scope, set by the auth middleware.
#[derive(Debug, Clone)]
pub struct Scope(pub TokenScope);

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<TokenScope>()
            .cloned()
            .map(Scope)
            .ok_or_else(|| ApiError::Unauthorized("Missing bearer token".to_owned()))
    }
}

impl Scope {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match &self.0 {
            TokenScope::Admin => Ok(()),
            _ => Err(ApiError::Forbidden(
                "This endpoint needs an admin token".to_owned(),
            )),
        }
    }

    pub fn require_app(&self, app: &str) -> Result<(), ApiError> {
        match &self.0 {
            TokenScope::Admin => Ok(()),
            TokenScope::App(own) if own == app => Ok(()),
            TokenScope::App(own) => Err(ApiError::Forbidden(format!(
                "Token is limited to app {own:?} and cannot access app {app:?}"
            ))),
            TokenScope::Join => Err(ApiError::Forbidden(
                "A join token cannot access apps".to_owned(),
            )),
        }
    }

    pub fn require_hosts(&self) -> Result<(), ApiError> {
        match &self.0 {
            TokenScope::Admin | TokenScope::Join => Ok(()),
            TokenScope::App(_) => Err(ApiError::Forbidden(
                "Host endpoints need a join or admin token".to_owned(),
            )),
        }
    }
}

async fn authenticate(
    State(control): State<Arc<Control>>,
    mut req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            ["Bearer ", "bearer ", "FlyV1 "]
                .iter()
                .find_map(|scheme| v.strip_prefix(scheme))
        })
        .map(str::trim);
    let Some(bearer) = bearer else {
        return ApiError::Unauthorized(
            "Missing bearer token in the Authorization header".to_owned(),
        )
        .into_response();
    };
    match control.tokens().authenticate(bearer) {
        Some(scope) => {
            req.extensions_mut().insert(scope);
            next.run(req).await
        }
        None => ApiError::Unauthorized("Token is not valid".to_owned()).into_response(),
    }
}

/// A router that remembers every (method, path) it registers, for the OpenAPI drift test.
pub struct Routes {
    router: Router<Arc<Control>>,
    list: Vec<(Method, &'static str)>,
}

impl Routes {
    fn new() -> Routes {
        Routes {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn at<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Routes
    where
        H: axum::handler::Handler<T, Arc<Control>>,
        T: 'static,
    {
        let filter = match method {
            Method::GET => MethodFilter::GET,
            Method::POST => MethodFilter::POST,
            Method::DELETE => MethodFilter::DELETE,
            Method::PUT => MethodFilter::PUT,
            _ => MethodFilter::PATCH,
        };
        self.router = self.router.route(path, on(filter, handler));
        self.list.push((method, path));
        self
    }
}

/// Every `/v1` route, and the list of what was registered.
pub fn routes() -> (Router<Arc<Control>>, Vec<(Method, &'static str)>) {
    let r = Routes::new();
    let r = apps::routes(r);
    let r = machines::routes(r);
    let r = hosts::routes(r);
    let r = exec::routes(r);
    let r = routes::routes(r);
    let r = certs::routes(r);
    let r = app_certs::routes(r);
    let r = ips::routes(r);
    let r = releases::routes(r);
    let r = deploys::routes(r);
    let r = secrets::routes(r);
    let r = autoscale::routes(r);
    let r = r.at(Method::GET, "/v1/openapi.json", openapi::serve);
    (r.router, r.list)
}

/// The API router with authentication, body limit and tracing, with `extra` merged in.
pub fn router(control: Arc<Control>, extra: Option<Router>) -> Router {
    let (api, _) = routes();
    let api = api
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            control.clone(),
            authenticate,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(control);
    let router = match extra {
        Some(extra) => api.merge(extra),
        None => api,
    };
    router.fallback(|method: Method, uri: axum::http::Uri| async move {
        ApiError::NotFound(format!("No route for {method} {}", uri.path()))
    })
}
