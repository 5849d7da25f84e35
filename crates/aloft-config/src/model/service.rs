//! Types of the service sections: `[http_service]`, `[[services]]`, their ports, options and checks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{is_default_concurrency, is_false, is_true, is_zero, ser_opt_duration};

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
    /// Headers set on (or, with `false`, removed from) every response.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ResponseHeader>,
}

/// A response header rule: `name = "value"`, `name = ["a", "b"]`, or `name = false` to remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseHeader {
    /// Set the header to these values.
    Set(Vec<String>),
    /// Remove the header.
    Remove,
}

impl Serialize for ResponseHeader {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ResponseHeader::Set(values) if values.len() == 1 => s.serialize_str(&values[0]),
            ResponseHeader::Set(values) => values.serialize(s),
            ResponseHeader::Remove => s.serialize_bool(false),
        }
    }
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
    /// `[http_service.proxy_proto_options]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_proto_options: Option<ProxyProtoOptions>,
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
            proxy_proto_options: None,
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
