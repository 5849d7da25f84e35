//! `aloft checks list`: each machine's health checks, as its host last reported them.

use aloft_api::CheckStatus;
use clap::Subcommand;
use serde::Serialize;

use super::deploy;
use crate::context;
use crate::output::{self, Paint, Stream};

#[derive(Debug, Subcommand)]
pub enum ChecksCommand {
    /// Every check of every machine of the app: status, when it last changed, its output.
    #[command(alias = "ls")]
    List {
        #[arg(long, short)]
        app: Option<String>,
        /// Only checks with this name.
        #[arg(long)]
        check_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// One machine of `checks list --json`.
#[derive(Debug, Serialize)]
struct MachineChecks {
    machine: String,
    region: String,
    state: String,
    /// How many checks its config declares (results may lag behind a start).
    declared: usize,
    checks: Vec<CheckStatus>,
}

pub async fn run(cmd: ChecksCommand) -> anyhow::Result<()> {
    let ChecksCommand::List {
        app,
        check_name,
        json,
    } = cmd;
    let app = context::app(app)?;
    let api = context::api()?;
    let mut machines = deploy::live_machines(&api, &app).await?;
    machines.sort_by(|a, b| (&a.region, &a.id).cmp(&(&b.region, &b.id)));
    let lines: Vec<MachineChecks> = machines
        .into_iter()
        .map(|m| MachineChecks {
            declared: deploy::checks_in(&m.config),
            machine: m.id,
            region: m.region,
            state: m.state.to_string(),
            checks: m
                .checks
                .into_iter()
                .filter(|c| check_name.as_ref().is_none_or(|n| &c.name == n))
                .collect(),
        })
        .collect();
    if json {
        return output::json(&lines);
    }
    let mut rows = Vec::new();
    for m in &lines {
        if m.checks.is_empty() && m.declared > 0 && check_name.is_none() {
            rows.push(vec![
                m.machine.clone(),
                m.region.clone(),
                "-".into(),
                format!(
                    "no results yet ({} declared, machine {})",
                    m.declared, m.state
                ),
                "-".into(),
                String::new(),
            ]);
        }
        for c in &m.checks {
            rows.push(vec![
                m.machine.clone(),
                m.region.clone(),
                c.name.clone(),
                status(&c.status),
                c.updated_at.clone(),
                c.output
                    .trim()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ]);
        }
    }
    if rows.is_empty() {
        println!("No machine of {app} has health checks");
        return Ok(());
    }
    output::table(
        &["MACHINE", "REGION", "NAME", "STATUS", "UPDATED", "OUTPUT"],
        &rows,
    );
    Ok(())
}

fn status(status: &str) -> String {
    let paint = match status {
        "passing" => Paint::Green,
        "warning" => Paint::Yellow,
        _ => Paint::Red,
    };
    output::paint(Stream::Stdout, paint, status)
}
