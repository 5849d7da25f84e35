//! The route table the control plane publishes (`GET /v1/routes`, `GET /v1/routes/watch`) and
//! every edge routes by, and a small client that follows it.
//!
//! One revision of the table lists every app with its hostnames, its services (taken from its
//! machines' configs) and its routable machines (not destroyed, with a private address).

use std::net::IpAddr;

use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Every app the edge can route to, as of one revision of the control plane's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteTable {
    /// The control plane's global revision this table was built at.
    pub revision: u64,
    #[serde(default)]
    pub apps: Vec<AppRoutes>,
}

/// One app: the names it answers to, its services and its machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppRoutes {
    pub app: String,
    #[serde(default)]
    pub org: String,
    /// Custom hostnames besides `<app>.<domain>`.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The app's dedicated public addresses (`aloft ips allocate`): a connection to one of them
    /// belongs to this app, whatever the port, Host or SNI.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub services: Vec<ServiceRoutes>,
    #[serde(default)]
    pub machines: Vec<MachineRoute>,
}

/// A service of an app: which public ports lead to which internal port, and how to balance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceRoutes {
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub internal_port: u16,
    #[serde(default)]
    pub ports: Vec<PortRoute>,
    #[serde(default)]
    pub concurrency: Concurrency,
    #[serde(default = "default_true")]
    pub autostart: bool,
    #[serde(default)]
    pub autostop: Autostop,
    #[serde(default)]
    pub min_machines_running: u32,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) to the machines.
    #[serde(default)]
    pub h2_backend: bool,
}

/// One public port of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PortRoute {
    pub port: u16,
    #[serde(default)]
    pub handlers: Vec<String>,
    #[serde(default)]
    pub force_https: bool,
    /// With the `proxy_proto` handler: the PROXY protocol version sent to the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_proto: Option<ProxyProtoVersion>,
}

/// PROXY protocol versions (`proxy_proto_options.version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtoVersion {
    #[default]
    V1,
    V2,
}

/// What counts towards a machine's load and where the limits are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Concurrency {
    #[serde(default)]
    pub kind: ConcurrencyKind,
    #[serde(default = "default_soft_limit")]
    pub soft_limit: u32,
    /// `None` means no hard limit.
    #[serde(default)]
    pub hard_limit: Option<u32>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            kind: ConcurrencyKind::default(),
            soft_limit: default_soft_limit(),
            hard_limit: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyKind {
    #[default]
    Connections,
    Requests,
}

/// What the edge does with an idle machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Autostop {
    #[default]
    Off,
    Stop,
    Suspend,
}

/// A machine of an app as the edge needs to know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineRoute {
    pub id: String,
    pub region: String,
    #[serde(default)]
    pub host_id: String,
    /// The address the edge connects to (the machine's private address, or loopback).
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub state: MachineState,
    /// Whether the machine passes its checks (all passing, or none defined).
    #[serde(default = "default_true")]
    pub healthy: bool,
    #[serde(default)]
    pub cordoned: bool,
}

/// Machine states as the edge sees them, with Fly's names; a state it does not know is
/// `other` rather than an error, so old edges read new tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Restarting,
    Replacing,
    Destroying,
    Destroyed,
    Failed,
    #[serde(other)]
    Other,
}

impl MachineState {
    /// Whether the edge may wake the machine on demand.
    pub fn is_wakeable(self) -> bool {
        matches!(
            self,
            MachineState::Stopped | MachineState::Suspended | MachineState::Created
        )
    }
}

impl From<crate::MachineState> for MachineState {
    fn from(s: crate::MachineState) -> Self {
        use crate::MachineState as M;
        match s {
            M::Created => MachineState::Created,
            M::Starting => MachineState::Starting,
            M::Started => MachineState::Started,
            M::Stopping => MachineState::Stopping,
            M::Stopped => MachineState::Stopped,
            M::Suspending => MachineState::Suspending,
            M::Suspended => MachineState::Suspended,
            M::Replacing => MachineState::Replacing,
            M::Destroying => MachineState::Destroying,
            M::Destroyed => MachineState::Destroyed,
            M::Failed => MachineState::Failed,
        }
    }
}

fn default_protocol() -> String {
    "tcp".to_string()
}

fn default_true() -> bool {
    true
}

fn default_soft_limit() -> u32 {
    20
}

impl ServiceRoutes {
    /// The entry for public port `port`, if the service listens there.
    pub fn port(&self, port: u16) -> Option<&PortRoute> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Whether any public port of the service has the `http` handler.
    pub fn speaks_http(&self) -> bool {
        self.ports
            .iter()
            .any(|p| p.handlers.iter().any(|h| h == "http"))
    }
}

/// `GET /v1/routes/watch` query: send a table only once the revision passes `since`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
pub struct RoutesWatchQuery {
    #[serde(default)]
    pub since: u64,
}

/// One line of the `GET /v1/routes/watch` stream: a full table, or a keep-alive that only
/// carries the revision the stream has reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoutesEvent {
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<RouteTable>,
}

/// `POST /v1/routes/wake`: an edge asks for a stopped machine to be started for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WakeRequest {
    pub app: String,
    pub machine_id: String,
    /// Seconds to wait for `started` (default 30, at most the `wait` limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// `POST /v1/routes/idle`: an edge stops (or suspends) a machine it found idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IdleRequest {
    pub app: String,
    pub machine_id: String,
    /// `stop` (the default) or `suspend`.
    #[serde(default)]
    pub mode: Autostop,
}

/// Errors fetching or following the route table.
#[derive(Debug, thiserror::Error)]
pub enum RoutesClientError {
    #[error("Control plane URL {url:?} is not valid")]
    Url { url: String },
    #[error("Request to {url} failed")]
    Transport { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} sent a line that is not a route event")]
    Decode {
        url: String,
        source: serde_json::Error,
    },
}

impl RoutesClientError {
    /// The HTTP status, when the control plane answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            RoutesClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Follows the control plane's route table with a join or admin token.
#[derive(Debug, Clone)]
pub struct RoutesClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl RoutesClient {
    pub fn new(
        base_url: &str,
        token: impl Into<String>,
    ) -> Result<RoutesClient, RoutesClientError> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RoutesClientError::Url { url: base });
        }
        Ok(RoutesClient {
            http: reqwest::Client::new(),
            base,
            token: token.into(),
        })
    }

    async fn open(&self, url: &str) -> Result<reqwest::Response, RoutesClientError> {
        let transport = |source| RoutesClientError::Transport {
            url: url.to_string(),
            source,
        };
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(RoutesClientError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(response)
    }

    async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<(), RoutesClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|source| RoutesClientError::Transport {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(RoutesClientError::Status {
                url,
                status: status.as_u16(),
                body,
            });
        }
        Ok(())
    }

    /// `POST /v1/routes/wake`: starts a machine and returns once it is `started`.
    pub async fn wake(&self, req: &WakeRequest) -> Result<(), RoutesClientError> {
        self.post("/v1/routes/wake", req).await
    }

    /// `POST /v1/routes/idle`: stops or suspends an idle machine.
    pub async fn idle(&self, req: &IdleRequest) -> Result<(), RoutesClientError> {
        self.post("/v1/routes/idle", req).await
    }

    /// `GET /v1/routes`: the whole table as of now.
    pub async fn routes(&self) -> Result<RouteTable, RoutesClientError> {
        let url = format!("{}/v1/routes", self.base);
        let response = self.open(&url).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|source| RoutesClientError::Transport {
                url: url.clone(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|source| RoutesClientError::Decode { url, source })
    }

    /// `GET /v1/routes/watch?since=`: a table whenever routing changes after `since`, and
    /// keep-alives. The stream ends when the connection does.
    pub async fn watch(
        &self,
        since: u64,
    ) -> Result<
        impl Stream<Item = Result<RoutesEvent, RoutesClientError>> + Send + 'static,
        RoutesClientError,
    > {
        let url = format!("{}/v1/routes/watch?since={since}", self.base);
        let response = self.open(&url).await?;
        Ok(crate::client::ndjson_lines(response, url).map(|item| {
            item.map_err(|e| match e {
                crate::ClientError::Transport { url, source } => {
                    RoutesClientError::Transport { url, source }
                }
                crate::ClientError::Decode { url, source } => {
                    RoutesClientError::Decode { url, source }
                }
                other => RoutesClientError::Url {
                    url: other.to_string(),
                },
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_states_and_missing_fields_take_defaults() {
        let t: RouteTable = serde_json::from_str(
            r#"{"revision": 3, "apps": [{"app": "shop",
                "services": [{"internal_port": 8080, "ports": [{"port": 80, "handlers": ["http"]}]}],
                "machines": [{"id": "m2", "region": "ams", "address": "10.0.0.3", "state": "weird"}]}]}"#,
        )
        .unwrap();
        let svc = &t.apps[0].services[0];
        assert!(svc.autostart && svc.speaks_http() && svc.port(80).is_some());
        assert_eq!(svc.concurrency.soft_limit, 20);
        assert_eq!(t.apps[0].machines[0].state, MachineState::Other);
        assert!(t.apps[0].machines[0].healthy);
    }

    #[test]
    fn keepalives_carry_no_table() {
        let line = serde_json::to_string(&RoutesEvent {
            revision: 7,
            table: None,
        })
        .unwrap();
        assert_eq!(line, r#"{"revision":7}"#);
        for s in crate::MachineState::ALL {
            let ours = serde_json::to_value(MachineState::from(s)).unwrap();
            assert_eq!(ours, serde_json::json!(s.as_str()));
        }
    }

    #[test]
    fn bad_base_urls_are_refused() {
        assert!(RoutesClient::new("ftp://x", "t").is_err());
        assert!(RoutesClient::new("http://127.0.0.1:4280/", "t").is_ok());
    }
}
