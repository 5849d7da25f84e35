//! The host side of running a machine: image, network, rootfs and sandbox, put together.
//!
//! Supervisors call this facade; it owns no machine state of its own (the supervisor records
//! every step in the store) and can be replaced by a `microvm` flavour later without touching
//! the supervisors.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use aloft_api::AssignedMachine;
use aloft_image::{Credentials, Image, ImageStore, PullOptions, RegistryAccess};
use tracing::{debug, info, warn};

use crate::network::{self, HostNetwork, MachineNet, MachineNetRequest, NetworkOptions};
use crate::runtime;
use crate::store::LocalMachine;
use crate::AgentError;

/// What the agent tells the facade at start.
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub data_dir: PathBuf,
    pub host_id: String,
    /// The host index the control plane assigned (1..=65535): the 6PN host field and the
    /// IPv4 pool's third octet (modulo 256).
    pub host_index: u32,
    pub runc: PathBuf,
    pub init_binary: PathBuf,
    /// Host id of the first machine's root (see [`runtime::userns`]).
    pub userns_base: u32,
    /// The control plane, whose built-in registry serves images without a registry host.
    pub control_url: String,
    /// The built-in registry's cluster-wide name: references naming it are pulled from the
    /// control plane at `control_url`.
    pub registry_name: String,
    pub token: String,
    /// The nameserver in machines' `/etc/resolv.conf`; `None`: the pool gateway (where the
    /// host's DNS listens by default).
    pub nameserver: Option<std::net::IpAddr>,
    pub storage: crate::agent::StorageLimits,
}

/// What runs for a machine right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    /// The sandbox exists and its process ended with this code.
    Exited(i32),
    /// No sandbox.
    Missing,
}

/// Runs machines on this host.
#[derive(Debug)]
pub struct HostRuntime {
    images: ImageStore,
    network: HostNetwork,
    sandbox: runtime::SandboxDriver,
    /// The agent's store: where the addresses of this host's machines are recorded.
    store: crate::store::AgentStore,
    host_index: u32,
    nameserver: Option<std::net::IpAddr>,
    pull: PullOptions,
    /// Starts hold it shared and image collection exclusively, so a collection never removes
    /// an image between a start's lookup and its sandbox coming up.
    gc_gate: tokio::sync::RwLock<()>,
    /// Asks the collector (`crate::gc`) for a run before its next period.
    gc_wanted: tokio::sync::Notify,
    /// Networks this process built, kept across a stop so a restart reuses them instead of
    /// rebuilding (a fresh agent rebuilds each machine's network once).
    nets: std::sync::Mutex<std::collections::HashMap<String, (MachineNetRequest, MachineNet)>>,
    /// Machines last seen running: their init's pid and process start time.
    alive: std::sync::Mutex<std::collections::HashMap<String, (u32, u64)>>,
    /// Machines whose sandbox was seen stopped, with their exit code.
    ended: std::sync::Mutex<std::collections::HashMap<String, i32>>,
    /// Addresses handed out by this process, per machine: a start records its machine's
    /// addresses only once it is done, so machines starting at once must not get the same.
    handed_out: std::sync::Mutex<std::collections::HashMap<String, (Ipv4Addr, Ipv6Addr)>>,
}

/// FNV-1a, for stable numbers derived from names.
fn fnv1a(data: &str) -> u32 {
    data.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The host index a host proposes at its first registration: 1..=250 from a hash of its id.
pub fn proposed_host_index(host_id: &str) -> u32 {
    fnv1a(host_id) % 250 + 1
}

/// The 6PN network of an org: a stable, nonzero 32-bit number derived from its slug.
pub fn org_network(org: &str) -> u32 {
    fnv1a(org).max(1)
}

/// The addresses of the control plane at `url`, which machines must never reach.
async fn control_plane_addresses(url: &str) -> Vec<network::IpPrefix> {
    let parsed = reqwest::Url::parse(url).ok();
    let host = parsed.as_ref().and_then(|u| {
        let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']');
        Some((host.to_string(), u.port_or_known_default()?))
    });
    let Some((host, port)) = host else {
        warn!(%url, "cannot tell the control plane's address: machines are not kept from it");
        return Vec::new();
    };
    let found = tokio::net::lookup_host((host.as_str(), port)).await;
    match found {
        Ok(addrs) => {
            let mut out: Vec<network::IpPrefix> = Vec::new();
            for addr in addrs {
                let prefix = network::IpPrefix::host(addr.ip());
                if !out.contains(&prefix) {
                    out.push(prefix);
                }
            }
            out
        }
        Err(error) => {
            warn!(%url, %error, "cannot resolve the control plane: machines are not kept from it");
            Vec::new()
        }
    }
}

impl HostRuntime {
    pub async fn open(
        opts: HostOptions,
        store: crate::store::AgentStore,
    ) -> Result<HostRuntime, AgentError> {
        let images =
            ImageStore::open(opts.data_dir.join("images")).map_err(|source| AgentError::Image {
                reference: "(store)".into(),
                source,
            })?;
        images.set_limits(opts.storage.image);
        let host_index = opts.host_index;
        if !(1..=65535).contains(&host_index) {
            return Err(AgentError::Invalid(format!(
                "Host index {host_index} from the control plane is out of range (1..=65535)"
            )));
        }
        let mut net_opts = NetworkOptions::for_host(host_index);
        net_opts.nameservers.extend(opts.nameserver);
        net_opts.protected = control_plane_addresses(&opts.control_url).await;
        let network = HostNetwork::new(net_opts)?;
        network.ensure_host().await?;
        let mut sandbox_opts =
            runtime::SandboxOptions::new(opts.data_dir.join("machines"), opts.init_binary.clone());
        sandbox_opts.runc = opts.runc.clone();
        let userns = runtime::userns::UsernsOptions::checked(opts.userns_base)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        sandbox_opts.userns = Some(userns);
        sandbox_opts.disk_mb = opts.storage.machine_disk_mb;
        let sandbox = runtime::SandboxDriver::new(sandbox_opts);
        let pull = pull_options(&opts);
        Ok(HostRuntime {
            images,
            network,
            sandbox,
            store,
            host_index,
            nameserver: opts.nameserver,
            pull,
            gc_gate: tokio::sync::RwLock::new(()),
            gc_wanted: tokio::sync::Notify::new(),
            nets: Default::default(),
            alive: Default::default(),
            ended: Default::default(),
            handed_out: Default::default(),
        })
    }

    /// This host's 6PN host field.
    pub fn host_index(&self) -> u32 {
        self.host_index
    }

    /// What runs for the machine. A machine last seen running is checked through its init's
    /// `/proc` entry (same process start time, not a zombie) without spawning the runtime,
    /// which keeps the cost of supervisors' ticks flat as machines are added.
    pub async fn status(&self, id: &str) -> Result<RunStatus, AgentError> {
        let seen = self.alive_lock().get(id).copied();
        if let Some((pid, started)) = seen {
            if proc_start_time(pid) == Some(started) {
                return Ok(RunStatus::Running);
            }
            self.alive_lock().remove(id);
        }
        if let Some(code) = self.ended_lock().get(id).copied() {
            return Ok(RunStatus::Exited(code));
        }
        Ok(match self.sandbox.state(id).await? {
            None => RunStatus::Missing,
            Some(s)
                if matches!(
                    s.status,
                    runtime::RuntimeStatus::Running | runtime::RuntimeStatus::Paused
                ) =>
            {
                if let Some(pid) = s.pid {
                    if let Some(started) = proc_start_time(pid) {
                        self.alive_lock().insert(id.to_string(), (pid, started));
                    }
                }
                RunStatus::Running
            }
            Some(s) => {
                let code = s.exit_code.unwrap_or(-1);
                // Only this facade starts it again; until then it stays as it ended.
                if s.status == runtime::RuntimeStatus::Stopped {
                    self.ended_lock().insert(id.to_string(), code);
                }
                RunStatus::Exited(code)
            }
        })
    }

    fn ended_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, i32>> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what was last seen of the machine, before changing what runs.
    fn forget_status(&self, id: &str) {
        self.alive_lock().remove(id);
        self.ended_lock().remove(id);
    }

    fn alive_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u32, u64)>> {
        self.alive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pulls the image, sets up the network and starts the sandbox for the assignment's
    /// current instance. Fills in the machine's addresses (the caller records them).
    pub async fn start(&self, m: &mut LocalMachine) -> Result<(), AgentError> {
        let a = m.assignment.clone();
        let t = std::time::Instant::now();
        let _gate = self.gc_gate.read().await;
        let image = self.image(&a).await?;
        let t_image = t.elapsed();
        let (ipv4, ipv6) = self.addresses(m)?;
        m.ipv4 = Some(ipv4.to_string());
        m.ipv6 = Some(ipv6.to_string());
        // A stop cleans up after itself, and the driver's start clears what an app that
        // ended on its own left behind, so nothing is removed here.
        self.forget_status(&a.id);
        let t_addresses = t.elapsed();
        let req = MachineNetRequest {
            machine_id: a.id.clone(),
            network: org_network(&a.org),
            ipv4,
            ipv6,
        };
        let net = match self.built_net(&req) {
            Some(net) => net,
            None => {
                self.forget_net(&a.id);
                let net = self.network.setup_machine(&req).await?;
                self.nets_lock().insert(a.id.clone(), (req, net.clone()));
                net
            }
        };
        let t_network = t.elapsed();
        let (stop_signal, kill_timeout) = crate::supervisor::stop_params(&a);
        let spec = runtime::SandboxSpec {
            id: a.id.clone(),
            hostname: a.id.clone(),
            layers: image.layers.iter().map(|l| l.path.clone()).collect(),
            persist_rootfs: false,
            process: process_spec(&a, &image, ipv6)?,
            cpus: guest(&a).0,
            memory_mb: guest(&a).1,
            netns_path: Some(net.netns_path.clone()),
            hosts_file: network::hosts_file(&a.id, ipv4, ipv6),
            resolv_conf: network::resolv_conf(
                &[self.nameserver.unwrap_or(net.gateway_v4.into())],
                &[],
            ),
            stop_signal: signal_number(&stop_signal).unwrap_or(2),
            kill_timeout,
            mounts: Vec::new(),
        };
        let started = self.sandbox.start(&spec).await?;
        info!(pid = started.pid, ip = %ipv4, "sandbox started");
        debug!(
            image_us = t_image.as_micros() as u64,
            addresses_us = t_addresses.as_micros() as u64,
            network_us = t_network.as_micros() as u64,
            total_us = t.elapsed().as_micros() as u64,
            "start steps (cumulative)"
        );
        Ok(())
    }

    pub async fn stop(
        &self,
        m: &LocalMachine,
        signal: &str,
        timeout: Duration,
    ) -> Result<Option<i32>, AgentError> {
        let sig = signal_number(signal)
            .ok_or_else(|| AgentError::Invalid(format!("Unknown signal {signal:?}")))?;
        self.forget_status(&m.assignment.id);
        let status = self.sandbox.stop(&m.assignment.id, sig, timeout).await?;
        Ok(status.exit_code)
    }

    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), AgentError> {
        let sig = signal_number(signal)
            .ok_or_else(|| AgentError::Invalid(format!("Unknown signal {signal:?}")))?;
        self.sandbox.signal(id, sig).await?;
        Ok(())
    }

    /// Removes the sandbox, rootfs and network. Idempotent.
    pub async fn destroy(&self, m: &LocalMachine) -> Result<(), AgentError> {
        let id = &m.assignment.id;
        self.forget_net(id);
        self.forget_status(id);
        self.handed_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.sandbox.destroy(id).await?;
        let ipv4 = m.ipv4.as_deref().and_then(|s| s.parse().ok());
        self.network.teardown_machine(id, ipv4).await?;
        debug!(machine = %id, "machine removed from host");
        Ok(())
    }

    fn nets_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (MachineNetRequest, MachineNet)>>
    {
        self.nets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The network this process built for the same request, if its namespace is still there.
    fn built_net(&self, req: &MachineNetRequest) -> Option<MachineNet> {
        let nets = self.nets_lock();
        let (built, net) = nets.get(&req.machine_id)?;
        (built == req && net.netns_path.exists()).then(|| net.clone())
    }

    fn forget_net(&self, id: &str) {
        self.nets_lock().remove(id);
    }

    /// Asks for an image collection soon (after a machine is destroyed).
    pub fn request_gc(&self) {
        self.gc_wanted.notify_one();
    }

    /// Resolves when a collection was asked for.
    pub async fn gc_requested(&self) {
        self.gc_wanted.notified().await;
    }

    /// Removes the images and unpacked layers no machine in `store` uses. A machine keeps
    /// its image while it exists at all (stopped ones start again from it); a start in
    /// progress holds the gate, and pulls in progress are pinned by the image store.
    pub async fn collect_images(
        &self,
        store: &crate::store::AgentStore,
    ) -> Result<aloft_image::GcReport, AgentError> {
        let _gate = self.gc_gate.write().await;
        let store_error = |source| AgentError::Image {
            reference: "(store)".into(),
            source,
        };
        let mut in_use = HashSet::new();
        for m in store.machines()? {
            let reference = &m.assignment.config.image;
            // An unreadable record stops the collection rather than risk removing a used image.
            if let Some(img) = self.images.get(reference).map_err(store_error)? {
                in_use.insert(img.manifest_digest);
            }
        }
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.gc(&in_use))
            .await
            .map_err(|e| AgentError::Invalid(format!("Image collection panicked: {e}")))?
            .map_err(store_error)
    }

    /// Why a machine's process ended, for its exit event: the exit code, whether the kernel
    /// killed it for exceeding its memory limit, and the last lines of its log.
    pub fn exit_reason(&self, id: &str, code: i32) -> String {
        let mut reason = format!("exit code {code}");
        if oom_killed(id) {
            reason.push_str(", out of memory: killed for exceeding its memory limit");
        }
        let tail = self
            .sandbox
            .open_log(id, false)
            .map(|f| log_tail(f, 5))
            .unwrap_or_default();
        if !tail.is_empty() {
            reason.push_str("; last log lines: ");
            reason.push_str(&tail.join(" | "));
        }
        if reason.len() > 1000 {
            let mut end = 1000;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        reason
    }

    async fn image(&self, a: &AssignedMachine) -> Result<Image, AgentError> {
        let reference = a.config.image.clone();
        if let Ok(Some(img)) = self.images.get(&reference) {
            return Ok(img);
        }
        self.images
            .pull(&reference, &self.pull)
            .await
            .map_err(|source| match disk_full_path(&source) {
                Some(path) => AgentError::DiskFull {
                    what: format!("pulling image {reference}"),
                    path: path.unwrap_or_else(|| self.images.root().to_path_buf()),
                },
                None => AgentError::Image { reference, source },
            })
    }

    /// The machine's addresses: kept from an earlier start, else the next free ones.
    fn addresses(&self, m: &LocalMachine) -> Result<(Ipv4Addr, Ipv6Addr), AgentError> {
        let network = org_network(&m.assignment.org);
        if let (Some(v4), Some(v6)) = (&m.ipv4, &m.ipv6) {
            if let (Ok(v4), Ok(v6)) = (v4.parse(), v6.parse()) {
                return Ok((v4, v6));
            }
        }
        let pool = network::Ipv4Pool::for_host(self.host_index);
        let mut handed_out = self.handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = handed_out.get(&m.assignment.id) {
            return Ok(*mine);
        }
        let mut used = self.used_addresses()?;
        for (v4, v6) in handed_out.values() {
            used.0.insert(*v4);
            if let Some(p) = network::parse_sixpn(*v6) {
                used.1.insert(p.machine);
            }
        }
        let v4 = network::allocate(&used.0, &pool).ok_or_else(|| {
            AgentError::Invalid("No free private IPv4 address on this host".into())
        })?;
        let machine = network::allocate_sixpn_machine(&used.1)
            .ok_or_else(|| AgentError::Invalid("No free 6PN address on this host".into()))?;
        let v6 = network::sixpn_address(network, self.host_index, machine);
        handed_out.insert(m.assignment.id.clone(), (v4, v6));
        Ok((v4, v6))
    }

    fn used_addresses(&self) -> Result<(HashSet<Ipv4Addr>, HashSet<u32>), AgentError> {
        let mut v4 = HashSet::new();
        let mut v6 = HashSet::new();
        for m in self.store.machines()? {
            if let Some(a) = m.ipv4.and_then(|s| s.parse().ok()) {
                v4.insert(a);
            }
            if let Some(p) = m
                .ipv6
                .and_then(|s| s.parse().ok())
                .and_then(network::parse_sixpn)
            {
                v6.insert(p.machine);
            }
        }
        Ok((v4, v6))
    }
}

/// When the filesystem was full somewhere in `e`'s causes: the path it refused, if known.
/// (An unpacker may report a failed write as a malformed layer, keeping only the message.)
pub(crate) fn disk_full_path(e: &aloft_image::ImageError) -> Option<Option<PathBuf>> {
    let path = match e {
        aloft_image::ImageError::Io { path, .. } => Some(path.clone()),
        _ => None,
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let full = err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            || err.to_string().contains("No space left on device");
        if full {
            return Some(path);
        }
        cur = err.source();
    }
    None
}

/// The start time (clock ticks after boot) of a live, non-zombie process.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    // `starttime` is field 22 of the line, the 20th after the name.
    fields.get(19)?.parse().ok()
}

/// Whether the kernel's OOM killer killed a process in the machine's cgroup (v1 memory
/// controller, or the unified hierarchy), which lives until the sandbox is deleted.
fn oom_killed(id: &str) -> bool {
    let files = [
        format!("/sys/fs/cgroup/memory/aloft/{id}/memory.oom_control"),
        format!("/sys/fs/cgroup/aloft/{id}/memory.events"),
    ];
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

/// The last `n` lines of a machine log (JSON lines of `aloft_init::protocol::LogRecord`),
/// read from its last 8 KiB.
fn log_tail(mut f: std::fs::File, n: usize) -> Vec<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(8192);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || (&mut f).take(8192).read_to_end(&mut buf).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text
        .lines()
        .skip(usize::from(from > 0))
        .filter_map(|l| serde_json::from_str::<aloft_init::protocol::LogRecord>(l).ok())
        .map(|r| r.line.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let skip = lines.len().saturating_sub(n);
    lines.drain(..skip);
    lines
}

/// The control plane's host:port and whether it speaks plain HTTP.
fn registry_of(control_url: &str) -> (String, bool) {
    let plain = control_url.starts_with("http://");
    let rest = control_url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host = rest.split('/').next().unwrap_or(rest).to_string();
    (host, plain)
}

/// How this host pulls: the registry's cluster-wide name (and references that name no
/// registry) lead to the control plane, the only registry that gets this host's credentials;
/// every other registry is pulled from anonymously.
fn pull_options(opts: &HostOptions) -> PullOptions {
    let (control, plain_http) = registry_of(&opts.control_url);
    let mut pull = PullOptions::for_registry(
        control.clone(),
        RegistryAccess {
            credentials: Some(Credentials {
                username: "aloft".into(),
                password: opts.token.clone(),
            }),
            plain_http,
        },
    );
    pull.default_registry = Some(opts.registry_name.clone());
    if opts.registry_name != control {
        pull.aliases.insert(opts.registry_name.clone(), control);
    }
    pull
}

fn guest(a: &AssignedMachine) -> (u32, u64) {
    let g = a.config.guest.clone().unwrap_or_default();
    (
        g.cpus.clamp(1, 64) as u32,
        g.memory_mb.clamp(64, 262_144) as u64,
    )
}

/// The environment a machine sees: the image's, then the config's, then the platform's.
pub fn machine_env(a: &AssignedMachine, image: &Image, ipv6: Ipv6Addr) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for kv in &image.config.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    if let Some(cfg) = &a.config.env {
        env.extend(cfg.clone());
    }
    env.extend(a.secrets.clone());
    let group = a
        .config
        .metadata
        .as_ref()
        .and_then(|m| m.get("fly_process_group").cloned())
        .unwrap_or_else(|| "app".to_string());
    let primary = env
        .get("PRIMARY_REGION")
        .cloned()
        .unwrap_or_else(|| a.region.clone());
    let memory = guest(a).1.to_string();
    let platform = [
        ("APP_NAME", a.app.clone()),
        ("MACHINE_ID", a.id.clone()),
        ("ALLOC_ID", a.id.clone()),
        ("REGION", a.region.clone()),
        ("PUBLIC_IP", String::new()),
        ("IMAGE_REF", a.config.image.clone()),
        ("MACHINE_VERSION", a.version.clone()),
        ("PRIVATE_IP", ipv6.to_string()),
        ("PROCESS_GROUP", group),
        ("VM_MEMORY_MB", memory),
    ];
    for (k, v) in platform {
        env.insert(format!("FLY_{k}"), v.clone());
        env.insert(format!("ALOFT_{k}"), v);
    }
    env.insert("PRIMARY_REGION".into(), primary);
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.into_iter().collect()
}

/// argv: `init.exec` as is; else entrypoint (config's or image's) + cmd (config's, or the
/// image's unless the entrypoint was replaced).
pub fn argv(a: &AssignedMachine, image: &Image) -> Result<Vec<String>, AgentError> {
    let init = a.config.init.clone().unwrap_or_default();
    if let Some(exec) = init.exec.filter(|e| !e.is_empty()) {
        return Ok(exec);
    }
    let entry_overridden = init.entrypoint.is_some();
    let entrypoint = init
        .entrypoint
        .unwrap_or_else(|| image.config.entrypoint.clone());
    let cmd = match init.cmd {
        Some(cmd) => cmd,
        None if entry_overridden => Vec::new(),
        None => image.config.cmd.clone(),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(AgentError::Invalid(format!(
            "Image {} has no entrypoint or cmd and the machine config sets none",
            a.config.image
        )));
    }
    Ok(argv)
}

fn process_spec(
    a: &AssignedMachine,
    image: &Image,
    ipv6: Ipv6Addr,
) -> Result<runtime::ProcessSpec, AgentError> {
    Ok(runtime::ProcessSpec {
        args: argv(a, image)?,
        env: machine_env(a, image, ipv6),
        cwd: image
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: image.config.user.clone().unwrap_or_default(),
    })
}

/// `SIGTERM`, `TERM` or `15` → 15.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match bare {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ABRT" => 6,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "STOP" => 19,
        "CONT" => 18,
        "WINCH" => 28,
        _ => return None,
    };
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("SIGINT"), Some(2));
        assert_eq!(signal_number("term"), Some(15));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("0"), None);
    }

    #[test]
    fn registry_comes_from_the_control_url() {
        assert_eq!(
            registry_of("http://127.0.0.1:4280"),
            ("127.0.0.1:4280".into(), true)
        );
        assert_eq!(
            registry_of("https://cp.example/"),
            ("cp.example".into(), false)
        );
    }

    #[test]
    fn a_live_process_has_a_start_time_and_a_gone_one_none() {
        let me = std::process::id();
        assert!(proc_start_time(me).is_some());
        assert_eq!(proc_start_time(me), proc_start_time(me));
        assert_eq!(proc_start_time(u32::MAX), None);
    }

    /// A tmpfs mounted at a temporary directory, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot mount a tmpfs");
            Self(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    fn run(program: &str, args: &[&std::ffi::OsStr]) {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    }

    /// An image whose one layer (busybox) does not fit in an image store on a 1 MB disk:
    /// the error says the disk is full, and no partial download or unpack is left.
    #[tokio::test]
    async fn an_image_that_does_not_fit_is_reported_as_a_full_disk() {
        let src = tempfile::tempdir().unwrap();
        let rootfs = src.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let layout = src.path().join("layout");
        let image = src.path().join("layout:1");
        run(
            "umoci",
            &["init".as_ref(), "--layout".as_ref(), layout.as_os_str()],
        );
        run(
            "umoci",
            &["new".as_ref(), "--image".as_ref(), image.as_os_str()],
        );
        run(
            "umoci",
            &[
                "insert".as_ref(),
                "--image".as_ref(),
                image.as_os_str(),
                rootfs.as_os_str(),
                "/".as_ref(),
            ],
        );

        let disk = Tmpfs::mount("1m");
        let store = ImageStore::open(disk.0.path().join("images")).unwrap();
        let err = store
            .import_oci_layout(&layout, Some("1"))
            .await
            .unwrap_err();
        assert!(
            disk_full_path(&err).is_some(),
            "not seen as a full disk: {err}"
        );
        let agent_err = AgentError::DiskFull {
            what: "pulling image web:1".into(),
            path: disk_full_path(&err)
                .flatten()
                .unwrap_or_else(|| store.root().to_path_buf()),
        };
        assert!(
            agent_err.to_string().starts_with("Disk full"),
            "{agent_err}"
        );

        let leftovers: Vec<_> = walk(&disk.0.path().join("images"))
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        assert!(
            leftovers
                .iter()
                .all(|p| !p.starts_with(store.root().join("tmp"))
                    && !p.starts_with(store.root().join("layers"))),
            "partial files left: {leftovers:?}"
        );
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }

    #[test]
    fn org_networks_are_stable_and_nonzero() {
        assert_eq!(org_network("personal"), org_network("personal"));
        assert_ne!(org_network("personal"), org_network("other"));
        assert_ne!(org_network(""), 0);
    }
}
