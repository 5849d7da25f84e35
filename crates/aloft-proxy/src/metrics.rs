//! The edge's Prometheus metrics, kept in memory and rendered as text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// One app's request counts (per machine and status class) and latency histogram, kept
/// together so a request takes one lock.
#[derive(Debug, Default)]
struct AppRequests {
    machines: BTreeMap<String, [u64; 5]>,
    latency: Histogram,
}

/// Counters and gauges of one edge.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<String, AppRequests>>,
    autostarts: Mutex<BTreeMap<String, u64>>,
    autostops: Mutex<BTreeMap<String, u64>>,
    replays: Mutex<BTreeMap<String, u64>>,
    tcp_connections: Mutex<BTreeMap<String, u64>>,
    open_connections: AtomicI64,
    autostop_cycles: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, app: &str) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(app.to_string())
        .or_default() += 1;
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// One answered request. `machine` is empty when the edge answered by itself.
    pub fn request(&self, app: &str, machine: &str, status: u16, elapsed: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        // Look up by reference first: only a new app or machine allocates its key.
        if !requests.contains_key(app) {
            requests.insert(app.to_string(), AppRequests::default());
        }
        let Some(a) = requests.get_mut(app) else {
            return;
        };
        if !a.machines.contains_key(machine) {
            a.machines.insert(machine.to_string(), [0; 5]);
        }
        if let Some(counts) = a.machines.get_mut(machine) {
            counts[class(status)] += 1;
        }
        let h = &mut a.latency;
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn autostart(&self, app: &str) {
        bump(&self.autostarts, app);
    }

    pub fn autostop(&self, app: &str) {
        bump(&self.autostops, app);
    }

    pub fn replay(&self, app: &str) {
        bump(&self.replays, app);
    }

    /// A client connection opened (`1`) or closed (`-1`).
    pub fn connections(&self, change: i64) {
        self.open_connections.fetch_add(change, Ordering::Relaxed);
    }

    /// One autostop pass ran.
    pub fn autostop_cycle(&self) {
        self.autostop_cycles.fetch_add(1, Ordering::Relaxed);
    }

    /// One raw TCP connection forwarded to a machine of `app`.
    pub fn tcp_connection(&self, app: &str) {
        bump(&self.tcp_connections, app);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP aloft_edge_requests_total Requests answered, by app, machine and status class.\n");
        out.push_str("# TYPE aloft_edge_requests_total counter\n");
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for (app, a) in requests.iter() {
            for (machine, counts) in &a.machines {
                for (class, n) in CLASSES.iter().zip(counts).filter(|(_, n)| **n > 0) {
                    let _ = writeln!(
                        out,
                        "aloft_edge_requests_total{{app=\"{}\",machine=\"{}\",status=\"{class}\"}} {n}",
                        esc(app),
                        esc(machine)
                    );
                }
            }
        }
        out.push_str(
            "# HELP aloft_edge_request_duration_seconds Time to response headers, by app.\n",
        );
        out.push_str("# TYPE aloft_edge_request_duration_seconds histogram\n");
        for (app, h) in requests.iter().map(|(app, a)| (app, &a.latency)) {
            let app = esc(app);
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "aloft_edge_request_duration_seconds_bucket{{app=\"{app}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "aloft_edge_request_duration_seconds_bucket{{app=\"{app}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "aloft_edge_request_duration_seconds_sum{{app=\"{app}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "aloft_edge_request_duration_seconds_count{{app=\"{app}\"}} {}",
                h.count
            );
        }
        drop(requests);
        for (name, help, map) in [
            (
                "aloft_edge_autostarts_total",
                "Machines woken by the edge.",
                &self.autostarts,
            ),
            (
                "aloft_edge_autostops_total",
                "Idle machines stopped by the edge.",
                &self.autostops,
            ),
            (
                "aloft_edge_replays_total",
                "Requests replayed on a fly-replay answer.",
                &self.replays,
            ),
            (
                "aloft_edge_tcp_connections_total",
                "Raw TCP connections forwarded to a machine.",
                &self.tcp_connections,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (app, n) in map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = writeln!(out, "{name}{{app=\"{}\"}} {n}", esc(app));
            }
        }
        let _ = writeln!(
            out,
            "# HELP aloft_edge_open_connections Client connections open now.\n# TYPE aloft_edge_open_connections gauge\naloft_edge_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP aloft_edge_autostop_cycles_total Autostop passes run.\n# TYPE aloft_edge_autostop_cycles_total counter\naloft_edge_autostop_cycles_total {}",
            self.autostop_cycles.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.request("shop", "m1", 200, Duration::from_millis(3));
        m.request("shop", "m1", 204, Duration::from_millis(30));
        m.request("shop", "", 404, Duration::from_millis(1));
        m.replay("shop");
        let t = m.render();
        assert!(
            t.contains("aloft_edge_requests_total{app=\"shop\",machine=\"m1\",status=\"2xx\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("aloft_edge_requests_total{app=\"shop\",machine=\"\",status=\"4xx\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("aloft_edge_request_duration_seconds_bucket{app=\"shop\",le=\"0.005\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("aloft_edge_request_duration_seconds_count{app=\"shop\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("aloft_edge_replays_total{app=\"shop\"} 1"),
            "{t}"
        );
    }
}
