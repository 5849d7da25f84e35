//! The host agent: the machines on one host.
//!
//! Owns a durable state machine per machine (recorded in the agent's own SQLite store before
//! each step), the runtime driver that runs them, their networking, and the agent's side of
//! the control-plane protocol (join, heartbeat, watch, status reports). It talks to the
//! control plane only through the wire types in `aloft-api`, and never decides placement.

pub mod network;
pub mod runtime;
pub mod store;
