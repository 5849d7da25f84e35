//! Waiting until a machine reaches one of several states.

use std::time::Duration;

use aloft_api::{MachineState, WaitResponse};

use super::{MachineError, Machines, DEFAULT_WAIT, MAX_WAIT};

/// What a `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    State(MachineState),
    /// Any state that is not a transition: created, started, stopped, suspended, failed,
    /// destroyed.
    Settled,
}

impl WaitFor {
    fn reached_by(self, state: MachineState) -> bool {
        match self {
            WaitFor::State(want) => want == state,
            WaitFor::Settled => matches!(
                state,
                MachineState::Created
                    | MachineState::Started
                    | MachineState::Stopped
                    | MachineState::Suspended
                    | MachineState::Failed
                    | MachineState::Destroyed
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            WaitFor::State(s) => s.as_str(),
            WaitFor::Settled => "settled",
        }
    }
}

/// Parses `state` values, each a single state or a comma list; none means `started`.
pub fn wait_targets<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<WaitFor>, MachineError> {
    let mut targets = Vec::new();
    for name in values.into_iter().flat_map(|v| v.split(',')) {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let target = match name {
            "started" | "stopped" | "suspended" | "destroyed" | "failed" => {
                WaitFor::State(MachineState::parse(name).unwrap_or(MachineState::Started))
            }
            "settled" => WaitFor::Settled,
            other => {
                return Err(MachineError::Invalid(format!(
                    "Cannot wait for state {other:?}; use started, stopped, suspended, destroyed, failed or settled"
                )))
            }
        };
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    if targets.is_empty() {
        targets.push(WaitFor::State(MachineState::Started));
    }
    Ok(targets)
}

impl Machines {
    /// Answers as soon as the machine (at `version`, if given) is in one of `targets`; a
    /// timeout after `timeout` seconds (default 60, at most 300).
    pub async fn wait(
        &self,
        app: &str,
        id: &str,
        targets: &[WaitFor],
        timeout: Option<u64>,
        version: Option<&str>,
    ) -> Result<WaitResponse, MachineError> {
        let timeout = timeout.unwrap_or(DEFAULT_WAIT);
        if timeout > MAX_WAIT {
            return Err(MachineError::Invalid(format!(
                "Wait timeout {timeout} is more than {MAX_WAIT} seconds"
            )));
        }
        let wanted = || {
            targets
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut revisions = self.store.revisions().subscribe();
        let mut shutdown = self.store.revisions().shutdown_signal();
        loop {
            revisions.borrow_and_update();
            let (current, current_instance, last_event) = {
                let inner = self.store.lock();
                let row = inner.db().machine(app, id)?;
                let last = inner.db().machine_events(id, 1)?.into_iter().next();
                (row.state, row.instance_id, last)
            };
            let instance_ok = version.is_none_or(|want| want == current_instance);
            if instance_ok && targets.iter().any(|t| t.reached_by(current)) {
                return Ok(WaitResponse {
                    ok: true,
                    state: current,
                    version: current_instance,
                    event_id: last_event.map(|e| e.id).unwrap_or_default(),
                });
            }
            let waits_for_started = targets.contains(&WaitFor::State(MachineState::Started));
            if current == MachineState::Failed && waits_for_started && instance_ok {
                // Fail fast: a machine that failed to launch will not start by waiting.
                let reason = last_event
                    .and_then(|e| e.request)
                    .and_then(|r| r.get("message").and_then(|m| m.as_str().map(str::to_owned)))
                    .unwrap_or_else(|| "no reason was reported".to_owned());
                return Err(MachineError::WrongState(format!(
                    "Machine {id} failed while waiting for {}: {reason}",
                    wanted()
                )));
            }
            if current == MachineState::Destroyed {
                return Err(MachineError::WrongState(format!(
                    "Machine {id} was destroyed while waiting for {}",
                    wanted()
                )));
            }
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return Err(MachineError::ShuttingDown);
                    }
                }
                () = crate::core::shutting_down(&mut shutdown) => return Err(MachineError::ShuttingDown),
                () = tokio::time::sleep_until(deadline) => {
                    return Err(MachineError::Timeout(format!(
                        "Machine {id} did not reach state {} within {timeout}s (it is {current})",
                        wanted()
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_come_repeated_or_comma_separated_and_default_to_started() {
        assert_eq!(
            wait_targets([]).unwrap(),
            vec![WaitFor::State(MachineState::Started)]
        );
        assert_eq!(
            wait_targets(["started,stopped", "suspended", "stopped"]).unwrap(),
            vec![
                WaitFor::State(MachineState::Started),
                WaitFor::State(MachineState::Stopped),
                WaitFor::State(MachineState::Suspended)
            ]
        );
        assert_eq!(wait_targets(["settled"]).unwrap(), vec![WaitFor::Settled]);
        assert!(wait_targets(["starting"]).is_err());
    }
}
