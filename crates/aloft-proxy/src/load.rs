//! Per-app counts of the requests that entered at this edge: in flight now, the highest in
//! flight since the last snapshot, and how many arrived. The host reads them to report its
//! region's load to the control plane.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone, Copy)]
struct Counter {
    in_flight: u32,
    peak: u32,
    requests: u64,
}

/// The counters of one edge.
#[derive(Debug, Default)]
pub struct EntryLoad {
    apps: Mutex<HashMap<Arc<str>, Counter>>,
}

/// One app's counts since the previous [`EntryLoad::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySnapshot {
    pub app: String,
    /// Requests in flight now.
    pub in_flight: u32,
    /// The most requests in flight at once since the previous snapshot.
    pub peak: u32,
    /// Requests that entered since the previous snapshot.
    pub requests: u64,
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct EntryGuard {
    load: Arc<EntryLoad>,
    app: Arc<str>,
}

impl EntryLoad {
    /// Counts a request of `app` entering here; it stays in flight until the guard drops.
    pub fn enter(self: &Arc<Self>, app: &str) -> EntryGuard {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        // Only an app seen for the first time (in this period) allocates its name.
        let app: Arc<str> = match apps.get_key_value(app) {
            Some((name, _)) => name.clone(),
            None => Arc::from(app),
        };
        let c = apps.entry(app.clone()).or_default();
        c.in_flight = c.in_flight.saturating_add(1);
        c.peak = c.peak.max(c.in_flight);
        c.requests += 1;
        EntryGuard {
            load: self.clone(),
            app,
        }
    }

    /// Every app's counts since the previous call, which starts a new period. Apps with
    /// nothing in flight and no request in the period are left out (and forgotten).
    pub fn take(&self) -> Vec<EntrySnapshot> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<EntrySnapshot> = apps
            .iter()
            .filter(|(_, c)| c.peak > 0 || c.requests > 0 || c.in_flight > 0)
            .map(|(app, c)| EntrySnapshot {
                app: app.to_string(),
                in_flight: c.in_flight,
                peak: c.peak,
                requests: c.requests,
            })
            .collect();
        apps.retain(|_, c| c.in_flight > 0);
        for c in apps.values_mut() {
            c.peak = c.in_flight;
            c.requests = 0;
        }
        out.sort_by(|a, b| a.app.cmp(&b.app));
        out
    }
}

impl Drop for EntryGuard {
    fn drop(&mut self) {
        let mut apps = self.load.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = apps.get_mut(&self.app) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_flight_peak_and_requests_per_period() {
        let load = Arc::new(EntryLoad::default());
        let a = load.enter("web");
        let b = load.enter("web");
        let c = load.enter("api");
        drop(c);
        let first = load.take();
        assert_eq!(
            first,
            vec![
                EntrySnapshot {
                    app: "api".into(),
                    in_flight: 0,
                    peak: 1,
                    requests: 1
                },
                EntrySnapshot {
                    app: "web".into(),
                    in_flight: 2,
                    peak: 2,
                    requests: 2
                },
            ]
        );
        drop(a);
        let second = load.take();
        assert_eq!(
            second,
            vec![EntrySnapshot {
                app: "web".into(),
                in_flight: 1,
                peak: 2,
                requests: 0
            }]
        );
        drop(b);
        assert_eq!(load.take()[0].peak, 1);
        assert!(load.take().is_empty());
    }
}
