//! One module per command group.

pub mod agent;
pub mod apps;
pub mod auth;
pub mod certs;
pub mod checks;
pub mod config;
pub mod deploy;
pub mod dev;
pub mod doctor;
pub mod hosts;
pub mod image;
pub mod ips;
pub mod launch;
pub mod logs;
pub mod machine;
pub mod open;
pub mod orgs;
pub mod regions;
pub mod releases;
pub mod restart;
pub mod scale;
pub mod secrets;
pub mod server;
pub mod ssh;
pub mod status;
pub mod tokens;
