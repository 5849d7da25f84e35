//! The host agent: the machines on one host.
//!
//! Owns a durable state machine per machine, the runtime driver that runs them, and their
//! networking. It talks to the control plane only through the wire types in `aloft-api`.

pub mod network;
pub mod runtime;
