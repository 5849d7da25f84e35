//! `aloft machine run`: a machine from an image and flags, and the flag parsing that
//! `machine update` and `deploy` share.

use std::collections::BTreeMap;

use aloft_api::{
    Client, CreateMachineRequest, MachineConfig, MachineGuest, MachineInit, MachinePort,
    MachineService, WaitQuery,
};
use clap::Args;

use crate::context::{self, UsageError};
use crate::output;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image reference.
    image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true)]
    command: Vec<String>,
    #[arg(long, short)]
    app: Option<String>,
    #[arg(long, short)]
    region: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(long, short, value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Published port: PORT:INTERNAL[/PROTOCOL][:HANDLER…], e.g. 443:8080/tcp:tls:http.
    #[arg(long, short)]
    port: Vec<String>,
    /// Replace the image's ENTRYPOINT (a shell-free command line).
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(long)]
    cpus: Option<i64>,
    /// Memory in MB.
    #[arg(long, alias = "vm-memory")]
    memory: Option<i64>,
    /// Restart policy: no, always or on-failure.
    #[arg(long)]
    restart: Option<String>,
    /// Destroy the machine when it exits.
    #[arg(long)]
    rm: bool,
    /// Create the machine without starting it.
    #[arg(long)]
    skip_launch: bool,
    /// Do not wait for the machine to start.
    #[arg(long, short)]
    detach: bool,
    #[arg(long)]
    json: bool,
}

/// `NAME=VALUE` items as a map; `what` names the flag in errors.
pub fn key_values(items: &[String], what: &str) -> Result<BTreeMap<String, String>, UsageError> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| UsageError(format!("{what} {item:?} is not NAME=VALUE")))
        })
        .collect()
}

/// Parses `PORT:INTERNAL[/PROTOCOL][:HANDLER…]`.
pub fn parse_port(spec: &str) -> Result<MachineService, UsageError> {
    let bad = || {
        UsageError(format!(
            "Port {spec:?} is not PORT:INTERNAL[/tcp|udp][:handler…]"
        ))
    };
    let mut parts = spec.split(':');
    let public: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let rest = parts.next().ok_or_else(bad)?;
    let (internal, protocol) = match rest.split_once('/') {
        Some((i, p)) => (i, p.to_string()),
        None => (rest, "tcp".to_string()),
    };
    let internal: i64 = internal.parse().map_err(|_| bad())?;
    if !(1..=65535).contains(&public) || !(1..=65535).contains(&internal) {
        return Err(bad());
    }
    if protocol != "tcp" && protocol != "udp" {
        return Err(bad());
    }
    let handlers: Vec<String> = parts.map(str::to_string).collect();
    Ok(MachineService {
        protocol: Some(protocol),
        internal_port: internal,
        ports: Some(vec![MachinePort {
            port: Some(public),
            handlers: (!handlers.is_empty()).then_some(handlers),
            ..Default::default()
        }]),
        ..Default::default()
    })
}

fn run_config(args: &RunArgs) -> Result<MachineConfig, UsageError> {
    let env = key_values(&args.env, "Environment variable")?;
    let metadata = key_values(&args.metadata, "Metadata")?;
    let services = args
        .port
        .iter()
        .map(|p| parse_port(p))
        .collect::<Result<Vec<_>, _>>()?;
    let init = (args.entrypoint.is_some() || !args.command.is_empty()).then(|| MachineInit {
        entrypoint: args
            .entrypoint
            .as_ref()
            .map(|e| e.split_whitespace().map(str::to_string).collect()),
        cmd: (!args.command.is_empty()).then(|| args.command.clone()),
        ..Default::default()
    });
    let guest = (args.cpus.is_some() || args.memory.is_some()).then(|| {
        let mut g = MachineGuest::default();
        if let Some(c) = args.cpus {
            g.cpus = c;
        }
        if let Some(m) = args.memory {
            g.memory_mb = m;
        }
        g
    });
    let restart = args
        .restart
        .as_ref()
        .map(|policy| aloft_api::MachineRestart {
            policy: Some(policy.clone()),
            ..Default::default()
        });
    Ok(MachineConfig {
        image: args.image.clone(),
        env: (!env.is_empty()).then_some(env),
        metadata: (!metadata.is_empty()).then_some(metadata),
        services: (!services.is_empty()).then_some(services),
        init,
        guest,
        restart,
        auto_destroy: args.rm.then_some(true),
        ..Default::default()
    })
}

/// `aloft machine run`.
pub async fn run(api: &Client, args: RunArgs) -> anyhow::Result<()> {
    let app = context::app(args.app.clone())?;
    let req = CreateMachineRequest {
        config: run_config(&args)?,
        region: args.region.clone(),
        name: args.name.clone(),
        skip_launch: args.skip_launch,
        ..Default::default()
    };
    let machine = api.create_machine(&app, &req).await?;
    let machine = if args.detach || args.skip_launch {
        machine
    } else {
        eprintln!("Waiting for machine {} to start…", machine.id);
        api.wait_machine(
            &app,
            &machine.id,
            &WaitQuery {
                state: Some("started".into()),
                timeout: Some(60),
                instance_id: Some(machine.instance_id.clone()),
            },
        )
        .await?;
        api.get_machine(&app, &machine.id).await?
    };
    if args.json {
        return output::json(&machine);
    }
    println!(
        "Machine {} ({}) is {} in {} at {}",
        machine.id, machine.name, machine.state, machine.region, machine.private_ip
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_spec_with_handlers() {
        let s = parse_port("443:8080/tcp:tls:http").unwrap();
        assert_eq!(s.internal_port, 8080);
        let port = &s.ports.unwrap()[0];
        assert_eq!(port.port, Some(443));
        assert_eq!(
            port.handlers.as_deref(),
            Some(&["tls".to_string(), "http".to_string()][..])
        );
    }

    #[test]
    fn port_spec_errors_name_the_input() {
        let err = parse_port("80:http").unwrap_err();
        assert!(err.0.contains("\"80:http\""), "{}", err.0);
        assert!(parse_port("0:8080").is_err());
        assert!(parse_port("80:8080/sctp").is_err());
    }

    #[test]
    fn env_must_be_name_value() {
        let err = key_values(&["JUSTNAME".into()], "Environment variable").unwrap_err();
        assert_eq!(err.0, "Environment variable \"JUSTNAME\" is not NAME=VALUE");
    }
}
