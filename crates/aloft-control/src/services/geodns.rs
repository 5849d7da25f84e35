//! GeoDNS: one global name where anycast is not available. The control plane answers A/AAAA
//! for `<app>.<zone>` (and deeper names under an app, and the zone apex) with the public
//! addresses of the edges in the healthy region nearest the querying resolver.
//!
//! The resolver's region comes from a map of client networks (longest prefix wins), looked up
//! with the EDNS client-subnet address when the query carries one, else the query's source
//! address. Regions are ranked by the round trips in [`aloft_api::latency`]. An edge is
//! healthy while its host heartbeats; a host that registered no `--edge-address` is not
//! answered. Answers live 30 s. A name under the zone whose app does not exist is NXDOMAIN;
//! names outside the zone are REFUSED.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{RData, Record, RecordType};
use tracing::{debug, info, warn};

pub use super::hosts::LiveEdge;

/// What GeoDNS answers from: which apps exist and which edges are live.
pub trait Zone: Send + Sync + 'static {
    /// Whether an app of this name exists.
    fn app_exists(&self, name: &str) -> bool;
    /// The edges of the hosts that heartbeat and registered an edge address.
    fn live_edges(&self) -> Vec<LiveEdge>;
}

/// TTL of every answer.
pub const TTL: u32 = 30;

/// Errors setting GeoDNS up.
#[derive(Debug, thiserror::Error)]
pub enum GeoDnsError {
    #[error("Cannot read the GeoDNS map {path}")]
    ReadMap {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The GeoDNS map {path} is not valid")]
    ParseMap {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("GeoDNS map entry {0:?} is not a network: use ADDR/LEN, e.g. 192.0.2.0/24")]
    Network(String),
    #[error("--geodns-zone {0:?} is not a domain name")]
    Zone(String),
    #[error("Cannot listen for GeoDNS on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The map file: client networks and the region each is in.
///
/// ```toml
/// default_region = "ams"        # clients in no listed network (optional)
/// [networks]
/// "192.0.2.0/24" = "syd"
/// "2001:db8::/32" = "iad"
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    #[serde(default)]
    default_region: Option<String>,
    #[serde(default)]
    networks: BTreeMap<String, String>,
}

/// Client networks → region, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct ClientMap {
    networks: Vec<(IpAddr, u8, String)>,
    default_region: Option<String>,
}

impl ClientMap {
    pub fn load(path: &Path) -> Result<ClientMap, GeoDnsError> {
        let text = std::fs::read_to_string(path).map_err(|source| GeoDnsError::ReadMap {
            path: path.to_path_buf(),
            source,
        })?;
        ClientMap::parse(&text).map_err(|e| match e {
            MapError::Toml(source) => GeoDnsError::ParseMap {
                path: path.to_path_buf(),
                source,
            },
            MapError::Network(n) => GeoDnsError::Network(n),
        })
    }

    fn parse(text: &str) -> Result<ClientMap, MapError> {
        let file: MapFile = toml::from_str(text).map_err(MapError::Toml)?;
        let mut networks = Vec::new();
        for (cidr, region) in file.networks {
            let parsed = cidr.split_once('/').and_then(|(a, l)| {
                let addr: IpAddr = a.parse().ok()?;
                let len: u8 = l.parse().ok()?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                (len <= max).then_some((addr, len))
            });
            let (addr, len) = parsed.ok_or_else(|| MapError::Network(cidr.clone()))?;
            networks.push((addr, len, region));
        }
        networks.sort_by_key(|(_, len, _)| std::cmp::Reverse(*len));
        Ok(ClientMap {
            networks,
            default_region: file.default_region,
        })
    }

    /// The region of a client address (IPv4-mapped IPv6 counts as IPv4).
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        let ip = ip.to_canonical();
        self.networks
            .iter()
            .find(|(net, len, _)| in_network(ip, *net, *len))
            .map(|(_, _, r)| r.as_str())
            .or(self.default_region.as_deref())
    }
}

#[derive(Debug)]
enum MapError {
    Toml(toml::de::Error),
    Network(String),
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let (ip, net, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if len == 0 {
        return true;
    }
    let shift = bits - u32::from(len);
    (ip >> shift) == (net >> shift)
}

/// The addresses to answer a client in `client_region` with: every edge of the nearest
/// region that has one (all edges when the client's region is unknown).
pub fn pick(client_region: Option<&str>, edges: &[LiveEdge]) -> Vec<IpAddr> {
    let nearest = client_region.and_then(|from| {
        edges
            .iter()
            .map(|e| e.region.as_str())
            .min_by_key(|r| (aloft_api::latency::rtt_ms(from, r), r.to_string()))
    });
    edges
        .iter()
        .filter(|e| nearest.is_none_or(|n| e.region == n))
        .flat_map(|e| e.addrs.iter().copied())
        .collect()
}

/// What a name means in the zone.
#[derive(Debug, PartialEq)]
enum InZone {
    Apex,
    /// `<app>.<zone>` or a name below it.
    App(String),
    Outside,
}

fn classify(qname: &str, zone: &str) -> InZone {
    let q = qname.trim_end_matches('.').to_ascii_lowercase();
    if q == zone {
        return InZone::Apex;
    }
    match q.strip_suffix(zone).and_then(|r| r.strip_suffix('.')) {
        Some(rest) if !rest.is_empty() => {
            InZone::App(rest.rsplit('.').next().unwrap_or(rest).to_string())
        }
        _ => InZone::Outside,
    }
}

/// A bound GeoDNS server (UDP).
pub struct GeoDns {
    socket: tokio::net::UdpSocket,
    zone: String,
    map: ClientMap,
}

impl GeoDns {
    /// Binds `listen` (port 0: a free port) for `zone`.
    pub async fn bind(
        listen: SocketAddr,
        zone: &str,
        map: ClientMap,
    ) -> Result<GeoDns, GeoDnsError> {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let valid = !zone.is_empty()
            && zone
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            return Err(GeoDnsError::Zone(zone));
        }
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|source| GeoDnsError::Bind {
                addr: listen,
                source,
            })?;
        Ok(GeoDns { socket, zone, map })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Answers queries until the task is dropped.
    pub async fn run<Z: Zone>(self, zone: Arc<Z>) {
        info!(zone = %self.zone, addr = ?self.socket.local_addr().ok(), "GeoDNS listening");
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, src) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "GeoDNS cannot receive");
                    continue;
                }
            };
            let Some(reply) = self.answer(&buf[..n], src.ip(), &*zone) else {
                continue;
            };
            if let Err(e) = self.socket.send_to(&reply, src).await {
                debug!(error = %e, %src, "GeoDNS cannot answer");
            }
        }
    }

    /// The reply to one query (`None`: not a query worth answering).
    fn answer(&self, bytes: &[u8], src: IpAddr, zone: &dyn Zone) -> Option<Vec<u8>> {
        let request = Message::from_vec(bytes).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        let [query] = request.queries.as_slice() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply.to_vec().ok();
        };
        reply.add_query(query.clone());
        if request.metadata.op_code != OpCode::Query {
            reply.metadata.response_code = ResponseCode::NotImp;
            return reply.to_vec().ok();
        }
        let subnet = request
            .edns
            .as_ref()
            .and_then(|e| match e.options().get(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(s)) => Some(*s),
                _ => None,
            });
        let client = subnet.as_ref().map_or(src, ClientSubnet::addr);
        let name = query.name().to_string();
        let found = match classify(&name, &self.zone) {
            InZone::Outside => {
                reply.metadata.response_code = ResponseCode::Refused;
                return reply.to_vec().ok();
            }
            InZone::Apex => true,
            InZone::App(app) => zone.app_exists(&app),
        };
        reply.metadata.authoritative = true;
        if !found {
            reply.metadata.response_code = ResponseCode::NXDomain;
        } else {
            let region = self.map.region_of(client);
            let addrs = pick(region, &zone.live_edges());
            let qtype = query.query_type();
            for addr in addrs {
                let rdata = match addr {
                    IpAddr::V4(a) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                        RData::A(A(a))
                    }
                    IpAddr::V6(a) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
                        RData::AAAA(AAAA(a))
                    }
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(query.name().clone(), TTL, rdata));
            }
            debug!(%name, %client, region = region.unwrap_or("unknown"), answers = reply.answers.len(), "GeoDNS answer");
        }
        if let Some(req_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(req_edns.max_payload().clamp(512, 1232));
            if let Some(s) = subnet {
                // The answer holds for the whole network the resolver asked about.
                edns.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::new(
                        s.addr(),
                        s.source_prefix(),
                        s.source_prefix(),
                    )));
            }
            reply.set_edns(edns);
        }
        reply.to_vec().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_listed_network_wins() {
        let map = ClientMap::parse(
            r#"
default_region = "ams"
[networks]
"127.0.0.0/8" = "iad"
"127.0.0.3/32" = "syd"
"2001:db8::/32" = "syd"
"#,
        )
        .unwrap();
        assert_eq!(map.region_of("127.0.0.3".parse().unwrap()), Some("syd"));
        assert_eq!(map.region_of("127.0.0.2".parse().unwrap()), Some("iad"));
        assert_eq!(
            map.region_of("::ffff:127.0.0.9".parse().unwrap()),
            Some("iad")
        );
        assert_eq!(map.region_of("2001:db8::5".parse().unwrap()), Some("syd"));
        assert_eq!(map.region_of("192.0.2.1".parse().unwrap()), Some("ams"));
        assert!(ClientMap::parse("[networks]\n\"10.0.0.0/33\" = \"ams\"").is_err());
        assert!(ClientMap::parse("nonsense = 1").is_err());
        assert_eq!(
            ClientMap::default().region_of("10.0.0.1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn the_nearest_live_region_answers() {
        let edge = |r: &str, a: &str| LiveEdge {
            region: r.into(),
            addrs: vec![a.parse().unwrap()],
        };
        let edges = [
            edge("ams", "192.0.2.1"),
            edge("iad", "192.0.2.2"),
            edge("iad", "192.0.2.3"),
        ];
        let ips = |v: Vec<IpAddr>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(ips(pick(Some("ams"), &edges)), ["192.0.2.1"]);
        assert_eq!(ips(pick(Some("iad"), &edges)), ["192.0.2.2", "192.0.2.3"]);
        // syd has no edge: iad (200 ms) is nearer than ams (280 ms).
        assert_eq!(ips(pick(Some("syd"), &edges)), ["192.0.2.2", "192.0.2.3"]);
        assert_eq!(pick(None, &edges).len(), 3);
        assert!(pick(Some("ams"), &[]).is_empty());
    }

    #[test]
    fn names_are_placed_in_the_zone() {
        assert_eq!(classify("example.net.", "example.net"), InZone::Apex);
        assert_eq!(
            classify("Hello.Example.net.", "example.net"),
            InZone::App("hello".into())
        );
        assert_eq!(
            classify("www.hello.example.net", "example.net"),
            InZone::App("hello".into())
        );
        assert_eq!(
            classify("hello.example.org.", "example.net"),
            InZone::Outside
        );
        assert_eq!(classify("xexample.net.", "example.net"), InZone::Outside);
    }
}
