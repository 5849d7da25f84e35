//! Agents' watch of their assignments, and applying agents' status reports.

use std::collections::BTreeMap;

use aloft_api::{CheckStatus, DesiredState, MachineState, StatusReport, WatchEvent};
use serde_json::json;

use super::{Caller, MachineError, Machines};
use crate::core::state::transition;
use crate::core::store::{MachineRow, NewMachine, PendingEvent, DEFAULT_ORG};
use crate::core::{now_rfc3339, StoreError};

impl Machines {
    /// Assignments of `host` changed after `since`, and the revision the answer is complete to.
    pub fn host_changes(
        &self,
        host: &str,
        since: u64,
    ) -> Result<(Vec<WatchEvent>, u64), MachineError> {
        let inner = self.store.lock();
        if inner.host_capacity(host).is_none() {
            return Err(StoreError::HostNotFound(host.to_owned()).into());
        }
        if inner.host_revision(host).is_none_or(|last| last <= since) {
            return Ok((Vec::new(), inner.revision().max(since)));
        }
        let db = inner.db();
        let rows = db.machines_changed_on_host(host, since)?;
        let mut orgs: BTreeMap<String, String> = BTreeMap::new();
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            if !orgs.contains_key(&row.app) {
                orgs.insert(row.app.clone(), db.app_org(&row.app)?);
            }
            let org = orgs.get(&row.app).map_or(DEFAULT_ORG, String::as_str);
            let mut assigned = row.to_assigned(org);
            assigned.secrets =
                crate::services::secrets::decrypt_all(db, self.store.data_dir(), &row.app)?;
            events.push(WatchEvent {
                revision: row.revision,
                machine: Some(assigned),
            });
        }
        Ok((events, inner.revision().max(since)))
    }

    /// Applies an agent's status report through the transition function.
    pub fn report_status(
        &self,
        host: &str,
        id: &str,
        report: StatusReport,
    ) -> Result<(), MachineError> {
        let app = {
            let inner = self.store.lock();
            let row = inner
                .db()
                .machine_by_id(id)?
                .ok_or_else(|| MachineError::NotFound(format!("Machine {id:?} not found")))?;
            if row.host_id != host {
                return Err(MachineError::NotFound(format!(
                    "Machine {id} is not assigned to host {host:?}"
                )));
            }
            if row.instance_id != report.instance_id {
                return Err(MachineError::StaleReport(format!(
                    "Report names instance {} but machine {id} is at instance {}",
                    report.instance_id, row.instance_id
                )));
            }
            if let Some(ip) = &report.private_ip {
                let index = inner.db().host_index_of(host)?;
                check_own_prefix(ip, host, index)?;
            }
            row.app
        };
        tracing::debug!(app = %app, machine = id, host, state = %report.state, "agent status report");
        self.mutate(&app, id, Caller::Agent, |row, extra, _| {
            agent_update(row, extra, report)
        })?;
        Ok(())
    }
}

/// A host reports only addresses inside its own 6PN prefix: `fdaa` then any network, then
/// its host index as the host field (edges send the app's traffic to the address reported).
fn check_own_prefix(ip: &str, host: &str, index: Option<u32>) -> Result<(), MachineError> {
    let addr: std::net::Ipv6Addr = ip.parse().map_err(|_| {
        MachineError::Invalid(format!("Reported private_ip {ip:?} is not an IPv6 address"))
    })?;
    let s = addr.segments();
    let host_field = (u32::from(s[3]) << 16) | u32::from(s[4]);
    if s[0] != 0xfdaa || Some(host_field) != index {
        return Err(MachineError::Invalid(format!(
            "Reported private_ip {ip} is outside host {host:?}'s 6PN prefix"
        )));
    }
    Ok(())
}

/// Applies a report: a state change (through `transition`), an event, an exit code, checks.
fn agent_update(
    row: &mut MachineRow,
    extra: &mut NewMachine,
    mut report: StatusReport,
) -> Result<(), MachineError> {
    let exit = report
        .exit_code
        .map(|code| json!({"exit_event": {"exit_code": code}}));
    if report.checks.is_some() && report.event.is_none() && report.exit_code.is_none() {
        // Check results alone never change the state: a stop may still be on its way to the
        // agent that sent them.
        report.state = row.state;
    }
    if report.state == MachineState::Destroyed && row.state != MachineState::Destroying {
        // The agent destroyed it by itself (auto_destroy): record the destroying step too.
        row.state = transition(row.state, MachineState::Destroying).map_err(|transition| {
            MachineError::Transition {
                id: row.id.clone(),
                transition,
            }
        })?;
        row.desired = DesiredState::Destroyed;
        extra.events.push(PendingEvent {
            kind: "destroy".to_owned(),
            status: MachineState::Destroying.as_str().to_owned(),
            source: "flyd",
            request: None,
        });
    }
    if report.state != row.state {
        if let Some(step) = missed_step(row.state, report.state) {
            // A report is what the host saw; when it skipped the transient state in between
            // (a start order that arrived while an older report was on its way), record it.
            row.state = step;
            extra.events.push(PendingEvent {
                kind: default_event_kind(step).to_owned(),
                status: step.as_str().to_owned(),
                source: "flyd",
                request: None,
            });
        }
        row.state =
            transition(row.state, report.state).map_err(|transition| MachineError::Transition {
                id: row.id.clone(),
                transition,
            })?;
        let kind = report.event.as_ref().map_or_else(
            || default_event_kind(report.state).to_owned(),
            |e| e.kind.clone(),
        );
        extra.events.push(PendingEvent {
            kind,
            status: report.state.as_str().to_owned(),
            source: "flyd",
            request: merge_request(exit, report.event.as_ref().and_then(|e| e.message.clone())),
        });
        if report.state == MachineState::Destroyed {
            row.lease = None;
        }
    } else if let Some(ev) = &report.event {
        extra.events.push(PendingEvent {
            kind: ev.kind.clone(),
            status: ev.status.clone(),
            source: "flyd",
            request: merge_request(exit, ev.message.clone()),
        });
    }
    if let Some(ip) = &report.private_ip {
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| {
            MachineError::Invalid(format!("Reported private_ip {ip:?} is not an IPv6 address"))
        })?;
        row.private_ip = ip.to_string();
    }
    if let Some(checks) = report.checks {
        let updated_at = now_rfc3339();
        row.checks = checks
            .into_iter()
            .map(|c| CheckStatus {
                name: c.name,
                status: c.status,
                output: c.output,
                updated_at: updated_at.clone(),
            })
            .collect();
    }
    Ok(())
}

/// The transient state between `from` and a reported `to` when the direct transition is not
/// allowed but going through it is (stopped → starting → started, started → stopping →
/// stopped, …).
fn missed_step(from: MachineState, to: MachineState) -> Option<MachineState> {
    if transition(from, to).is_ok() {
        return None;
    }
    let step = match to {
        MachineState::Started => MachineState::Starting,
        MachineState::Stopped => MachineState::Stopping,
        MachineState::Suspended => MachineState::Suspending,
        _ => return None,
    };
    (transition(from, step).is_ok() && transition(step, to).is_ok()).then_some(step)
}

fn merge_request(
    exit: Option<serde_json::Value>,
    message: Option<String>,
) -> Option<serde_json::Value> {
    match (exit, message) {
        (None, None) => None,
        (exit, message) => {
            let mut value = exit.unwrap_or_else(|| json!({}));
            if let (Some(map), Some(message)) = (value.as_object_mut(), message) {
                map.insert("message".to_owned(), json!(message));
            }
            Some(value)
        }
    }
}

fn default_event_kind(state: MachineState) -> &'static str {
    match state {
        MachineState::Starting | MachineState::Started => "start",
        MachineState::Stopping | MachineState::Stopped => "exit",
        MachineState::Suspending | MachineState::Suspended => "suspend",
        MachineState::Destroying | MachineState::Destroyed => "destroy",
        MachineState::Replacing => "update",
        MachineState::Created => "launch",
        MachineState::Failed => "failed",
    }
}

#[cfg(test)]
mod missed_step_tests {
    use super::*;

    #[test]
    fn hosts_report_only_addresses_in_their_own_prefix() {
        assert!(check_own_prefix("fdaa:0:1:0:7:0:3:2", "h", Some(7)).is_ok());
        assert!(check_own_prefix("fdaa:0:1:0:8:0:3:2", "h", Some(7)).is_err());
        assert!(check_own_prefix("fd00:0:1:0:7:0:3:2", "h", Some(7)).is_err());
        assert!(check_own_prefix("10.0.0.1", "h", Some(7)).is_err());
        assert!(check_own_prefix("fdaa:0:1:0:7:0:3:2", "h", None).is_err());
    }

    #[test]
    fn reports_walk_through_the_transient_state_they_skipped() {
        use MachineState::*;
        assert_eq!(missed_step(Stopped, Started), Some(Starting));
        assert_eq!(missed_step(Suspended, Started), Some(Starting));
        assert_eq!(
            missed_step(Started, Stopped),
            None,
            "direct transitions need no step"
        );
        assert_eq!(
            missed_step(Starting, Started),
            None,
            "direct transitions need no step"
        );
        assert_eq!(
            missed_step(Destroyed, Started),
            None,
            "nothing leaves destroyed"
        );
    }
}
