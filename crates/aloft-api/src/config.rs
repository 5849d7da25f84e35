//! `MachineConfig` and its parts, with Fly's field names.
//!
//! Every struct keeps fields it does not know in `extra` (flattened), so a config sent by a
//! newer client is stored and returned unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Fields Aloft does not model (yet); kept verbatim.
pub type Extra = serde_json::Map<String, Value>;

/// The desired configuration of a machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineConfig {
    /// Image reference, e.g. `registry.example/app:tag` or `nginx`.
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<MachineInit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MachineGuest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<MachineService>>,
    /// Named checks that do not decide routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, MachineCheck>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<MachineRestart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_destroy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub mounts: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    /// `hourly`, `daily`, `weekly` or `monthly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub processes: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub dns: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub files: Option<Vec<Value>>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// How the guest's first process is started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<i64>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// CPU and memory of the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineGuest {
    /// `shared` or `performance`.
    #[serde(default = "default_cpu_kind")]
    pub cpu_kind: String,
    #[serde(default = "default_cpus")]
    pub cpus: i64,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: i64,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

fn default_cpu_kind() -> String {
    "shared".to_owned()
}
fn default_cpus() -> i64 {
    1
}
fn default_memory_mb() -> i64 {
    256
}

impl Default for MachineGuest {
    fn default() -> Self {
        MachineGuest {
            cpu_kind: default_cpu_kind(),
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
            extra: Extra::new(),
        }
    }
}

/// A service the edge routes to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub internal_port: i64,
    /// `true`/`false`, or `"off"`/`"stop"`/`"suspend"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub autostop: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<MachinePort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<MachineServiceConcurrency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<MachineCheck>>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A public port (or port range) of a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachinePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handlers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_https: Option<bool>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// Concurrency limits of a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineServiceConcurrency {
    /// `connections` or `requests`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<i64>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A health check. Durations are Fly durations: a string such as `"10s"` or nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineCheck {
    /// `http` or `tcp`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub interval: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub timeout: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub grace_period: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub headers: Option<Value>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// What to do when the guest exits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineRestart {
    /// `no`, `always` or `on-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// How the guest is stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub timeout: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// Parses a Fly duration: `"10s"`, `"1m30s"`, `"500ms"`, a number of nanoseconds, or the
/// `{"time.Duration": nanoseconds}` object of Fly's OpenAPI description.
pub fn parse_fly_duration(value: &Value) -> Option<std::time::Duration> {
    match value {
        Value::Number(n) => n.as_u64().map(std::time::Duration::from_nanos),
        Value::String(s) => parse_duration_str(s),
        Value::Object(map) => map
            .get("time.Duration")
            .and_then(|v| v.as_u64())
            .map(std::time::Duration::from_nanos),
        _ => None,
    }
}

fn parse_duration_str(s: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => number / 1e9,
            "us" | "µs" => number / 1e6,
            "ms" => number / 1e3,
            "s" | "" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += std::time::Duration::try_from_secs_f64(seconds).ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip_at_every_level() {
        let input = json!({
            "image": "nginx:1.25",
            "future_top": {"a": 1},
            "init": {"cmd": ["sh"], "future_init": true},
            "guest": {"cpus": 2, "memory_mb": 512, "cpu_kind": "shared", "gpu_kind": "a100"},
            "services": [{
                "internal_port": 8080,
                "protocol": "tcp",
                "future_service": "x",
                "ports": [{"port": 443, "handlers": ["tls", "http"], "tls_options": {"alpn": ["h2"]}}],
                "concurrency": {"type": "requests", "soft_limit": 5, "future_c": 1},
                "checks": [{"type": "http", "path": "/", "tls_skip_verify": true}]
            }],
            "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s", "kind_of": 3}},
            "restart": {"policy": "always", "gpu_bid_price": 1.5},
            "stop_config": {"timeout": "10s", "signal": "SIGTERM", "future_stop": []},
            "statics": [{"guest_path": "/a", "url_prefix": "/b"}]
        });
        let config: MachineConfig = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(config.guest.as_ref().unwrap().cpus, 2);
        assert_eq!(serde_json::to_value(&config).unwrap(), input);
    }

    #[test]
    fn fly_durations_parse() {
        assert_eq!(
            parse_fly_duration(&json!("10s")),
            Some(std::time::Duration::from_secs(10))
        );
        assert_eq!(
            parse_fly_duration(&json!("1m30s")),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_fly_duration(&json!("500ms")),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_fly_duration(&json!(2_000_000_000u64)),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            parse_fly_duration(&json!({"time.Duration": 3_000_000_000u64})),
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(parse_fly_duration(&json!("ten")), None);
        assert_eq!(parse_fly_duration(&json!("")), None);
        assert_eq!(parse_fly_duration(&json!("5x")), None);
    }
}
