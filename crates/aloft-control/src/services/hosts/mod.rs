//! Hosts: registration, heartbeats, liveness (`liveness.rs`), regions and mesh peers.
//!
//! A host is live while it heartbeats within the heartbeat timeout. Per-host credentials are
//! meant to grow here (today a host joins with the shared join token and reports the secret
//! its agent API accepts).

mod liveness;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aloft_api::{Host, MeshPeer, RegionInfo, RegisterHostRequest};

pub use liveness::{check_interval, run_liveness, LivenessChange};

use crate::core::{Store, StoreError};

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// What the host sent is not valid.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A healthy edge: its region and public addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEdge {
    pub region: String,
    pub addrs: Vec<std::net::IpAddr>,
}

/// The host service: registration, heartbeats and which hosts are down.
#[derive(Debug)]
pub struct Hosts {
    store: Arc<Store>,
    heartbeat_timeout: Duration,
    started: Instant,
    /// The down hosts the route table was last published with (locked after the store,
    /// never the other way round).
    down: Mutex<BTreeSet<String>>,
}

impl Hosts {
    pub fn new(store: Arc<Store>, heartbeat_timeout: Duration) -> Hosts {
        Hosts {
            store,
            heartbeat_timeout,
            started: Instant::now(),
            down: Mutex::default(),
        }
    }

    /// Hosts last seen at or after this instant are live.
    pub fn live_since(&self) -> Instant {
        Instant::now()
            .checked_sub(self.heartbeat_timeout)
            .unwrap_or(self.started)
    }

    /// How long a host may stay silent.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    pub fn register(&self, req: &RegisterHostRequest) -> Result<Host, HostError> {
        validate::validate_host(req)?;
        let edges = validate::edge_addresses(req)?;
        let mut inner = self.store.lock();
        inner.register_host(req, edges)?;
        tracing::info!(host = %req.id, region = %req.region, "host registered");
        Ok(inner.host(&req.id, self.live_since())?)
    }

    /// Keeps the secret a host's agent API accepts (hosts that report none keep their old one).
    pub fn record_secret(&self, host: &str, secret: Option<&str>) -> Result<(), HostError> {
        let Some(secret) = secret else {
            return Ok(());
        };
        self.store.lock().db().set_host_secret(host, secret)?;
        Ok(())
    }

    pub fn heartbeat(&self, id: &str) -> Result<Host, HostError> {
        let mut inner = self.store.lock();
        inner.heartbeat(id)?;
        let host = inner.host(id, self.live_since());
        drop(inner);
        // A host that was down is routable again at once, not at the next liveness check.
        if self.down().contains(id) {
            self.refresh_liveness()?;
        }
        Ok(host?)
    }

    /// Every registered host with mesh info (agents mirror this list).
    pub fn mesh_peers(&self) -> Result<Vec<MeshPeer>, HostError> {
        Ok(self.store.lock().mesh_peers(self.live_since())?)
    }

    pub fn list(&self) -> Result<Vec<Host>, HostError> {
        let inner = self.store.lock();
        let live_since = self.live_since();
        Ok(inner
            .hosts()
            .iter()
            .map(|h| inner.host(&h.id, live_since))
            .collect::<Result<_, _>>()?)
    }

    /// The region of a registered host.
    pub fn region_of(&self, host: &str) -> Result<String, HostError> {
        let inner = self.store.lock();
        let cap = inner
            .host_capacity(host)
            .ok_or_else(|| StoreError::HostNotFound(host.to_owned()))?;
        Ok(cap.region.clone())
    }

    /// Regions with at least one live host, with their free capacity.
    pub fn regions(&self) -> Vec<RegionInfo> {
        let inner = self.store.lock();
        let live_since = self.live_since();
        let mut regions: BTreeMap<&str, RegionInfo> = BTreeMap::new();
        for host in inner.hosts().iter().filter(|h| h.last_seen >= live_since) {
            let entry = regions.entry(&host.region).or_insert_with(|| RegionInfo {
                code: host.region.clone(),
                name: validate::region_name(&host.region).to_owned(),
                free_cpus: 0,
                free_memory_mb: 0,
                hosts: 0,
            });
            entry.free_cpus += host.free_cpus();
            entry.free_memory_mb += host.free_memory_mb();
            entry.hosts += 1;
        }
        regions.into_values().collect()
    }

    /// The edges of the hosts that heartbeat and registered an edge address.
    pub fn live_edges(&self) -> Vec<LiveEdge> {
        let live_since = self.live_since();
        let inner = self.store.lock();
        inner
            .hosts()
            .iter()
            .filter(|h| h.last_seen >= live_since)
            .filter_map(|h| {
                let addrs = inner.edge_addresses(&h.id)?;
                Some(LiveEdge {
                    region: h.region.clone(),
                    addrs: addrs.clone(),
                })
            })
            .collect()
    }
}
