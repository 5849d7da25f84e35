//! The OpenAPI 3 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    app_certs, apps, autoscale, certs, deploys, exec, hosts, ips, machine_parts, machines, orgs,
    releases, routes, secrets,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every `/v1` endpoint.
#[derive(OpenApi)]
#[openapi(
    info(title = "Aloft control plane API", description = "Fly-compatible Machines API, tokens, and the agent protocol. Every call needs `Authorization: Bearer <token>`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        apps::list_apps, apps::create_app, apps::get_app, apps::delete_app, apps::regions, apps::cluster,
        orgs::list_orgs, orgs::create_org, orgs::delete_org, orgs::list_tokens, orgs::create_token,
        orgs::revoke_token,
        machines::list_machines, machines::create_machine, machines::get_machine, machines::update_machine,
        machines::delete_machine, machines::start, machines::stop, machines::restart, machines::signal,
        machines::suspend, machines::cordon, machines::uncordon,
        machine_parts::wait, machine_parts::get_lease, machine_parts::acquire_lease, machine_parts::release_lease,
        machine_parts::get_metadata, machine_parts::put_metadata, machine_parts::get_metadata_key,
        machine_parts::set_metadata, machine_parts::delete_metadata, machine_parts::events, machine_parts::versions,
        machine_parts::memory, machine_parts::ps, machine_parts::org_machines,
        exec::exec, exec::logs,
        hosts::list_hosts, hosts::register_host, hosts::create_join_token, hosts::revoke_host, hosts::remove_host, hosts::drain_host, hosts::undrain_host, hosts::heartbeat, hosts::watch, hosts::report_status,
        hosts::report_load, hosts::mesh_peers,
        autoscale::get_policy, autoscale::put_policy, autoscale::app_load, autoscale::platform_load,
        routes::get_routes, routes::watch_routes, routes::wake, routes::idle,
        certs::root, certs::list, certs::add, certs::remove, certs::edge_tls,
        certs::order, certs::show, certs::check, certs::edge_acme,
        app_certs::list, app_certs::acme, app_certs::custom, app_certs::show, app_certs::check, app_certs::remove,
        ips::allocate, ips::list, ips::release,
        releases::list_releases, releases::create_release, releases::get_release, releases::set_status,
        releases::patch_status,
        deploys::start, deploys::get, deploys::events, deploys::cancel,
        secrets::list_secrets, secrets::set_secrets, secrets::unset_secrets, secrets::get_secret,
        secrets::set_secret, secrets::delete_secret,
        serve,
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
