//! `aloft-init`: PID 1 inside every Aloft machine.
//!
//! The library target holds only the wire protocol shared with the host agent's runtime
//! driver ([`protocol`]): the run configuration the driver writes, the exec/signal requests it
//! sends over the init socket, and the log and exit records init writes; and [`ps`], the process
//! listing `aloft-init ps` prints for the Machines API's `ps`. The PID 1 logic lives
//! in the binary target and must stay small, synchronous (std threads, no async runtime) and
//! statically linkable; it must not depend on anything outside the machine.
#![forbid(unsafe_code)]

pub mod protocol;
pub mod ps;
