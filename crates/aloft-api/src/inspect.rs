//! Looking into machines: their processes (`ps`), their memory, and an organization's
//! machines across apps, in Fly's shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::config::MachineGuest;

/// A socket a process listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListenSocket {
    /// `tcp` or `tcp6`.
    pub proto: String,
    /// `ip:port`.
    pub address: String,
}

/// One process in a machine, as `GET .../ps` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessStat {
    pub pid: i64,
    /// Command line, arguments separated by spaces.
    pub command: String,
    /// Working directory.
    #[serde(default)]
    pub directory: String,
    /// CPU time used, in clock ticks (user + system).
    #[serde(default)]
    pub cpu: u64,
    /// Resident memory, in bytes.
    #[serde(default)]
    pub rss: u64,
    /// Clock ticks since boot when the process started.
    #[serde(default)]
    pub stime: u64,
    /// Ticks the process has run for.
    #[serde(default)]
    pub rtime: u64,
    #[serde(default)]
    pub listen_sockets: Vec<ListenSocket>,
}

/// Query of `GET .../ps`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PsQuery {
    /// `pid` (default), `cpu`, `rss` or `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_by: Option<String>,
    /// `asc` (default) or `desc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// Answer of `GET .../memory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemoryResponse {
    /// The machine's memory limit (its `config.guest.memory_mb`).
    pub limit_mb: i64,
    /// What the guest could still be given on its host, beyond its limit.
    pub available_mb: i64,
}

/// Query of `GET /v1/orgs/{org_slug}/machines`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrgMachinesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_deleted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Comma-separated states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Omit `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<bool>,
    /// Only machines updated after this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_after: Option<String>,
    /// At most this many machines (default and largest 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Accepted for Fly's clients; every answer is complete, so `next_cursor` is always empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The part of a config an organization listing shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrgMachineConfig {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MachineGuest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// One machine of an organization listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrgMachine {
    pub id: String,
    pub name: String,
    pub app_name: String,
    pub state: String,
    pub region: String,
    pub private_ip: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<OrgMachineConfig>,
    pub created_at: String,
    pub updated_at: String,
}

/// Answer of `GET /v1/orgs/{org_slug}/machines`, oldest update first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrgMachinesResponse {
    pub machines: Vec<OrgMachine>,
    #[serde(default)]
    pub last_machine_id: String,
    #[serde(default)]
    pub last_updated_at: String,
    #[serde(default)]
    pub next_cursor: String,
}
