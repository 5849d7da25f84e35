//! `aloft secrets …`: encrypted app secrets that reach machines as environment variables.

use std::collections::BTreeMap;

use aloft_api::{Client, CreateMachineRequest};
use clap::Subcommand;

use super::{deploy, releases};
use crate::context::{self, UsageError};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set secrets (NAME=VALUE …) and restart the machines with them unless --stage.
    Set {
        #[arg(required = true)]
        pairs: Vec<String>,
        #[arg(long, short)]
        app: Option<String>,
        /// Store only; machines get them on the next deploy.
        #[arg(long)]
        stage: bool,
    },
    /// Remove secrets and restart the machines without them unless --stage.
    Unset {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, short)]
        app: Option<String>,
        #[arg(long)]
        stage: bool,
    },
    /// List secret names and digests (never values).
    #[command(alias = "ls")]
    List {
        #[arg(long, short)]
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: SecretsCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        SecretsCommand::Set { pairs, app, stage } => {
            let app = context::app(app)?;
            let mut values = BTreeMap::new();
            for pair in pairs {
                let (name, value) = pair
                    .split_once('=')
                    .ok_or_else(|| UsageError(format!("{pair:?} is not NAME=VALUE")))?;
                values.insert(name.to_owned(), value.to_owned());
            }
            let names: Vec<String> = values.keys().cloned().collect();
            api.set_secrets(&app, values).await?;
            println!("Set {} on {app}", names.join(", "));
            if !stage {
                restart_with_secrets(&api, &app, "secrets set").await?;
            }
        }
        SecretsCommand::Unset { names, app, stage } => {
            let app = context::app(app)?;
            api.unset_secrets(&app, names.clone()).await?;
            println!("Removed {} from {app}", names.join(", "));
            if !stage {
                restart_with_secrets(&api, &app, "secrets unset").await?;
            }
        }
        SecretsCommand::List { app, json } => {
            let app = context::app(app)?;
            let list = api.list_secrets(&app).await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| vec![s.name.clone(), s.digest.clone(), s.created_at.clone()])
                .collect();
            output::table(&["NAME", "DIGEST", "CREATED"], &rows);
        }
    }
    Ok(())
}

/// Redeploys the current release (a new release, with rollback on failure); an app without
/// releases gets its machines updated in place with their own configs.
async fn restart_with_secrets(api: &Client, app: &str, why: &str) -> anyhow::Result<()> {
    let list = api.list_releases(app).await?;
    if let Some(current) = releases::current(&list) {
        releases::redeploy(api, app, current, None, why.to_owned(), false).await?;
        return Ok(());
    }
    for m in deploy::live_machines(api, app).await? {
        api.update_machine(
            app,
            &m.id,
            &CreateMachineRequest {
                config: m.config.clone(),
                ..CreateMachineRequest::default()
            },
        )
        .await?;
        println!("  restarted machine {}", m.id);
    }
    Ok(())
}
