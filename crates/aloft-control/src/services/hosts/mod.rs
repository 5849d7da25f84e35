//! Hosts: enrolment and per-host credentials (`credentials.rs`), registration, heartbeats,
//! liveness (`liveness.rs`), regions and mesh peers, revocation and removal.
//!
//! A join token only enrols: enrolment hands the host a credential bound to its id, and from
//! then on the host speaks with that credential only. An id that is registered cannot be
//! taken over with a join token (only by the operator, or by the host's own credential).
//! A host is live while it heartbeats within the heartbeat timeout.

mod credentials;
mod liveness;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aloft_api::{EnrolledHost, Host, MeshPeer, RegionInfo, RegisterHostRequest};

pub use credentials::{HostPrincipal, DEFAULT_JOIN_TTL_SECS, MAX_JOIN_TTL_SECS};
pub use liveness::{check_interval, run_liveness, LivenessChange};

use crate::core::{Store, StoreError};

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// What the host sent is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The id is registered (or was revoked): a join token cannot take it over.
    #[error("Host {0:?} is already registered; only its own credential or the operator can register it again (`aloft hosts remove {0}` first)")]
    Exists(String),
    /// A removal while machines are still placed on the host.
    #[error("Host {host:?} still has {count} machines; destroy or move them first")]
    HasMachines { host: String, count: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asks to register a host.
#[derive(Debug, Clone, Copy)]
pub enum Enroller<'a> {
    /// The operator: may register any id, and hands it a fresh credential.
    Admin,
    /// A join token (the bearer itself, whose use is counted): only a new id.
    Join(&'a str),
    /// A host's own credential: re-registers that host, keeping its credential.
    Host,
}

/// The most a host may declare, set by the operator (`aloft server --host-max-cpus`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub max_cpus: i64,
    pub max_memory_mb: i64,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            max_cpus: 256,
            max_memory_mb: 4 * 1024 * 1024,
        }
    }
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
    /// Host credentials and join tokens, by hash.
    auth: RwLock<credentials::HostAuth>,
    limits: RwLock<HostLimits>,
}

impl Hosts {
    pub fn new(store: Arc<Store>, heartbeat_timeout: Duration) -> Hosts {
        Hosts {
            store,
            heartbeat_timeout,
            started: Instant::now(),
            down: Mutex::default(),
            auth: RwLock::default(),
            limits: RwLock::default(),
        }
    }

    /// Sets the most a host may declare.
    pub fn set_limits(&self, limits: HostLimits) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    fn limits(&self) -> HostLimits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
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

    /// Registers a host. A join token enrols only an id that is not registered (or one
    /// registered before hosts had credentials) and hands it a credential; the operator may
    /// register any id, revoked ones included, and hands it a fresh credential; a host's own
    /// credential re-registers it (the caller checked the id) and keeps its credential.
    pub fn enrol(
        &self,
        req: &RegisterHostRequest,
        by: Enroller<'_>,
    ) -> Result<EnrolledHost, HostError> {
        validate::validate_host(req, self.limits())?;
        let edges = validate::edge_addresses(req)?;
        let mut inner = self.store.lock();
        let record = inner.db().host_record(&req.id)?;
        let issue = match by {
            Enroller::Admin => true,
            Enroller::Host => false,
            Enroller::Join(bearer) => {
                if record.is_some_and(|r| r.revoked || r.has_credential) {
                    return Err(HostError::Exists(req.id.clone()));
                }
                self.use_join_token(inner.db(), bearer)?;
                true
            }
        };
        inner.register_host(req, edges)?;
        if let Some(secret) = &req.api_secret {
            inner.db().set_host_secret(&req.id, secret)?;
        }
        if record.is_some_and(|r| r.revoked) {
            inner.db().set_host_revoked(&req.id, false)?;
        }
        let credential = if issue {
            Some(self.issue_credential(inner.db(), &req.id)?)
        } else {
            None
        };
        tracing::info!(host = %req.id, region = %req.region, "host registered");
        Ok(EnrolledHost {
            host: inner.host(&req.id, self.live_since())?,
            credential,
        })
    }

    /// Revokes a host's credential at once (its next request gets 401) and counts it down
    /// at once; only the operator can register the id again.
    pub fn revoke(&self, id: &str) -> Result<(), HostError> {
        let mut inner = self.store.lock();
        if !inner.db().set_host_revoked(id, true)? {
            return Err(StoreError::HostNotFound(id.to_owned()).into());
        }
        self.forget_credential(id);
        inner.mark_host_down(id);
        drop(inner);
        tracing::warn!(host = %id, "host credential revoked");
        self.refresh_liveness()?;
        Ok(())
    }

    /// Drains a host (it keeps its machines and gets no new ones) or takes it back.
    pub fn set_draining(&self, id: &str, draining: bool) -> Result<(), HostError> {
        if !self.store.lock().set_host_draining(id, draining)? {
            return Err(StoreError::HostNotFound(id.to_owned()).into());
        }
        tracing::info!(host = %id, draining, "host drain changed");
        Ok(())
    }

    /// Forgets a host that runs no machine; its credential stops working at once and its id
    /// may join again.
    pub fn remove(&self, id: &str) -> Result<(), HostError> {
        let mut inner = self.store.lock();
        let count = inner.db().live_machines_on_host(id)?;
        if count > 0 {
            return Err(HostError::HasMachines {
                host: id.to_owned(),
                count,
            });
        }
        if !inner.remove_host(id)? {
            return Err(StoreError::HostNotFound(id.to_owned()).into());
        }
        self.forget_credential(id);
        let revision = inner.bump()?;
        drop(inner);
        self.down().remove(id);
        self.store.notify(revision);
        tracing::info!(host = %id, "host removed");
        Ok(())
    }

    /// The apps with a machine placed on the host: the registry repositories it may pull.
    pub fn apps_on_host(&self, id: &str) -> Vec<String> {
        self.store.lock().apps_on_host(id)
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
