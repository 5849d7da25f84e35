//! Load reports from edges and demand-driven regional scaling policies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/hosts/{host}/load` (join token): what entered at this host's edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoadReport {
    pub apps: Vec<AppLoad>,
}

/// The load of one app that entered at one edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppLoad {
    pub app: String,
    /// Requests in flight that entered at this edge (the agent reports the highest count seen
    /// since its previous report, so short bursts between two reports are not missed).
    pub concurrency: u32,
    /// Requests that entered at this edge since the previous report.
    pub requests: u64,
    /// Milliseconds since the previous report.
    pub interval_ms: u64,
}

/// Body of `PUT /v1/apps/{app}/autoscale` and answer of its `GET`: per region, the bounds
/// and target the control plane's scaler follows. Regions not listed are not scaled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscalePolicy {
    #[serde(default)]
    pub regions: BTreeMap<String, RegionScaling>,
}

/// Scaling bounds of one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionScaling {
    /// Started machines kept in the region whatever the load.
    pub min: u32,
    /// Started (and scaler-created) machines never exceed this.
    pub max: u32,
    /// In-flight requests per started machine the scaler aims for.
    pub target_concurrency: u32,
}

/// The live load of an app in one region, and its machines there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegionLoad {
    pub region: String,
    /// In-flight requests that entered at the region's edges (latest reports, at most ~10 s old).
    pub concurrency: u32,
    /// Requests per second that entered at the region's edges.
    pub requests_per_second: f64,
    /// Machines started (or starting) in the region.
    pub started: u32,
    /// Machines stopped or suspended in the region.
    pub stopped: u32,
    /// Machines the scaler wants started there, when the region has a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<RegionScaling>,
}

/// Answer of `GET /v1/apps/{app}/load`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppLoadStatus {
    pub app: String,
    pub regions: Vec<RegionLoad>,
}
