//! Sandbox runtime driver: runs each machine as an OCI container under `runc`.
//!
//! Per machine the driver keeps a directory `<root>/machines/<id>/` holding the bundle
//! (`bundle/config.json`), the overlay `rootfs/` over the image layers with its `upper/` and
//! `work/`, the `log/` and `run/` directories shared with `aloft-init`, and the generated
//! `hosts`, `resolv.conf` and `run.json`. Runc's state lives in `<root>/runc`, apart from any
//! other runc user. The driver keeps no state in memory: after an agent restart a new driver
//! over the same root finds machines with [`SandboxDriver::list`] and
//! [`SandboxDriver::state`].
//!
//! The container's stdio is `/dev/null` and runc detaches it, so machines keep running when
//! the agent dies; `aloft-init` (PID 1 in the machine) captures app output into a bounded log
//! and serves exec and signals over a unix socket in `run/`.
//!
//! The public surface ([`SandboxDriver`]'s async methods and the plain data types) is what a
//! future `microvm` driver implements too; it must not grow runc-specific types. This module
//! does not touch networking: it only joins the network namespace it is given.

mod bundle;
mod confined;
mod idmap;
mod rootfs;
mod runc;
mod seccomp;
mod secrets;
mod types;
pub mod userns;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aloft_init::protocol::{
    self as wire, ExitRecord, InitRequest, RunConfig, SignalRequest, SignalResponse,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

pub use bundle::UserError;
pub(crate) use types::MachinePaths;
use types::{io_err, validate_id, PID_FILE, SPEC_FILE};
pub use types::{
    BindMount, ExecOutput, ExecRequest, ExitStatus, ProcessSpec, RuntimeError, RuntimeState,
    RuntimeStatus, SandboxOptions, SandboxSpec, Started,
};

/// How often lifecycle waits look at init's pid.
const PID_POLL: Duration = Duration::from_millis(2);
/// How long to wait for a container to stop after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long `start` waits for init to serve its socket.
const INIT_READY_WAIT: Duration = Duration::from_secs(10);

/// Runs machines as runc containers. See the module docs.
#[derive(Debug, Clone)]
pub struct SandboxDriver {
    options: SandboxOptions,
    runc: runc::Runc,
}

impl SandboxDriver {
    pub fn new(options: SandboxOptions) -> Self {
        let runc = runc::Runc {
            binary: options.runc.clone(),
            root: options.root.join("runc"),
        };
        Self { options, runc }
    }

    fn paths(&self, id: &str) -> MachinePaths {
        MachinePaths::new(
            self.options.root.join("machines").join(id),
            self.options.secrets_dir.join(id),
        )
    }

    /// Ids of every machine the driver has a directory for (running or not).
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.options.root.join("machines"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    /// Host path of the machine's current app log (JSON lines of
    /// [`aloft_init::protocol::LogRecord`]; the previous one is `app.log.1` beside it).
    /// The machine can replace these files: read them with [`SandboxDriver::open_log`].
    pub fn logs(&self, id: &str) -> PathBuf {
        self.paths(id).log.join(wire::LOG_FILE)
    }

    /// Open the machine's current app log (or the rotated one) for reading, refusing
    /// anything but a regular file reached without following a link: the machine owns the
    /// log directory and may have put a symlink, FIFO or device there.
    pub fn open_log(&self, id: &str, rotated: bool) -> Result<std::fs::File, RuntimeError> {
        validate_id(id)?;
        let paths = self.paths(id);
        let name = if rotated {
            wire::LOG_FILE_ROTATED
        } else {
            wire::LOG_FILE
        };
        let rel = paths.shared_rel.join(LOG_REL).join(name);
        confined::Confined::open(&paths.dir)
            .and_then(|dir| dir.open_regular(&rel))
            .map_err(|source| RuntimeError::Confined {
                path: paths.dir.join(rel),
                source,
            })
    }

    /// Prepare the rootfs and bundle and start the machine, detached from the caller.
    ///
    /// A clean stop leaves nothing to undo (see [`SandboxDriver::stop`]), so a start only
    /// asks runc about the machine when runc keeps state for it, and only empties the
    /// writable layer when something is in it. On failure everything this start wrote is
    /// removed again; a full disk is reported as [`RuntimeError::DiskFull`].
    pub async fn start(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        validate_id(&spec.id)?;
        let id = spec.id.as_str();
        let paths = self.paths(id);
        let t = Instant::now();
        let existing = self.runc.state(id).await?;
        if let Some(state) = &existing {
            // "created" is a start that never finished (the agent died inside `runc run`):
            // nothing ran yet, so it is cleaned up below like a stopped one.
            if state.status != "stopped" && state.status != "created" {
                return Err(RuntimeError::AlreadyRunning(id.to_string()));
            }
        }
        let paths = self.prepare_disk(id, paths)?;
        let started = self.start_inner(spec, &paths, existing.is_some(), t).await;
        match started {
            Ok(started) => Ok(started),
            Err(e) => {
                // Asked before the cleanup below frees what this start wrote.
                let e = self.disk_full_or(e, &paths);
                let _ = self.runc.delete(id).await;
                let _ = rootfs::unmount(&paths.rootfs);
                remove_start_files(&paths);
                if !spec.persist_rootfs {
                    let _ = rootfs::reset_dir(&paths.upper);
                    let _ = rootfs::reset_dir(&paths.work);
                }
                Err(e)
            }
        }
    }

    async fn start_inner(
        &self,
        spec: &SandboxSpec,
        paths: &MachinePaths,
        leftover: bool,
        t: Instant,
    ) -> Result<Started, RuntimeError> {
        let id = spec.id.as_str();
        // Leftovers of a previous run that ended on its own.
        if leftover {
            self.runc.delete(id).await?;
        }
        rootfs::unmount(&paths.rootfs)?;
        for dir in [
            &paths.bundle,
            &paths.rootfs,
            &paths.upper,
            &paths.work,
            &paths.log,
            &paths.run,
        ] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::create_dir_all(&self.runc.root).map_err(io_err(&self.runc.root))?;
        let ids = self.id_range(id, paths)?;
        // A destroy elsewhere may remove the (then empty) secrets directory in between.
        for _ in 0..3 {
            secrets::ensure_private_tmpfs(&self.options.secrets_dir)?;
            if secrets::create_private_dir(&paths.secrets)? {
                break;
            }
        }
        if let Some(range) = ids {
            // The machine's root reads its run config through this directory (runc binds it
            // from inside the user namespace); no other machine's root can.
            std::os::unix::fs::lchown(&paths.secrets, Some(range.host), Some(range.host))
                .map_err(io_err(&paths.secrets))?;
        }
        // Where earlier versions kept the environment on disk.
        let legacy = [paths.dir.join("run.json"), paths.bundle.join(BUNDLE_KEY)];
        for stale in [paths.exit_file(), paths.socket(), paths.pid_file.clone()]
            .into_iter()
            .chain(legacy)
        {
            let _ = std::fs::remove_file(stale);
        }
        let written = !is_empty_dir(&paths.upper) || !is_empty_dir(&paths.work);
        if !spec.persist_rootfs && written {
            rootfs::reset_dir(&paths.upper)?;
            rootfs::reset_dir(&paths.work)?;
        }
        // The bundle of the previous start serves again when nothing that shapes it changed
        // (the image user is resolved in the image's layers, the same ones unless persisted).
        let key = self.bundle_key(spec, ids);
        let key_file = paths.secrets.join(BUNDLE_KEY);
        let reuse = !spec.persist_rootfs
            && std::fs::read(&key_file).is_ok_and(|k| k == key)
            && bundle_files(paths).iter().all(|f| f.exists());
        if !reuse {
            let _ = std::fs::remove_file(&key_file);
            write(&paths.spec, &secrets::without_env(spec))?;
        }
        let t_clean = t.elapsed();
        let layers = self.sandbox_layers(spec, paths, ids)?;
        rootfs::mount_overlay(&layers, &paths.upper, &paths.work, &paths.rootfs)?;
        let t_rootfs = t.elapsed();
        if !reuse {
            self.write_bundle(spec, paths, ids)?;
            secrets::write_private(&key_file, &key)?;
        }
        let t_bundle = t.elapsed();
        self.runc
            .run_detached(id, &paths.bundle, &paths.pid_file, &paths.runc_log)
            .await?;
        let t_runc = t.elapsed();
        let pid_text = std::fs::read_to_string(&paths.pid_file).map_err(io_err(&paths.pid_file))?;
        let pid = pid_text.trim().parse().unwrap_or(0);
        self.wait_init_ready(id, paths, pid).await?;
        let instance_id = new_instance_id(pid);
        write(&paths.instance, instance_id.as_bytes())?;
        debug!(
            machine = id,
            clean_us = t_clean.as_micros() as u64,
            rootfs_us = t_rootfs.as_micros() as u64,
            bundle_us = t_bundle.as_micros() as u64,
            runc_us = t_runc.as_micros() as u64,
            total_us = t.elapsed().as_micros() as u64,
            "sandbox start steps (cumulative)"
        );
        info!(machine = id, pid, instance = %instance_id, "machine started");
        Ok(Started { pid, instance_id })
    }

    /// Give a new machine its own disk when the driver is configured with one, and mount
    /// the disk of a machine that has one; returns the machine's paths on it.
    fn prepare_disk(&self, id: &str, paths: MachinePaths) -> Result<MachinePaths, RuntimeError> {
        if let Some(mb) = self.options.disk_mb {
            let fresh = !paths.upper.exists() || is_empty_dir(&paths.upper);
            if !paths.disk_image.exists() && fresh {
                std::fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;
                let t = Instant::now();
                rootfs::ensure_disk(&paths.disk_image, &paths.disk, mb)?;
                info!(
                    machine = id,
                    size_mb = mb,
                    ms = t.elapsed().as_millis() as u64,
                    "machine disk created"
                );
            } else if !paths.disk_image.exists() {
                warn!(
                    machine = id,
                    "machine keeps a writable layer from before disks were enabled: no disk quota"
                );
            }
        }
        if paths.disk_image.exists() {
            rootfs::ensure_disk(&paths.disk_image, &paths.disk, 0)?;
        }
        Ok(self.paths(id))
    }

    /// What a machine's bundle is generated from: its spec, its id range and the driver
    /// options used.
    fn bundle_key(&self, spec: &SandboxSpec, ids: Option<userns::IdRange>) -> Vec<u8> {
        let o = &self.options;
        serde_json::to_vec(&(spec, &o.init_binary, o.pids_limit, o.seccomp, ids))
            .unwrap_or_default()
    }

    /// The machine's host id range (claimed at its first start), when machines get one.
    fn id_range(
        &self,
        id: &str,
        paths: &MachinePaths,
    ) -> Result<Option<userns::IdRange>, RuntimeError> {
        let Some(opts) = &self.options.userns else {
            return Ok(None);
        };
        userns::range(opts, &self.options.root, id, paths)
            .map(Some)
            .map_err(|source| RuntimeError::Userns {
                id: id.to_string(),
                source,
            })
    }

    /// The lower layers of the machine's overlay (seen through its id range when it has
    /// one), after handing what it writes through to its root and letting that root bind
    /// low ports in the network namespace it joins.
    fn sandbox_layers(
        &self,
        spec: &SandboxSpec,
        paths: &MachinePaths,
        ids: Option<userns::IdRange>,
    ) -> Result<Vec<PathBuf>, RuntimeError> {
        let Some(range) = ids else {
            return Ok(spec.layers.clone());
        };
        let err = |source| RuntimeError::Userns {
            id: spec.id.clone(),
            source,
        };
        userns::give(paths, range, &spec.mounts).map_err(err)?;
        if let Some(netns) = &spec.netns_path {
            userns::prepare_netns(paths, netns).map_err(err)?;
        }
        if spec.layers.is_empty() {
            return Err(RuntimeError::NoLayers);
        }
        userns::idmapped_layers(paths, &spec.layers, range).map_err(err)
    }

    /// Writes `/etc/hosts`, `/etc/resolv.conf`, init's run config and the OCI bundle.
    fn write_bundle(
        &self,
        spec: &SandboxSpec,
        paths: &MachinePaths,
        ids: Option<userns::IdRange>,
    ) -> Result<(), RuntimeError> {
        let id = spec.id.as_str();
        let (uid, gid) =
            bundle::resolve_user(&paths.rootfs, &spec.process.user).map_err(|source| {
                RuntimeError::User {
                    id: id.to_string(),
                    user: spec.process.user.clone(),
                    source,
                }
            })?;
        write(&paths.hosts, spec.hosts_file.as_bytes())?;
        write(&paths.resolv_conf, spec.resolv_conf.as_bytes())?;
        let mut run = RunConfig::new(spec.process.args.clone());
        run.env = spec.process.env.clone();
        if !run.env.iter().any(|(k, _)| k == "HOME") {
            run.env
                .push(("HOME".into(), bundle::home_dir(&paths.rootfs, uid)));
        }
        run.cwd = if spec.process.cwd.is_empty() {
            "/".into()
        } else {
            spec.process.cwd.clone()
        };
        run.uid = uid;
        run.gid = gid;
        secrets::write_private(
            &paths.run_config,
            &serde_json::to_vec(&run).unwrap_or_default(),
        )?;
        if let Some(range) = ids {
            std::os::unix::fs::lchown(&paths.run_config, Some(range.host), Some(range.host))
                .map_err(io_err(&paths.run_config))?;
        }

        let oci = bundle::build_spec(
            spec,
            paths,
            &self.options.init_binary,
            self.options.pids_limit,
            self.options.seccomp,
            ids,
        )
        .map_err(|source| RuntimeError::Spec {
            id: id.to_string(),
            source,
        })?;
        let config = paths.bundle.join("config.json");
        let bytes = serde_json::to_vec(&oci).map_err(|e| RuntimeError::Spec {
            id: id.to_string(),
            source: oci_spec::OciSpecError::Other(e.to_string()),
        })?;
        write(&config, &bytes)
    }

    /// `e`, or [`RuntimeError::DiskFull`] when the filesystem under the machine's directory
    /// (or runc's state) has no space left: runc cannot always log why it failed when the
    /// disk is full, so the filesystem is asked.
    fn disk_full_or(&self, e: RuntimeError, paths: &MachinePaths) -> RuntimeError {
        if matches!(e, RuntimeError::DiskFull { .. }) {
            return e;
        }
        let full = [&paths.dir, &self.runc.root]
            .into_iter()
            .find(|dir| no_space_left(dir));
        match full {
            Some(dir)
                if matches!(
                    e,
                    RuntimeError::Runc { .. }
                        | RuntimeError::Io { .. }
                        | RuntimeError::Userns { .. }
                ) =>
            {
                RuntimeError::DiskFull {
                    path: dir.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::StorageFull),
                }
            }
            _ => e,
        }
    }

    /// Current state; `None` when the driver has never seen the machine.
    pub async fn state(&self, id: &str) -> Result<Option<RuntimeState>, RuntimeError> {
        validate_id(id)?;
        let paths = self.paths(id);
        if !paths.dir.exists() {
            return Ok(None);
        }
        let runc_state = self.runc.state(id).await?;
        let (status, pid) = match runc_state {
            Some(s) => {
                let status = match s.status.as_str() {
                    "created" | "creating" => RuntimeStatus::Created,
                    "running" => RuntimeStatus::Running,
                    "paused" | "pausing" => RuntimeStatus::Paused,
                    _ => RuntimeStatus::Stopped,
                };
                let pid = (status != RuntimeStatus::Stopped && s.pid > 0).then_some(s.pid as u32);
                (status, pid)
            }
            None => (RuntimeStatus::Stopped, None),
        };
        let exit_code = if status == RuntimeStatus::Stopped {
            read_exit(&paths).map(|r| r.exit_code)
        } else {
            None
        };
        Ok(Some(RuntimeState {
            status,
            pid,
            exit_code,
        }))
    }

    /// Wait until the machine's main process has ended (the machine is stopped) and return
    /// how. The container is left for `stop` or `start` to clean up.
    pub async fn wait_exit(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        validate_id(id)?;
        let paths = self.paths(id);
        if !paths.dir.exists() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        while !self.wait_stopped(id, Duration::from_secs(3600)).await? {}
        Ok(exit_status(read_exit(&paths), false))
    }

    /// Deliver `signal` to the machine's main process group through init. Returns whether
    /// it was delivered (false when the main process has already ended).
    pub async fn signal(&self, id: &str, signal: i32) -> Result<bool, RuntimeError> {
        validate_id(id)?;
        let line = self
            .request(
                id,
                &InitRequest::Signal(SignalRequest { signal }),
                Duration::from_secs(5),
            )
            .await?;
        let resp: SignalResponse = serde_json::from_str(&line).map_err(|e| RuntimeError::Init {
            id: id.to_string(),
            message: format!("unreadable answer: {e}"),
        })?;
        Ok(resp.delivered)
    }

    /// Stop the machine: `signal` to the main process (through init), SIGKILL to the whole
    /// machine after `timeout`, then delete the container, unmount the rootfs and reset the
    /// writable layer unless the machine persists it.
    pub async fn stop(
        &self,
        id: &str,
        signal: i32,
        timeout: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        validate_id(id)?;
        let paths = self.paths(id);
        if !paths.dir.exists() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let mut killed = false;
        if let Some(state) = self.runc.state(id).await? {
            // A frozen machine cannot act on any signal, SIGKILL included, until thawed.
            if state.status == "paused" {
                self.runc.resume(id).await?;
            }
            if state.status == "running" || state.status == "paused" {
                let delivered = self.signal(id, signal).await.unwrap_or(false);
                if !delivered {
                    let _ = self.runc.kill(id, signal).await;
                }
                killed = !self.wait_stopped(id, timeout).await?;
            } else if state.status != "stopped" {
                killed = true;
            }
            if killed {
                warn!(machine = id, "machine did not stop in time, killing it");
                let _ = self.runc.kill(id, libc::SIGKILL).await;
                if !self.wait_stopped(id, KILL_WAIT).await? {
                    return Err(RuntimeError::StopTimeout {
                        id: id.to_string(),
                        waited: KILL_WAIT,
                    });
                }
            }
        }
        let record = read_exit(&paths);
        let persist = read_spec(&paths).is_some_and(|s| s.persist_rootfs);
        self.cleanup(id, &paths, persist).await?;
        info!(machine = id, "machine stopped");
        Ok(exit_status(record, killed))
    }

    /// Stop the machine at once (SIGKILL) and remove everything the driver keeps for it.
    pub async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let paths = self.paths(id);
        if let Some(state) = self.runc.state(id).await? {
            if state.status == "paused" {
                self.runc.resume(id).await?;
            }
            let _ = self.runc.kill(id, libc::SIGKILL).await;
            self.wait_stopped(id, KILL_WAIT).await?;
        }
        self.cleanup(id, &paths, false).await?;
        if rootfs::is_mounted(&paths.rootfs) {
            return Err(RuntimeError::StillMounted(paths.rootfs));
        }
        userns::unmount_layers(&paths);
        userns::release(&self.options.root, id, &paths);
        rootfs::release_disk(&paths.disk)?;
        match std::fs::remove_dir_all(&paths.secrets) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(&paths.secrets)(e))
            }
            _ => {}
        }
        // The driver's secrets directory goes with its last machine (fails while not empty).
        let _ = std::fs::remove_dir(&self.options.secrets_dir);
        match std::fs::remove_dir_all(&paths.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&paths.dir)(e)),
            _ => Ok(()),
        }
    }

    /// Run a command in a running machine.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecOutput, RuntimeError> {
        validate_id(id)?;
        let wire_req = InitRequest::Exec(wire::ExecRequest {
            cmd: req.cmd.clone(),
            env: req.env.iter().cloned().collect(),
            stdin: req.stdin.clone(),
            timeout_ms: u64::try_from(req.timeout.as_millis()).unwrap_or(u64::MAX),
        });
        let line = self
            .request(id, &wire_req, req.timeout + Duration::from_secs(10))
            .await?;
        let resp: wire::ExecResponse =
            serde_json::from_str(&line).map_err(|e| RuntimeError::Init {
                id: id.to_string(),
                message: format!("unreadable answer: {e}"),
            })?;
        Ok(ExecOutput {
            exit_code: resp.exit_code,
            stdout: resp.stdout,
            stderr: resp.stderr,
            timed_out: resp.timed_out,
        })
    }

    /// One request/answer on the init socket.
    ///
    /// The socket is opened without following links and must be served by the machine's
    /// own init (its peer pid is the pid runc started): a machine that replaces its socket
    /// by a link to another machine's, or serves a socket of its own, is refused.
    async fn request(
        &self,
        id: &str,
        req: &InitRequest,
        limit: Duration,
    ) -> Result<String, RuntimeError> {
        let paths = self.paths(id);
        let socket = paths.socket();
        let init_err = |message: String| RuntimeError::Init {
            id: id.to_string(),
            message,
        };
        let confined = |source| RuntimeError::Confined {
            path: socket.clone(),
            source,
        };
        let dir = confined::Confined::open(&paths.dir).map_err(confined)?;
        let init_pid = read_init_pid(&dir).map_err(confined)?;
        let fd = dir
            .open_socket(&paths.shared_rel.join(RUN_REL).join(wire::SOCKET_NAME))
            .map_err(confined)?;
        let exchange = async {
            let mut stream = UnixStream::connect(confined::fd_path(&fd))
                .await
                .map_err(|e| init_err(format!("cannot connect to {}: {e}", socket.display())))?;
            let peer = stream
                .peer_cred()
                .map_err(|e| init_err(format!("cannot read the socket's peer: {e}")))?;
            if peer.pid() != i32::try_from(init_pid).ok() {
                warn!(
                    machine = id,
                    peer_pid = ?peer.pid(),
                    init_pid,
                    "init socket is served by a process other than the machine's init"
                );
                return Err(RuntimeError::ForeignSocket {
                    id: id.to_string(),
                    peer: peer.pid(),
                });
            }
            let mut bytes = serde_json::to_vec(req).map_err(|e| init_err(e.to_string()))?;
            bytes.push(b'\n');
            stream
                .write_all(&bytes)
                .await
                .map_err(|e| init_err(e.to_string()))?;
            let mut line = String::new();
            BufReader::new(stream.take(MAX_ANSWER))
                .read_line(&mut line)
                .await
                .map_err(|e| init_err(e.to_string()))?;
            if line.is_empty() {
                return Err(init_err("connection closed without an answer".into()));
            }
            Ok(line)
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| init_err(format!("no answer within {limit:?}")))?
    }

    /// Wait until init serves its socket (or the machine has already ended), so exec and
    /// signals work as soon as `start` returns.
    async fn wait_init_ready(
        &self,
        id: &str,
        paths: &MachinePaths,
        pid: u32,
    ) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + INIT_READY_WAIT;
        let socket = paths.socket();
        let dir =
            confined::Confined::open(&paths.dir).map_err(|source| RuntimeError::Confined {
                path: paths.dir.clone(),
                source,
            })?;
        let rel = paths.shared_rel.join(RUN_REL).join(wire::SOCKET_NAME);
        while !dir.exists_as_socket(&rel) && pid_alive(pid) {
            if Instant::now() >= deadline {
                return Err(RuntimeError::Init {
                    id: id.to_string(),
                    message: format!(
                        "no socket at {} within {INIT_READY_WAIT:?}",
                        socket.display()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Poll until runc reports the container stopped (or gone); false on timeout.
    async fn wait_stopped(&self, id: &str, timeout: Duration) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let pid = match self.runc.state(id).await? {
                None => return Ok(true),
                Some(s) if s.status == "stopped" => return Ok(true),
                Some(s) => u32::try_from(s.pid).unwrap_or(0),
            };
            // Watching init's pid is far cheaper than asking runc again.
            while pid_alive(pid) {
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(PID_POLL).await;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Delete the container, unmount the rootfs, and reset the writable layer unless kept.
    async fn cleanup(
        &self,
        id: &str,
        paths: &MachinePaths,
        persist: bool,
    ) -> Result<(), RuntimeError> {
        self.runc.delete(id).await?;
        rootfs::unmount(&paths.rootfs)?;
        userns::unmount_sys(paths);
        let _ = std::fs::remove_file(paths.socket());
        if !persist && paths.upper.exists() {
            rootfs::reset_dir(&paths.upper)?;
            rootfs::reset_dir(&paths.work)?;
        }
        Ok(())
    }
}

/// Whether host process `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Whether `dir` exists and holds nothing (a missing or unreadable one counts as not empty,
/// so it gets reset).
fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Whether the filesystem holding `dir` has no block left for an unprivileged writer.
fn no_space_left(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir).is_ok_and(|s| s.blocks_available() == 0)
}

/// The file in the bundle directory recording what the bundle was generated from.
const BUNDLE_KEY: &str = "generated-from.json";

/// The files a start generates before running the machine.
fn bundle_files(paths: &MachinePaths) -> [PathBuf; 5] {
    [
        paths.spec.clone(),
        paths.hosts.clone(),
        paths.resolv_conf.clone(),
        paths.run_config.clone(),
        paths.bundle.join("config.json"),
    ]
}

/// Removes the files a start writes, so the next start writes them afresh.
fn remove_start_files(paths: &MachinePaths) {
    let _ = std::fs::remove_file(paths.secrets.join(BUNDLE_KEY));
    for file in bundle_files(paths) {
        let _ = std::fs::remove_file(file);
    }
    let _ = std::fs::remove_file(&paths.pid_file);
    let _ = std::fs::remove_file(&paths.instance);
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    std::fs::write(path, bytes).map_err(io_err(path))
}

/// The machine's log directory, relative to its directory.
const LOG_REL: &str = "log";
/// The machine's run directory (init's socket), relative to its directory.
const RUN_REL: &str = "run";
/// The most a file the machine can write is read (an exit record is a few bytes).
const MAX_SMALL_FILE: u64 = 64 * 1024;
/// The most of an answer read from init (exec output is capped well below).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// The exit record init wrote, read without following links (the machine owns `log/`).
fn read_exit(paths: &MachinePaths) -> Option<ExitRecord> {
    let dir = confined::Confined::open(&paths.dir).ok()?;
    let rel = paths.shared_rel.join(LOG_REL).join(wire::EXIT_FILE);
    let bytes = dir.read_regular(&rel, MAX_SMALL_FILE).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The host pid of the machine's init, from the pid file runc wrote.
fn read_init_pid(dir: &confined::Confined) -> std::io::Result<u32> {
    let text = dir.read_regular(Path::new(PID_FILE), 64)?;
    String::from_utf8_lossy(&text)
        .trim()
        .parse()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad init pid file"))
}

fn read_spec(paths: &MachinePaths) -> Option<SandboxSpec> {
    let dir = confined::Confined::open(&paths.dir).ok()?;
    let bytes = dir.read_regular(Path::new(SPEC_FILE), 16 << 20).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The exit status from init's record; a machine we had to SIGKILL has none.
fn exit_status(record: Option<ExitRecord>, killed: bool) -> ExitStatus {
    match record {
        Some(r) => ExitStatus {
            exit_code: Some(r.exit_code),
            signal: r.signal,
        },
        None if killed => ExitStatus {
            exit_code: Some(128 + libc::SIGKILL),
            signal: Some(libc::SIGKILL),
        },
        None => ExitStatus {
            exit_code: None,
            signal: None,
        },
    }
}

fn new_instance_id(pid: u32) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:016x}{:08x}", nanos as u64, pid)
}
