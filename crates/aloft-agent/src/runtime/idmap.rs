//! The system calls of the new mount API, the only `unsafe` code of the runtime: a user
//! namespace holding a mapping (from a short-lived child process), a read-only bind mount of a
//! directory seen through that mapping (`open_tree`, `mount_setattr`, `move_mount`), and a
//! sysfs made in the calling thread's network namespace (`fsopen`, `fsconfig`, `fsmount`).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A user namespace mapping ids `0..size` to host ids `base..base+size` (users and groups).
/// A child process creates it and is ended once the namespace is open.
pub(crate) fn new_userns(base: u32, size: u32) -> io::Result<OwnedFd> {
    let mut cmd = Command::new("sleep");
    cmd.arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes one system call
    // (unshare), which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // `spawn` returns once the child has executed, so it is in its new namespace by then.
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let result = (|| {
        let map = format!("0 {base} {size}\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let file = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(file))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Bind-mounts `source` read-only, nosuid and nodev on `target`, its files' owners seen
/// through `userns`'s mapping (an on-disk uid `u` shows as the host id `u` maps to).
pub(crate) fn bind_idmapped(source: &Path, target: &Path, userns: &OwnedFd) -> io::Result<()> {
    let source_c = cstring(source)?;
    let empty = CString::default();
    // SAFETY: `source_c` is a valid NUL-terminated string that outlives the call; the result
    // is checked, and a non-negative one is a new file descriptor owned by nobody else.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tree` was just returned by open_tree and is not owned elsewhere.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is a valid `struct mount_attr` whose size is passed along; `empty` is a
    // valid empty string, and both outlive the call.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    attach(&tree, target)
}

/// Attaches the detached mount `tree` on `target`.
fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let target_c = cstring(target)?;
    let empty = CString::default();
    // SAFETY: both strings are valid NUL-terminated strings that outlive the call.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts a new sysfs, read-only, nosuid, nodev and noexec, on `target`. sysfs shows the
/// network devices of the network namespace of the calling thread.
pub(crate) fn mount_sysfs(target: &Path) -> io::Result<()> {
    let fstype = CString::new("sysfs").map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fstype` is a valid NUL-terminated string that outlives the call; a non-negative
    // result is a new file descriptor owned by nobody else.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fs` was just returned by fsopen and is not owned elsewhere.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as libc::c_int) };
    // SAFETY: FSCONFIG_CMD_CREATE takes no key, value or aux argument (null, null, 0).
    let created = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if created != 0 {
        return Err(io::Error::last_os_error());
    }
    let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    // SAFETY: plain integer arguments; a non-negative result is a new file descriptor.
    let tree = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tree` was just returned by fsmount and is not owned elsewhere.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    attach(&tree, target)
}
