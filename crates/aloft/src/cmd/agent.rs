//! `aloft agent`: runs the machines of one host.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The control plane's URL.
    #[arg(long, env = "ALOFT_CONTROL_URL", default_value = crate::context::DEFAULT_API_URL)]
    pub control: String,
    /// A file holding a join token (`aloft hosts join-token create`; else the
    /// `ALOFT_JOIN_TOKEN` environment variable), needed only to enrol: the host then keeps its
    /// own credential in DATA_DIR/host-credential and uses it from then on. Tokens are never
    /// taken on the command line, where `ps` shows them.
    #[arg(long, env = "ALOFT_JOIN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The region this host is in (e.g. ams, iad, syd).
    #[arg(long)]
    pub region: String,
    /// Where the agent keeps its store, images and machines.
    #[arg(long, default_value = "/var/lib/aloft/agent")]
    pub data_dir: PathBuf,
    /// This host's id (kept in the data dir after the first start).
    #[arg(long)]
    pub host_id: Option<String>,
    /// Address other hosts and the control plane reach this host at.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Where the host API (exec and logs, for the control plane) listens; the control plane
    /// is told `--address` with this port (default: `--address` on a free port).
    #[arg(long)]
    pub api_listen: Option<std::net::SocketAddr>,
    /// The edge's HTTP address (public traffic for this host's region).
    #[arg(long, default_value = "0.0.0.0:80")]
    pub http: std::net::SocketAddr,
    /// The edge's HTTPS address: `<app>.<domain>` with certificates of the cluster's CA
    /// (`aloft certs root`), custom hostnames with theirs.
    #[arg(long, default_value = "0.0.0.0:443", conflicts_with = "no_https")]
    pub https: std::net::SocketAddr,
    /// Serve no HTTPS on this host's edge.
    #[arg(long)]
    pub no_https: bool,
    /// Apps answer at <app>.<domain> on the edge (default: the cluster's, `aloft server
    /// --domain`).
    #[arg(long)]
    pub domain: Option<String>,
    /// Threads serving the edge's HTTP and HTTPS client connections, each with its own event
    /// loop and machine connections (default: one per CPU; 0: share the agent's runtime).
    #[arg(long)]
    pub edge_workers: Option<usize>,
    /// CPUs offered to machines (default: all).
    #[arg(long)]
    pub cpus: Option<i64>,
    /// Memory offered to machines in MB (default: 90% of the host's).
    #[arg(long)]
    pub memory_mb: Option<i64>,
    /// The runtime driver.
    #[arg(long, default_value = "sandbox")]
    pub runtime: String,
    /// Where `.internal` DNS listens, UDP and TCP (default: the host pool's IPv4 gateway,
    /// `172.19.<host index % 256>.1:53`, the nameserver in machines' /etc/resolv.conf).
    /// IP or IP:PORT; the port defaults to 53.
    #[arg(long, value_parser = dns_address)]
    pub dns_listen: Option<std::net::SocketAddr>,
    /// The resolver DNS forwards other names to (default: the first nameserver of
    /// /etc/resolv.conf). IP or IP:PORT; the port defaults to 53.
    #[arg(long, value_parser = dns_address)]
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// The OCI runtime binary.
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// Host uid and gid of the first machine's root: each machine runs in a user namespace
    /// whose ids 0-65535 map to its own range of 65536 host ids from here (below 4294967295).
    #[arg(long, default_value_t = aloft_agent::runtime::userns::DEFAULT_BASE, value_parser = userns_base)]
    pub userns_base: u32,
    /// The `aloft-init` binary (default: `aloft-init-static`, else `aloft-init`, next to this
    /// binary; `scripts/build.sh` builds the static one, which runs in any image).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Runs the WireGuard mesh to the other hosts on this UDP port of `--address`.
    #[arg(long)]
    pub mesh_port: Option<u16>,
    /// Simulated link to a region's hosts, REGION=ONE_WAY_DELAY_MS[:LOSS_PERCENT]
    /// (repeatable; needs --mesh-port): delay and loss added to what this host sends there.
    #[arg(long = "link", requires = "mesh_port")]
    pub links: Vec<aloft_agent::mesh::MeshLink>,
    /// A public address of this host's edge (repeatable, IPv4 and IPv6): the control plane's
    /// GeoDNS answers with it for clients nearest this region.
    #[arg(long = "edge-address", value_name = "IP")]
    pub edge_addresses: Vec<std::net::IpAddr>,
    /// Give each new machine its own disk of this many MB (a sparse ext4 image, loop-mounted):
    /// its writable layer and logs live there and writing past it fails with ENOSPC inside
    /// the machine (default: no quota; machines write to the host's filesystem).
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(16..))]
    pub machine_disk_mb: Option<u64>,
    /// The most one image may unpack to, in MB over all its layers.
    #[arg(long, value_name = "MB", default_value_t = 10240, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_mb: u64,
    /// The most entries (files, directories, links) one image may unpack to.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_files: u64,
    #[command(flatten)]
    pub bgp: Box<BgpArgs>,
}

/// Announcing the edge's anycast prefixes over BGP (through a bird2 process the agent runs).
#[derive(Debug, Args)]
pub struct BgpArgs {
    /// This host's autonomous system number; turns BGP on.
    #[arg(long, requires_all = ["bgp_neighbors", "anycast"])]
    pub bgp_asn: Option<u32>,
    /// The BGP router id (default: --address when it is an IPv4 address).
    #[arg(long, requires = "bgp_asn")]
    pub bgp_router_id: Option<std::net::Ipv4Addr>,
    /// A router to announce to: ADDR, ADDR:ASN or [IPV6]:ASN (repeatable; without an ASN the
    /// session is internal).
    #[arg(long = "bgp-neighbor", value_name = "ADDR[:ASN]", requires = "bgp_asn")]
    pub bgp_neighbors: Vec<aloft_agent::bgp::Neighbor>,
    /// A prefix announced while the edge is healthy, ADDR/LEN (repeatable, IPv4 and IPv6).
    #[arg(long = "anycast", value_name = "ADDR/LEN", requires = "bgp_asn")]
    pub anycast: Vec<aloft_agent::bgp::Prefix>,
    /// BGP hold time in seconds (keepalives every third of it).
    #[arg(long, default_value_t = aloft_agent::bgp::DEFAULT_HOLD_TIME)]
    pub bgp_hold_time: u16,
    /// Where bird's configuration, log and the drain file live (default: <data-dir>/bgp).
    #[arg(long)]
    pub bird_dir: Option<PathBuf>,
    /// bird's control socket (default: bird.ctl in --bird-dir).
    #[arg(long)]
    pub bird_socket: Option<PathBuf>,
    /// The bird binary.
    #[arg(long, default_value = "bird")]
    pub bird: PathBuf,
}

impl BgpArgs {
    fn options(
        self,
        data_dir: &std::path::Path,
        address: &str,
    ) -> anyhow::Result<Option<aloft_agent::bgp::BgpOptions>> {
        let Some(asn) = self.bgp_asn else {
            return Ok(None);
        };
        let router_id = match self.bgp_router_id {
            Some(id) => id,
            None => address.parse().map_err(|_| {
                crate::context::UsageError(format!(
                    "--bgp-router-id is needed: --address {address} is not an IPv4 address"
                ))
            })?,
        };
        let opts = aloft_agent::bgp::BgpOptions {
            asn,
            router_id,
            neighbors: self.bgp_neighbors,
            anycast: self.anycast,
            dir: self.bird_dir.unwrap_or_else(|| data_dir.join("bgp")),
            socket: self.bird_socket,
            hold_time: self.bgp_hold_time,
            bird: self.bird,
        };
        opts.validate()
            .map_err(|e| crate::context::UsageError(e.to_string()))?;
        Ok(Some(opts))
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.runtime != "sandbox" {
        return Err(crate::context::UsageError(format!(
            "Unknown runtime {:?}: this host supports `sandbox`",
            args.runtime
        ))
        .into());
    }
    let init = match args.init {
        Some(p) => p,
        None => default_init()?,
    };
    let bgp = (*args.bgp).options(&args.data_dir, &args.address)?;
    let token = join_token(args.token_file.as_deref())?;
    let storage = aloft_agent::StorageLimits {
        machine_disk_mb: args.machine_disk_mb,
        image: aloft_image::UnpackLimits {
            max_bytes: args.max_image_mb.saturating_mul(1 << 20),
            max_files: args.max_image_files,
        },
    };
    if args.machine_disk_mb.is_some() {
        check_disk_tools()?;
    } else {
        tracing::warn!(
            "no --machine-disk-mb: machines write to the host's filesystem without a quota"
        );
    }
    let opts = aloft_agent::AgentOptions {
        control_url: args.control,
        token,
        region: args.region,
        data_dir: args.data_dir,
        host_id: args.host_id,
        address: args.address,
        cpus: args.cpus,
        memory_mb: args.memory_mb,
        runc: args.runc,
        init_binary: init,
        userns_base: args.userns_base,
        http: Some(args.http),
        https: (!args.no_https).then_some(args.https),
        domain: args.domain,
        edge_workers: args
            .edge_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        edge_ready: None,
        api_listen: args.api_listen,
        dns_listen: args.dns_listen,
        dns_upstream: args.dns_upstream,
        mesh: args.mesh_port.map(|port| aloft_agent::mesh::MeshOptions {
            port,
            links: args.links,
        }),
        bgp,
        edge_addresses: args.edge_addresses,
        storage,
    };
    aloft_agent::run(opts, super::server::shutdown_signal()).await?;
    Ok(())
}

/// The join token from `--token-file` or `ALOFT_JOIN_TOKEN`; empty when neither is given
/// (a host that enrolled before uses its saved credential; the agent says what to do if it
/// has none).
fn join_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    Ok(match file {
        Some(path) => crate::context::read_token_file(path)?,
        None => std::env::var("ALOFT_JOIN_TOKEN")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    })
}

/// Machine disks need `mkfs.ext4` and loop mounts: refuse to start without them rather than
/// fail every machine later.
fn check_disk_tools() -> anyhow::Result<()> {
    let found = std::process::Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Err(crate::context::UsageError(
            "--machine-disk-mb needs mkfs.ext4 (e2fsprogs) and loop devices on this host".into(),
        )
        .into());
    }
    Ok(())
}

/// `aloft-init-static` next to this binary when it exists (it runs in any image), else
/// `aloft-init` (which needs a C library in the image).
pub fn default_init() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let fixed = dir.join("aloft-init-static");
    Ok(if fixed.exists() {
        fixed
    } else {
        dir.join("aloft-init")
    })
}

/// `IP:PORT`, or an IP alone for port 53 (`[v6]:PORT` for IPv6 with a port).
fn dns_address(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not an IP address or IP:PORT"))
}

/// A `--userns-base` that leaves room for at least one range of host ids.
fn userns_base(text: &str) -> Result<u32, String> {
    let base: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a host id (0-4294967295)"))?;
    aloft_agent::runtime::userns::UsernsOptions::checked(base)
        .map(|o| o.base)
        .map_err(|e| e.to_string())
}
