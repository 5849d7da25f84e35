//! The route table the control plane publishes (its types live in `aloft_api::routes`), its
//! index by hostname, and its durable copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use aloft_api::routes::{
    AppRoutes, Autostop, Concurrency, ConcurrencyKind, MachineRoute, MachineState, PortRoute,
    ProxyProtoVersion, RouteTable, ServiceRoutes,
};

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

/// A route table indexed for lookups on the request path.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    pub table: RouteTable,
    by_host: HashMap<String, usize>,
    by_address: HashMap<std::net::IpAddr, usize>,
}

impl Routing {
    pub fn new(table: RouteTable, domain: &str) -> Self {
        let mut by_host = HashMap::new();
        let mut by_address = HashMap::new();
        // `<app>.<domain>` is its app's, always: those go in first and nothing replaces them.
        for (i, app) in table.apps.iter().enumerate() {
            for a in &app.addresses {
                by_address.insert(a.to_canonical(), i);
            }
            by_host.insert(format!("{}.{}", app.app, domain).to_ascii_lowercase(), i);
        }
        // The control plane lists each custom name for one app only (the one that proved it);
        // were a table ever to list a name twice, the first listing keeps it, never a later one.
        for (i, app) in table.apps.iter().enumerate() {
            for h in &app.hostnames {
                by_host
                    .entry(h.trim_end_matches('.').to_ascii_lowercase())
                    .or_insert(i);
            }
        }
        Routing {
            table,
            by_host,
            by_address,
        }
    }

    /// The app a `Host` header (or SNI name) names; a port suffix and a trailing dot are ignored.
    /// A name no app has exactly goes to the app holding the wildcard one level up
    /// (`*.example.com` takes `a.example.com`, not `a.b.example.com` nor `example.com`).
    pub fn app_for_host(&self, host: &str) -> Option<&AppRoutes> {
        let name = strip_port(host).trim_end_matches('.');
        // Hostnames are almost always lowercase already: only copy one that is not.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let i = match self.by_host.get(name) {
            Some(i) => Some(i),
            None => name
                .split_once('.')
                .filter(|(label, parent)| !label.is_empty() && parent.contains('.'))
                .and_then(|(_, parent)| self.by_host.get(&format!("*.{parent}"))),
        };
        i.map(|&i| &self.table.apps[i])
    }

    /// The app holding dedicated address `ip` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn app_for_address(&self, ip: std::net::IpAddr) -> Option<&AppRoutes> {
        if self.by_address.is_empty() {
            return None;
        }
        let i = self.by_address.get(&ip.to_canonical())?;
        Some(&self.table.apps[*i])
    }

    /// The app called `name`.
    pub fn app_named(&self, name: &str) -> Option<&AppRoutes> {
        self.table.apps.iter().find(|a| a.app == name)
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
                });
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
    fn no_app_takes_another_apps_name_nor_one_listed_before() {
        let t: RouteTable = serde_json::from_str(
            r#"{"revision": 1, "apps": [
                {"app": "a", "org": "o", "hostnames": ["shop.example.com"], "services": [], "machines": []},
                {"app": "b", "org": "o", "hostnames": ["a.apps.test", "SHOP.example.com"], "services": [], "machines": []}
            ]}"#,
        )
        .unwrap();
        let r = Routing::new(t, "apps.test");
        assert_eq!(r.app_for_host("a.apps.test").unwrap().app, "a");
        assert_eq!(r.app_for_host("shop.example.com").unwrap().app, "a");
        assert_eq!(r.app_for_host("b.apps.test").unwrap().app, "b");
    }

    #[test]
    fn wildcard_hostnames_take_names_one_level_down() {
        let mut t = table();
        t.apps[0].hostnames.push("*.Shop.Example.com".into());
        let r = Routing::new(t, "aloft.test");
        assert_eq!(r.app_for_host("eu.shop.example.com").unwrap().app, "shop");
        assert_eq!(
            r.app_for_host("EU.shop.example.com:80").unwrap().app,
            "shop"
        );
        assert!(r.app_for_host("a.eu.shop.example.com").is_none());
        assert!(r.app_for_host(".shop.example.com").is_none());
        assert!(r.app_for_host("other.example.com").is_none());
        assert_eq!(r.app_named("shop").unwrap().app, "shop");
        assert!(r.app_for_address("10.9.9.9".parse().unwrap()).is_none());
        assert!(r.app_named("Shop").is_none());
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
