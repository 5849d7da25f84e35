//! Machine start latency, measured until the app accepts TCP on its private address.
//!
//! `latency aloft`: through a real server and agent, with the image already cached on the
//! host, one machine at a time: create→started (from `POST …/machines` until
//! `[private_ip]:PORT` accepts), then stopped→started (from `POST …/start` until it
//! accepts). `latency runc`: the floor, `runc run -d` of an unpacked bundle whose process
//! listens on the host's loopback, timed until it accepts, then deleted.
//!
//! Connection attempts repeat every millisecond (a tighter loop would take a core from the
//! agent on a small host), so every figure carries up to ~1 ms of polling granularity.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aloft_api::{
    Client, CreateMachineRequest, MachineConfig, MachineGuest, MachineState, StopRequest, WaitQuery,
};
use aloft_bench::{ms, summarize};
use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Start machines through the platform.
    Aloft {
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        app: String,
        #[arg(long)]
        image: String,
        #[arg(long, default_value = "ams")]
        region: String,
        #[arg(long, default_value_t = 50)]
        machines: usize,
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Start the bundle with runc directly.
    Runc {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value_t = 50)]
        runs: usize,
        #[arg(long, default_value_t = 18080)]
        port: u16,
    },
}

/// Connects until `addr` accepts; gives up after `limit`.
async fn until_accepts(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(50),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if let Ok(Ok(_)) = attempt {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not accept within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn print(name: &str, samples: &mut [Duration]) {
    let s = summarize(samples);
    println!(
        "{name:<22} n={:<4} p50 {}  p99 {}  max {}",
        s.count,
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
}

async fn aloft(
    client: &Client,
    app: &str,
    image: &str,
    region: &str,
    machines: usize,
    port: u16,
) -> anyhow::Result<()> {
    let req = CreateMachineRequest {
        config: MachineConfig {
            image: image.to_string(),
            guest: Some(MachineGuest {
                cpu_kind: "shared".into(),
                cpus: 1,
                memory_mb: 128,
                extra: Default::default(),
            }),
            ..Default::default()
        },
        region: Some(region.to_string()),
        ..Default::default()
    };
    // Warm-up: the host pulls and unpacks the image once; not counted.
    let warm = client.create_machine(app, &req).await?;
    client
        .wait_machine(app, &warm.id, &started_within(120))
        .await
        .context("the warm-up machine did not start")?;

    let mut created = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..machines {
        let t = Instant::now();
        let m = client.create_machine(app, &req).await?;
        let ip = loop {
            // The control plane's address is a placeholder until the host reports its own.
            let m = client.get_machine(app, &m.id).await?;
            if m.state == MachineState::Started {
                if let Ok(ip) = m.private_ip.parse::<IpAddr>() {
                    break ip;
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("machine {} not started after 60 s", m.id);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        until_accepts(SocketAddr::new(ip, port), Duration::from_secs(60)).await?;
        created.push(t.elapsed());
        ids.push((m.id, ip));
    }
    for (id, _) in &ids {
        client
            .stop_machine(app, id, &StopRequest::default())
            .await?;
    }
    for (id, _) in &ids {
        let q = WaitQuery {
            state: Some("stopped".into()),
            timeout: Some(60),
            ..Default::default()
        };
        client.wait_machine(app, id, &q).await?;
    }
    let mut restarted = Vec::new();
    for (id, ip) in &ids {
        let t = Instant::now();
        client.start_machine(app, id).await?;
        until_accepts(SocketAddr::new(*ip, port), Duration::from_secs(60)).await?;
        restarted.push(t.elapsed());
    }
    print("aloft create→started", &mut created);
    print("aloft stopped→started", &mut restarted);
    Ok(())
}

fn started_within(secs: u64) -> WaitQuery {
    WaitQuery {
        state: Some("started".into()),
        timeout: Some(secs),
        ..Default::default()
    }
}

async fn runc(bundle: &PathBuf, root: &PathBuf, runs: usize, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut samples = Vec::new();
    for i in 0..runs {
        let id = format!("latency{i}");
        let t = Instant::now();
        let status = tokio::process::Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("runc run {id} failed: {status}");
        }
        until_accepts(addr, Duration::from_secs(30)).await?;
        samples.push(t.elapsed());
        tokio::process::Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "-f", &id])
            .status()
            .await?;
    }
    print("runc run -d→accept", &mut samples);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().what {
        What::Aloft {
            url,
            token,
            app,
            image,
            region,
            machines,
            port,
        } => {
            let client = Client::new(&url, token)?;
            aloft(&client, &app, &image, &region, machines, port).await
        }
        What::Runc {
            bundle,
            root,
            runs,
            port,
        } => runc(&bundle, &root, runs, port).await,
    }
}
