//! When a machine counts as healthy during a deploy, why one is not (its latest event and last
//! log lines), and waiting for one to be gone.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aloft_api::{Client, Machine, MachineConfig, MachineState};

use super::progress::{Progress, Step};

/// How long a machine without checks must stay up, without exiting, to count as healthy.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
pub(super) const POLL: Duration = Duration::from_millis(200);

/// How many of a failed machine's last log lines a deploy error shows.
const FAILED_LOG_LINES: usize = 10;
/// How long fetching a failed machine's logs may take before the error goes without them.
const LOGS_DEADLINE: Duration = Duration::from_secs(5);

/// A machine that did not become healthy: what happened, why (from its latest event or a
/// failing check), and the last lines it logged.
#[derive(Debug, thiserror::Error)]
#[error("{summary}")]
pub struct MachineFailure {
    pub app: String,
    pub machine: String,
    pub summary: String,
    pub logs: Vec<String>,
}

impl MachineFailure {
    /// The log lines and where to read more, as lines to print under the error.
    pub fn details(&self) -> String {
        let mut out = String::new();
        if self.logs.is_empty() {
            out.push_str(&format!("\n  machine {} logged nothing", self.machine));
        } else {
            out.push_str(&format!("\n  last log lines of machine {}:", self.machine));
            for line in &self.logs {
                out.push_str(&format!("\n    {line}"));
            }
        }
        out.push_str(&format!(
            "\n  more: aloft logs --app {} --machine {}",
            self.app, self.machine
        ));
        out
    }
}

/// The reason the newest event of `m` gives (its message, else its exit code), if any.
pub fn event_reason(m: &Machine) -> Option<String> {
    reason_of(m.events.iter().max_by_key(|e| e.timestamp)?)
}

/// The reason one event gives: its message, its exit code, or both.
pub fn reason_of(e: &aloft_api::MachineEvent) -> Option<String> {
    let request = e.request.as_ref();
    let message = request.and_then(|r| r.get("message")?.as_str().map(str::to_owned));
    let code = request.and_then(|r| r.get("exit_event")?.get("exit_code")?.as_i64());
    match (message, code) {
        (Some(m), Some(c)) => Some(format!("{m}, exit code {c}")),
        (Some(m), None) => Some(m),
        (None, Some(c)) => Some(format!("exit code {c}")),
        (None, None) => None,
    }
}

/// The last lines machine `id` logged (empty when they cannot be had quickly), only those
/// from `since_ms` on (its current instance) unless that leaves none (the host's clock may be
/// behind the control plane's).
pub async fn last_log_lines(
    api: &Client,
    app: &str,
    id: &str,
    n: usize,
    since_ms: i64,
) -> Vec<String> {
    use futures::StreamExt as _;
    let query = aloft_api::LogsQuery {
        machine: Some(id.to_owned()),
        ..Default::default()
    };
    let fetch = async {
        let mut entries = Vec::new();
        let Ok(stream) = api.app_logs(app, &query).await else {
            return Vec::new();
        };
        let mut stream = Box::pin(stream);
        while let Some(Ok(entry)) = stream.next().await {
            entries.push(entry);
        }
        let ms = |e: &aloft_api::LogEntry| {
            chrono::DateTime::parse_from_rfc3339(&e.timestamp).map_or(0, |t| t.timestamp_millis())
        };
        // Lines of the app's streams and of its init come interleaved; time orders them.
        entries.sort_by_key(ms);
        if entries.iter().any(|e| ms(e) >= since_ms) {
            entries.retain(|e| ms(e) >= since_ms);
        }
        let skip = entries.len().saturating_sub(n);
        entries.into_iter().skip(skip).map(|e| e.message).collect()
    };
    tokio::time::timeout(LOGS_DEADLINE, fetch)
        .await
        .unwrap_or_default()
}

/// What the host appends to an exit event's message; the error lists the lines itself.
const HOST_LOG_TAIL: &str = "; last log lines:";

/// Builds the error for machine `m` that failed to become healthy; its instance's log lines
/// are those from `since_ms` on.
async fn failure(
    api: &Client,
    app: &str,
    m: &Machine,
    since_ms: i64,
    summary: String,
) -> anyhow::Error {
    let logs = last_log_lines(api, app, &m.id, FAILED_LOG_LINES, since_ms).await;
    // The host's own summary of the log lines is left out when the lines themselves follow.
    let summary = match summary.split_once(HOST_LOG_TAIL) {
        Some((head, tail)) if !logs.is_empty() => {
            let close = if tail.ends_with(')') { ")" } else { "" };
            format!("{head}{close}")
        }
        _ => summary,
    };
    MachineFailure {
        app: app.to_owned(),
        machine: m.id.clone(),
        summary,
        logs,
    }
    .into()
}

/// Waits until the machine runs `updated`'s instance and is healthy: its checks pass, or,
/// without checks, it stays up for [`DEFAULT_SETTLE`] without exiting. Each step is shown on
/// `progress`; a failure is a [`MachineFailure`] with the machine's last log lines.
pub async fn wait_healthy(
    api: &Client,
    app: &str,
    updated: &Machine,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    let result = watch(api, app, updated, timeout, progress).await;
    let step = match &result {
        Ok(()) => Step::Healthy,
        Err(e) => {
            let text = e.to_string();
            let own = format!("machine {} ", updated.id);
            Step::Failed(short(text.strip_prefix(&own).unwrap_or(&text)))
        }
    };
    progress.machine(&updated.id, &updated.region, step);
    result
}

/// The first line of `text`, at most 60 characters.
fn short(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

async fn watch(
    api: &Client,
    app: &str,
    updated: &Machine,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    let id = &updated.id;
    let instance = &updated.instance_id;
    // Exit events the update's answer did not list belong to the new instance.
    let known: HashSet<&str> = updated.events.iter().map(|e| e.id.as_str()).collect();
    let since = updated
        .events
        .iter()
        .map(|e| e.timestamp)
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + timeout;
    let mut started_at: Option<Instant> = None;
    loop {
        let m = api.get_machine(app, id).await?;
        if &m.instance_id != instance {
            anyhow::bail!("machine {id} was changed by someone else during the deploy");
        }
        if let Some(exit) = m
            .events
            .iter()
            .find(|e| e.kind == "exit" && e.timestamp >= since && !known.contains(e.id.as_str()))
        {
            let why = exit
                .request
                .as_ref()
                .and_then(|r| r.get("message").and_then(|v| v.as_str()))
                .map(str::to_owned)
                .or_else(|| event_reason(&m))
                .unwrap_or_else(|| exit.status.clone());
            let summary = format!("machine {id} exited after starting ({why})");
            return Err(failure(api, app, &m, since, summary).await);
        }
        match m.state {
            MachineState::Started => {
                let since_start = *started_at.get_or_insert_with(Instant::now);
                let want = checks_in(&m.config);
                if want == 0 {
                    if since_start.elapsed() >= DEFAULT_SETTLE {
                        return Ok(());
                    }
                    progress.machine(id, &m.region, Step::Settling);
                } else {
                    let passing = m.checks.iter().filter(|c| c.status == "passing").count();
                    progress.machine(
                        id,
                        &m.region,
                        Step::Checks {
                            passing,
                            total: want.max(m.checks.len()),
                        },
                    );
                    if m.checks.len() >= want && passing == m.checks.len() {
                        return Ok(());
                    }
                }
            }
            MachineState::Failed | MachineState::Stopped | MachineState::Destroyed => {
                let summary = match event_reason(&m) {
                    Some(why) => format!("machine {id} is {} instead of started: {why}", m.state),
                    None => format!("machine {id} is {} instead of started", m.state),
                };
                return Err(failure(api, app, &m, since, summary).await);
            }
            _ => progress.machine(id, &m.region, Step::Starting),
        }
        if Instant::now() >= deadline {
            if let Some(c) = m.checks.iter().find(|c| c.status != "passing") {
                let summary = format!(
                    "machine {id} check {} is {} after {}s: {}",
                    c.name,
                    c.status,
                    timeout.as_secs(),
                    c.output.trim()
                );
                return Err(failure(api, app, &m, since, summary).await);
            }
            if m.state == MachineState::Started {
                eprintln!("warning: machine {id} reported no check results; counting it healthy");
                return Ok(());
            }
            let summary = format!(
                "machine {id} is {} after {}s, not started",
                m.state,
                timeout.as_secs()
            );
            return Err(failure(api, app, &m, since, summary).await);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How many checks a config asks the agent to run (top-level and service checks).
pub fn checks_in(config: &MachineConfig) -> usize {
    let top = config.checks.as_ref().map_or(0, BTreeMap::len);
    let services: usize = config
        .services
        .iter()
        .flatten()
        .map(|s| s.checks.as_ref().map_or(0, Vec::len))
        .sum();
    top + services
}
