//! Host liveness as the edges see it: a host silent for the heartbeat timeout is down, and its
//! machines leave the route table (so no edge sends requests to them any more) until it
//! heartbeats again. Every change of the set of down hosts bumps the global revision, so the
//! route watch streams send the new table to every edge.

use std::collections::BTreeSet;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::Hosts;
use crate::core::StoreError;

impl Hosts {
    /// The down hosts the route table was last published with (lock after the store, never
    /// the other way round).
    pub fn down(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a liveness check changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LivenessChange {
    /// Hosts that went silent since the last check.
    pub down: Vec<String>,
    /// Hosts that heartbeated again.
    pub back: Vec<String>,
    /// The revision the route table was republished at, when anything changed.
    pub revision: Option<u64>,
}

impl Hosts {
    /// Compares the hosts silent for the heartbeat timeout with the ones the route table was
    /// published with; on a difference, bumps the revision (the route table leaves out the
    /// machines of down hosts) and wakes the watchers.
    pub fn refresh_liveness(&self) -> Result<LivenessChange, StoreError> {
        let mut inner = self.store.lock();
        let live_since = self.live_since();
        let now_down: BTreeSet<String> = inner
            .hosts()
            .iter()
            .filter(|h| h.last_seen < live_since)
            .map(|h| h.id.clone())
            .collect();
        let mut published = self.down();
        if *published == now_down {
            return Ok(LivenessChange::default());
        }
        let revision = inner.bump()?;
        let change = LivenessChange {
            down: now_down.difference(&published).cloned().collect(),
            back: published.difference(&now_down).cloned().collect(),
            revision: Some(revision),
        };
        *published = now_down;
        drop(published);
        drop(inner);
        for host in &change.down {
            tracing::warn!(host = %host, revision, "host down: its machines leave the route table");
        }
        for host in &change.back {
            tracing::info!(host = %host, revision, "host back: its machines return to the route table");
        }
        self.store.notify(revision);
        Ok(change)
    }
}

/// How often hosts are checked: a quarter of the heartbeat timeout, between 100 ms and 1 s.
pub fn check_interval(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Checks host liveness forever (the server aborts it on shutdown).
pub async fn run_liveness(hosts: Arc<Hosts>) {
    let mut tick = tokio::time::interval(check_interval(hosts.heartbeat_timeout()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = hosts.refresh_liveness() {
            tracing::warn!(error = %e, "cannot check host liveness");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(
            check_interval(Duration::from_secs(15)),
            Duration::from_secs(1)
        );
        assert_eq!(
            check_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(check_interval(Duration::ZERO), Duration::from_millis(100));
    }
}
