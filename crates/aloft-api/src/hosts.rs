//! The agent protocol: host registration, heartbeats, the watch stream and status reports.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::config::MachineConfig;
use crate::machine::{HostStatus, ImageRef, MachineState};

/// Body of `POST /v1/hosts`. A join token enrols a new id only (409 for a registered one);
/// the host's own credential re-registers it (its address, capacity, secrets); the admin
/// token registers any id. `cpus` and `memory_mb` must be within the operator's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterHostRequest {
    pub id: String,
    pub region: String,
    /// Where the control plane and other hosts reach the agent (`ip:port`).
    pub address: String,
    pub cpus: i64,
    pub memory_mb: i64,
    /// The bearer secret the agent's own API (exec, logs) accepts from the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_secret: Option<String>,
    /// The host's WireGuard key and underlay endpoint, when it runs the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshInfo>,
    /// The index the agent already uses (saved from an earlier registration): kept when no
    /// other host holds it, else the control plane assigns a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_index: Option<u32>,
    /// The public IP addresses of the host's edge: what the control plane's GeoDNS answers
    /// with for clients nearest this host's region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edge_addresses: Vec<String>,
}

/// A host's mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MeshInfo {
    /// Base64 of the 32-byte X25519 public key.
    pub public_key: String,
    /// `ip:port` of the host's UDP WireGuard socket on the underlay.
    pub endpoint: String,
}

/// One entry of `GET /v1/mesh/peers`: a registered host that has mesh info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MeshPeer {
    pub host_id: String,
    pub region: String,
    /// The host's 6PN host field (1..=65535), unique and stable.
    pub host_index: u32,
    pub public_key: String,
    pub endpoint: String,
    /// Informational: agents mirror the whole list whatever the status.
    pub status: HostStatus,
}

/// A host as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub id: String,
    pub region: String,
    pub address: String,
    pub cpus: i64,
    pub memory_mb: i64,
    pub free_cpus: i64,
    pub free_memory_mb: i64,
    pub status: HostStatus,
    /// RFC 3339.
    pub last_heartbeat: String,
    /// Assigned at first registration: unique in the cluster, stable for this host id,
    /// 1..=65535, never reused. The host's 6PN host field and IPv4 pool index.
    pub host_index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshInfo>,
    /// Drained by the operator (`aloft hosts drain`): it keeps its machines and gets no new
    /// ones.
    #[serde(default)]
    pub draining: bool,
}

/// Answer of `POST /v1/hosts`: the host, and the credential it must use from now on when
/// this registration issued one (a join token's enrolment, or the operator's). The
/// credential is shown once; only its hash is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnrolledHost {
    #[serde(flatten)]
    pub host: Host,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Body of `POST /v1/hosts/join-tokens` (admin): a token that enrols hosts and does nothing
/// else. With neither field it expires after an hour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    /// Seconds until it expires (1..=2592000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// How many hosts it may enrol (1..=10000); unlimited within its lifetime if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
}

/// A join token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    pub token: String,
    /// RFC 3339; absent if it never expires (it then has a use count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
}

/// What the control plane wants a machine to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Started,
    Stopped,
    Suspended,
    Destroyed,
}

/// A signal the user asked to deliver; `seq` grows so an agent delivers each once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalOrder {
    pub seq: u64,
    pub signal: String,
}

/// A machine assigned to a host, with everything the agent needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssignedMachine {
    pub id: String,
    pub name: String,
    pub app: String,
    pub org: String,
    pub region: String,
    pub version: String,
    /// Changes with every new config version; reports must name the current one.
    pub instance_id: String,
    pub private_ip: String,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    pub desired_state: DesiredState,
    /// The state the control plane last recorded.
    pub state: MachineState,
    /// Grows on every restart request and on every start of a machine that was not running
    /// (including a failed one): an agent (re)starts when it sees a higher value.
    #[serde(default)]
    pub restart_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalOrder>,
    /// Signal for this stop (the config's `stop_config` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Seconds to wait after the stop signal (the config's `stop_config` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_secs: Option<u64>,
    /// Cordoned machines get no new traffic from the edge.
    #[serde(default)]
    pub cordoned: bool,
    /// The app's secrets, decrypted for this host; they override the config's `env`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, String>,
}

/// One line of `GET /v1/hosts/{id}/watch`: a change (with `machine`) or a keep-alive
/// (without), both carrying the revision the stream has reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WatchEvent {
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<AssignedMachine>,
}

/// Query of `GET /v1/hosts/{id}/watch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// Resume after this revision (0 = everything).
    #[serde(default)]
    pub since: u64,
}

/// An event an agent reports with a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportedEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A check result an agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportedCheck {
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    #[serde(default)]
    pub output: String,
}

/// Body of `POST /v1/hosts/{id}/machines/{machine_id}/status`.
///
/// A state different from the recorded one goes through the control plane's transition
/// function (412 if not allowed). `destroyed` is also accepted from a non-destroying state
/// (auto_destroy): the control plane records `destroying` then `destroyed`. A report naming
/// an old `instance_id` gets 409.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusReport {
    pub instance_id: String,
    pub state: MachineState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ReportedEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<ReportedCheck>>,
    /// The machine's 6PN address, chosen by the host when it sets up the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
}
