//! The host agent: the machines on one host.
//!
//! Owns a durable state machine per machine (recorded in the agent's own SQLite store before
//! each step), the runtime driver that runs them, their networking, and the agent's side of
//! the control-plane protocol (join, heartbeat, watch, status reports). It talks to the
//! control plane only through the wire types in `aloft-api`, and never decides placement.

#![deny(unsafe_code)]

mod agent;
pub mod bgp;
mod checks;
mod credential;
pub mod dns;
pub mod edge;
mod gc;
pub mod host;
pub mod hostapi;
pub mod load;
pub mod mesh;
pub mod network;
pub mod runtime;
pub mod store;
mod supervisor;

pub use agent::{run, AgentOptions, StorageLimits};

/// What can stop the agent or fail a machine step.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Agent store failed")]
    Store(#[from] store::StoreError),
    #[error("Control plane client cannot be built")]
    Client(#[from] aloft_api::ClientError),
    #[error("The control plane refused this host")]
    Join(#[source] aloft_api::ClientError),
    #[error("--host-id {flag} does not match {saved}, the id this data dir belongs to")]
    HostIdMismatch { flag: String, saved: String },
    #[error("I/O failed while {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Image {reference} cannot be prepared")]
    Image {
        reference: String,
        #[source]
        source: aloft_image::ImageError,
    },
    #[error("Disk full: no space left on device while {what} (at {path})")]
    DiskFull {
        what: String,
        path: std::path::PathBuf,
    },
    #[error("Machine network failed")]
    Network(#[from] network::NetworkError),
    #[error("Sandbox runtime failed")]
    Runtime(#[from] runtime::RuntimeError),
    #[error("Mesh failed")]
    Mesh(#[from] aloft_mesh::MeshError),
    #[error("Host API failed")]
    HostApi(#[from] hostapi::HostApiError),
    #[error("{0}")]
    Invalid(String),
}
