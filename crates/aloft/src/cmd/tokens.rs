//! `aloft tokens …`

use std::time::Duration;

use aloft_api::TokenKind;
use clap::{Subcommand, ValueEnum};

use crate::context::UsageError;
use crate::{context, output};

/// What a new token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Deploy one app (--app): push its images, create and update its machines, set its
    /// secrets and releases; nothing else. What CI should hold.
    Deploy,
    /// One app's API and registry repositories (--app).
    App,
    /// One organization's apps, and tokens for them (--org).
    Org,
    /// Lets a host join (`aloft agent` reads it from --token-file or ALOFT_JOIN_TOKEN).
    Join,
    /// Everything.
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token: `deploy --app A` for CI, `org --org O`, `app --app A`, `join`, `admin`.
    /// The token is printed once; the control plane keeps only its hash.
    Create {
        /// The kind of token (default: `app` with --app, `join` with --join).
        kind: Option<Kind>,
        /// The app of an app or deploy token.
        #[arg(long, short = 'a')]
        app: Option<String>,
        /// The organization of an org token.
        #[arg(long, short = 'o')]
        org: Option<String>,
        /// A join token (the same as `join`).
        #[arg(long, conflicts_with_all = ["app", "org", "kind"])]
        join: bool,
        /// How long the token lives, e.g. 720h, 90d, 1y (default: 1y for deploy tokens, 20y
        /// for the others).
        #[arg(long, short = 'x')]
        expiry: Option<String>,
        /// A note shown by `aloft tokens list` (e.g. where the token is used).
        #[arg(long, short = 'n')]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the tokens this token may manage: id, kind, scope, dates; never the secrets.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke tokens by id: they are refused at once by the API and the registry, and
    /// streams opened with them end.
    Revoke {
        /// Token ids (from `aloft tokens list`).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub async fn run(cmd: TokensCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        TokensCommand::Create {
            kind,
            app,
            org,
            join,
            expiry,
            name,
            json,
        } => {
            let kind = match (kind, join, &app, &org) {
                (Some(kind), _, _, _) => kind,
                (None, true, _, _) => Kind::Join,
                (None, false, Some(_), _) => Kind::App,
                (None, false, None, Some(_)) => Kind::Org,
                (None, false, None, None) => {
                    return Err(UsageError(
                        "Say what the token is for: `deploy --app APP`, `app --app APP`, \
                         `org --org ORG`, `join` or `admin`"
                            .into(),
                    )
                    .into())
                }
            };
            let scope = match kind {
                Kind::Deploy => TokenKind::Deploy,
                Kind::App => TokenKind::App,
                Kind::Org => TokenKind::Org,
                Kind::Join => TokenKind::Join,
                Kind::Admin => TokenKind::Admin,
            };
            if matches!(kind, Kind::Deploy | Kind::App) && app.is_none() {
                return Err(
                    UsageError(format!("A {} token needs --app APP", scope.as_str())).into(),
                );
            }
            let expires_in = expiry
                .as_deref()
                .map(|e| parse_expiry(e).map(|d| d.as_secs()))
                .transpose()?;
            let req = aloft_api::CreateTokenRequest {
                scope: Some(scope),
                app,
                org,
                expires_in,
                name,
            };
            let created = api.create_token(&req).await?;
            if json {
                output::json(&created)?;
            } else {
                println!("{}", created.token);
                eprintln!(
                    "Token {} ({}) expires {}. It is shown only now: keep it in a file or a \
                     secret store, never on a command line.",
                    created.id,
                    scope.as_str(),
                    created.expires_at
                );
            }
        }
        TokensCommand::List { json } => {
            let tokens = api.list_tokens().await?;
            if json {
                return output::json(&tokens);
            }
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let scope = match (&t.app, &t.org) {
                        (Some(app), _) => format!("app {app}"),
                        (None, Some(org)) => format!("org {org}"),
                        (None, None) => "-".to_owned(),
                    };
                    vec![
                        t.id.clone(),
                        t.kind.as_str().to_owned(),
                        scope,
                        t.name.clone(),
                        t.created_at.clone(),
                        t.expires_at.clone(),
                        t.last_used_at.clone().unwrap_or_else(|| "never".to_owned()),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "KIND",
                    "SCOPE",
                    "NAME",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                ],
                &rows,
            );
        }
        TokensCommand::Revoke { ids } => {
            for id in ids {
                api.revoke_token(&id).await?;
                println!("Revoked token {id}");
            }
        }
    }
    Ok(())
}

/// `90s`, `720h`, `1h30m` (Go-style), or whole days and years: `90d`, `1y`.
pub fn parse_expiry(text: &str) -> Result<Duration, UsageError> {
    let bad = || {
        UsageError(format!(
            "--expiry {text:?} is not a duration such as 720h, 90d or 1y"
        ))
    };
    let text = text.trim();
    let days = |n: &str, per: u64| -> Result<Duration, UsageError> {
        let n: u64 = n.parse().map_err(|_| bad())?;
        Ok(Duration::from_secs(n.saturating_mul(per)))
    };
    let d = if let Some(n) = text.strip_suffix('d') {
        days(n, 86_400)?
    } else if let Some(n) = text.strip_suffix('y') {
        days(n, 31_557_600)?
    } else {
        aloft_config::parse_duration(text).ok_or_else(bad)?
    };
    if d < Duration::from_secs(1) {
        return Err(UsageError(format!(
            "--expiry {text:?} must be at least one second"
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_in_hours_days_and_years() {
        assert_eq!(
            parse_expiry("720h").unwrap(),
            Duration::from_secs(720 * 3600)
        );
        assert_eq!(
            parse_expiry("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_expiry("1y").unwrap(), Duration::from_secs(31_557_600));
        assert_eq!(parse_expiry("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_expiry("0").is_err());
        assert!(parse_expiry("soon").is_err());
        assert!(parse_expiry("1.5d").is_err());
    }
}
