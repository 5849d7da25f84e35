//! `aloft hosts …`: the operator's view of hosts, join tokens, revocation and removal.

use aloft_api::{CreateJoinTokenRequest, HostStatus};
use clap::Subcommand;

use crate::context::{self, UsageError};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Every registered host: region, address, capacity and whether it heartbeats.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Join tokens: what a new host enrols with (`aloft agent --token`).
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinTokenCommand),
    /// Drain a host: it keeps its machines and gets no new ones (--undo takes it back).
    Drain {
        /// The host's id.
        id: String,
        #[arg(long)]
        undo: bool,
    },
    /// Revoke a host: its credential stops working at once, it counts as down (its machines
    /// leave the route table), and its id cannot join again until the host is removed.
    Revoke {
        /// The host's id.
        id: String,
    },
    /// Forget a host that runs no machine; its id may then enrol again.
    #[command(alias = "rm")]
    Remove {
        /// The host's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Issue a join token. It only enrols hosts; each host then gets its own credential.
    /// Without --ttl or --uses it expires after an hour.
    Create {
        /// How long it stays valid, e.g. 10m or 24h (at most 720h).
        #[arg(long)]
        ttl: Option<String>,
        /// How many hosts it may enrol (1 for a single-use token).
        #[arg(long)]
        uses: Option<u32>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: HostsCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        HostsCommand::List { json } => {
            let hosts = api.list_hosts().await?;
            if json {
                return output::json(&hosts);
            }
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    vec![
                        h.id.clone(),
                        h.region.clone(),
                        match h.status {
                            HostStatus::Ok => "ok",
                            HostStatus::Unreachable => "unreachable",
                            HostStatus::Unknown => "unknown",
                        }
                        .to_owned(),
                        h.address.clone(),
                        format!("{}/{}", h.free_cpus, h.cpus),
                        format!("{}/{}", h.free_memory_mb, h.memory_mb),
                        h.last_heartbeat.clone(),
                        if h.draining { "yes" } else { "" }.to_owned(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "REGION",
                    "STATUS",
                    "ADDRESS",
                    "FREE CPUS",
                    "FREE MB",
                    "LAST HEARTBEAT",
                    "DRAINED",
                ],
                &rows,
            );
        }
        HostsCommand::JoinToken(JoinTokenCommand::Create { ttl, uses, json }) => {
            let ttl_secs = match ttl {
                Some(text) => {
                    let d = super::deploy::parse_flag_duration("--ttl", &text)?;
                    if d.as_secs() == 0 {
                        return Err(UsageError("--ttl must be at least 1s".into()).into());
                    }
                    Some(d.as_secs())
                }
                None => None,
            };
            if uses == Some(0) {
                return Err(UsageError("--uses must be at least 1".into()).into());
            }
            let token = api
                .create_join_token(&CreateJoinTokenRequest { ttl_secs, uses })
                .await?;
            if json {
                return output::json(&token);
            }
            println!("{}", token.token);
            let mut limits = Vec::new();
            if let Some(at) = &token.expires_at {
                limits.push(format!("expires {at}"));
            }
            if let Some(n) = token.uses {
                limits.push(format!("enrols at most {n} host(s)"));
            }
            eprintln!(
                "(a join token: it {}; give it to `aloft agent --token`)",
                limits.join(", ")
            );
        }
        HostsCommand::Drain { id, undo } => {
            api.drain_host(&id, !undo).await?;
            if undo {
                println!("Host {id} takes new machines again");
            } else {
                println!("Host {id} drained: it keeps its machines and gets no new ones");
            }
        }
        HostsCommand::Revoke { id } => {
            api.revoke_host(&id).await?;
            println!("Host {id} revoked: its credential no longer works");
        }
        HostsCommand::Remove { id } => {
            api.remove_host(&id).await?;
            println!("Host {id} removed");
        }
    }
    Ok(())
}
