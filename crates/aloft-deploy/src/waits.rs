//! Waiting on machines during a deploy: until they are healthy (or why they are not), and
//! until they are gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aloft_api::MachineState;

use crate::health::{judge, Baseline, Verdict};
use crate::ops::{Ops, OpsError};
use crate::state::{Deploy, DeployError};
use crate::uncancelled::Uncancelled;

/// How often machines are looked at while waiting.
pub(crate) const POLL: Duration = Duration::from_millis(200);
/// How many of a failed machine's last log lines the error shows.
const FAILED_LOG_LINES: usize = 10;
/// What the host appends to an exit event's message; the error lists the lines itself.
const HOST_LOG_TAIL: &str = "; last log lines:";

impl Deploy {
    /// Waits until every machine of `ids` runs its new instance and is healthy; the first
    /// failure wins.
    pub(crate) async fn wait_healthy(
        &mut self,
        ops: &dyn Ops,
        ids: &[String],
        timeout: Duration,
    ) -> Result<(), DeployError> {
        let app = self.app.clone();
        let deadline = ops.now() + timeout;
        let mut up_since: BTreeMap<String, Instant> = BTreeMap::new();
        let mut pending: Vec<String> = ids.to_vec();
        loop {
            if ops.cancelled() {
                return Err(DeployError::Cancelled);
            }
            let expired = ops.now() >= deadline;
            let mut still = Vec::new();
            for id in &pending {
                let m = ops
                    .get_machine(&app, id)
                    .await
                    .map_err(DeployError::ops(format!("Cannot read machine {id}")))?;
                let base = match self.baselines.get(id) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Baseline::of(&m);
                        self.baselines.insert(id.clone(), b.clone());
                        b
                    }
                };
                if m.state == MachineState::Started {
                    up_since.entry(id.clone()).or_insert_with(|| ops.now());
                }
                let up_for = up_since
                    .get(id)
                    .map(|t| ops.now().saturating_duration_since(*t));
                match judge(&m, &base, up_for, expired, timeout.as_secs()) {
                    Verdict::Healthy => {
                        self.machine_status(ops, id, "healthy", "healthy".into());
                    }
                    Verdict::Pending(status, text) => {
                        self.machine_status(ops, id, status, text);
                        still.push(id.clone());
                    }
                    Verdict::Failed(summary) => {
                        let own = format!("machine {id} ");
                        let short = short(summary.strip_prefix(&own).unwrap_or(&summary));
                        self.machine_status(ops, id, "failed", format!("failed: {short}"));
                        let logs = ops
                            .last_log_lines(&app, id, FAILED_LOG_LINES, base.since)
                            .await;
                        // The host's own summary of the log lines is left out when the lines
                        // themselves follow.
                        let summary = match summary.split_once(HOST_LOG_TAIL) {
                            Some((head, tail)) if !logs.is_empty() => {
                                let close = if tail.ends_with(')') { ")" } else { "" };
                                format!("{head}{close}")
                            }
                            _ => summary,
                        };
                        return Err(DeployError::Unhealthy {
                            machine: id.clone(),
                            summary,
                            logs,
                        });
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            pending = still;
            ops.sleep(POLL).await;
        }
    }

    /// Waits until the machine is destroyed (or gone).
    pub(crate) async fn wait_destroyed(
        &mut self,
        ops: &dyn Ops,
        id: &str,
        timeout: Duration,
    ) -> Result<(), DeployError> {
        let deadline = ops.now() + timeout;
        loop {
            match ops.get_machine(&self.app, id).await {
                Ok(m) if m.state == MachineState::Destroyed => return Ok(()),
                Ok(m) if ops.now() >= deadline => {
                    return Err(DeployError::ops(format!("Cannot destroy machine {id}"))(
                        OpsError::Failed(format!(
                            "it is {} {}s after it was destroyed",
                            m.state,
                            timeout.as_secs()
                        )),
                    ))
                }
                Ok(_) => {}
                Err(OpsError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(DeployError::ops(format!("Cannot read machine {id}"))(e)),
            }
            ops.sleep(POLL).await;
        }
    }

    /// A rollback's wait: cancelling does not stop it.
    pub(crate) async fn wait_healthy_uncancelled(
        &mut self,
        ops: &dyn Ops,
        id: &str,
        timeout: Duration,
    ) -> Result<(), DeployError> {
        let ops = Uncancelled(ops);
        self.wait_healthy(&ops, &[id.to_owned()], timeout).await
    }
}

/// The first line of `text`, at most 60 characters.
fn short(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

/// A failed machine's log lines and where to read more, as lines to print under the error.
pub(crate) fn details(app: &str, machine: &str, logs: &[String]) -> String {
    let mut out = String::new();
    if logs.is_empty() {
        out.push_str(&format!("\n  machine {machine} logged nothing"));
    } else {
        out.push_str(&format!("\n  last log lines of machine {machine}:"));
        for line in logs {
            out.push_str(&format!("\n    {line}"));
        }
    }
    out.push_str(&format!(
        "\n  more: aloft logs --app {app} --machine {machine}"
    ));
    out
}
