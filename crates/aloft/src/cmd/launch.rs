//! `aloft launch`: create an app and deploy it. With a `fly.toml` here, the app is launched
//! from it as it is (the file is never rewritten); with no config, a four-line `aloft.toml` is
//! written first.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use super::deploy::{self, DeployArgs};
use crate::context::{self, UsageError};

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The image to deploy (registry reference, OCI layout, docker archive or docker://NAME);
    /// without it, the config's `[build]`, else the `Dockerfile` here, is built with the local
    /// Docker engine.
    #[arg(long, short)]
    pub image: Option<String>,
    /// The app name (default: `app` of fly.toml, else the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// The primary region (default: `primary_region` of fly.toml, else the first region with
    /// live hosts).
    #[arg(long)]
    pub region: Option<String>,
    /// The port the app listens on (for a new aloft.toml).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Two machines per process group instead of one (see `aloft deploy --ha`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ha: Option<bool>,
    /// Create the app (and write aloft.toml when there is no config), but do not deploy.
    #[arg(long)]
    pub no_deploy: bool,
}

/// The config a launch starts from.
enum Start {
    /// `fly.toml`, adopted as it is.
    Fly(Box<aloft_config::Loaded>),
    /// No config: one is written.
    Fresh,
}

pub async fn run(args: LaunchArgs) -> anyhow::Result<()> {
    if Path::new(aloft_config::ALOFT_TOML).exists() {
        return Err(UsageError(
            "aloft.toml already exists here: edit it and run `aloft deploy`".into(),
        )
        .into());
    }
    let fly = Path::new(aloft_config::FLY_TOML);
    let start = if fly.exists() {
        Start::Fly(Box::new(super::config::load(Some(fly))?))
    } else {
        Start::Fresh
    };
    let (from_config, has_build) = match &start {
        Start::Fly(l) => (
            l.config.app.clone(),
            l.config
                .build
                .as_ref()
                .is_some_and(|b| b.image.is_some() || b.dockerfile.is_some()),
        ),
        Start::Fresh => (None, false),
    };
    if !args.no_deploy && args.image.is_none() && !has_build && !Path::new("Dockerfile").is_file() {
        return Err(
            UsageError("Pass --image REF, add a Dockerfile, or pass --no-deploy".into()).into(),
        );
    }
    let name = match args.name.clone().or(from_config) {
        Some(n) => n,
        None => default_name()?,
    };
    if !aloft_config::valid_app_name(&name) {
        return Err(UsageError(format!(
            "App name {name:?} must be 2-63 lowercase letters, digits and inner dashes: pass --name"
        ))
        .into());
    }
    let api = context::api()?;
    let configured = match &start {
        Start::Fly(l) => l.config.primary_region.clone(),
        Start::Fresh => None,
    };
    let region = match args.region.clone().or(configured) {
        Some(r) => r,
        None => api
            .platform_regions()
            .await?
            .regions
            .first()
            .map(|r| r.code.clone())
            .ok_or_else(|| UsageError("No region has live hosts: pass --region".into()))?,
    };
    match api
        .create_app(&aloft_api::CreateAppRequest {
            app_name: name.clone(),
            org_slug: None,
            network: None,
        })
        .await
    {
        Ok(_) => println!("Created app {name}"),
        Err(e) if e.status() == Some(409) => {
            return Err(UsageError(format!(
                "App {name} already exists: run `aloft deploy` to deploy it, or pass --name \
                 for a new app"
            ))
            .into())
        }
        Err(e) => return Err(e.into()),
    }
    let config = match start {
        Start::Fly(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            println!("Using fly.toml as it is (app {name}, primary region {region})");
            PathBuf::from(aloft_config::FLY_TOML)
        }
        Start::Fresh => {
            let path = PathBuf::from(aloft_config::ALOFT_TOML);
            let text = aloft_config::AppConfig::minimal(&name, &region, args.port).to_toml_string();
            std::fs::write(&path, &text)
                .with_context(|| format!("Cannot write {}", path.display()))?;
            println!("Wrote aloft.toml");
            path
        }
    };
    if args.no_deploy {
        return Ok(());
    }
    deploy::run(DeployArgs {
        config: Some(config),
        image: args.image,
        app: Some(name),
        primary_region: Some(region),
        ha: args.ha,
        ..DeployArgs::default()
    })
    .await
}

/// The current directory's name, lowercased, other characters as dashes.
fn default_name() -> anyhow::Result<String> {
    let dir = std::env::current_dir().context("Cannot read the current directory")?;
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Ok(name.trim_matches('-').to_owned())
}
