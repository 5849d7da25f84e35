//! A deploy's persisted state: its plan, its steps and how far it got, the undo log, the
//! machines it holds cordoned, and its events. One transition function moves its status.

use std::collections::{BTreeMap, BTreeSet};

use aloft_api::deploy::{DeployEvent, DeployInfo, DeployPlan, DeployStatus};
use aloft_api::MachineConfig;
use serde::{Deserialize, Serialize};

use crate::health::Baseline;
use crate::ops::OpsError;
use crate::plan::Step;

/// Metadata key on machines a deploy creates: `DEPLOY_ID/SLOT`, so a step taken again after a
/// crash finds the machine it created instead of creating a second one.
pub const DEPLOY_TAG: &str = "aloft_deploy_slot";

/// Why a step failed, or why the deploy cannot move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    #[error("{action}: {source}")]
    Ops {
        action: String,
        #[source]
        source: OpsError,
    },
    /// A machine did not become healthy; `logs` are its last lines.
    #[error("{summary}")]
    Unhealthy {
        machine: String,
        summary: String,
        logs: Vec<String>,
    },
    #[error("{0}")]
    ReleaseCommand(String),
    #[error("the plan has no config for process group {0:?}")]
    NoConfig(String),
    #[error("step refers to machine slot {0}, which no earlier step created")]
    UnknownSlot(u32),
    #[error("the deploy was cancelled")]
    Cancelled,
    #[error("a deploy cannot go from {from} to {to}")]
    InvalidTransition {
        from: DeployStatus,
        to: DeployStatus,
    },
}

impl DeployError {
    pub(crate) fn ops(action: impl Into<String>) -> impl FnOnce(OpsError) -> DeployError {
        let action = action.into();
        move |source| DeployError::Ops { action, source }
    }
}

/// One step to undo when the deploy fails, newest last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "undo", rename_all = "snake_case")]
pub enum Undo {
    /// Updated in place: give it back its previous config.
    Updated { id: String, old: Box<MachineConfig> },
    /// Created by this deploy: destroy it.
    Created { id: String },
    /// Destroyed by this deploy: create it again with its config.
    Destroyed {
        group: String,
        region: String,
        config: Box<MachineConfig>,
    },
}

/// One deploy of one release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub id: String,
    pub app: String,
    /// The release it rolls out.
    pub version: u64,
    pub plan: DeployPlan,
    pub(crate) status: DeployStatus,
    /// `None` until the first step plans the deploy from the app's machines.
    pub(crate) steps: Option<Vec<Step>>,
    /// The next step to take.
    pub(crate) cursor: usize,
    /// Machines created by `Create` steps, by slot.
    pub(crate) slots: BTreeMap<u32, String>,
    /// What each machine the deploy changed was right after the change.
    pub(crate) baselines: BTreeMap<String, Baseline>,
    pub(crate) undo: Vec<Undo>,
    /// Machines this deploy cordoned and has not given traffic back yet.
    pub(crate) held: BTreeSet<String>,
    pub(crate) cancel: bool,
    /// Why the deploy failed.
    pub(crate) reason: Option<String>,
    /// The failed machine's last log lines and where to read more, as lines.
    pub(crate) details: String,
    /// Whether it failed before any machine was touched (the release command).
    pub(crate) aborted: bool,
    pub(crate) rollback_error: Option<String>,
    pub(crate) rolled_back: u64,
    pub(crate) events: Vec<DeployEvent>,
    /// The last status shown per machine, so repeated polls add no events.
    pub(crate) shown: BTreeMap<String, String>,
}

impl Deploy {
    pub fn new(id: &str, app: &str, version: u64, plan: DeployPlan) -> Deploy {
        Deploy {
            id: id.to_owned(),
            app: app.to_owned(),
            version,
            plan,
            status: DeployStatus::Running,
            steps: None,
            cursor: 0,
            slots: BTreeMap::new(),
            baselines: BTreeMap::new(),
            undo: Vec::new(),
            held: BTreeSet::new(),
            cancel: false,
            reason: None,
            details: String::new(),
            aborted: false,
            rollback_error: None,
            rolled_back: 0,
            events: Vec::new(),
            shown: BTreeMap::new(),
        }
    }

    pub fn status(&self) -> DeployStatus {
        self.status
    }

    pub fn events(&self) -> &[DeployEvent] {
        &self.events
    }

    /// The planned steps (empty until planned).
    pub fn steps(&self) -> &[Step] {
        self.steps.as_deref().unwrap_or_default()
    }

    /// How many steps were taken.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The machines the deploy created, by slot.
    pub fn created(&self) -> &BTreeMap<u32, String> {
        &self.slots
    }

    /// Asks the deploy to stop and roll back at its next step; `false` when it is over.
    pub fn request_cancel(&mut self) -> bool {
        if self.status.is_final() {
            return false;
        }
        self.cancel = true;
        true
    }

    /// The one place a status changes.
    pub(crate) fn transition(&mut self, to: DeployStatus) -> Result<(), DeployError> {
        use DeployStatus::*;
        let ok = matches!(
            (self.status, to),
            (Running, Succeeded) | (Running, RollingBack) | (RollingBack, Failed | Cancelled)
        );
        if !ok {
            return Err(DeployError::InvalidTransition {
                from: self.status,
                to,
            });
        }
        self.status = to;
        Ok(())
    }

    /// Records an event.
    pub(crate) fn emit(
        &mut self,
        timestamp: i64,
        step: &str,
        machine: Option<(&str, &str)>,
        status: &str,
        message: String,
    ) {
        let seq = self.events.last().map_or(1, |e| e.seq + 1);
        self.events.push(DeployEvent {
            seq,
            timestamp,
            step: step.to_owned(),
            machine: machine.map(|(id, _)| id.to_owned()),
            region: machine.map(|(_, r)| r.to_owned()),
            status: status.to_owned(),
            message,
        });
    }

    /// Why the deploy did not succeed, as one message (`None` while running or on success).
    pub fn error_message(&self) -> Option<String> {
        let v = self.version;
        let count = self.rolled_back;
        let details = &self.details;
        match self.status {
            DeployStatus::Failed => {
                let reason = self.reason.as_deref().unwrap_or("unknown reason");
                Some(match &self.rollback_error {
                    _ if self.aborted && count == 0 => reason.to_owned(),
                    None => format!(
                        "Release v{v} failed: {reason}; rolled back {count} machine(s) to the previous release{details}"
                    ),
                    Some(e) => format!(
                        "Release v{v} failed: {reason}; rolling back also failed: {e}{details}"
                    ),
                })
            }
            DeployStatus::Cancelled => Some(match &self.rollback_error {
                None => format!(
                    "Release v{v} was cancelled; rolled back {count} machine(s) to the previous release"
                ),
                Some(e) => format!("Release v{v} was cancelled; rolling back failed: {e}"),
            }),
            _ => None,
        }
    }

    /// The deploy as the API shows it.
    pub fn info(&self) -> DeployInfo {
        DeployInfo {
            id: self.id.clone(),
            app: self.app.clone(),
            version: self.version,
            image: self.plan.image.clone(),
            strategy: self.plan.strategy,
            status: self.status,
            error: self.error_message(),
            rolled_back: self.rolled_back,
            events: self.events.clone(),
        }
    }
}
