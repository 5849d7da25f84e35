//! Named network namespaces as bind-mounted files (the layout `ip netns` uses), and running
//! code inside one. Every namespace switch happens on a fresh thread that exits afterwards, so
//! no pooled or runtime thread is ever left in a machine's namespace.

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::NetworkError;

fn ns_error(path: &Path, op: &'static str, source: io::Error) -> NetworkError {
    NetworkError::Namespace {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Creates a new network namespace and bind-mounts it on `path` (created, with its parent
/// directory, if missing). Fails if `path` already holds a namespace.
pub(super) fn create(path: &Path) -> Result<(), NetworkError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| ns_error(path, "create the directory of", e))?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ns_error(path, "create the file", e))?;
    let target = path.to_path_buf();
    let result = std::thread::spawn(move || -> Result<(), Errno> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .unwrap_or(Err(Errno::EINTR));
    if let Err(errno) = result {
        let _ = fs::remove_file(path);
        return Err(ns_error(
            path,
            "bind-mount a new namespace on",
            errno.into(),
        ));
    }
    Ok(())
}

/// Unmounts and removes the namespace file at `path`. Missing files and files that are not
/// mount points (a crash between creating and mounting) are fine.
pub(super) fn delete(path: &Path) -> Result<(), NetworkError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
        Err(errno) => return Err(ns_error(path, "unmount", errno.into())),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ns_error(path, "remove", e)),
    }
}

/// Whether `path` is a mounted network namespace.
pub fn exists(path: &Path) -> bool {
    // A bind-mounted namespace file reports the nsfs magic; a plain file does not.
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Runs `f` on a new thread that has joined the network namespace at `path`, and returns its
/// result. Sockets created by `f` stay in that namespace after it returns.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetworkError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = fs::File::open(path).map_err(|e| ns_error(path, "open", e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| ns_error(path, "join", errno.into()))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(ns_error(
                    path,
                    "run code in",
                    io::Error::other("the thread panicked"),
                ))
            })
    })
}

/// Runs the future made by `make` to completion on a single-threaded runtime of its own, on a
/// new thread inside the namespace at `path`, without blocking the caller's runtime.
pub(super) async fn run_async_in<T, F, Fut>(path: PathBuf, make: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    std::thread::spawn(move || {
        let result = run_in(&thread_path, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ns_error(&thread_path, "start a runtime in", e))
                .and_then(|rt| rt.block_on(make()))
        })
        .and_then(|r| r);
        let _ = tx.send(result);
    });
    rx.await.unwrap_or_else(|_| {
        Err(ns_error(
            &path,
            "run code in",
            io::Error::other("the thread panicked"),
        ))
    })
}
