//! `/v1/apps/{app}/machines/...`: the Fly-compatible Machines API.

use std::collections::BTreeMap;
use std::sync::Arc;

use aloft_api::{
    CreateLeaseRequest, CreateMachineRequest, DeleteMachineQuery, ErrorBody, LeaseQuery,
    LeaseResponse, ListMachinesQuery, Machine, MachineEvent, MachineVersion, MetadataValue,
    OkResponse, SignalRequest, StartResponse, StopRequest, WaitQuery, LEASE_NONCE_HEADER,
};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, OptionalJson, Routes, Scope};
use crate::control::Control;

const M: &str = "/v1/apps/{app}/machines/{machine}";

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, "/v1/apps/{app}/machines", list_machines)
        .at(Method::POST, "/v1/apps/{app}/machines", create_machine)
        .at(Method::GET, M, get_machine)
        .at(Method::POST, M, update_machine)
        .at(Method::DELETE, M, delete_machine)
        .at(
            Method::POST,
            "/v1/apps/{app}/machines/{machine}/start",
            start,
        )
        .at(Method::POST, "/v1/apps/{app}/machines/{machine}/stop", stop)
        .at(
            Method::POST,
            "/v1/apps/{app}/machines/{machine}/restart",
            restart,
        )
        .at(
            Method::POST,
            "/v1/apps/{app}/machines/{machine}/signal",
            signal,
        )
        .at(
            Method::POST,
            "/v1/apps/{app}/machines/{machine}/suspend",
            suspend,
        )
        .at(
            Method::POST,
            "/v1/apps/{app}/machines/{machine}/cordon",
            cordon,
        )
        .at(
            Method::POST,
            "/v1/apps/{app}/machines/{machine}/uncordon",
            uncordon,
        )
        .at(Method::GET, "/v1/apps/{app}/machines/{machine}/wait", wait)
        .at(
            Method::GET,
            "/v1/apps/{app}/machines/{machine}/lease",
            get_lease,
        )
        .at(
            Method::POST,
            "/v1/apps/{app}/machines/{machine}/lease",
            acquire_lease,
        )
        .at(
            Method::DELETE,
            "/v1/apps/{app}/machines/{machine}/lease",
            release_lease,
        )
        .at(
            Method::GET,
            "/v1/apps/{app}/machines/{machine}/metadata",
            get_metadata,
        )
        .at(
            Method::POST,
            "/v1/apps/{app}/machines/{machine}/metadata/{key}",
            set_metadata,
        )
        .at(
            Method::DELETE,
            "/v1/apps/{app}/machines/{machine}/metadata/{key}",
            delete_metadata,
        )
        .at(
            Method::GET,
            "/v1/apps/{app}/machines/{machine}/events",
            events,
        )
        .at(
            Method::GET,
            "/v1/apps/{app}/machines/{machine}/versions",
            versions,
        )
}

fn nonce(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(LEASE_NONCE_HEADER)
        .and_then(|v| v.to_str().ok())
}

type Ctx = State<Arc<Control>>;
type AppMachine = ApiPath<(String, String)>;

fn ok() -> Json<OkResponse> {
    Json(OkResponse { ok: true })
}

/// List machines; filters `region`, `state` (comma list), `include_deleted`, `metadata.KEY=VALUE`.
#[utoipa::path(get, path = "/v1/apps/{app}/machines", tag = "machines", params(("app" = String, Path), ListMachinesQuery),
    responses((status = 200, body = Vec<Machine>), (status = 404, body = ErrorBody)))]
pub(super) async fn list_machines(
    State(control): Ctx,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiQuery(query): ApiQuery<BTreeMap<String, String>>,
) -> Result<Json<Vec<Machine>>, ApiError> {
    scope.require_app(&app)?;
    let mut metadata = BTreeMap::new();
    for (key, value) in &query {
        match key.strip_prefix("metadata.") {
            Some(k) => {
                metadata.insert(k.to_owned(), value.clone());
            }
            None if matches!(
                key.as_str(),
                "region" | "state" | "include_deleted" | "summary"
            ) => {}
            None => {
                return Err(ApiError::BadRequest(format!(
                    "Unknown query parameter {key:?}"
                )))
            }
        }
    }
    let include_deleted = match query.get("include_deleted").map(String::as_str) {
        None | Some("false") | Some("0") | Some("") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "include_deleted {other:?} must be true or false"
            )))
        }
    };
    let machines = control.machines().list(
        &app,
        query
            .get("region")
            .map(String::as_str)
            .filter(|r| !r.is_empty()),
        query.get("state").map(String::as_str),
        include_deleted,
        &metadata,
    )?;
    Ok(Json(machines))
}

/// Create a machine, placed on a live host of `region` with room for its guest.
#[utoipa::path(post, path = "/v1/apps/{app}/machines", tag = "machines", params(("app" = String, Path)),
    request_body = CreateMachineRequest,
    responses((status = 200, body = Machine), (status = 400, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(super) async fn create_machine(
    State(control): Ctx,
    scope: Scope,
    ApiPath(app): ApiPath<String>,
    ApiJson(req): ApiJson<CreateMachineRequest>,
) -> Result<Json<Machine>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().create(
        &app,
        req,
        &scope.0.owner(),
    )?))
}

/// Get a machine.
#[utoipa::path(get, path = "/v1/apps/{app}/machines/{machine}", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody)))]
pub(super) async fn get_machine(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<Machine>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().get(&app, &id)?))
}

/// Update a machine's config: a new version; a running machine is replaced.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)), request_body = CreateMachineRequest,
    responses((status = 200, body = Machine), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn update_machine(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    ApiJson(req): ApiJson<CreateMachineRequest>,
) -> Result<Json<Machine>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().update(
        &app,
        &id,
        req,
        nonce(&headers),
    )?))
}

/// Destroy a machine; a running one only with `force=true` (else 412).
#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{machine}", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path), DeleteMachineQuery),
    responses((status = 200, body = OkResponse), (status = 412, body = ErrorBody)))]
pub(super) async fn delete_machine(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    ApiQuery(query): ApiQuery<DeleteMachineQuery>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .delete(&app, &id, query.force.unwrap_or(false), nonce(&headers))?;
    Ok(ok())
}

/// Start a machine.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/start", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)),
    responses((status = 200, body = StartResponse), (status = 412, body = ErrorBody)))]
pub(super) async fn start(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<StartResponse>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().start(
        &app,
        &id,
        nonce(&headers),
    )?))
}

/// Stop a machine (optional body `signal`, `timeout`).
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/stop", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)), request_body(content = Option<StopRequest>),
    responses((status = 200, body = OkResponse), (status = 412, body = ErrorBody)))]
pub(super) async fn stop(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    OptionalJson(body): OptionalJson<StopRequest>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .stop(&app, &id, body.unwrap_or_default(), nonce(&headers))?;
    Ok(ok())
}

/// Restart a started machine.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/restart", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 412, body = ErrorBody)))]
pub(super) async fn restart(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control.machines().restart(&app, &id, nonce(&headers))?;
    Ok(ok())
}

/// Send a signal to a started machine.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/signal", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)), request_body = SignalRequest,
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorBody)))]
pub(super) async fn signal(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    ApiJson(body): ApiJson<SignalRequest>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .signal(&app, &id, &body.signal, nonce(&headers))?;
    Ok(ok())
}

/// Suspend a started machine.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/suspend", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 412, body = ErrorBody)))]
pub(super) async fn suspend(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control.machines().suspend(&app, &id, nonce(&headers))?;
    Ok(ok())
}

/// Stop routing new traffic to a machine.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/cordon", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)), responses((status = 200, body = OkResponse)))]
pub(super) async fn cordon(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .set_cordon(&app, &id, true, nonce(&headers))?;
    Ok(ok())
}

/// Route traffic to a machine again.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/uncordon", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)), responses((status = 200, body = OkResponse)))]
pub(super) async fn uncordon(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .set_cordon(&app, &id, false, nonce(&headers))?;
    Ok(ok())
}

/// Wait until the machine reaches `state` (default started); 408 after `timeout` seconds.
#[utoipa::path(get, path = "/v1/apps/{app}/machines/{machine}/wait", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path), WaitQuery),
    responses((status = 200, body = OkResponse), (status = 408, body = ErrorBody)))]
pub(super) async fn wait(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .wait(
            &app,
            &id,
            query.state.as_deref(),
            query.timeout,
            query.instance_id.as_deref(),
        )
        .await?;
    Ok(ok())
}

/// The machine's active lease (404 if none).
#[utoipa::path(get, path = "/v1/apps/{app}/machines/{machine}/lease", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)),
    responses((status = 200, body = LeaseResponse), (status = 404, body = ErrorBody)))]
pub(super) async fn get_lease(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<LeaseResponse>, ApiError> {
    scope.require_app(&app)?;
    let data = control.machines().get_lease(&app, &id)?;
    Ok(Json(LeaseResponse {
        status: "success".to_owned(),
        data,
    }))
}

/// Acquire (or, with the nonce header, extend) a lease; `?ttl=` or body `{"ttl", "description"}`.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/lease", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path), LeaseQuery), request_body(content = Option<CreateLeaseRequest>),
    responses((status = 200, body = LeaseResponse), (status = 409, body = ErrorBody)))]
pub(super) async fn acquire_lease(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    ApiQuery(query): ApiQuery<LeaseQuery>,
    OptionalJson(body): OptionalJson<CreateLeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    scope.require_app(&app)?;
    let body = body.unwrap_or_default();
    let data = control.machines().acquire_lease(
        &app,
        &id,
        body.ttl.or(query.ttl),
        body.description,
        &scope.0.owner(),
        nonce(&headers),
    )?;
    Ok(Json(LeaseResponse {
        status: "success".to_owned(),
        data,
    }))
}

/// Release a lease (needs the nonce header).
#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{machine}/lease", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 409, body = ErrorBody)))]
pub(super) async fn release_lease(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .release_lease(&app, &id, nonce(&headers))?;
    Ok(ok())
}

/// The machine's metadata.
#[utoipa::path(get, path = "/v1/apps/{app}/machines/{machine}/metadata", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)),
    responses((status = 200, body = BTreeMap<String, String>)))]
pub(super) async fn get_metadata(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().metadata(&app, &id)?))
}

/// Set one metadata key (204).
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{machine}/metadata/{key}", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path), ("key" = String, Path)), request_body = MetadataValue,
    responses((status = 204), (status = 400, body = ErrorBody)))]
pub(super) async fn set_metadata(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id, key)): ApiPath<(String, String, String)>,
    ApiJson(body): ApiJson<MetadataValue>,
) -> Result<StatusCode, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .set_metadata(&app, &id, &key, Some(body.value), nonce(&headers))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove one metadata key (204).
#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{machine}/metadata/{key}", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path), ("key" = String, Path)),
    responses((status = 204)))]
pub(super) async fn delete_metadata(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id, key)): ApiPath<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .set_metadata(&app, &id, &key, None, nonce(&headers))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The machine's events, newest first.
#[utoipa::path(get, path = "/v1/apps/{app}/machines/{machine}/events", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)), responses((status = 200, body = Vec<MachineEvent>)))]
pub(super) async fn events(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<Vec<MachineEvent>>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().events(&app, &id)?))
}

/// The machine's config versions, newest first.
#[utoipa::path(get, path = "/v1/apps/{app}/machines/{machine}/versions", tag = "machines",
    params(("app" = String, Path), ("machine" = String, Path)), responses((status = 200, body = Vec<MachineVersion>)))]
pub(super) async fn versions(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<Vec<MachineVersion>>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().versions(&app, &id)?))
}
