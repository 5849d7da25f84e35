//! The mesh's shared state (peers, sockets, counters) and its background tasks: WireGuard's
//! timers and the link simulation's delay queue. The packet paths themselves are in
//! `datapath`; each is its own task, so on a multi-threaded runtime encryption and
//! decryption run in parallel; the only lock they share is the per-peer tunnel state, held
//! for one packet at a time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tun_rs::AsyncDevice;

use crate::rtt::RttTable;
use crate::udp::BatchSocket;
use crate::{KeyPair, MeshConfig, MeshError, Peer};

/// Room for any WireGuard message the timers produce (handshakes, keepalives, cookies).
const TIMER_BUF: usize = 256;
/// How often WireGuard's timers run.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Keepalive interval, so endpoints behind NAT stay reachable and roaming is noticed.
const PERSISTENT_KEEPALIVE: u16 = 25;

#[derive(Default)]
pub(crate) struct Counters {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    pub refused_handshakes: AtomicU64,
    pub bad_datagrams: AtomicU64,
    pub no_peer: AtomicU64,
    pub spoofed: AtomicU64,
    pub sim_lost: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One peer's live state.
pub(crate) struct PeerState {
    pub(crate) host_index: u32,
    public_key: [u8; 32],
    /// Our index for its sessions (boringtun shifts it left by 8 bits).
    pub(crate) local_index: u32,
    pub(crate) tunn: Mutex<Tunn>,
    /// Where we send to: the configured endpoint, or where it last spoke from.
    pub(crate) endpoint: Mutex<Option<SocketAddr>>,
    /// The endpoint the peer list gave last, to tell a new one from a roamed one.
    configured: Mutex<Option<SocketAddr>>,
    region: Mutex<String>,
    delay_us: AtomicU64,
    /// Loss in parts per million.
    loss_ppm: AtomicU32,
}

impl PeerState {
    fn apply(&self, peer: &Peer) {
        let mut configured = lock(&self.configured);
        if *configured != peer.endpoint {
            *configured = peer.endpoint;
            if peer.endpoint.is_some() {
                *lock(&self.endpoint) = peer.endpoint;
            }
        }
        *lock(&self.region) = peer.region.clone();
        let delay = u64::try_from(peer.link.delay.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(delay, Ordering::Relaxed);
        self.loss_ppm
            .store((peer.link.loss * 1e6) as u32, Ordering::Relaxed);
    }

    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        *lock(&self.endpoint)
    }

    /// Follows the peer to the address its authenticated packet came from.
    pub(crate) fn set_endpoint(&self, from: SocketAddr) {
        *lock(&self.endpoint) = Some(from);
    }

    /// Whether the link simulation delays or drops what this host sends to the peer.
    pub(crate) fn simulated(&self) -> bool {
        self.delay_us.load(Ordering::Relaxed) > 0 || self.loss_ppm.load(Ordering::Relaxed) > 0
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
struct PeerTable {
    by_host: HashMap<u32, Arc<PeerState>>,
    by_key: HashMap<[u8; 32], Arc<PeerState>>,
    by_index: HashMap<u32, Arc<PeerState>>,
}

/// A datagram held back by the link simulation.
struct Delayed {
    due: Instant,
    seq: u64,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Everything the mesh's tasks share.
pub(crate) struct Shared {
    pub host_index: u32,
    pub key: KeyPair,
    pub local_addr: SocketAddr,
    pub counters: Counters,
    pub rtt: Mutex<RttTable>,
    pub(crate) mtu: u16,
    pub(crate) socket: BatchSocket,
    pub(crate) tun: AsyncDevice,
    peers: RwLock<PeerTable>,
    next_index: AtomicU32,
    rng: Mutex<StdRng>,
    delay_tx: mpsc::UnboundedSender<Delayed>,
    delay_rx: Mutex<Option<mpsc::UnboundedReceiver<Delayed>>>,
    delay_seq: AtomicU64,
}

impl Shared {
    pub(crate) async fn new(config: &MeshConfig) -> Result<Self, MeshError> {
        let socket = BatchSocket::bind(config.listen)
            .await
            .map_err(|source| MeshError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| MeshError::Bind {
            addr: config.listen,
            source,
        })?;
        let tun = crate::tun::create(&config.tun_name, config.host_index, config.mtu).await?;
        let (delay_tx, delay_rx) = mpsc::unbounded_channel();
        Ok(Self {
            host_index: config.host_index,
            key: config.key.clone(),
            local_addr,
            counters: Counters::default(),
            rtt: Mutex::new(RttTable::default()),
            mtu: config.mtu,
            socket,
            tun,
            peers: RwLock::new(PeerTable::default()),
            next_index: AtomicU32::new(rand::rng().random_range(0..1 << 20)),
            rng: Mutex::new(StdRng::seed_from_u64(config.loss_seed)),
            delay_tx,
            delay_rx: Mutex::new(Some(delay_rx)),
            delay_seq: AtomicU64::new(0),
        })
    }

    pub(crate) fn set_peers(&self, peers: Vec<Peer>) -> Result<(), MeshError> {
        let mut seen_keys = HashMap::new();
        let mut seen_hosts = HashMap::new();
        for peer in &peers {
            if !(1..=65535).contains(&peer.host_index) {
                return Err(MeshError::InvalidHostIndex(peer.host_index));
            }
            if peer.host_index == self.host_index {
                return Err(MeshError::InvalidPeers(format!(
                    "host index {} is this host's own",
                    peer.host_index
                )));
            }
            if peer.public_key.as_bytes() == self.key.public().as_bytes() {
                return Err(MeshError::InvalidPeers(format!(
                    "host {} has this host's own public key",
                    peer.host_index
                )));
            }
            if !(0.0..=1.0).contains(&peer.link.loss) {
                return Err(MeshError::InvalidLoss(peer.link.loss));
            }
            if seen_hosts.insert(peer.host_index, ()).is_some() {
                return Err(MeshError::InvalidPeers(format!(
                    "host index {} appears twice",
                    peer.host_index
                )));
            }
            if let Some(other) = seen_keys.insert(*peer.public_key.as_bytes(), peer.host_index) {
                return Err(MeshError::InvalidPeers(format!(
                    "hosts {other} and {} have the same public key",
                    peer.host_index
                )));
            }
        }

        let mut table = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let mut next = PeerTable::default();
        for peer in &peers {
            let state = match table.by_host.get(&peer.host_index) {
                Some(old) if old.public_key == *peer.public_key.as_bytes() => old.clone(),
                _ => {
                    let local_index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
                    tracing::info!(host_index = peer.host_index, region = %peer.region, "mesh peer added");
                    Arc::new(PeerState {
                        host_index: peer.host_index,
                        public_key: *peer.public_key.as_bytes(),
                        local_index,
                        tunn: Mutex::new(Tunn::new(
                            self.key.secret().clone(),
                            peer.public_key,
                            None,
                            Some(PERSISTENT_KEEPALIVE),
                            local_index,
                            None,
                        )),
                        endpoint: Mutex::new(None),
                        configured: Mutex::new(None),
                        region: Mutex::new(String::new()),
                        delay_us: AtomicU64::new(0),
                        loss_ppm: AtomicU32::new(0),
                    })
                }
            };
            state.apply(peer);
            next.by_key.insert(state.public_key, state.clone());
            next.by_index.insert(state.local_index, state.clone());
            next.by_host.insert(state.host_index, state);
        }
        for (host, old) in &table.by_host {
            if !next.by_index.contains_key(&old.local_index) {
                tracing::info!(host_index = host, "mesh peer removed");
            }
        }
        *table = next;
        drop(table);
        let mut rtt = lock(&self.rtt);
        rtt.retain(|host| seen_hosts.contains_key(&host));
        Ok(())
    }

    /// Host index and region of every peer.
    pub(crate) fn peer_regions(&self) -> Vec<(u32, String)> {
        let table = self.peers.read().unwrap_or_else(|p| p.into_inner());
        table
            .by_host
            .values()
            .map(|p| (p.host_index, lock(&p.region).clone()))
            .collect()
    }

    pub(crate) fn peer_by_host(&self, host: u32) -> Option<Arc<PeerState>> {
        let table = self.peers.read().unwrap_or_else(|p| p.into_inner());
        table.by_host.get(&host).cloned()
    }

    pub(crate) fn peer_by_key(&self, key: &[u8; 32]) -> Option<Arc<PeerState>> {
        let table = self.peers.read().unwrap_or_else(|p| p.into_inner());
        table.by_key.get(key).cloned()
    }

    pub(crate) fn peer_by_index(&self, receiver_idx: u32) -> Option<Arc<PeerState>> {
        let table = self.peers.read().unwrap_or_else(|p| p.into_inner());
        table.by_index.get(&(receiver_idx >> 8)).cloned()
    }

    fn all_peers(&self) -> Vec<Arc<PeerState>> {
        let table = self.peers.read().unwrap_or_else(|p| p.into_inner());
        table.by_host.values().cloned().collect()
    }

    /// Sends a WireGuard datagram to `peer` through the link simulation.
    pub(crate) async fn transmit(&self, peer: &PeerState, data: &[u8]) {
        let Some(to) = peer.endpoint() else {
            return;
        };
        let loss = peer.loss_ppm.load(Ordering::Relaxed);
        if loss > 0 && lock(&self.rng).random_range(0..1_000_000) < loss {
            bump(&self.counters.sim_lost);
            return;
        }
        let delay = peer.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            let delayed = Delayed {
                due: Instant::now() + Duration::from_micros(delay),
                seq: self.delay_seq.fetch_add(1, Ordering::Relaxed),
                to,
                data: data.to_vec(),
            };
            let _ = self.delay_tx.send(delayed);
            return;
        }
        if let Err(e) = self.socket.send_to(data, to).await {
            tracing::debug!(%to, error = %e, "mesh send failed");
        }
    }
}

pub(crate) fn spawn(shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(crate::datapath::tun_to_udp(shared.clone())),
        tokio::spawn(crate::datapath::udp_to_tun(shared.clone())),
        tokio::spawn(timers(shared.clone())),
    ];
    if let Some(rx) = lock(&shared.delay_rx).take() {
        tasks.push(tokio::spawn(delay_queue(shared.clone(), rx)));
    }
    tasks
}

/// WireGuard's timers: handshake retries, rekeys, keepalives, session expiry.
async fn timers(shared: Arc<Shared>) {
    let mut out = vec![0u8; TIMER_BUF];
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for peer in shared.all_peers() {
            let len = match lock(&peer.tunn).update_timers(&mut out) {
                TunnResult::WriteToNetwork(p) => p.len(),
                TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => continue,
                TunnResult::Err(e) => {
                    tracing::debug!(host_index = peer.host_index, error = ?e, "mesh timer error");
                    continue;
                }
                _ => continue,
            };
            shared.transmit(&peer, &out[..len]).await;
        }
    }
}

/// Sends delayed datagrams when they are due, never blocking the packet paths.
async fn delay_queue(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Delayed>) {
    let mut heap: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    loop {
        let next_due = heap.peek().map(|Reverse(d)| d.due);
        tokio::select! {
            item = rx.recv() => match item {
                Some(d) => heap.push(Reverse(d)),
                None => return,
            },
            () = sleep_until_opt(next_due) => {
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
                    let Some(Reverse(d)) = heap.pop() else { break };
                    if let Err(e) = shared.socket.send_to(&d.data, d.to).await {
                        tracing::debug!(to = %d.to, error = %e, "mesh send failed");
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
