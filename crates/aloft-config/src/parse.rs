//! Turns a TOML document into an [`AppConfig`], checking types, ranges and Fly's rules.

use std::collections::BTreeMap;
use std::time::Duration;

use toml_edit::{Document, Value};

use crate::diag::{ConfigError, Diagnostic, Warning};
use crate::model::{
    AppConfig, Build, CpuKind, Deploy, Experimental, MaxUnavailable, Metrics, Mount, Restart,
    RestartPolicy, Static, Strategy, Vm,
};
use crate::reader::{describe, Ctx, Tbl};
use crate::sections::{check, check_processes, default_group, http_service, service, PortClaims};
use crate::units::{parse_size_mb, preset_named, PRESETS};

const ROOT_KEYS: &[&str] = &[
    "app",
    "primary_region",
    "kill_signal",
    "kill_timeout",
    "swap_size_mb",
    "build",
    "env",
    "processes",
    "http_service",
    "services",
    "checks",
    "deploy",
    "mounts",
    "vm",
    "restart",
    "metrics",
    "statics",
    "experimental",
    "mount",
];

/// Fly keys Aloft reads past with a warning.
const ROOT_IGNORED: &[&str] = &["console_command", "host_dedication_id", "files", "compute"];

const SIGNALS: &[&str] = &[
    "SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP", "SIGHUP",
];

/// Maximum `kill_timeout`.
pub const MAX_KILL_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses and validates; returns the config and its warnings, or every error found.
pub(crate) fn parse_text(file: &str, text: &str) -> Result<(AppConfig, Vec<Warning>), ConfigError> {
    let mut ctx = Ctx::new(file, text);
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().replace('\n', "; ");
            ctx.error(&span, String::new(), format!("invalid TOML: {message}"));
            return Err(ConfigError::Invalid(ctx.errors));
        }
    };
    let root = Tbl {
        table: doc.as_table(),
        path: String::new(),
        span: None,
    };
    let config = read_root(&mut ctx, &root);
    ctx.warnings.sort_by_key(|w| (w.line, w.column));
    if ctx.errors.is_empty() {
        Ok((config, ctx.warnings))
    } else {
        ctx.errors.sort_by_key(|d: &Diagnostic| (d.line, d.column));
        Err(ConfigError::Invalid(ctx.errors))
    }
}

fn read_root(ctx: &mut Ctx<'_>, root: &Tbl<'_>) -> AppConfig {
    root.check_keys(ctx, ROOT_KEYS, ROOT_IGNORED);
    let app = root.str(ctx, "app");
    if let Some(name) = &app {
        if !valid_app_name(name) {
            let span = root.get("app").map_or(0..0, |(_, s)| s);
            let message = format!(
                "expected 2-63 lowercase letters, digits or dashes, not starting or ending with a dash, found {name:?}"
            );
            ctx.error(&span, "app".to_owned(), message);
        }
    }
    let primary_region = root.str(ctx, "primary_region");
    if let Some(region) = &primary_region {
        let ok = !region.is_empty()
            && region.len() <= 63
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            let span = root.get("primary_region").map_or(0..0, |(_, s)| s);
            let message = format!("expected a region code such as \"ams\", found {region:?}");
            ctx.error(&span, "primary_region".to_owned(), message);
        }
    }
    let kill_signal = root
        .word(ctx, "kill_signal", SIGNALS)
        .unwrap_or_else(|| "SIGINT".to_owned());
    let mut kill_timeout = root
        .duration(ctx, "kill_timeout")
        .unwrap_or(Duration::from_secs(5));
    if kill_timeout > MAX_KILL_TIMEOUT {
        let span = root.get("kill_timeout").map_or(0..0, |(_, s)| s);
        let message = format!(
            "expected at most 300 seconds, found {}",
            crate::units::format_duration(kill_timeout)
        );
        ctx.error(&span, "kill_timeout".to_owned(), message);
        kill_timeout = MAX_KILL_TIMEOUT;
    }
    let processes = read_processes(ctx, root);
    let groups: Vec<String> = processes.keys().cloned().collect();

    let mut claims = PortClaims::default();
    let mut config = AppConfig {
        app,
        primary_region,
        kill_signal,
        kill_timeout,
        swap_size_mb: root.u32(ctx, "swap_size_mb"),
        build: root.table_at(ctx, "build").map(|t| read_build(ctx, &t)),
        env: read_env(ctx, root),
        processes,
        http_service: root
            .table_at(ctx, "http_service")
            .map(|t| http_service(ctx, &t, &groups, &mut claims)),
        services: root
            .tables_at(ctx, "services")
            .iter()
            .map(|t| service(ctx, t, &groups, &mut claims))
            .collect(),
        checks: BTreeMap::new(),
        deploy: Deploy::default(),
        mounts: read_mounts(ctx, root, &groups),
        vm: root
            .tables_at(ctx, "vm")
            .iter()
            .map(|t| read_vm(ctx, t, &groups))
            .collect(),
        restart: root
            .tables_at(ctx, "restart")
            .iter()
            .map(|t| read_restart(ctx, t, &groups))
            .collect(),
        metrics: root
            .tables_at(ctx, "metrics")
            .iter()
            .filter_map(|t| read_metrics(ctx, t, &groups))
            .collect(),
        experimental: read_experimental(ctx, root),
        statics: root
            .tables_at(ctx, "statics")
            .iter()
            .map(|t| read_static(ctx, t))
            .collect(),
    };
    if let Some(checks) = root.table_at(ctx, "checks") {
        let names: Vec<&str> = checks.table.iter().map(|(name, _)| name).collect();
        for name in names {
            let Some(t) = checks.table_at(ctx, name) else {
                continue;
            };
            let mut c = check(ctx, &t, None);
            c.processes = check_processes(ctx, &t, &groups);
            config.checks.insert(name.to_owned(), c);
        }
    }
    if let Some(t) = root.table_at(ctx, "deploy") {
        config.deploy = read_deploy(ctx, &t, &config);
    }
    config
}

/// Lowercase letters, digits and dashes, 2–63 characters, no dash at either end.
pub fn valid_app_name(name: &str) -> bool {
    (2..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn read_processes(ctx: &mut Ctx<'_>, root: &Tbl<'_>) -> BTreeMap<String, String> {
    // Old fly.toml files (and Fly's API) write `processes = []` for "no process groups".
    if let Some((item, _)) = root.get("processes") {
        if item.as_array().is_some_and(|a| a.is_empty()) {
            return BTreeMap::new();
        }
    }
    let Some(t) = root.table_at(ctx, "processes") else {
        return BTreeMap::new();
    };
    let processes = t.as_string_map(ctx);
    for (name, command) in &processes {
        let span = t.get(name).map_or_else(|| t.start(), |(_, s)| s);
        let valid = (1..=63).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            let message =
                "expected a group name of lowercase letters, digits, dashes or underscores";
            ctx.error(&t.key_span(name), t.label(name), message.to_owned());
        }
        if shlex::split(command).is_none() {
            let message = format!("could not split {command:?} into words (unbalanced quote?)");
            ctx.error(&span, t.label(name), message);
        }
    }
    processes
}

fn read_build(ctx: &mut Ctx<'_>, t: &Tbl<'_>) -> Build {
    t.check_keys(
        ctx,
        &["image", "dockerfile", "build-target", "args"],
        &["builder", "builtin", "buildpacks", "ignorefile", "settings"],
    );
    Build {
        image: t.str(ctx, "image"),
        dockerfile: t.str(ctx, "dockerfile"),
        build_target: t.str(ctx, "build-target"),
        args: t.string_map(ctx, "args").unwrap_or_default(),
    }
}

fn read_env(ctx: &mut Ctx<'_>, root: &Tbl<'_>) -> BTreeMap<String, String> {
    let Some(t) = root.table_at(ctx, "env") else {
        return BTreeMap::new();
    };
    let mut env = BTreeMap::new();
    for (name, item) in t.table.iter() {
        let span = item.span().unwrap_or_else(|| t.key_span(name));
        let value = match item.as_value() {
            Some(Value::String(s)) => s.value().clone(),
            // flyctl turns numbers and booleans into strings; so do we, with a warning.
            Some(Value::Integer(_) | Value::Float(_) | Value::Boolean(_)) => {
                let text = describe(item);
                let message = format!(
                    "{} is {text}, not a string; using \"{text}\" (quote it to silence this)",
                    t.label(name)
                );
                ctx.warn(&span, message);
                text
            }
            _ => {
                let message = format!("expected a string, found {}", describe(item));
                ctx.error(&span, t.label(name), message);
                continue;
            }
        };
        let upper = name.to_ascii_uppercase();
        if upper.starts_with("FLY_") || upper.starts_with("ALOFT_") {
            let message = "names starting with FLY_ or ALOFT_ are reserved for the platform";
            ctx.error(&t.key_span(name), t.label(name), message.to_owned());
        } else if name.is_empty() || name.contains('=') {
            let message = "expected a variable name without '='";
            ctx.error(&t.key_span(name), t.label(name), message.to_owned());
        }
        env.insert(name.to_owned(), value);
    }
    env
}

/// `[experimental]`: only `cmd`, `entrypoint` and `exec` are used.
fn read_experimental(ctx: &mut Ctx<'_>, root: &Tbl<'_>) -> Experimental {
    const IGNORED: &[&str] = &[
        "auto_rollback",
        "allowed_public_ports",
        "private_network",
        "enable_consul",
        "enable_etcd",
        "lazy_load_images",
        "attached",
        "machine_config",
        "launch_plan",
    ];
    let Some(t) = root.table_at(ctx, "experimental") else {
        return Experimental::default();
    };
    t.check_keys(ctx, &["cmd", "entrypoint", "exec"], IGNORED);
    let mut words = |key: &str| match t.get(key) {
        Some((item, _)) if item.is_str() => vec![item.as_str().unwrap_or_default().to_owned()],
        Some(_) => t.strings(ctx, key).unwrap_or_default(),
        None => Vec::new(),
    };
    Experimental {
        cmd: words("cmd"),
        entrypoint: words("entrypoint"),
        exec: words("exec"),
    }
}

fn read_deploy(ctx: &mut Ctx<'_>, t: &Tbl<'_>, config: &AppConfig) -> Deploy {
    const KEYS: &[&str] = &[
        "strategy",
        "max_unavailable",
        "wait_timeout",
        "release_command",
        "release_command_timeout",
    ];
    t.check_keys(ctx, KEYS, &["release_command_vm", "processes"]);
    let mut d = Deploy::default();
    let strategies = ["rolling", "immediate", "canary", "bluegreen"];
    d.strategy = match t.word(ctx, "strategy", &strategies).as_deref() {
        Some("immediate") => Strategy::Immediate,
        Some("canary") => Strategy::Canary,
        Some("bluegreen") => Strategy::Bluegreen,
        _ => Strategy::Rolling,
    };
    let strategy_span = t.get("strategy").map_or_else(|| t.start(), |(_, s)| s);
    let label = t.label("strategy");
    if matches!(d.strategy, Strategy::Canary | Strategy::Bluegreen) && !config.mounts.is_empty() {
        let message = format!(
            "the {} strategy cannot be used with [mounts]",
            d.strategy.as_str()
        );
        ctx.error(&strategy_span, label.clone(), message);
    }
    if d.strategy == Strategy::Bluegreen && !has_service_checks(config) {
        let message = "the bluegreen strategy needs at least one service health check \
                       ([[http_service.checks]], [[services.http_checks]] or [[services.tcp_checks]])";
        ctx.error(&strategy_span, label, message.to_owned());
    }
    if let Some((item, span)) = t.get("max_unavailable") {
        let value = match (item.as_integer(), item.as_float()) {
            (Some(n), _) if n >= 1 && n <= i64::from(u32::MAX) => {
                Some(MaxUnavailable::Count(n as u32))
            }
            (_, Some(f)) if f > 0.0 && f < 1.0 => Some(MaxUnavailable::Fraction(f)),
            (_, Some(f)) if f >= 1.0 && f.fract() == 0.0 && f <= f64::from(u32::MAX) => {
                Some(MaxUnavailable::Count(f as u32))
            }
            _ => None,
        };
        match value {
            Some(v) => d.max_unavailable = v,
            None => {
                let message = format!(
                    "expected a fraction between 0 and 1 or a whole number of machines, found {}",
                    describe(item)
                );
                ctx.error(&span, t.label("max_unavailable"), message);
            }
        }
    }
    d.wait_timeout = t.duration(ctx, "wait_timeout");
    d.release_command = t.str(ctx, "release_command");
    if let Some(timeout) = t.duration(ctx, "release_command_timeout") {
        d.release_command_timeout = timeout;
    }
    d
}

fn has_service_checks(config: &AppConfig) -> bool {
    config
        .http_service
        .as_ref()
        .is_some_and(|s| !s.checks.is_empty())
        || config
            .services
            .iter()
            .any(|s| !s.tcp_checks.is_empty() || !s.http_checks.is_empty())
}

/// Reads `[mounts]`; a machine mounts at most one volume, so each group may have one mount.
fn read_mounts(ctx: &mut Ctx<'_>, root: &Tbl<'_>, groups: &[String]) -> Vec<Mount> {
    let default_group = default_group(groups);
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut mounts = Vec::new();
    let mut tables = root.tables_at(ctx, "mounts");
    tables.extend(root.tables_at(ctx, "mount"));
    for t in tables {
        let Some(mount) = read_mount(ctx, &t, groups) else {
            continue;
        };
        let targets = if mount.processes.is_empty() {
            vec![default_group.clone()]
        } else {
            mount.processes.clone()
        };
        for group in targets {
            if let Some(other) = taken.insert(group.clone(), mount.source.clone()) {
                let message = format!(
                    "process group '{group}' already mounts volume '{other}'; a machine can mount only one volume"
                );
                ctx.error(&t.start(), format!("[{}]", t.path), message);
            }
        }
        mounts.push(mount);
    }
    mounts
}

fn read_mount(ctx: &mut Ctx<'_>, t: &Tbl<'_>, groups: &[String]) -> Option<Mount> {
    const KEYS: &[&str] = &[
        "source",
        "destination",
        "initial_size",
        "snapshot_retention",
        "processes",
    ];
    const IGNORED: &[&str] = &[
        "auto_extend_size_threshold",
        "auto_extend_size_increment",
        "auto_extend_size_limit",
        "scheduled_snapshots",
    ];
    t.check_keys(ctx, KEYS, IGNORED);
    let source = t.str(ctx, "source");
    let destination = t.str(ctx, "destination");
    if t.get("source").is_none() {
        t.missing(ctx, "source");
    }
    if t.get("destination").is_none() {
        t.missing(ctx, "destination");
    }
    if let Some(dest) = &destination {
        if !dest.starts_with('/') {
            let span = t.get("destination").map_or_else(|| t.start(), |(_, s)| s);
            let message = format!("expected an absolute path, found {dest:?}");
            ctx.error(&span, t.label("destination"), message);
        }
    }
    let initial_size_gb = t.get("initial_size").and_then(|(item, span)| {
        let gb = match (item.as_integer(), item.as_str()) {
            (Some(n), _) => u32::try_from(n).ok().filter(|n| *n > 0),
            (_, Some(s)) => parse_size_gb(s),
            _ => None,
        };
        if gb.is_none() {
            let message = format!(
                "expected a size such as \"10gb\" or a whole number of GB, found {}",
                describe(item)
            );
            ctx.error(&span, t.label("initial_size"), message);
        }
        gb
    });
    let mount = Mount {
        source: source?,
        destination: destination?,
        initial_size_gb,
        snapshot_retention: t
            .int(ctx, "snapshot_retention", 1..=60)
            .map_or(5, |n| n as u32),
        processes: check_processes(ctx, t, groups),
    };
    Some(mount)
}

/// Volume sizes are whole GB: `"10gb"`, `"10"` (GB), or `"1024mb"`.
fn parse_size_gb(text: &str) -> Option<u32> {
    let lower = text.trim().to_ascii_lowercase();
    let mb = if lower.chars().all(|c| c.is_ascii_digit()) {
        parse_size_mb(&format!("{lower}gb"))?
    } else {
        parse_size_mb(&lower)?
    };
    (mb % 1024 == 0 && mb > 0)
        .then(|| u32::try_from(mb / 1024).ok())
        .flatten()
}

fn read_vm(ctx: &mut Ctx<'_>, t: &Tbl<'_>, groups: &[String]) -> Vm {
    const KEYS: &[&str] = &[
        "size",
        "memory",
        "memory_mb",
        "cpus",
        "cpu_kind",
        "processes",
    ];
    t.check_keys(
        ctx,
        KEYS,
        &[
            "gpu_kind",
            "gpus",
            "kernel_args",
            "host_dedication_id",
            "persist_rootfs",
        ],
    );
    let size = t.str(ctx, "size");
    if let Some(name) = &size {
        if preset_named(name).is_none() {
            let span = t.get("size").map_or_else(|| t.start(), |(_, s)| s);
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            let message = format!(
                "unknown size {name:?}; expected one of {}",
                names.join(", ")
            );
            ctx.error(&span, t.label("size"), message);
        }
    }
    let memory = t.get("memory").and_then(|(item, span)| {
        let mb = match (item.as_integer(), item.as_str()) {
            (Some(n), _) => u32::try_from(n).ok(),
            (_, Some(s)) => parse_size_mb(s).and_then(|mb| u32::try_from(mb).ok()),
            _ => None,
        }
        .filter(|mb| *mb > 0);
        if mb.is_none() {
            let message = format!(
                "expected a size such as \"512mb\" or \"1gb\", or a number of MB, found {}",
                describe(item)
            );
            ctx.error(&span, t.label("memory"), message);
        }
        mb
    });
    let memory_mb = t
        .int(ctx, "memory_mb", 1..=i64::from(u32::MAX))
        .map(|n| n as u32);
    if memory.is_some() && memory_mb.is_some() {
        let span = t.get("memory_mb").map_or_else(|| t.start(), |(_, s)| s);
        let message = "set either memory or memory_mb, not both".to_owned();
        ctx.error(&span, t.label("memory_mb"), message);
    }
    let cpu_kind = match t
        .word(ctx, "cpu_kind", &["shared", "performance"])
        .as_deref()
    {
        Some("shared") => Some(CpuKind::Shared),
        Some(_) => Some(CpuKind::Performance),
        None => None,
    };
    Vm {
        size,
        memory_mb: memory.or(memory_mb),
        cpus: t.int(ctx, "cpus", 1..=64).map(|n| n as u32),
        cpu_kind,
        processes: check_processes(ctx, t, groups),
    }
}

fn read_restart(ctx: &mut Ctx<'_>, t: &Tbl<'_>, groups: &[String]) -> Restart {
    t.check_keys(ctx, &["policy", "retries", "processes"], &[]);
    let policy = match t
        .word(ctx, "policy", &["always", "never", "on-failure"])
        .as_deref()
    {
        Some("always") => RestartPolicy::Always,
        Some("never") => RestartPolicy::Never,
        _ => RestartPolicy::OnFailure,
    };
    Restart {
        policy,
        retries: t.u32(ctx, "retries"),
        processes: check_processes(ctx, t, groups),
    }
}

fn read_metrics(ctx: &mut Ctx<'_>, t: &Tbl<'_>, groups: &[String]) -> Option<Metrics> {
    t.check_keys(ctx, &["port", "path", "processes"], &["https"]);
    let port = t.port(ctx, "port");
    if t.get("port").is_none() {
        t.missing(ctx, "port");
    }
    Some(Metrics {
        port: port?,
        path: t.str(ctx, "path").unwrap_or_else(|| "/metrics".to_owned()),
        processes: check_processes(ctx, t, groups),
    })
}

fn read_static(ctx: &mut Ctx<'_>, t: &Tbl<'_>) -> Static {
    t.check_keys(
        ctx,
        &["guest_path", "url_prefix"],
        &["tigris_bucket", "index_document"],
    );
    Static {
        guest_path: t.str(ctx, "guest_path"),
        url_prefix: t.str(ctx, "url_prefix"),
    }
}
