//! When a machine counts as healthy during a deploy, and why one is not.

use std::collections::BTreeMap;
use std::time::Duration;

use aloft_api::{Machine, MachineConfig, MachineEvent, MachineState};
use serde::{Deserialize, Serialize};

/// How long a machine without checks must stay up, without exiting, to count as healthy.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// What a machine was when the deploy last changed it: an exit event not listed here, or a
/// new instance, happened after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub instance_id: String,
    pub known: Vec<String>,
    /// The newest event's timestamp (ms).
    pub since: i64,
    pub region: String,
}

impl Baseline {
    pub fn of(m: &Machine) -> Baseline {
        Baseline {
            instance_id: m.instance_id.clone(),
            known: m.events.iter().map(|e| e.id.clone()).collect(),
            since: m.events.iter().map(|e| e.timestamp).max().unwrap_or(0),
            region: m.region.clone(),
        }
    }
}

/// Where a machine being waited on is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Still coming up: the status word and what a person reads.
    Pending(&'static str, String),
    /// It will not become healthy: why.
    Failed(String),
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

/// The reason one event gives: its message, its exit code, or both.
pub fn reason_of(e: &MachineEvent) -> Option<String> {
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

/// The reason the newest event of `m` gives, if any.
pub fn event_reason(m: &Machine) -> Option<String> {
    reason_of(m.events.iter().max_by_key(|e| e.timestamp)?)
}

/// Judges machine `m` against what it was when changed. `up_for` is how long it has been seen
/// `started`; `expired` says the wait's time is up (`timeout_secs` for messages).
pub fn judge(
    m: &Machine,
    base: &Baseline,
    up_for: Option<Duration>,
    expired: bool,
    timeout_secs: u64,
) -> Verdict {
    let id = &m.id;
    if m.instance_id != base.instance_id {
        return Verdict::Failed(format!(
            "machine {id} was changed by someone else during the deploy"
        ));
    }
    if let Some(exit) = m.events.iter().find(|e| {
        e.kind == "exit" && e.timestamp >= base.since && !base.known.iter().any(|k| k == &e.id)
    }) {
        let why = exit
            .request
            .as_ref()
            .and_then(|r| r.get("message").and_then(|v| v.as_str()))
            .map(str::to_owned)
            .or_else(|| event_reason(m))
            .unwrap_or_else(|| exit.status.clone());
        return Verdict::Failed(format!("machine {id} exited after starting ({why})"));
    }
    let pending = match m.state {
        MachineState::Started => {
            let want = checks_in(&m.config);
            if want == 0 {
                if up_for.is_some_and(|d| d >= DEFAULT_SETTLE) {
                    return Verdict::Healthy;
                }
                Verdict::Pending("settling", "started, waiting to see it stays up".to_owned())
            } else {
                let passing = m.checks.iter().filter(|c| c.status == "passing").count();
                if m.checks.len() >= want && passing == m.checks.len() {
                    return Verdict::Healthy;
                }
                Verdict::Pending(
                    "checks",
                    format!(
                        "waiting for checks ({passing}/{} passing)",
                        want.max(m.checks.len())
                    ),
                )
            }
        }
        MachineState::Failed | MachineState::Stopped | MachineState::Destroyed => {
            return Verdict::Failed(match event_reason(m) {
                Some(why) => format!("machine {id} is {} instead of started: {why}", m.state),
                None => format!("machine {id} is {} instead of started", m.state),
            });
        }
        _ => Verdict::Pending("starting", "starting".to_owned()),
    };
    if !expired {
        return pending;
    }
    if let Some(c) = m.checks.iter().find(|c| c.status != "passing") {
        return Verdict::Failed(format!(
            "machine {id} check {} is {} after {timeout_secs}s: {}",
            c.name,
            c.status,
            c.output.trim()
        ));
    }
    if m.state == MachineState::Started {
        // Started, checks configured but never reported: counted healthy, as the CLI did.
        return Verdict::Healthy;
    }
    Verdict::Failed(format!(
        "machine {id} is {} after {timeout_secs}s, not started",
        m.state
    ))
}
