//! Placement: choosing a host for a machine. Pure functions over the store's in-memory host
//! capacity.

use std::collections::HashMap;
use std::time::Instant;

pub use crate::core::store::HostCapacity;

/// What a machine needs.
#[derive(Debug, Clone)]
pub struct PlacementRequest<'a> {
    pub region: &'a str,
    pub cpus: i64,
    pub memory_mb: i64,
    /// Hosts seen at or after this instant are live.
    pub live_since: Instant,
    /// How many of this app's machines each host already runs.
    pub app_machines: &'a HashMap<String, u32>,
}

/// Why no host was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("Unknown region {region:?}: no host has ever joined it")]
    UnknownRegion { region: String },
    #[error("No live host in region {region:?}")]
    NoLiveHost { region: String },
    #[error("No host in region {region:?} has {cpus} CPUs and {memory_mb} MB of memory free")]
    NoCapacity {
        region: String,
        cpus: i64,
        memory_mb: i64,
    },
}

/// Picks a live host of the region with room for the machine: fewest of this app's machines
/// first (spreading an app across hosts), then most free memory, then lowest id.
pub fn place<'h>(
    hosts: &'h [HostCapacity],
    req: &PlacementRequest<'_>,
) -> Result<&'h HostCapacity, PlacementError> {
    let mut in_region = false;
    let mut live = false;
    let mut best: Option<(&HostCapacity, u32)> = None;
    for host in hosts.iter().filter(|h| h.region == req.region) {
        in_region = true;
        if host.last_seen < req.live_since {
            continue;
        }
        live = true;
        if host.draining {
            continue;
        }
        if host.free_cpus() < req.cpus || host.free_memory_mb() < req.memory_mb {
            continue;
        }
        let count = req.app_machines.get(&host.id).copied().unwrap_or(0);
        let better = match best {
            None => true,
            Some((b, bc)) => {
                (count, std::cmp::Reverse(host.free_memory_mb()), &host.id)
                    < (bc, std::cmp::Reverse(b.free_memory_mb()), &b.id)
            }
        };
        if better {
            best = Some((host, count));
        }
    }
    let region = req.region.to_owned();
    match best {
        Some((host, _)) => Ok(host),
        None if !in_region => Err(PlacementError::UnknownRegion { region }),
        None if !live => Err(PlacementError::NoLiveHost { region }),
        None => Err(PlacementError::NoCapacity {
            region,
            cpus: req.cpus,
            memory_mb: req.memory_mb,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn host(
        id: &str,
        region: &str,
        memory_mb: i64,
        used_memory_mb: i64,
        seen: Instant,
    ) -> HostCapacity {
        HostCapacity {
            id: id.into(),
            region: region.into(),
            cpus: 4,
            memory_mb,
            used_cpus: 0,
            used_memory_mb,
            last_seen: seen,
            draining: false,
        }
    }

    #[test]
    fn spreads_an_app_then_prefers_free_memory() {
        let now = Instant::now();
        let hosts = vec![
            host("a", "ams", 4096, 0, now),
            host("b", "ams", 2048, 0, now),
            host("c", "ord", 8192, 0, now),
        ];
        let pick = |counts: &HashMap<String, u32>| {
            let req = PlacementRequest {
                region: "ams",
                cpus: 1,
                memory_mb: 256,
                live_since: now,
                app_machines: counts,
            };
            place(&hosts, &req).map(|h| h.id.clone())
        };
        let mut counts = HashMap::new();
        assert_eq!(pick(&counts).unwrap(), "a");
        counts.insert("a".to_owned(), 1);
        assert_eq!(pick(&counts).unwrap(), "b");
        counts.insert("b".to_owned(), 1);
        assert_eq!(pick(&counts).unwrap(), "a");
    }

    #[test]
    fn dead_hosts_and_full_hosts_are_skipped_with_distinct_errors() {
        let now = Instant::now();
        let old = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        let counts = HashMap::new();
        let hosts = vec![
            host("dead", "ams", 4096, 0, old),
            host("full", "syd", 1024, 1000, now),
        ];
        let req = |region| PlacementRequest {
            region,
            cpus: 1,
            memory_mb: 256,
            live_since: now,
            app_machines: &counts,
        };
        if old < now {
            assert_eq!(
                place(&hosts, &req("ams")),
                Err(PlacementError::NoLiveHost {
                    region: "ams".into()
                })
            );
        }
        assert_eq!(
            place(&hosts, &req("syd")),
            Err(PlacementError::NoCapacity {
                region: "syd".into(),
                cpus: 1,
                memory_mb: 256
            })
        );
        let mut drained = host("drained", "lhr", 4096, 0, now);
        drained.draining = true;
        assert_eq!(
            place(&[drained], &req("lhr")),
            Err(PlacementError::NoCapacity {
                region: "lhr".into(),
                cpus: 1,
                memory_mb: 256
            }),
            "a drained host gets no new machine"
        );
        assert_eq!(
            place(&hosts, &req("xyz")),
            Err(PlacementError::UnknownRegion {
                region: "xyz".into()
            })
        );
    }
}
