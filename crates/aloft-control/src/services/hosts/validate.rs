//! Checks on what a host registers with, and region names.

use aloft_api::RegisterHostRequest;

use super::{HostError, HostLimits};

pub(super) fn validate_host(
    req: &RegisterHostRequest,
    limits: HostLimits,
) -> Result<(), HostError> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if !ident(&req.id) {
        return Err(HostError::Invalid(format!(
            "Host id {:?} must be 1-64 letters, digits, '.', '_' or '-'",
            req.id
        )));
    }
    if !ident(&req.region) || req.region.len() > 16 {
        return Err(HostError::Invalid(format!(
            "Region {:?} must be 1-16 letters, digits, '.', '_' or '-'",
            req.region
        )));
    }
    if req.address.trim().is_empty() {
        return Err(HostError::Invalid("Host address is empty".to_owned()));
    }
    if !(1..=4096).contains(&req.cpus) {
        return Err(HostError::Invalid(format!(
            "Host cpus {} must be between 1 and 4096",
            req.cpus
        )));
    }
    if !(128..=64 * 1024 * 1024).contains(&req.memory_mb) {
        return Err(HostError::Invalid(format!(
            "Host memory_mb {} must be between 128 and 67108864",
            req.memory_mb
        )));
    }
    if req.cpus > limits.max_cpus {
        return Err(HostError::Invalid(format!(
            "Host cpus {} is over this cluster's limit of {} (the operator sets it with `aloft server --host-max-cpus`)",
            req.cpus, limits.max_cpus
        )));
    }
    if req.memory_mb > limits.max_memory_mb {
        return Err(HostError::Invalid(format!(
            "Host memory_mb {} is over this cluster's limit of {} (the operator sets it with `aloft server --host-max-memory-mb`)",
            req.memory_mb, limits.max_memory_mb
        )));
    }
    if let Some(mesh) = &req.mesh {
        validate_mesh(mesh)?;
    }
    Ok(())
}

/// The edge addresses a host registers, parsed.
pub(super) fn edge_addresses(
    req: &RegisterHostRequest,
) -> Result<Vec<std::net::IpAddr>, HostError> {
    req.edge_addresses
        .iter()
        .map(|a| {
            a.parse::<std::net::IpAddr>()
                .map_err(|_| HostError::Invalid(format!("Edge address {a:?} is not an IP address")))
        })
        .collect()
}

fn validate_mesh(mesh: &aloft_api::MeshInfo) -> Result<(), HostError> {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(mesh.public_key.trim())
        .ok()
        .filter(|k| k.len() == 32);
    if key.is_none() {
        return Err(HostError::Invalid(format!(
            "Mesh public_key {:?} is not the base64 of a 32-byte X25519 key",
            mesh.public_key
        )));
    }
    if mesh.endpoint.parse::<std::net::SocketAddr>().is_err() {
        return Err(HostError::Invalid(format!(
            "Mesh endpoint {:?} is not an ip:port address",
            mesh.endpoint
        )));
    }
    Ok(())
}

/// A human name for well-known Fly region codes; the code itself otherwise.
pub(super) fn region_name(code: &str) -> &str {
    match code {
        "ams" => "Amsterdam, Netherlands",
        "arn" => "Stockholm, Sweden",
        "cdg" => "Paris, France",
        "dfw" => "Dallas, Texas (US)",
        "ewr" => "Secaucus, NJ (US)",
        "fra" => "Frankfurt, Germany",
        "gru" => "Sao Paulo, Brazil",
        "iad" => "Ashburn, Virginia (US)",
        "jnb" => "Johannesburg, South Africa",
        "lax" => "Los Angeles, California (US)",
        "lhr" => "London, United Kingdom",
        "nrt" => "Tokyo, Japan",
        "ord" => "Chicago, Illinois (US)",
        "sin" => "Singapore, Singapore",
        "sjc" => "San Jose, California (US)",
        "syd" => "Sydney, Australia",
        "yyz" => "Toronto, Canada",
        other => other,
    }
}
