//! User namespaces: each machine's root is an unprivileged host uid and gid.
//!
//! Every machine holds one range of [`RANGE_SIZE`] host ids, `base + k * RANGE_SIZE` for the
//! lowest free slot `k`, claimed durably: a file `<root>/userns/<k>` naming the machine (made
//! with `O_EXCL`, so two starts never share a slot) and `<machine>/userns` naming the slot.
//! Both outlive the agent, and destroying the machine frees the slot.
//!
//! The image layers stay as unpacked, owned by host root, and are shared between machines:
//! each machine sees them through read-only idmapped bind mounts under `<machine>/layers/`
//! (made at its first start and kept until it is destroyed), so the overlay shows the image's
//! files owned by the machine's own ids and what the machine writes lands in its upper
//! directory owned by those ids on the host.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{idmap, rootfs, BindMount, MachinePaths};

/// Host ids per machine: uids and gids `0..65536` inside map to `host..host + 65536`.
pub const RANGE_SIZE: u32 = 65_536;
/// The first host id handed to machines unless configured otherwise.
pub const DEFAULT_BASE: u32 = 1_000_000;

/// Why a machine's id range or idmapped layers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("User namespace base {0} is invalid (use 65536 or more, leaving room for one range)")]
    InvalidBase(u32),
    #[error("Every user namespace id range from host id {base} is taken")]
    Exhausted { base: u32 },
    #[error("Cannot record the id range of machine {id} in {path}")]
    Record {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create a user namespace for host ids from {host}")]
    Namespace {
        host: u32,
        #[source]
        source: io::Error,
    },
    #[error("Cannot mount image layer {layer} idmapped on {target}")]
    Layer {
        layer: PathBuf,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot let the machine's root bind low ports in network namespace {netns}")]
    LowPorts {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot mount a sysfs on {target}")]
    Sysfs {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot give {path} to the machine's root (host id {host})")]
    Chown {
        path: PathBuf,
        host: u32,
        #[source]
        source: io::Error,
    },
}

/// Where id ranges come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsernsOptions {
    /// Host id of slot 0's root.
    pub base: u32,
}

impl Default for UsernsOptions {
    fn default() -> Self {
        Self { base: DEFAULT_BASE }
    }
}

impl UsernsOptions {
    /// Checks the base leaves room for at least one range below `u32::MAX`.
    pub fn checked(base: u32) -> Result<Self, UsernsError> {
        if base < RANGE_SIZE || base.checked_add(RANGE_SIZE).is_none() {
            return Err(UsernsError::InvalidBase(base));
        }
        Ok(Self { base })
    }

    fn slots(&self) -> u32 {
        (u32::MAX - self.base) / RANGE_SIZE
    }
}

/// One machine's host ids: uid and gid `host` is its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub host: u32,
    pub size: u32,
}

fn slot_dir(root: &Path) -> PathBuf {
    root.join("userns")
}

fn record_err(id: &str, path: &Path) -> impl FnOnce(io::Error) -> UsernsError {
    let (id, path) = (id.to_string(), path.to_path_buf());
    move |source| UsernsError::Record { id, path, source }
}

/// The machine's id range, claiming the lowest free slot the first time.
pub(crate) fn range(
    opts: &UsernsOptions,
    root: &Path,
    id: &str,
    paths: &MachinePaths,
) -> Result<IdRange, UsernsError> {
    let to_range = |k: u32| IdRange {
        host: opts.base + k * RANGE_SIZE,
        size: RANGE_SIZE,
    };
    let dir = slot_dir(root);
    let record = paths.dir.join("userns");
    if let Some(k) = std::fs::read_to_string(&record)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        if k < opts.slots() && owner(&dir, k).as_deref() == Some(id) {
            return Ok(to_range(k));
        }
    }
    std::fs::create_dir_all(&dir).map_err(record_err(id, &dir))?;
    let mut used = HashSet::new();
    for entry in std::fs::read_dir(&dir)
        .map_err(record_err(id, &dir))?
        .flatten()
    {
        let Some(k) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A claim whose record was never written (the agent died in between) is reused.
        if owner(&dir, k).as_deref() == Some(id) {
            write_record(&record, k).map_err(record_err(id, &record))?;
            return Ok(to_range(k));
        }
        used.insert(k);
    }
    for k in (0..opts.slots()).filter(|k| !used.contains(k)) {
        let slot = dir.join(k.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&slot)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(id.as_bytes()).map_err(record_err(id, &slot))?;
                write_record(&record, k).map_err(record_err(id, &record))?;
                return Ok(to_range(k));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(record_err(id, &slot)(e)),
        }
    }
    Err(UsernsError::Exhausted { base: opts.base })
}

fn owner(dir: &Path, k: u32) -> Option<String> {
    std::fs::read_to_string(dir.join(k.to_string())).ok()
}

fn write_record(record: &Path, k: u32) -> io::Result<()> {
    let tmp = record.with_extension("tmp");
    std::fs::write(&tmp, k.to_string())?;
    std::fs::rename(&tmp, record)
}

/// Frees the machine's slot (when it still names this machine).
pub(crate) fn release(root: &Path, id: &str, paths: &MachinePaths) {
    let dir = slot_dir(root);
    let Some(k) = std::fs::read_to_string(paths.dir.join("userns"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return;
    };
    if owner(&dir, k).as_deref() == Some(id) {
        let _ = std::fs::remove_file(dir.join(k.to_string()));
    }
}

/// What the idmapped layer mounts of a machine were made from.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LayerRecord {
    range: IdRange,
    layers: Vec<PathBuf>,
}

fn layers_dir(paths: &MachinePaths) -> PathBuf {
    paths.dir.join("layers")
}

fn layers_record(paths: &MachinePaths) -> PathBuf {
    paths.dir.join("layers.json")
}

/// The machine's view of `layers` through its id range: idmapped read-only bind mounts under
/// `<machine>/layers/`, made unless the ones in place were made from the same layers and range
/// (they stay across stops and agent restarts).
pub(crate) fn idmapped_layers(
    paths: &MachinePaths,
    layers: &[PathBuf],
    range: IdRange,
) -> Result<Vec<PathBuf>, UsernsError> {
    let dir = layers_dir(paths);
    let targets: Vec<PathBuf> = (0..layers.len()).map(|i| dir.join(i.to_string())).collect();
    let wanted = LayerRecord {
        range,
        layers: layers.to_vec(),
    };
    let record = layers_record(paths);
    let recorded = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok());
    if recorded.as_ref() == Some(&wanted)
        && rootfs::all_mounted(&targets)
        && layers.iter().zip(&targets).all(|(l, t)| same_dir(l, t))
    {
        return Ok(targets);
    }
    let _ = std::fs::remove_file(&record);
    unmount_layers(paths);
    let namespace =
        idmap::new_userns(range.host, range.size).map_err(|source| UsernsError::Namespace {
            host: range.host,
            source,
        })?;
    for (layer, target) in layers.iter().zip(&targets) {
        let layer_err = |source| UsernsError::Layer {
            layer: layer.clone(),
            target: target.clone(),
            source,
        };
        std::fs::create_dir_all(target).map_err(layer_err)?;
        idmap::bind_idmapped(layer, target, &namespace).map_err(layer_err)?;
    }
    let bytes = serde_json::to_vec(&wanted).unwrap_or_default();
    std::fs::write(&record, bytes).map_err(|source| UsernsError::Record {
        id: paths.dir.display().to_string(),
        path: record.clone(),
        source,
    })?;
    Ok(targets)
}

/// Whether `view` still shows the directory at `layer` (not one since removed and unpacked
/// again at the same path).
fn same_dir(layer: &Path, view: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(layer), std::fs::metadata(view)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Unmounts the machine's idmapped layers (before it is destroyed or they are made again).
pub(crate) fn unmount_layers(paths: &MachinePaths) {
    let dir = layers_dir(paths);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = rootfs::unmount(&entry.path());
        let _ = std::fs::remove_dir(entry.path());
    }
}

/// Where a machine joining a network namespace of the host gets its sysfs.
pub(crate) fn sys_dir(paths: &MachinePaths) -> PathBuf {
    paths.dir.join("sys")
}

/// Readies the host's network namespace at `netns` for the machine, from a thread inside it:
/// every user may bind ports below 1024 there (Docker does the same; the namespace belongs to
/// the host's user namespace, where the machine's root holds no `CAP_NET_BIND_SERVICE`), and
/// a fresh sysfs of it is mounted on [`sys_dir`] for the machine to bind on `/sys` (the
/// machine cannot mount sysfs for a network namespace the host owns).
pub(crate) fn prepare_netns(paths: &MachinePaths, netns: &Path) -> Result<(), UsernsError> {
    const LOW_PORTS: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    let target = sys_dir(paths);
    let sys_err = |source| UsernsError::Sysfs {
        target: target.clone(),
        source,
    };
    let ports_err = |source| UsernsError::LowPorts {
        netns: netns.to_path_buf(),
        source,
    };
    unmount_sys(paths);
    std::fs::create_dir_all(&target).map_err(sys_err)?;
    crate::network::netns::run_in(netns, || {
        if !std::fs::read_to_string(LOW_PORTS).is_ok_and(|v| v.trim() == "0") {
            std::fs::write(LOW_PORTS, "0").map_err(ports_err)?;
        }
        idmap::mount_sysfs(&target).map_err(sys_err)
    })
    .map_err(|e| ports_err(io::Error::other(e.to_string())))?
}

/// Unmounts the machine's sysfs, if mounted.
pub(crate) fn unmount_sys(paths: &MachinePaths) {
    let _ = rootfs::unmount(&sys_dir(paths));
}

/// Hands the directories the machine writes through (the writable layer's root, init's log
/// and run directories) to the machine's root, not following symlinks. When `log/` was not
/// the machine's yet (its first start with a user namespace), the files already in `log/`
/// and `run/` are handed over too.
/// Writable volumes' top directories are handed over as well.
pub(crate) fn give(
    paths: &MachinePaths,
    range: IdRange,
    volumes: &[BindMount],
) -> Result<(), UsernsError> {
    use std::os::unix::fs::MetadataExt;
    let first = std::fs::symlink_metadata(&paths.log).map_or(true, |m| m.uid() != range.host);
    let chown = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(range.host), Some(range.host)).map_err(|source| {
            UsernsError::Chown {
                path: path.to_path_buf(),
                host: range.host,
                source,
            }
        })
    };
    for dir in [&paths.upper, &paths.log, &paths.run] {
        chown(dir)?;
        if first && dir != &paths.upper {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                chown(&entry.path())?;
            }
        }
    }
    for volume in volumes.iter().filter(|v| !v.read_only) {
        chown(&volume.source)?;
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    fn machine(root: &Path, id: &str) -> MachinePaths {
        let paths = MachinePaths::new(
            root.join("machines").join(id),
            root.join("secrets").join(id),
        );
        std::fs::create_dir_all(&paths.dir).unwrap();
        paths
    }

    #[test]
    fn ranges_are_distinct_durable_and_reused_after_release() {
        let root = tempfile::tempdir().unwrap();
        let opts = UsernsOptions::default();
        let (a, b) = (machine(root.path(), "a"), machine(root.path(), "b"));
        let ra = range(&opts, root.path(), "a", &a).unwrap();
        let rb = range(&opts, root.path(), "b", &b).unwrap();
        assert_eq!(ra.host, DEFAULT_BASE);
        assert_eq!(rb.host, DEFAULT_BASE + RANGE_SIZE);
        assert_eq!(range(&opts, root.path(), "a", &a).unwrap(), ra);
        release(root.path(), "a", &a);
        let c = machine(root.path(), "c");
        assert_eq!(range(&opts, root.path(), "c", &c).unwrap(), ra);
        // "a"'s stale record names a slot now owned by "c": it gets a new one.
        let ra2 = range(&opts, root.path(), "a", &a).unwrap();
        assert_eq!(ra2.host, DEFAULT_BASE + 2 * RANGE_SIZE);
    }

    #[test]
    fn a_claim_without_its_record_is_found_again() {
        let root = tempfile::tempdir().unwrap();
        let opts = UsernsOptions::checked(200_000).unwrap();
        let a = machine(root.path(), "a");
        let ra = range(&opts, root.path(), "a", &a).unwrap();
        std::fs::remove_file(a.dir.join("userns")).unwrap();
        assert_eq!(range(&opts, root.path(), "a", &a).unwrap(), ra);
    }

    #[test]
    fn bases_without_room_are_refused() {
        assert!(UsernsOptions::checked(0).is_err());
        assert!(UsernsOptions::checked(u32::MAX - 10).is_err());
        assert!(UsernsOptions::checked(65_536).is_ok());
    }
}
