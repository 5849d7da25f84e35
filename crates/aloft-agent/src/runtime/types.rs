//! The driver's public data types and errors, and the per-machine paths on the host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aloft_init::protocol as wire;
use serde::{Deserialize, Serialize};

use super::userns::{UsernsError, UsernsOptions};
use super::UserError;

/// Errors of the sandbox runtime driver.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Machine id {0:?} is invalid (use 1-64 letters, digits, '-' or '_')")]
    InvalidId(String),
    #[error("Machine {0} does not exist")]
    NotFound(String),
    #[error("Machine {0} is already running")]
    AlreadyRunning(String),
    #[error("Machine has no image layers")]
    NoLayers,
    #[error("Layer path {0:?} contains ',' or ':' which overlayfs cannot take")]
    BadLayerPath(PathBuf),
    #[error("Cannot resolve user {user:?} of machine {id}")]
    User {
        id: String,
        user: String,
        #[source]
        source: UserError,
    },
    #[error("Filesystem operation on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Disk full: no space left on the filesystem of {path}")]
    DiskFull {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Mount operation on {path} failed")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{0} is still mounted")]
    StillMounted(PathBuf),
    #[error("Cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runc {command} of machine {id} failed: {message}")]
    Runc {
        command: String,
        id: String,
        message: String,
    },
    #[error("Cannot build the OCI spec of machine {id}")]
    Spec {
        id: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("Cannot set up the user namespace of machine {id}")]
    Userns {
        id: String,
        #[source]
        source: UsernsError,
    },
    #[error("Init of machine {id} did not answer: {message}")]
    Init { id: String, message: String },
    #[error("Refused to open {path}: not a plain entry reached without following links")]
    Confined {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Init socket of machine {id} is served by another process (pid {peer:?})")]
    ForeignSocket { id: String, peer: Option<i32> },
    #[error("Secrets directory {path} is not a private directory on tmpfs (owned by the agent, mode 0700): {why}")]
    SecretsDir { path: PathBuf, why: String },
    #[error("Cannot prepare the machine's disk: {command} failed: {message}")]
    Disk { command: String, message: String },
    #[error("Machine {id} did not stop within {waited:?} of SIGKILL")]
    StopTimeout { id: String, waited: Duration },
}

/// Driver configuration.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The OCI runtime binary.
    pub runc: PathBuf,
    /// The driver's data directory.
    pub root: PathBuf,
    /// Host path of the static `aloft-init` binary.
    pub init_binary: PathBuf,
    /// Maximum number of processes in one machine.
    pub pids_limit: i64,
    /// Apply the seccomp profile.
    pub seccomp: bool,
    /// Run each machine in a user namespace of its own id range; `None`: machine root is
    /// host root (only for kernels without idmapped mounts).
    pub userns: Option<UsernsOptions>,
    /// Memory-backed directory (tmpfs) for the files that carry a machine's secrets: init's
    /// run config (its environment) and the record the bundle was generated from. Nothing
    /// holding a secret is written under `root`.
    pub secrets_dir: PathBuf,
    /// Size of each new machine's own disk (writable layer, logs, init's socket) in MB: a
    /// sparse ext4 image, loop-mounted. `None`: machines write to the host's filesystem
    /// without a quota.
    pub disk_mb: Option<u64>,
}

impl SandboxOptions {
    /// Defaults: `/usr/sbin/runc`, 4096 pids, seccomp on, user namespaces from host id
    /// 1000000, secrets under `/dev/shm`.
    pub fn new(root: impl Into<PathBuf>, init_binary: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            runc: PathBuf::from("/usr/sbin/runc"),
            secrets_dir: default_secrets_dir(&root),
            disk_mb: None,
            root,
            init_binary: init_binary.into(),
            pids_limit: 4096,
            seccomp: true,
            userns: Some(UsernsOptions::default()),
        }
    }
}

/// What to run and how to confine it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub id: String,
    pub hostname: String,
    /// Unpacked image layers, bottom-most first.
    pub layers: Vec<PathBuf>,
    /// Keep the writable layer across stops.
    pub persist_rootfs: bool,
    pub process: ProcessSpec,
    pub cpus: u32,
    pub memory_mb: u64,
    /// A bind-mounted network namespace to join; `None` gives a fresh, empty one.
    pub netns_path: Option<PathBuf>,
    /// Content of the machine's `/etc/hosts`.
    pub hosts_file: String,
    /// Content of the machine's `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// Signal `stop` sends first (Fly's `stop_config.signal`).
    pub stop_signal: i32,
    /// How long `stop` waits before SIGKILL (Fly's `stop_config.timeout`).
    pub kill_timeout: Duration,
    /// Extra bind mounts (volumes).
    pub mounts: Vec<BindMount>,
}

/// The machine's main process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Entrypoint + cmd, resolved.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// Image user: `""`, `uid`, `uid:gid`, `name` or `name:group` (resolved in the rootfs).
    pub user: String,
}

/// A host directory or file bind-mounted into the machine (`nosuid`, `nodev`). With user
/// namespaces, a writable source is handed to the machine's root (its top entry only, at each
/// start); what is already inside stays as it is owned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// A started machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Host pid of the machine's init.
    pub pid: u32,
    /// Unique per start of the machine.
    pub instance_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeStatus {
    /// Created but not yet started (only between the two halves of `start`).
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeState {
    pub status: RuntimeStatus,
    /// Host pid of init while it runs.
    pub pid: Option<u32>,
    /// Exit code of the main process once it has ended (when init recorded it).
    pub exit_code: Option<i32>,
}

/// How a machine's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code (128 + signal when killed); `None` when unknown.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// A command to run inside a running machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// The machine's spec, in its directory.
pub(super) const SPEC_FILE: &str = "machine.json";
/// The pid file runc writes, in the machine's directory.
pub(super) const PID_FILE: &str = "init.pid";

/// `/dev/shm/aloft-<hash of root>`: tmpfs on every Linux, one directory per driver root.
fn default_secrets_dir(root: &Path) -> PathBuf {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    root.hash(&mut h);
    PathBuf::from(format!("/dev/shm/aloft-{:016x}", h.finish()))
}

/// Paths of one machine on the host.
#[derive(Debug, Clone)]
pub(crate) struct MachinePaths {
    pub dir: PathBuf,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub log: PathBuf,
    pub run: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    /// The machine's directory in the memory-backed secrets directory.
    pub secrets: PathBuf,
    /// Init's run config (holds the environment): in `secrets`.
    pub run_config: PathBuf,
    pub spec: PathBuf,
    pub pid_file: PathBuf,
    pub runc_log: PathBuf,
    pub instance: PathBuf,
    /// The machine's disk image and where it is mounted (see `rootfs::ensure_disk`).
    pub disk_image: PathBuf,
    pub disk: PathBuf,
    /// Where `log/` and `run/` are, relative to `dir`: `disk` when the machine has a disk.
    pub shared_rel: PathBuf,
}

impl MachinePaths {
    /// The machine's paths. A machine whose directory holds a disk image keeps its writable
    /// layer, logs and socket on that disk.
    pub(super) fn new(dir: PathBuf, secrets: PathBuf) -> Self {
        let disk_image = dir.join("disk.img");
        let disk = dir.join("disk");
        let shared_rel = if disk_image.exists() {
            PathBuf::from("disk")
        } else {
            PathBuf::new()
        };
        let state = dir.join(&shared_rel);
        Self {
            upper: state.join("upper"),
            work: state.join("work"),
            log: state.join("log"),
            run: state.join("run"),
            disk_image,
            disk,
            shared_rel,
            run_config: secrets.join("run.json"),
            secrets,
            bundle: dir.join("bundle"),
            rootfs: dir.join("rootfs"),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            spec: dir.join(SPEC_FILE),
            pid_file: dir.join(PID_FILE),
            runc_log: dir.join("runc.log"),
            instance: dir.join("instance"),
            dir,
        }
    }

    pub(super) fn socket(&self) -> PathBuf {
        self.run.join(wire::SOCKET_NAME)
    }

    pub(super) fn exit_file(&self) -> PathBuf {
        self.log.join(wire::EXIT_FILE)
    }
}

/// An I/O error on `path`; a full filesystem is [`RuntimeError::DiskFull`].
pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| {
        let path = path.to_path_buf();
        if source.kind() == std::io::ErrorKind::StorageFull {
            RuntimeError::DiskFull { path, source }
        } else {
            RuntimeError::Io { path, source }
        }
    }
}

pub(super) fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}
