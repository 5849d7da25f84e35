//! Apps and platform regions (tokens and organisations are in `tokens`).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Body of `POST /v1/apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateAppRequest {
    pub app_name: String,
    /// Defaults to `personal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// Query of `GET /v1/apps`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAppsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
}

/// An organisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    pub name: String,
    pub slug: String,
}

/// Answer of `GET /v1/apps/{app}` and `POST /v1/apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct App {
    pub id: String,
    pub name: String,
    pub organization: Organization,
    /// `deployed` when a machine is started, otherwise `pending`.
    pub status: String,
}

/// One entry of `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppSummary {
    pub id: String,
    pub name: String,
    pub machine_count: u64,
    pub network: String,
}

/// Answer of `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListAppsResponse {
    pub total_apps: u64,
    pub apps: Vec<AppSummary>,
}

/// One region with at least one live host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegionInfo {
    pub code: String,
    pub name: String,
    pub free_cpus: i64,
    pub free_memory_mb: i64,
    pub hosts: u64,
}

/// Answer of `GET /v1/platform/regions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegionsResponse {
    #[serde(rename = "Regions")]
    pub regions: Vec<RegionInfo>,
}

/// Answer of `GET /v1/cluster`: the names every host and client of this cluster shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// The built-in registry's cluster-wide name (like `registry.fly.io`): image references
    /// the CLI and deploys write use it, and every host maps it to its own route to the
    /// control plane.
    pub registry: String,
    /// Apps answer at `<app>.<domain>`.
    pub domain: String,
}

impl ClusterInfo {
    /// `registry.<domain>`, the registry's name when the operator does not choose one.
    pub fn default_registry(domain: &str) -> String {
        format!("registry.{domain}")
    }
}
