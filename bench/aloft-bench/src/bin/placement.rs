//! Placement time: 10,000 machines over 1,000 hosts through the control plane's placement
//! function, updating capacity after each decision as the server does.

use std::collections::HashMap;
use std::time::Instant;

use aloft_control::placement::{place, HostCapacity, PlacementRequest};

fn main() {
    let regions = ["ams", "iad", "syd", "nrt", "gru"];
    let now = Instant::now();
    let mut hosts: Vec<HostCapacity> = (0..1000)
        .map(|i| HostCapacity {
            id: format!("host{i:04}"),
            region: regions[i % regions.len()].to_string(),
            cpus: 32,
            memory_mb: 65_536,
            used_cpus: 0,
            used_memory_mb: 0,
            last_seen: now,
            draining: false,
        })
        .collect();
    let mut app_machines: HashMap<String, u32> = HashMap::new();
    let started = Instant::now();
    let mut worst = std::time::Duration::ZERO;
    for m in 0..10_000 {
        let t = Instant::now();
        let req = PlacementRequest {
            region: regions[m % regions.len()],
            cpus: 1,
            memory_mb: 256,
            live_since: now,
            app_machines: &app_machines,
        };
        let id = place(&hosts, &req).expect("capacity suffices").id.clone();
        let host = hosts
            .iter_mut()
            .find(|h| h.id == id)
            .expect("placed on a known host");
        host.used_cpus += 1;
        host.used_memory_mb += 256;
        *app_machines.entry(id).or_default() += 1;
        worst = worst.max(t.elapsed());
    }
    let total = started.elapsed();
    let max_per_host = app_machines.values().max().copied().unwrap_or(0);
    println!(
        "placement: 10000 machines over 1000 hosts in {:.1} ms ({:.1} µs each, worst {:.1} µs); \
         most machines of one app on a host: {max_per_host}",
        total.as_secs_f64() * 1000.0,
        total.as_secs_f64() * 1e6 / 10_000.0,
        worst.as_secs_f64() * 1e6
    );
}
