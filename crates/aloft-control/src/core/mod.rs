//! The core layer: the store (SQLite today) behind one interface, the global revision and
//! change notification, the machine lifecycle's transition function, identifiers and the
//! data directory's sealing key.
//!
//! It owns every SQL statement of the control plane. It must never import `services` or
//! `api` (a test in `layering.rs` checks), and knows no HTTP type: its errors say what
//! failed, the services decide what that means.

pub mod error;
pub mod ids;
pub mod keys;
pub mod revision;
pub mod state;
pub mod store;

pub use error::StoreError;
pub use revision::{shutting_down, Revisions};
pub use store::{now_rfc3339, Db, Inner, Store};
