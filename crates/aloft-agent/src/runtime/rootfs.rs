//! The machine's root filesystem: an overlay of read-only image layers and a per-machine
//! upper directory.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::RuntimeError;

/// Whether `path` is a mount point, from `/proc/self/mountinfo`.
pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(canonical) = std::fs::canonicalize(path) else {
        return false;
    };
    let wanted = canonical.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Whether every path in `paths` is a mount point (one read of `/proc/self/mountinfo`).
pub(crate) fn all_mounted(paths: &[PathBuf]) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let points: std::collections::HashSet<&str> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    paths.iter().all(|p| {
        std::fs::canonicalize(p)
            .is_ok_and(|c| points.contains(c.to_string_lossy().replace(' ', "\\040").as_str()))
    })
}

/// Mount an overlay of `layers` (bottom-most first) under `upper`/`work` at `target`, with
/// `nosuid` and `nodev` (runc's bind mount of the rootfs keeps both, and in the machine's user
/// namespace they are locked).
pub(crate) fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    if layers.is_empty() {
        return Err(RuntimeError::NoLayers);
    }
    for layer in layers {
        let text = layer.to_string_lossy();
        if text.contains([',', ':']) {
            return Err(RuntimeError::BadLayerPath(layer.clone()));
        }
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|source| RuntimeError::Mount {
        path: target.to_path_buf(),
        source,
    })
}

/// Unmount `target` if it is mounted (lazily, so a stray open file cannot pin it).
pub(crate) fn unmount(target: &Path) -> Result<(), RuntimeError> {
    while is_mounted(target) {
        umount2(target, MntFlags::MNT_DETACH).map_err(|source| RuntimeError::Mount {
            path: target.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Empty `dir` (recreating it), refusing when something is mounted on it.
pub(crate) fn reset_dir(dir: &Path) -> Result<(), RuntimeError> {
    if is_mounted(dir) {
        return Err(RuntimeError::StillMounted(dir.to_path_buf()));
    }
    let io = |source| RuntimeError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(dir).map_err(io)
}
