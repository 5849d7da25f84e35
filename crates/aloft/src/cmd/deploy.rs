//! `aloft deploy`: push the image, record a release, roll it out over the Machines API, and
//! roll back the machines already updated when one fails.
//!
//! This first cut drives the rollout from the CLI; the control plane only records releases.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aloft_api::{
    Client, CreateMachineRequest, CreateReleaseRequest, ListMachinesQuery, Machine, MachineConfig,
    MachineState, Release, ReleaseStatus,
};
use anyhow::Context as _;
use clap::Args;

use crate::context::{self, UsageError};

/// How long to wait for each machine when `[deploy] wait_timeout` is not set.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a machine without checks must stay up, without exiting, to count as healthy.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A registry reference, an OCI layout (DIR[:TAG]), a `docker save` archive or
    /// docker://NAME; defaults to `[build] image` of the config.
    #[arg(long, short)]
    pub image: Option<String>,
    /// rolling, immediate, canary or bluegreen (default: `[deploy] strategy`).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Do not wait for machines to become healthy.
    #[arg(long)]
    pub detach: bool,
    /// The app (default: `app` of the config).
    #[arg(long, short)]
    pub app: Option<String>,
    /// Per-machine timeout, e.g. `2m` (default: `[deploy] wait_timeout`, else 2m).
    #[arg(long)]
    pub wait_timeout: Option<String>,
}

/// Everything a rollout needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub app: String,
    pub region: String,
    pub image: String,
    pub configs: BTreeMap<String, MachineConfig>,
    pub strategy: String,
    pub description: String,
    pub wait_timeout: Duration,
    pub detach: bool,
}

pub async fn run(args: DeployArgs) -> anyhow::Result<()> {
    let loaded = aloft_config::load_dir(Path::new("."))?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let config = loaded.config;
    let app = match args.app.clone().or_else(|| config.app.clone()) {
        Some(app) => app,
        None => context::app(None)?,
    };
    let region = config.primary_region.clone().ok_or_else(|| {
        UsageError(format!(
            "{} has no primary_region: add `primary_region = \"ams\"`",
            loaded.path.display()
        ))
    })?;
    let source = args
        .image
        .clone()
        .or_else(|| config.build.as_ref().and_then(|b| b.image.clone()))
        .ok_or_else(|| {
            UsageError("No image: pass --image REF or set [build] image in the config".into())
        })?;
    let api = context::api()?;
    let image = resolve_image(&app, &source).await?;
    let strategy = args
        .strategy
        .clone()
        .unwrap_or_else(|| config.deploy.strategy.as_str().to_owned());
    let wait_timeout = match &args.wait_timeout {
        Some(t) => aloft_config::parse_duration(t).ok_or_else(|| {
            UsageError(format!(
                "--wait-timeout {t:?} is not a duration such as 90s or 2m"
            ))
        })?,
        None => config.deploy.wait_timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT),
    };
    let plan = Plan {
        configs: config.machine_configs(&image),
        app,
        region,
        image,
        strategy,
        description: "aloft deploy".to_owned(),
        wait_timeout,
        detach: args.detach,
    };
    roll_out(&api, &plan).await.map(drop)
}

/// A registry reference as-is; a local image (layout dir, archive, docker://) pushed to the
/// built-in registry as `APP:deployment-<digest>` first.
pub async fn resolve_image(app: &str, source: &str) -> anyhow::Result<String> {
    let local = source.starts_with("docker://")
        || Path::new(source).exists()
        || source
            .rsplit_once(':')
            .is_some_and(|(p, _)| Path::new(p).is_dir());
    if !local {
        return Ok(source.to_owned());
    }
    let (url, token) = context::api_url_and_token()?;
    let registry = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let scratch = std::env::temp_dir().join(format!("aloft-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("Cannot create {}", scratch.display()))?;
    let pushable = super::image::load_source(source, &scratch)?;
    // Tagged by content, so a later push cannot move what this release runs.
    let digest = aloft_image::Digest::sha256_of(&pushable.manifest);
    let short: String = digest.hex().chars().take(12).collect();
    let dest = format!("{registry}/{app}:deployment-{short}");
    let target =
        aloft_image::push::PushTarget::parse(&dest, Some(token), url.starts_with("http://"))?;
    super::image::push_with_progress(&pushable, &target).await?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("Pushed {dest}");
    Ok(dest)
}

/// What to undo on failure.
enum Undo {
    Updated { id: String, old: Box<MachineConfig> },
    Created { id: String },
}

/// Records a release and rolls it out; on failure rolls back and marks it `failed`.
pub async fn roll_out(api: &Client, plan: &Plan) -> anyhow::Result<Release> {
    let release = api
        .create_release(
            &plan.app,
            &CreateReleaseRequest {
                image: plan.image.clone(),
                configs: plan.configs.clone(),
                strategy: plan.strategy.clone(),
                description: plan.description.clone(),
            },
        )
        .await?;
    let v = release.version;
    println!(
        "Release v{v} of {}: {} ({})",
        plan.app, plan.image, plan.strategy
    );
    api.set_release_status(&plan.app, v, ReleaseStatus::Running, None)
        .await?;
    let mut undo = Vec::new();
    match update_all(api, plan, &mut undo).await {
        Ok(()) => {
            let done = api
                .set_release_status(&plan.app, v, ReleaseStatus::Succeeded, None)
                .await?;
            println!("Release v{v} succeeded");
            Ok(done)
        }
        Err(reason) => {
            let reason = format!("{reason:#}");
            let count = undo.len();
            let rolled = roll_back(api, plan, undo).await;
            api.set_release_status(&plan.app, v, ReleaseStatus::Failed, Some(&reason))
                .await?;
            match rolled {
                Ok(()) => anyhow::bail!(
                    "Release v{v} failed: {reason}; rolled back {count} machine(s) to the previous release"
                ),
                Err(e) => anyhow::bail!(
                    "Release v{v} failed: {reason}; rolling back also failed: {e:#}"
                ),
            }
        }
    }
}

/// The process group a machine belongs to (`app` when its metadata does not say).
pub fn group_of(m: &Machine) -> String {
    m.config
        .metadata
        .as_ref()
        .and_then(|md| md.get("fly_process_group").cloned())
        .unwrap_or_else(|| aloft_config::DEFAULT_PROCESS_GROUP.to_owned())
}

/// The app's live machines.
pub async fn live_machines(api: &Client, app: &str) -> anyhow::Result<Vec<Machine>> {
    let all = api
        .list_machines(app, &ListMachinesQuery::default())
        .await?;
    Ok(all
        .into_iter()
        .filter(|m| !matches!(m.state, MachineState::Destroyed | MachineState::Destroying))
        .collect())
}

async fn update_all(api: &Client, plan: &Plan, undo: &mut Vec<Undo>) -> anyhow::Result<()> {
    let machines = live_machines(api, &plan.app).await?;
    // `immediate` and --detach never wait; the others (canary and bluegreen reduced to
    // rolling in this first cut) wait for each machine before the next.
    let wait = !plan.detach && plan.strategy != "immediate";
    for (group, config) in &plan.configs {
        let mine: Vec<&Machine> = machines.iter().filter(|m| &group_of(m) == group).collect();
        if mine.is_empty() {
            let m = api
                .create_machine(
                    &plan.app,
                    &CreateMachineRequest {
                        config: config.clone(),
                        region: Some(plan.region.clone()),
                        ..CreateMachineRequest::default()
                    },
                )
                .await?;
            println!("  {group}: created machine {} in {}", m.id, plan.region);
            undo.push(Undo::Created { id: m.id.clone() });
            if wait {
                wait_healthy(api, &plan.app, &m, plan.wait_timeout).await?;
            }
            continue;
        }
        for old in mine {
            let m = api
                .update_machine(
                    &plan.app,
                    &old.id,
                    &CreateMachineRequest {
                        config: config.clone(),
                        ..CreateMachineRequest::default()
                    },
                )
                .await
                .with_context(|| format!("Cannot update machine {}", old.id))?;
            println!("  {group}: updating machine {} in {}", m.id, m.region);
            undo.push(Undo::Updated {
                id: old.id.clone(),
                old: Box::new(old.config.clone()),
            });
            if wait {
                wait_healthy(api, &plan.app, &m, plan.wait_timeout).await?;
            }
        }
    }
    Ok(())
}

async fn roll_back(api: &Client, plan: &Plan, undo: Vec<Undo>) -> anyhow::Result<()> {
    for step in undo.into_iter().rev() {
        match step {
            Undo::Updated { id, old } => {
                let m = api
                    .update_machine(
                        &plan.app,
                        &id,
                        &CreateMachineRequest {
                            config: *old,
                            ..CreateMachineRequest::default()
                        },
                    )
                    .await
                    .with_context(|| format!("Cannot roll back machine {id}"))?;
                println!("  rolled back machine {id} to {}", m.config.image);
            }
            Undo::Created { id } => {
                api.delete_machine(&plan.app, &id, true)
                    .await
                    .with_context(|| format!("Cannot destroy new machine {id}"))?;
                println!("  destroyed new machine {id}");
            }
        }
    }
    Ok(())
}

/// Waits until the machine runs `updated`'s instance and is healthy: its checks pass, or,
/// without checks, it stays up for [`DEFAULT_SETTLE`] without exiting.
async fn wait_healthy(
    api: &Client,
    app: &str,
    updated: &Machine,
    timeout: Duration,
) -> anyhow::Result<()> {
    let id = &updated.id;
    let instance = &updated.instance_id;
    // Exit events the update's answer did not list belong to the new instance.
    let known: std::collections::HashSet<&str> =
        updated.events.iter().map(|e| e.id.as_str()).collect();
    let since = updated
        .events
        .iter()
        .map(|e| e.timestamp)
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + timeout;
    let mut started_at: Option<Instant> = None;
    loop {
        let m = api.get_machine(app, id).await?;
        if &m.instance_id != instance {
            anyhow::bail!("machine {id} was changed by someone else during the deploy");
        }
        if let Some(exit) = m
            .events
            .iter()
            .find(|e| e.kind == "exit" && e.timestamp >= since && !known.contains(e.id.as_str()))
        {
            let why = exit
                .request
                .as_ref()
                .and_then(|r| r.get("message").and_then(|v| v.as_str()))
                .map(str::to_owned)
                .unwrap_or_else(|| exit.status.clone());
            anyhow::bail!("machine {id} exited after starting ({why})");
        }
        match m.state {
            MachineState::Started => {
                let since_start = *started_at.get_or_insert_with(Instant::now);
                let want = checks_in(&m.config);
                if want == 0 {
                    if since_start.elapsed() >= DEFAULT_SETTLE {
                        return Ok(());
                    }
                } else if m.checks.len() >= want && m.checks.iter().all(|c| c.status == "passing") {
                    return Ok(());
                }
            }
            MachineState::Failed | MachineState::Stopped | MachineState::Destroyed => {
                anyhow::bail!("machine {id} is {} instead of started", m.state);
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            if let Some(c) = m.checks.iter().find(|c| c.status != "passing") {
                anyhow::bail!(
                    "machine {id} check {} is {} after {}s: {}",
                    c.name,
                    c.status,
                    timeout.as_secs(),
                    c.output.trim()
                );
            }
            if m.state == MachineState::Started {
                eprintln!("warning: machine {id} reported no check results; counting it healthy");
                return Ok(());
            }
            anyhow::bail!(
                "machine {id} is {} after {}s, not started",
                m.state,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How many checks a config asks the agent to run (top-level and service checks).
fn checks_in(config: &MachineConfig) -> usize {
    let top = config.checks.as_ref().map_or(0, BTreeMap::len);
    let services: usize = config
        .services
        .iter()
        .flatten()
        .map(|s| s.checks.as_ref().map_or(0, Vec::len))
        .sum();
    top + services
}
