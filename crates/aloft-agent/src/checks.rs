//! Health checks of a running machine: the config's named `checks` and each service's
//! `checks`, run from the host against the machine's private address.
//!
//! A task per running machine instance runs every check on its interval and publishes the
//! latest results; the machine's supervisor reports them to the control plane when they
//! change. Checks never restart or stop a machine: as on Fly, a failing machine only stops
//! getting traffic.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use aloft_api::{parse_fly_duration, MachineCheck, MachineConfig, ReportedCheck};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::LocalMachine;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest interval a check runs at.
const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Why a check config cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("Check {name} has no port")]
    NoPort { name: String },
    #[error("Check {name} has unknown type {kind:?} (use tcp or http)")]
    UnknownType { name: String, kind: String },
}

/// One check, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub http: Option<HttpCheck>,
    pub port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// The checks of a config: named ones as named, service checks as `servicecheck-<i>-<j>`
/// (`<j>`-th check of the `<i>`-th service, whose `internal_port` is the default port).
pub fn checks_of(config: &MachineConfig) -> Result<Vec<Check>, CheckError> {
    let mut out = Vec::new();
    for (name, c) in config.checks.iter().flatten() {
        out.push(build(name.clone(), c, None)?);
    }
    for (i, service) in config.services.iter().flatten().enumerate() {
        for (j, c) in service.checks.iter().flatten().enumerate() {
            let name = format!("servicecheck-{i:02}-{}", c.kind.as_deref().unwrap_or("tcp"));
            let name = if j == 0 { name } else { format!("{name}-{j}") };
            out.push(build(name, c, Some(service.internal_port))?);
        }
    }
    Ok(out)
}

fn build(name: String, c: &MachineCheck, default_port: Option<i64>) -> Result<Check, CheckError> {
    let port = c
        .port
        .or(default_port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| CheckError::NoPort { name: name.clone() })?;
    let http = match c.kind.as_deref().unwrap_or("tcp") {
        "tcp" => None,
        "http" => Some(HttpCheck {
            method: c
                .method
                .clone()
                .unwrap_or_else(|| "GET".into())
                .to_uppercase(),
            path: c.path.clone().unwrap_or_else(|| "/".into()),
            headers: headers(c.headers.as_ref()),
        }),
        other => {
            return Err(CheckError::UnknownType {
                name,
                kind: other.to_owned(),
            })
        }
    };
    let dur = |v: Option<&serde_json::Value>, default: Duration| {
        v.and_then(parse_fly_duration).unwrap_or(default)
    };
    Ok(Check {
        name,
        http,
        port,
        interval: dur(c.interval.as_ref(), DEFAULT_INTERVAL).max(MIN_INTERVAL),
        timeout: dur(c.timeout.as_ref(), DEFAULT_TIMEOUT),
        grace_period: dur(c.grace_period.as_ref(), Duration::ZERO),
    })
}

/// Headers as `{"name": "value"}` or Fly's `{"name": ["value", ...]}`.
fn headers(v: Option<&serde_json::Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(map) = v.and_then(|v| v.as_object()) {
        for (k, v) in map {
            match v {
                serde_json::Value::String(s) => out.push((k.clone(), s.clone())),
                serde_json::Value::Array(items) => out.extend(
                    items
                        .iter()
                        .filter_map(|i| i.as_str())
                        .map(|s| (k.clone(), s.to_owned())),
                ),
                _ => {}
            }
        }
    }
    out
}

/// Runs one check once: `Ok(output)` when passing, `Err(output)` when critical.
pub async fn run_check(check: &Check, ip: IpAddr) -> Result<String, String> {
    let addr = SocketAddr::new(ip, check.port);
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr} failed: {e}"))?;
        let Some(http) = &check.http else {
            return Ok(format!("TCP connect to {addr} succeeded"));
        };
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: aloft-checks\r\nConnection: close\r\n",
            http.method, http.path
        );
        for (k, v) in &http.headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request to {addr} failed: {e}"))?;
        let mut head = vec![0u8; 256];
        let n = stream
            .read(&mut head)
            .await
            .map_err(|e| format!("reading the answer from {addr} failed: {e}"))?;
        let first = String::from_utf8_lossy(&head[..n]);
        let status_line = first.lines().next().unwrap_or("").trim().to_owned();
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status line from {addr}"))?;
        if (200..400).contains(&code) {
            Ok(format!("{} {}: {status_line}", http.method, http.path))
        } else {
            Err(format!("{} {}: {status_line}", http.method, http.path))
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", check.timeout)),
    }
}

/// The checks of one running machine instance: the task and its latest results.
#[derive(Debug, Default)]
pub struct MachineChecks {
    running: Option<Running>,
    /// The results the control plane accepted last.
    reported: Option<Vec<ReportedCheck>>,
}

#[derive(Debug)]
struct Running {
    key: (String, String),
    task: JoinHandle<()>,
    results: watch::Receiver<BTreeMap<String, ReportedCheck>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MachineChecks {
    /// Makes sure checks run for the machine's current instance and address.
    pub fn ensure(&mut self, m: &LocalMachine) {
        let ip = m
            .ipv4
            .as_deref()
            .or(m.ipv6.as_deref())
            .and_then(|s| s.parse::<IpAddr>().ok());
        let Some(ip) = ip else {
            return;
        };
        let key = (m.assignment.instance_id.clone(), ip.to_string());
        if self.running.as_ref().is_some_and(|r| r.key == key) {
            return;
        }
        // A new instance (an update, a restart) starts with no results on the control plane,
        // which clears them: report the first results again even if they match the old ones.
        self.running = None;
        self.reported = None;
        let checks = match checks_of(&m.assignment.config) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "health checks not run");
                return;
            }
        };
        if checks.is_empty() {
            return;
        }
        let (tx, rx) = watch::channel(BTreeMap::new());
        let task = tokio::spawn(run_all(checks, ip, tx));
        self.running = Some(Running {
            key,
            task,
            results: rx,
        });
    }

    /// Stops the checks (the machine is not running).
    pub fn stop(&mut self) {
        self.running = None;
        self.reported = None;
    }

    /// The latest results when they differ from what was reported.
    pub fn changed(&self) -> Option<Vec<ReportedCheck>> {
        let latest: Vec<ReportedCheck> = self
            .running
            .as_ref()?
            .results
            .borrow()
            .values()
            .cloned()
            .collect();
        if latest.is_empty() || self.reported.as_ref() == Some(&latest) {
            return None;
        }
        Some(latest)
    }

    /// Records results the control plane accepted.
    pub fn reported(&mut self, checks: Vec<ReportedCheck>) {
        self.reported = Some(checks);
    }
}

/// Runs every check on its interval, publishing each result; a failure inside the grace
/// period is not published.
async fn run_all(
    checks: Vec<Check>,
    ip: IpAddr,
    tx: watch::Sender<BTreeMap<String, ReportedCheck>>,
) {
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for check in checks {
        let tx = tx.clone();
        tasks.spawn(async move {
            loop {
                let result = run_check(&check, ip).await;
                let in_grace = started.elapsed() < check.grace_period;
                let (status, output) = match result {
                    Ok(out) => ("passing", out),
                    Err(_) if in_grace => {
                        tokio::time::sleep(check.interval.min(Duration::from_secs(1))).await;
                        continue;
                    }
                    Err(out) => ("critical", out),
                };
                tx.send_if_modified(|all| {
                    let new = ReportedCheck {
                        name: check.name.clone(),
                        status: status.to_owned(),
                        output,
                    };
                    if all.get(&check.name) == Some(&new) {
                        return false;
                    }
                    all.insert(check.name.clone(), new);
                    true
                });
                tokio::time::sleep(check.interval).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

impl crate::supervisor::Reporter {
    /// Reports check results of a started machine; returns whether the control plane took
    /// them (or refused them for good).
    pub async fn report_checks(
        &self,
        m: &aloft_api::AssignedMachine,
        checks: Vec<ReportedCheck>,
    ) -> bool {
        let report = aloft_api::StatusReport {
            instance_id: m.instance_id.clone(),
            state: aloft_api::MachineState::Started,
            event: None,
            exit_code: None,
            checks: Some(checks),
            private_ip: None,
        };
        match self
            .client
            .report_status(&self.host_id, &m.id, &report)
            .await
        {
            Ok(_) => true,
            Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                tracing::warn!(machine = %m.id, error = %e, "control plane refused check results");
                true
            }
            Err(e) => {
                tracing::warn!(machine = %m.id, error = %e, "check report failed; will retry");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_service_checks_are_built() {
        let config: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": "x",
            "checks": {"alive": {"type": "http", "port": 8080, "path": "/health", "interval": "1s",
                                  "headers": {"x-a": "1", "x-b": ["2", "3"]}}},
            "services": [{"internal_port": 9000, "checks": [{"type": "tcp", "grace_period": "5s"}]}]
        }))
        .unwrap();
        let checks = checks_of(&config).unwrap();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].name, "alive");
        assert_eq!(checks[0].interval, Duration::from_secs(1));
        let http = checks[0].http.as_ref().unwrap();
        assert_eq!(http.path, "/health");
        assert_eq!(http.headers.len(), 3);
        assert_eq!(checks[1].name, "servicecheck-00-tcp");
        assert_eq!(checks[1].port, 9000);
        assert_eq!(checks[1].grace_period, Duration::from_secs(5));
    }

    #[test]
    fn bad_checks_are_named() {
        let config: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": "x", "checks": {"c": {"type": "udp", "port": 1}}
        }))
        .unwrap();
        assert_eq!(
            checks_of(&config),
            Err(CheckError::UnknownType {
                name: "c".into(),
                kind: "udp".into()
            })
        );
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_a_local_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ");
                let status = if ok { "200 OK" } else { "500 Oops" };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut check = Check {
            name: "c".into(),
            http: None,
            port,
            interval: DEFAULT_INTERVAL,
            timeout: Duration::from_secs(5),
            grace_period: Duration::ZERO,
        };
        assert!(run_check(&check, ip).await.is_ok());
        check.http = Some(HttpCheck {
            method: "GET".into(),
            path: "/ok".into(),
            headers: Vec::new(),
        });
        assert!(run_check(&check, ip).await.is_ok());
        check.http.as_mut().unwrap().path = "/bad".into();
        let err = run_check(&check, ip).await.unwrap_err();
        assert!(err.contains("500"), "{err}");
    }

    /// A machine with one TCP check on `port` of 127.0.0.1, as instance `instance`.
    fn machine(port: u16, instance: &str) -> LocalMachine {
        let assignment: aloft_api::AssignedMachine = serde_json::from_value(serde_json::json!({
            "id": "m1", "name": "n", "app": "a", "org": "personal", "region": "ams",
            "version": "v1", "instance_id": instance, "private_ip": "",
            "config": {"image": "x", "checks": {"alive": {"type": "tcp", "port": port, "interval": "1s"}}},
            "image_ref": {"registry": "", "repository": "x", "tag": "latest", "digest": "", "labels": {}},
            "desired_state": "started", "state": "started"
        }))
        .unwrap();
        LocalMachine {
            assignment,
            phase: crate::store::Phase::Running,
            running_instance: Some(instance.into()),
            restart_seq: 0,
            signal_seq: 0,
            restarts: 0,
            ipv4: Some("127.0.0.1".into()),
            ipv6: None,
        }
    }

    async fn first_results(checks: &MachineChecks) -> Vec<ReportedCheck> {
        for _ in 0..100 {
            if let Some(r) = checks.changed() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no check results");
    }

    #[tokio::test]
    async fn a_new_instance_reports_its_results_even_when_unchanged() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { while listener.accept().await.is_ok() {} });
        let mut checks = MachineChecks::default();
        checks.ensure(&machine(port, "i1"));
        let results = first_results(&checks).await;
        checks.reported(results);
        assert_eq!(
            checks.changed(),
            None,
            "unchanged results are not sent twice"
        );
        // An update gives the machine a new instance; the control plane cleared its results.
        checks.ensure(&machine(port, "i2"));
        let again = first_results(&checks).await;
        assert_eq!(again[0].status, "passing");
    }
}
