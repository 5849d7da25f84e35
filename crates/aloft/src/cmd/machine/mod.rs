//! `aloft machine …`: the Machines API one machine at a time, with flyctl's verbs and flags.
//! `run` creates machines (`run.rs`); `update`, `clone`, `cordon`, `kill`, `leases`, `wait`
//! and the other lifecycle verbs are in `manage.rs`.

mod manage;
mod run;

use aloft_api::{Machine, StopRequest};
use clap::Subcommand;

use crate::context;
use crate::output::{self, Stream};

pub use manage::{CloneArgs, LeasesCommand, UpdateArgs, WaitArgs};
pub use run::{key_values, RunArgs};

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Create and start a machine from an image.
    Run(RunArgs),
    /// List an app's machines.
    #[command(alias = "ls")]
    List {
        #[arg(long, short)]
        app: Option<String>,
        /// Include destroyed machines.
        #[arg(long)]
        all: bool,
        /// Only the machine ids, one a line.
        #[arg(long, short)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one machine: its config, events and checks.
    #[command(alias = "show")]
    Status {
        id: String,
        #[arg(long, short)]
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped machine.
    Start {
        id: String,
        #[arg(long, short)]
        app: Option<String>,
    },
    /// Stop a machine.
    Stop {
        id: String,
        #[arg(long, short)]
        app: Option<String>,
        /// Signal to send first (default: the machine's stop signal, SIGINT).
        #[arg(long, short)]
        signal: Option<String>,
        /// Seconds to wait before killing.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Restart a machine.
    Restart {
        id: String,
        #[arg(long, short)]
        app: Option<String>,
    },
    /// Change a machine's image, size, environment or ports (a new version of it).
    Update(UpdateArgs),
    /// Create a copy of a machine, in its region or another.
    Clone(CloneArgs),
    /// Take a machine out of the edges' routing; it keeps running.
    Cordon {
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long, short)]
        app: Option<String>,
    },
    /// Give a cordoned machine traffic again.
    Uncordon {
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long, short)]
        app: Option<String>,
    },
    /// Suspend a machine (it is stopped and starts again on demand).
    Suspend {
        id: String,
        #[arg(long, short)]
        app: Option<String>,
    },
    /// Kill a machine's processes with SIGKILL.
    Kill {
        id: String,
        #[arg(long, short)]
        app: Option<String>,
    },
    /// View or clear the leases that lock machines.
    #[command(subcommand, alias = "lease")]
    Leases(LeasesCommand),
    /// Wait until a machine reaches a state (exits 1 when it does not in time).
    Wait(WaitArgs),
    /// Run a command in a started machine (after `--`), print its output and exit with its
    /// exit code.
    Exec(super::ssh::ExecArgs),
    /// Destroy a machine.
    #[command(alias = "rm", alias = "remove")]
    Destroy {
        id: String,
        #[arg(long, short)]
        app: Option<String>,
        /// Destroy it even when it is running.
        #[arg(long, short)]
        force: bool,
    },
}

pub async fn run(cmd: MachineCommand) -> anyhow::Result<()> {
    let api = context::api()?;
    match cmd {
        MachineCommand::Run(args) => run::run(&api, args).await?,
        MachineCommand::List {
            app,
            all,
            quiet,
            json,
        } => {
            let app = context::app(app)?;
            let query = aloft_api::ListMachinesQuery {
                include_deleted: all.then_some(true),
                ..Default::default()
            };
            let machines = api.list_machines(&app, &query).await?;
            if json {
                return output::json(&machines);
            }
            if quiet {
                for m in &machines {
                    println!("{}", m.id);
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = machines.iter().map(row).collect();
            output::table(
                &[
                    "ID", "NAME", "STATE", "REGION", "IMAGE", "IP", "HOST", "UPDATED",
                ],
                &rows,
            );
        }
        MachineCommand::Exec(args) => return super::ssh::exec(api, args).await,
        MachineCommand::Status { id, app, json } => {
            let app = context::app(app)?;
            let m = api.get_machine(&app, &id).await?;
            if json {
                return output::json(&m);
            }
            print_status(&m);
        }
        MachineCommand::Start { id, app } => {
            let app = context::app(app)?;
            let r = api.start_machine(&app, &id).await?;
            println!("Machine {id} starting (was {})", r.previous_state);
        }
        MachineCommand::Stop {
            id,
            app,
            signal,
            timeout,
        } => {
            let app = context::app(app)?;
            let req = StopRequest {
                signal,
                timeout: timeout.map(|t| serde_json::Value::String(format!("{t}s"))),
            };
            api.stop_machine(&app, &id, &req).await?;
            println!("Machine {id} stopping");
        }
        MachineCommand::Restart { id, app } => {
            let app = context::app(app)?;
            api.restart_machine(&app, &id).await?;
            println!("Machine {id} restarting");
        }
        MachineCommand::Update(args) => manage::update(&api, args).await?,
        MachineCommand::Clone(args) => manage::clone(&api, args).await?,
        MachineCommand::Cordon { ids, app } => {
            let app = context::app(app)?;
            for id in ids {
                api.cordon_machine(&app, &id).await?;
                println!("Machine {id} cordoned: the edges send it no new requests");
            }
        }
        MachineCommand::Uncordon { ids, app } => {
            let app = context::app(app)?;
            for id in ids {
                api.uncordon_machine(&app, &id).await?;
                println!("Machine {id} uncordoned: it takes requests again");
            }
        }
        MachineCommand::Suspend { id, app } => {
            let app = context::app(app)?;
            api.suspend_machine(&app, &id).await?;
            println!("Machine {id} suspending");
        }
        MachineCommand::Kill { id, app } => {
            let app = context::app(app)?;
            api.signal_machine(&app, &id, "SIGKILL").await?;
            println!("Sent SIGKILL to machine {id}");
        }
        MachineCommand::Leases(cmd) => manage::leases(&api, cmd).await?,
        MachineCommand::Wait(args) => manage::wait(&api, args).await?,
        MachineCommand::Destroy { id, app, force } => {
            let app = context::app(app)?;
            api.delete_machine(&app, &id, force).await?;
            println!("Machine {id} destroyed");
        }
    }
    Ok(())
}

fn row(m: &Machine) -> Vec<String> {
    vec![
        m.id.clone(),
        m.name.clone(),
        output::state(Stream::Stdout, &m.state.to_string()),
        m.region.clone(),
        output::short_image(&m.config.image).to_owned(),
        m.private_ip.clone(),
        format!("{:?}", m.host_status).to_lowercase(),
        m.updated_at.clone(),
    ]
}

fn print_status(m: &Machine) {
    println!("Machine {} ({})", m.id, m.name);
    let mut fields = vec![
        ("State", output::state(Stream::Stdout, &m.state.to_string())),
        ("Region", m.region.clone()),
        ("Image", m.config.image.clone()),
        ("Instance", m.instance_id.clone()),
        ("Version", m.version.clone()),
        ("Private IP", m.private_ip.clone()),
        ("Host", format!("{:?}", m.host_status).to_lowercase()),
        ("Created", m.created_at.clone()),
        ("Updated", m.updated_at.clone()),
    ];
    let guest = m.config.guest.clone().unwrap_or_default();
    fields.insert(
        3,
        (
            "Size",
            format!("{} cpu, {} MB", guest.cpus, guest.memory_mb),
        ),
    );
    for (k, v) in fields {
        println!("  {k:<11} {v}");
    }
    if !m.events.is_empty() {
        println!("Events (newest first):");
        for e in m.events.iter().take(10) {
            let when = chrono::DateTime::from_timestamp_millis(e.timestamp).map_or_else(
                || e.timestamp.to_string(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            );
            let why = crate::cmd::deploy::reason_of(e).unwrap_or_default();
            let line = format!(
                "  {when}  {:<8} {:<10} {:<5} {why}",
                e.kind, e.status, e.source
            );
            println!("{}", line.trim_end());
        }
    }
    if !m.checks.is_empty() {
        println!("Checks:");
        for c in &m.checks {
            println!("  {:<20} {:<9} {}", c.name, c.status, c.output.trim());
        }
    }
}
