//! `aloft deploy`: push the image, record a release, and roll it out over the Machines API with
//! the release's strategy, moving traffic with cordons so no request meets a stopping machine,
//! and rolling back by itself when a new machine is not healthy.
//!
//! The CLI builds and pushes the image and computes the plan; the control plane runs the
//! rollout (the `aloft-deploy` engine), so a deploy goes on when the CLI goes away. The child
//! modules: `follow` (the server's deploy events as progress lines), `progress` (what a
//! deploy shows while it runs), `health` (when a machine counts as healthy, for `aloft
//! restart`) and `build` (building the image from a Dockerfile when there is none).

mod build;
mod follow;
mod health;
mod progress;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aloft_api::deploy::{DeployPlan, DeployStrategy, MaxUnavailableSpec, ReleaseCommandSpec};
use aloft_api::{Client, ListMachinesQuery, Machine, MachineConfig, MachineState, Release};
use aloft_config::{MaxUnavailable, Strategy};
use anyhow::Context as _;
use clap::Args;

use crate::context::{self, UsageError};

pub use follow::follow_to_end;
pub use health::{checks_in, event_reason, reason_of, wait_healthy, MachineFailure};
pub use progress::{Progress, Step};

/// How long a cordoned machine keeps its in-flight requests before it is stopped.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(1);

/// `[deploy] release_command` and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseCommand {
    pub command: String,
    pub timeout: Duration,
}

/// How long to wait for each machine when `[deploy] wait_timeout` is not set.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// `[deploy] max_unavailable` when the config does not say (Fly's default).
pub const DEFAULT_MAX_UNAVAILABLE: MaxUnavailable = MaxUnavailable::Fraction(0.33);

#[derive(Debug, Args, Default)]
pub struct DeployArgs {
    /// The config file (default: aloft.toml, else fly.toml, in this directory).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A registry reference, an OCI layout (DIR[:TAG]), a `docker save` archive or
    /// docker://NAME; defaults to `[build] image` of the config, else the image built from
    /// `[build] dockerfile` (or a `Dockerfile` beside the config) with the local Docker engine.
    #[arg(long, short)]
    pub image: Option<String>,
    /// A build argument for `docker build`, NAME=VALUE (repeatable; adds to `[build.args]`).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub build_args: Vec<String>,
    /// An environment variable for the machines, NAME=VALUE (repeatable; adds to `[env]`).
    #[arg(long, short, value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Deploy only to these regions (comma-separated): their machines are replaced, and a
    /// process group with no machine there gets one (two with --ha). Others are left alone.
    #[arg(long, value_delimiter = ',', value_name = "REGION,…")]
    pub regions: Vec<String>,
    /// A process group without machines gets two (in the primary region, or in each of
    /// --regions) instead of one, so one can fail or restart while the other serves.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ha: Option<bool>,
    /// The primary region (default: `primary_region` of the config).
    #[arg(long, value_name = "REGION")]
    pub primary_region: Option<String>,
    /// rolling, immediate, canary or bluegreen (default: `[deploy] strategy`).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Start the deploy on the server and return at once, printing its id (follow it with
    /// `aloft releases watch VERSION`).
    #[arg(long)]
    pub detach: bool,
    /// The app (default: `app` of the config).
    #[arg(long, short)]
    pub app: Option<String>,
    /// Per-machine timeout, e.g. `2m` (default: `[deploy] wait_timeout`, else 2m).
    #[arg(long)]
    pub wait_timeout: Option<String>,
    /// How long a cordoned machine keeps its in-flight requests before it is stopped, e.g.
    /// `1s` (default 1s).
    #[arg(long)]
    pub drain: Option<String>,
}

/// Everything a rollout needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub app: String,
    /// The primary region.
    pub region: String,
    /// `--regions`: only machines there are touched, and groups get machines there.
    pub regions: Option<Vec<String>>,
    /// Machines a group without any gets per region: 1, or 2 with `--ha`.
    pub per_region: usize,
    pub image: String,
    pub configs: BTreeMap<String, MachineConfig>,
    pub strategy: Strategy,
    pub max_unavailable: MaxUnavailable,
    pub description: String,
    pub wait_timeout: Duration,
    pub drain: Duration,
    pub detach: bool,
}

/// Where a deploy's image comes from.
enum Source {
    /// `--image` or `[build] image`.
    Image(String),
    /// Built from a Dockerfile first.
    Build(build::BuildSpec),
}

/// A strategy name as `--strategy` and releases spell it.
pub fn parse_strategy(name: &str) -> Result<Strategy, UsageError> {
    match name {
        "rolling" => Ok(Strategy::Rolling),
        "immediate" => Ok(Strategy::Immediate),
        "canary" => Ok(Strategy::Canary),
        "bluegreen" => Ok(Strategy::Bluegreen),
        other => Err(UsageError(format!(
            "Strategy {other:?} is not one of rolling, immediate, canary, bluegreen"
        ))),
    }
}

/// A duration flag such as `90s` or `2m`.
pub fn parse_flag_duration(flag: &str, value: &str) -> Result<Duration, UsageError> {
    aloft_config::parse_duration(value).ok_or_else(|| {
        UsageError(format!(
            "{flag} {value:?} is not a duration such as 90s or 2m"
        ))
    })
}

pub async fn run(args: DeployArgs) -> anyhow::Result<()> {
    let loaded = super::config::load(args.config.as_deref())?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let mut config = loaded.config;
    let app = match args.app.clone().or_else(|| config.app.clone()) {
        Some(app) => app,
        None => context::app(None)?,
    };
    let region = args
        .primary_region
        .clone()
        .or_else(|| config.primary_region.clone());
    let region = region.ok_or_else(|| {
        UsageError(format!(
            "{} has no primary_region: add `primary_region = \"ams\"` or pass --primary-region",
            loaded.path.display()
        ))
    })?;
    let env = super::machine::key_values(&args.env, "--env")?;
    let build_args = super::machine::key_values(&args.build_args, "--build-arg")?;
    if !build_args.is_empty() {
        config
            .build
            .get_or_insert_with(Default::default)
            .args
            .extend(build_args);
    }
    let mut regions = args.regions.clone();
    let mut seen = std::collections::HashSet::new();
    regions.retain(|r| seen.insert(r.clone()));
    let regions = (!regions.is_empty()).then_some(regions);
    if let Some(bad) = regions
        .iter()
        .flatten()
        .find(|r| r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(UsageError(format!("--regions: {bad:?} is not a region code")).into());
    }
    let given = args
        .image
        .clone()
        .or_else(|| config.build.as_ref().and_then(|b| b.image.clone()));
    let dir = config_dir(&loaded.path)?;
    let source = match given {
        Some(image) => Source::Image(image),
        None => Source::Build(build::spec(&dir, config.build.as_ref()).ok_or_else(|| {
            UsageError(
                "No image: pass --image REF, set [build] image in the config, or add a Dockerfile"
                    .into(),
            )
        })?),
    };
    let strategy = match &args.strategy {
        Some(s) => parse_strategy(s)?,
        None => config.deploy.strategy,
    };
    let wait_timeout = match &args.wait_timeout {
        Some(t) => parse_flag_duration("--wait-timeout", t)?,
        None => config.deploy.wait_timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT),
    };
    let drain = match &args.drain {
        Some(t) => parse_flag_duration("--drain", t)?,
        None => DEFAULT_DRAIN,
    };
    let release_command = config
        .deploy
        .release_command
        .clone()
        .map(|command| ReleaseCommand {
            command,
            timeout: config.deploy.release_command_timeout,
        });
    if let Some(rc) = &release_command {
        // A command line that cannot be split is refused before anything is built or recorded.
        aloft_deploy::release_argv(&rc.command).map_err(|e| UsageError(e.to_string()))?;
    }
    let api = context::api()?;
    // The token, the app and the registry are checked before anything is built or pushed.
    let destination = super::image::Destination::check(&api, &app).await?;
    let source = match source {
        Source::Image(image) => image,
        Source::Build(spec) => {
            let tag = build::local_tag(&app);
            build::docker_build(spec, tag.clone()).await?;
            format!("docker://{tag}")
        }
    };
    let image = resolve_image(&destination, &source).await?;
    let mut configs = config.machine_configs(&image);
    if !env.is_empty() {
        for c in configs.values_mut() {
            c.env
                .get_or_insert_with(Default::default)
                .extend(env.clone());
        }
    }
    if strategy == Strategy::Bluegreen && !configs.values().any(|c| health::checks_in(c) > 0) {
        return Err(UsageError(
            "The bluegreen strategy needs at least one health check ([[http_service.checks]], \
             [[services.http_checks]], [[services.tcp_checks]] or [checks])"
                .into(),
        )
        .into());
    }
    let plan = Plan {
        configs,
        app,
        region,
        regions,
        per_region: if args.ha.unwrap_or(false) { 2 } else { 1 },
        image,
        strategy,
        max_unavailable: config.deploy.max_unavailable,
        description: "aloft deploy".to_owned(),
        wait_timeout,
        drain,
        detach: args.detach,
    };
    roll_out_with(&api, &plan, release_command.as_ref())
        .await
        .map(drop)
}

/// The directory a config file is in (builds use it as their context).
fn config_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("Cannot read the current directory")?;
    Ok(match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => cwd.join(p),
        _ => cwd,
    })
}

/// A registry reference as-is; a local image (layout dir, archive, docker://) pushed to the
/// built-in registry as `APP:deployment-<digest>` first, and named by the registry's
/// cluster-wide name pinned to its digest.
pub async fn resolve_image(
    destination: &super::image::Destination,
    source: &str,
) -> anyhow::Result<String> {
    if !is_local(source) {
        return Ok(source.to_owned());
    }
    let scratch = std::env::temp_dir().join(format!("aloft-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("Cannot create {}", scratch.display()))?;
    let pushed = match super::image::load_source(source, &scratch) {
        Ok(pushable) => {
            // Tagged by content, so a later push cannot move what this release runs.
            let digest = aloft_image::Digest::sha256_of(&pushable.manifest);
            let short: String = digest.hex().chars().take(12).collect();
            destination
                .push(&pushable, &format!("deployment-{short}"))
                .await
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let reference = pushed?;
    println!("Pushed {reference}");
    Ok(reference)
}

/// Whether `source` names a local image (layout dir, archive, docker://) rather than a
/// registry reference.
fn is_local(source: &str) -> bool {
    source.starts_with("docker://")
        || Path::new(source).exists()
        || source
            .rsplit_once(':')
            .is_some_and(|(p, _)| Path::new(p).is_dir())
}

/// Records a release and rolls it out on the server, following it to its end; on failure
/// the server rolls back and marks the release `failed`.
pub async fn roll_out(api: &Client, plan: &Plan) -> anyhow::Result<Release> {
    roll_out_with(api, plan, None).await
}

/// [`roll_out`], running `release_command` first: when it fails the release is marked
/// `failed` and no machine of the app is touched.
pub async fn roll_out_with(
    api: &Client,
    plan: &Plan,
    release_command: Option<&ReleaseCommand>,
) -> anyhow::Result<Release> {
    let info = api
        .start_deploy(&plan.app, &server_plan(plan, release_command))
        .await?;
    let v = info.version;
    println!(
        "Release v{v} of {}: {} ({})",
        plan.app,
        plan.image,
        plan.strategy.as_str()
    );
    if plan.detach {
        println!(
            "Deploy {} runs on the server; follow it with `aloft releases watch v{v}`",
            info.id
        );
    } else {
        follow::follow_to_end(api, &plan.app, &info).await?;
    }
    Ok(api.get_release(&plan.app, v).await?)
}

/// What the server needs to roll `plan` out.
fn server_plan(plan: &Plan, release_command: Option<&ReleaseCommand>) -> DeployPlan {
    DeployPlan {
        image: plan.image.clone(),
        configs: plan.configs.clone(),
        strategy: match plan.strategy {
            Strategy::Rolling => DeployStrategy::Rolling,
            Strategy::Immediate => DeployStrategy::Immediate,
            Strategy::Canary => DeployStrategy::Canary,
            Strategy::Bluegreen => DeployStrategy::Bluegreen,
        },
        max_unavailable: match plan.max_unavailable {
            MaxUnavailable::Fraction(f) => MaxUnavailableSpec::Fraction(f),
            MaxUnavailable::Count(c) => MaxUnavailableSpec::Count(c),
        },
        region: plan.region.clone(),
        regions: plan.regions.clone(),
        per_region: plan.per_region as u32,
        wait_timeout_secs: plan.wait_timeout.as_secs().max(1),
        drain_ms: plan.drain.as_millis() as u64,
        release_command: release_command.map(|rc| ReleaseCommandSpec {
            command: rc.command.clone(),
            timeout_secs: rc.timeout.as_secs().max(1),
        }),
        description: plan.description.clone(),
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
