//! Per-machine load accounting and the choice of a machine for a request: healthy first, then
//! under the soft limit, then nearest (same host, same region, then by RTT), then least loaded,
//! then at random. Machines on hosts this edge cannot reach over the mesh are left out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tokio::sync::Notify;

use crate::routes::{Concurrency, MachineRoute, MachineState};

/// In-flight work per machine, and when each machine was last busy.
#[derive(Debug, Default)]
pub(crate) struct Loads {
    inner: Mutex<HashMap<Arc<str>, MachineLoad>>,
    /// Woken whenever a slot is released, so queued requests can look again.
    released: Notify,
}

#[derive(Debug, Clone)]
struct MachineLoad {
    inflight: u32,
    last_active: Instant,
    /// The map's key again, so a slot can name its machine without allocating.
    id: Arc<str>,
}

impl Loads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, MachineLoad>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of `machine`, created (idle since now) when it has none; allocates only then.
    fn entry<'m>(
        map: &'m mut HashMap<Arc<str>, MachineLoad>,
        machine: &str,
    ) -> &'m mut MachineLoad {
        let id = match map.get_key_value(machine) {
            Some((id, _)) => id.clone(),
            None => Arc::from(machine),
        };
        map.entry(id.clone()).or_insert_with(|| MachineLoad {
            inflight: 0,
            last_active: Instant::now(),
            id,
        })
    }

    /// Completes when a slot is released after it was enabled (or first polled).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    pub fn load(&self, machine: &str) -> u32 {
        self.lock().get(machine).map_or(0, |l| l.inflight)
    }

    /// Takes a slot on `machine` unless it is at `hard_limit`.
    pub fn try_acquire(
        self: &Arc<Self>,
        machine: &str,
        hard_limit: Option<u32>,
    ) -> Option<SlotGuard> {
        let mut map = self.lock();
        let entry = Self::entry(&mut map, machine);
        if hard_limit.is_some_and(|h| entry.inflight >= h) {
            return None;
        }
        entry.inflight += 1;
        entry.last_active = Instant::now();
        Some(SlotGuard {
            loads: self.clone(),
            machine: entry.id.clone(),
        })
    }

    /// How long `machine` has had nothing in flight; zero while it is busy. A machine never seen
    /// before starts its idle clock now.
    pub fn idle_for(&self, machine: &str) -> Duration {
        let mut map = self.lock();
        let entry = Self::entry(&mut map, machine);
        if entry.inflight > 0 {
            Duration::ZERO
        } else {
            entry.last_active.elapsed()
        }
    }

    /// Restarts the idle clock of `machine` (after it was woken).
    pub fn touch(&self, machine: &str) {
        let mut map = self.lock();
        Self::entry(&mut map, machine).last_active = Instant::now();
    }

    fn release(&self, machine: &str) {
        if let Some(l) = self.lock().get_mut(machine) {
            l.inflight = l.inflight.saturating_sub(1);
            l.last_active = Instant::now();
        }
        self.released.notify_waiters();
    }
}

/// One unit of load on a machine, given back on drop.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    loads: Arc<Loads>,
    machine: Arc<str>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.loads.release(&self.machine);
    }
}

/// Where the edge stands, for nearness.
#[derive(Debug, Clone)]
pub(crate) struct Locality<'a> {
    pub region: &'a str,
    pub host_id: &'a str,
    pub rtts: &'a HashMap<String, Duration>,
    /// Hosts whose mesh peer stopped answering: their machines are out of reach from here.
    pub unreachable: &'a HashSet<String>,
}

impl Locality<'_> {
    /// Whether this edge can reach `m`'s host (its own host always).
    fn reaches(&self, m: &MachineRoute) -> bool {
        m.host_id == self.host_id || !self.unreachable.contains(&m.host_id)
    }

    /// Lower is nearer: same host, then same region, then other regions by RTT (unknown last).
    fn distance(&self, m: &MachineRoute) -> (u8, Duration) {
        if !self.host_id.is_empty() && m.host_id == self.host_id {
            (0, Duration::ZERO)
        } else if m.region == self.region {
            (1, Duration::ZERO)
        } else {
            (
                2,
                self.rtts.get(&m.region).copied().unwrap_or(Duration::MAX),
            )
        }
    }
}

/// Constraints from request headers and replay answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Steering {
    pub force_instance: Option<String>,
    pub prefer_instance: Option<String>,
    pub prefer_regions: Vec<String>,
    /// Only machines in these regions (when not empty).
    pub force_regions: Vec<String>,
    pub exclude: HashSet<String>,
}

impl Steering {
    /// Whether `m` may take the request at all under these constraints.
    pub fn admits(&self, m: &MachineRoute) -> bool {
        !self.exclude.contains(&m.id)
            && self.force_instance.as_ref().is_none_or(|f| *f == m.id)
            && (self.force_regions.is_empty() || self.force_regions.contains(&m.region))
    }
}

/// The machines that may take the request now, best first. `serving` says whether a machine is
/// started and healthy (per the route table, or the edge's own newer knowledge).
pub(crate) fn rank<'a>(
    machines: &'a [MachineRoute],
    serving: &dyn Fn(&MachineRoute) -> bool,
    loads: &Loads,
    limits: &Concurrency,
    here: &Locality<'_>,
    steer: &Steering,
) -> Vec<&'a MachineRoute> {
    let mut pool: Vec<(&MachineRoute, u32)> = machines
        .iter()
        .filter(|m| serving(m) && !m.cordoned && here.reaches(m))
        .filter(|m| steer.admits(m))
        .map(|m| (m, loads.load(&m.id)))
        .filter(|(_, load)| limits.hard_limit.is_none_or(|h| *load < h))
        .collect();
    if let Some(first) = steer
        .prefer_regions
        .iter()
        .find(|r| pool.iter().any(|(m, _)| &m.region == *r))
    {
        pool.retain(|(m, _)| &m.region == first);
    }
    pool.shuffle(&mut rand::rng());
    pool.sort_by_key(|(m, load)| (*load >= limits.soft_limit, here.distance(m), *load));
    if let Some(p) = &steer.prefer_instance {
        if let Some(i) = pool.iter().position(|(m, _)| &m.id == p) {
            let preferred = pool.remove(i);
            pool.insert(0, preferred);
        }
    }
    pool.into_iter().map(|(m, _)| m).collect()
}

/// Whether `ranked` (from [`rank`]) leaves the request without a machine under its soft limit.
pub(crate) fn needs_wake(ranked: &[&MachineRoute], loads: &Loads, limits: &Concurrency) -> bool {
    ranked
        .first()
        .is_none_or(|m| loads.load(&m.id) >= limits.soft_limit)
}

/// Whether to wake a stopped machine of the edge's own region rather than backhaul the request
/// to the best serving machine, which is in another region: a region's traffic starts that
/// region's machines.
pub(crate) fn wake_here_first(
    ranked: &[&MachineRoute],
    machines: &[MachineRoute],
    state: &dyn Fn(&MachineRoute) -> MachineState,
    here: &Locality<'_>,
    steer: &Steering,
) -> bool {
    ranked.first().is_some_and(|m| m.region != here.region)
        && machines.iter().any(|m| {
            m.region == here.region
                && state(m).is_wakeable()
                && !m.cordoned
                && here.reaches(m)
                && steer.admits(m)
        })
}

/// The nearest machine the edge could wake for this request.
pub(crate) fn wake_candidate<'a>(
    machines: &'a [MachineRoute],
    state: &dyn Fn(&MachineRoute) -> MachineState,
    here: &Locality<'_>,
    steer: &Steering,
) -> Option<&'a MachineRoute> {
    let mut pool: Vec<&MachineRoute> = machines
        .iter()
        .filter(|m| state(m).is_wakeable() && !m.cordoned && here.reaches(m))
        .filter(|m| steer.admits(m))
        .collect();
    if let Some(first) = steer
        .prefer_regions
        .iter()
        .find(|r| pool.iter().any(|m| &m.region == *r))
    {
        pool.retain(|m| &m.region == first);
    }
    pool.shuffle(&mut rand::rng());
    pool.sort_by_key(|m| {
        (
            steer.prefer_instance.as_ref() != Some(&m.id),
            here.distance(m),
        )
    });
    pool.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ConcurrencyKind;

    fn machine(id: &str, region: &str, host: &str) -> MachineRoute {
        MachineRoute {
            id: id.into(),
            region: region.into(),
            host_id: host.into(),
            address: "127.0.0.1".parse().unwrap(),
            state: MachineState::Started,
            healthy: true,
            cordoned: false,
        }
    }

    #[test]
    fn a_stopped_machine_here_is_woken_before_backhauling_to_another_region() {
        let mut local = machine("syd1", "syd", "h3");
        local.state = MachineState::Stopped;
        let machines = vec![machine("iad1", "iad", "h2"), local];
        let rtts = HashMap::new();
        let none = HashSet::new();
        let here = Locality {
            region: "syd",
            host_id: "h3",
            rtts: &rtts,
            unreachable: &none,
        };
        let state = |m: &MachineRoute| m.state;
        let serving = |m: &MachineRoute| m.state == MachineState::Started;
        let loads = Loads::default();
        let steer = Steering::default();
        let ranked = rank(
            &machines,
            &serving,
            &loads,
            &limits(10, None),
            &here,
            &steer,
        );
        assert!(wake_here_first(&ranked, &machines, &state, &here, &steer));
        let woken = wake_candidate(&machines, &state, &here, &steer).unwrap();
        assert_eq!(woken.id, "syd1");
        // Once it failed to wake (excluded), the request goes to iad.
        let mut failed = Steering::default();
        failed.exclude.insert("syd1".into());
        assert!(!wake_here_first(&ranked, &machines, &state, &here, &failed));
        // An edge in iad never wakes syd's machine while its own serves.
        let iad = Locality {
            region: "iad",
            host_id: "h2",
            rtts: &rtts,
            unreachable: &none,
        };
        let ranked = rank(&machines, &serving, &loads, &limits(10, None), &iad, &steer);
        assert!(!wake_here_first(&ranked, &machines, &state, &iad, &steer));
    }

    fn limits(soft: u32, hard: Option<u32>) -> Concurrency {
        Concurrency {
            kind: ConcurrencyKind::Requests,
            soft_limit: soft,
            hard_limit: hard,
        }
    }

    /// The route table's own view: started and passing checks.
    fn serving(m: &MachineRoute) -> bool {
        m.state == MachineState::Started && m.healthy
    }

    fn ids(v: &[&MachineRoute]) -> Vec<String> {
        v.iter().map(|m| m.id.clone()).collect()
    }

    #[test]
    fn nearness_orders_host_region_then_rtt() {
        let ms = vec![
            machine("far", "syd", "h9"),
            machine("mid", "fra", "h8"),
            machine("region", "ams", "h2"),
            machine("host", "ams", "h1"),
            machine("unknown", "xyz", "h7"),
        ];
        let rtts = HashMap::from([
            ("syd".to_string(), Duration::from_millis(250)),
            ("fra".to_string(), Duration::from_millis(9)),
        ]);
        let none = HashSet::new();
        let here = Locality {
            region: "ams",
            host_id: "h1",
            rtts: &rtts,
            unreachable: &none,
        };
        let loads = Arc::new(Loads::default());
        let r = rank(
            &ms,
            &serving,
            &loads,
            &limits(20, None),
            &here,
            &Steering::default(),
        );
        assert_eq!(ids(&r), ["host", "region", "mid", "far", "unknown"]);
    }

    #[test]
    fn machines_behind_an_unreachable_peer_are_skipped_until_it_answers_again() {
        // ams has no machine; lhr is nearest, iad farther.
        let mut stopped = machine("lhr2", "lhr", "h2");
        stopped.state = MachineState::Stopped;
        let ms = vec![
            machine("lhr1", "lhr", "h2"),
            machine("iad1", "iad", "h3"),
            stopped,
        ];
        let rtts = HashMap::from([
            ("lhr".to_string(), Duration::from_millis(5)),
            ("iad".to_string(), Duration::from_millis(85)),
        ]);
        let cut = HashSet::from(["h2".to_string()]);
        let loads = Loads::default();
        let l = limits(20, None);
        let at = |unreachable| Locality {
            region: "ams",
            host_id: "h1",
            rtts: &rtts,
            unreachable,
        };
        let none = HashSet::new();
        let steer = Steering::default();
        let ranked = rank(&ms, &serving, &loads, &l, &at(&none), &steer);
        assert_eq!(ids(&ranked), ["lhr1", "iad1"]);
        let ranked = rank(&ms, &serving, &loads, &l, &at(&cut), &steer);
        assert_eq!(ids(&ranked), ["iad1"]);
        let state = |m: &MachineRoute| m.state;
        assert!(wake_candidate(&ms, &state, &at(&cut), &steer).is_none());
        assert_eq!(
            wake_candidate(&ms, &state, &at(&none), &steer).unwrap().id,
            "lhr2"
        );
        // An edge never counts its own host as unreachable.
        let own = Locality {
            region: "lhr",
            host_id: "h2",
            rtts: &rtts,
            unreachable: &cut,
        };
        assert_eq!(
            ids(&rank(&ms, &serving, &loads, &l, &own, &steer))[0],
            "lhr1"
        );
    }

    #[test]
    fn unhealthy_cordoned_and_stopped_machines_are_skipped() {
        let mut ms = vec![
            machine("a", "ams", ""),
            machine("b", "ams", ""),
            machine("c", "ams", ""),
            machine("d", "ams", ""),
        ];
        ms[0].healthy = false;
        ms[1].cordoned = true;
        ms[2].state = MachineState::Stopped;
        let rtts = HashMap::new();
        let none = HashSet::new();
        let here = Locality {
            region: "ams",
            host_id: "",
            rtts: &rtts,
            unreachable: &none,
        };
        let loads = Arc::new(Loads::default());
        let r = rank(
            &ms,
            &serving,
            &loads,
            &limits(20, None),
            &here,
            &Steering::default(),
        );
        assert_eq!(ids(&r), ["d"]);
        let w = wake_candidate(&ms, &|m| m.state, &here, &Steering::default()).unwrap();
        assert_eq!(w.id, "c");
    }

    #[test]
    fn soft_limit_beats_nearness_and_hard_limit_excludes() {
        let ms = vec![machine("local", "ams", ""), machine("remote", "fra", "")];
        let rtts = HashMap::new();
        let none = HashSet::new();
        let here = Locality {
            region: "ams",
            host_id: "",
            rtts: &rtts,
            unreachable: &none,
        };
        let loads = Arc::new(Loads::default());
        let l = limits(1, Some(2));
        let g1 = loads.try_acquire("local", l.hard_limit).unwrap();
        let r = rank(&ms, &serving, &loads, &l, &here, &Steering::default());
        assert_eq!(ids(&r), ["remote", "local"]);
        assert!(!needs_wake(&r, &loads, &l));
        let _g2 = loads.try_acquire("remote", l.hard_limit).unwrap();
        let r = rank(&ms, &serving, &loads, &l, &here, &Steering::default());
        assert_eq!(ids(&r), ["local", "remote"]);
        assert!(needs_wake(&r, &loads, &l));
        let _g3 = loads.try_acquire("local", l.hard_limit).unwrap();
        assert!(loads.try_acquire("local", l.hard_limit).is_none());
        let r = rank(&ms, &serving, &loads, &l, &here, &Steering::default());
        assert_eq!(ids(&r), ["remote"]);
        drop(g1);
        assert_eq!(loads.load("local"), 1);
    }

    #[test]
    fn steering_forces_prefers_and_excludes() {
        let ms = vec![
            machine("a", "ams", ""),
            machine("b", "fra", ""),
            machine("c", "fra", ""),
        ];
        let rtts = HashMap::new();
        let none = HashSet::new();
        let here = Locality {
            region: "ams",
            host_id: "",
            rtts: &rtts,
            unreachable: &none,
        };
        let loads = Arc::new(Loads::default());
        let l = limits(20, None);
        let st = |s: Steering| ids(&rank(&ms, &serving, &loads, &l, &here, &s));
        assert_eq!(
            st(Steering {
                force_instance: Some("b".into()),
                ..Default::default()
            }),
            ["b"]
        );
        assert_eq!(
            st(Steering {
                prefer_instance: Some("c".into()),
                ..Default::default()
            })[0],
            "c"
        );
        let fra = st(Steering {
            prefer_regions: vec!["nrt".into(), "fra".into()],
            ..Default::default()
        });
        assert_eq!(fra.len(), 2);
        assert!(fra.iter().all(|id| id != "a"));
        let forced = st(Steering {
            force_regions: vec!["fra".into()],
            prefer_regions: vec!["ams".into()],
            ..Default::default()
        });
        assert_eq!(forced.len(), 2);
        assert!(forced.iter().all(|id| id != "a"));
        let ex = st(Steering {
            exclude: HashSet::from(["a".to_string()]),
            ..Default::default()
        });
        assert!(!ex.contains(&"a".to_string()));
    }

    #[test]
    fn idle_clock_is_zero_while_busy() {
        let loads = Arc::new(Loads::default());
        let g = loads.try_acquire("m", None).unwrap();
        assert_eq!(loads.idle_for("m"), Duration::ZERO);
        drop(g);
        assert_eq!(loads.load("m"), 0);
    }
}
