//! `.internal` DNS for one host: a hickory-server that answers the `internal.` zone (apps,
//! regions, nearest machines, machines by id, TXT listings) from a snapshot the agent hands
//! it, scoped to the querier's org network, and relays every other name to an upstream
//! resolver.
//!
//! It owns no state of its own besides that snapshot: it never talks to the control plane or
//! reads the agent's store (the agent builds the [`DnsView`] and the [`ScopeFn`]).

#![forbid(unsafe_code)]

mod forward;
mod names;
mod server;

pub use forward::{ForwardError, UPSTREAM_TIMEOUT};
pub use names::{in_zone, lookup, DnsApp, DnsMachine, DnsView, Lookup, Scope, ZONE};
pub use server::{scope_of, DnsError, DnsOptions, DnsServer, ScopeFn, ViewSetter, TTL};

#[cfg(test)]
mod tests;
