//! Fly's value forms: durations (`"1m30s"`), sizes (`"512mb"`), and the VM size presets.

use std::time::Duration;

/// Parses a Go-style duration such as `"10s"`, `"1m30s"`, `"1.5h"` or `"500ms"`.
///
/// Every number needs a unit, except a lone `"0"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let nanos = number * nanos_per_unit;
        if !nanos.is_finite() || nanos > u64::MAX as f64 {
            return None;
        }
        total = total.checked_add(Duration::from_nanos(nanos.round() as u64))?;
    }
    Some(total)
}

/// Formats a duration the way Fly writes them: `"5s"`, `"1m30s"`, `"500ms"`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    if d < Duration::from_secs(1) {
        let nanos = d.subsec_nanos();
        return if nanos % 1_000_000 == 0 {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let fraction = format!("{:09}", nanos);
        out.push_str(&format!("{seconds}.{}s", fraction.trim_end_matches('0')));
    } else if seconds > 0 {
        out.push_str(&format!("{seconds}s"));
    }
    out
}

/// Parses a memory or disk size into megabytes: `"512mb"`, `"1gb"`, `"2g"`, `"256"` (MB).
pub fn parse_size_mb(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..number_len].parse().ok()?;
    let factor = match text[number_len..].trim() {
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        _ => return None,
    };
    let mb = number * factor;
    (mb.is_finite() && mb >= 0.0 && mb.fract() == 0.0 && mb <= u32::MAX as f64).then_some(mb as u64)
}

/// A VM size preset: CPU kind, CPU count and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The preset's name, e.g. `shared-cpu-1x`.
    pub name: &'static str,
    /// `shared` or `performance`.
    pub cpu_kind: &'static str,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Memory in MB.
    pub memory_mb: u32,
}

/// Fly's CPU presets (the GPU presets are not offered).
pub const PRESETS: &[Preset] = &[
    preset("shared-cpu-1x", "shared", 1, 256),
    preset("shared-cpu-2x", "shared", 2, 512),
    preset("shared-cpu-4x", "shared", 4, 1024),
    preset("shared-cpu-8x", "shared", 8, 2048),
    preset("performance-1x", "performance", 1, 2048),
    preset("performance-2x", "performance", 2, 4096),
    preset("performance-4x", "performance", 4, 8192),
    preset("performance-8x", "performance", 8, 16384),
    preset("performance-16x", "performance", 16, 32768),
];

const fn preset(name: &'static str, cpu_kind: &'static str, cpus: u32, memory_mb: u32) -> Preset {
    Preset {
        name,
        cpu_kind,
        cpus,
        memory_mb,
    }
}

/// The default size, `shared-cpu-1x`.
pub const DEFAULT_SIZE: &str = "shared-cpu-1x";

/// Looks up a preset by name.
pub fn preset_named(name: &str) -> Option<Preset> {
    PRESETS.iter().copied().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_fly_form() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2h45m"), Some(Duration::from_secs(9900)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5 s"), None);
        assert_eq!(parse_duration("-5s"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn durations_format_back_to_what_they_parse_from() {
        for text in [
            "5s", "1m30s", "500ms", "5m", "1h", "2h0m1s", "1.5s", "250us", "0s",
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn sizes_parse_to_megabytes() {
        assert_eq!(parse_size_mb("512mb"), Some(512));
        assert_eq!(parse_size_mb("1gb"), Some(1024));
        assert_eq!(parse_size_mb("1GB"), Some(1024));
        assert_eq!(parse_size_mb("2g"), Some(2048));
        assert_eq!(parse_size_mb("0.5gb"), Some(512));
        assert_eq!(parse_size_mb("256"), Some(256));
        assert_eq!(parse_size_mb("1.5mb"), None);
        assert_eq!(parse_size_mb("lots"), None);
        assert_eq!(parse_size_mb("1tb"), None);
    }

    #[test]
    fn presets_match_fly_table() {
        let p = preset_named("shared-cpu-1x").unwrap();
        assert_eq!((p.cpu_kind, p.cpus, p.memory_mb), ("shared", 1, 256));
        let p = preset_named("performance-16x").unwrap();
        assert_eq!(
            (p.cpu_kind, p.cpus, p.memory_mb),
            ("performance", 16, 32768)
        );
        assert!(preset_named("shared-cpu-3x").is_none());
        assert!(preset_named(DEFAULT_SIZE).is_some());
    }
}
