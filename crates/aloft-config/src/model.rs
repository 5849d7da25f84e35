//! The typed application configuration, with Fly's defaults filled in.
//!
//! These types are produced by [`crate::parse`] and serialise back to TOML with
//! [`AppConfig::to_toml_string`]; values equal to their default are left out of the output.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::units::format_duration;

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

/// When the edge stops idle machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoStop {
    /// Never (also written `false`).
    Off,
    /// Stop idle machines (also written `true`).
    Stop,
    /// Suspend idle machines.
    Suspend,
}

impl AutoStop {
    /// The word Fly uses in machine configs.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoStop::Off => "off",
            AutoStop::Stop => "stop",
            AutoStop::Suspend => "suspend",
        }
    }
}

/// What the concurrency limits count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyKind {
    /// Open connections (default).
    #[default]
    Connections,
    /// In-flight requests.
    Requests,
}

/// `concurrency`: load thresholds for routing and autostart/autostop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Concurrency {
    /// `connections` or `requests`.
    #[serde(rename = "type")]
    pub kind: ConcurrencyKind,
    /// Above this a machine is preferred less (default 20).
    pub soft_limit: u32,
    /// At this a machine gets no new traffic; unset means unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            kind: ConcurrencyKind::Connections,
            soft_limit: 20,
            hard_limit: None,
        }
    }
}

/// `http_options` of a service or port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpOptions {
    /// Speak HTTP/2 cleartext to the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_backend: Option<bool>,
    /// Idle connection timeout in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u32>,
    /// `response`.
    #[serde(skip_serializing_if = "HttpResponseOptions::is_empty")]
    pub response: HttpResponseOptions,
}

/// `http_options.response`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpResponseOptions {
    /// Do not add `Server` / `Fly-Request-Id` headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pristine: Option<bool>,
    /// Headers added to every response.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl HttpResponseOptions {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `tls_options` of a service or port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsOptions {
    /// ALPN protocols offered, e.g. `["h2", "http/1.1"]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// `TLSv1.2` and/or `TLSv1.3`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

/// The kind of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// An HTTP request that must answer 2xx.
    Http,
    /// A TCP connect.
    Tcp,
}

/// A health check: in `[[http_service.checks]]`, `[[services.*_checks]]` or `[checks.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `http` or `tcp` (written only in top-level checks).
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// Port to check (top-level checks; service checks use the service's port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time after start before failures count.
    #[serde(
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub grace_period: Option<Duration>,
    /// Time between checks.
    #[serde(
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// Time a check may take.
    #[serde(
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// HTTP method (http checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP path (http checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http` or `https` (http checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Skip certificate verification for `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_skip_verify: Option<bool>,
    /// Request headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Process groups (top-level checks only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

impl Check {
    /// A check of the given kind with nothing else set.
    pub fn new(kind: CheckKind) -> Self {
        Check {
            kind,
            port: None,
            grace_period: None,
            interval: None,
            timeout: None,
            method: None,
            path: None,
            protocol: None,
            tls_skip_verify: None,
            headers: BTreeMap::new(),
            processes: Vec::new(),
        }
    }
}

/// `[http_service]`: shorthand for ports 80 (`http`) and 443 (`tls` + `http`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpService {
    /// Port the app listens on inside the machine (default 8080).
    pub internal_port: u16,
    /// Redirect HTTP to HTTPS with a 301.
    #[serde(skip_serializing_if = "is_false")]
    pub force_https: bool,
    /// Stop or suspend idle machines; unset leaves machines running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_machines: Option<AutoStop>,
    /// Start stopped machines on demand (default true).
    #[serde(skip_serializing_if = "is_true")]
    pub auto_start_machines: bool,
    /// Machines kept running in the primary region (default 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub min_machines_running: u32,
    /// Process groups that serve it; empty means the default group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// `[http_service.concurrency]`.
    #[serde(skip_serializing_if = "is_default_concurrency")]
    pub concurrency: Concurrency,
    /// `[http_service.http_options]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_options: Option<HttpOptions>,
    /// `[http_service.tls_options]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_options: Option<TlsOptions>,
    /// `[[http_service.checks]]`: they decide routing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

impl HttpService {
    /// An HTTP service on `internal_port` with every other setting at its default.
    pub fn new(internal_port: u16) -> Self {
        HttpService {
            internal_port,
            force_https: false,
            auto_stop_machines: None,
            auto_start_machines: true,
            min_machines_running: 0,
            processes: Vec::new(),
            concurrency: Concurrency::default(),
            http_options: None,
            tls_options: None,
            checks: Vec::new(),
        }
    }
}

/// Transport protocol of a `[[services]]` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `[[services]]`: a service with explicit public ports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// Port inside the machine (default 8080).
    pub internal_port: u16,
    /// `tcp` (default) or `udp`.
    pub protocol: Protocol,
    /// Stop or suspend idle machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_machines: Option<AutoStop>,
    /// Start stopped machines on demand (default true).
    #[serde(skip_serializing_if = "is_true")]
    pub auto_start_machines: bool,
    /// Machines kept running in the primary region (default 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub min_machines_running: u32,
    /// Process groups that serve it; empty means the default group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// `[[services.ports]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// `[services.concurrency]`.
    #[serde(skip_serializing_if = "is_default_concurrency")]
    pub concurrency: Concurrency,
    /// `[[services.tcp_checks]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_checks: Vec<Check>,
    /// `[[services.http_checks]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_checks: Vec<Check>,
}

/// A connection handler on a public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handler {
    /// HTTP/1.1 and HTTP/2 proxying.
    Http,
    /// TLS termination.
    Tls,
    /// Postgres TLS negotiation.
    PgTls,
    /// PROXY protocol header to the machine.
    ProxyProto,
}

impl Handler {
    /// The handler's name as written in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Handler::Http => "http",
            Handler::Tls => "tls",
            Handler::PgTls => "pg_tls",
            Handler::ProxyProto => "proxy_proto",
        }
    }
}

/// `[[services.ports]]`: one public port or a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Port {
    /// A single public port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// First port of a range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_port: Option<u16>,
    /// Last port of a range (inclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// Handlers; none means raw TCP passthrough.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub handlers: Vec<Handler>,
    /// Redirect HTTP to HTTPS.
    #[serde(skip_serializing_if = "is_false")]
    pub force_https: bool,
    /// PROXY protocol version, `v1` or `v2` (with the `proxy_proto` handler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_proto_options: Option<ProxyProtoOptions>,
    /// `http_options` for this port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_options: Option<HttpOptions>,
    /// `tls_options` for this port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_options: Option<TlsOptions>,
}

/// `proxy_proto_options`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyProtoOptions {
    /// `v1` (default) or `v2`.
    pub version: String,
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

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
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

fn is_default_concurrency(c: &Concurrency) -> bool {
    c == &Concurrency::default()
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
