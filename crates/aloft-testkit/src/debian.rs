//! An ordinary Debian image, as a user would bring one: Debian bookworm (`debootstrap
//! --variant=minbase`) with Python 3, whose command serves `/srv` with `python3 -m http.server
//! 8080 --bind ::` (the edge reaches machines at their private IPv6 address). Built once per machine from Debian's mirror into a cache directory (about two minutes
//! the first time) and shared by every test and benchmark that asks for it; concurrent callers
//! wait for one build under a file lock.

use std::path::{Path, PathBuf};

use crate::{run, HarnessError};

/// The image's tag in its OCI layout.
pub const TAG: &str = "bookworm";
/// The port its web server listens on.
pub const PORT: u16 = 8080;
/// The page its web server serves at `/`.
pub const PAGE: &str = "hello from an ordinary Debian image\n";

/// Where built test images are kept: `$ALOFT_TEST_IMAGES`, else `/var/cache/aloft-test`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ALOFT_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/aloft-test"))
}

/// The OCI layout of the image (tag [`TAG`]), built on first use.
pub fn layout() -> Result<PathBuf, HarnessError> {
    let dir = cache_dir();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HarnessError::Read { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let lock_path = dir.join("debian.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, errno)| HarnessError::Read {
            path: lock_path.clone(),
            source: errno.into(),
        },
    )?;
    let layout = dir.join("debian-bookworm-python3-v2");
    let done = layout.join("built");
    if !done.exists() {
        build(&dir, &layout)?;
        std::fs::write(&done, b"").map_err(io(&done))?;
    }
    Ok(layout)
}

fn build(dir: &Path, layout: &Path) -> Result<(), HarnessError> {
    let rootfs = dir.join("debian-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(layout);
    run(
        "debootstrap",
        &[
            "--variant=minbase",
            "--include=python3",
            "bookworm",
            &rootfs.to_string_lossy(),
            &mirror(),
        ],
    )?;
    let srv = rootfs.join("srv");
    std::fs::create_dir_all(&srv).map_err(|source| HarnessError::Read {
        path: srv.clone(),
        source,
    })?;
    std::fs::write(srv.join("index.html"), PAGE).map_err(|source| HarnessError::Read {
        path: srv.clone(),
        source,
    })?;
    let image = format!("{}:{TAG}", layout.display());
    run("umoci", &["init", "--layout", &layout.to_string_lossy()])?;
    run("umoci", &["new", "--image", &image])?;
    run(
        "umoci",
        &["insert", "--image", &image, &rootfs.to_string_lossy(), "/"],
    )?;
    let port = PORT.to_string();
    let exposed = format!("--config.exposedports={PORT}/tcp");
    run(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--config.cmd=python3",
            "--config.cmd=-m",
            "--config.cmd=http.server",
            &format!("--config.cmd={port}"),
            "--config.cmd=--bind",
            "--config.cmd=::",
            "--config.workingdir=/srv",
            &exposed,
        ],
    )?;
    let _ = std::fs::remove_dir_all(&rootfs);
    Ok(())
}

/// The Debian mirror apt uses on this machine (`deb.debian.org` when none is found).
fn mirror() -> String {
    let sources = [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ];
    for path in sources {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            let uri = line
                .strip_prefix("URIs:")
                .map(str::trim)
                .or_else(|| {
                    line.strip_prefix("deb ")
                        .and_then(|rest| rest.split_whitespace().find(|w| w.contains("://")))
                })
                .and_then(|u| u.split_whitespace().next());
            if let Some(uri) = uri.filter(|u| !u.contains("security") && u.ends_with("/debian")) {
                return uri.to_owned();
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}
