//! The DNS role inside the agent: an [`aloft_dns::DnsServer`] on the host pool's IPv4 gateway
//! (what machines' `/etc/resolv.conf` names), fed with a view built from the edge's route
//! table and RTTs, and told each querier's org from the agent's store.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aloft_api::routes::{MachineState, RouteTable};
use aloft_dns::{DnsApp, DnsMachine, DnsOptions, DnsServer, DnsView, Scope, ScopeFn};
use aloft_proxy::Edge;
use tracing::{error, info, warn};

use crate::agent::AgentOptions;
use crate::host::org_network;
use crate::store::AgentStore;

/// How often the role looks for a new route table or new RTTs.
const POLL: Duration = Duration::from_millis(200);

/// The running DNS server and the task that keeps its view current.
pub struct DnsRole {
    server: DnsServer,
    follow: tokio::task::JoinHandle<()>,
}

impl DnsRole {
    /// Starts the server on `--dns-listen` (default: the host pool's gateway, port 53),
    /// forwarding to `--dns-upstream` (default: the host's first nameserver), and follows
    /// `edge`. A server that cannot start is logged and the agent goes on without it.
    pub async fn start_or_log(
        opts: &AgentOptions,
        host_index: u32,
        edge: Option<Arc<Edge>>,
        store: AgentStore,
    ) -> Option<DnsRole> {
        let listen = opts
            .dns_listen
            .unwrap_or_else(|| default_listen(host_index));
        let upstream = opts.dns_upstream.or_else(|| {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            first_nameserver(&text).filter(|ns| *ns != listen)
        });
        if upstream.is_none() {
            warn!("no upstream resolver: machines can resolve only .internal names");
        }
        let scope = store_scope(store, listen.ip());
        let server = match DnsServer::start(DnsOptions {
            listen,
            upstream,
            scope,
        })
        .await
        {
            Ok(server) => server,
            Err(e) => {
                let chain = aloft_api::error::error_chain(&e);
                error!(error = %chain, "the DNS server is not running on this host");
                return None;
            }
        };
        let addr = server.local_addr();
        info!(%addr, upstream = ?upstream, "DNS listening");
        println!("dns listening on {addr}");
        let follow = match edge {
            Some(edge) => {
                tokio::spawn(follow_edge(edge, opts.region.clone(), server.view_setter()))
            }
            None => {
                warn!("the edge is not running: DNS answers no machine names");
                tokio::spawn(async {})
            }
        };
        Some(DnsRole { server, follow })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops following the edge and closes the server.
    pub async fn shutdown(self) {
        self.follow.abort();
        self.server.shutdown().await;
    }
}

/// `172.19.<host_index % 256>.1:53`: the host pool's gateway.
pub fn default_listen(host_index: u32) -> SocketAddr {
    let gateway = crate::network::NetworkOptions::for_host(host_index)
        .ipv4_pool
        .gateway();
    SocketAddr::new(gateway.into(), 53)
}

/// What machines' `/etc/resolv.conf` names for `--dns-listen`: its IP when machines can reach
/// it there (port 53, not loopback or unspecified); `None` means the pool gateway.
pub fn machine_nameserver(dns_listen: Option<SocketAddr>) -> Option<IpAddr> {
    dns_listen
        .filter(|a| a.port() == 53 && !a.ip().is_loopback() && !a.ip().is_unspecified())
        .map(|a| a.ip())
}

/// The first `nameserver` of a resolv.conf text, on port 53.
pub fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            return None;
        }
        let ip: IpAddr = words.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// Rebuilds the view whenever the edge's route table revision or its RTTs change.
async fn follow_edge(edge: Arc<Edge>, region: String, set: aloft_dns::ViewSetter) {
    let mut seen: Option<(u64, Arc<HashMap<String, Duration>>)> = None;
    loop {
        let revision = edge.revision();
        let rtts = edge.rtts();
        let changed = match &seen {
            Some((r, t)) => *r != revision || !Arc::ptr_eq(t, &rtts),
            None => true,
        };
        if changed {
            set.set_view(build_view(&edge.routes(), &region, &rtts));
            seen = Some((revision, rtts));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The DNS view of a route table: every app with its org network, and its machines with a
/// 6PN address (started or not: the server leaves out machines that are not started).
pub fn build_view(table: &RouteTable, region: &str, rtts: &HashMap<String, Duration>) -> DnsView {
    let apps = table
        .apps
        .iter()
        .map(|app| DnsApp {
            name: app.app.to_ascii_lowercase(),
            network: org_network(&app.org),
            machines: app
                .machines
                .iter()
                .filter_map(|m| {
                    let IpAddr::V6(address) = m.address else {
                        return None;
                    };
                    Some(DnsMachine {
                        id: m.id.to_ascii_lowercase(),
                        region: m.region.to_ascii_lowercase(),
                        address,
                        started: m.state == MachineState::Started,
                        healthy: m.healthy,
                        process_group: None,
                    })
                })
                .collect(),
        })
        .collect();
    DnsView {
        region: region.to_ascii_lowercase(),
        rtts: rtts
            .iter()
            .map(|(r, d)| (r.to_ascii_lowercase(), *d))
            .collect(),
        apps,
    }
}

/// Places IPv4 queriers by the machines in the store (their pool address and org); the
/// host itself (loopback, the listen address, the infrastructure network) sees every org.
fn store_scope(store: AgentStore, listen: IpAddr) -> ScopeFn {
    let cache: Mutex<HashMap<Ipv4Addr, u32>> = Mutex::new(HashMap::new());
    Arc::new(move |ip: IpAddr| {
        if ip.is_loopback() || ip == listen {
            return Scope::Host;
        }
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            // 6PN addresses of org networks never get here; network 0 is the hosts'.
            IpAddr::V6(v6) if v6.segments()[..3] == [0xfdaa, 0, 0] => return Scope::Host,
            IpAddr::V6(_) => return Scope::Unknown,
        };
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(network) = cache.get(&v4) {
            return Scope::Org(*network);
        }
        // A machine started since the last read: read the store again.
        match store.machines() {
            Ok(machines) => {
                *cache = machines
                    .iter()
                    .filter_map(|m| {
                        let ip = m.ipv4.as_deref()?.parse().ok()?;
                        Some((ip, org_network(&m.assignment.org)))
                    })
                    .collect();
            }
            Err(e) => warn!(error = %e, "cannot read machines to place a DNS querier"),
        }
        cache.get(&v4).map_or(Scope::Unknown, |n| Scope::Org(*n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aloft_api::routes::{AppRoutes, MachineRoute};

    #[test]
    fn listen_defaults_to_the_pool_gateway() {
        assert_eq!(default_listen(7).to_string(), "172.19.7.1:53");
        assert_eq!(default_listen(300).to_string(), "172.19.44.1:53");
    }

    #[test]
    fn machines_use_the_listen_address_they_can_reach() {
        let ns = |s: &str| machine_nameserver(Some(s.parse().unwrap()));
        assert_eq!(ns("10.9.0.1:53"), Some("10.9.0.1".parse().unwrap()));
        assert_eq!(ns("10.9.0.1:5353"), None);
        assert_eq!(ns("127.0.0.1:53"), None);
        assert_eq!(ns("0.0.0.0:53"), None);
        assert_eq!(machine_nameserver(None), None);
    }

    #[test]
    fn upstream_is_the_first_usable_nameserver() {
        let conf = "# comment\nsearch example.com\nnameserver fe80::1%eth0\nnameserver 10.0.0.2\nnameserver 1.1.1.1\n";
        assert_eq!(first_nameserver(conf), Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(first_nameserver("search x\n"), None);
    }

    #[test]
    fn views_carry_org_networks_and_states() {
        let machine = |id: &str, address: &str, state| MachineRoute {
            id: id.into(),
            region: "AMS".into(),
            host_id: "h".into(),
            address: address.parse().unwrap(),
            state,
            healthy: true,
            cordoned: false,
        };
        let table = RouteTable {
            revision: 4,
            apps: vec![AppRoutes {
                app: "Shop".into(),
                org: "acme".into(),
                hostnames: vec![],
                addresses: Vec::new(),
                services: vec![],
                machines: vec![
                    machine("m1", "fdaa:0:1:0:2:0:1:2", MachineState::Started),
                    machine("m2", "fdaa:0:1:0:2:0:2:2", MachineState::Stopped),
                    machine("m3", "127.0.0.1", MachineState::Started),
                ],
            }],
        };
        let view = build_view(&table, "ams", &HashMap::new());
        let app = &view.apps[0];
        assert_eq!(app.name, "shop");
        assert_eq!(app.network, org_network("acme"));
        assert_eq!(app.machines.len(), 2, "IPv4 addresses are not 6PN");
        assert!(app.machines[0].started && !app.machines[1].started);
        assert_eq!(app.machines[0].region, "ams");
    }
}
