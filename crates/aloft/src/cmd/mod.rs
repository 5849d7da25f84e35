//! One module per command group.

pub mod agent;
pub mod apps;
pub mod auth;
pub mod dev;
pub mod image;
pub mod machine;
pub mod regions;
pub mod routes;
pub mod server;
pub mod tokens;
