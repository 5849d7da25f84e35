//! What `aloft dev` says about traffic while it runs, and the demo app's autoscaling.
//!
//! Every few seconds (`--summary-every`) it prints a line per region that has traffic or whose
//! machines changed: the load entering at the region's edge (from the edges' load reports, as
//! the control plane sums them), the demo app's machines there and what the autoscaler wants,
//! and which regions served the requests of that city's clients (read from the demo app's
//! answers by the city's forwarder).

use std::collections::BTreeMap;
use std::time::Duration;

use aloft_api::{AutoscalePolicy, Client, RegionLoad, RegionScaling};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::netns::Served;
use super::DEMO_APP;

/// The demo app's bounds in every region with `--autoscale`.
pub const DEMO_SCALING: RegionScaling = RegionScaling {
    min: 1,
    max: 3,
    target_concurrency: 5,
};

/// CPUs each simulated host offers to placement. The regions share this machine's cores, and
/// a region must hold several demo machines when the autoscaler asks for them.
pub const HOST_CPUS: u32 = 8;

/// The flags of every region's agent for the host's capacity.
pub fn agent_args() -> Vec<String> {
    vec!["--cpus".into(), HOST_CPUS.to_string()]
}

/// The regions where the demo app has an autoscaling policy (none when it cannot be read).
pub async fn autoscaled_regions(api: &Client) -> Vec<String> {
    api.get_autoscale(DEMO_APP)
        .await
        .map(|p| p.regions.into_keys().collect())
        .unwrap_or_default()
}

/// Autoscaler timings handed to the control plane, and the traffic summary's period.
#[derive(Debug, Clone, Args)]
pub struct TrafficArgs {
    /// Seconds a region must have more machines started than its load asks for before the
    /// autoscaler stops the extra ones.
    #[arg(long, default_value_t = 30)]
    pub autoscale_idle: u64,
    /// Seconds a machine the autoscaler created must have been stopped before it is destroyed.
    #[arg(long, default_value_t = 600)]
    pub autoscale_destroy_after: u64,
    /// Seconds between two traffic summaries (0: none).
    #[arg(long, default_value_t = 5)]
    pub summary_every: u64,
}

impl TrafficArgs {
    /// The control plane's flags for these timings.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--autoscale-idle".into(),
            self.autoscale_idle.to_string(),
            "--autoscale-destroy-after".into(),
            self.autoscale_destroy_after.to_string(),
        ]
    }
}

/// Sets the demo app's policy to [`DEMO_SCALING`] in every region of `regions`.
pub async fn autoscale_demo(api: &Client, regions: &[String]) -> anyhow::Result<()> {
    let policy = AutoscalePolicy {
        regions: regions.iter().map(|r| (r.clone(), DEMO_SCALING)).collect(),
    };
    api.set_autoscale(DEMO_APP, &policy).await?;
    println!(
        "autoscale      {DEMO_APP} in {}: {}..{} machines, {} requests in flight each",
        regions.join(", "),
        DEMO_SCALING.min,
        DEMO_SCALING.max,
        DEMO_SCALING.target_concurrency
    );
    Ok(())
}

/// Prints the traffic summary every `every` until `stop`.
pub fn spawn_summary(
    api: Client,
    served: Served,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut summary = Summary::default();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(load) = api.app_load(DEMO_APP).await else {
                continue;
            };
            for line in summary.update(&load.regions, served.counts()) {
                println!("{line}");
            }
        }
    })
}

/// What the previous summary showed.
#[derive(Debug, Default)]
struct Summary {
    /// Per region: machines started, stopped, and the autoscaler's wish.
    machines: BTreeMap<String, (u32, u32, Option<u32>)>,
    /// Answers per (client city, serving region) so far.
    served: BTreeMap<(String, String), u64>,
}

impl Summary {
    /// The lines for this period: regions with traffic, or whose machines changed.
    fn update(
        &mut self,
        regions: &[RegionLoad],
        served: BTreeMap<(String, String), u64>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        for r in regions {
            let by: Vec<String> = served
                .iter()
                .filter(|((city, _), _)| city == &r.region)
                .filter_map(|(key, n)| {
                    let new = n - self.served.get(key).copied().unwrap_or(0);
                    (new > 0).then(|| format!("{} {new}", key.1))
                })
                .collect();
            let machines = (r.started, r.stopped, r.desired);
            let busy = r.concurrency > 0 || r.requests_per_second > 0.0 || !by.is_empty();
            if busy || self.machines.get(&r.region) != Some(&machines) {
                lines.push(line(r, &by));
            }
            self.machines.insert(r.region.clone(), machines);
        }
        self.served = served;
        lines
    }
}

/// `traffic syd: 158 req/s entering, peak 16 in flight; machines 3 started, 0 stopped,
/// autoscale 1..3 wants 3; from syd served by syd 790`
fn line(r: &RegionLoad, served_by: &[String]) -> String {
    let mut out = format!("traffic {}: ", r.region);
    if r.concurrency > 0 || r.requests_per_second > 0.0 {
        let rps = r.requests_per_second;
        let digits = usize::from(rps < 10.0);
        out.push_str(&format!(
            "{rps:.digits$} req/s entering, peak {} in flight",
            r.concurrency
        ));
    } else {
        out.push_str("no traffic entering");
    }
    out.push_str(&format!(
        "; machines {} started, {} stopped",
        r.started, r.stopped
    ));
    if let Some(s) = r.scaling {
        out.push_str(&format!(", autoscale {}..{}", s.min, s.max));
        if let Some(d) = r.desired {
            out.push_str(&format!(" wants {d}"));
        }
    }
    if !served_by.is_empty() {
        out.push_str(&format!(
            "; from {} served by {}",
            r.region,
            served_by.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, rps: f64, concurrency: u32, started: u32) -> RegionLoad {
        RegionLoad {
            region: name.into(),
            concurrency,
            requests_per_second: rps,
            started,
            stopped: 0,
            desired: Some(started),
            scaling: Some(DEMO_SCALING),
        }
    }

    #[test]
    fn busy_or_changed_regions_get_a_line_quiet_ones_do_not() {
        let mut s = Summary::default();
        let served = |n| BTreeMap::from([(("syd".to_string(), "syd".to_string()), n)]);
        let first = s.update(
            &[region("ams", 0.5, 1, 1), region("syd", 158.4, 16, 1)],
            served(790),
        );
        assert_eq!(
            first,
            [
                "traffic ams: 0.5 req/s entering, peak 1 in flight; machines 1 started, 0 stopped, autoscale 1..3 wants 1",
                "traffic syd: 158 req/s entering, peak 16 in flight; machines 1 started, 0 stopped, autoscale 1..3 wants 1; from syd served by syd 790",
            ]
        );
        // ams is quiet and unchanged; syd's machines grew and its clients were served again.
        let second = s.update(
            &[region("ams", 0.0, 0, 1), region("syd", 0.0, 0, 3)],
            served(800),
        );
        assert_eq!(
            second,
            ["traffic syd: no traffic entering; machines 3 started, 0 stopped, autoscale 1..3 wants 3; from syd served by syd 10"]
        );
        assert!(s
            .update(
                &[region("ams", 0.0, 0, 1), region("syd", 0.0, 0, 3)],
                served(800)
            )
            .is_empty());
    }
}
