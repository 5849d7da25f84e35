//! `aloft status`: the app, its current release, its machines, and per region the live load
//! entering there with the machines started and stopped (and autoscaling bounds).

use clap::Args;
use serde::Serialize;

use super::deploy;
use super::releases::current;
use crate::{context, output};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, short)]
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct MachineLine {
    id: String,
    group: String,
    region: String,
    state: String,
    /// `ok`, or `unreachable` when its host stopped heartbeating (the host is down).
    host_status: aloft_api::HostStatus,
    image: String,
    checks: Vec<aloft_api::CheckStatus>,
}

#[derive(Debug, Serialize)]
struct Status {
    app: aloft_api::App,
    release: Option<aloft_api::Release>,
    /// Per region: live load entering there, machines started and stopped, autoscaling.
    regions: Vec<aloft_api::RegionLoad>,
    machines: Vec<MachineLine>,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let app = context::app(args.app)?;
    let api = context::api()?;
    let info = api.get_app(&app).await?;
    let releases = api.list_releases(&app).await?;
    let release = current(&releases).or(releases.first()).cloned();
    let mut machines: Vec<MachineLine> = deploy::live_machines(&api, &app)
        .await?
        .into_iter()
        .map(|m| MachineLine {
            group: deploy::group_of(&m),
            id: m.id,
            region: m.region,
            state: m.state.to_string(),
            host_status: m.host_status,
            image: m.config.image,
            checks: m.checks,
        })
        .collect();
    machines.sort_by(|a, b| (&a.region, &a.group, &a.id).cmp(&(&b.region, &b.group, &b.id)));
    let regions = api.app_load(&app).await?.regions;
    let status = Status {
        app: info,
        release,
        regions,
        machines,
    };
    if args.json {
        return output::json(&status);
    }
    println!("App      {} ({})", status.app.name, status.app.status);
    match &status.release {
        Some(r) => println!(
            "Release  v{} {} {}",
            r.version,
            r.status,
            output::short_image(&r.image)
        ),
        None => println!("Release  none"),
    }
    println!();
    if !status.regions.is_empty() {
        let rows: Vec<Vec<String>> = status
            .regions
            .iter()
            .map(|r| {
                vec![
                    r.region.clone(),
                    r.started.to_string(),
                    r.stopped.to_string(),
                    r.concurrency.to_string(),
                    format!("{:.1}", r.requests_per_second),
                    match (&r.scaling, r.desired) {
                        (Some(s), Some(d)) => format!(
                            "{}..{} @ {} (wants {d})",
                            s.min, s.max, s.target_concurrency
                        ),
                        (Some(s), None) => {
                            format!("{}..{} @ {}", s.min, s.max, s.target_concurrency)
                        }
                        (None, _) => "-".to_owned(),
                    },
                ]
            })
            .collect();
        output::table(
            &[
                "REGION",
                "STARTED",
                "STOPPED",
                "IN FLIGHT",
                "REQ/S",
                "AUTOSCALE",
            ],
            &rows,
        );
        println!();
    }
    let rows: Vec<Vec<String>> = status
        .machines
        .iter()
        .map(|m| {
            let passing = m.checks.iter().filter(|c| c.status == "passing").count();
            let checks = if m.checks.is_empty() {
                "-".to_owned()
            } else {
                format!("{passing}/{} passing", m.checks.len())
            };
            vec![
                m.region.clone(),
                m.id.clone(),
                m.group.clone(),
                match m.host_status {
                    aloft_api::HostStatus::Unreachable => format!("{} (host down)", m.state),
                    _ => output::state(output::Stream::Stdout, &m.state),
                },
                checks,
                output::short_image(&m.image).to_owned(),
            ]
        })
        .collect();
    output::table(
        &["REGION", "ID", "GROUP", "STATE", "CHECKS", "IMAGE"],
        &rows,
    );
    Ok(())
}
