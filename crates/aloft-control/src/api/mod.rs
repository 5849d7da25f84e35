//! The HTTP API: routing, authentication and extractors; handlers extract, authorize, call
//! one service and map its error. `error.rs` is the one place errors become statuses.
//!
//! Status codes (every error body is `{"error": "..."}`):
//! - 400: malformed or mistyped JSON, bad query, invalid config (image reference, guest size
//!   outside cpus 1..=64 / memory_mb 128..=262144, signal), a region no host has ever joined.
//! - 401: no bearer token, an unknown, revoked or expired one; 403: a token used outside
//!   its scope (another org's or app's, a deploy token beyond deploying, a non-admin on
//!   admin endpoints).
//! - 404: unknown app, machine, host, org, route, metadata key, secret or certificate; also a
//!   lease `GET` when none is held.
//! - 408: `wait` timed out. 409: the machine is leased and the request lacks its nonce; an
//!   agent report naming an old instance. 413: a body over 1 MiB.
//! - 422: the server is not configured for the request (no `--ip-pool` of the asked family).
//! - 412: the machine's state does not allow the action (an invalid transition, deleting a
//!   running machine without `force=true` or `kill=true`, a stale `machine_version`), or no
//!   live host in the region has room.
//! - 403 also: a change beyond the operator's per-app limits (machines, CPUs, memory; the
//!   message names the limit and its flag).
//! - 429: the token's request rate is over the operator's `--api-rate-limit` (`Retry-After`
//!   says when to retry).
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
mod orgs;
mod releases;
mod routes;
mod secrets;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::{Bytes, HttpBody as _};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use futures::StreamExt as _;
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::control::Control;
use crate::services::tokens::{Principal, TokenScope};

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

/// The caller's token scope, set by the auth middleware, with the apps an org token reaches
/// (read when the request arrived).
#[derive(Debug, Clone)]
pub struct Scope(pub TokenScope, OrgApps);

/// The apps of an org token's organisation.
#[derive(Debug, Clone, Default)]
struct OrgApps(Arc<BTreeSet<String>>);

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let scope = parts
            .extensions
            .get::<Principal>()
            .map(|p| p.scope.clone())
            .ok_or_else(|| ApiError::Unauthorized("Missing bearer token".to_owned()))?;
        let apps = parts
            .extensions
            .get::<OrgApps>()
            .cloned()
            .unwrap_or_default();
        Ok(Scope(scope, apps))
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

    /// Whether this token reaches app `app` at all.
    pub fn sees(&self, app: &str) -> bool {
        match &self.0 {
            TokenScope::Admin => true,
            TokenScope::Org(_) => self.1 .0.contains(app),
            TokenScope::App(own) | TokenScope::Deploy(own) => own == app,
            TokenScope::Join | TokenScope::Host(_) => false,
        }
    }

    /// The apps of an org token's organisation (none for other tokens).
    pub fn org_apps(&self) -> impl Iterator<Item = &str> {
        self.1 .0.iter().map(String::as_str)
    }

    /// The app's endpoints a deploy token may use too: machines, releases, secrets, logs.
    pub fn require_app(&self, app: &str) -> Result<(), ApiError> {
        if self.sees(app) {
            return Ok(());
        }
        Err(ApiError::Forbidden(match &self.0 {
            TokenScope::Org(org) => {
                format!("Token is limited to organization {org:?} and cannot access app {app:?}")
            }
            TokenScope::App(own) | TokenScope::Deploy(own) => {
                format!("Token is limited to app {own:?} and cannot access app {app:?}")
            }
            _ => "A join token or host credential cannot access apps".to_owned(),
        }))
    }

    /// The app's endpoints beyond deploying (exec, certificates, addresses, scaling policy):
    /// like [`Scope::require_app`], but not for deploy tokens.
    pub fn require_app_manage(&self, app: &str) -> Result<(), ApiError> {
        self.require_app(app)?;
        match &self.0 {
            TokenScope::Deploy(_) => Err(ApiError::Forbidden(format!(
                "A deploy token can deploy app {app:?} but not use this endpoint"
            ))),
            _ => Ok(()),
        }
    }

    /// An organisation's endpoints: admin tokens, and that org's tokens.
    pub fn require_org(&self, org: &str) -> Result<(), ApiError> {
        match &self.0 {
            TokenScope::Admin => Ok(()),
            TokenScope::Org(own) if own == org => Ok(()),
            TokenScope::Org(own) => Err(ApiError::Forbidden(format!(
                "Token is limited to organization {own:?} and cannot access {org:?}"
            ))),
            _ => Err(ApiError::Forbidden(
                "This endpoint needs an admin or organization token".to_owned(),
            )),
        }
    }

    /// What any host's credential (or the admin token) may reach: the mesh's peers and
    /// what an edge needs. A join token only enrols.
    pub fn require_hosts(&self) -> Result<(), ApiError> {
        match &self.0 {
            TokenScope::Admin | TokenScope::Host(_) => Ok(()),
            TokenScope::Join => Err(ApiError::Forbidden(
                "A join token only enrols a host (POST /v1/hosts); use the host's credential"
                    .to_owned(),
            )),
            TokenScope::App(_) | TokenScope::Deploy(_) | TokenScope::Org(_) => {
                Err(ApiError::Forbidden(
                    "Host endpoints need a host credential or the admin token".to_owned(),
                ))
            }
        }
    }

    /// What only host `host` (or the admin token) may do: its watch, status reports,
    /// heartbeats and load reports.
    pub fn require_host(&self, host: &str) -> Result<(), ApiError> {
        match &self.0 {
            TokenScope::Host(own) if own != host => Err(ApiError::Forbidden(format!(
                "This credential belongs to host {own:?} and cannot act for host {host:?}"
            ))),
            _ => self.require_hosts(),
        }
    }
}

/// Finds the bearer's principal (401 when unknown, revoked or expired) and hands it to the
/// handlers; a streamed answer (watch, logs) ends when its token is revoked or expires.
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
    let principal = match control.authenticate(bearer) {
        Ok(principal) => principal,
        Err(e) => return ApiError::Unauthorized(e.to_string()).into_response(),
    };
    if let TokenScope::Org(org) = &principal.scope {
        match control.apps().org_app_names(org) {
            Ok(names) => {
                req.extensions_mut()
                    .insert(OrgApps(Arc::new(names.into_iter().collect())));
            }
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let id = principal.id.clone();
    req.extensions_mut().insert(principal);
    let response = next.run(req).await;
    if response.body().size_hint().exact().is_some() {
        return response;
    }
    let ended = control.token_ended(id);
    let (parts, body) = response.into_parts();
    let mut data = body.into_data_stream();
    let guarded = async_stream::stream! {
        tokio::pin!(ended);
        loop {
            tokio::select! {
                () = &mut ended => break,
                chunk = data.next() => match chunk {
                    Some(chunk) => yield chunk,
                    None => break,
                },
            }
        }
    };
    Response::from_parts(parts, axum::body::Body::from_stream(guarded))
}

/// Takes one request from the caller's token bucket (the operator's `--api-rate-limit`); an
/// empty bucket is a 429 with `Retry-After`. Hosts are not limited: the watch streams and
/// reports their credentials send, and the join tokens they enrol with, are the cluster's own.
async fn rate_limit(State(control): State<Arc<Control>>, req: Request, next: Next) -> Response {
    let host = matches!(
        req.extensions().get::<Principal>().map(|p| &p.scope),
        Some(TokenScope::Join | TokenScope::Host(_))
    );
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !host {
        if let Err(wait) = control.limits().take(bearer, std::time::Instant::now()) {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return ApiError::TooManyRequests(secs.max(1)).into_response();
        }
    }
    next.run(req).await
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
    let r = orgs::routes(r);
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
            rate_limit,
        ))
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
