//! Where a machine's secrets may touch the host: only memory-backed storage.
//!
//! A machine's environment carries its app's secrets. Init reads it from its run config,
//! which therefore lives in a private directory on tmpfs (mode 0700, files 0600), never under
//! the agent's data directory; the spec kept on disk (`machine.json`) has the environment
//! removed. The agent's store keeps secrets sealed (see `crate::store`).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::types::io_err;
use super::{RuntimeError, SandboxSpec};

/// `statfs` magic numbers of memory-backed filesystems.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Make sure `dir` is a directory on tmpfs that only the agent's user can list or write
/// (mode 0711: machines' roots, in their user namespaces, pass through it to their own
/// directory), creating it when missing. A directory someone else created, a symlink, one
/// others can read or write, or one on disk is refused.
pub(super) fn ensure_private_tmpfs(dir: &Path) -> Result<(), RuntimeError> {
    let refuse = |why: String| RuntimeError::SecretsDir {
        path: dir.to_path_buf(),
        why,
    };
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!("it is owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o066 != 0 {
        return Err(refuse(format!("its mode is {:o}", meta.mode() & 0o777)));
    }
    let fs = nix::sys::statfs::statfs(dir).map_err(|e| refuse(e.to_string()))?;
    let kind = fs.filesystem_type().0 as i64;
    if kind != TMPFS_MAGIC && kind != RAMFS_MAGIC {
        return Err(refuse(format!("it is not on tmpfs (filesystem {kind:#x})")));
    }
    Ok(())
}

/// Create the machine's own directory in the secrets directory (mode 0700); false when the
/// secrets directory itself has gone.
pub(super) fn create_private_dir(dir: &Path) -> Result<bool, RuntimeError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_err(dir)(e)),
        _ => Ok(true),
    }
}

/// Write `bytes` to `path` with mode 0600 (replacing the file, never writing through a link).
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(path)(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))
}

/// The spec as kept on disk: without the process environment (it holds secrets).
pub(super) fn without_env(spec: &SandboxSpec) -> Vec<u8> {
    let mut kept = spec.clone();
    kept.process.env.clear();
    serde_json::to_vec(&kept).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn only_a_private_tmpfs_directory_is_accepted() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let ok = shm.path().join("ok");
        ensure_private_tmpfs(&ok).unwrap();
        assert_eq!(
            std::fs::metadata(&ok).unwrap().permissions().mode() & 0o777,
            0o711
        );
        let open = shm.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_private_tmpfs(&open).is_err());
        let link = shm.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert!(ensure_private_tmpfs(&link).is_err());
        let disk = tempfile::tempdir_in("/var/tmp").unwrap();
        let on_disk = disk.path().join("s");
        let err = ensure_private_tmpfs(&on_disk).unwrap_err().to_string();
        assert!(err.contains("not on tmpfs"), "{err}");
    }

    #[test]
    fn private_files_are_0600_and_replace_links() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let victim = shm.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = shm.path().join("run.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_private(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
