//! Deploys run by the control plane: the plan the CLI computes (`POST /v1/apps/{app}/deploys`),
//! a deploy's state and its events (`GET …/deploys/{id}`, `…/events?follow=true`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::MachineConfig;

/// How a new release replaces the old machines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeployStrategy {
    /// Batches of `max_unavailable` machines, cordoned, updated, checked, admitted.
    #[default]
    Rolling,
    /// Every machine updated at once; nothing waits.
    Immediate,
    /// One new machine first, then rolling.
    Canary,
    /// A full new set, then the traffic moves over.
    Bluegreen,
}

impl DeployStrategy {
    /// The strategy's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStrategy::Rolling => "rolling",
            DeployStrategy::Immediate => "immediate",
            DeployStrategy::Canary => "canary",
            DeployStrategy::Bluegreen => "bluegreen",
        }
    }
}

/// `max_unavailable`: a fraction of a group's machines (in (0, 1)) or a count (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MaxUnavailableSpec {
    Count(u32),
    Fraction(f64),
}

impl Default for MaxUnavailableSpec {
    fn default() -> Self {
        MaxUnavailableSpec::Fraction(0.33)
    }
}

/// `[deploy] release_command`, run once before the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseCommandSpec {
    pub command: String,
    pub timeout_secs: u64,
}

/// Body of `POST /v1/apps/{app}/deploys`: everything a rollout needs, the image pinned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployPlan {
    /// The image every machine of the release runs (pinned to a digest when it was pushed).
    pub image: String,
    /// The machine config of each process group.
    pub configs: BTreeMap<String, MachineConfig>,
    #[serde(default)]
    pub strategy: DeployStrategy,
    #[serde(default)]
    pub max_unavailable: MaxUnavailableSpec,
    /// The primary region.
    pub region: String,
    /// Only machines in these regions are touched, and groups get machines there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Machines a group without any gets per region (1, or 2 with `--ha`).
    #[serde(default = "one")]
    pub per_region: u32,
    /// How long each machine may take to become healthy.
    #[serde(default = "default_wait_secs")]
    pub wait_timeout_secs: u64,
    /// How long a cordoned machine keeps its in-flight requests before it is stopped.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_command: Option<ReleaseCommandSpec>,
    #[serde(default)]
    pub description: String,
}

fn one() -> u32 {
    1
}
fn default_wait_secs() -> u64 {
    120
}
fn default_drain_ms() -> u64 {
    1000
}

/// Where a deploy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Taking its steps.
    Running,
    /// A step failed (or it was cancelled): undoing what it did.
    RollingBack,
    /// Every step done.
    Succeeded,
    /// Failed and rolled back (as far as it could).
    Failed,
    /// Cancelled and rolled back.
    Cancelled,
}

impl DeployStatus {
    /// Whether the deploy is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeployStatus::Succeeded | DeployStatus::Failed | DeployStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Running => "running",
            DeployStatus::RollingBack => "rolling_back",
            DeployStatus::Succeeded => "succeeded",
            DeployStatus::Failed => "failed",
            DeployStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for DeployStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a deploy did or saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployEvent {
    /// 1, 2, … in the order they happened.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The step: `release_command`, `create`, `cordon`, `update`, `wait`, `admit`, `destroy`,
    /// `rollback`, `done`.
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// For a machine: `replacing`, `starting`, `checks`, `settling`, `healthy`, `failed`;
    /// otherwise `info`, `error`, or the deploy's final status.
    pub status: String,
    /// What a person reads.
    pub message: String,
}

/// A deploy as `GET /v1/apps/{app}/deploys/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeployInfo {
    pub id: String,
    pub app: String,
    /// The release this deploy rolls out.
    pub version: u64,
    pub image: String,
    pub strategy: DeployStrategy,
    pub status: DeployStatus,
    /// Why it failed, and how the rollback went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many steps the rollback undid.
    #[serde(default)]
    pub rolled_back: u64,
    #[serde(default)]
    pub events: Vec<DeployEvent>,
}

/// Query of `GET …/deploys/{id}/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployEventsQuery {
    /// Keep the stream open until the deploy is over.
    #[serde(default)]
    pub follow: bool,
    /// Only events after this sequence number.
    #[serde(default)]
    pub after: u64,
}

impl crate::Client {
    /// `POST /v1/apps/{app}/deploys`: records a release and starts rolling it out on the
    /// server.
    pub async fn start_deploy(
        &self,
        app: &str,
        plan: &DeployPlan,
    ) -> Result<DeployInfo, crate::ClientError> {
        self.post(self.url(&["v1", "apps", app, "deploys"]), plan)
            .await
    }

    /// `GET /v1/apps/{app}/deploys/{id}` (`id` may be a release version such as `v3`).
    pub async fn get_deploy(&self, app: &str, id: &str) -> Result<DeployInfo, crate::ClientError> {
        self.get(self.url(&["v1", "apps", app, "deploys", id]))
            .await
    }

    /// `POST /v1/apps/{app}/deploys/{id}/cancel`.
    pub async fn cancel_deploy(
        &self,
        app: &str,
        id: &str,
    ) -> Result<DeployInfo, crate::ClientError> {
        self.post(
            self.url(&["v1", "apps", app, "deploys", id, "cancel"]),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /v1/apps/{app}/deploys/{id}/events`: the events after `after`, and with `follow`
    /// the new ones until the deploy is over.
    pub async fn deploy_events(
        &self,
        app: &str,
        id: &str,
        after: u64,
        follow: bool,
    ) -> Result<
        impl futures::Stream<Item = Result<DeployEvent, crate::ClientError>> + Send + 'static,
        crate::ClientError,
    > {
        let mut url = self.url(&["v1", "apps", app, "deploys", id, "events"]);
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("follow", if follow { "true" } else { "false" });
        let response = self
            .send(self.request(reqwest::Method::GET, url.clone()), &url)
            .await?;
        Ok(crate::client::ndjson_lines(response, url.to_string()))
    }
}
