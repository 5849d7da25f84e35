//! `aloft scale auto`: demand-driven scaling per region, run by the control plane.

use aloft_api::{AutoscalePolicy, Client, RegionScaling};
use clap::Args;

use crate::context::{self, UsageError};
use crate::output;

#[derive(Debug, Args)]
pub struct AutoArgs {
    /// Region(s) the bounds apply to, repeatable or comma-separated.
    #[arg(long, short, value_delimiter = ',')]
    pub region: Vec<String>,
    /// Started machines kept whatever the load.
    #[arg(long)]
    pub min: Option<u32>,
    /// Most started machines.
    #[arg(long)]
    pub max: Option<u32>,
    /// In-flight requests per started machine to aim for.
    #[arg(long)]
    pub target: Option<u32>,
    /// Turn autoscaling off in the given regions (every region without --region).
    #[arg(long, conflicts_with_all = ["min", "max", "target"])]
    pub off: bool,
    #[arg(long, short)]
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn regions(flags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = flags
        .iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

pub async fn run(args: AutoArgs) -> anyhow::Result<()> {
    let app = context::app(args.app)?;
    let api = context::api()?;
    let regions = regions(&args.region);
    let mut policy = api.get_autoscale(&app).await?;
    if args.off {
        if regions.is_empty() {
            policy.regions.clear();
        } else {
            for r in &regions {
                policy.regions.remove(r);
            }
        }
    } else {
        if regions.is_empty() {
            return Err(UsageError(
                "Give the region(s) to autoscale with --region, e.g. --region syd".into(),
            )
            .into());
        }
        let (Some(min), Some(max), Some(target)) = (args.min, args.max, args.target) else {
            return Err(UsageError(
                "Give --min, --max and --target (or --off to turn autoscaling off)".into(),
            )
            .into());
        };
        for r in regions {
            policy.regions.insert(
                r,
                RegionScaling {
                    min,
                    max,
                    target_concurrency: target,
                },
            );
        }
    }
    let policy = api.set_autoscale(&app, &policy).await?;
    if args.json {
        return output::json(&policy);
    }
    if policy.regions.is_empty() {
        println!("Autoscaling is off for {app}");
    } else {
        print_policy(&policy);
    }
    Ok(())
}

/// Prints the policy as a table.
pub fn print_policy(policy: &AutoscalePolicy) {
    let rows: Vec<Vec<String>> = policy
        .regions
        .iter()
        .map(|(region, s)| {
            vec![
                region.clone(),
                s.min.to_string(),
                s.max.to_string(),
                s.target_concurrency.to_string(),
            ]
        })
        .collect();
    output::table(&["AUTOSCALE REGION", "MIN", "MAX", "TARGET"], &rows);
}

/// Takes `regions` out of the app's policy (a pinned count wins over autoscaling); returns the
/// regions that were autoscaled.
pub async fn unpin(api: &Client, app: &str, regions: &[String]) -> anyhow::Result<Vec<String>> {
    let mut policy = api.get_autoscale(app).await?;
    let taken: Vec<String> = regions
        .iter()
        .filter(|r| policy.regions.remove(*r).is_some())
        .cloned()
        .collect();
    if !taken.is_empty() {
        api.set_autoscale(app, &policy).await?;
    }
    Ok(taken)
}
