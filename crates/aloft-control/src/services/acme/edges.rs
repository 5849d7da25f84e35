//! What the control plane publishes to edges for ACME: the pending challenges (versioned, so
//! an edge's long poll answers as soon as they change) and which version each edge has
//! installed, so an order tells the CA "ready" only once the live edges answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aloft_api::certs::{AcmeChallenge, EdgeAcme};
use instant_acme::Account;
use tokio::sync::{watch, Notify};

use super::AcmeOptions;

/// An edge that has not asked for challenges for this long no longer counts as live.
const EDGE_LIVE: Duration = Duration::from_secs(60);

struct EdgeSeen {
    at: Instant,
    acked: Option<u64>,
    https: bool,
}

/// The control plane's ACME state: options, the account, the published challenges and what
/// each edge has installed.
pub(crate) struct AcmeState {
    pub(super) options: OnceLock<AcmeOptions>,
    pub(super) account: tokio::sync::Mutex<Option<Account>>,
    challenges: Mutex<BTreeMap<String, AcmeChallenge>>,
    pub(super) version: watch::Sender<u64>,
    edges: Mutex<HashMap<String, EdgeSeen>>,
    acked: Notify,
    pub(super) inflight: Mutex<HashSet<String>>,
}

impl Default for AcmeState {
    fn default() -> Self {
        // Versions start at the clock so an edge's `seen` from before a restart never matches.
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        AcmeState {
            options: OnceLock::new(),
            account: tokio::sync::Mutex::new(None),
            challenges: Mutex::default(),
            version: watch::Sender::new(base),
            edges: Mutex::default(),
            acked: Notify::new(),
            inflight: Mutex::default(),
        }
    }
}

pub(super) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AcmeState {
    pub(super) fn publish(&self, challenge: AcmeChallenge) -> u64 {
        locked(&self.challenges).insert(challenge.hostname.clone(), challenge);
        self.bump()
    }

    pub(super) fn unpublish(&self, host: &str) {
        if locked(&self.challenges).remove(host).is_some() {
            self.bump();
        }
    }

    fn bump(&self) -> u64 {
        let mut now = 0;
        self.version.send_modify(|v| {
            *v += 1;
            now = *v;
        });
        now
    }

    pub(super) fn snapshot(&self) -> EdgeAcme {
        let challenges = locked(&self.challenges);
        EdgeAcme {
            version: *self.version.borrow(),
            challenges: challenges.values().cloned().collect(),
        }
    }

    pub(super) fn record(&self, edge: &str, https: bool, seen: Option<u64>) {
        let mut edges = locked(&self.edges);
        edges.retain(|_, e| e.at.elapsed() < EDGE_LIVE * 2);
        edges.insert(
            edge.to_owned(),
            EdgeSeen {
                at: Instant::now(),
                acked: seen,
                https,
            },
        );
        drop(edges);
        self.acked.notify_waiters();
    }

    /// (live edges, whether all of them serve HTTPS, whether all have installed `version`).
    pub(super) fn edges_state(&self, version: u64) -> (usize, bool, bool) {
        let edges = locked(&self.edges);
        let live: Vec<&EdgeSeen> = edges
            .values()
            .filter(|e| e.at.elapsed() < EDGE_LIVE)
            .collect();
        (
            live.len(),
            live.iter().all(|e| e.https),
            live.iter().all(|e| e.acked.is_some_and(|a| a >= version)),
        )
    }

    /// Waits until every live edge has installed `version` (or `deadline` passes). Returns
    /// whether they all did.
    pub(super) async fn wait_for_edges(&self, version: u64, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.acked.notified();
            let (live, _, all) = self.edges_state(version);
            if live == 0 {
                return false;
            }
            if all {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aloft_api::certs::AcmeChallengeType;

    #[tokio::test]
    async fn edges_acknowledge_versions_and_challenges_come_and_go() {
        let state = AcmeState::default();
        assert!(!state.wait_for_edges(1, Duration::from_millis(10)).await);
        let v = state.publish(AcmeChallenge {
            kind: AcmeChallengeType::Http01,
            hostname: "a.example".into(),
            token: "t".into(),
            key_authorization: "t.k".into(),
        });
        state.record("edge-1", true, Some(v - 1));
        assert_eq!(state.edges_state(v), (1, true, false));
        state.record("edge-1", true, Some(v));
        assert!(state.wait_for_edges(v, Duration::from_secs(5)).await);
        state.record("edge-2", false, Some(v));
        assert_eq!(state.edges_state(v), (2, false, true));
        assert_eq!(state.snapshot().challenges.len(), 1);
        state.unpublish("a.example");
        let after = state.snapshot();
        assert!(after.challenges.is_empty());
        assert!(after.version > v);
    }
}
