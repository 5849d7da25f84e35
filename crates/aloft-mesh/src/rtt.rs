//! RTT to every peer, measured over the tunnel (so the link simulation counts): every host
//! echoes UDP datagrams on `[fdaa:0:0:0:H::1]:4281`, and every second this host sends a probe
//! to each peer's echo and smooths the answers. A peer that leaves [`MISSED_PROBES`] probes
//! in a row unanswered counts as unreachable (dead, or cut off) until it answers again.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::addr::{infra_address, ECHO_PORT};
use crate::device::Shared;
use crate::MeshError;

const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe not answered within this long is forgotten.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_MAGIC: &[u8; 4] = b"ARTT";
/// Probes sent since a peer's last answer beyond which it counts as unreachable. One probe
/// may be in flight on a slow link, so a peer is unreachable `MISSED_PROBES + 1` intervals
/// after it last answered at the latest.
pub(crate) const MISSED_PROBES: u32 = 3;
/// How long a new TUN address may take to become usable.
const ADDRESS_READY: Duration = Duration::from_secs(5);

/// Smoothed RTT per peer host, and how many probes each left unanswered since its last answer.
#[derive(Debug, Default)]
pub(crate) struct RttTable {
    srtt: HashMap<u32, Duration>,
    unanswered: HashMap<u32, u32>,
}

impl RttTable {
    /// Folds a sample in (as TCP does: 7/8 old + 1/8 new; the first sample is taken as is).
    /// An answer makes the peer reachable again.
    pub(crate) fn sample(&mut self, host: u32, rtt: Duration) {
        let smoothed = match self.srtt.get(&host) {
            Some(old) => (*old * 7 + rtt) / 8,
            None => rtt,
        };
        self.srtt.insert(host, smoothed);
        self.unanswered.insert(host, 0);
    }

    /// Counts a probe sent to `host`.
    pub(crate) fn probe_sent(&mut self, host: u32) {
        *self.unanswered.entry(host).or_default() += 1;
    }

    /// Whether `host` left more than [`MISSED_PROBES`] probes in a row unanswered.
    pub(crate) fn unreachable(&self, host: u32) -> bool {
        self.unanswered
            .get(&host)
            .is_some_and(|n| *n > MISSED_PROBES)
    }

    pub(crate) fn get(&self, host: u32) -> Option<Duration> {
        self.srtt.get(&host).copied()
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.srtt.retain(|host, _| keep(*host));
        self.unanswered.retain(|host, _| keep(*host));
    }

    /// The lowest RTT among each region's reachable hosts.
    pub(crate) fn per_region(&self, hosts: &[(u32, String)]) -> HashMap<String, Duration> {
        let mut out: HashMap<String, Duration> = HashMap::new();
        for (host, region) in hosts {
            if self.unreachable(*host) {
                continue;
            }
            if let Some(rtt) = self.get(*host) {
                out.entry(region.clone())
                    .and_modify(|best| *best = (*best).min(rtt))
                    .or_insert(rtt);
            }
        }
        out
    }
}

pub(crate) async fn spawn(shared: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>, MeshError> {
    let own = infra_address(shared.host_index);
    let echo_addr = SocketAddr::V6(SocketAddrV6::new(own, ECHO_PORT, 0, 0));
    let echo = bind_when_ready(echo_addr)
        .await
        .map_err(|source| MeshError::Probe {
            what: "echo",
            addr: echo_addr,
            source,
        })?;
    let probe_addr = SocketAddr::V6(SocketAddrV6::new(own, 0, 0, 0));
    let probe = bind_when_ready(probe_addr)
        .await
        .map_err(|source| MeshError::Probe {
            what: "probe",
            addr: probe_addr,
            source,
        })?;
    Ok(vec![
        tokio::spawn(run_echo(echo)),
        tokio::spawn(run_probes(shared.clone(), probe)),
    ])
}

/// Binds `addr`, waiting (up to [`ADDRESS_READY`]) for the kernel to finish bringing the
/// TUN's fresh address up: until then binding fails with "address not available".
async fn bind_when_ready(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let deadline = Instant::now() + ADDRESS_READY;
    loop {
        match UdpSocket::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            result => return result,
        }
    }
}

async fn run_echo(socket: UdpSocket) {
    let mut buf = [0u8; 64];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) if buf[..n].starts_with(PROBE_MAGIC) => {
                let _ = socket.send_to(&buf[..n], from).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "mesh echo receive failed"),
        }
    }
}

async fn run_probes(shared: Arc<Shared>, socket: UdpSocket) {
    let mut outstanding: HashMap<u64, (u32, Instant)> = HashMap::new();
    let mut seq: u64 = 0;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                outstanding.retain(|_, (_, sent)| now.duration_since(*sent) < PROBE_TIMEOUT);
                for (host, _) in shared.peer_regions() {
                    if let Ok(mut table) = shared.rtt.lock() {
                        table.probe_sent(host);
                    }
                    seq += 1;
                    let mut probe = [0u8; 12];
                    probe[..4].copy_from_slice(PROBE_MAGIC);
                    probe[4..].copy_from_slice(&seq.to_be_bytes());
                    let to = SocketAddr::V6(SocketAddrV6::new(infra_address(host), ECHO_PORT, 0, 0));
                    if socket.send_to(&probe, to).await.is_ok() {
                        outstanding.insert(seq, (host, now));
                    }
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((n, _)) = received else { continue };
                if n != 12 || !buf.starts_with(PROBE_MAGIC) {
                    continue;
                }
                let mut seq_bytes = [0u8; 8];
                seq_bytes.copy_from_slice(&buf[4..12]);
                if let Some((host, sent)) = outstanding.remove(&u64::from_be_bytes(seq_bytes)) {
                    let rtt = sent.elapsed();
                    if let Ok(mut table) = shared.rtt.lock() {
                        table.sample(host, rtt);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_is_smoothed_and_regions_take_their_nearest_host() {
        let mut table = RttTable::default();
        table.sample(1, Duration::from_millis(80));
        assert_eq!(table.get(1), Some(Duration::from_millis(80)));
        table.sample(1, Duration::from_millis(160));
        assert_eq!(table.get(1), Some(Duration::from_millis(90)));
        table.sample(2, Duration::from_millis(40));
        table.sample(3, Duration::from_millis(5));
        let hosts = vec![
            (1, "ams".to_string()),
            (2, "ams".to_string()),
            (3, "iad".to_string()),
            (4, "syd".to_string()),
        ];
        let regions = table.per_region(&hosts);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions["ams"], Duration::from_millis(40));
        assert_eq!(regions["iad"], Duration::from_millis(5));
        table.retain(|h| h != 3);
        assert_eq!(table.get(3), None);
    }

    #[test]
    fn a_peer_that_stops_answering_is_unreachable_until_it_answers_again() {
        let mut table = RttTable::default();
        let hosts = vec![(1, "ams".to_string()), (2, "ams".to_string())];
        table.sample(1, Duration::from_millis(5));
        table.sample(2, Duration::from_millis(50));
        // Probes answered before the next one leave the peer reachable.
        for _ in 0..10 {
            table.probe_sent(1);
            table.sample(1, Duration::from_millis(5));
        }
        assert!(!table.unreachable(1));
        // Host 1 goes silent: a few probes in flight are tolerated, then it is unreachable.
        for _ in 0..MISSED_PROBES {
            table.probe_sent(1);
            table.probe_sent(2);
            table.sample(2, Duration::from_millis(50));
        }
        assert!(!table.unreachable(1));
        assert_eq!(table.per_region(&hosts)["ams"], Duration::from_millis(5));
        table.probe_sent(1);
        assert!(table.unreachable(1));
        assert!(!table.unreachable(2));
        // The region's RTT is its nearest reachable host's.
        assert_eq!(table.per_region(&hosts)["ams"], Duration::from_millis(50));
        table.sample(1, Duration::from_millis(5));
        assert!(!table.unreachable(1));
        // A peer never probed is not unreachable (nothing is known yet).
        assert!(!table.unreachable(9));
    }
}
