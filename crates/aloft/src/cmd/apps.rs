//! `aloft apps …`

use clap::Subcommand;

use crate::{context, output};

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an app.
    Create {
        /// The app name (lowercase letters, digits and dashes).
        name: String,
        /// The organization that owns it (default: an org token's own, else `personal`).
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List apps.
    #[command(alias = "ls")]
    List {
        /// Only apps of this organization.
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restart every started machine of the app, one at a time, each healthy before the next.
    Restart {
        /// The app (default: `app` of the config here).
        name: Option<String>,
        /// Do not wait for each machine's checks before restarting the next.
        #[arg(long)]
        skip_health_checks: bool,
        /// Per-machine timeout, e.g. `2m`.
        #[arg(long, default_value = "2m")]
        wait_timeout: String,
    },
    /// Destroy an app and all its machines.
    #[command(alias = "delete", alias = "rm")]
    Destroy {
        name: String,
        /// Do not ask for confirmation (required when not on a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

pub async fn run(cmd: AppsCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        AppsCommand::Create { name, org, json } => {
            let app = api
                .create_app(&aloft_api::CreateAppRequest {
                    app_name: name.clone(),
                    org_slug: org,
                    network: None,
                })
                .await?;
            if json {
                output::json(&app)?;
            } else {
                println!(
                    "Created app {} in organization {}",
                    app.name, app.organization.slug
                );
            }
        }
        AppsCommand::List { org, json } => {
            let list = api.list_apps(org.as_deref()).await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .apps
                .iter()
                .map(|a| vec![a.name.clone(), a.id.clone(), a.machine_count.to_string()])
                .collect();
            output::table(&["NAME", "ID", "MACHINES"], &rows);
        }
        AppsCommand::Restart {
            name,
            skip_health_checks,
            wait_timeout,
        } => {
            let app = context::app(name)?;
            let timeout = super::deploy::parse_flag_duration("--wait-timeout", &wait_timeout)?;
            super::restart::rolling(&api, &app, !skip_health_checks, timeout).await?;
        }
        AppsCommand::Destroy { name, yes } => {
            if !yes {
                return Err(context::UsageError(format!(
                    "Destroying {name} removes all its machines: pass --yes to confirm"
                ))
                .into());
            }
            api.delete_app(&name).await?;
            println!("Destroyed app {name}");
        }
    }
    Ok(())
}
