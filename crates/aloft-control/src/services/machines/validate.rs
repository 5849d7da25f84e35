//! Checks on user-supplied machine configs and signals.

use aloft_api::MachineConfig;

use super::MachineError;
use crate::services::image::parse_image_ref;

const SIGNALS: &[&str] = &[
    "SIGABRT", "SIGALRM", "SIGHUP", "SIGINT", "SIGKILL", "SIGQUIT", "SIGTERM", "SIGUSR1",
    "SIGUSR2", "SIGSTOP", "SIGCONT", "SIGTSTP", "SIGWINCH",
];

pub fn validate_signal(signal: &str) -> Result<(), MachineError> {
    if SIGNALS.contains(&signal) {
        Ok(())
    } else {
        Err(MachineError::Invalid(format!(
            "Unknown signal {signal:?}; use one of {}",
            SIGNALS.join(", ")
        )))
    }
}

/// Checks a config and returns its guest size (cpus, memory_mb).
pub fn validate_config(config: &MachineConfig) -> Result<(i64, i64), MachineError> {
    if config.image.trim().is_empty() {
        return Err(MachineError::Invalid("config.image is required".to_owned()));
    }
    parse_image_ref(&config.image)?;
    let guest = config.guest.clone().unwrap_or_default();
    if !(1..=64).contains(&guest.cpus) {
        return Err(MachineError::Invalid(format!(
            "config.guest.cpus {} must be between 1 and 64",
            guest.cpus
        )));
    }
    if !(128..=262_144).contains(&guest.memory_mb) {
        return Err(MachineError::Invalid(format!(
            "config.guest.memory_mb {} must be between 128 and 262144",
            guest.memory_mb
        )));
    }
    if !matches!(guest.cpu_kind.as_str(), "shared" | "performance") {
        return Err(MachineError::Invalid(format!(
            "config.guest.cpu_kind {:?} must be \"shared\" or \"performance\"",
            guest.cpu_kind
        )));
    }
    for (i, service) in config.services.iter().flatten().enumerate() {
        if !(1..=65_535).contains(&service.internal_port) {
            return Err(MachineError::Invalid(format!(
                "config.services[{i}].internal_port {} must be between 1 and 65535",
                service.internal_port
            )));
        }
    }
    if let Some(policy) = config.restart.as_ref().and_then(|r| r.policy.as_deref()) {
        if !matches!(policy, "" | "no" | "always" | "on-failure") {
            return Err(MachineError::Invalid(format!(
                "config.restart.policy {policy:?} must be \"no\", \"always\" or \"on-failure\""
            )));
        }
    }
    if let Some(signal) = config
        .stop_config
        .as_ref()
        .and_then(|s| s.signal.as_deref())
    {
        validate_signal(signal)?;
    }
    if let Some(key) = config
        .env
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .find(|k| k.is_empty() || k.contains('='))
    {
        return Err(MachineError::Invalid(format!(
            "config.env name {key:?} is not a valid variable name"
        )));
    }
    Ok((guest.cpus, guest.memory_mb))
}
