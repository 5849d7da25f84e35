//! The edge proxy. It owns the public listeners (HTTP, HTTPS with SNI certificates, the other
//! public ports of services, admin metrics), the route table copy and its durable file, the
//! choice of a machine per request (health, soft/hard limits, nearness), waking stopped
//! machines and stopping idle ones through a [`Waker`], `fly-replay` handling and the
//! platform's forwarding headers.
//!
//! It must never import the control plane or the agent (`aloft-control`, `aloft-agent`, nor
//! a client of their APIs): it gets routes as data ([`RouteTable`] through
//! [`Edge::update_routes`]) and acts on machines only through the [`Waker`] its host supplies.
//! Its one workspace dependency is the wire types of `aloft-api`.
//!
//! # Modules
//!
//! A module imports only modules on lines below its own; nothing calls back up.
//!
//! ```text
//! edge              the public API: listeners, route updates, certificates, drain
//! tcp               services' other public ports: their listeners, raw TCP forwarding
//! serve             client connections: accept loops, workers, TLS, the engine per connection
//! h1, hyper_engine  the two HTTP engines, which only move bytes: the HTTP/1.1 relay, and
//!                   hyper for HTTP/2, upgrades and what the relay hands over
//! flow              one request's decisions for both engines: route, pick a machine,
//!                   acquire capacity (or wake one), forward, retry and replay, account
//! wake              waking machines on demand, stopping idle ones
//! shared            the state every part shares: private fields behind methods
//! options           EdgeOptions, the Waker trait
//! tls, acme, routes, balance, upstream, headers, body, metrics, load, replay, chunked,
//! proxy_proto       data and mechanisms; among them only tls → acme → body,
//!                   upstream → body and headers → balance → routes
//! ```
//!
//! `docs/edge.md` describes the edge for its users, and how it was measured.

#![forbid(unsafe_code)]

mod acme;
mod balance;
mod body;
mod chunked;
mod edge;
mod flow;
mod h1;
mod headers;
mod hyper_engine;
mod load;
mod metrics;
mod options;
pub mod proxy_proto;
mod replay;
mod routes;
mod serve;
mod shared;
mod tcp;
mod tls;
mod upstream;
mod wake;

pub use edge::{Edge, EdgeError};
pub use load::{EntryGuard, EntryLoad, EntrySnapshot};
pub use options::{EdgeOptions, WakeFuture, Waker};
pub use replay::{Replay, REPLAY_HEADERS};
pub use routes::{
    AppRoutes, Autostop, Concurrency, ConcurrencyKind, MachineRoute, MachineState, PortRoute,
    ProxyProtoVersion, RouteStore, RouteStoreError, RouteTable, ServiceRoutes,
};
pub use tls::{Ca, TlsError};
