//! The edge proxy. It owns the public listeners (HTTP, HTTPS with SNI certificates, admin
//! metrics), the route table copy and its durable file, the choice of a machine per request
//! (health, soft/hard limits, nearness), waking stopped machines and stopping idle ones through a
//! [`Waker`], `fly-replay` handling and the platform's forwarding headers.
//!
//! It must not depend on the control plane or the agent: it gets routes as data
//! ([`RouteTable`] through [`Edge::update_routes`]) and acts on machines only through the
//! [`Waker`] its host supplies.

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
