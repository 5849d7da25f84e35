//! `aloft machine update/clone/leases/wait`: changing one machine, copying it, its leases,
//! and waiting for a state, with flyctl's flags.

use std::time::{Duration, Instant};

use aloft_api::{Client, CreateMachineRequest, Machine, MachineService, WaitQuery};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::run::{key_values, parse_port};
use crate::cmd::deploy::parse_flag_duration;
use crate::context::{self, UsageError};
use crate::output;

/// The longest single wait the Machines API takes; longer waits are several of them.
const MAX_API_WAIT: u64 = 60;

#[derive(Debug, Args)]
pub struct UpdateArgs {
    id: String,
    #[arg(long, short)]
    app: Option<String>,
    /// The new image reference.
    #[arg(long, short)]
    image: Option<String>,
    /// Memory in MB.
    #[arg(long, alias = "vm-memory")]
    memory: Option<i64>,
    /// Number of CPUs.
    #[arg(long, alias = "vm-cpus")]
    cpus: Option<i64>,
    /// Set an environment variable NAME=VALUE (repeatable; the others stay).
    #[arg(long, short, value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Publish a port PORT:INTERNAL[/PROTOCOL][:HANDLER…] (repeatable); it replaces the
    /// service on the same internal port and protocol.
    #[arg(long, short)]
    port: Vec<String>,
    /// Set metadata KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Leave a stopped machine stopped (a started one is always restarted with the change).
    #[arg(long)]
    skip_start: bool,
    /// Do not wait for the machine to start again.
    #[arg(long, short)]
    detach: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The machine to copy.
    id: String,
    #[arg(long, short)]
    app: Option<String>,
    /// The region of the copy (default: the machine's).
    #[arg(long, short)]
    region: Option<String>,
    /// The copy's name (default: a generated one).
    #[arg(long)]
    name: Option<String>,
    /// Do not wait for the copy to start.
    #[arg(long, short)]
    detach: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum LeasesCommand {
    /// Show the lease on each machine (all of the app's without ids).
    #[command(alias = "show", alias = "list", alias = "ls")]
    View {
        ids: Vec<String>,
        #[arg(long, short)]
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Release the lease on each machine (all of the app's without ids), whoever holds it.
    Clear {
        ids: Vec<String>,
        #[arg(long, short)]
        app: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    id: String,
    #[arg(long, short)]
    app: Option<String>,
    /// started, stopped, suspended or destroyed.
    #[arg(long, default_value = "started")]
    state: String,
    /// How long to wait, e.g. 30s or 5m.
    #[arg(long = "wait-timeout", alias = "timeout", default_value = "60s")]
    wait_timeout: String,
}

/// `machine update`: the machine's config with the flags applied, as a new version.
pub async fn update(api: &Client, args: UpdateArgs) -> anyhow::Result<()> {
    let app = context::app(args.app.clone())?;
    let old = api.get_machine(&app, &args.id).await?;
    let mut config = old.config.clone();
    if let Some(image) = &args.image {
        config.image = image.clone();
    }
    if args.memory.is_some() || args.cpus.is_some() {
        let guest = config.guest.get_or_insert_with(Default::default);
        if let Some(m) = args.memory {
            guest.memory_mb = m;
        }
        if let Some(c) = args.cpus {
            guest.cpus = c;
        }
    }
    let env = key_values(&args.env, "--env")?;
    if !env.is_empty() {
        config.env.get_or_insert_with(Default::default).extend(env);
    }
    let metadata = key_values(&args.metadata, "--metadata")?;
    if !metadata.is_empty() {
        config
            .metadata
            .get_or_insert_with(Default::default)
            .extend(metadata);
    }
    for spec in &args.port {
        let service = parse_port(spec)?;
        merge_service(config.services.get_or_insert_with(Vec::new), service);
    }
    if config == old.config {
        return Err(UsageError(format!(
            "Nothing to change on machine {}: pass --image, --memory, --cpus, --env, --port or \
             --metadata",
            args.id
        ))
        .into());
    }
    let req = CreateMachineRequest {
        config,
        skip_launch: args.skip_start,
        ..Default::default()
    };
    let m = api.update_machine(&app, &args.id, &req).await?;
    let stays_down = args.skip_start && old.state != aloft_api::MachineState::Started;
    let m = settle(api, &app, m, args.detach || stays_down).await?;
    if args.json {
        return output::json(&m);
    }
    println!(
        "Machine {} updated to version {}: {} in {}",
        m.id, m.version, m.state, m.region
    );
    Ok(())
}

/// Replaces the service on `new`'s internal port and protocol, or adds it.
fn merge_service(services: &mut Vec<MachineService>, new: MachineService) {
    let same = |s: &MachineService| {
        s.internal_port == new.internal_port
            && s.protocol.as_deref().unwrap_or("tcp") == new.protocol.as_deref().unwrap_or("tcp")
    };
    match services.iter_mut().find(|s| same(s)) {
        Some(s) => s.ports = new.ports,
        None => services.push(new),
    }
}

/// `machine clone`: a new machine with the same config, in `--region` or the same region.
pub async fn clone(api: &Client, args: CloneArgs) -> anyhow::Result<()> {
    let app = context::app(args.app.clone())?;
    let source = api.get_machine(&app, &args.id).await?;
    let region = args.region.clone().unwrap_or_else(|| source.region.clone());
    let req = CreateMachineRequest {
        config: source.config.clone(),
        region: Some(region),
        name: args.name.clone(),
        ..Default::default()
    };
    let m = api.create_machine(&app, &req).await?;
    let m = settle(api, &app, m, args.detach).await?;
    if args.json {
        return output::json(&m);
    }
    println!(
        "Machine {} cloned from {} is {} in {} at {}",
        m.id, source.id, m.state, m.region, m.private_ip
    );
    Ok(())
}

/// Waits until `m`'s current instance has started, unless `detach`; returns it as it is then.
async fn settle(api: &Client, app: &str, m: Machine, detach: bool) -> anyhow::Result<Machine> {
    if detach {
        return Ok(m);
    }
    eprintln!("Waiting for machine {} to start…", m.id);
    let query = WaitQuery {
        state: Some("started".into()),
        timeout: Some(MAX_API_WAIT),
        instance_id: Some(m.instance_id.clone()),
    };
    api.wait_machine(app, &m.id, &query).await?;
    Ok(api.get_machine(app, &m.id).await?)
}

/// One line of `machine leases view --json`.
#[derive(Debug, Serialize)]
struct LeaseLine {
    machine: String,
    lease: Option<aloft_api::Lease>,
}

/// `machine leases view|clear`.
pub async fn leases(api: &Client, cmd: LeasesCommand) -> anyhow::Result<()> {
    match cmd {
        LeasesCommand::View { ids, app, json } => {
            let app = context::app(app)?;
            let mut lines = Vec::new();
            for id in machine_ids(api, &app, ids).await? {
                let lease = match api.get_lease(&app, &id).await {
                    Ok(r) => Some(r.data),
                    Err(e) if e.status() == Some(404) => None,
                    Err(e) => return Err(e.into()),
                };
                lines.push(LeaseLine { machine: id, lease });
            }
            if json {
                return output::json(&lines);
            }
            let rows: Vec<Vec<String>> = lines
                .iter()
                .map(|l| match &l.lease {
                    Some(lease) => vec![
                        l.machine.clone(),
                        lease.owner.clone(),
                        lease.description.clone(),
                        lease.version.clone(),
                        expires_in(lease.expires_at),
                    ],
                    None => vec![l.machine.clone(), "-".into()],
                })
                .collect();
            output::table(
                &["MACHINE", "OWNER", "DESCRIPTION", "VERSION", "EXPIRES"],
                &rows,
            );
        }
        LeasesCommand::Clear { ids, app } => {
            let app = context::app(app)?;
            for id in machine_ids(api, &app, ids).await? {
                match api.get_lease(&app, &id).await {
                    Ok(r) => {
                        api.release_lease(&app, &id, &r.data.nonce).await?;
                        println!(
                            "Cleared the lease on machine {id} (held by {})",
                            r.data.owner
                        );
                    }
                    Err(e) if e.status() == Some(404) => {
                        println!("Machine {id} has no lease");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// `ids`, or every live machine of the app when there are none.
async fn machine_ids(api: &Client, app: &str, ids: Vec<String>) -> anyhow::Result<Vec<String>> {
    if !ids.is_empty() {
        return Ok(ids);
    }
    let all = crate::cmd::deploy::live_machines(api, app).await?;
    Ok(all.into_iter().map(|m| m.id).collect())
}

/// `in 4m10s` (or `expired`) for a Unix time in seconds.
fn expires_in(at: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    match u64::try_from(at - now) {
        Ok(left) if left > 0 => format!(
            "in {}",
            aloft_config::format_duration(Duration::from_secs(left))
        ),
        _ => "expired".into(),
    }
}

/// `machine wait`: polls the API's wait (at most a minute a call) until the deadline.
pub async fn wait(api: &Client, args: WaitArgs) -> anyhow::Result<()> {
    let app = context::app(args.app.clone())?;
    let states = ["started", "stopped", "suspended", "destroyed"];
    if !states.contains(&args.state.as_str()) {
        return Err(UsageError(format!(
            "--state {:?} is not one of {}",
            args.state,
            states.join(", ")
        ))
        .into());
    }
    let timeout = parse_flag_duration("--wait-timeout", &args.wait_timeout)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        let query = WaitQuery {
            state: Some(args.state.clone()),
            timeout: Some(left.clamp(1, MAX_API_WAIT)),
            instance_id: None,
        };
        match api.wait_machine(&app, &args.id, &query).await {
            Ok(_) => {
                println!("Machine {} is {}", args.id, args.state);
                return Ok(());
            }
            Err(e) if e.status() == Some(408) && Instant::now() < deadline => continue,
            Err(e) if e.status() == Some(408) => anyhow::bail!(
                "Machine {} did not reach {} within {}",
                args.id,
                args.state,
                aloft_config::format_duration(timeout)
            ),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_replaces_the_service_on_its_internal_port() {
        let mut services = vec![parse_port("80:8080/tcp:http").unwrap()];
        merge_service(&mut services, parse_port("443:8080/tcp:tls:http").unwrap());
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].ports.as_ref().unwrap()[0].port, Some(443));
        merge_service(&mut services, parse_port("53:5353/udp").unwrap());
        assert_eq!(services.len(), 2);
    }

    #[test]
    fn past_leases_read_as_expired() {
        assert_eq!(expires_in(0), "expired");
    }
}
