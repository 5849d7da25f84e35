//! `aloft launch`: create an app, write its four-line `aloft.toml`, and deploy it.

use std::path::Path;

use anyhow::Context as _;
use clap::Args;

use super::deploy::{self, DeployArgs};
use crate::context::{self, UsageError};

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The image to deploy (registry reference, OCI layout, docker archive or docker://NAME);
    /// without it, the `Dockerfile` here is built with the local Docker engine.
    #[arg(long, short)]
    pub image: Option<String>,
    /// The app name (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// The primary region (default: the first region with live hosts).
    #[arg(long)]
    pub region: Option<String>,
    /// The port the app listens on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Create the app and write the config, but do not deploy.
    #[arg(long)]
    pub no_deploy: bool,
}

pub async fn run(args: LaunchArgs) -> anyhow::Result<()> {
    let path = Path::new(aloft_config::ALOFT_TOML);
    if path.exists() {
        return Err(UsageError(
            "aloft.toml already exists here: edit it and run `aloft deploy`".into(),
        )
        .into());
    }
    if !args.no_deploy && args.image.is_none() && !Path::new("Dockerfile").is_file() {
        return Err(
            UsageError("Pass --image REF, add a Dockerfile, or pass --no-deploy".into()).into(),
        );
    }
    let name = match args.name {
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
    let region = match args.region {
        Some(r) => r,
        None => api
            .platform_regions()
            .await?
            .regions
            .first()
            .map(|r| r.code.clone())
            .ok_or_else(|| UsageError("No region has live hosts: pass --region".into()))?,
    };
    api.create_app(&aloft_api::CreateAppRequest {
        app_name: name.clone(),
        org_slug: None,
        network: None,
    })
    .await?;
    println!("Created app {name}");
    let text = aloft_config::AppConfig::minimal(&name, &region, args.port).to_toml_string();
    std::fs::write(path, &text).with_context(|| format!("Cannot write {}", path.display()))?;
    println!("Wrote aloft.toml");
    if args.no_deploy {
        return Ok(());
    }
    deploy::run(DeployArgs {
        image: args.image,
        strategy: None,
        detach: false,
        app: Some(name),
        wait_timeout: None,
        drain: None,
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
