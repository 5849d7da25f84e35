//! Maps an [`AppConfig`] to one Machines API [`MachineConfig`] per process group, as flyctl does.
//!
//! Sections with no `processes` apply to the default group only (`app` if it exists, otherwise
//! the first group by name); `[[vm]]` and `[[restart]]` entries without `processes` apply to
//! every group that has no more specific entry.

use std::collections::BTreeMap;

use aloft_api::{
    MachineCheck, MachineConfig, MachineGuest, MachineInit, MachinePort, MachineRestart,
    MachineService, MachineServiceConcurrency, StopConfig,
};
use serde_json::{json, Value};

use crate::model::{
    AppConfig, AutoStop, Check, CheckKind, Concurrency, ConcurrencyKind, HttpOptions, HttpService,
    Port, RestartPolicy, Service, TlsOptions, DEFAULT_PROCESS_GROUP,
};
use crate::units::{format_duration, preset_named, DEFAULT_SIZE, PRESETS};

/// The platform version written to `metadata.fly_platform_version`.
pub const PLATFORM_VERSION: &str = "v2";

impl AppConfig {
    /// The process groups, sorted; `["app"]` when `[processes]` is absent.
    pub fn process_groups(&self) -> Vec<String> {
        if self.processes.is_empty() {
            vec![DEFAULT_PROCESS_GROUP.to_owned()]
        } else {
            self.processes.keys().cloned().collect()
        }
    }

    /// The group that sections without `processes` belong to.
    pub fn default_process_group(&self) -> String {
        let groups = self.process_groups();
        if groups.iter().any(|g| g == DEFAULT_PROCESS_GROUP) {
            DEFAULT_PROCESS_GROUP.to_owned()
        } else {
            groups[0].clone()
        }
    }

    fn targets(&self, processes: &[String], group: &str) -> bool {
        if processes.is_empty() {
            group == self.default_process_group()
        } else {
            processes.iter().any(|p| p == group)
        }
    }

    /// CPU kind, CPU count and memory of the machines of `group`.
    pub fn guest_for(&self, group: &str) -> MachineGuest {
        let vm = most_specific(&self.vm, |v| &v.processes, group);
        let size = vm.and_then(|v| v.size.as_deref()).unwrap_or(DEFAULT_SIZE);
        // Sizes are validated while parsing; the first preset is shared-cpu-1x.
        let preset = preset_named(size).unwrap_or(PRESETS[0]);
        MachineGuest {
            cpu_kind: vm
                .and_then(|v| v.cpu_kind)
                .map_or(preset.cpu_kind, |k| k.as_str())
                .to_owned(),
            cpus: i64::from(vm.and_then(|v| v.cpus).unwrap_or(preset.cpus)),
            memory_mb: i64::from(vm.and_then(|v| v.memory_mb).unwrap_or(preset.memory_mb)),
            extra: Default::default(),
        }
    }

    /// The command of `group` split into words, if `[processes]` gives one.
    pub fn command_for(&self, group: &str) -> Option<Vec<String>> {
        let command = self.processes.get(group)?;
        shlex::split(command).filter(|words| !words.is_empty())
    }

    /// One machine config per process group, with `image` as the image reference.
    pub fn machine_configs(&self, image: &str) -> BTreeMap<String, MachineConfig> {
        self.process_groups()
            .into_iter()
            .map(|group| {
                let config = self.machine_config(image, &group);
                (group, config)
            })
            .collect()
    }

    fn machine_config(&self, image: &str, group: &str) -> MachineConfig {
        let mut env = self.env.clone();
        if let Some(region) = &self.primary_region {
            env.entry("PRIMARY_REGION".to_owned())
                .or_insert_with(|| region.clone());
        }
        let nonempty = |words: &Vec<String>| (!words.is_empty()).then(|| words.clone());
        let init = MachineInit {
            cmd: self
                .command_for(group)
                .or_else(|| nonempty(&self.experimental.cmd)),
            entrypoint: nonempty(&self.experimental.entrypoint),
            exec: nonempty(&self.experimental.exec),
            swap_size_mb: self.swap_size_mb.map(i64::from),
            ..MachineInit::default()
        };
        let mut services = Vec::new();
        if let Some(http) = &self.http_service {
            if self.targets(&http.processes, group) {
                services.push(http_service(http));
            }
        }
        for service in &self.services {
            if self.targets(&service.processes, group) {
                services.push(explicit_service(service));
            }
        }
        let checks: BTreeMap<String, MachineCheck> = self
            .checks
            .iter()
            .filter(|(_, c)| self.targets(&c.processes, group))
            .map(|(name, c)| (name.clone(), check(c, c.port)))
            .collect();
        let mounts: Vec<Value> = self
            .mounts
            .iter()
            .filter(|m| self.targets(&m.processes, group))
            .map(|m| {
                let mut mount = json!({
                    "name": m.source,
                    "path": m.destination,
                    "snapshot_retention": m.snapshot_retention,
                });
                if let Some(size) = m.initial_size_gb {
                    mount["size_gb"] = json!(size);
                }
                mount
            })
            .collect();
        let restart =
            most_specific(&self.restart, |r| &r.processes, group).map(|r| MachineRestart {
                policy: Some(
                    match r.policy {
                        RestartPolicy::Always => "always",
                        RestartPolicy::Never => "no",
                        RestartPolicy::OnFailure => "on-failure",
                    }
                    .to_owned(),
                ),
                max_retries: r.retries.map(i64::from),
                extra: Default::default(),
            });
        let mut metadata = BTreeMap::new();
        metadata.insert("fly_process_group".to_owned(), group.to_owned());
        metadata.insert(
            "fly_platform_version".to_owned(),
            PLATFORM_VERSION.to_owned(),
        );
        let mut extra = aloft_api::Extra::new();
        if let Some(metrics) = self
            .metrics
            .iter()
            .find(|m| self.targets(&m.processes, group))
        {
            extra.insert(
                "metrics".to_owned(),
                json!({"port": metrics.port, "path": metrics.path}),
            );
        }
        MachineConfig {
            image: image.to_owned(),
            env: (!env.is_empty()).then_some(env),
            init: (init != MachineInit::default()).then_some(init),
            guest: Some(self.guest_for(group)),
            services: (!services.is_empty()).then_some(services),
            checks: (!checks.is_empty()).then_some(checks),
            restart,
            metadata: Some(metadata),
            mounts: (!mounts.is_empty()).then_some(mounts),
            stop_config: Some(StopConfig {
                timeout: Some(Value::String(format_duration(self.kill_timeout))),
                signal: Some(self.kill_signal.clone()),
                extra: Default::default(),
            }),
            extra,
            ..MachineConfig::default()
        }
    }
}

/// The entry naming `group`, else the last entry without `processes`.
fn most_specific<'a, T>(
    entries: &'a [T],
    processes: impl Fn(&T) -> &Vec<String>,
    group: &str,
) -> Option<&'a T> {
    entries
        .iter()
        .rev()
        .find(|e| processes(e).iter().any(|p| p == group))
        .or_else(|| entries.iter().rev().find(|e| processes(e).is_empty()))
}

fn autostop(a: Option<AutoStop>) -> Option<Value> {
    a.map(|a| match a {
        AutoStop::Off => Value::Bool(false),
        AutoStop::Stop => Value::Bool(true),
        AutoStop::Suspend => Value::String("suspend".to_owned()),
    })
}

fn concurrency(c: &Concurrency) -> MachineServiceConcurrency {
    MachineServiceConcurrency {
        kind: Some(
            match c.kind {
                ConcurrencyKind::Connections => "connections",
                ConcurrencyKind::Requests => "requests",
            }
            .to_owned(),
        ),
        soft_limit: Some(i64::from(c.soft_limit)),
        hard_limit: c.hard_limit.map(i64::from),
        extra: Default::default(),
    }
}

fn http_options_json(o: &HttpOptions) -> Value {
    let mut v = json!({});
    if let Some(h2) = o.h2_backend {
        v["h2_backend"] = json!(h2);
    }
    if let Some(idle) = o.idle_timeout {
        v["idle_timeout"] = json!(idle);
    }
    let mut response = json!({});
    if let Some(pristine) = o.response.pristine {
        response["pristine"] = json!(pristine);
    }
    if !o.response.headers.is_empty() {
        response["headers"] = json!(o.response.headers);
    }
    if response != json!({}) {
        v["response"] = response;
    }
    v
}

fn tls_options_json(o: &TlsOptions) -> Value {
    let mut v = json!({});
    if !o.alpn.is_empty() {
        v["alpn"] = json!(o.alpn);
    }
    if !o.versions.is_empty() {
        v["versions"] = json!(o.versions);
    }
    v
}

fn port(p: &Port) -> MachinePort {
    let mut extra = aloft_api::Extra::new();
    if let Some(o) = &p.http_options {
        extra.insert("http_options".to_owned(), http_options_json(o));
    }
    if let Some(o) = &p.tls_options {
        extra.insert("tls_options".to_owned(), tls_options_json(o));
    }
    if let Some(o) = &p.proxy_proto_options {
        extra.insert(
            "proxy_proto_options".to_owned(),
            json!({"version": o.version}),
        );
    }
    MachinePort {
        port: p.port.map(i64::from),
        start_port: p.start_port.map(i64::from),
        end_port: p.end_port.map(i64::from),
        handlers: Some(p.handlers.iter().map(|h| h.as_str().to_owned()).collect()),
        force_https: p.force_https.then_some(true),
        extra,
    }
}

fn check(c: &Check, port: Option<u16>) -> MachineCheck {
    let duration = |d: Option<std::time::Duration>| d.map(|d| Value::String(format_duration(d)));
    let mut extra = aloft_api::Extra::new();
    if let Some(protocol) = &c.protocol {
        extra.insert("protocol".to_owned(), json!(protocol));
    }
    if let Some(skip) = c.tls_skip_verify {
        extra.insert("tls_skip_verify".to_owned(), json!(skip));
    }
    let headers = (!c.headers.is_empty()).then(|| {
        Value::Array(
            c.headers
                .iter()
                .map(|(name, value)| json!({"name": name, "values": [value]}))
                .collect(),
        )
    });
    MachineCheck {
        kind: Some(
            match c.kind {
                CheckKind::Http => "http",
                CheckKind::Tcp => "tcp",
            }
            .to_owned(),
        ),
        port: port.map(i64::from),
        interval: duration(c.interval),
        timeout: duration(c.timeout),
        grace_period: duration(c.grace_period),
        method: c.method.clone(),
        path: c.path.clone(),
        headers,
        extra,
    }
}

fn http_service(s: &HttpService) -> MachineService {
    let http = Port {
        port: Some(80),
        handlers: vec![crate::model::Handler::Http],
        force_https: s.force_https,
        http_options: s.http_options.clone(),
        proxy_proto_options: s.proxy_proto_options.clone(),
        ..Port::default()
    };
    let https = Port {
        port: Some(443),
        handlers: vec![crate::model::Handler::Tls, crate::model::Handler::Http],
        http_options: s.http_options.clone(),
        tls_options: s.tls_options.clone(),
        proxy_proto_options: s.proxy_proto_options.clone(),
        ..Port::default()
    };
    let checks: Vec<MachineCheck> = s.checks.iter().map(|c| check(c, None)).collect();
    MachineService {
        protocol: Some("tcp".to_owned()),
        internal_port: i64::from(s.internal_port),
        autostop: autostop(s.auto_stop_machines),
        autostart: Some(s.auto_start_machines),
        min_machines_running: Some(i64::from(s.min_machines_running)),
        ports: Some(vec![port(&http), port(&https)]),
        concurrency: Some(concurrency(&s.concurrency)),
        checks: (!checks.is_empty()).then_some(checks),
        extra: Default::default(),
    }
}

fn explicit_service(s: &Service) -> MachineService {
    let checks: Vec<MachineCheck> = s
        .tcp_checks
        .iter()
        .chain(&s.http_checks)
        .map(|c| check(c, None))
        .collect();
    MachineService {
        protocol: Some(s.protocol.as_str().to_owned()),
        internal_port: i64::from(s.internal_port),
        autostop: autostop(s.auto_stop_machines),
        autostart: Some(s.auto_start_machines),
        min_machines_running: Some(i64::from(s.min_machines_running)),
        ports: Some(s.ports.iter().map(port).collect()),
        concurrency: Some(concurrency(&s.concurrency)),
        checks: (!checks.is_empty()).then_some(checks),
        extra: Default::default(),
    }
}
