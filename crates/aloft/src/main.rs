//! The `aloft` binary: parses arguments and calls into the role crates. Nothing else lives here.

#![forbid(unsafe_code)]

mod cmd;
mod context;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Aloft: run OCI images as machines close to your users.
#[derive(Debug, Parser)]
#[command(name = "aloft", version, about, propagate_version = true)]
struct Cli {
    /// Show the whole error chain on failure.
    #[arg(long, global = true)]
    verbose: bool,
    /// Refused with a hint: tokens come from a file or the environment, never argv.
    #[arg(long, global = true, hide = true, num_args = 0..=1, default_missing_value = "")]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (Machines API, registry, scheduler).
    Server(cmd::server::ServerArgs),
    /// Run the host agent that runs machines on this host.
    Agent(cmd::agent::AgentArgs),
    /// Run the whole platform on this box with the demo app, and print its URL.
    Dev(cmd::dev::DevArgs),
    /// Push images to the built-in registry.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Manage apps.
    #[command(subcommand)]
    Apps(cmd::apps::AppsCommand),
    /// Manage machines.
    #[command(subcommand, alias = "machines", alias = "m")]
    Machine(cmd::machine::MachineCommand),
    /// Show the app's logs, merged from its machines.
    Logs(cmd::logs::LogsArgs),
    /// Run commands in a machine (non-interactive for now: see `aloft ssh console --help`).
    #[command(subcommand)]
    Ssh(cmd::ssh::SshCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Tokens(cmd::tokens::TokensCommand),
    /// Log in to a control plane.
    #[command(subcommand)]
    Auth(cmd::auth::AuthCommand),
    /// Manage organizations: tenants whose apps share a private network.
    #[command(subcommand)]
    Orgs(cmd::orgs::OrgsCommand),
    /// List regions that have live hosts.
    #[command(subcommand)]
    Regions(cmd::regions::RegionsCommand),
    /// Manage hosts: list, drain, revoke or remove them; issue join tokens (admin).
    #[command(subcommand)]
    Hosts(cmd::hosts::HostsCommand),
    /// Create an app and deploy it: from the fly.toml here as it is, else from a new aloft.toml.
    Launch(cmd::launch::LaunchArgs),
    /// Deploy the app in this directory: push, release, roll out, roll back on failure.
    Deploy(cmd::deploy::DeployArgs),
    /// List the app's releases.
    Releases(cmd::releases::ReleasesArgs),
    /// Redeploy the previous (or a given) release as a new release.
    Rollback(cmd::releases::RollbackArgs),
    /// Show the app, its current release and its machines.
    Status(cmd::status::StatusArgs),
    /// Manage the app's secrets.
    #[command(subcommand)]
    Secrets(cmd::secrets::SecretsCommand),
    /// The cluster's root CA and user TLS certificates served by the edges.
    #[command(subcommand)]
    Certs(cmd::certs::CertsCommand),
    /// The app's dedicated public IP addresses.
    #[command(subcommand)]
    Ips(cmd::ips::IpsCommand),
    /// Change how many machines the app runs per region, and their size.
    #[command(subcommand)]
    Scale(cmd::scale::ScaleCommand),
    /// Show, check, and list the environment of the app's config file.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// The health checks of the app's machines.
    #[command(subcommand)]
    Checks(cmd::checks::ChecksCommand),
    /// Check the CLI's setup (token, API, hosts, registry, DNS) and say what to fix.
    Doctor(cmd::doctor::DoctorArgs),
    /// Print the app's URL and open it in a browser when there is one.
    Open(cmd::open::OpenArgs),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

// mimalloc instead of the system allocator: the edge proxy allocates per request, and glibc's
// malloc made up about a tenth of its CPU time (see docs/edge.md, "Performance").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_logging(matches!(
        cli.command,
        Command::Server(_) | Command::Agent(_)
    ));
    let verbose = cli.verbose;
    if cli.token.is_some() {
        let hint = context::token_on_argv_hint(matches!(cli.command, Command::Agent(_)));
        eprintln!("error: {hint}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            output::print_error(&err, verbose);
            ExitCode::from(exit_code(&err))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => cmd::server::run(args).await,
        Command::Agent(args) => cmd::agent::run(args).await,
        Command::Dev(args) => cmd::dev::run(args).await,
        Command::Image(c) => cmd::image::run(c).await,
        Command::Apps(c) => cmd::apps::run(c).await,
        Command::Machine(c) => cmd::machine::run(c).await,
        Command::Logs(a) => cmd::logs::run(a).await,
        Command::Ssh(c) => cmd::ssh::run(c).await,
        Command::Tokens(c) => cmd::tokens::run(c).await,
        Command::Auth(c) => cmd::auth::run(c).await,
        Command::Orgs(c) => cmd::orgs::run(c).await,
        Command::Regions(c) => cmd::regions::run(c).await,
        Command::Hosts(c) => cmd::hosts::run(c).await,
        Command::Launch(a) => cmd::launch::run(a).await,
        Command::Deploy(a) => cmd::deploy::run(a).await,
        Command::Releases(a) => cmd::releases::list(a).await,
        Command::Rollback(a) => cmd::releases::rollback(a).await,
        Command::Status(a) => cmd::status::run(a).await,
        Command::Secrets(c) => cmd::secrets::run(c).await,
        Command::Certs(c) => cmd::certs::run(c).await,
        Command::Ips(c) => cmd::ips::run(c).await,
        Command::Scale(c) => cmd::scale::run(c).await,
        Command::Config(c) => cmd::config::run(c).await,
        Command::Checks(c) => cmd::checks::run(c).await,
        Command::Doctor(a) => cmd::doctor::run(a).await,
        Command::Open(a) => cmd::open::run(a).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "aloft", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The one place where errors become exit codes: 2 for bad usage, a config file with errors,
/// or input the API refused,
/// 3 for authentication and permission errors, 4 when something was not found, 1 otherwise.
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<aloft_api::ClientError>() {
            return match e.status() {
                Some(401 | 403) => 3,
                Some(404) => 4,
                Some(400..=499) => 2,
                _ => 1,
            };
        }
        if cause.downcast_ref::<context::UsageError>().is_some()
            || cause.downcast_ref::<aloft_config::ConfigError>().is_some()
        {
            return 2;
        }
    }
    1
}
