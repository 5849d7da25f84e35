//! The one reaper: every child is reaped here (we are PID 1), and threads waiting for a
//! particular child (exec) read its status from this registry instead of calling `wait`.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::SigSet;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a child ended: exit code (128 + signal when signalled) and the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub code: i32,
    pub signal: Option<i32>,
}

#[derive(Default)]
struct Table {
    main: Option<i32>,
    main_ended: Option<Ended>,
    tracked: HashMap<i32, Option<Ended>>,
}

#[derive(Default)]
pub struct Children {
    table: Mutex<Table>,
    changed: Condvar,
}

impl Children {
    /// Spawn `cmd` with an empty signal mask and register it before the reaper can see it
    /// exit.
    pub fn spawn(&self, cmd: &mut Command, main: bool) -> std::io::Result<Child> {
        unblock_signals_in_child(cmd);
        let mut table = self.lock();
        // When exec fails in the child, std waits for it itself; if our reaper got there
        // first that wait fails and std panics. Turn that into an ordinary error.
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd.spawn()));
        let child = spawned
            .unwrap_or_else(|_| Err(std::io::Error::other("the command could not be executed")))?;
        let pid = child.id() as i32;
        if main {
            table.main = Some(pid);
        } else {
            table.tracked.insert(pid, None);
        }
        Ok(child)
    }

    pub fn main_pid(&self) -> Option<i32> {
        let table = self.lock();
        table.main.filter(|_| table.main_ended.is_none())
    }

    pub fn main_ended(&self) -> Option<Ended> {
        self.lock().main_ended
    }

    /// Reap every child that has ended, without blocking. Returns false when there are no
    /// children left at all.
    pub fn reap(&self) -> bool {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(status) => {
                    let ended = match status {
                        WaitStatus::Exited(_, code) => Ended { code, signal: None },
                        WaitStatus::Signaled(_, sig, _) => Ended {
                            code: 128 + sig as i32,
                            signal: Some(sig as i32),
                        },
                        _ => continue,
                    };
                    let Some(pid) = status.pid() else { continue };
                    let mut table = self.lock();
                    if table.main == Some(pid.as_raw()) {
                        table.main_ended = Some(ended);
                    }
                    if let Some(slot) = table.tracked.get_mut(&pid.as_raw()) {
                        *slot = Some(ended);
                    }
                    drop(table);
                    self.changed.notify_all();
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Wait until tracked child `pid` has been reaped or `deadline` passes.
    pub fn wait_tracked(&self, pid: i32, deadline: Option<Instant>) -> Option<Ended> {
        let mut table = self.lock();
        loop {
            if let Some(Some(ended)) = table.tracked.get(&pid) {
                let ended = *ended;
                table.tracked.remove(&pid);
                return Some(ended);
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    d - now
                }
                None => Duration::from_secs(3600),
            };
            table = self
                .changed
                .wait_timeout(table, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Init blocks the signals it handles in every thread (they are taken with sigwait), and a
/// forked child inherits that mask; std does not reset it on every libc (musl keeps it), so
/// the child would never see SIGTERM. Give the child an empty mask before exec.
#[allow(unsafe_code)]
fn unblock_signals_in_child(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // pthread_sigmask (through nix), which is async-signal-safe; it allocates nothing and
    // touches no locks.
    unsafe {
        cmd.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
}
