//! `aloft dev`: the whole platform on one box — control plane with its registry, one agent
//! with its edge (which follows the control plane's route table), and the demo app —
//! printing a URL that answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aloft_api::{
    Client, CreateMachineRequest, Machine, MachineConfig, MachinePort, MachineService,
    MachineState, StopRequest, WaitQuery,
};
use aloft_image::build::{self, BuildConfig};
use aloft_image::push::PushTarget;
use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::context::UsageError;

/// The demo app's name and port.
const DEMO_APP: &str = "hello";
const DEMO_PORT: i64 = 8080;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where everything is kept; reused on the next start.
    #[arg(long, default_value = "/var/lib/aloft/dev")]
    pub data_dir: PathBuf,
    /// The control plane's address.
    #[arg(long, default_value = "127.0.0.1:4280")]
    pub listen: SocketAddr,
    /// The edge's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Apps answer at <app>.<domain>.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// The region of this box.
    #[arg(long, default_value = "ams")]
    pub region: String,
    /// Stop everything once the URL answers (for scripts and tests).
    #[arg(long)]
    pub exit_when_ready: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(UsageError(
            "aloft dev runs machines in namespaces and cgroups: run it as root".into(),
        )
        .into());
    }
    // Ctrl-C is caught from here on, so one that comes early still stops everything cleanly.
    let interrupted = super::server::shutdown_signal();
    let stop = CancellationToken::new();
    let server_dir = args.data_dir.join("server");

    // Control plane and registry.
    let server = aloft_control::Server::open(aloft_control::ServerOptions {
        listen: args.listen,
        data_dir: server_dir.clone(),
        heartbeat_timeout: Duration::from_secs(15),
    })
    .await
    .with_context(|| format!("Cannot open the control plane in {}", server_dir.display()))?;
    let server = super::server::with_registry(server, &server_dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "Cannot listen on {} (is another aloft running?)",
                args.listen
            )
        })?;
    let url = format!("http://{}", listener.local_addr()?);
    let token = std::fs::read_to_string(server_dir.join("admin-token"))
        .context("Cannot read the admin token")?
        .trim()
        .to_string();
    let server_task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            server
                .serve(listener, async move { stop.cancelled().await })
                .await
        })
    };
    println!(
        "control plane  {url}  (token in {})",
        server_dir.join("admin-token").display()
    );

    // The host agent.
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let (edge_tx, mut edge_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut agent_task = {
        let stop = stop.clone();
        let opts = aloft_agent::AgentOptions {
            control_url: url.clone(),
            token: token.clone(),
            region: args.region.clone(),
            data_dir: args.data_dir.join("agent"),
            host_id: None,
            address: "127.0.0.1".into(),
            cpus: None,
            memory_mb: None,
            runc: PathBuf::from("runc"),
            init_binary: super::agent::default_init()?,
            api_listen: None,
            http: Some(args.http),
            https: None,
            domain: Some(args.domain.clone()),
            edge_ready: Some(edge_tx),
        };
        tokio::spawn(
            async move { aloft_agent::run(opts, async move { stop.cancelled().await }).await },
        )
    };
    // The agent's edge listens before the agent joins.
    let edge_addr = tokio::select! {
        ready = edge_rx.recv() => ready,
        r = &mut agent_task => {
            r??;
            None
        }
    }
    .unwrap_or_else(|| Err("the agent stopped".into()))
    .map_err(|e| anyhow::anyhow!("The edge did not start on {}: {e}", args.http))?;
    let api = Client::new(&url, token.clone())?;
    wait_for_region(&api, &args.region).await?;

    // The demo app: image, app, machine.
    let image = push_demo_image(&args, &bin_dir, &url, &token).await?;
    let machine = ensure_demo_machine(&api, &args.region, &image).await?;
    println!(
        "machine        {} in {} at {}",
        machine.id, machine.region, machine.private_ip
    );

    let app_url = format!("http://{DEMO_APP}.{}:{}", args.domain, edge_addr.port());
    wait_for_answer(edge_addr, &format!("{DEMO_APP}.{}", args.domain)).await?;
    println!();
    println!("  {app_url}");
    println!();
    println!(
        "Try: curl {app_url}    (Ctrl-C stops everything; {} is kept)",
        args.data_dir.display()
    );

    if !args.exit_when_ready {
        interrupted.await;
    }
    println!("stopping…");
    let _ = api
        .stop_machine(DEMO_APP, &machine.id, &StopRequest::default())
        .await;
    let _ = api
        .wait_machine(
            DEMO_APP,
            &machine.id,
            &WaitQuery {
                state: Some("stopped".into()),
                timeout: Some(30),
                instance_id: None,
            },
        )
        .await;
    stop.cancel();
    let _ = agent_task.await;
    let _ = server_task.await;
    println!("stopped");
    Ok(())
}

async fn wait_for_region(api: &Client, region: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(r) = api.platform_regions().await {
            if r.regions.iter().any(|r| r.code == region) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("The agent did not join region {region} within 30 s")
}

/// Packages the `hello` binary (with its shared libraries) as an image and pushes it.
async fn push_demo_image(
    args: &DevArgs,
    bin_dir: &std::path::Path,
    url: &str,
    token: &str,
) -> anyhow::Result<String> {
    let hello = bin_dir.join("hello");
    if !hello.exists() {
        return Err(UsageError(format!(
            "The demo app {} is missing: build it with `cargo build --release --workspace --bins`",
            hello.display()
        ))
        .into());
    }
    let layout = args.data_dir.join("demo-image");
    let files = build::binary_with_libraries(&hello, "/app/hello")?;
    build::write_layout(
        &layout,
        "latest",
        &files,
        &BuildConfig {
            entrypoint: vec!["/app/hello".into()],
            env: vec![format!("PORT={DEMO_PORT}")],
            exposed_ports: vec![format!("{DEMO_PORT}/tcp")],
            ..Default::default()
        },
    )?;
    let registry = url.trim_start_matches("http://");
    let reference = format!("{registry}/{DEMO_APP}:latest");
    let target = PushTarget::parse(&reference, Some(token.to_string()), true)?;
    let image = aloft_image::push::from_oci_layout(&layout, Some("latest"))?;
    let digest = super::image::push_with_progress(&image, &target).await?;
    println!("image          {reference}@{digest}");
    Ok(reference)
}

async fn ensure_demo_machine(api: &Client, region: &str, image: &str) -> anyhow::Result<Machine> {
    if api.get_app(DEMO_APP).await.is_err() {
        api.create_app(&aloft_api::CreateAppRequest {
            app_name: DEMO_APP.into(),
            org_slug: None,
            network: None,
        })
        .await?;
    }
    let existing = api
        .list_machines(DEMO_APP, &aloft_api::ListMachinesQuery::default())
        .await?
        .into_iter()
        .find(|m| m.state != MachineState::Destroyed && m.state != MachineState::Destroying);
    let machine = match existing {
        Some(m) if m.state == MachineState::Started => m,
        Some(m) => {
            api.start_machine(DEMO_APP, &m.id).await?;
            api.get_machine(DEMO_APP, &m.id).await?
        }
        None => {
            let config = MachineConfig {
                image: image.to_string(),
                services: Some(vec![MachineService {
                    protocol: Some("tcp".into()),
                    internal_port: DEMO_PORT,
                    autostart: Some(true),
                    ports: Some(vec![
                        MachinePort {
                            port: Some(80),
                            handlers: Some(vec!["http".into()]),
                            ..Default::default()
                        },
                        MachinePort {
                            port: Some(443),
                            handlers: Some(vec!["tls".into(), "http".into()]),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }]),
                ..Default::default()
            };
            api.create_machine(
                DEMO_APP,
                &CreateMachineRequest {
                    config,
                    region: Some(region.to_string()),
                    ..Default::default()
                },
            )
            .await?
        }
    };
    api.wait_machine(
        DEMO_APP,
        &machine.id,
        &WaitQuery {
            state: Some("started".into()),
            timeout: Some(120),
            instance_id: None,
        },
    )
    .await
    .context("The demo machine did not start")?;
    Ok(api.get_machine(DEMO_APP, &machine.id).await?)
}

async fn wait_for_answer(edge: SocketAddr, host: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for _ in 0..300 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(edge).await {
            let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_ok() {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                if buf.starts_with(b"HTTP/1.1 200") {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("The demo app did not answer through the edge within 30 s")
}
