//! `aloft.toml` / `fly.toml` parsing and validation.
//!
//! Owns the application configuration file: its schema (Fly's `fly.toml`, read as-is), defaults,
//! validation with `file:line:column` errors that name the key, warnings for unknown keys, and the
//! mapping from an app config to per-process-group Machines API configs. It does no I/O beyond
//! reading the file in [`load_dir`] and must not talk to the control plane or any other role.

#![forbid(unsafe_code)]

mod diag;
mod machine;
mod model;
mod parse;
mod reader;
mod sections;
mod units;

use std::path::{Path, PathBuf};

pub use diag::{line_col, ConfigError, Diagnostic, Warning};
pub use machine::PLATFORM_VERSION;
pub use model::*;
pub use parse::{valid_app_name, MAX_KILL_TIMEOUT};
pub use units::{format_duration, parse_duration, parse_size_mb, preset_named, Preset, PRESETS};

/// The file Aloft reads first.
pub const ALOFT_TOML: &str = "aloft.toml";
/// The file read as-is when there is no `aloft.toml`.
pub const FLY_TOML: &str = "fly.toml";

/// A parsed configuration with the warnings found while reading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The configuration, defaults filled in.
    pub config: AppConfig,
    /// Problems that did not stop loading (unknown or unsupported keys).
    pub warnings: Vec<Warning>,
    /// The file it came from (the name given to [`parse`]).
    pub path: PathBuf,
}

/// Parses configuration text; `name` is used in diagnostics (e.g. `aloft.toml`).
pub fn parse(name: &str, text: &str) -> Result<Loaded, ConfigError> {
    let (config, warnings) = parse::parse_text(name, text)?;
    Ok(Loaded {
        config,
        warnings,
        path: PathBuf::from(name),
    })
}

/// Reads `aloft.toml` from `dir`, or `fly.toml` when there is no `aloft.toml`.
pub fn load_dir(dir: &Path) -> Result<Loaded, ConfigError> {
    for name in [ALOFT_TOML, FLY_TOML] {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                tracing::debug!(path = %path.display(), "reading app config");
                let (config, warnings) = parse::parse_text(&path.display().to_string(), &text)?;
                return Ok(Loaded {
                    config,
                    warnings,
                    path,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
    }
    Err(ConfigError::NotFound {
        dir: dir.to_owned(),
    })
}

impl AppConfig {
    /// The config `aloft launch` writes: app, region and an HTTP service on `port`.
    pub fn minimal(app: &str, region: &str, port: u16) -> AppConfig {
        AppConfig {
            app: Some(app.to_owned()),
            primary_region: Some(region.to_owned()),
            kill_signal: "SIGINT".to_owned(),
            kill_timeout: std::time::Duration::from_secs(5),
            swap_size_mb: None,
            build: None,
            env: Default::default(),
            processes: Default::default(),
            http_service: Some(HttpService::new(port)),
            services: Vec::new(),
            checks: Default::default(),
            deploy: Deploy::default(),
            mounts: Vec::new(),
            vm: Vec::new(),
            restart: Vec::new(),
            metrics: Vec::new(),
            experimental: Experimental::default(),
            statics: Vec::new(),
        }
    }

    /// Writes the config as TOML, leaving out values equal to their defaults.
    pub fn to_toml_string(&self) -> String {
        // Every field is a string, number, boolean, table or array, so this cannot fail.
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
