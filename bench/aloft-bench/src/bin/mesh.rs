//! One host of Aloft's mesh for `bench/mesh/run.sh`: runs `aloft-mesh` in the current network
//! namespace with a static peer list until killed.
//!
//! `mesh --index 1 --listen 10.88.0.1:51820 --key-file a.key --peer 2=<public key>@10.88.0.2:51820`
//! The key file holds a base64 private key (what `wg genkey` writes), mode 0600.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aloft_mesh::{parse_public_key, KeyPair, LinkSim, Mesh, MeshConfig, Peer};
use anyhow::{bail, Context as _};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// This host's index (its 6PN host field).
    #[arg(long)]
    index: u32,
    /// The UDP address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The private key file.
    #[arg(long)]
    key_file: PathBuf,
    /// A peer: INDEX=PUBLIC_KEY@IP:PORT (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// One-way delay in milliseconds added to what this host sends.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn parse_peer(text: &str, delay: Duration) -> anyhow::Result<Peer> {
    let Some((index, rest)) = text.split_once('=') else {
        bail!("peer {text:?} is not INDEX=PUBLIC_KEY@IP:PORT");
    };
    let Some((key, endpoint)) = rest.rsplit_once('@') else {
        bail!("peer {text:?} is not INDEX=PUBLIC_KEY@IP:PORT");
    };
    Ok(Peer {
        host_index: index
            .parse()
            .with_context(|| format!("peer index in {text:?}"))?,
        region: format!("host{index}"),
        public_key: parse_public_key(key)?,
        endpoint: Some(
            endpoint
                .parse()
                .with_context(|| format!("endpoint in {text:?}"))?,
        ),
        link: LinkSim::new(delay, 0.0)?,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let delay = Duration::from_millis(args.delay_ms);
    let peers = args
        .peers
        .iter()
        .map(|p| parse_peer(p, delay))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let key = KeyPair::load_or_create(&args.key_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mesh = Mesh::start(MeshConfig::new(args.index, args.listen, key)).await?;
        mesh.set_peers(peers)?;
        println!("ready {}", mesh.public_key());
        tokio::signal::ctrl_c().await?;
        drop(mesh);
        Ok(())
    })
}
