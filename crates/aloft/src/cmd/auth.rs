//! `aloft auth …`

use std::io::BufRead as _;

use clap::Subcommand;

use crate::context::{self, SavedLogin};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Check a token against a control plane and save both for later commands.
    Login {
        /// The control plane's URL.
        #[arg(long, default_value = context::DEFAULT_API_URL)]
        url: String,
        /// A file holding the token (default: read it from standard input). Tokens are
        /// never taken on the command line, where `ps` and shell history show them.
        #[arg(long, value_name = "PATH")]
        token_file: Option<std::path::PathBuf>,
    },
    /// Forget the saved login.
    Logout,
}

pub async fn run(cmd: AuthCommand) -> anyhow::Result<()> {
    match cmd {
        AuthCommand::Login { url, token_file } => {
            let token = match token_file {
                Some(path) => context::read_token_file(&path)?,
                None => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim().to_string()
                }
            };
            if token.is_empty() {
                return Err(context::UsageError("The token is empty".into()).into());
            }
            let api = aloft_api::Client::new(&url, token.clone())?;
            api.list_apps(None).await?;
            let path = context::save_login(&SavedLogin {
                api_url: url.clone(),
                token,
            })?;
            println!("Logged in to {url} (saved to {})", path.display());
        }
        AuthCommand::Logout => {
            let path = context::config_path();
            match std::fs::remove_file(&path) {
                Ok(()) => println!("Removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("Not logged in"),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
