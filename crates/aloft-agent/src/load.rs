//! Load reports: every couple of seconds the agent tells the control plane, per app, how many
//! requests entered at its edge and how many were in flight, so the control plane can scale
//! each region by the demand that enters there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aloft_api::{AppLoad, Client, LoadReport};
use aloft_proxy::{EntryLoad, EntrySnapshot};

/// How often the agent reports its edge's load.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// The report for one period: the period's peak in flight is the concurrency, so a burst
/// between two reports still counts.
pub fn report(snapshot: Vec<EntrySnapshot>, interval: Duration) -> LoadReport {
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    LoadReport {
        apps: snapshot
            .into_iter()
            .map(|s| AppLoad {
                app: s.app,
                concurrency: s.peak.max(s.in_flight),
                requests: s.requests,
                interval_ms,
            })
            .collect(),
    }
}

/// Reports the edge's load every [`REPORT_EVERY`] until aborted. An empty report is sent too:
/// it tells the control plane the load has gone.
pub async fn run(client: Client, host_id: String, entries: Arc<EntryLoad>) {
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut failing = false;
    loop {
        every.tick().await;
        let now = Instant::now();
        let body = report(entries.take(), now - last);
        last = now;
        match client.report_load(&host_id, &body).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot report the edge's load");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_the_reported_concurrency() {
        let r = report(
            vec![EntrySnapshot {
                app: "web".into(),
                in_flight: 1,
                peak: 4,
                requests: 9,
            }],
            Duration::from_millis(2000),
        );
        assert_eq!(
            r.apps,
            vec![AppLoad {
                app: "web".into(),
                concurrency: 4,
                requests: 9,
                interval_ms: 2000
            }]
        );
    }
}
