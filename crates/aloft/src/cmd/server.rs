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
    /// A network dedicated app addresses are allocated from (`aloft ips allocate-v4/-v6`),
    /// IPv4 or IPv6 in CIDR notation, e.g. 203.0.113.0/28 or 2001:db8:1::/120; repeatable,
    /// the first pool of a family is used first.
    #[arg(long = "ip-pool", value_name = "CIDR")]
    pub ip_pools: Vec<aloft_control::ips::IpPool>,
    /// Apps answer at <app>.<domain> on every edge (hosts take it from here unless their
    /// agent is given its own --domain).
    #[arg(long, default_value = "localhost", value_parser = domain_name)]
    pub domain: String,
    /// The built-in registry's cluster-wide name, used in every image reference the CLI and
    /// deploys write; each host maps it to its own route to this server (default:
    /// registry.<domain>).
    #[arg(long, value_name = "NAME", value_parser = domain_name)]
    pub registry_name: Option<String>,
    /// The most CPUs a host may declare when it registers (more is refused with 400).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(i64).range(1..=4096))]
    pub host_max_cpus: i64,
    /// The most memory (MB) a host may declare when it registers (more is refused with 400).
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(i64).range(128..=64 * 1024 * 1024))]
    pub host_max_memory_mb: i64,
    /// The DNS resolver (ADDR:PORT) the server asks for custom hostnames' ownership records
    /// (a CNAME to <app>.<domain>, or TXT _aloft-challenge.<host> "app=<app>") (default: the
    /// first nameserver of /etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_resolver: Option<SocketAddr>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
    #[command(flatten)]
    pub geodns: GeoDnsArgs,
}

/// GeoDNS: answering `<app>.<zone>` with the nearest healthy edge (docs/networking.md).
#[derive(Debug, Clone, Args)]
pub struct GeoDnsArgs {
    /// UDP address GeoDNS answers on (port 0 picks a free port; the bound address is printed).
    #[arg(long, value_name = "ADDR:PORT", requires = "geodns_zone")]
    pub geodns_listen: Option<SocketAddr>,
    /// The zone GeoDNS is authoritative for: apps answer at <app>.<zone>.
    #[arg(long, value_name = "DOMAIN", requires = "geodns_listen")]
    pub geodns_zone: Option<String>,
    /// TOML map of client networks to regions (`[networks] "192.0.2.0/24" = "ams"`).
    #[arg(long, value_name = "FILE", requires = "geodns_listen")]
    pub geodns_map: Option<PathBuf>,
}

impl GeoDnsArgs {
    /// Binds GeoDNS and starts it next to the API when asked for.
    async fn start(&self, server: &aloft_control::Server) -> anyhow::Result<()> {
        use aloft_control::geodns::{ClientMap, GeoDns};
        let (Some(listen), Some(zone)) = (self.geodns_listen, &self.geodns_zone) else {
            return Ok(());
        };
        let map = match &self.geodns_map {
            Some(path) => ClientMap::load(path)?,
            None => ClientMap::default(),
        };
        let dns = GeoDns::bind(listen, zone, map).await?;
        println!("geodns listening on udp://{} for {zone}", dns.local_addr()?);
        tokio::spawn(dns.run(server.control()));
        Ok(())
    }
}

/// Limits the operator sets (docs/security.md, "Limits"); unset means unlimited.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Most machines (not destroyed) one app may have.
    #[arg(long, value_name = "N")]
    pub max_machines_per_app: Option<u32>,
    /// Most CPUs one app's machines may have in total.
    #[arg(long, value_name = "N")]
    pub max_cpus_per_app: Option<u32>,
    /// Most memory (MB) one app's machines may have in total.
    #[arg(long, value_name = "MB")]
    pub max_memory_per_app: Option<u32>,
    /// Most bytes one app's repositories may hold in the built-in registry (e.g. 500000000,
    /// 500MB, 2GiB); a push beyond it is refused with 403 DENIED.
    #[arg(long, value_name = "BYTES", value_parser = byte_size)]
    pub registry_quota_per_app: Option<u64>,
    /// API requests per second each token may make on average (token bucket); beyond it,
    /// 429 with Retry-After. Hosts' tokens are not limited.
    #[arg(long, value_name = "PER_SECOND")]
    pub api_rate_limit: Option<f64>,
    /// How many API requests a token may make at once (default: twice the rate, at least 1).
    #[arg(long, value_name = "N", requires = "api_rate_limit")]
    pub api_rate_burst: Option<u32>,
}

impl LimitArgs {
    fn apply(&self, server: aloft_control::Server) -> anyhow::Result<aloft_control::Server> {
        use aloft_control::limits::{AppLimits, RateLimit};
        let rate = match self.api_rate_limit {
            Some(r) if !(r.is_finite() && r > 0.0) => {
                anyhow::bail!(
                    "--api-rate-limit must be a positive number of requests per second, not {r}"
                )
            }
            Some(per_second) => Some(RateLimit {
                per_second,
                burst: self
                    .api_rate_burst
                    .unwrap_or_else(|| (per_second * 2.0).ceil().clamp(1.0, 1e6) as u32)
                    .max(1),
            }),
            None => None,
        };
        let apps = AppLimits {
            machines: self.max_machines_per_app,
            cpus: self.max_cpus_per_app,
            memory_mb: self.max_memory_per_app,
        };
        Ok(server.limits(apps, rate))
    }
}

/// A size in bytes: digits with an optional unit (K, M, G, T as powers of 1000; KiB, MiB, GiB,
/// TiB as powers of 1024; B or nothing for bytes).
pub fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 500000000, 500MB, 2GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// ACME certificates for custom hostnames (`aloft certs add HOST`).
#[derive(Debug, Clone, Args)]
pub struct AcmeArgs {
    /// The ACME CA's directory URL (e.g. Let's Encrypt's); turns ACME orders on.
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,
    /// Contact email for the ACME account.
    #[arg(long, value_name = "EMAIL", requires = "acme_directory")]
    pub acme_email: Option<String>,
    /// A root certificate (PEM) to check the directory's HTTPS certificate against, instead of
    /// the system's roots (e.g. a test CA's).
    #[arg(long, value_name = "FILE", requires = "acme_directory")]
    pub acme_ca_root: Option<PathBuf>,
    /// The challenge to solve: http-01 or tls-alpn-01 (default: tls-alpn-01 when every edge
    /// serves HTTPS, http-01 otherwise).
    #[arg(long, value_name = "TYPE", requires = "acme_directory")]
    pub acme_challenge: Option<aloft_api::certs::AcmeChallengeType>,
}

impl AcmeArgs {
    /// Turns ACME on for `server` when a directory was given.
    pub fn apply(&self, server: aloft_control::Server) -> aloft_control::Server {
        match &self.acme_directory {
            Some(directory) => server.acme(aloft_control::acme::AcmeOptions {
                directory: directory.clone(),
                email: self.acme_email.clone(),
                ca_root: self.acme_ca_root.clone(),
                challenge: self.acme_challenge,
            }),
            None => server,
        }
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(context::default_server_dir);
    let server = aloft_control::Server::open(aloft_control::ServerOptions {
        listen: args.listen,
        data_dir: data_dir.clone(),
        heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout),
        cluster: aloft_api::ClusterInfo {
            registry: args
                .registry_name
                .unwrap_or_else(|| aloft_api::ClusterInfo::default_registry(&args.domain)),
            domain: args.domain,
        },
    })
    .await
    .with_context(|| format!("Cannot open the control plane in {}", data_dir.display()))?;
    server
        .control()
        .hosts()
        .set_limits(aloft_control::HostLimits {
            max_cpus: args.host_max_cpus,
            max_memory_mb: args.host_max_memory_mb,
        });
    let scaler = aloft_control::autoscale::ScalerOptions {
        scale_down_after: Duration::from_secs(args.autoscale_idle),
        destroy_after: Duration::from_secs(args.autoscale_destroy_after),
        ..Default::default()
    };
    let server = with_registry(server, &data_dir, args.limits.registry_quota_per_app)?
        .scaler_options(scaler);
    let server = args.limits.apply(server)?;
    let server = args
        .acme
        .apply(server)
        .ip_pools(args.ip_pools)
        .dns_resolver(args.dns_resolver);
    if let Some(token) = &server.admin_token_created {
        println!("admin token: {token}");
        println!(
            "(shown once; saved to {} with mode 0600)",
            data_dir.join("admin-token").display()
        );
    }
    args.geodns.start(&server).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("Cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("aloft server listening on http://{addr}");
    server.serve(listener, shutdown_signal()).await?;
    println!("aloft server stopped");
    Ok(())
}

/// A DNS name: dot-separated labels of lowercase letters, digits and inner dashes.
pub fn domain_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a DNS name (lowercase letters, digits, inner dashes, dot-separated)"
        ))
    }
}

/// Mounts the built-in registry (kept in `DATA_DIR/registry`) at `/v2`.
pub fn with_registry(
    server: aloft_control::Server,
    data_dir: &std::path::Path,
    quota_per_app: Option<u64>,
) -> anyhow::Result<aloft_control::Server> {
    let registry_dir = data_dir.join("registry");
    let options = aloft_registry::RegistryOptions {
        app_quota: quota_per_app,
        ..Default::default()
    };
    let registry = aloft_registry::Registry::open_with(&registry_dir, options)
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
    let images = Arc::new(RegistryImages(registry.clone()));
    Ok(server
        .image_resolver(images)
        .merge_router(aloft_registry::router(registry, tokens)))
}

/// Manifests in the built-in registry, for pinning machines' images to digests.
struct RegistryImages(aloft_registry::Registry);

impl aloft_control::ImageResolver for RegistryImages {
    fn resolve(&self, repository: &str, reference: &str) -> Option<aloft_control::ResolvedImage> {
        let manifest = self.0.get_manifest(repository, reference).ok()?;
        Some(aloft_control::ResolvedImage {
            digest: manifest.digest.to_string(),
            labels: self.labels(repository, &manifest.body).unwrap_or_default(),
        })
    }
}

impl RegistryImages {
    /// The labels of an image manifest's config blob (an index has none of its own).
    fn labels(
        &self,
        repository: &str,
        manifest: &[u8],
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let manifest: serde_json::Value = serde_json::from_slice(manifest).ok()?;
        let digest: aloft_registry::Digest = manifest["config"]["digest"].as_str()?.parse().ok()?;
        let (path, size) = self.0.blob_file(repository, &digest).ok()?;
        if size > 1024 * 1024 {
            return None;
        }
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        serde_json::from_value(config["config"]["Labels"].clone()).ok()
    }
}

/// The registry trusts the control plane's tokens (a revoked or expired one at once): an app
/// or deploy token reaches its app's repositories, an org token its org's apps', the admin
/// token all of them, a host's credential may only pull the repositories of the apps with a
/// machine placed on that host, and a join token nothing.
struct ControlTokens(Arc<aloft_control::Control>);

impl aloft_registry::RegistryAuth for ControlTokens {
    fn authenticate(&self, secret: &str) -> Option<aloft_registry::Identity> {
        use aloft_control::TokenScope;
        Some(match self.0.authenticate(secret).ok()?.scope {
            TokenScope::Admin => aloft_registry::Identity::Admin,
            TokenScope::App(app) | TokenScope::Deploy(app) => aloft_registry::Identity::App(app),
            TokenScope::Org(org) => {
                let apps = self.0.apps().org_app_names(&org).ok()?;
                aloft_registry::Identity::Apps(apps.into_iter().collect())
            }
            TokenScope::Host(host) => aloft_registry::Identity::Puller {
                apps: self.0.hosts().apps_on_host(&host).into_iter().collect(),
            },
            TokenScope::Join => return None,
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
