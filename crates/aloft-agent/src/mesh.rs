//! The agent's mesh role: runs `aloft-mesh` for this host, mirrors the control plane's peer
//! list into it every 2 s, and hands the RTTs it measures to the edge every second, with the
//! hosts whose peers stopped answering (the edge skips their machines).
//!
//! The key pair lives in `<data dir>/mesh.key` (mode 0600). The endpoint the control plane
//! learns is `--address` with `--mesh-port`. Simulated links (`--link`) apply per region.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aloft_api::{Client, MeshInfo, MeshPeer};
use aloft_mesh::{parse_public_key, KeyPair, LinkSim, Mesh, MeshConfig, Peer};
use aloft_proxy::Edge;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::AgentError;

/// How often the peer list is fetched.
const PEER_POLL: Duration = Duration::from_secs(2);
/// How often the edge gets fresh RTTs.
const RTT_PUSH: Duration = Duration::from_secs(1);

/// Mesh settings of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshOptions {
    /// The UDP port of the mesh on `--address`.
    pub port: u16,
    /// Simulated links to regions.
    pub links: Vec<MeshLink>,
}

/// `--link REGION=ONE_WAY_DELAY_MS[:LOSS_PERCENT]`: what this host adds to the packets it
/// sends to the hosts of REGION.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshLink {
    pub region: String,
    pub delay: Duration,
    /// 0 to 100.
    pub loss_percent: f64,
}

impl FromStr for MeshLink {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage =
            || format!("{s:?} is not REGION=ONE_WAY_DELAY_MS[:LOSS_PERCENT] (e.g. syd=140:0.5)");
        let (region, rest) = s.split_once('=').ok_or_else(usage)?;
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "{}: the region must be letters, digits or '-'",
                usage()
            ));
        }
        let (delay, loss) = match rest.split_once(':') {
            Some((d, l)) => (d, Some(l)),
            None => (rest, None),
        };
        let delay_ms: u64 = delay
            .parse()
            .map_err(|_| format!("{}: the delay must be whole milliseconds", usage()))?;
        let loss_percent = match loss {
            Some(l) => l
                .parse::<f64>()
                .ok()
                .filter(|l| (0.0..=100.0).contains(l))
                .ok_or_else(|| {
                    format!("{}: the loss must be a percentage from 0 to 100", usage())
                })?,
            None => 0.0,
        };
        Ok(Self {
            region: region.to_string(),
            delay: Duration::from_millis(delay_ms),
            loss_percent,
        })
    }
}

/// The mesh identity to register, ready before the control plane assigns the host index.
#[derive(Debug, Clone)]
pub struct MeshIdentity {
    key: KeyPair,
    endpoint: SocketAddr,
    options: MeshOptions,
}

impl MeshIdentity {
    /// Loads (or creates) the key in `data_dir` and works out the endpoint.
    pub fn load(data_dir: &Path, address: &str, options: &MeshOptions) -> Result<Self, AgentError> {
        let ip: IpAddr = address.parse().map_err(|_| {
            AgentError::Invalid(format!(
                "--address {address:?} must be an IP address to run the mesh (its endpoint is that IP and --mesh-port)"
            ))
        })?;
        let key = KeyPair::load_or_create(&data_dir.join("mesh.key"))?;
        Ok(Self {
            key,
            endpoint: SocketAddr::new(ip, options.port),
            options: options.clone(),
        })
    }

    /// What the control plane is told.
    pub fn info(&self) -> MeshInfo {
        MeshInfo {
            public_key: self.key.public_base64(),
            endpoint: self.endpoint.to_string(),
        }
    }
}

/// The running mesh role.
pub struct MeshRole {
    mesh: Arc<Mesh>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for MeshRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRole")
            .field("mesh", &self.mesh)
            .finish_non_exhaustive()
    }
}

impl MeshRole {
    /// Starts the mesh as host `host_index`, following the control plane's peers; RTTs go
    /// to `edge` when there is one.
    pub async fn start(
        identity: MeshIdentity,
        host_index: u32,
        host_id: String,
        client: Client,
        edge: Option<Arc<Edge>>,
    ) -> Result<Self, AgentError> {
        let config = MeshConfig::new(host_index, identity.endpoint, identity.key.clone());
        let mesh = Arc::new(Mesh::start(config).await?);
        let links = identity.options.links;
        let host_ids = HostIds::default();
        let mut tasks = vec![tokio::spawn(follow_peers(
            mesh.clone(),
            client,
            host_id,
            links,
            host_ids.clone(),
        ))];
        if let Some(edge) = edge {
            let mesh = mesh.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(RTT_PUSH);
                loop {
                    tick.tick().await;
                    edge.set_rtts(mesh.region_rtts());
                    edge.set_unreachable_hosts(host_ids.of(&mesh.unreachable_peers()));
                }
            }));
        }
        Ok(Self { mesh, tasks })
    }

    /// The mesh itself (stats, RTTs).
    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.mesh
    }

    /// Stops following the control plane; the mesh stops when the last reference goes.
    pub fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for MeshRole {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The host id of each peer's host index, as the control plane last listed them.
#[derive(Debug, Clone, Default)]
struct HostIds(Arc<Mutex<HashMap<u32, String>>>);

impl HostIds {
    fn set(&self, listed: &[MeshPeer]) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = listed
            .iter()
            .map(|p| (p.host_index, p.host_id.clone()))
            .collect();
    }

    /// The host ids of these host indexes (unknown ones are left out).
    fn of(&self, indexes: &[u32]) -> HashSet<String> {
        let ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        indexes.iter().filter_map(|i| ids.get(i).cloned()).collect()
    }
}

/// Mirrors `GET /v1/mesh/peers` into the mesh every [`PEER_POLL`].
async fn follow_peers(
    mesh: Arc<Mesh>,
    client: Client,
    host_id: String,
    links: Vec<MeshLink>,
    host_ids: HostIds,
) {
    let mut tick = tokio::time::interval(PEER_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<MeshPeer>> = None;
    loop {
        tick.tick().await;
        let listed = match client.mesh_peers().await {
            Ok(peers) => peers,
            Err(e) => {
                warn!(error = %e, "cannot fetch the mesh peers; keeping the current ones");
                continue;
            }
        };
        if last.as_ref() == Some(&listed) {
            continue;
        }
        let peers = to_peers(&listed, &host_id, &links);
        match mesh.set_peers(peers) {
            Ok(()) => {
                host_ids.set(&listed);
                last = Some(listed);
            }
            Err(e) => warn!(error = %e, "the control plane's mesh peer list was refused"),
        }
    }
}

/// The mesh peers of a listing: every other host, with the simulated link of its region.
/// Entries that cannot be used (bad key or endpoint) are left out with a warning.
pub fn to_peers(listed: &[MeshPeer], host_id: &str, links: &[MeshLink]) -> Vec<Peer> {
    let by_region: HashMap<&str, &MeshLink> =
        links.iter().map(|l| (l.region.as_str(), l)).collect();
    listed
        .iter()
        .filter(|p| p.host_id != host_id)
        .filter_map(|p| {
            let public_key = parse_public_key(&p.public_key)
                .map_err(|e| warn!(host = %p.host_id, error = %e, "mesh peer left out"))
                .ok()?;
            let endpoint: SocketAddr = p
                .endpoint
                .parse()
                .map_err(|_| warn!(host = %p.host_id, endpoint = %p.endpoint, "mesh peer left out: bad endpoint"))
                .ok()?;
            let link = by_region
                .get(p.region.as_str())
                .map(|l| LinkSim {
                    delay: l.delay,
                    loss: l.loss_percent / 100.0,
                })
                .unwrap_or_default();
            Some(Peer {
                host_index: p.host_index,
                region: p.region.clone(),
                public_key,
                endpoint: Some(endpoint),
                link,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aloft_api::HostStatus;

    #[test]
    fn links_parse_or_say_why_not() {
        let link: MeshLink = "syd=140:0.5".parse().unwrap();
        assert_eq!(link.region, "syd");
        assert_eq!(link.delay, Duration::from_millis(140));
        assert_eq!(link.loss_percent, 0.5);
        let plain: MeshLink = "iad=40".parse().unwrap();
        assert_eq!(plain.loss_percent, 0.0);
        for bad in [
            "syd",
            "=40",
            "syd=",
            "syd=fast",
            "syd=40:101",
            "syd=40:x",
            "s d=4",
        ] {
            let err = bad.parse::<MeshLink>().unwrap_err();
            assert!(err.contains("REGION=ONE_WAY_DELAY_MS"), "{bad}: {err}");
        }
    }

    #[test]
    fn peers_leave_out_this_host_and_unusable_entries_and_get_their_region_s_link() {
        let key = KeyPair::generate().public_base64();
        let peer = |id: &str, region: &str, index: u32, key: &str, endpoint: &str| MeshPeer {
            host_id: id.into(),
            region: region.into(),
            host_index: index,
            public_key: key.into(),
            endpoint: endpoint.into(),
            status: HostStatus::Ok,
        };
        let listed = vec![
            peer("me", "ams", 1, &key, "10.0.0.1:51820"),
            peer("h2", "syd", 2, &key, "10.0.0.2:51820"),
            peer("h3", "iad", 3, "bad", "10.0.0.3:51820"),
            peer("h4", "iad", 4, &key, "nowhere"),
        ];
        let links = vec!["syd=140:1".parse().unwrap()];
        let peers = to_peers(&listed, "me", &links);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].host_index, 2);
        assert_eq!(peers[0].link.delay, Duration::from_millis(140));
        assert!((peers[0].link.loss - 0.01).abs() < 1e-9);
    }
}
