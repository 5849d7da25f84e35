//! Load generator for the control plane: registers hosts, then creates, gets and lists
//! machines from concurrent workers and prints throughput and latency per operation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aloft_api::{
    Client, CreateMachineRequest, ListMachinesQuery, MachineConfig, RegisterHostRequest,
};
use aloft_bench::{ms, summarize};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The server's URL.
    #[arg(long)]
    url: String,
    /// An admin token.
    #[arg(long)]
    token: String,
    /// Machines to create.
    #[arg(long, default_value_t = 2000)]
    machines: usize,
    /// Concurrent workers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Hosts to register first (64 CPUs each; every machine takes one).
    #[arg(long, default_value_t = 100)]
    hosts: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::new(&args.url, args.token.clone())?;
    let app = format!("bench-{}", std::process::id());
    client
        .create_app(&aloft_api::CreateAppRequest {
            app_name: app.clone(),
            org_slug: None,
            network: None,
        })
        .await?;
    for i in 0..args.hosts {
        client
            .register_host(&RegisterHostRequest {
                id: format!("benchhost{i:05}"),
                region: "ams".into(),
                address: format!("127.0.0.1:{}", 10000 + i),
                cpus: 64,
                memory_mb: 262_144,
                api_secret: None,
                mesh: None,
                host_index: None,
                edge_addresses: Vec::new(),
            })
            .await?;
    }
    let per_worker = args.machines / args.concurrency.max(1);
    let started = Instant::now();
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let (mut create, mut get) = (Vec::new(), Vec::new());
            for _ in 0..per_worker {
                let req = CreateMachineRequest {
                    config: MachineConfig {
                        image: "registry.example/bench:latest".into(),
                        ..Default::default()
                    },
                    region: Some("ams".into()),
                    skip_launch: true,
                    ..Default::default()
                };
                let t = Instant::now();
                let m = client.create_machine(&app, &req).await?;
                create.push(t.elapsed());
                let t = Instant::now();
                client.get_machine(&app, &m.id).await?;
                get.push(t.elapsed());
            }
            anyhow::Ok((create, get))
        }));
    }
    let (mut create, mut get) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, g) = t.await??;
        create.extend(c);
        get.extend(g);
    }
    let wall = started.elapsed();
    let mut list = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let all = client
            .list_machines(&app, &ListMachinesQuery::default())
            .await?;
        list.push(t.elapsed());
        assert_eq!(all.len(), create.len());
    }
    let ops = (create.len() + get.len()) as f64;
    println!(
        "control plane: {} machines created+fetched by {} workers in {:.2} s: {:.0} ops/s",
        create.len(),
        args.concurrency,
        wall.as_secs_f64(),
        ops / wall.as_secs_f64()
    );
    for (name, samples) in [
        ("create", &mut create),
        ("get", &mut get),
        ("list", &mut list),
    ] {
        let s = summarize(samples);
        println!(
            "  {name:<6} n={:<6} p50 {}  p99 {}  max {}",
            s.count,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
    let _ = Duration::ZERO;
    Ok(())
}
