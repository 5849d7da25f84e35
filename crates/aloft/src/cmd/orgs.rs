//! `aloft orgs …`

use clap::Subcommand;

use crate::{context, output};

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an organization (admin): a tenant whose apps share one private network and
    /// whose org tokens reach only its apps.
    Create {
        /// The slug (lowercase letters, digits and dashes).
        slug: String,
        /// A display name (default: the slug).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List organizations (an org token sees its own).
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete an organization that has no apps left (admin); its org tokens stop working.
    #[command(alias = "destroy", alias = "rm")]
    Delete {
        slug: String,
        /// Do not ask for confirmation (required when not on a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

pub async fn run(cmd: OrgsCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        OrgsCommand::Create { slug, name, json } => {
            let org = api
                .create_org(&aloft_api::CreateOrgRequest { slug, name })
                .await?;
            if json {
                return output::json(&org);
            }
            println!("Created organization {}", org.slug);
        }
        OrgsCommand::List { json } => {
            let orgs = api.list_orgs().await?;
            if json {
                return output::json(&orgs);
            }
            let rows: Vec<Vec<String>> = orgs
                .iter()
                .map(|o| vec![o.slug.clone(), o.name.clone(), o.app_count.to_string()])
                .collect();
            output::table(&["SLUG", "NAME", "APPS"], &rows);
        }
        OrgsCommand::Delete { slug, yes } => {
            if !yes {
                return Err(context::UsageError(format!(
                    "Deleting organization {slug} revokes its org tokens: pass --yes to confirm"
                ))
                .into());
            }
            api.delete_org(&slug).await?;
            println!("Deleted organization {slug}");
        }
    }
    Ok(())
}
