//! `aloft releases` and `aloft rollback`.

use aloft_api::{Client, Release, ReleaseStatus};
use clap::Args;

use super::deploy::{self, Plan};
use crate::context::{self, UsageError};
use crate::output;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReleasesArgs {
    #[command(subcommand)]
    pub command: Option<ReleasesCommand>,
    #[arg(long, short)]
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// What `aloft releases` does besides listing.
#[derive(Debug, clap::Subcommand)]
pub enum ReleasesCommand {
    /// Follow a deploy running on the server until it ends (Ctrl-C leaves it running).
    Watch(DeployRef),
    /// Stop a running deploy; the server rolls back what it did.
    Cancel(DeployRef),
}

/// A deploy, by its release's version (`3` or `v3`) or its id.
#[derive(Debug, Args)]
pub struct DeployRef {
    #[arg(value_name = "VERSION|ID")]
    pub deploy: String,
    #[arg(long, short)]
    pub app: Option<String>,
}

/// `aloft releases watch`.
pub async fn watch(args: DeployRef) -> anyhow::Result<()> {
    let app = context::app(args.app)?;
    let api = context::api()?;
    let info = api.get_deploy(&app, &args.deploy).await?;
    println!(
        "Release v{} of {app}: {} ({}), {}",
        info.version,
        info.image,
        info.strategy.as_str(),
        info.status
    );
    deploy::follow_to_end(&api, &app, &info).await
}

/// `aloft releases cancel`.
pub async fn cancel(args: DeployRef) -> anyhow::Result<()> {
    let app = context::app(args.app)?;
    let api = context::api()?;
    let info = api.cancel_deploy(&app, &args.deploy).await?;
    println!(
        "Cancelling deploy {} of release v{}; the server rolls it back (`aloft releases watch v{}` follows it)",
        info.id, info.version, info.version
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The release to go back to (default: the one before the current release).
    #[arg(value_name = "VERSION")]
    pub release: Option<u64>,
    #[arg(long, short)]
    pub app: Option<String>,
    /// rolling, immediate, canary or bluegreen (default: the target release's).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Start the deploy on the server and return at once.
    #[arg(long)]
    pub detach: bool,
}

pub async fn list(args: ReleasesArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ReleasesCommand::Watch(a)) => return watch(a).await,
        Some(ReleasesCommand::Cancel(a)) => return cancel(a).await,
        None => {}
    }
    let app = context::app(args.app)?;
    let releases = context::api()?.list_releases(&app).await?;
    if args.json {
        return output::json(&releases);
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            vec![
                format!("v{}", r.version),
                r.status.to_string(),
                output::short_image(&r.image).to_owned(),
                r.strategy.clone(),
                r.description.clone(),
                r.user.clone(),
                r.created_at.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "VERSION",
            "STATUS",
            "IMAGE",
            "STRATEGY",
            "DESCRIPTION",
            "USER",
            "CREATED",
        ],
        &rows,
    );
    Ok(())
}

/// The release the app runs: the newest that succeeded.
pub fn current(releases: &[Release]) -> Option<&Release> {
    releases
        .iter()
        .find(|r| r.status == ReleaseStatus::Succeeded)
}

/// The region a release's machines go to: `PRIMARY_REGION` of its configs.
pub fn region_of(release: &Release) -> Option<String> {
    release
        .configs
        .values()
        .find_map(|c| c.env.as_ref()?.get("PRIMARY_REGION").cloned())
}

/// Rolls out `target`'s image and configs again as a new release.
pub async fn redeploy(
    api: &Client,
    app: &str,
    target: &Release,
    strategy: Option<String>,
    description: String,
    detach: bool,
) -> anyhow::Result<Release> {
    let region = match region_of(target) {
        Some(r) => r,
        None => deploy::live_machines(api, app)
            .await?
            .first()
            .map(|m| m.region.clone())
            .ok_or_else(|| {
                UsageError(format!(
                    "Release v{} names no primary region and the app has no machines",
                    target.version
                ))
            })?,
    };
    let strategy = deploy::parse_strategy(strategy.as_deref().unwrap_or(&target.strategy))?;
    let plan = Plan {
        app: app.to_owned(),
        region,
        regions: None,
        per_region: 1,
        image: target.image.clone(),
        configs: target.configs.clone(),
        strategy,
        max_unavailable: deploy::DEFAULT_MAX_UNAVAILABLE,
        description,
        wait_timeout: deploy::DEFAULT_WAIT_TIMEOUT,
        drain: deploy::DEFAULT_DRAIN,
        detach,
    };
    deploy::roll_out(api, &plan).await
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let app = context::app(args.app)?;
    let api = context::api()?;
    let releases = api.list_releases(&app).await?;
    let target = match args.release {
        Some(v) => api.get_release(&app, v).await?,
        None => {
            let now = current(&releases).ok_or_else(|| {
                UsageError(format!(
                    "App {app} has no succeeded release to roll back from"
                ))
            })?;
            releases
                .iter()
                .find(|r| r.version < now.version && r.status == ReleaseStatus::Succeeded)
                .cloned()
                .ok_or_else(|| {
                    UsageError(format!(
                        "App {app} has no succeeded release before v{}",
                        now.version
                    ))
                })?
        }
    };
    let description = format!("rollback to v{}", target.version);
    redeploy(&api, &app, &target, args.strategy, description, args.detach).await?;
    Ok(())
}
