//! The packet paths, built to spend as few system calls and copies per byte as the kernel
//! allows (as wireguard-go does on Linux):
//!
//! - **Out** (TUN -> encrypt -> UDP): the TUN device has offloads on (`IFF_VNET_HDR`, TSO), so
//!   one read returns a whole TCP super-packet (up to 64 KiB), split here into MTU-sized
//!   segments. Each is encrypted straight into one contiguous buffer, and each run of
//!   equal-sized datagrams to one peer leaves in a single `sendmsg` with UDP GSO.
//! - **In** (UDP -> decrypt -> TUN): one `recvmmsg` returns many datagrams (and UDP GRO may
//!   have coalesced a peer's datagrams into one buffer); each is decrypted straight into a
//!   TUN buffer, and the batch is written with GRO: consecutive segments of one TCP (or
//!   UDP) flow are coalesced into one super-packet, so the kernel sees one write per flow.
//!
//! Peers are looked up once per run of packets to the same host, not once per packet.
//! A peer with a simulated link takes the per-datagram path through the link simulation.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use quinn_udp::RecvMeta;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::addr::{host_field, ipv6_endpoints};
use crate::device::{bump, lock, PeerState, Shared};
use crate::udp::{BatchSocket, GSO_BYTES, RECV_BATCH, RECV_BUF};

/// WireGuard's data message overhead: 16 bytes of header and a 16-byte tag.
const DATA_OVERHEAD: usize = 32;
/// The largest IP packet the TUN hands over with offloads on (virtio header excluded).
const TUN_MAX: usize = 65535;
/// Room above the MTU in a segment buffer, for a non-offload TUN handing over a packet a
/// little over it.
const SEGMENT_SLACK: usize = 256;
/// The least room a decryption slot gets (a handshake message is 148 bytes).
const MIN_SLOT: usize = 256;

/// Outbound: packets from the TUN go to the peer named by their destination's host field.
pub(crate) async fn tun_to_udp(shared: Arc<Shared>) {
    let segment = usize::from(shared.mtu) + SEGMENT_SLACK;
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + TUN_MAX];
    let mut bufs = vec![vec![0u8; segment]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    // A run never passes GSO_BYTES before the next datagram, so this holds any run.
    let mut out = vec![0u8; GSO_BYTES + segment + DATA_OVERHEAD];
    let mut run = Run::default();
    loop {
        let n = match shared
            .tun
            .recv_multiple(&mut raw, &mut bufs, &mut sizes, 0)
            .await
        {
            Ok(n) => n,
            Err(e) if e.raw_os_error().is_some() => {
                tracing::error!(error = %e, "mesh TUN read failed; outbound mesh traffic stops");
                return;
            }
            Err(e) => {
                bump(&shared.counters.bad_datagrams);
                tracing::debug!(error = %e, "mesh dropped a malformed packet from the TUN");
                continue;
            }
        };
        let max_segments = shared.socket.max_segments();
        let mut sent = 0;
        // Looked up again for every read, so a removed peer gets nothing more.
        let mut peer: Option<Arc<PeerState>> = None;
        for (buf, &size) in bufs.iter().zip(&sizes).take(n) {
            let packet = &buf[..size];
            let Some(host) = ipv6_endpoints(packet).and_then(|(_, dst)| host_field(dst)) else {
                bump(&shared.counters.no_peer);
                continue;
            };
            if peer.as_ref().map(|p| p.host_index) != Some(host) {
                peer = shared.peer_by_host(host);
            }
            let Some(to_peer) = peer.as_ref() else {
                bump(&shared.counters.no_peer);
                continue;
            };
            if to_peer.simulated() {
                // Per datagram, in order, through the link simulation.
                run.flush(&shared.socket, &out).await;
                if let Some(len) = encapsulate(to_peer, packet, &mut out) {
                    sent += 1;
                    shared.transmit(to_peer, &out[..len]).await;
                }
                continue;
            }
            if !run.accepts(to_peer, packet.len() + DATA_OVERHEAD, max_segments) {
                run.flush(&shared.socket, &out).await;
            }
            let start = run.end;
            let Some(len) = encapsulate(to_peer, packet, &mut out[start..]) else {
                continue;
            };
            sent += 1;
            if !run.push(to_peer, len) {
                // Larger than the run's datagrams (not a data message): it goes on its own.
                run.end = start;
                run.flush(&shared.socket, &out).await;
                if let Some(to) = to_peer.endpoint() {
                    shared
                        .socket
                        .send_run(&out[start..start + len], len, to)
                        .await;
                }
            }
        }
        run.flush(&shared.socket, &out).await;
        shared
            .counters
            .tx_packets
            .fetch_add(sent, Ordering::Relaxed);
    }
}

/// Encrypts `packet` for `peer` into `out`; the length of the datagram to send, if any.
fn encapsulate(peer: &PeerState, packet: &[u8], out: &mut [u8]) -> Option<usize> {
    match lock(&peer.tunn).encapsulate(packet, out) {
        TunnResult::WriteToNetwork(p) => Some(p.len()),
        TunnResult::Err(e) => {
            tracing::debug!(host_index = peer.host_index, error = ?e, "mesh encapsulate failed");
            None
        }
        _ => None,
    }
}

/// Datagrams to one peer laid out back to back from the start of the output buffer: all of
/// `stride` bytes but possibly the last, so one GSO send carries them all.
#[derive(Default)]
struct Run {
    peer: Option<Arc<PeerState>>,
    to: Option<SocketAddr>,
    end: usize,
    stride: usize,
    count: usize,
    /// The last datagram was shorter than `stride`: nothing more can follow it.
    closed: bool,
}

impl Run {
    /// Whether a datagram of (at most) `len` bytes to `peer` may join the run.
    fn accepts(&self, peer: &Arc<PeerState>, len: usize, max_segments: usize) -> bool {
        if self.count == 0 {
            return true;
        }
        self.peer.as_ref().is_some_and(|p| Arc::ptr_eq(p, peer))
            && !self.closed
            && self.count < max_segments
            && len <= self.stride
            && self.end + len <= GSO_BYTES
    }

    /// Adds the datagram of `len` bytes just written at `end`; false if it cannot join.
    fn push(&mut self, peer: &Arc<PeerState>, len: usize) -> bool {
        if self.count == 0 {
            self.peer = Some(peer.clone());
            self.to = peer.endpoint();
            self.stride = len;
        } else if len > self.stride {
            return false;
        } else if len < self.stride {
            self.closed = true;
        }
        self.end += len;
        self.count += 1;
        true
    }

    async fn flush(&mut self, socket: &BatchSocket, out: &[u8]) {
        if self.count > 0 {
            if let Some(to) = self.to {
                socket.send_run(&out[..self.end], self.stride, to).await;
            }
        }
        *self = Self::default();
    }
}

/// Inbound: datagrams are matched to their peer, decrypted, checked and written to the TUN.
pub(crate) async fn udp_to_tun(shared: Arc<Shared>) {
    let mut slab = vec![0u8; RECV_BATCH * RECV_BUF];
    let mut meta = [RecvMeta::default(); RECV_BATCH];
    let mut batch = TunBatch::new(usize::from(shared.mtu) + SEGMENT_SLACK);
    // Handshake answers, and packets queued during a handshake (data messages).
    let mut reply = vec![0u8; usize::from(shared.mtu) + SEGMENT_SLACK + DATA_OVERHEAD];
    let public = shared.key.public();
    loop {
        let n = match shared.socket.recv_batch(&mut slab, &mut meta).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "mesh UDP receive failed");
                continue;
            }
        };
        let mut peer: Option<Arc<PeerState>> = None;
        for (m, buf) in meta.iter().take(n).zip(slab.chunks(RECV_BUF)) {
            let stride = if m.stride == 0 { m.len } else { m.stride };
            for datagram in buf[..m.len.min(RECV_BUF)].chunks(stride.max(1)) {
                let ctx = Inbound {
                    shared: &shared,
                    public: &public,
                    from: m.addr,
                };
                ctx.datagram(datagram, &mut peer, &mut batch, &mut reply)
                    .await;
                if batch.is_full() {
                    batch.flush(&shared).await;
                }
            }
        }
        batch.flush(&shared).await;
    }
}

struct Inbound<'a> {
    shared: &'a Shared,
    public: &'a PublicKey,
    from: SocketAddr,
}

impl Inbound<'_> {
    /// Handles one datagram; a decrypted packet is added to `batch`. `peer` caches the last
    /// data message's peer.
    async fn datagram(
        &self,
        datagram: &[u8],
        peer: &mut Option<Arc<PeerState>>,
        batch: &mut TunBatch,
        reply: &mut [u8],
    ) {
        let shared = self.shared;
        let from = self.from;
        let found = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::PacketData(p)) => {
                if peer
                    .as_ref()
                    .is_none_or(|c| c.local_index != p.receiver_idx >> 8)
                {
                    *peer = shared.peer_by_index(p.receiver_idx);
                }
                peer.clone()
            }
            Ok(Packet::HandshakeInit(p)) => {
                match parse_handshake_anon(shared.key.secret(), self.public, &p) {
                    Ok(half) => {
                        let found = shared.peer_by_key(&half.peer_static_public);
                        if found.is_none() {
                            bump(&shared.counters.refused_handshakes);
                            tracing::warn!(%from, "mesh handshake refused: unknown public key");
                        }
                        found
                    }
                    Err(e) => {
                        bump(&shared.counters.refused_handshakes);
                        tracing::warn!(%from, error = ?e, "mesh handshake refused: not for this host's key");
                        None
                    }
                }
            }
            Ok(Packet::HandshakeResponse(p)) => shared.peer_by_index(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => shared.peer_by_index(p.receiver_idx),
            Err(_) => None,
        };
        let Some(found) = found else {
            bump(&shared.counters.bad_datagrams);
            return;
        };
        let slot = batch.slot(datagram.len());
        let result = match lock(&found.tunn).decapsulate(Some(from.ip()), datagram, slot) {
            TunnResult::WriteToNetwork(p) => {
                let len = p.len();
                reply[..len].copy_from_slice(p);
                Outcome::Reply(len)
            }
            TunnResult::WriteToTunnelV6(p, src) => Outcome::Tunnel(p.len(), host_field(src)),
            TunnResult::WriteToTunnelV4(..) => Outcome::NotSixpn,
            TunnResult::Done => Outcome::Done,
            TunnResult::Err(e) => Outcome::Failed(e),
        };
        match result {
            Outcome::Reply(len) => {
                found.set_endpoint(from);
                shared.transmit(&found, &reply[..len]).await;
                // Packets queued while the handshake ran go out now.
                loop {
                    let len = match lock(&found.tunn).decapsulate(None, &[], reply) {
                        TunnResult::WriteToNetwork(p) => p.len(),
                        _ => break,
                    };
                    shared.transmit(&found, &reply[..len]).await;
                }
            }
            Outcome::Tunnel(len, src_host) => {
                if src_host != Some(found.host_index) {
                    bump(&shared.counters.spoofed);
                    tracing::debug!(
                        host_index = found.host_index,
                        ?src_host,
                        "mesh dropped a packet with a forged source"
                    );
                    return;
                }
                found.set_endpoint(from);
                batch.commit(len);
            }
            Outcome::NotSixpn => bump(&shared.counters.spoofed),
            Outcome::Done => found.set_endpoint(from),
            // A handshake response that arrives after its handshake was superseded (both
            // sides initiated at once, or a retransmitted initiation was answered twice) is
            // part of normal WireGuard operation, not a bad datagram.
            Outcome::Failed(WireGuardError::UnexpectedPacket) => {
                tracing::debug!(
                    host_index = found.host_index,
                    "mesh ignored a stale handshake message"
                );
            }
            Outcome::Failed(e) => {
                bump(&shared.counters.bad_datagrams);
                tracing::debug!(host_index = found.host_index, error = ?e, "mesh datagram refused");
            }
        }
    }
}

enum Outcome {
    Reply(usize),
    Tunnel(usize, Option<u32>),
    NotSixpn,
    Done,
    Failed(WireGuardError),
}

/// Decrypted packets waiting to be written to the TUN, each behind room for the virtio
/// header; written (and GRO-coalesced) together.
struct TunBatch {
    bufs: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

impl TunBatch {
    fn new(packet: usize) -> Self {
        let bufs = (0..IDEAL_BATCH_SIZE)
            .map(|_| {
                // Room to grow into a coalesced super-packet without reallocating.
                let mut buf = Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + TUN_MAX);
                buf.resize(VIRTIO_NET_HDR_LEN + packet, 0);
                buf
            })
            .collect();
        Self {
            bufs,
            len: 0,
            gro: GROTable::default(),
        }
    }

    /// The next free buffer, past the header room, with at least `need` bytes.
    fn slot(&mut self, need: usize) -> &mut [u8] {
        let buf = &mut self.bufs[self.len];
        let need = VIRTIO_NET_HDR_LEN + need.max(MIN_SLOT);
        if buf.len() < need {
            buf.resize(need, 0);
        }
        &mut buf[VIRTIO_NET_HDR_LEN..]
    }

    /// Keeps the `len`-byte packet just decrypted into [`TunBatch::slot`].
    fn commit(&mut self, len: usize) {
        self.bufs[self.len].truncate(VIRTIO_NET_HDR_LEN + len);
        self.len += 1;
    }

    fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    async fn flush(&mut self, shared: &Shared) {
        if self.len == 0 {
            return;
        }
        let count = self.len as u64;
        self.len = 0;
        let result = shared
            .tun
            .send_multiple(
                &mut self.gro,
                &mut self.bufs[..count as usize],
                VIRTIO_NET_HDR_LEN,
            )
            .await;
        shared
            .counters
            .rx_packets
            .fetch_add(count, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::debug!(error = %e, "mesh TUN write failed");
        }
    }
}
