//! `aloft regions …`

use clap::Subcommand;

use crate::{context, output};

#[derive(Debug, Subcommand)]
pub enum RegionsCommand {
    /// Regions with live hosts and their free capacity.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: RegionsCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        RegionsCommand::List { json } => {
            let regions = api.platform_regions().await?;
            if json {
                return output::json(&regions);
            }
            let rows: Vec<Vec<String>> = regions
                .regions
                .iter()
                .map(|r| {
                    vec![
                        r.code.clone(),
                        r.name.clone(),
                        r.hosts.to_string(),
                        r.free_cpus.to_string(),
                        r.free_memory_mb.to_string(),
                    ]
                })
                .collect();
            output::table(
                &["CODE", "NAME", "HOSTS", "FREE CPUS", "FREE MEMORY MB"],
                &rows,
            );
        }
    }
    Ok(())
}
