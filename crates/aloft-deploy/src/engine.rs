//! Taking a deploy's steps, one per [`Deploy::advance`], and rolling it back.

use std::collections::BTreeMap;
use std::time::Duration;

use aloft_api::deploy::{DeployStatus, DeployStrategy};
use aloft_api::{Machine, MachineConfig, MachineState};

use crate::health::Baseline;
use crate::ops::{Ops, OpsError};
use crate::plan::{group_of, plan_steps, Role, Step, Target};
use crate::release::{release_argv, RELEASE_GROUP};
use crate::state::{Deploy, DeployError, Undo, DEPLOY_TAG};
use crate::waits::{details, POLL};

/// How long the host may take to acknowledge a machine created without starting it.
const ACK_DEADLINE: Duration = Duration::from_secs(30);
/// Least time a rollback gives each machine of the previous release to be healthy again.
const ROLLBACK_MIN_WAIT: Duration = Duration::from_secs(60);
/// How long a release command machine left by an earlier deploy may take to be destroyed.
const LEFTOVER_WAIT: Duration = Duration::from_secs(30);

impl Deploy {
    /// Takes the next step (or the next rollback step). Returns `false` once the deploy is
    /// over; the caller stores the deploy after every call.
    pub async fn advance(&mut self, ops: &dyn Ops) -> Result<bool, DeployError> {
        match self.status {
            DeployStatus::Running => {
                if self.cancel || ops.cancelled() {
                    self.cancel = true;
                    self.fail(ops, DeployError::Cancelled)?;
                    return Ok(true);
                }
                if self.steps.is_none() {
                    match ops.list_machines(&self.app).await {
                        Ok(machines) => {
                            let steps = plan_steps(&self.plan, &machines);
                            let message = format!(
                                "release v{} of {}: {} ({}), {} step(s)",
                                self.version,
                                self.app,
                                self.plan.image,
                                self.plan.strategy.as_str(),
                                steps.len()
                            );
                            self.steps = Some(steps);
                            self.emit(ops.wall_ms(), "plan", None, "planned", message);
                        }
                        Err(e) => self.fail(ops, DeployError::ops("Cannot list machines")(e))?,
                    }
                    return Ok(true);
                }
                let Some(step) = self.steps().get(self.cursor).cloned() else {
                    self.transition(DeployStatus::Succeeded)?;
                    let message = format!("release v{} succeeded", self.version);
                    self.emit(ops.wall_ms(), "done", None, "succeeded", message);
                    return Ok(false);
                };
                match self.take(ops, &step).await {
                    Ok(()) => self.cursor += 1,
                    Err(e) => {
                        if matches!(step, Step::ReleaseCommand) {
                            self.aborted = true;
                        }
                        self.fail(ops, e)?;
                    }
                }
                Ok(true)
            }
            DeployStatus::RollingBack => {
                if let Some(undo) = self.undo.last().cloned() {
                    let result = self.undo_step(ops, undo).await;
                    self.undo.pop();
                    self.rolled_back += 1;
                    if let Err(e) = result {
                        self.emit(ops.wall_ms(), "rollback", None, "error", e.to_string());
                        self.rollback_error.get_or_insert(e.to_string());
                    }
                    return Ok(true);
                }
                // Machines left cordoned (an update that failed mid-batch) serve again.
                for id in self.held.clone() {
                    match ops.admit(&self.app, std::slice::from_ref(&id)).await {
                        Ok(()) => {
                            self.held.remove(&id);
                        }
                        Err(e) => {
                            let e = DeployError::ops(format!("Cannot uncordon machine {id}"))(e);
                            self.rollback_error.get_or_insert(e.to_string());
                        }
                    }
                }
                let to = if self.cancel {
                    DeployStatus::Cancelled
                } else {
                    DeployStatus::Failed
                };
                self.transition(to)?;
                let message = self.error_message().unwrap_or_default();
                self.emit(ops.wall_ms(), "done", None, to.as_str(), message);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Runs the deploy to its end, calling `stored` after every step.
    pub async fn run(
        &mut self,
        ops: &dyn Ops,
        mut stored: impl FnMut(&Deploy),
    ) -> Result<DeployStatus, DeployError> {
        while self.advance(ops).await? {
            stored(self);
        }
        stored(self);
        Ok(self.status)
    }

    fn fail(&mut self, ops: &dyn Ops, e: DeployError) -> Result<(), DeployError> {
        if e == DeployError::Cancelled {
            self.cancel = true;
        }
        if let DeployError::Unhealthy { machine, logs, .. } = &e {
            self.details = details(&self.app, machine, logs);
        }
        let reason = e.to_string();
        self.emit(ops.wall_ms(), "rollback", None, "error", reason.clone());
        self.reason = Some(reason);
        self.transition(DeployStatus::RollingBack)
    }

    fn config(&self, group: &str) -> Result<MachineConfig, DeployError> {
        self.plan
            .configs
            .get(group)
            .cloned()
            .ok_or_else(|| DeployError::NoConfig(group.to_owned()))
    }

    fn resolve(&self, targets: &[Target]) -> Result<Vec<String>, DeployError> {
        targets
            .iter()
            .map(|t| match t {
                Target::Machine(id) => Ok(id.clone()),
                Target::Slot(s) => self
                    .slots
                    .get(s)
                    .cloned()
                    .ok_or(DeployError::UnknownSlot(*s)),
            })
            .collect()
    }

    fn line(&mut self, ops: &dyn Ops, step: &str, machine: Option<(&str, &str)>, text: String) {
        self.emit(ops.wall_ms(), step, machine, "info", text);
    }

    /// Records machine `id`'s status when it changed.
    pub(crate) fn machine_status(
        &mut self,
        ops: &dyn Ops,
        id: &str,
        status: &str,
        message: String,
    ) {
        if self.shown.get(id) == Some(&message) {
            return;
        }
        self.shown.insert(id.to_owned(), message.clone());
        let region = self
            .baselines
            .get(id)
            .map(|b| b.region.clone())
            .unwrap_or_default();
        self.emit(ops.wall_ms(), "wait", Some((id, &region)), status, message);
    }

    async fn take(&mut self, ops: &dyn Ops, step: &Step) -> Result<(), DeployError> {
        let app = self.app.clone();
        match step {
            Step::ReleaseCommand => {
                // Release command machines an interrupted deploy left go first.
                let machines = ops
                    .list_machines(&app)
                    .await
                    .map_err(DeployError::ops("Cannot list machines"))?;
                for old in machines.iter().filter(|m| group_of(m) == RELEASE_GROUP) {
                    let text = format!(
                        "removing release command machine {} of an earlier deploy",
                        old.id
                    );
                    self.line(ops, "release_command", Some((&old.id, &old.region)), text);
                    match ops.destroy_machine(&app, &old.id).await {
                        Ok(()) | Err(OpsError::NotFound(_)) => {}
                        Err(e) => {
                            let action = format!("Cannot destroy machine {}", old.id);
                            return Err(DeployError::ops(action)(e));
                        }
                    }
                    self.wait_destroyed(ops, &old.id, LEFTOVER_WAIT).await?;
                }
                let program = self
                    .plan
                    .release_command
                    .as_ref()
                    .and_then(|rc| release_argv(&rc.command).ok())
                    .and_then(|argv| argv.into_iter().next())
                    .unwrap_or_default();
                let text = format!("Running release command: {program}");
                self.line(ops, "release_command", None, text);
                let lines = ops
                    .release_command(&app, self.version, &self.plan)
                    .await
                    .map_err(|e| DeployError::ReleaseCommand(e.to_string()))?;
                for line in lines {
                    self.line(ops, "release_command", None, format!("| {line}"));
                }
                let text = "release command finished (exit code 0)".to_owned();
                self.line(ops, "release_command", None, text);
            }
            Step::Create {
                group,
                region,
                slot,
                role,
            } => self.create(ops, group, region, *slot, *role).await?,
            Step::Divert { targets } => {
                let ids = self.resolve(targets)?;
                self.divert(ops, &ids).await?;
            }
            Step::Update {
                group,
                machine,
                region,
                old,
            } => {
                let config = self.config(group)?;
                let current = ops
                    .get_machine(&app, machine)
                    .await
                    .map_err(DeployError::ops(format!("Cannot read machine {machine}")))?;
                if !self
                    .undo
                    .iter()
                    .any(|u| matches!(u, Undo::Updated { id, .. } if id == machine))
                {
                    self.undo.push(Undo::Updated {
                        id: machine.clone(),
                        old: old.clone(),
                    });
                }
                // Taken again after a crash: a machine already on the new config is not
                // restarted a second time.
                let m = if current.config == config && self.baselines.contains_key(machine) {
                    current
                } else {
                    ops.update_machine(&app, machine, &config)
                        .await
                        .map_err(DeployError::ops(format!("Cannot update machine {machine}")))?
                };
                self.baselines.insert(m.id.clone(), Baseline::of(&m));
                if self.plan.strategy == DeployStrategy::Immediate {
                    let text = format!("{group}: updating machine {machine} in {region}");
                    self.line(ops, "update", Some((machine, region)), text);
                } else {
                    self.emit(
                        ops.wall_ms(),
                        "update",
                        Some((machine, region)),
                        "replacing",
                        "replacing".into(),
                    );
                    self.shown.insert(machine.clone(), "replacing".into());
                }
            }
            Step::Wait { targets } => {
                let ids = self.resolve(targets)?;
                let timeout = Duration::from_secs(self.plan.wait_timeout_secs);
                self.wait_healthy(ops, &ids, timeout).await?;
            }
            Step::Admit { targets } => {
                let ids = self.resolve(targets)?;
                self.admit(ops, &ids).await?;
            }
            Step::Destroy {
                group,
                machine,
                region,
                old,
            } => {
                match ops.destroy_machine(&app, machine).await {
                    Ok(()) | Err(OpsError::NotFound(_)) => {}
                    Err(e) => {
                        return Err(DeployError::ops(format!(
                            "Cannot destroy machine {machine}"
                        ))(e))
                    }
                }
                self.held.remove(machine);
                if !self.undo.iter().any(|u| matches!(u, Undo::Destroyed { config, region: r, .. } if r == region && config == old)) {
                    self.undo.push(Undo::Destroyed {
                        group: group.clone(),
                        region: region.clone(),
                        config: old.clone(),
                    });
                }
                let timeout = Duration::from_secs(self.plan.wait_timeout_secs);
                self.wait_destroyed(ops, machine, timeout).await?;
                let text = format!("{group}: destroyed old machine {machine}");
                self.line(ops, "destroy", Some((machine, region)), text);
            }
            Step::Note {
                group,
                text,
                target,
            } => {
                let id = match target {
                    Some(t) => self.resolve(std::slice::from_ref(t))?.pop(),
                    None => None,
                };
                let text = text.replace("{machine}", id.as_deref().unwrap_or("?"));
                self.line(ops, "note", None, format!("{group}: {text}"));
            }
        }
        Ok(())
    }

    async fn create(
        &mut self,
        ops: &dyn Ops,
        group: &str,
        region: &str,
        slot: u32,
        role: Role,
    ) -> Result<(), DeployError> {
        if self.slots.contains_key(&slot) {
            return Ok(());
        }
        let app = self.app.clone();
        let tag = format!("{}/{slot}", self.id);
        let mut config = self.config(group)?;
        config
            .metadata
            .get_or_insert_with(BTreeMap::new)
            .insert(DEPLOY_TAG.to_owned(), tag.clone());
        // Taken again after a crash: the machine created the first time is used.
        let existing = ops
            .list_machines(&app)
            .await
            .map_err(DeployError::ops("Cannot list machines"))?
            .into_iter()
            .find(|m| m.config.metadata.as_ref().and_then(|md| md.get(DEPLOY_TAG)) == Some(&tag));
        let cordoned = role != Role::First;
        let created = match existing {
            Some(m) => m,
            None => ops
                .create_machine(&app, &config, region, cordoned)
                .await
                .map_err(DeployError::ops(format!(
                    "Cannot create a machine in {region}"
                )))?,
        };
        let id = created.id.clone();
        self.slots.insert(slot, id.clone());
        self.undo.push(Undo::Created { id: id.clone() });
        let m = if cordoned {
            self.start_cordoned(ops, created).await?
        } else {
            created
        };
        self.baselines.insert(id.clone(), Baseline::of(&m));
        let text = match role {
            Role::First => format!("{group}: created machine {id} in {region}"),
            _ => format!("{group}: created machine {id} in {region} (no traffic until healthy)"),
        };
        self.line(ops, "create", Some((&id, region)), text);
        if role == Role::Canary {
            self.line(
                ops,
                "create",
                Some((&id, region)),
                format!("{group}: canary {id} starts"),
            );
        }
        Ok(())
    }

    /// Cordons a machine created without starting, then starts it: it gets traffic only once
    /// admitted. Returns it as started (everything recorded up to then is history).
    async fn start_cordoned(
        &mut self,
        ops: &dyn Ops,
        mut m: Machine,
    ) -> Result<Machine, DeployError> {
        let app = self.app.clone();
        let id = m.id.clone();
        self.held.insert(id.clone());
        ops.cordon(&app, std::slice::from_ref(&id), false)
            .await
            .map_err(DeployError::ops(format!("Cannot cordon machine {id}")))?;
        // The host first reports the new machine `stopped`; starting it after that keeps that
        // report from being taken for the new instance exiting.
        let deadline = ops.now() + ACK_DEADLINE;
        while m.state == MachineState::Created && ops.now() < deadline {
            ops.sleep(POLL).await;
            m = ops
                .get_machine(&app, &id)
                .await
                .map_err(DeployError::ops(format!("Cannot read machine {id}")))?;
        }
        if !matches!(m.state, MachineState::Started | MachineState::Starting) {
            ops.start_machine(&app, &id)
                .await
                .map_err(DeployError::ops(format!("Cannot start machine {id}")))?;
        }
        ops.get_machine(&app, &id)
            .await
            .map_err(DeployError::ops(format!("Cannot read machine {id}")))
    }

    async fn divert(&mut self, ops: &dyn Ops, ids: &[String]) -> Result<(), DeployError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.held.extend(ids.iter().cloned());
        ops.cordon(&self.app, ids, true)
            .await
            .map_err(DeployError::ops(format!(
                "Cannot cordon {}",
                ids.join(", ")
            )))?;
        for id in ids {
            let region = self
                .baselines
                .get(id)
                .map(|b| b.region.clone())
                .unwrap_or_default();
            self.emit(
                ops.wall_ms(),
                "cordon",
                Some((id, &region)),
                "cordoned",
                "cordoned, draining".into(),
            );
        }
        ops.sleep(Duration::from_millis(self.plan.drain_ms)).await;
        Ok(())
    }

    async fn admit(&mut self, ops: &dyn Ops, ids: &[String]) -> Result<(), DeployError> {
        ops.admit(&self.app, ids)
            .await
            .map_err(DeployError::ops(format!(
                "Cannot uncordon {}",
                ids.join(", ")
            )))?;
        for id in ids {
            self.held.remove(id);
            let region = self
                .baselines
                .get(id)
                .map(|b| b.region.clone())
                .unwrap_or_default();
            self.emit(
                ops.wall_ms(),
                "admit",
                Some((id, &region)),
                "admitted",
                "takes traffic".into(),
            );
        }
        Ok(())
    }

    /// How long a rollback waits for each machine: the previous release served before this
    /// deploy, so it gets at least [`ROLLBACK_MIN_WAIT`] to pass its checks again.
    fn rollback_wait(&self) -> Duration {
        Duration::from_secs(self.plan.wait_timeout_secs).max(ROLLBACK_MIN_WAIT)
    }

    async fn undo_step(&mut self, ops: &dyn Ops, step: Undo) -> Result<(), DeployError> {
        let app = self.app.clone();
        match step {
            Undo::Updated { id, old } => {
                if !self.held.contains(&id) {
                    self.divert(ops, std::slice::from_ref(&id)).await?;
                }
                let m = ops
                    .update_machine(&app, &id, &old)
                    .await
                    .map_err(DeployError::ops(format!("Cannot roll back machine {id}")))?;
                self.baselines.insert(id.clone(), Baseline::of(&m));
                self.shown.remove(&id);
                let healthy = self
                    .wait_healthy_uncancelled(ops, &id, self.rollback_wait())
                    .await;
                // Even a previous release that is not healthy again gets its traffic back:
                // it is what served before this deploy.
                self.admit(ops, std::slice::from_ref(&id)).await?;
                healthy?;
                let text = format!("rolled back machine {id} to {}", m.config.image);
                self.line(ops, "rollback", Some((&id, &m.region)), text);
            }
            Undo::Created { id } => {
                if !self.held.contains(&id) {
                    self.divert(ops, std::slice::from_ref(&id)).await?;
                }
                // A new machine that cannot be destroyed stays cordoned: no traffic for it.
                self.held.remove(&id);
                match ops.destroy_machine(&app, &id).await {
                    Ok(()) | Err(OpsError::NotFound(_)) => {}
                    Err(e) => {
                        return Err(DeployError::ops(format!("Cannot destroy new machine {id}"))(e))
                    }
                }
                self.wait_destroyed(ops, &id, self.rollback_wait()).await?;
                self.line(ops, "rollback", None, format!("destroyed new machine {id}"));
            }
            Undo::Destroyed {
                group,
                region,
                config,
            } => {
                let created = ops
                    .create_machine(&app, &config, &region, true)
                    .await
                    .map_err(DeployError::ops(format!(
                        "Cannot create a machine in {region}"
                    )))?;
                let m = self.start_cordoned(ops, created).await?;
                self.baselines.insert(m.id.clone(), Baseline::of(&m));
                self.wait_healthy_uncancelled(ops, &m.id, self.rollback_wait())
                    .await?;
                self.admit(ops, std::slice::from_ref(&m.id)).await?;
                let text = format!(
                    "{group}: recreated machine {} in {region} for a destroyed one",
                    m.id
                );
                self.line(ops, "rollback", Some((&m.id, &region)), text);
            }
        }
        Ok(())
    }
}
