//! `/v1/apps/{app_name}/machines/...`: the Fly-compatible Machines API — listing, creating,
//! updating, destroying and the lifecycle actions. Leases, metadata, waits and the rest of a
//! machine's sub-resources are in `machine_parts.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use aloft_api::{
    CreateMachineRequest, DeleteMachineQuery, ErrorBody, ListMachinesQuery, Machine, OkResponse,
    RestartQuery, SignalRequest, StartResponse, StopRequest, LEASE_NONCE_HEADER,
};
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::Json;

use super::{machine_parts, ApiError, ApiJson, ApiPath, ApiQuery, OptionalJson, Routes, Scope};
use crate::control::Control;

/// A machine's path, with Fly's parameter names.
pub(super) const M: &str = "/v1/apps/{app_name}/machines/{machine_id}";

/// `M` followed by `/rest`.
macro_rules! m {
    ($rest:literal) => {
        concat!("/v1/apps/{app_name}/machines/{machine_id}/", $rest)
    };
}
pub(super) use m;

pub(super) fn routes(r: Routes) -> Routes {
    let r = r
        .at(Method::GET, "/v1/apps/{app_name}/machines", list_machines)
        .at(Method::POST, "/v1/apps/{app_name}/machines", create_machine)
        .at(Method::GET, M, get_machine)
        .at(Method::POST, M, update_machine)
        .at(Method::DELETE, M, delete_machine)
        .at(Method::POST, m!("start"), start)
        .at(Method::POST, m!("stop"), stop)
        .at(Method::POST, m!("restart"), restart)
        .at(Method::POST, m!("signal"), signal)
        .at(Method::POST, m!("suspend"), suspend)
        .at(Method::POST, m!("cordon"), cordon)
        .at(Method::POST, m!("uncordon"), uncordon);
    machine_parts::routes(r)
}

pub(super) fn nonce(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(LEASE_NONCE_HEADER)
        .and_then(|v| v.to_str().ok())
}

pub(super) type Ctx = State<Arc<Control>>;
pub(super) type AppMachine = ApiPath<(String, String)>;

pub(super) fn ok() -> Json<OkResponse> {
    Json(OkResponse { ok: true })
}

/// List machines; filters `region`, `state` (comma list), `include_deleted`, `metadata.KEY=VALUE`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines", tag = "machines", params(("app_name" = String, Path), ListMachinesQuery),
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
                "region" | "state" | "include_deleted" | "summary" | "include_leases"
            ) => {}
            None => {
                return Err(ApiError::BadRequest(format!(
                    "Unknown query parameter {key:?}"
                )))
            }
        }
    }
    let include_deleted = query_bool(&query, "include_deleted")?;
    let summary = query_bool(&query, "summary")?;
    let mut machines = control.machines().list(
        &app,
        query
            .get("region")
            .map(String::as_str)
            .filter(|r| !r.is_empty()),
        query.get("state").map(String::as_str),
        include_deleted,
        &metadata,
    )?;
    if summary {
        // Fly's summary leaves out the config's body and the event log; the image stays.
        for m in &mut machines {
            m.config = aloft_api::MachineConfig {
                image: std::mem::take(&mut m.config.image),
                metadata: m.config.metadata.take(),
                ..Default::default()
            };
            m.events.clear();
            m.checks.clear();
        }
    }
    Ok(Json(machines))
}

/// A boolean query parameter: absent, empty, `false` or `0` is false; `true` or `1` true.
pub(super) fn query_bool(query: &BTreeMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("false") | Some("0") | Some("") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{name} {other:?} must be true or false"
        ))),
    }
}

/// Create a machine, placed on a live host of `region` with room for its guest.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines", tag = "machines", params(("app_name" = String, Path)),
    request_body = CreateMachineRequest,
    responses((status = 200, body = Machine), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Over the operator's per-app limits (machines, CPUs, memory)"),
        (status = 412, body = ErrorBody)))]
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
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
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
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)), request_body = CreateMachineRequest,
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

/// Destroy a machine; a running one only with `force=true` or `kill=true` (else 412).
#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), DeleteMachineQuery),
    responses((status = 200, body = OkResponse), (status = 412, body = ErrorBody)))]
pub(super) async fn delete_machine(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    ApiQuery(query): ApiQuery<DeleteMachineQuery>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control.machines().delete(
        &app,
        &id,
        query.force.unwrap_or(false),
        query.kill.unwrap_or(false),
        nonce(&headers),
    )?;
    Ok(ok())
}

/// Start a machine.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/start", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
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
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/stop", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)), request_body(content = Option<StopRequest>),
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

/// Restart a started machine; `timeout` and `signal` say how its process is stopped.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/restart", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), RestartQuery),
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(super) async fn restart(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    ApiQuery(query): ApiQuery<RestartQuery>,
) -> Result<Json<OkResponse>, ApiError> {
    scope.require_app(&app)?;
    control.machines().restart(
        &app,
        &id,
        query.signal.as_deref().filter(|s| !s.is_empty()),
        query.timeout.as_deref().filter(|t| !t.is_empty()),
        nonce(&headers),
    )?;
    Ok(ok())
}

/// Send a signal to a started machine.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/signal", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)), request_body = SignalRequest,
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorBody), (status = 412, body = ErrorBody)))]
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
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/suspend", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
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
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/cordon", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)), responses((status = 200, body = OkResponse)))]
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
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/uncordon", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)), responses((status = 200, body = OkResponse)))]
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
