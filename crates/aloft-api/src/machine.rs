//! The machine object and the Machines API request and response bodies.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::config::MachineConfig;

/// A machine's lifecycle state, with Fly's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Replacing,
    Destroying,
    Destroyed,
    Failed,
}

impl MachineState {
    /// Every state, in lifecycle order.
    pub const ALL: [MachineState; 11] = [
        MachineState::Created,
        MachineState::Starting,
        MachineState::Started,
        MachineState::Stopping,
        MachineState::Stopped,
        MachineState::Suspending,
        MachineState::Suspended,
        MachineState::Replacing,
        MachineState::Destroying,
        MachineState::Destroyed,
        MachineState::Failed,
    ];

    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Replacing => "replacing",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<MachineState> {
        MachineState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the host running a machine is in contact with the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    Ok,
    Unreachable,
    Unknown,
}

/// The resolved image of a machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One entry of a machine's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineEvent {
    pub id: String,
    /// `launch`, `start`, `stop`, `exit`, `update`, `destroy`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The state the machine reached, or a free status word.
    pub status: String,
    /// `user` or `flyd` (the agent).
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub request: Option<Value>,
}

/// The latest result of one health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CheckStatus {
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    #[serde(default)]
    pub output: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A machine as the Machines API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    /// 14 hex characters.
    pub id: String,
    pub name: String,
    pub state: MachineState,
    pub region: String,
    /// Changes with every new version of the machine's config.
    pub instance_id: String,
    pub version: String,
    pub private_ip: String,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    #[serde(default)]
    pub events: Vec<MachineEvent>,
    #[serde(default)]
    pub checks: Vec<CheckStatus>,
    pub host_status: HostStatus,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The lease nonce, only when the machine was created with `lease_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// Body of `POST /v1/apps/{app}/machines` and of an update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateMachineRequest {
    pub config: MachineConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Create the machine without starting it (it stays `created`).
    #[serde(default)]
    pub skip_launch: bool,
    #[serde(default)]
    pub skip_service_registration: bool,
    /// Acquire a lease of this many seconds on the new machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u64>,
}

/// Body of `POST /v1/apps/{app}/machines/{id}`: the same shape as a create.
pub type UpdateMachineRequest = CreateMachineRequest;

/// Body of `POST .../stop` (optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// A Fly duration (`"10s"`) or nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub timeout: Option<Value>,
}

/// Body of `POST .../signal`: a name (`"SIGTERM"`) or, as Fly's clients also send, a number
/// (`9`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalRequest {
    #[serde(deserialize_with = "signal_name")]
    #[schema(value_type = Object)]
    pub signal: String,
}

/// The Linux signal names of the numbers Fly's clients send.
const SIGNAL_NUMBERS: &[(u64, &str)] = &[
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (6, "SIGABRT"),
    (9, "SIGKILL"),
    (10, "SIGUSR1"),
    (12, "SIGUSR2"),
    (14, "SIGALRM"),
    (15, "SIGTERM"),
    (18, "SIGCONT"),
    (19, "SIGSTOP"),
    (20, "SIGTSTP"),
    (28, "SIGWINCH"),
];

fn signal_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Name(String),
        Number(u64),
    }
    match NameOrNumber::deserialize(d)? {
        NameOrNumber::Name(name) => Ok(name),
        NameOrNumber::Number(n) => SIGNAL_NUMBERS
            .iter()
            .find(|(number, _)| *number == n)
            .map(|(_, name)| (*name).to_owned())
            .ok_or_else(|| serde::de::Error::custom(format!("unknown signal number {n}"))),
    }
}

/// `{"ok": true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OkResponse {
    pub ok: bool,
}

/// Answer of `POST .../start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StartResponse {
    pub previous_state: MachineState,
    #[serde(default)]
    pub migrated: bool,
    #[serde(default)]
    pub new_host: String,
}

/// Query of `GET /v1/apps/{app}/machines`; `metadata.KEY=VALUE` filters are read separately.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListMachinesQuery {
    /// Only machines in this region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Comma-separated states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Include destroyed machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_deleted: Option<bool>,
    /// `metadata.KEY=VALUE` pairs (sent as separate query parameters).
    #[serde(skip)]
    #[param(ignore)]
    pub metadata: BTreeMap<String, String>,
}

/// Query of `GET .../wait`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// `started` (default), `stopped`, `suspended`, `destroyed`, `failed` or `settled`;
    /// several as a comma list or by repeating `state=` (the first reached answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Seconds, default 60, at most 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Wait for this instance (version) of the machine (`version=` is the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// Answer of `GET .../wait`: the state reached and the version it was reached at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WaitResponse {
    pub ok: bool,
    pub state: MachineState,
    pub version: String,
    /// The latest event of the machine when the wait answered.
    #[serde(default)]
    pub event_id: String,
}

/// Query of `DELETE .../machines/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteMachineQuery {
    /// Destroy even if the machine is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Kill a running machine (SIGKILL, no grace period), then destroy it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<bool>,
}

/// Query of `POST .../restart`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestartQuery {
    /// How long the old process may take to stop: a duration (`"10s"`) or seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The signal that stops the old process (default the config's `stop_config`, else
    /// SIGINT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Accepted for Fly's clients; a restart always stops the old process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_stop: Option<bool>,
}

/// Body of `POST .../lease` (optional; `?ttl=` works too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateLeaseRequest {
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Query of `POST .../lease`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaseQuery {
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// A lease on a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub owner: String,
    #[serde(default)]
    pub description: String,
    /// The machine version the lease was taken on.
    pub version: String,
}

/// Answer of the lease endpoints: `{"status":"success","data":{...}}`, as Fly answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseResponse {
    pub status: String,
    pub data: Lease,
}

/// Answer of `DELETE .../lease`: `{"status":"success","data":{"ok":true}}`, as Fly answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseReleased {
    pub status: String,
    pub data: OkResponse,
}

/// Body of `POST .../metadata/{key}`, and answer of `GET .../metadata/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetadataValue {
    pub value: String,
}

/// Body of `PUT .../metadata`: keys to set; a `null` or empty value removes the key. With
/// `machine_version`, the change applies only while the machine is at that version (else 412).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpdateMetadataRequest {
    #[serde(default)]
    pub metadata: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_version: Option<String>,
}

/// One entry of `GET .../versions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineVersion {
    pub version: String,
    pub user_config: MachineConfig,
    /// RFC 3339.
    pub created_at: String,
}
