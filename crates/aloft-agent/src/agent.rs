//! The agent's main loop: join the control plane, heartbeat, follow the watch stream and hand
//! each assignment to its machine's supervisor.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aloft_api::{AssignedMachine, Client, RegisterHostRequest};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::host::{HostOptions, HostRuntime};
use crate::store::{AgentStore, LocalMachine};
use crate::supervisor::{self, Command, Reporter, Shared};
use crate::AgentError;

/// How often the agent heartbeats.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// A watch stream silent for this long is presumed dead and reopened.
const WATCH_SILENCE: Duration = Duration::from_secs(30);

/// How to run an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub control_url: String,
    pub token: String,
    pub region: String,
    pub data_dir: PathBuf,
    /// Kept in the store after the first start.
    pub host_id: Option<String>,
    pub address: String,
    pub cpus: Option<i64>,
    pub memory_mb: Option<i64>,
    pub runc: PathBuf,
    pub init_binary: PathBuf,
    /// Host id of the first machine's root: machines get ranges of 65536 ids from here.
    pub userns_base: u32,
    /// Where the host API (exec, logs) listens; `None`: `address` on a free port.
    pub api_listen: Option<std::net::SocketAddr>,
    /// The edge's HTTP address; `None`: 127.0.0.1 on a free port.
    pub http: Option<std::net::SocketAddr>,
    /// The edge's HTTPS address (certificates from the edge's own CA); `None`: no HTTPS.
    pub https: Option<std::net::SocketAddr>,
    /// Apps answer at `<app>.<domain>` on the edge; `None`: the cluster's domain, as the
    /// control plane tells it.
    pub domain: Option<String>,
    /// Threads serving the edge's HTTP and HTTPS client connections, one single-threaded
    /// runtime each (`EdgeOptions::workers`); 0: the agent's own runtime.
    pub edge_workers: usize,
    /// Told the edge's bound HTTP address once it listens, or why it could not start.
    pub edge_ready: Option<crate::edge::EdgeReady>,
    /// Runs the WireGuard mesh between hosts; `None`: no mesh.
    pub mesh: Option<crate::mesh::MeshOptions>,
    /// Where `.internal` DNS listens (UDP and TCP); `None`: the host pool's IPv4 gateway, port 53.
    pub dns_listen: Option<std::net::SocketAddr>,
    /// Where DNS forwards other names; `None`: the first nameserver of `/etc/resolv.conf`.
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// Announces the edge's anycast prefixes over BGP while it is healthy; `None`: no BGP.
    pub bgp: Option<crate::bgp::BgpOptions>,
    /// The edge's public addresses, told to the control plane for GeoDNS.
    pub edge_addresses: Vec<std::net::IpAddr>,
    /// Per-machine disk quota and per-image unpack limits.
    pub storage: StorageLimits,
}

/// How much a machine and an image may use of the host's disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageLimits {
    /// Each new machine gets its own disk of this many MB (writable layer, logs); `None`:
    /// no quota, machines write to the host's filesystem.
    pub machine_disk_mb: Option<u64>,
    /// How much one image may unpack to.
    pub image: aloft_image::UnpackLimits,
}

/// Runs the agent until `shutdown` resolves. Machines keep running after it returns.
pub async fn run(opts: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| AgentError::Io {
        what: format!("creating {}", opts.data_dir.display()),
        source,
    })?;
    // No listing by other users; traversal stays open for user-namespaced machines, whose
    // root must reach the bind-mount sources under `machines/`.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o711)).map_err(
            |source| AgentError::Io {
                what: format!("restricting {}", opts.data_dir.display()),
                source,
            },
        )?;
    }
    warn_unsearchable_ancestors(&opts.data_dir);
    let store = AgentStore::open(&opts.data_dir.join("agent.db"))?;
    let host_id = match (opts.host_id.clone(), store.meta("host_id")?) {
        (Some(flag), Some(saved)) if flag != saved => {
            return Err(AgentError::HostIdMismatch { flag, saved });
        }
        (_, Some(saved)) => saved,
        (flag, None) => {
            let id = flag.unwrap_or_else(new_host_id);
            store.set_meta("host_id", &id)?;
            id
        }
    };
    // A host that enrolled before speaks with its own credential only; a new one enrols
    // with the join token (`--token`) first.
    let saved_credential = crate::credential::load(&opts.data_dir)?;
    if saved_credential.is_none() && opts.token.is_empty() {
        return Err(AgentError::Invalid(format!(
            "This host has no credential in {} yet: give a join token (--token-file PATH or ALOFT_JOIN_TOKEN; `aloft hosts join-token create` makes one) to enrol it",
            opts.data_dir.display()
        )));
    }
    let bootstrap = Client::new(
        &opts.control_url,
        saved_credential
            .clone()
            .unwrap_or_else(|| opts.token.clone()),
    )?;
    tokio::pin!(shutdown);
    let Some(cluster) = cluster_info(&bootstrap, &store, &mut shutdown).await? else {
        return Ok(());
    };
    let (cpus, memory_mb) = capacity(&opts);
    let (api_address, api_secret, host_api) = start_host_api(&opts, &store).await?;
    let mesh_identity = match &opts.mesh {
        Some(mesh) => Some(crate::mesh::MeshIdentity::load(
            &opts.data_dir,
            &opts.address,
            mesh,
        )?),
        None => None,
    };
    let saved_index = store
        .meta("host_index")?
        .and_then(|i| i.parse::<u32>().ok());
    // A host without an index yet proposes one derived from its id (what agents used before
    // the control plane assigned them), so hosts joined to different control planes on one
    // box, and data dirs from before, keep distinct address pools.
    let proposed_index = saved_index.unwrap_or_else(|| crate::host::proposed_host_index(&host_id));
    let mut register = RegisterHostRequest {
        id: host_id.clone(),
        region: opts.region.clone(),
        address: api_address,
        cpus,
        memory_mb,
        api_secret: Some(api_secret),
        mesh: mesh_identity.as_ref().map(|m| m.info()),
        host_index: Some(proposed_index),
        edge_addresses: opts.edge_addresses.iter().map(|a| a.to_string()).collect(),
    };
    let enrolled = match &saved_credential {
        Some(_) => None,
        None => match join(&bootstrap, &register, &mut shutdown).await? {
            Some(enrolled) => Some(enrolled),
            None => return Ok(()),
        },
    };
    let credential = match (&saved_credential, &enrolled) {
        (Some(saved), _) => saved.clone(),
        (
            None,
            Some(aloft_api::EnrolledHost {
                credential: Some(issued),
                ..
            }),
        ) => {
            crate::credential::save(&opts.data_dir, issued)?;
            info!(host = %host_id, "enrolled; the host credential is saved in the data dir");
            issued.clone()
        }
        // A control plane that hands out no credential: keep the token we were given.
        (None, _) => opts.token.clone(),
    };
    let client = Client::new(&opts.control_url, credential.clone())?;
    let opts = AgentOptions {
        domain: opts.domain.clone().or_else(|| Some(cluster.domain.clone())),
        token: credential,
        ..opts
    };
    // The edge next: on a restart it routes from its saved table even while the control
    // plane is down.
    let edge = crate::edge::EdgeRole::start_or_log(&opts, &host_id).await;
    let bgp = match &opts.bgp {
        Some(b) => {
            crate::bgp::BgpRole::start_or_log(
                b.clone(),
                edge.as_ref().map(|e| e.edge().http_addr()),
            )
            .await
        }
        None => None,
    };
    let joined = match enrolled {
        Some(enrolled) => enrolled.host,
        None => match join(&client, &register, &mut shutdown).await? {
            Some(enrolled) => enrolled.host,
            None => return Ok(()),
        },
    };
    // The control plane's index (kept across restarts) is this host's 6PN host field.
    let host_index = joined.host_index;
    if saved_index != Some(host_index) {
        store.set_meta("host_index", &host_index.to_string())?;
    }
    register.host_index = Some(host_index);
    let runtime = Arc::new(
        HostRuntime::open(
            HostOptions {
                data_dir: opts.data_dir.clone(),
                host_id: host_id.clone(),
                host_index,
                runc: opts.runc.clone(),
                init_binary: opts.init_binary.clone(),
                userns_base: opts.userns_base,
                control_url: opts.control_url.clone(),
                registry_name: cluster.registry.clone(),
                token: opts.token.clone(),
                nameserver: crate::dns::machine_nameserver(opts.dns_listen),
                storage: opts.storage,
            },
            store.clone(),
        )
        .await?,
    );

    let dns = crate::dns::DnsRole::start_or_log(
        &opts,
        runtime.host_index(),
        edge.as_ref().map(|e| e.edge().clone()),
        store.clone(),
    )
    .await;
    let mesh = match mesh_identity {
        Some(identity) => Some(
            crate::mesh::MeshRole::start(
                identity,
                host_index,
                host_id.clone(),
                client.clone(),
                edge.as_ref().map(|e| e.edge().clone()),
            )
            .await?,
        ),
        None => None,
    };
    println!(
        "aloft agent {host_id} joined {} in region {} ({cpus} cpus, {memory_mb} MB)",
        opts.control_url, opts.region
    );

    let heartbeat = {
        let client = client.clone();
        let host_id = host_id.clone();
        let register = register.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                match client.heartbeat(&host_id).await {
                    Ok(_) => {}
                    Err(e) if e.status() == Some(404) => {
                        let _ = client.register_host(&register).await;
                    }
                    Err(e) => warn!(error = %e, "heartbeat failed"),
                }
            }
        })
    };

    // What enters at this host's edge, reported for regional autoscaling.
    let load = edge.as_ref().map(|e| {
        let entries = e.edge().entry_load();
        tokio::spawn(crate::load::run(client.clone(), host_id.clone(), entries))
    });

    let shared = Shared {
        store: store.clone(),
        runtime,
        reporter: Reporter {
            client: client.clone(),
            host_id: host_id.clone(),
        },
    };
    let gc = tokio::spawn(crate::gc::run(shared.runtime.clone(), store.clone()));
    let mut supervisors: HashMap<String, mpsc::Sender<Command>> = HashMap::new();
    for local in store.machines()? {
        info!(machine = %local.assignment.id, phase = local.phase.as_str(), "adopting machine");
        spawn_supervisor(&shared, &mut supervisors, local);
    }

    let result = tokio::select! {
        r = follow(&client, &host_id, &shared, &mut supervisors) => r,
        _ = &mut shutdown => Ok(()),
    };
    // Routers move traffic away before the edge stops accepting.
    if let Some(bgp) = bgp {
        bgp.withdraw_and_stop().await;
    }
    heartbeat.abort();
    if let Some(mesh) = mesh {
        mesh.shutdown();
    }
    if let Some(load) = load {
        load.abort();
    }
    gc.abort();
    host_api.abort();
    if let Some(dns) = dns {
        dns.shutdown().await;
    }
    if let Some(edge) = edge {
        edge.shutdown().await;
    }
    info!("agent stopping; machines keep running");
    result
}

/// Registers with the control plane, retrying while it cannot be reached; a refusal (a
/// used or expired join token, a revoked credential, an id already taken) ends the agent.
/// `None` if shut down meanwhile.
async fn join(
    client: &Client,
    register: &RegisterHostRequest,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<aloft_api::EnrolledHost>, AgentError> {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::select! {
            r = client.register_host(register) => match r {
                Ok(host) => return Ok(Some(host)),
                Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                    return Err(AgentError::Join(e));
                }
                Err(e) => {
                    warn!(error = %supervisor::error_chain(&e), "cannot reach the control plane; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            },
            _ = shutdown.as_mut() => return Ok(None),
        }
    }
}

/// The cluster's shared names: the copy saved at the last start (so a host restarting while
/// the control plane is down still routes and pulls), refreshed from the control plane when it
/// answers; on a first start, waits for the control plane. `None` if shut down meanwhile.
async fn cluster_info(
    client: &Client,
    store: &AgentStore,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<aloft_api::ClusterInfo>, AgentError> {
    let saved = store
        .meta("cluster")?
        .and_then(|s| serde_json::from_str::<aloft_api::ClusterInfo>(&s).ok());
    let mut delay = Duration::from_millis(200);
    loop {
        let asked = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(3), client.cluster()) => r,
            _ = shutdown.as_mut() => return Ok(None),
        };
        match asked {
            Ok(Ok(cluster)) => {
                if saved.as_ref() != Some(&cluster) {
                    let json = serde_json::to_string(&cluster).unwrap_or_default();
                    store.set_meta("cluster", &json)?;
                }
                return Ok(Some(cluster));
            }
            Ok(Err(e)) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                return Err(AgentError::Join(e));
            }
            Ok(Err(e)) => {
                if saved.is_some() {
                    warn!(error = %supervisor::error_chain(&e), "cannot reach the control plane; using the saved cluster names");
                    return Ok(saved);
                }
                warn!(error = %supervisor::error_chain(&e), "cannot reach the control plane; retrying");
            }
            Err(_) if saved.is_some() => return Ok(saved),
            Err(_) => warn!("the control plane did not answer; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.as_mut() => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Binds and spawns the host API; returns the address to register, its secret and the task.
async fn start_host_api(
    opts: &AgentOptions,
    store: &AgentStore,
) -> Result<(String, String, tokio::task::JoinHandle<()>), AgentError> {
    use crate::hostapi;
    let listen = opts.api_listen.unwrap_or_else(|| {
        let ip = opts.address.parse().unwrap_or([0, 0, 0, 0].into());
        std::net::SocketAddr::new(ip, 0)
    });
    let listener = hostapi::bind(listen).await?;
    let bound = listener.local_addr().map_err(|source| AgentError::Io {
        what: format!("reading the host API address bound at {listen}"),
        source,
    })?;
    let secret = hostapi::secret(store)?;
    let mut sandbox = crate::runtime::SandboxOptions::new(
        opts.data_dir.join("machines"),
        opts.init_binary.clone(),
    );
    sandbox.runc = opts.runc.clone();
    sandbox.userns = Some(crate::runtime::userns::UsernsOptions {
        base: opts.userns_base,
    });
    let api = hostapi::HostApi {
        secret: secret.clone(),
        region: opts.region.clone(),
        driver: crate::runtime::SandboxDriver::new(sandbox),
        store: store.clone(),
    };
    let task = tokio::spawn(hostapi::serve(listener, api));
    Ok((hostapi::advertised(&opts.address, bound), secret, task))
}

fn spawn_supervisor(
    shared: &Shared,
    supervisors: &mut HashMap<String, mpsc::Sender<Command>>,
    local: LocalMachine,
) {
    let (tx, rx) = mpsc::channel(16);
    supervisors.insert(local.assignment.id.clone(), tx);
    tokio::spawn(supervisor::supervise(shared.clone(), local, rx));
}

/// Follows the watch stream forever, reopening it from the recorded revision.
async fn follow(
    client: &Client,
    host_id: &str,
    shared: &Shared,
    supervisors: &mut HashMap<String, mpsc::Sender<Command>>,
) -> Result<(), AgentError> {
    let mut delay = Duration::from_millis(200);
    loop {
        let since = shared.store.revision()?;
        match client.watch(host_id, since).await {
            Ok(stream) => {
                delay = Duration::from_millis(200);
                let mut stream = Box::pin(stream);
                loop {
                    let next = tokio::time::timeout(WATCH_SILENCE, stream.next()).await;
                    let event = match next {
                        Ok(Some(Ok(event))) => event,
                        Ok(Some(Err(e))) => {
                            warn!(error = %supervisor::error_chain(&e), "watch stream broke");
                            break;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            warn!("watch stream went silent; reopening");
                            break;
                        }
                    };
                    match event.machine {
                        Some(m) => {
                            shared.store.record_assignment(event.revision, &m)?;
                            dispatch(shared, supervisors, m).await?;
                        }
                        None => shared.store.record_revision(event.revision)?,
                    }
                }
            }
            Err(e) => warn!(error = %supervisor::error_chain(&e), "cannot open the watch stream"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn dispatch(
    shared: &Shared,
    supervisors: &mut HashMap<String, mpsc::Sender<Command>>,
    m: AssignedMachine,
) -> Result<(), AgentError> {
    if let Some(tx) = supervisors.get(&m.id) {
        if tx
            .send(Command::Assigned(Box::new(m.clone())))
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    // No live supervisor (new machine, or its supervisor finished after a destroy).
    if let Some(local) = shared.store.machine(&m.id)? {
        spawn_supervisor(shared, supervisors, local);
    }
    Ok(())
}

fn new_host_id() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..12)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

fn capacity(opts: &AgentOptions) -> (i64, i64) {
    let cpus = opts.cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1)
    });
    let memory = opts.memory_mb.unwrap_or_else(|| {
        let total_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<i64>().ok())
            })
            .unwrap_or(1024 * 1024);
        total_kb / 1024 * 9 / 10
    });
    (cpus, memory)
}

/// Machines' roots, in their user namespaces, must pass through every directory above the
/// data dir to reach their rootfs: one that others cannot search (e.g. a `mktemp -d`
/// directory, 0700) makes every machine fail to start, so say which and how to fix it.
fn warn_unsearchable_ancestors(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(full) = std::fs::canonicalize(data_dir) else {
        return;
    };
    for dir in full.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o001 == 0 {
            warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "machines run in user namespaces and cannot pass through this directory above \
                 the data dir: they will fail to start; run `chmod o+x` on it or choose another \
                 --data-dir"
            );
        }
    }
}
