//! The typed application configuration, with Fly's defaults filled in.
//!
//! These types are produced by [`crate::parse`] and serialise back to TOML with
//! [`AppConfig::to_toml_string`]; values equal to their default are left out of the output.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::units::format_duration;

mod service;
pub use service::*;

/// The process group used when `[processes]` is absent.
pub const DEFAULT_PROCESS_GROUP: &str = "app";

/// A whole `aloft.toml` (or `fly.toml`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppConfig {
    /// App name: lowercase letters, digits and dashes, 2–63 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Region new machines go to by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_region: Option<String>,
    /// Signal sent to stop a machine (default `SIGINT`).
    #[serde(skip_serializing_if = "is_default_kill_signal")]
    pub kill_signal: String,
    /// Time between the kill signal and a forced kill (default 5 s, at most 300 s).
    #[serde(
        serialize_with = "ser_duration",
        skip_serializing_if = "is_default_kill_timeout"
    )]
    pub kill_timeout: Duration,
    /// Swap inside the machine, in MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<u32>,
    /// `[build]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// `[env]`: plain environment variables (secrets override them).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `[processes]`: process group name → command line.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub processes: BTreeMap<String, String>,
    /// `[http_service]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_service: Option<HttpService>,
    /// `[[services]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Top-level `[checks]`, by name; they do not decide routing.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Check>,
    /// `[deploy]`.
    #[serde(skip_serializing_if = "Deploy::is_default")]
    pub deploy: Deploy,
    /// `[mounts]` / `[[mounts]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// `[vm]` / `[[vm]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vm: Vec<Vm>,
    /// `[[restart]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<Restart>,
    /// `[metrics]` / `[[metrics]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    /// `[experimental]`: `cmd`, `entrypoint` and `exec` overrides for every group.
    #[serde(skip_serializing_if = "Experimental::is_empty")]
    pub experimental: Experimental,
    /// `[[statics]]`: stored, not served by Aloft.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statics: Vec<Static>,
}

/// `[build]`: where the image comes from. Build arguments are not visible at runtime.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Build {
    /// A prebuilt image reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Path to a Dockerfile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Multi-stage build target.
    #[serde(rename = "build-target", skip_serializing_if = "Option::is_none")]
    pub build_target: Option<String>,
    /// `[build.args]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// How a new release replaces the old machines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Replace machines a few at a time (default).
    #[default]
    Rolling,
    /// Replace all machines at once, without waiting for checks.
    Immediate,
    /// Boot one new machine, check it, then roll.
    Canary,
    /// Boot a full new set, check it, then switch traffic.
    Bluegreen,
}

impl Strategy {
    /// The strategy's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Immediate => "immediate",
            Strategy::Canary => "canary",
            Strategy::Bluegreen => "bluegreen",
        }
    }
}

/// `max_unavailable`: a fraction of the machines or a count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MaxUnavailable {
    /// A fraction in (0, 1).
    Fraction(f64),
    /// A number of machines, at least 1.
    Count(u32),
}

/// `[deploy]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deploy {
    /// The replacement strategy (default rolling).
    pub strategy: Strategy,
    /// How many machines may be down at once in a rolling deploy (default 0.33).
    pub max_unavailable: MaxUnavailable,
    /// How long to wait for a machine to become healthy.
    #[serde(
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub wait_timeout: Option<Duration>,
    /// Command run once in a temporary machine before the deploy; it replaces CMD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_command: Option<String>,
    /// Time the release command may take (default 5 minutes).
    #[serde(serialize_with = "ser_duration")]
    pub release_command_timeout: Duration,
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            strategy: Strategy::Rolling,
            max_unavailable: MaxUnavailable::Fraction(0.33),
            wait_timeout: None,
            release_command: None,
            release_command_timeout: Duration::from_secs(300),
        }
    }
}

impl Deploy {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// `[mounts]`: a volume mounted into the machines of some process groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Volume name.
    pub source: String,
    /// Absolute path inside the machine.
    pub destination: String,
    /// Size of a newly created volume, in GB.
    #[serde(rename = "initial_size", skip_serializing_if = "Option::is_none")]
    pub initial_size_gb: Option<u32>,
    /// Days snapshots are kept (default 5).
    pub snapshot_retention: u32,
    /// Process groups; empty means the default group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// CPU kind of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuKind {
    /// Shared vCPUs.
    Shared,
    /// Dedicated vCPUs.
    Performance,
}

impl CpuKind {
    /// `shared` or `performance`.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuKind::Shared => "shared",
            CpuKind::Performance => "performance",
        }
    }
}

/// `[[vm]]`: machine size for some (or all) process groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Vm {
    /// A preset such as `shared-cpu-1x` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Memory in MB, overriding the preset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// vCPUs, overriding the preset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// CPU kind, overriding the preset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_kind: Option<CpuKind>,
    /// Process groups; empty means every group without a more specific entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// Restart policy name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Always restart.
    Always,
    /// Never restart.
    Never,
    /// Restart when the exit status is not zero (default).
    #[default]
    OnFailure,
}

/// `[[restart]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restart {
    /// The policy (default on-failure).
    pub policy: RestartPolicy,
    /// Maximum restarts for on-failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Process groups; empty means every group without a more specific entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[metrics]`: a Prometheus endpoint inside the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metrics {
    /// Port of the endpoint.
    pub port: u16,
    /// Path of the endpoint.
    pub path: String,
    /// Process groups; empty means the default group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[experimental]`: overrides of the image's ENTRYPOINT and CMD.
///
/// A `[processes]` command takes precedence over `cmd` for its group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Experimental {
    /// Replaces the image's CMD.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Replaces the image's ENTRYPOINT.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Replaces both.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
}

impl Experimental {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `[[statics]]`: kept so the file round-trips; Aloft does not serve static files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Static {
    /// Directory inside the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_path: Option<String>,
    /// URL prefix it was served under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_prefix: Option<String>,
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

pub(super) fn ser_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

fn is_default_kill_signal(signal: &str) -> bool {
    signal == "SIGINT"
}

fn is_default_kill_timeout(timeout: &Duration) -> bool {
    *timeout == Duration::from_secs(5)
}

pub(super) fn is_default_concurrency(c: &Concurrency) -> bool {
    c == &Concurrency::default()
}

pub(super) fn is_false(b: &bool) -> bool {
    !*b
}

pub(super) fn is_true(b: &bool) -> bool {
    *b
}

pub(super) fn is_zero(n: &u32) -> bool {
    *n == 0
}
