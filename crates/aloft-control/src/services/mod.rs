//! The services layer: one service per subject, each owning its state and its error enum,
//! built over the core's store. A service imports `core` and services below it, never `api`
//! nor `control` (a test in `layering.rs` checks), and chooses no HTTP status.
//!
//! From the bottom up (each may use those listed before it):
//! - `image`, `placement`: pure checks and choices.
//! - `tokens`: bearer tokens and their scopes.
//! - `apps`: apps and orgs (deleting an app revokes its tokens).
//! - `hosts`: registration, heartbeats, liveness, regions, mesh peers.
//! - `secrets`: app secrets sealed at rest.
//! - `machines`: the Machines API, leases, agents' reports and watch, exec targets.
//! - `exec`: commands and log streams in machines, through their hosts' agents.
//! - `releases`: release records.
//! - `deploys`: deploys run by the control plane (the `aloft-deploy` engine over `machines`).
//! - `autoscale`: load reports, policies, the scaler (drives `machines`).
//! - `certs`: the cluster CA, user and ACME certificates as stored.
//! - `acme`: the ACME client that orders certificates (over `certs`).
//! - `ips`: dedicated addresses from the operator's pools.
//! - `routes`: the route table (over `hosts` for liveness).
//! - `geodns`: answers from the live edges.

pub mod acme;
pub mod apps;
pub mod autoscale;
pub mod certs;
pub mod deploys;
pub mod exec;
pub mod geodns;
pub mod hosts;
pub mod image;
pub mod ips;
pub mod limits;
pub mod machines;
pub mod placement;
pub mod releases;
pub mod routes;
pub mod secrets;
pub mod tokens;
