//! The WireGuard mesh between hosts: userspace WireGuard (boringtun) over one TUN device and
//! one UDP socket, with a peer per other host.
//!
//! It owns the host's key pair, the TUN device (`alwg0`, holding the host's infrastructure
//! address `fdaa:0:0:0:H::1/128` and the route `fdaa::/16`), the choice of peer for each
//! outbound packet (the destination's 6PN host field), anti-spoofing of inbound packets (the
//! source's host field must be the sending peer's index), a per-peer link simulation (delay
//! and loss on what this host sends), and RTT measurement to every peer over the tunnel.
//!
//! It does not talk to the control plane, decide who its peers are, or filter traffic between
//! organizations: the agent mirrors the control plane's peer list into [`Mesh::set_peers`] and
//! its firewall decides what may cross between the mesh and the machines' bridges.

#![forbid(unsafe_code)]

mod addr;
mod datapath;
mod device;
mod key;
mod rtt;
mod tun;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use addr::{host_field, infra_address, ECHO_PORT, SIXPN_PREFIX};
pub use boringtun::x25519::PublicKey;
pub use key::{parse_public_key, KeyPair};

use device::Shared;

/// The TUN device's name unless configured otherwise. Deliberately not matching `aloft+`,
/// the wildcard of the machines' bridges in the firewall.
pub const DEFAULT_TUN_NAME: &str = "alwg0";

/// The MTU of the TUN device (1500 minus WireGuard's 80 bytes of IPv6 + UDP + header overhead).
pub const DEFAULT_MTU: u16 = 1420;

/// The default UDP port of the mesh.
pub const DEFAULT_PORT: u16 = 51820;

/// What can fail in the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("Cannot {op} the mesh key file {path}")]
    KeyFile {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("The mesh key file {path} is unusable: {reason}")]
    InvalidKeyFile { path: PathBuf, reason: String },
    #[error("The WireGuard public key {key:?} is invalid: {reason}")]
    InvalidPublicKey { key: String, reason: String },
    #[error("Host index {0} is out of range (1..=65535)")]
    InvalidHostIndex(u32),
    #[error("Peer list is invalid: {0}")]
    InvalidPeers(String),
    #[error("Link loss {0} is out of range (0 to 1)")]
    InvalidLoss(f64),
    #[error("Cannot bind the mesh UDP socket on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot create the mesh TUN device {name}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot {op} on the mesh TUN device {name}")]
    Route {
        name: String,
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("Cannot open a netlink socket")]
    Netlink(#[source] std::io::Error),
    #[error("Cannot bind the RTT {what} socket on {addr}")]
    Probe {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How a mesh starts.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This host's index (its 6PN host field), 1..=65535.
    pub host_index: u32,
    /// The UDP socket on the underlay (the endpoint other hosts send to).
    pub listen: SocketAddr,
    /// The TUN device's name.
    pub tun_name: String,
    /// The TUN device's MTU.
    pub mtu: u16,
    /// This host's key pair.
    pub key: KeyPair,
    /// Seed of the random numbers that decide simulated loss.
    pub loss_seed: u64,
}

impl MeshConfig {
    /// A config with the default device name and MTU.
    pub fn new(host_index: u32, listen: SocketAddr, key: KeyPair) -> Self {
        Self {
            host_index,
            listen,
            tun_name: DEFAULT_TUN_NAME.to_string(),
            mtu: DEFAULT_MTU,
            key,
            loss_seed: u64::from(host_index),
        }
    }
}

/// The simulated link to a peer: what this host adds to the packets it sends there.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkSim {
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Fraction of packets dropped, 0 to 1.
    pub loss: f64,
}

impl LinkSim {
    /// A link with `delay` and `loss` (0 to 1).
    pub fn new(delay: Duration, loss: f64) -> Result<Self, MeshError> {
        if !(0.0..=1.0).contains(&loss) {
            return Err(MeshError::InvalidLoss(loss));
        }
        Ok(Self { delay, loss })
    }
}

/// Another host of the mesh.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its 6PN host field.
    pub host_index: u32,
    /// Its region (RTTs are also kept per region).
    pub region: String,
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its UDP endpoint on the underlay, if known (a peer that roams is followed).
    pub endpoint: Option<SocketAddr>,
    /// The simulated link to it.
    pub link: LinkSim,
}

/// Counters since the mesh started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Packets from the TUN sent to a peer.
    pub tx_packets: u64,
    /// Packets from peers written to the TUN.
    pub rx_packets: u64,
    /// Handshakes refused: an unknown key, or not encrypted to our key.
    pub refused_handshakes: u64,
    /// Datagrams that failed to decrypt or were not WireGuard.
    pub bad_datagrams: u64,
    /// Outbound packets whose destination host is no peer (or not 6PN).
    pub no_peer: u64,
    /// Inbound packets whose source host field is not the sending peer's.
    pub spoofed: u64,
    /// Packets dropped by the link simulation.
    pub sim_lost: u64,
}

/// A running mesh. Dropping it stops its tasks; the TUN device goes with the last reference.
pub struct Mesh {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("host_index", &self.shared.host_index)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Creates the TUN device and the UDP socket, and starts the packet, timer and RTT tasks
    /// on the current tokio runtime (in the current network namespace).
    pub async fn start(config: MeshConfig) -> Result<Self, MeshError> {
        if !(1..=65535).contains(&config.host_index) {
            return Err(MeshError::InvalidHostIndex(config.host_index));
        }
        let shared = Arc::new(Shared::new(&config).await?);
        let mut tasks = device::spawn(&shared);
        tasks.extend(rtt::spawn(&shared).await?);
        tracing::info!(
            host_index = config.host_index,
            listen = %shared.local_addr,
            device = %config.tun_name,
            "mesh started"
        );
        Ok(Self { shared, tasks })
    }

    /// This host's public key (base64).
    pub fn public_key(&self) -> String {
        self.shared.key.public_base64()
    }

    /// The bound UDP address (the port is the real one when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Replaces the peer list: new peers are added, missing ones removed (their sessions end),
    /// changed ones updated. A peer whose key changed starts a new session.
    pub fn set_peers(&self, peers: Vec<Peer>) -> Result<(), MeshError> {
        self.shared.set_peers(peers)
    }

    /// The smoothed RTT to host `host_index` over the tunnel, once measured.
    pub fn peer_rtt(&self, host_index: u32) -> Option<Duration> {
        self.shared.rtt.lock().ok()?.get(host_index)
    }

    /// The smoothed RTT per region: the lowest of that region's peers that have one.
    pub fn region_rtts(&self) -> HashMap<String, Duration> {
        let regions = self.shared.peer_regions();
        match self.shared.rtt.lock() {
            Ok(rtt) => rtt.per_region(&regions),
            Err(_) => HashMap::new(),
        }
    }

    /// The peers (host indexes) that left their last few RTT probes unanswered: dead, or cut
    /// off from this host. A peer is reachable again as soon as it answers.
    pub fn unreachable_peers(&self) -> Vec<u32> {
        let peers = self.shared.peer_regions();
        match self.shared.rtt.lock() {
            Ok(rtt) => peers
                .into_iter()
                .map(|(host, _)| host)
                .filter(|host| rtt.unreachable(*host))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> MeshStats {
        let c = &self.shared.counters;
        MeshStats {
            tx_packets: c.tx_packets.load(Ordering::Relaxed),
            rx_packets: c.rx_packets.load(Ordering::Relaxed),
            refused_handshakes: c.refused_handshakes.load(Ordering::Relaxed),
            bad_datagrams: c.bad_datagrams.load(Ordering::Relaxed),
            no_peer: c.no_peer.load(Ordering::Relaxed),
            spoofed: c.spoofed.load(Ordering::Relaxed),
            sim_lost: c.sim_lost.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
