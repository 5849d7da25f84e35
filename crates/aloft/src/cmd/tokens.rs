//! `aloft tokens …`

use clap::Subcommand;

use crate::{context, output};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token: limited to one app with --app, a host join token with --join.
    Create {
        /// Limit the token to this app's API and registry repositories.
        #[arg(long, conflicts_with = "join")]
        app: Option<String>,
        /// A token that lets hosts join (`aloft agent --token`).
        #[arg(long)]
        join: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: TokensCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        TokensCommand::Create { app, join, json } => {
            if app.is_none() && !join {
                return Err(context::UsageError(
                    "Say what the token is for: --app APP or --join".into(),
                )
                .into());
            }
            let req = aloft_api::CreateTokenRequest {
                scope: join.then_some(aloft_api::TokenKind::Join),
                app,
            };
            let created = api.create_token(&req).await?;
            if json {
                output::json(&created)?;
            } else {
                println!("{}", created.token);
            }
        }
    }
    Ok(())
}
