//! Building the edge's route table from the Machines API (what `aloft dev` routes by until
//! the control plane publishes route tables itself).

use aloft_api::{Client, ListMachinesQuery, Machine, MachineState};
use aloft_proxy::{AppRoutes, MachineRoute, RouteTable};

/// Every app with its services (from its machines' configs) and routable machines.
pub async fn route_table(api: &Client) -> Result<RouteTable, aloft_api::ClientError> {
    let mut table = RouteTable::default();
    for app in api.list_apps(None).await?.apps {
        let machines = api
            .list_machines(&app.name, &ListMachinesQuery::default())
            .await?;
        table.apps.push(app_routes(&app.name, &machines));
    }
    Ok(table)
}

/// One app's routes: the services of its newest machine that has any, and every machine with
/// an address that is not being destroyed.
pub fn app_routes(app: &str, machines: &[Machine]) -> AppRoutes {
    let services = machines
        .iter()
        .rev()
        .find_map(|m| m.config.services.clone().filter(|s| !s.is_empty()))
        .unwrap_or_default();
    let services = serde_json::to_value(
        services
            .iter()
            .map(|s| {
                serde_json::json!({
                    "protocol": s.protocol.clone().unwrap_or_else(|| "tcp".into()),
                    "internal_port": s.internal_port,
                    "ports": s.ports.clone().unwrap_or_default().iter().filter_map(|p| p.port.map(|port| serde_json::json!({
                        "port": port,
                        "handlers": p.handlers.clone().unwrap_or_default(),
                        "force_https": p.force_https.unwrap_or(false),
                    }))).collect::<Vec<_>>(),
                    "concurrency": {
                        "kind": s.concurrency.as_ref().and_then(|c| c.kind.clone()).unwrap_or_else(|| "connections".into()),
                        "soft_limit": s.concurrency.as_ref().and_then(|c| c.soft_limit).unwrap_or(20),
                        "hard_limit": s.concurrency.as_ref().and_then(|c| c.hard_limit),
                    },
                    "autostart": s.autostart.unwrap_or(true),
                    "autostop": match s.autostop.as_ref() {
                        Some(serde_json::Value::String(v)) if v == "suspend" => "suspend",
                        Some(serde_json::Value::String(v)) if v == "stop" => "stop",
                        Some(serde_json::Value::Bool(true)) => "stop",
                        _ => "off",
                    },
                    "min_machines_running": s.min_machines_running.unwrap_or(0).max(0),
                })
            })
            .collect::<Vec<_>>(),
    )
    .and_then(serde_json::from_value)
    .unwrap_or_default();
    let machines = machines
        .iter()
        .filter(|m| !matches!(m.state, MachineState::Destroying | MachineState::Destroyed))
        .filter_map(|m| {
            let address = m.private_ip.parse().ok()?;
            let state = serde_json::from_value(serde_json::json!(m.state.as_str())).ok()?;
            Some(MachineRoute {
                id: m.id.clone(),
                region: m.region.clone(),
                host_id: String::new(),
                address,
                state,
                healthy: m.checks.iter().all(|c| c.status == "passing"),
                cordoned: false,
            })
        })
        .collect();
    AppRoutes {
        app: app.to_string(),
        org: String::new(),
        hostnames: Vec::new(),
        services,
        machines,
    }
}
