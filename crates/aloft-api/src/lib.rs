//! Wire types shared by the control plane, the host agent and the CLI, and a typed HTTP client.
//!
//! Owns the JSON shapes of the Machines API (Fly-compatible field and state names), the agent
//! protocol (host registration, heartbeats, the watch stream, status reports) and
//! [`Client`]. It holds no server logic and must not depend on any role crate.

#![forbid(unsafe_code)]

pub mod apps;
pub mod autoscale;
pub mod certs;
pub mod client;
pub mod config;
pub mod deploy;
pub mod error;
pub mod exec;
pub mod hosts;
pub mod inspect;
pub mod ips;
pub mod latency;
pub mod machine;
pub mod releases;
pub mod routes;
pub mod tokens;

pub use apps::*;
pub use autoscale::*;
pub use client::{Client, ClientError};
pub use config::*;
pub use error::ErrorBody;
pub use exec::*;
pub use hosts::*;
pub use inspect::*;
pub use machine::*;
pub use releases::*;
pub use tokens::*;

/// The request header that carries a lease nonce on mutations of a leased machine.
pub const LEASE_NONCE_HEADER: &str = "fly-machine-lease-nonce";
