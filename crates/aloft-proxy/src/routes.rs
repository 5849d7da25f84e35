//! The route table the control plane publishes, its index by hostname, and its durable copy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the persisted route table.
#[derive(Debug, thiserror::Error)]
pub enum RouteStoreError {
    #[error("Cannot create the route table directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot write the route table to {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot read the route table from {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("The route table in {path} is not valid JSON")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Every app the edge can route to, as of one revision of the control plane's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteTable {
    pub revision: u64,
    #[serde(default)]
    pub apps: Vec<AppRoutes>,
}

/// One app: the names it answers to, its services and its machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRoutes {
    pub app: String,
    #[serde(default)]
    pub org: String,
    /// Custom hostnames besides `<app>.<domain>`.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub services: Vec<ServiceRoutes>,
    #[serde(default)]
    pub machines: Vec<MachineRoute>,
}

/// A service of an app: which public ports lead to which internal port, and how to balance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortRoute {
    pub port: u16,
    #[serde(default)]
    pub handlers: Vec<String>,
    #[serde(default)]
    pub force_https: bool,
}

/// What counts towards a machine's load and where the limits are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyKind {
    #[default]
    Connections,
    Requests,
}

/// What the edge does with an idle machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Autostop {
    #[default]
    Off,
    Stop,
    Suspend,
}

/// A machine of an app as the edge needs to know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRoute {
    pub id: String,
    pub region: String,
    #[serde(default)]
    pub host_id: String,
    /// The address the edge connects to (the machine's private address, or loopback).
    pub address: IpAddr,
    pub state: MachineState,
    /// Whether the machine passes its service checks.
    #[serde(default = "default_true")]
    pub healthy: bool,
    #[serde(default)]
    pub cordoned: bool,
}

/// Machine states, with Fly's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    fn speaks_http(&self) -> bool {
        self.ports
            .iter()
            .any(|p| p.handlers.iter().any(|h| h == "http"))
    }
}

/// A route table indexed for lookups on the request path.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    pub table: RouteTable,
    by_host: HashMap<String, usize>,
}

impl Routing {
    pub fn new(table: RouteTable, domain: &str) -> Self {
        let mut by_host = HashMap::new();
        for (i, app) in table.apps.iter().enumerate() {
            by_host.insert(format!("{}.{}", app.app, domain).to_ascii_lowercase(), i);
            for h in &app.hostnames {
                by_host.insert(h.trim_end_matches('.').to_ascii_lowercase(), i);
            }
        }
        Routing { table, by_host }
    }

    /// The app a `Host` header (or SNI name) names; a port suffix and a trailing dot are ignored.
    pub fn app_for_host(&self, host: &str) -> Option<&AppRoutes> {
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        self.by_host.get(&name).map(|&i| &self.table.apps[i])
    }
}

/// The service of `app` that answers on public port `port`: the one listing that port, else the
/// first service with an `http` handler.
pub(crate) fn service_for_port(app: &AppRoutes, port: u16) -> Option<&ServiceRoutes> {
    app.services
        .iter()
        .find(|s| s.port(port).is_some())
        .or_else(|| app.services.iter().find(|s| s.speaks_http()))
}

pub(crate) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The edge's durable copy of the latest route table, written atomically (temp file, fsync,
/// rename) so a crash never leaves a torn file.
#[derive(Debug, Clone)]
pub struct RouteStore {
    path: PathBuf,
}

impl RouteStore {
    /// A store at `path`; its directory is created if missing.
    pub fn open(path: impl AsRef<Path>) -> Result<RouteStore, RouteStoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| RouteStoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(RouteStore { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn save(&self, table: &RouteTable) -> Result<(), RouteStoreError> {
        use std::io::Write;
        let write_err = |source| RouteStoreError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(table).map_err(|e| write_err(e.into()))?;
        let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
        f.write_all(&body).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, &self.path).map_err(write_err)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// The saved table, or `None` when nothing was saved yet.
    pub fn load(&self) -> Result<Option<RouteTable>, RouteStoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RouteStoreError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RouteStoreError::Parse {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        serde_json::from_str(
            r#"{"revision": 3, "apps": [{"app": "shop", "org": "acme", "hostnames": ["Shop.Example.COM"],
                "services": [{"internal_port": 8080, "ports": [{"port": 80, "handlers": ["http"], "force_https": true}],
                              "concurrency": {"kind": "requests", "soft_limit": 5, "hard_limit": 10},
                              "autostop": "suspend", "min_machines_running": 1}],
                "machines": [{"id": "m1", "region": "ams", "host_id": "h1", "address": "10.0.0.2",
                              "state": "started", "healthy": true, "cordoned": false},
                             {"id": "m2", "region": "ams", "address": "10.0.0.3", "state": "weird"}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn parses_with_defaults_and_unknown_states() {
        let t = table();
        let svc = &t.apps[0].services[0];
        assert_eq!(svc.concurrency.kind, ConcurrencyKind::Requests);
        assert_eq!(svc.autostop, Autostop::Suspend);
        assert!(svc.autostart);
        assert_eq!(t.apps[0].machines[1].state, MachineState::Other);
        assert!(t.apps[0].machines[1].healthy);
    }

    #[test]
    fn host_lookup_ignores_case_port_and_trailing_dot() {
        let r = Routing::new(table(), "aloft.test");
        assert_eq!(r.app_for_host("shop.aloft.test").unwrap().app, "shop");
        assert_eq!(r.app_for_host("SHOP.aloft.test:8443").unwrap().app, "shop");
        assert_eq!(r.app_for_host("shop.example.com.").unwrap().app, "shop");
        assert!(r.app_for_host("other.aloft.test").is_none());
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn store_round_trips_and_reports_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RouteStore::open(dir.path().join("edge/routes.json")).unwrap();
        assert!(store.load().unwrap().is_none());
        store.save(&table()).unwrap();
        assert_eq!(store.load().unwrap().unwrap(), table());
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(RouteStoreError::Parse { .. })));
    }
}
