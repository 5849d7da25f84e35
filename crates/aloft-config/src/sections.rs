//! Readers for the sections that describe services: `[http_service]`, `[[services]]` and their
//! ports, concurrency, options and checks.

use std::collections::BTreeMap;

use crate::model::DEFAULT_PROCESS_GROUP;
use crate::model::{
    AutoStop, Check, CheckKind, Concurrency, ConcurrencyKind, Handler, HttpOptions,
    HttpResponseOptions, HttpService, Port, Protocol, ProxyProtoOptions, ResponseHeader, Service,
    TlsOptions,
};
use crate::reader::{describe, Ctx, Tbl};

/// Checks that every name in `processes` is a group of `[processes]` (when that table is present).
pub(crate) fn check_processes(ctx: &mut Ctx<'_>, t: &Tbl<'_>, groups: &[String]) -> Vec<String> {
    let processes = t.strings(ctx, "processes").unwrap_or_default();
    if groups.is_empty() {
        // Without [processes] the only group is `app`; other names select no machines.
        for name in processes.iter().filter(|p| *p != DEFAULT_PROCESS_GROUP) {
            let span = t.get("processes").map_or_else(|| t.start(), |(_, s)| s);
            let message = format!(
                "{} names process group '{name}', but without [processes] the only group is 'app'",
                t.label("processes")
            );
            ctx.warn(&span, message);
        }
        return processes;
    }
    for name in &processes {
        if !groups.contains(name) {
            let span = t.get("processes").map_or_else(|| t.start(), |(_, s)| s);
            let known = groups.join(", ");
            let message = format!("process group '{name}' is not defined in [processes] ({known})");
            ctx.error(&span, t.label("processes"), message);
        }
    }
    processes
}

/// The group that sections without `processes` belong to: `app` if it exists, else the first.
pub(crate) fn default_group(groups: &[String]) -> String {
    if groups.is_empty() || groups.iter().any(|g| g == DEFAULT_PROCESS_GROUP) {
        DEFAULT_PROCESS_GROUP.to_owned()
    } else {
        groups[0].clone()
    }
}

fn targets(processes: &[String], groups: &[String]) -> Vec<String> {
    if processes.is_empty() {
        vec![default_group(groups)]
    } else {
        processes.to_vec()
    }
}

/// Public ports already served, so two services of one process group cannot share a port.
#[derive(Default)]
pub(crate) struct PortClaims {
    claims: Vec<Claim>,
}

struct Claim {
    group: String,
    protocol: Protocol,
    ports: (u16, u16),
    owner: String,
}

impl PortClaims {
    fn claim(
        &mut self,
        ctx: &mut Ctx<'_>,
        t: &Tbl<'_>,
        owner: &str,
        groups: &[String],
        protocol: Protocol,
        (start, end): (u16, u16),
    ) {
        for group in groups {
            let taken = self.claims.iter().find(|c| {
                &c.group == group
                    && c.protocol == protocol
                    && start <= c.ports.1
                    && c.ports.0 <= end
            });
            match taken {
                Some(c) => {
                    let port = start.max(c.ports.0);
                    let message = format!(
                        "port {port} is already served by {} for process group '{group}'",
                        c.owner
                    );
                    ctx.error(&t.start(), format!("[{}]", t.path), message);
                }
                None => self.claims.push(Claim {
                    group: group.clone(),
                    protocol,
                    ports: (start, end),
                    owner: owner.to_owned(),
                }),
            }
        }
    }
}

/// `auto_stop_machines`: `"off"`, `"stop"`, `"suspend"`, or a boolean.
fn auto_stop(ctx: &mut Ctx<'_>, t: &Tbl<'_>) -> Option<AutoStop> {
    let (item, span) = t.get("auto_stop_machines")?;
    let parsed = match (item.as_bool(), item.as_str()) {
        (Some(true), _) | (_, Some("stop")) => Some(AutoStop::Stop),
        (Some(false), _) | (_, Some("off")) => Some(AutoStop::Off),
        (_, Some("suspend")) => Some(AutoStop::Suspend),
        _ => None,
    };
    if parsed.is_none() {
        let message = format!(
            "expected \"off\", \"stop\", \"suspend\", true or false, found {}",
            describe(item)
        );
        ctx.error(&span, t.label("auto_stop_machines"), message);
    }
    parsed
}

pub(crate) fn concurrency(ctx: &mut Ctx<'_>, parent: &Tbl<'_>) -> Concurrency {
    let mut c = Concurrency::default();
    // Old fly.toml files write `concurrency = "20,25"` (soft,hard; counted in requests).
    if let Some((item, span)) = parent.get("concurrency") {
        if let Some(text) = item.as_str() {
            let limits = text.split_once(',').and_then(|(soft, hard)| {
                Some((soft.trim().parse().ok()?, hard.trim().parse().ok()?))
            });
            match limits {
                Some((soft, hard)) if soft <= hard && soft > 0 => {
                    c.kind = ConcurrencyKind::Requests;
                    c.soft_limit = soft;
                    c.hard_limit = Some(hard);
                }
                _ => {
                    let message = format!(
                        "expected a table or \"soft,hard\" limits, found {}",
                        describe(item)
                    );
                    ctx.error(&span, parent.label("concurrency"), message);
                }
            }
            return c;
        }
    }
    let Some(t) = parent.table_at(ctx, "concurrency") else {
        return c;
    };
    t.check_keys(ctx, &["type", "soft_limit", "hard_limit"], &[]);
    if let Some(kind) = t.word(ctx, "type", &["connections", "requests"]) {
        c.kind = if kind == "requests" {
            ConcurrencyKind::Requests
        } else {
            ConcurrencyKind::Connections
        };
    }
    if let Some(soft) = t.int(ctx, "soft_limit", 1..=i64::from(u32::MAX)) {
        c.soft_limit = soft as u32;
    }
    c.hard_limit = t
        .int(ctx, "hard_limit", 1..=i64::from(u32::MAX))
        .map(|n| n as u32);
    if let Some(hard) = c.hard_limit {
        if c.soft_limit > hard {
            let span = t.get("soft_limit").map_or_else(|| t.start(), |(_, s)| s);
            let message = format!(
                "soft_limit ({}) must not be greater than hard_limit ({hard})",
                c.soft_limit
            );
            ctx.error(&span, t.label("soft_limit"), message);
        }
    }
    c
}

fn http_options(ctx: &mut Ctx<'_>, parent: &Tbl<'_>) -> Option<HttpOptions> {
    let t = parent.table_at(ctx, "http_options")?;
    t.check_keys(
        ctx,
        &["h2_backend", "idle_timeout", "response"],
        &["compress"],
    );
    let mut options = HttpOptions {
        h2_backend: t.bool(ctx, "h2_backend"),
        idle_timeout: t.int(ctx, "idle_timeout", 1..=86_400).map(|n| n as u32),
        response: HttpResponseOptions::default(),
    };
    if let Some(response) = t.table_at(ctx, "response") {
        response.check_keys(ctx, &["pristine", "headers"], &[]);
        options.response.pristine = response.bool(ctx, "pristine");
        if let Some(headers) = response.table_at(ctx, "headers") {
            options.response.headers = response_headers(ctx, &headers);
        }
    }
    Some(options)
}

fn response_headers(ctx: &mut Ctx<'_>, t: &Tbl<'_>) -> BTreeMap<String, ResponseHeader> {
    let mut headers = BTreeMap::new();
    for (name, item) in t.table.iter() {
        let rule = if item.as_bool() == Some(false) {
            Some(ResponseHeader::Remove)
        } else if let Some(value) = item.as_str() {
            Some(ResponseHeader::Set(vec![value.to_owned()]))
        } else if let Some(values) = item.as_array().and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        }) {
            Some(ResponseHeader::Set(values))
        } else {
            let span = item.span().unwrap_or_else(|| t.key_span(name));
            let message = format!(
                "expected a string, an array of strings or false, found {}",
                describe(item)
            );
            ctx.error(&span, t.label(name), message);
            None
        };
        if let Some(rule) = rule {
            headers.insert(name.to_owned(), rule);
        }
    }
    headers
}

fn proxy_proto_options(ctx: &mut Ctx<'_>, parent: &Tbl<'_>) -> Option<ProxyProtoOptions> {
    let options = parent.table_at(ctx, "proxy_proto_options")?;
    options.check_keys(ctx, &["version"], &[]);
    let version = options
        .word(ctx, "version", &["v1", "v2"])
        .unwrap_or_else(|| "v1".to_owned());
    Some(ProxyProtoOptions { version })
}

fn tls_options(ctx: &mut Ctx<'_>, parent: &Tbl<'_>) -> Option<TlsOptions> {
    let t = parent.table_at(ctx, "tls_options")?;
    t.check_keys(ctx, &["alpn", "versions"], &["default_self_signed"]);
    let versions = t.strings(ctx, "versions").unwrap_or_default();
    for v in &versions {
        if v != "TLSv1.2" && v != "TLSv1.3" {
            let span = t.get("versions").map_or_else(|| t.start(), |(_, s)| s);
            let message = format!("expected \"TLSv1.2\" or \"TLSv1.3\", found {v:?}");
            ctx.error(&span, t.label("versions"), message);
        }
    }
    Some(TlsOptions {
        alpn: t.strings(ctx, "alpn").unwrap_or_default(),
        versions,
    })
}

/// A health check; `kind` is fixed for service checks and read from `type` for top-level ones.
pub(crate) fn check(ctx: &mut Ctx<'_>, t: &Tbl<'_>, kind: Option<CheckKind>) -> Check {
    const SERVICE_KEYS: &[&str] = &[
        "type",
        "grace_period",
        "interval",
        "timeout",
        "method",
        "path",
        "protocol",
        "headers",
        "tls_skip_verify",
        "tls_server_name",
    ];
    const TOP_KEYS: &[&str] = &[
        "type",
        "port",
        "grace_period",
        "interval",
        "timeout",
        "method",
        "path",
        "protocol",
        "headers",
        "tls_skip_verify",
        "tls_server_name",
        "processes",
    ];
    let kind = match kind {
        Some(kind) => {
            t.check_keys(ctx, SERVICE_KEYS, &["restart_limit"]);
            // `type` is optional here (the section decides it) but must agree when written.
            let written = match kind {
                CheckKind::Http => "http",
                CheckKind::Tcp => "tcp",
            };
            t.word(ctx, "type", &[written]);
            kind
        }
        None => {
            t.check_keys(ctx, TOP_KEYS, &[]);
            match t.word(ctx, "type", &["http", "tcp"]).as_deref() {
                Some("tcp") => CheckKind::Tcp,
                Some(_) => CheckKind::Http,
                None => {
                    if t.get("type").is_none() {
                        t.missing(ctx, "type");
                    }
                    CheckKind::Http
                }
            }
        }
    };
    let mut c = Check::new(kind);
    c.port = t.port(ctx, "port");
    c.grace_period = t.check_duration(ctx, "grace_period");
    c.interval = t.check_duration(ctx, "interval");
    c.timeout = t.check_duration(ctx, "timeout");
    c.method = t.str(ctx, "method");
    c.path = t.str(ctx, "path");
    c.protocol = t.word(ctx, "protocol", &["http", "https"]);
    c.tls_skip_verify = t.bool(ctx, "tls_skip_verify");
    c.headers = t.string_map(ctx, "headers").unwrap_or_default();
    if let Some(path) = &c.path {
        if !path.starts_with('/') {
            let span = t.get("path").map_or_else(|| t.start(), |(_, s)| s);
            ctx.error(
                &span,
                t.label("path"),
                format!("expected a path starting with '/', found {path:?}"),
            );
        }
    }
    c
}

const HTTP_SERVICE_KEYS: &[&str] = &[
    "internal_port",
    "force_https",
    "auto_stop_machines",
    "auto_start_machines",
    "min_machines_running",
    "processes",
    "concurrency",
    "http_options",
    "tls_options",
    "proxy_proto_options",
    "checks",
];

pub(crate) fn http_service(
    ctx: &mut Ctx<'_>,
    t: &Tbl<'_>,
    groups: &[String],
    claims: &mut PortClaims,
) -> HttpService {
    t.check_keys(ctx, HTTP_SERVICE_KEYS, &["machine_checks"]);
    let mut s = HttpService::new(t.port(ctx, "internal_port").unwrap_or(8080));
    s.force_https = t.bool(ctx, "force_https").unwrap_or(false);
    s.auto_stop_machines = auto_stop(ctx, t);
    s.auto_start_machines = t.bool(ctx, "auto_start_machines").unwrap_or(true);
    s.min_machines_running = t.u32(ctx, "min_machines_running").unwrap_or(0);
    s.processes = check_processes(ctx, t, groups);
    s.concurrency = concurrency(ctx, t);
    s.http_options = http_options(ctx, t);
    s.tls_options = tls_options(ctx, t);
    s.proxy_proto_options = proxy_proto_options(ctx, t);
    let served_by = targets(&s.processes, groups);
    for port in [80, 443] {
        claims.claim(
            ctx,
            t,
            "[http_service]",
            &served_by,
            Protocol::Tcp,
            (port, port),
        );
    }
    s.checks = t
        .tables_at(ctx, "checks")
        .iter()
        .map(|c| check(ctx, c, Some(CheckKind::Http)))
        .collect();
    s
}

const SERVICE_KEYS: &[&str] = &[
    "internal_port",
    "protocol",
    "auto_stop_machines",
    "auto_start_machines",
    "min_machines_running",
    "processes",
    "ports",
    "concurrency",
    "tcp_checks",
    "http_checks",
];

pub(crate) fn service(
    ctx: &mut Ctx<'_>,
    t: &Tbl<'_>,
    groups: &[String],
    claims: &mut PortClaims,
) -> Service {
    t.check_keys(ctx, SERVICE_KEYS, &["script_checks", "machine_checks"]);
    let protocol = match t.word(ctx, "protocol", &["tcp", "udp"]).as_deref() {
        Some("udp") => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    let internal_port = t.port(ctx, "internal_port").unwrap_or(8080);
    let processes = check_processes(ctx, t, groups);
    let served_by = targets(&processes, groups);
    let owner = format!("the [[services]] entry for internal port {internal_port}");
    let mut ports = Vec::new();
    for table in t.tables_at(ctx, "ports") {
        let p = port(ctx, &table);
        let range = match (p.port, p.start_port, p.end_port) {
            (Some(n), None, None) => Some((n, n)),
            (None, Some(start), Some(end)) if start <= end => Some((start, end)),
            _ => None,
        };
        if let Some(range) = range {
            claims.claim(ctx, &table, &owner, &served_by, protocol, range);
        }
        ports.push(p);
    }
    Service {
        internal_port,
        protocol,
        auto_stop_machines: auto_stop(ctx, t),
        auto_start_machines: t.bool(ctx, "auto_start_machines").unwrap_or(true),
        min_machines_running: t.u32(ctx, "min_machines_running").unwrap_or(0),
        processes,
        ports,
        concurrency: concurrency(ctx, t),
        tcp_checks: t
            .tables_at(ctx, "tcp_checks")
            .iter()
            .map(|c| check(ctx, c, Some(CheckKind::Tcp)))
            .collect(),
        http_checks: t
            .tables_at(ctx, "http_checks")
            .iter()
            .map(|c| check(ctx, c, Some(CheckKind::Http)))
            .collect(),
    }
}

fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "http" => Handler::Http,
        "tls" => Handler::Tls,
        "pg_tls" => Handler::PgTls,
        "proxy_proto" => Handler::ProxyProto,
        _ => return None,
    })
}

fn port(ctx: &mut Ctx<'_>, t: &Tbl<'_>) -> Port {
    const KEYS: &[&str] = &[
        "port",
        "start_port",
        "end_port",
        "handlers",
        "force_https",
        "proxy_proto_options",
        "http_options",
        "tls_options",
    ];
    t.check_keys(ctx, KEYS, &[]);
    let mut p = Port {
        port: t.port(ctx, "port"),
        start_port: t.port(ctx, "start_port"),
        end_port: t.port(ctx, "end_port"),
        force_https: t.bool(ctx, "force_https").unwrap_or(false),
        http_options: http_options(ctx, t),
        tls_options: tls_options(ctx, t),
        ..Port::default()
    };
    for name in t.strings(ctx, "handlers").unwrap_or_default() {
        match handler(&name) {
            Some(h) => p.handlers.push(h),
            None => {
                let span = t.get("handlers").map_or_else(|| t.start(), |(_, s)| s);
                let message = format!(
                    "expected handlers from \"http\", \"tls\", \"pg_tls\", \"proxy_proto\", found {name:?}"
                );
                ctx.error(&span, t.label("handlers"), message);
            }
        }
    }
    p.proxy_proto_options = proxy_proto_options(ctx, t);
    let has_range = t.get("start_port").is_some() || t.get("end_port").is_some();
    let has_port = t.get("port").is_some();
    let range_error = match (has_port, has_range) {
        (true, true) => Some("set either port or start_port/end_port, not both"),
        (false, false) => Some("missing required key 'port' (or 'start_port' and 'end_port')"),
        (false, true) if t.get("start_port").is_none() || t.get("end_port").is_none() => {
            Some("a port range needs both start_port and end_port")
        }
        _ => None,
    };
    if let Some(message) = range_error {
        ctx.error(&t.start(), format!("[{}]", t.path), message.to_owned());
    }
    if let (Some(start), Some(end)) = (p.start_port, p.end_port) {
        if start > end {
            let span = t.get("end_port").map_or_else(|| t.start(), |(_, s)| s);
            let message = format!("end_port ({end}) must not be less than start_port ({start})");
            ctx.error(&span, t.label("end_port"), message);
        }
    }
    p
}
