//! `aloft dev --single`: the whole platform in one process — control plane with its registry,
//! one agent with its edge (which follows the control plane's route table) on the loopback,
//! and the demo app — printing a URL that answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aloft_api::{Client, StopRequest, WaitQuery};
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{demo, DevArgs, DEMO_APP};

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Ctrl-C is caught from here on, so one that comes early still stops everything cleanly.
    let interrupted = crate::cmd::server::shutdown_signal();
    let stop = CancellationToken::new();
    let server_dir = args.at.data_dir.join("server");

    // Control plane and registry.
    let server = aloft_control::Server::open(aloft_control::ServerOptions {
        listen: args.listen,
        data_dir: server_dir.clone(),
        heartbeat_timeout: Duration::from_secs(15),
        cluster: aloft_api::ClusterInfo {
            registry: aloft_api::ClusterInfo::default_registry(&args.domain),
            domain: args.domain.clone(),
        },
    })
    .await
    .with_context(|| format!("Cannot open the control plane in {}", server_dir.display()))?;
    let server = crate::cmd::server::with_registry(server, &server_dir, None)?;
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
            data_dir: args.at.data_dir.join("agent"),
            host_id: None,
            address: "127.0.0.1".into(),
            cpus: None,
            memory_mb: None,
            runc: PathBuf::from("runc"),
            init_binary: crate::cmd::agent::default_init()?,
            userns_base: aloft_agent::runtime::userns::DEFAULT_BASE,
            api_listen: None,
            http: Some(args.http),
            https: Some(args.https),
            domain: Some(args.domain.clone()),
            edge_workers: 0,
            edge_ready: Some(edge_tx),
            dns_listen: None,
            dns_upstream: None,
            mesh: None,
            bgp: None,
            edge_addresses: Vec::new(),
            storage: Default::default(),
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
    let image = demo::push_image(&api, &args.at.data_dir, &bin_dir).await?;
    let machine = demo::ensure_machine(&api, &args.region, &image).await?;
    println!(
        "machine        {} in {} at {}",
        machine.id, machine.region, machine.private_ip
    );

    let app_url = format!("http://{DEMO_APP}.{}:{}", args.domain, edge_addr.port());
    wait_for_answer(edge_addr, &format!("{DEMO_APP}.{}", args.domain)).await?;
    println!();
    println!("  {app_url}");
    if args.https.port() != 0 {
        println!("  https://{DEMO_APP}.{}:{}", args.domain, args.https.port());
        println!();
        println!(
            "HTTPS is signed by the cluster's CA: aloft certs root > ca.pem, then curl --cacert ca.pem"
        );
    }
    println!(
        "Try: curl {app_url}    (Ctrl-C stops everything; {} is kept)",
        args.at.data_dir.display()
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
    // A stopped machine keeps its network namespace; the next start builds it again.
    super::topology::remove_machines(&args.at.data_dir.join("agent"));
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
