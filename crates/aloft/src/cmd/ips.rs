//! `aloft ips …`: the app's dedicated public addresses, allocated from the server's
//! `--ip-pool` networks; every edge routes connections to them to the app.

use aloft_api::ips::IpKind;
use clap::Subcommand;

use crate::context;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum IpsCommand {
    /// Allocate a dedicated IPv4 address to the app.
    #[command(name = "allocate-v4")]
    AllocateV4 {
        #[arg(long, short)]
        app: Option<String>,
    },
    /// Allocate a dedicated IPv6 address to the app.
    #[command(name = "allocate-v6")]
    AllocateV6 {
        #[arg(long, short)]
        app: Option<String>,
    },
    /// List the app's dedicated addresses.
    #[command(alias = "ls")]
    List {
        #[arg(long, short)]
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Release one of the app's dedicated addresses.
    #[command(alias = "rm")]
    Release {
        address: String,
        #[arg(long, short)]
        app: Option<String>,
    },
}

pub async fn run(cmd: IpsCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        IpsCommand::AllocateV4 { app } => allocate(&api, app, IpKind::V4).await?,
        IpsCommand::AllocateV6 { app } => allocate(&api, app, IpKind::V6).await?,
        IpsCommand::List { app, json } => {
            let list = api.list_ips(&context::app(app)?).await?;
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|ip| {
                    vec![
                        ip.kind.to_string(),
                        ip.address.to_string(),
                        ip.created_at.clone(),
                    ]
                })
                .collect();
            output::table(&["TYPE", "ADDRESS", "CREATED"], &rows);
        }
        IpsCommand::Release { address, app } => {
            let app = context::app(app)?;
            api.release_ip(&app, &address).await?;
            println!("Released {address} from {app}");
        }
    }
    Ok(())
}

async fn allocate(
    api: &aloft_api::Client,
    app: Option<String>,
    kind: IpKind,
) -> anyhow::Result<()> {
    let app = context::app(app)?;
    let ip = api.allocate_ip(&app, kind).await?;
    println!("Allocated {} to {app}", ip.address);
    Ok(())
}
