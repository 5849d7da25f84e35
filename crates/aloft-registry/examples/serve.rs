//! Serves the registry alone, for benchmarks and manual poking:
//! `cargo run --release -p aloft-registry --example serve -- --listen 127.0.0.1:5001 --data-dir DIR --token T`.
//! The one token given is an admin credential.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aloft_registry::{router, Identity, Registry, RegistryAuth};
use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5001")]
    listen: SocketAddr,
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    token: String,
}

struct OneToken(String);

impl RegistryAuth for OneToken {
    fn authenticate(&self, secret: &str) -> Option<Identity> {
        (secret == self.0).then_some(Identity::Admin)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let registry = Registry::open(&args.data_dir)
        .with_context(|| format!("opening registry in {}", args.data_dir.display()))?;
    let app = router(registry, Arc::new(OneToken(args.token)));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
