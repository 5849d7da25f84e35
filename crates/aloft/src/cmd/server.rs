//! `aloft server`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::context;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:4280")]
    pub listen: SocketAddr,
    /// Where the store, registry blobs and admin token live
    /// (default /var/lib/aloft/server as root, ~/.local/share/aloft/server otherwise).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds without a heartbeat after which a host is unreachable.
    #[arg(long, default_value_t = 15)]
    pub heartbeat_timeout: u64,
    /// Seconds a region must have more started machines than its load asks for before the
    /// autoscaler stops the extra ones (see docs/autoscale.md).
    #[arg(long, default_value_t = 30)]
    pub autoscale_idle: u64,
    /// Seconds a machine the autoscaler created must have been stopped before it is destroyed.
    #[arg(long, default_value_t = 600)]
    pub autoscale_destroy_after: u64,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(context::default_server_dir);
    let server = aloft_control::Server::open(aloft_control::ServerOptions {
        listen: args.listen,
        data_dir: data_dir.clone(),
        heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout),
    })
    .await
    .with_context(|| format!("Cannot open the control plane in {}", data_dir.display()))?;
    let scaler = aloft_control::autoscale::ScalerOptions {
        scale_down_after: Duration::from_secs(args.autoscale_idle),
        destroy_after: Duration::from_secs(args.autoscale_destroy_after),
        ..Default::default()
    };
    let server = with_registry(server, &data_dir)?.scaler_options(scaler);
    if let Some(token) = &server.admin_token_created {
        println!("admin token: {token}");
        println!(
            "(shown once; saved to {} with mode 0600)",
            data_dir.join("admin-token").display()
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("Cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("aloft server listening on http://{addr}");
    server.serve(listener, shutdown_signal()).await?;
    println!("aloft server stopped");
    Ok(())
}

/// Mounts the built-in registry (kept in `DATA_DIR/registry`) at `/v2`.
pub fn with_registry(
    server: aloft_control::Server,
    data_dir: &std::path::Path,
) -> anyhow::Result<aloft_control::Server> {
    let registry_dir = data_dir.join("registry");
    let registry = aloft_registry::Registry::open(&registry_dir)
        .with_context(|| format!("Cannot open the registry in {}", registry_dir.display()))?;
    let tokens = Arc::new(ControlTokens(server.control()));
    let collector = registry.clone();
    tokio::spawn(async move {
        // Unreferenced blobs are freed every ten minutes (blobs younger than the registry's
        // grace period, and uploads in flight, are never taken).
        let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            every.tick().await;
            let registry = collector.clone();
            match tokio::task::spawn_blocking(move || registry.gc()).await {
                Ok(Ok(report)) => tracing::info!(?report, "registry garbage collected"),
                Ok(Err(e)) => tracing::warn!(error = %e, "registry garbage collection failed"),
                Err(e) => tracing::warn!(error = %e, "registry garbage collection panicked"),
            }
        }
    });
    Ok(server.merge_router(aloft_registry::router(registry, tokens)))
}

/// The registry trusts the control plane's tokens: an app token reaches its app's
/// repositories, admin and join (host) tokens reach all of them.
struct ControlTokens(Arc<aloft_control::Control>);

impl aloft_registry::RegistryAuth for ControlTokens {
    fn authenticate(&self, secret: &str) -> Option<aloft_registry::Identity> {
        use aloft_control::TokenScope;
        Some(match self.0.authenticate(secret)? {
            TokenScope::Admin | TokenScope::Join => aloft_registry::Identity::Admin,
            TokenScope::App(app) => aloft_registry::Identity::App(app),
        })
    }
}

/// Resolves on SIGINT or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives in between is not lost (nor fatal).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler installs");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
