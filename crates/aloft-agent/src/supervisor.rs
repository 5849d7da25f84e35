//! One supervisor task per machine: the only owner of that machine's local state.
//!
//! It reconciles what the control plane wants (`desired_state`, the instance to run, restart
//! and signal orders) with what runs, records each step in the store before taking it, applies
//! the restart policy when the process exits, and reports every state change.

use std::time::Duration;

use aloft_api::{AssignedMachine, DesiredState, MachineState, ReportedEvent, StatusReport};
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use crate::host::{HostRuntime, RunStatus};
use crate::store::{AgentStore, LocalMachine, Phase};
use crate::AgentError;

/// How often a supervisor looks at its machine without being told to.
const TICK: Duration = Duration::from_millis(500);

/// What a supervisor is told.
#[derive(Debug)]
pub enum Command {
    /// A new assignment from the watch stream (already recorded in the store).
    Assigned(Box<AssignedMachine>),
}

/// Everything a supervisor needs, shared by all of them.
#[derive(Clone)]
pub struct Shared {
    pub store: AgentStore,
    pub runtime: std::sync::Arc<HostRuntime>,
    pub reporter: Reporter,
}

/// Sends status reports to the control plane.
#[derive(Clone)]
pub struct Reporter {
    pub client: aloft_api::Client,
    pub host_id: String,
}

impl Reporter {
    /// Reports a state; returns whether the control plane accepted it (or refused it for
    /// good, which a retry would not change).
    pub async fn report(
        &self,
        m: &AssignedMachine,
        state: MachineState,
        event: Option<(&str, &str, Option<String>)>,
        exit_code: Option<i64>,
        private_ip: Option<String>,
    ) -> bool {
        let report = StatusReport {
            private_ip,
            instance_id: m.instance_id.clone(),
            state,
            event: event.map(|(kind, status, message)| ReportedEvent {
                kind: kind.to_string(),
                status: status.to_string(),
                message,
            }),
            exit_code,
            checks: None,
        };
        match self
            .client
            .report_status(&self.host_id, &m.id, &report)
            .await
        {
            Ok(_) => true,
            Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                warn!(machine = %m.id, state = %state, error = %e, "control plane refused a status report");
                true
            }
            Err(e) => {
                warn!(machine = %m.id, error = %e, "status report failed; will retry");
                false
            }
        }
    }
}

/// Runs a machine's supervisor until the machine is destroyed.
pub async fn supervise(shared: Shared, mut local: LocalMachine, mut rx: mpsc::Receiver<Command>) {
    let span =
        tracing::info_span!("machine", machine = %local.assignment.id, app = %local.assignment.app);
    async move {
        let mut sup = Supervisor {
            shared,
            reported: None,
            checks: Default::default(),
        };
        loop {
            match sup.reconcile(&mut local).await {
                Ok(Done::Destroyed) => return,
                Ok(Done::Continue) => {}
                Err(e) => warn!(error = %error_chain(&e), "reconcile failed"),
            }
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Assigned(a)) => {
                        tracing::debug!(desired = ?a.desired_state, "assignment received");
                        local.assignment = *a;
                    }
                    None => return,
                },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
    .instrument(span)
    .await
}

enum Done {
    Continue,
    Destroyed,
}

struct Supervisor {
    shared: Shared,
    /// The last (instance, state) the control plane accepted.
    reported: Option<(String, MachineState)>,
    /// Health checks of the running instance.
    checks: crate::checks::MachineChecks,
}

impl Supervisor {
    fn save(&self, m: &LocalMachine) -> Result<(), AgentError> {
        Ok(self.shared.store.save(m)?)
    }

    async fn report(
        &mut self,
        m: &LocalMachine,
        state: MachineState,
        event: Option<(&str, &str, Option<String>)>,
        exit_code: Option<i64>,
    ) {
        let key = (m.assignment.instance_id.clone(), state);
        if self.reported.as_ref() == Some(&key) && event.is_none() {
            return;
        }
        if self
            .shared
            .reporter
            .report(&m.assignment, state, event, exit_code, m.ipv6.clone())
            .await
        {
            self.reported = Some(key);
        }
    }

    async fn reconcile(&mut self, m: &mut LocalMachine) -> Result<Done, AgentError> {
        let rt = self.shared.runtime.clone();
        let id = m.assignment.id.clone();
        let status = rt.status(&id).await?;

        if let Some(order) = m.assignment.signal.clone() {
            if order.seq > m.signal_seq {
                m.signal_seq = order.seq;
                self.save(m)?;
                if matches!(status, RunStatus::Running) {
                    rt.signal(&id, &order.signal).await?;
                }
            }
        }

        if m.assignment.desired_state != DesiredState::Started || status != RunStatus::Running {
            self.checks.stop();
        }
        match m.assignment.desired_state {
            DesiredState::Destroyed => {
                if m.phase != Phase::Destroying {
                    m.phase = Phase::Destroying;
                    self.save(m)?;
                }
                rt.destroy(m).await?;
                self.shared.store.remove(&id)?;
                rt.request_gc();
                self.report(
                    m,
                    MachineState::Destroyed,
                    Some(("destroy", "destroyed", None)),
                    None,
                )
                .await;
                info!("machine destroyed");
                return Ok(Done::Destroyed);
            }
            DesiredState::Stopped | DesiredState::Suspended => {
                let code = match status {
                    RunStatus::Running => {
                        m.phase = Phase::Stopping;
                        self.save(m)?;
                        let (signal, timeout) = stop_params(&m.assignment);
                        rt.stop(m, &signal, timeout).await?
                    }
                    RunStatus::Exited(code) => Some(code),
                    RunStatus::Missing => None,
                };
                if m.phase != Phase::Stopped {
                    m.phase = Phase::Stopped;
                    self.save(m)?;
                    self.report(
                        m,
                        MachineState::Stopped,
                        Some(("exit", "stopped", code.map(|c| format!("exit code {c}")))),
                        code.map(i64::from),
                    )
                    .await;
                } else {
                    self.report(m, MachineState::Stopped, None, None).await;
                }
            }
            DesiredState::Started => self.keep_started(m, status).await?,
        }
        Ok(Done::Continue)
    }

    async fn keep_started(
        &mut self,
        m: &mut LocalMachine,
        status: RunStatus,
    ) -> Result<(), AgentError> {
        let rt = self.shared.runtime.clone();
        let wanted = m.assignment.instance_id.clone();
        let restart_order = m.assignment.restart_seq > m.restart_seq;
        let stale = m.running_instance.as_deref() != Some(wanted.as_str());
        match status {
            RunStatus::Running if !restart_order && !stale => {
                if m.phase != Phase::Running {
                    m.phase = Phase::Running;
                    self.save(m)?;
                }
                self.report(m, MachineState::Started, None, None).await;
                self.checks.ensure(m);
                if let Some(checks) = self.checks.changed() {
                    let r = &self.shared.reporter;
                    if r.report_checks(&m.assignment, checks.clone()).await {
                        self.checks.reported(checks);
                    }
                }
                return Ok(());
            }
            RunStatus::Running => {
                m.phase = Phase::Stopping;
                self.save(m)?;
                let (signal, timeout) = stop_params(&m.assignment);
                rt.stop(m, &signal, timeout).await?;
            }
            RunStatus::Exited(code) if m.phase == Phase::Running && !restart_order && !stale => {
                // The process ended by itself: the restart policy decides.
                let reason = rt.exit_reason(&m.assignment.id, code);
                if !self.should_restart(m, code) {
                    m.phase = Phase::Failed;
                    self.save(m)?;
                    let auto_destroy = m.assignment.config.auto_destroy.unwrap_or(false);
                    let state = if code == 0 || auto_destroy {
                        MachineState::Stopped
                    } else {
                        MachineState::Failed
                    };
                    self.report(
                        m,
                        state,
                        Some(("exit", "exited", Some(reason))),
                        Some(i64::from(code)),
                    )
                    .await;
                    if auto_destroy {
                        rt.destroy(m).await?;
                        self.report(
                            m,
                            MachineState::Destroyed,
                            Some(("destroy", "auto_destroy", None)),
                            None,
                        )
                        .await;
                    }
                    return Ok(());
                }
                m.restarts += 1;
                info!(
                    exit_code = code,
                    restarts = m.restarts,
                    "restarting after exit"
                );
                self.report(
                    m,
                    MachineState::Started,
                    Some(("exit", "restarting", Some(reason))),
                    Some(i64::from(code)),
                )
                .await;
            }
            RunStatus::Exited(_) | RunStatus::Missing
                if m.phase == Phase::Failed && !restart_order && !stale =>
            {
                return Ok(());
            }
            _ => {}
        }
        if restart_order {
            m.restart_seq = m.assignment.restart_seq;
            m.restarts = 0;
        }
        if stale {
            m.restarts = 0;
        }
        m.phase = Phase::Starting;
        self.save(m)?;
        match rt.start(m).await {
            Ok(()) => {
                m.phase = Phase::Running;
                m.running_instance = Some(wanted);
                self.save(m)?;
                self.report(
                    m,
                    MachineState::Started,
                    Some(("start", "started", None)),
                    None,
                )
                .await;
                info!("machine started");
            }
            Err(e) => {
                let message = error_chain(&e);
                warn!(error = %message, "machine failed to start");
                m.phase = Phase::Failed;
                m.running_instance = Some(wanted);
                self.save(m)?;
                self.report(
                    m,
                    MachineState::Failed,
                    Some(("launch", "failed", Some(message))),
                    None,
                )
                .await;
            }
        }
        Ok(())
    }

    fn should_restart(&self, m: &LocalMachine, code: i32) -> bool {
        let restart = m.assignment.config.restart.as_ref();
        let policy = restart
            .and_then(|r| r.policy.as_deref())
            .unwrap_or("on-failure");
        let max = restart.and_then(|r| r.max_retries).unwrap_or(10).max(0) as u32;
        match policy {
            "always" => true,
            "on-failure" => code != 0 && m.restarts < max,
            _ => false,
        }
    }
}

/// The signal and grace period of a stop: the order's, else `stop_config`, else SIGINT / 5 s.
pub fn stop_params(m: &AssignedMachine) -> (String, Duration) {
    let cfg = m.config.stop_config.as_ref();
    let signal = m
        .stop_signal
        .clone()
        .or_else(|| cfg.and_then(|c| c.signal.clone()))
        .unwrap_or_else(|| "SIGINT".to_string());
    let timeout = m
        .stop_timeout_secs
        .map(Duration::from_secs)
        .or_else(|| {
            cfg.and_then(|c| c.timeout.as_ref())
                .and_then(aloft_api::parse_fly_duration)
        })
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(300));
    (signal, timeout)
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
