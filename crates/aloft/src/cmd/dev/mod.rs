//! `aloft dev`: the whole platform on one box.
//!
//! By default a real multi-region topology (`--regions ams,iad,syd`): a control plane and one
//! host agent per region, each in its own network namespace on a simulated backbone, the same
//! anycast address on every region's edge, and one client namespace per city that reaches its
//! nearest edge (`regions.rs`, `topology.rs`). `--single` keeps the all-in-one-process mode of
//! one agent on the loopback (`single.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::context::UsageError;

mod bgp;
mod demo;
mod latency;
mod netns;
mod ops;
mod partition;
mod regions;
mod single;
mod topology;
mod traffic;
mod watch;

/// The demo app's name and port.
pub(crate) const DEMO_APP: &str = "hello";
pub(crate) const DEMO_PORT: i64 = 8080;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    #[command(subcommand)]
    pub command: Option<DevCommand>,
    #[command(flatten)]
    pub at: Where,
    /// The regions to simulate, one host each (their codes pick the latencies between them).
    #[arg(long, default_value = "ams,iad,syd")]
    pub regions: String,
    /// Run everything in this process with one agent on the loopback instead (no namespaces).
    #[arg(long, conflicts_with = "regions")]
    pub single: bool,
    /// The region of the single agent (with --single).
    #[arg(long, default_value = "ams", requires = "single")]
    pub region: String,
    /// Where the control plane answers on this machine.
    #[arg(long, default_value = "127.0.0.1:4280")]
    pub listen: SocketAddr,
    /// Where apps answer on this machine (forwarded to the nearest edge of --from's city).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Where apps answer over HTTPS on this machine (certificates of the cluster's CA:
    /// `aloft certs root > ca.pem`, then `curl --cacert ca.pem`).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub https: SocketAddr,
    /// The city whose nearest edge serves --http (default: the first region).
    #[arg(long)]
    pub from: Option<String>,
    /// Apps answer at <app>.<domain>.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Print a line for each answer of the demo app (which city asked, which region served).
    #[arg(long)]
    pub verbose: bool,
    /// Stop everything once the URL answers (for scripts and tests).
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Route each city to its nearest edge by BGP: a bird2 router per city peers with every
    /// region's agent, which announces the anycast address while its edge is healthy.
    #[arg(long, conflicts_with = "single")]
    pub bgp: bool,
    /// Autoscale the demo app in every region (1 to 3 machines, 5 requests in flight each).
    #[arg(long, conflicts_with = "single")]
    pub autoscale: bool,
    #[command(flatten)]
    pub traffic: traffic::TrafficArgs,
}

/// Which topology: its data dir and the prefix of its namespace names.
#[derive(Debug, Clone, Args)]
pub struct Where {
    /// Where everything is kept; reused on the next start.
    #[arg(long, default_value = "/var/lib/aloft/dev")]
    pub data_dir: PathBuf,
    /// Prefix of the topology's namespace names (lets several run side by side).
    #[arg(long, default_value = "aloft")]
    pub prefix: String,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Run a command in a city's client namespace, where the anycast address leads to that
    /// city's nearest edge and http://<app>.localhost/ reaches it.
    Exec {
        /// The city (one of the regions).
        #[arg(long)]
        from: String,
        #[command(flatten)]
        at: Where,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Kill a region's host (its agent, edge and machines die, its links go down); its city's
    /// clients are routed to the nearest live region.
    Kill {
        /// The region (one of the regions).
        region: String,
        #[command(flatten)]
        at: Where,
    },
    /// Cut all traffic between the hosts of two regions (the mesh included); both still reach
    /// the control plane and the other regions. Their edges stop sending to each other's
    /// machines once the mesh's probes go unanswered.
    Partition {
        /// One region.
        a: String,
        /// The other region.
        b: String,
        #[command(flatten)]
        at: Where,
    },
    /// Undo `aloft dev partition A B`.
    Heal {
        /// One region.
        a: String,
        /// The other region.
        b: String,
        #[command(flatten)]
        at: Where,
    },
    /// Stop a running `aloft dev` and remove everything its topology left (namespaces, links,
    /// processes, containers, mounts).
    Down {
        /// Remove the data dir too.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        at: Where,
    },
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(UsageError(
            "aloft dev runs machines in namespaces and cgroups: run it as root".into(),
        )
        .into());
    }
    match args.command {
        Some(DevCommand::Exec { from, at, command }) => ops::exec(&at, &from, &command),
        Some(DevCommand::Kill { region, at }) => ops::kill(&at, &region),
        Some(DevCommand::Down { purge, at }) => ops::down(&at, purge).await,
        Some(DevCommand::Partition { a, b, at }) => partition::partition(&at, &a, &b),
        Some(DevCommand::Heal { a, b, at }) => partition::heal(&at, &a, &b),
        None if args.single => single::run(args).await,
        None => regions::run(args).await,
    }
}

/// `GET <path>` with `Host: <host>` over `stream`; the status line and the body.
pub(crate) async fn http_get(
    mut stream: tokio::net::TcpStream,
    host: &str,
    path: &str,
) -> std::io::Result<(String, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
