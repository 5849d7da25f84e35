//! `aloft regions …`

use aloft_api::{Host, HostStatus, RegionInfo, RegionLoad};
use clap::Subcommand;
use serde::Serialize;

use crate::{context, output};

#[derive(Debug, Subcommand)]
pub enum RegionsCommand {
    /// Regions with live hosts: free capacity, machines started and stopped, and the live load
    /// entering there (of every app an admin token sees, else of the token's app). With an
    /// admin token, hosts that stopped heartbeating are counted as down (a region whose hosts
    /// are all down is listed with no live host).
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
}

/// One line of `regions list --json`.
#[derive(Debug, Serialize)]
struct RegionLine {
    code: String,
    name: String,
    /// Live hosts.
    hosts: u64,
    /// Hosts silent for the heartbeat timeout (known with an admin token only).
    down_hosts: u64,
    free_cpus: i64,
    free_memory_mb: i64,
    started: u32,
    stopped: u32,
    /// In-flight requests entering at the region's edges.
    concurrency: u32,
    requests_per_second: f64,
}

fn lines(regions: Vec<RegionInfo>, load: Vec<RegionLoad>, hosts: &[Host]) -> Vec<RegionLine> {
    let mut out: Vec<RegionLine> = regions
        .into_iter()
        .map(|r| RegionLine {
            code: r.code,
            name: r.name,
            hosts: r.hosts,
            down_hosts: 0,
            free_cpus: r.free_cpus,
            free_memory_mb: r.free_memory_mb,
            started: 0,
            stopped: 0,
            concurrency: 0,
            requests_per_second: 0.0,
        })
        .collect();
    // With the host list, both counts come from it (one view: a host whose timeout ends
    // between the two requests is not counted twice).
    if !hosts.is_empty() {
        for line in &mut out {
            line.hosts = hosts
                .iter()
                .filter(|h| h.region == line.code && h.status == HostStatus::Ok)
                .count() as u64;
        }
    }
    for h in hosts.iter().filter(|h| h.status == HostStatus::Unreachable) {
        match out.iter_mut().find(|r| r.code == h.region) {
            Some(line) => line.down_hosts += 1,
            None => out.push(RegionLine {
                code: h.region.clone(),
                name: h.region.clone(),
                hosts: 0,
                down_hosts: 1,
                free_cpus: 0,
                free_memory_mb: 0,
                started: 0,
                stopped: 0,
                concurrency: 0,
                requests_per_second: 0.0,
            }),
        }
    }
    // Only regions with a live host are offered; their load and machines are added.
    for l in load {
        if let Some(line) = out.iter_mut().find(|r| r.code == l.region) {
            line.started = l.started;
            line.stopped = l.stopped;
            line.concurrency = l.concurrency;
            line.requests_per_second = l.requests_per_second;
        }
    }
    out.sort_by(|a, b| a.code.cmp(&b.code));
    out
}

pub async fn run(cmd: RegionsCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        RegionsCommand::List { json } => {
            let regions = api.platform_regions().await?;
            // A join token sees no app load; the regions are still listed.
            let load = match api.platform_load().await {
                Err(e) if e.status() == Some(403) => Vec::new(),
                other => other?,
            };
            // Only an admin token sees hosts; without one, down hosts are not shown.
            let hosts = match api.list_hosts().await {
                Err(e) if e.status() == Some(403) => Vec::new(),
                other => other?,
            };
            let lines = lines(regions.regions, load, &hosts);
            if json {
                return output::json(&lines);
            }
            let rows: Vec<Vec<String>> = lines
                .iter()
                .map(|r| {
                    vec![
                        r.code.clone(),
                        r.name.clone(),
                        match r.down_hosts {
                            0 => r.hosts.to_string(),
                            down => format!("{} ({down} down)", r.hosts),
                        },
                        r.free_cpus.to_string(),
                        r.free_memory_mb.to_string(),
                        r.started.to_string(),
                        r.stopped.to_string(),
                        r.concurrency.to_string(),
                        format!("{:.1}", r.requests_per_second),
                    ]
                })
                .collect();
            output::table(
                &[
                    "CODE",
                    "NAME",
                    "HOSTS",
                    "FREE CPUS",
                    "FREE MEMORY MB",
                    "STARTED",
                    "STOPPED",
                    "IN FLIGHT",
                    "REQ/S",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, region: &str, status: HostStatus) -> Host {
        Host {
            id: id.into(),
            region: region.into(),
            address: "10.0.0.1:4281".into(),
            cpus: 2,
            memory_mb: 1024,
            free_cpus: 2,
            free_memory_mb: 1024,
            status,
            last_heartbeat: "2026-01-01T00:00:00Z".into(),
            host_index: 1,
            mesh: None,
            draining: false,
        }
    }

    #[test]
    fn down_hosts_are_counted_and_regions_with_only_down_hosts_listed() {
        let regions = vec![RegionInfo {
            code: "ams".into(),
            name: "Amsterdam, Netherlands".into(),
            free_cpus: 4,
            free_memory_mb: 2048,
            hosts: 2,
        }];
        let hosts = vec![
            host("a1", "ams", HostStatus::Ok),
            // Counted live by the regions answer, down by the (later) host list.
            host("a2", "ams", HostStatus::Unreachable),
            host("s1", "syd", HostStatus::Unreachable),
        ];
        let out = lines(regions.clone(), Vec::new(), &hosts);
        let counts: Vec<(&str, u64, u64)> = out
            .iter()
            .map(|l| (l.code.as_str(), l.hosts, l.down_hosts))
            .collect();
        assert_eq!(counts, [("ams", 1, 1), ("syd", 0, 1)]);
        // Without the host list (no admin token), the regions answer as it is.
        let out = lines(regions, Vec::new(), &[]);
        assert_eq!((out[0].hosts, out[0].down_hosts, out.len()), (2, 0, 1));
    }
}
