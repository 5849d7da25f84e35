//! The route table: every app's hostnames, services and routable machines, built from the
//! store at its current global revision, which is also the table's revision. Machines of
//! hosts that are down (the hosts service's liveness) are not routable. An app's custom
//! hostnames are the exact names of its certificates; its dedicated addresses are those the
//! ips service allocated.

use aloft_api::routes::{
    AppRoutes, Autostop, Concurrency, ConcurrencyKind, MachineRoute, PortRoute, ProxyProtoVersion,
    RouteTable, ServiceRoutes,
};
use aloft_api::{MachineService, MachineState};

use std::sync::Arc;

use super::hosts::Hosts;
use crate::core::store::MachineRow;
use crate::core::{Store, StoreError};

/// Why the route table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("Cannot build the route table")]
    Store(#[from] StoreError),
}

/// The route service: builds the table edges route by.
#[derive(Debug)]
pub struct RouteTables {
    store: Arc<Store>,
    hosts: Arc<Hosts>,
}

impl RouteTables {
    pub fn new(store: Arc<Store>, hosts: Arc<Hosts>) -> RouteTables {
        RouteTables { store, hosts }
    }

    /// The whole route table as of the store's current revision.
    pub fn table(&self) -> Result<RouteTable, RouteError> {
        let inner = self.store.lock();
        let db = inner.db();
        let apps = db.app_orgs()?;
        let mut table = RouteTable {
            revision: inner.revision(),
            apps: Vec::with_capacity(apps.len()),
        };
        // Machines of down hosts are left out until their host heartbeats again.
        let down = self.hosts.down();
        let mut hostnames = db.app_hostnames()?;
        let mut addresses = db.app_addresses()?;
        for (app, org) in apps {
            let mut rows = db.machines(&app, false)?;
            rows.retain(|m| !down.contains(&m.host_id));
            let mut routes = app_routes(&app, &org, &rows);
            routes.hostnames = hostnames.remove(&app).unwrap_or_default();
            routes.addresses = addresses.remove(&app).unwrap_or_default();
            table.apps.push(routes);
        }
        Ok(table)
    }
}

/// One app's routes: the services of its newest machine that has any, and every machine with
/// an address that is not being destroyed.
pub fn app_routes(app: &str, org: &str, rows: &[MachineRow]) -> AppRoutes {
    let services = rows
        .iter()
        .rev()
        .find_map(|m| m.config.services.as_ref().filter(|s| !s.is_empty()))
        .map(|s| s.iter().filter_map(service_routes).collect())
        .unwrap_or_default();
    let machines = rows
        .iter()
        .filter(|m| !matches!(m.state, MachineState::Destroying | MachineState::Destroyed))
        .filter_map(|m| {
            let address = m.private_ip.parse().ok()?;
            Some(MachineRoute {
                id: m.id.clone(),
                region: m.region.clone(),
                host_id: m.host_id.clone(),
                address,
                state: m.state.into(),
                healthy: m.checks.iter().all(|c| c.status == "passing"),
                cordoned: m.cordoned,
            })
        })
        .collect();
    AppRoutes {
        app: app.to_owned(),
        org: org.to_owned(),
        hostnames: Vec::new(),
        addresses: Vec::new(),
        services,
        machines,
    }
}

/// The PROXY protocol version of a port with the `proxy_proto` handler (`v1` unless
/// `proxy_proto_options.version` says `v2`).
fn proxy_proto(p: &aloft_api::MachinePort) -> Option<ProxyProtoVersion> {
    let handlers = p.handlers.as_deref().unwrap_or_default();
    if !handlers.iter().any(|h| h == "proxy_proto") {
        return None;
    }
    let version = p
        .extra
        .get("proxy_proto_options")
        .and_then(|o| o.get("version"))
        .and_then(|v| v.as_str());
    Some(match version {
        Some("v2") => ProxyProtoVersion::V2,
        _ => ProxyProtoVersion::V1,
    })
}

/// A machine config's service as the edge needs it; `None` when its internal port is not a
/// port number.
fn service_routes(s: &MachineService) -> Option<ServiceRoutes> {
    let internal_port = u16::try_from(s.internal_port).ok().filter(|&p| p > 0)?;
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortRoute {
                port: p.port.and_then(|p| u16::try_from(p).ok())?,
                handlers: p.handlers.clone().unwrap_or_default(),
                force_https: p.force_https.unwrap_or(false),
                proxy_proto: proxy_proto(p),
            })
        })
        .collect();
    let limit = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let concurrency = s
        .concurrency
        .as_ref()
        .map_or_else(Concurrency::default, |c| {
            let default = Concurrency::default();
            Concurrency {
                kind: match c.kind.as_deref() {
                    Some("requests") => ConcurrencyKind::Requests,
                    _ => ConcurrencyKind::Connections,
                },
                soft_limit: limit(c.soft_limit).unwrap_or(default.soft_limit),
                hard_limit: limit(c.hard_limit),
            }
        });
    let autostop = match s.autostop.as_ref() {
        Some(serde_json::Value::String(v)) if v == "suspend" => Autostop::Suspend,
        Some(serde_json::Value::String(v)) if v == "stop" => Autostop::Stop,
        Some(serde_json::Value::Bool(true)) => Autostop::Stop,
        _ => Autostop::Off,
    };
    Some(ServiceRoutes {
        protocol: s.protocol.clone().unwrap_or_else(|| "tcp".to_owned()),
        internal_port,
        ports,
        concurrency,
        autostart: s.autostart.unwrap_or(true),
        autostop,
        min_machines_running: limit(s.min_machines_running).unwrap_or(0),
        h2_backend: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_map_fly_fields_and_skip_bad_ports() {
        let services: Vec<MachineService> = serde_json::from_value(serde_json::json!([
            {"protocol": "tcp", "internal_port": 8080, "autostop": true, "autostart": false,
             "min_machines_running": 1,
             "ports": [{"port": 80, "handlers": ["http"], "force_https": true}, {"start_port": 1, "end_port": 9}],
             "concurrency": {"type": "requests", "soft_limit": 5, "hard_limit": 10}},
            {"internal_port": 0},
            {"internal_port": 9000, "autostop": "suspend", "concurrency": {"hard_limit": -1}}
        ]))
        .unwrap();
        let out: Vec<ServiceRoutes> = services.iter().filter_map(service_routes).collect();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].ports.len(), 1);
        assert!(out[0].ports[0].force_https && !out[0].autostart);
        assert_eq!(out[0].autostop, Autostop::Stop);
        assert_eq!(out[0].concurrency.kind, ConcurrencyKind::Requests);
        assert_eq!(
            (out[0].concurrency.soft_limit, out[0].concurrency.hard_limit),
            (5, Some(10))
        );
        assert_eq!(out[1].autostop, Autostop::Suspend);
        assert_eq!(out[1].concurrency.soft_limit, 20);
        assert_eq!(out[1].concurrency.hard_limit, None);
    }
}
