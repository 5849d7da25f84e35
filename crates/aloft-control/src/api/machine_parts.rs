//! A machine's sub-resources in the Machines API: waits, leases, metadata, events,
//! versions, memory and processes; and an organization's machines.

use std::collections::BTreeMap;

use aloft_api::{
    CreateLeaseRequest, ErrorBody, LeaseQuery, LeaseReleased, LeaseResponse, MachineEvent,
    MachineVersion, MemoryResponse, MetadataValue, OkResponse, OrgMachinesQuery,
    OrgMachinesResponse, ProcessStat, PsQuery, UpdateMetadataRequest, WaitQuery, WaitResponse,
};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Json;

use super::machines::{m, nonce, AppMachine, Ctx};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, OptionalJson, Routes, Scope};
use crate::services::machines::{parse_states, wait_targets, OrgFilter};
use crate::services::tokens::TokenScope;

pub(super) fn routes(r: Routes) -> Routes {
    r.at(Method::GET, m!("wait"), wait)
        .at(Method::GET, m!("lease"), get_lease)
        .at(Method::POST, m!("lease"), acquire_lease)
        .at(Method::DELETE, m!("lease"), release_lease)
        .at(Method::GET, m!("metadata"), get_metadata)
        .at(Method::PUT, m!("metadata"), put_metadata)
        .at(Method::GET, m!("metadata/{key}"), get_metadata_key)
        .at(Method::POST, m!("metadata/{key}"), set_metadata)
        .at(Method::DELETE, m!("metadata/{key}"), delete_metadata)
        .at(Method::GET, m!("events"), events)
        .at(Method::GET, m!("versions"), versions)
        .at(Method::GET, m!("memory"), memory)
        .at(Method::GET, m!("ps"), ps)
        .at(Method::GET, "/v1/orgs/{org_slug}/machines", org_machines)
}

/// Wait until the machine reaches one of the `state`s (default started; repeat `state=` or
/// give a comma list); 408 after `timeout` seconds.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/wait", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), WaitQuery,
        ("version" = Option<String>, Query, description = "Wait for this version (the same as instance_id)")),
    responses((status = 200, body = WaitResponse), (status = 400, body = ErrorBody), (status = 408, body = ErrorBody),
        (status = 412, description = "the machine failed or was destroyed instead", body = ErrorBody)))]
pub(super) async fn wait(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<WaitResponse>, ApiError> {
    scope.require_app(&app)?;
    let mut states = Vec::new();
    let mut timeout = None;
    let mut version = None;
    for (key, value) in &pairs {
        match key.as_str() {
            "state" | "state[]" => states.push(value.as_str()),
            "timeout" => {
                let secs = value.parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(format!("timeout {value:?} must be whole seconds"))
                })?;
                timeout = Some(secs);
            }
            "version" | "instance_id" if !value.is_empty() => version = Some(value.as_str()),
            _ => {}
        }
    }
    let targets = wait_targets(states)?;
    Ok(Json(
        control
            .machines()
            .wait(&app, &id, &targets, timeout, version)
            .await?,
    ))
}

/// The machine's active lease (404 if none).
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
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

/// Acquire (or, with the nonce header, refresh) a lease: 201. `?ttl=` or body
/// `{"ttl", "description"}`; 409 while someone else holds it.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), LeaseQuery), request_body(content = Option<CreateLeaseRequest>),
    responses((status = 201, body = LeaseResponse), (status = 409, body = ErrorBody)))]
pub(super) async fn acquire_lease(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    ApiQuery(query): ApiQuery<LeaseQuery>,
    OptionalJson(body): OptionalJson<CreateLeaseRequest>,
) -> Result<(StatusCode, Json<LeaseResponse>), ApiError> {
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
    Ok((
        StatusCode::CREATED,
        Json(LeaseResponse {
            status: "success".to_owned(),
            data,
        }),
    ))
}

/// Release a lease (needs the nonce header).
#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = LeaseReleased), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn release_lease(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<LeaseReleased>, ApiError> {
    scope.require_app(&app)?;
    control
        .machines()
        .release_lease(&app, &id, nonce(&headers))?;
    Ok(Json(LeaseReleased {
        status: "success".to_owned(),
        data: OkResponse { ok: true },
    }))
}

/// The machine's metadata.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = BTreeMap<String, String>)))]
pub(super) async fn get_metadata(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().metadata(&app, &id)?))
}

/// Set or remove several keys at once (a `null` or empty value removes); 412 when
/// `machine_version` is not the machine's version.
#[utoipa::path(put, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)), request_body = UpdateMetadataRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub(super) async fn put_metadata(
    State(control): Ctx,
    scope: Scope,
    headers: HeaderMap,
    ApiPath((app, id)): AppMachine,
    ApiJson(body): ApiJson<UpdateMetadataRequest>,
) -> Result<StatusCode, ApiError> {
    scope.require_app(&app)?;
    control.machines().update_metadata(
        &app,
        &id,
        body.metadata,
        body.machine_version.as_deref(),
        nonce(&headers),
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// One metadata value (404 if the key is not set).
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = MetadataValue), (status = 404, body = ErrorBody)))]
pub(super) async fn get_metadata_key(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id, key)): ApiPath<(String, String, String)>,
) -> Result<Json<MetadataValue>, ApiError> {
    scope.require_app(&app)?;
    let value = control.machines().metadata_value(&app, &id, &key)?;
    Ok(Json(MetadataValue { value }))
}

/// Set one metadata key (204).
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)), request_body = MetadataValue,
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
#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)),
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

/// The machine's events, newest first (`limit`, default 20, at most 50, as Fly).
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/events", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path),
        ("limit" = Option<u64>, Query, description = "How many events (default 20, at most 50)")),
    responses((status = 200, body = Vec<MachineEvent>)))]
pub(super) async fn events(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
    ApiQuery(query): ApiQuery<BTreeMap<String, String>>,
) -> Result<Json<Vec<MachineEvent>>, ApiError> {
    scope.require_app(&app)?;
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => l
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("limit {l:?} must be a number")))?
            .clamp(1, 50),
        None => 20,
    };
    let mut events = control.machines().events(&app, &id)?;
    events.truncate(limit as usize);
    Ok(Json(events))
}

/// The machine's config versions, newest first.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/versions", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)), responses((status = 200, body = Vec<MachineVersion>)))]
pub(super) async fn versions(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<Vec<MachineVersion>>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().versions(&app, &id)?))
}

/// The machine's memory limit (its `config.guest.memory_mb`) and what its host has free.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/memory", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = MemoryResponse), (status = 404, body = ErrorBody)))]
pub(super) async fn memory(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
) -> Result<Json<MemoryResponse>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.machines().memory(&app, &id)?))
}

/// The processes running in a started machine, asked of its host's agent.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/ps", tag = "machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), PsQuery),
    responses((status = 200, body = Vec<ProcessStat>), (status = 400, body = ErrorBody), (status = 412, body = ErrorBody),
        (status = 503, description = "host unreachable", body = ErrorBody)))]
pub(super) async fn ps(
    State(control): Ctx,
    scope: Scope,
    ApiPath((app, id)): AppMachine,
    ApiQuery(query): ApiQuery<PsQuery>,
) -> Result<Json<Vec<ProcessStat>>, ApiError> {
    scope.require_app(&app)?;
    Ok(Json(control.exec().ps(&app, &id, &query).await?))
}

/// The machines of every app of an organization, oldest update first. An org token reaches
/// only its own organization; an app or deploy token sees only its app's machines.
#[utoipa::path(get, path = "/v1/orgs/{org_slug}/machines", tag = "machines",
    params(("org_slug" = String, Path), OrgMachinesQuery),
    responses((status = 200, body = OrgMachinesResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn org_machines(
    State(control): Ctx,
    scope: Scope,
    ApiPath(org): ApiPath<String>,
    ApiQuery(query): ApiQuery<OrgMachinesQuery>,
) -> Result<Json<OrgMachinesResponse>, ApiError> {
    let app = match &scope.0 {
        TokenScope::Admin => None,
        TokenScope::Org(_) => {
            scope.require_org(&org)?;
            None
        }
        TokenScope::App(app) | TokenScope::Deploy(app) => Some(app.as_str()),
        TokenScope::Join | TokenScope::Host(_) => {
            return Err(ApiError::Forbidden(
                "Listing an organization's machines needs an admin, organization or app token"
                    .to_owned(),
            ))
        }
    };
    let filter = OrgFilter {
        app,
        region: query.region.as_deref().filter(|r| !r.is_empty()),
        states: query
            .state
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_states)
            .transpose()?,
        include_deleted: query.include_deleted.unwrap_or(false),
        summary: query.summary.unwrap_or(false),
        updated_after: query.updated_after.as_deref().filter(|t| !t.is_empty()),
        limit: query.limit.unwrap_or(1000).clamp(1, 1000),
    };
    let machines = control.machines().org_machines(&org, &filter)?;
    let last = machines.last();
    Ok(Json(OrgMachinesResponse {
        last_machine_id: last.map(|m| m.id.clone()).unwrap_or_default(),
        last_updated_at: last.map(|m| m.updated_at.clone()).unwrap_or_default(),
        next_cursor: String::new(),
        machines,
    }))
}
