//! Opening files inside a machine's directory without following links.
//!
//! A machine's root can write `/.aloft/log` and `/.aloft/run` (host directories bind-mounted
//! into it), so anything the agent opens there may have been replaced by a symlink, a FIFO
//! or a device node. Every open here starts from a descriptor of the machine's directory and
//! resolves the rest with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a path that
//! leaves the directory or crosses a link of any kind fails with `ELOOP`/`EXDEV`. Kernels
//! without `openat2` (before 5.6) get the same guarantee one component at a time with
//! `O_NOFOLLOW`. Opened files must then be of the kind asked for (a regular file, a socket),
//! checked on the descriptor, never on the path.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Set once `openat2` answered `ENOSYS`, so later opens go straight to the fallback.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// A directory opened once, under which paths are resolved without following links.
#[derive(Debug)]
pub(crate) struct Confined {
    dir: OwnedFd,
}

impl Confined {
    /// Open the trusted directory `dir` (the machine's directory, which the machine itself
    /// cannot reach).
    pub(crate) fn open(dir: &Path) -> io::Result<Confined> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)?;
        Ok(Confined { dir: file.into() })
    }

    /// Open `rel` (relative, no `..`) with `flags`, refusing any symlink on the way.
    fn open_at(&self, rel: &Path, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        check_relative(rel)?;
        // openat2 takes nothing but O_CLOEXEC, O_DIRECTORY and O_NOFOLLOW with O_PATH.
        let flags = if flags.contains(OFlag::O_PATH) {
            flags | OFlag::O_CLOEXEC
        } else {
            flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
        };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = OpenHow::new().flags(flags).mode(mode).resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
            match openat2(self.dir.as_fd(), rel, how) {
                Err(Errno::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                other => return other.map_err(io::Error::from),
            }
        }
        self.open_by_components(rel, flags, mode)
    }

    /// The fallback: each directory component with `O_NOFOLLOW | O_DIRECTORY`, the last
    /// one with `O_NOFOLLOW`.
    fn open_by_components(&self, rel: &Path, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let parts: Vec<_> = rel.components().collect();
        let mut current: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let Component::Normal(name) = part else {
                return Err(escape(rel));
            };
            let dir = current.as_ref().map_or(self.dir.as_fd(), |fd| fd.as_fd());
            let last = i + 1 == parts.len();
            let step = if last {
                flags | OFlag::O_NOFOLLOW
            } else {
                OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_PATH
            };
            let fd = openat(dir, *name, step, mode)?;
            current = Some(fd);
        }
        current.ok_or_else(|| escape(rel))
    }

    /// Open `rel` for reading if it is a regular file. Opened non-blocking so a FIFO put
    /// in its place cannot hang the agent; a device, FIFO or socket is refused.
    pub(crate) fn open_regular(&self, rel: &Path) -> io::Result<File> {
        let fd = self.open_at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?;
        let file = File::from(fd);
        if !file.metadata()?.file_type().is_file() {
            return Err(not_kind(rel, "a regular file"));
        }
        Ok(file)
    }

    /// Read `rel` whole if it is a regular file of at most `max` bytes.
    pub(crate) fn read_regular(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        let file = self.open_regular(rel)?;
        let mut bytes = Vec::new();
        file.take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {max} bytes", rel.display()),
            ));
        }
        Ok(bytes)
    }

    /// An `O_PATH` descriptor of the unix socket at `rel`, refused when it is anything else.
    /// Connect through `/proc/self/fd/<fd>` (see [`fd_path`]) to reach exactly this inode.
    pub(crate) fn open_socket(&self, rel: &Path) -> io::Result<OwnedFd> {
        let fd = self.open_at(rel, OFlag::O_PATH, Mode::empty())?;
        let file = File::from(fd);
        if !file.metadata()?.file_type().is_socket() {
            return Err(not_kind(rel, "a socket"));
        }
        Ok(file.into())
    }

    /// Whether `rel` is a socket reached without following links.
    pub(crate) fn exists_as_socket(&self, rel: &Path) -> bool {
        self.open_socket(rel).is_ok()
    }
}

/// The path that names `fd` itself, for APIs that take only a path (`connect`).
pub(crate) fn fd_path(fd: &OwnedFd) -> std::path::PathBuf {
    use std::os::fd::AsRawFd as _;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn check_relative(rel: &Path) -> io::Result<()> {
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if plain && rel.components().next().is_some() {
        Ok(())
    } else {
        Err(escape(rel))
    }
}

fn escape(rel: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a plain relative path", rel.display()),
    )
}

fn not_kind(rel: &Path, kind: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not {kind}", rel.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Confined) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("log")).unwrap();
        std::fs::write(dir.path().join("log/app.log"), b"hello\n").unwrap();
        let c = Confined::open(dir.path()).unwrap();
        (dir, c)
    }

    #[test]
    fn reads_plain_files_beneath() {
        let (_dir, c) = setup();
        let bytes = c.read_regular(Path::new("log/app.log"), 100).unwrap();
        assert_eq!(bytes, b"hello\n");
        assert!(c.read_regular(Path::new("log/app.log"), 3).is_err());
    }

    #[test]
    fn refuses_symlinks_anywhere_and_escapes() {
        let (dir, c) = setup();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        symlink(outside.path().join("secret"), dir.path().join("log/link")).unwrap();
        symlink(outside.path(), dir.path().join("dirlink")).unwrap();
        symlink("app.log", dir.path().join("log/relative")).unwrap();
        for rel in [
            "log/link",
            "dirlink/secret",
            "log/relative",
            "../x",
            "/etc/passwd",
        ] {
            assert!(c.open_regular(Path::new(rel)).is_err(), "{rel} was opened");
        }
        symlink("/dev/zero", dir.path().join("log/zero")).unwrap();
        assert!(c.open_regular(Path::new("log/zero")).is_err());
    }

    #[test]
    fn fallback_refuses_symlinks_too() {
        let (dir, c) = setup();
        symlink("/etc/hostname", dir.path().join("log/link")).unwrap();
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        assert!(c
            .open_by_components(Path::new("log/link"), flags, Mode::empty())
            .is_err());
        assert!(c
            .open_by_components(Path::new("log/app.log"), flags, Mode::empty())
            .is_ok());
    }

    #[test]
    fn refuses_fifos_without_blocking() {
        let (dir, c) = setup();
        nix::unistd::mkfifo(
            &dir.path().join("log/fifo"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(c.open_regular(Path::new("log/fifo")).is_err());
    }

    #[test]
    fn sockets_are_reached_through_their_descriptor() {
        let (dir, c) = setup();
        let path = dir.path().join("log/s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = c.open_socket(Path::new("log/s.sock")).unwrap();
        std::os::unix::net::UnixStream::connect(fd_path(&fd)).unwrap();
        assert!(c.open_socket(Path::new("log/app.log")).is_err());
        symlink(&path, dir.path().join("log/link.sock")).unwrap();
        assert!(c.open_socket(Path::new("log/link.sock")).is_err());
    }
}
