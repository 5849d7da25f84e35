//! Releases and secrets: what `aloft deploy` records and what `aloft secrets` manages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::MachineConfig;

/// Where a release is in its rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    RolledBack,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Pending => "pending",
            ReleaseStatus::Running => "running",
            ReleaseStatus::Succeeded => "succeeded",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::RolledBack => "rolled_back",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<ReleaseStatus> {
        [
            ReleaseStatus::Pending,
            ReleaseStatus::Running,
            ReleaseStatus::Succeeded,
            ReleaseStatus::Failed,
            ReleaseStatus::RolledBack,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `POST /v1/apps/{app}/releases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateReleaseRequest {
    /// The image every machine of the release runs.
    pub image: String,
    /// Machine config per process group.
    pub configs: BTreeMap<String, MachineConfig>,
    /// `rolling`, `immediate`, `canary` or `bluegreen`.
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// Who asked for it (free text, e.g. `aloft deploy` or `aloft rollback 3`).
    #[serde(default)]
    pub description: String,
}

fn default_strategy() -> String {
    "rolling".to_owned()
}

/// A release of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    /// 1, 2, 3… per app.
    pub version: u64,
    pub image: String,
    pub configs: BTreeMap<String, MachineConfig>,
    pub strategy: String,
    pub status: ReleaseStatus,
    /// Why the release failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub description: String,
    /// The kind of token that created it (`admin` or `app:NAME`).
    pub user: String,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

/// Body of `PATCH|POST /v1/apps/{app}/releases/{version}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseStatusRequest {
    /// `pending`, `running`, `succeeded`, `failed` or `rolled_back`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Body of `POST /v1/apps/{app}/secrets`: values to set (existing names are replaced); a
/// `null` value removes that secret, as Fly's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetSecretsRequest {
    pub values: BTreeMap<String, Option<String>>,
}

/// Body of `POST /v1/apps/{app}/secrets/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetSecretRequest {
    pub value: String,
}

/// An app's secrets and their version, as Fly's secrets endpoints answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppSecrets {
    pub secrets: Vec<SecretInfo>,
    /// Grows by one with every change of the app's secrets.
    pub version: u64,
}

/// Answer of `DELETE /v1/apps/{app}/secrets/{name}` and of a single secret's set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretsVersion {
    pub version: u64,
}

/// Body of `POST /v1/apps/{app}/secrets/unset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnsetSecretsRequest {
    pub names: Vec<String>,
}

/// A secret as the API lists it: its name and a digest of its value, never the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    pub name: String,
    /// First 16 hex digits of the value's SHA-256.
    pub digest: String,
    /// RFC 3339: when the value was last set (Aloft keeps no earlier time).
    pub created_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub updated_at: String,
}
