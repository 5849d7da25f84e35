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

/// The machine's own disk: a sparse ext4 image of `size_mb`, loop-mounted (`nosuid,nodev`)
/// at `mountpoint` and holding the writable layer and the directories shared with init, so a
/// machine that fills it gets `ENOSPC` and the host's filesystem is untouched. Created on
/// first use (sparse: it costs only what is written) and kept mounted while the machine
/// exists, so only the first start pays for `mkfs` and the mount.
pub(crate) fn ensure_disk(
    image: &Path,
    mountpoint: &Path,
    size_mb: u64,
) -> Result<(), RuntimeError> {
    if is_mounted(mountpoint) {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { path, source }
    };
    std::fs::create_dir_all(mountpoint).map_err(io(mountpoint))?;
    if !image.exists() {
        let tmp = image.with_extension("img.tmp");
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.set_len(size_mb.saturating_mul(1 << 20))
            .map_err(io(&tmp))?;
        drop(file);
        let tmp_text = tmp.to_string_lossy().into_owned();
        run_tool(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "nodiscard",
                "-O",
                "^has_journal",
                &tmp_text,
            ],
        )?;
        std::fs::rename(&tmp, image).map_err(io(image))?;
    }
    let image_text = image.to_string_lossy().into_owned();
    let target_text = mountpoint.to_string_lossy().into_owned();
    run_tool(
        "mount",
        &["-o", "loop,nosuid,nodev", &image_text, &target_text],
    )
}

/// Unmount the machine's disk (the loop device goes with it).
pub(crate) fn release_disk(mountpoint: &Path) -> Result<(), RuntimeError> {
    unmount(mountpoint)
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), RuntimeError> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| RuntimeError::Spawn {
            program: program.into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(RuntimeError::Disk {
        command: format!("{program} {}", args.join(" ")),
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}
