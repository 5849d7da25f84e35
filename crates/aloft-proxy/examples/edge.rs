//! A standalone edge serving a static route table from a JSON file (used by `bench/edge`).
//!
//! ```text
//! cargo run --release -p aloft-proxy --example edge -- ROUTES.json [LISTEN] [DOMAIN] [REGION]
//! ```
//! `LISTEN` defaults to `127.0.0.1:8080`, `DOMAIN` to `aloft.test`, `REGION` to `local`.
//! `ALOFT_EDGE_THREADS` sets the number of runtime threads (default 1: a current-thread runtime);
//! `ALOFT_EDGE_WORKERS=N` serves client connections on N connection workers instead (each its
//! own single-threaded runtime; the listeners stay on a current-thread runtime).
//! `ALOFT_EDGE_HTTPS=ADDR` also serves HTTPS on `ADDR` with the certificate chain and key in
//! `ALOFT_EDGE_CERT` and `ALOFT_EDGE_KEY` (PEM files) for every hostname in `ALOFT_EDGE_CERT_HOSTS`
//! (comma-separated, default `*.DOMAIN`).

use anyhow::Context;

// The same allocator as the `aloft` binary, so the benchmark measures what runs in the agent.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .context("usage: edge ROUTES.json [LISTEN] [DOMAIN] [REGION]")?;
    let listen = args
        .get(1)
        .map_or("127.0.0.1:8080", String::as_str)
        .parse()
        .context("LISTEN is not an address")?;
    let domain = args.get(2).map_or("aloft.test", String::as_str);
    let region = args.get(3).map_or("local", String::as_str);
    let number = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(default)
    };
    let workers = number("ALOFT_EDGE_WORKERS", 0);
    let threads = if workers > 0 {
        1
    } else {
        number("ALOFT_EDGE_THREADS", 1)
    };
    let table: aloft_proxy::RouteTable = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("cannot read {path}"))?,
    )
    .with_context(|| format!("{path} is not a route table"))?;
    // One thread means a current-thread runtime: a single event loop, like `nbthread 1`.
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        let mut opts = aloft_proxy::EdgeOptions::new(listen, domain, region, "bench");
        opts.workers = workers;
        let https = std::env::var("ALOFT_EDGE_HTTPS").ok();
        if let Some(addr) = &https {
            opts.https_listen = Some(addr.parse().context("ALOFT_EDGE_HTTPS is not an address")?);
        }
        let edge = aloft_proxy::Edge::new(opts).await?;
        if https.is_some() {
            let read = |var: &str| -> anyhow::Result<String> {
                let path = std::env::var(var).with_context(|| format!("{var} is not set"))?;
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))
            };
            let (cert, key) = (read("ALOFT_EDGE_CERT")?, read("ALOFT_EDGE_KEY")?);
            let hosts = std::env::var("ALOFT_EDGE_CERT_HOSTS").unwrap_or(format!("*.{domain}"));
            for host in hosts.split(',').filter(|h| !h.is_empty()) {
                edge.add_certificate(host, &cert, &key)?;
            }
        }
        edge.update_routes(table)?;
        println!("edge listening on {}", edge.http_addr());
        if let Some(addr) = edge.https_addr() {
            println!("edge listening on {addr} (HTTPS)");
        }
        tokio::signal::ctrl_c().await?;
        edge.shutdown().await;
        anyhow::Ok(())
    })
}
