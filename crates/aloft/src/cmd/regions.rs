//! `aloft regions …`

use aloft_api::{RegionInfo, RegionLoad};
use clap::Subcommand;
use serde::Serialize;

use crate::{context, output};

#[derive(Debug, Subcommand)]
pub enum RegionsCommand {
    /// Regions with live hosts: free capacity, machines started and stopped, and the live load
    /// entering there (of every app an admin token sees, else of the token's app).
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
    free_cpus: i64,
    free_memory_mb: i64,
    started: u32,
    stopped: u32,
    /// In-flight requests entering at the region's edges.
    concurrency: u32,
    requests_per_second: f64,
}

fn lines(regions: Vec<RegionInfo>, load: Vec<RegionLoad>) -> Vec<RegionLine> {
    let mut out: Vec<RegionLine> = regions
        .into_iter()
        .map(|r| RegionLine {
            code: r.code,
            name: r.name,
            hosts: r.hosts,
            free_cpus: r.free_cpus,
            free_memory_mb: r.free_memory_mb,
            started: 0,
            stopped: 0,
            concurrency: 0,
            requests_per_second: 0.0,
        })
        .collect();
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
            let lines = lines(regions.regions, load);
            if json {
                return output::json(&lines);
            }
            let rows: Vec<Vec<String>> = lines
                .iter()
                .map(|r| {
                    vec![
                        r.code.clone(),
                        r.name.clone(),
                        r.hosts.to_string(),
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
