//! One module per command group.

pub mod agent;
pub mod apps;
pub mod auth;
pub mod dev;
pub mod image;
pub mod logs;
pub mod machine;
pub mod regions;
pub mod server;
pub mod ssh;
pub mod tokens;
