//! The strategies, machine by machine, and the undo log that rolls a failed deploy back.
//!
//! - `rolling`: batches of `max_unavailable` machines (at least one, never the whole group)
//!   are cordoned, drained, updated in place, waited on until healthy and uncordoned. A group
//!   of one machine surges instead: the replacement starts and becomes healthy before the old
//!   machine is cordoned, drained and destroyed, so the group always has a machine serving.
//! - `canary`: one new machine first; once healthy it takes traffic, then the group's other
//!   machines roll as above and the last old one is retired.
//! - `bluegreen`: a full new set (one per old machine, same regions) starts cordoned; once all
//!   are healthy they take traffic and the old set is cordoned, drained and destroyed.
//! - `immediate` (and `--detach`): every machine is updated at once, nothing waits.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aloft_api::{Client, CreateMachineRequest, Machine, MachineConfig, MachineState};
use aloft_config::{MaxUnavailable, Strategy};
use anyhow::Context as _;

use super::health::{wait_all_healthy, wait_destroyed, wait_healthy, POLL};
use super::progress::{Progress, Step};
use super::traffic::Traffic;
use super::{group_of, live_machines, Plan};

/// Least time a rollback gives each machine of the previous release to be healthy again.
const ROLLBACK_MIN_WAIT: Duration = Duration::from_secs(60);

/// How long the host may take to acknowledge a machine created without starting it.
const ACK_DEADLINE: Duration = Duration::from_secs(30);

/// One step to undo when the deploy fails, newest last.
enum Undo {
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

/// One deploy in progress.
pub(super) struct Rollout<'a> {
    api: &'a Client,
    plan: &'a Plan,
    traffic: Traffic,
    undo: Vec<Undo>,
    /// Machines this deploy cordoned and has not given traffic back yet.
    held: BTreeSet<String>,
    progress: Progress,
}

/// The regions where a group whose live machines are `group` gets new ones: the primary region
/// (or each of `--regions`) when it has none at all; with `--regions`, also each listed region
/// where it has none.
pub(super) fn empty_regions(plan: &Plan, group: &[&Machine]) -> Vec<String> {
    match &plan.regions {
        None if group.is_empty() => vec![plan.region.clone()],
        None => Vec::new(),
        Some(regions) => regions
            .iter()
            .filter(|r| !group.iter().any(|m| &m.region == *r))
            .cloned()
            .collect(),
    }
}

/// How many machines of a group of `n` a rolling batch takes: `max_unavailable` of them,
/// at least one, and never all of them (a group of one surges instead).
pub(super) fn batch_size(max: MaxUnavailable, n: usize) -> usize {
    let k = match max {
        MaxUnavailable::Fraction(f) => (f * n as f64).floor() as usize,
        MaxUnavailable::Count(c) => c as usize,
    };
    k.clamp(1, n.saturating_sub(1).max(1))
}

impl<'a> Rollout<'a> {
    pub fn new(api: &'a Client, plan: &'a Plan, traffic: Traffic) -> Rollout<'a> {
        Rollout {
            api,
            plan,
            traffic,
            undo: Vec::new(),
            held: BTreeSet::new(),
            progress: Progress::new(),
        }
    }

    /// Rolls every process group out with the plan's strategy.
    pub async fn run(&mut self) -> anyhow::Result<()> {
        let plan = self.plan;
        let machines = live_machines(self.api, &plan.app).await?;
        let wait = !plan.detach && plan.strategy != Strategy::Immediate;
        for (group, config) in &plan.configs {
            let all: Vec<&Machine> = machines.iter().filter(|m| &group_of(m) == group).collect();
            let mine: Vec<Machine> = all
                .iter()
                .filter(|m| plan.regions.as_ref().is_none_or(|r| r.contains(&m.region)))
                .map(|m| (*m).clone())
                .collect();
            let empty = empty_regions(plan, &all);
            if !empty.is_empty() {
                self.first_machines(group, config, &empty, wait).await?;
            }
            if mine.is_empty() {
                continue;
            }
            if !wait {
                self.update_unwaited(group, config, &mine).await?;
            } else {
                match plan.strategy {
                    Strategy::Rolling | Strategy::Immediate => {
                        self.rolling(group, config, &mine).await?;
                    }
                    Strategy::Canary => self.canary(group, config, &mine).await?,
                    Strategy::Bluegreen => self.bluegreen(group, config, &mine).await?,
                }
            }
        }
        Ok(())
    }

    /// A group without machines in a region it deploys to gets its first ones there.
    async fn first_machines(
        &mut self,
        group: &str,
        config: &MachineConfig,
        regions: &[String],
        wait: bool,
    ) -> anyhow::Result<()> {
        let mut created = Vec::new();
        for region in regions {
            for _ in 0..self.plan.per_region.max(1) {
                let m = self
                    .api
                    .create_machine(
                        &self.plan.app,
                        &CreateMachineRequest {
                            config: config.clone(),
                            region: Some(region.clone()),
                            ..CreateMachineRequest::default()
                        },
                    )
                    .await?;
                self.progress
                    .line(&format!("  {group}: created machine {} in {region}", m.id));
                self.undo.push(Undo::Created { id: m.id.clone() });
                created.push(m);
            }
        }
        if wait {
            wait_all_healthy(
                self.api,
                &self.plan.app,
                &created,
                self.plan.wait_timeout,
                &self.progress,
            )
            .await?;
        }
        Ok(())
    }

    /// `immediate` and `--detach`: every machine gets the new config at once.
    async fn update_unwaited(
        &mut self,
        group: &str,
        config: &MachineConfig,
        mine: &[Machine],
    ) -> anyhow::Result<()> {
        for old in mine {
            let m = self.update(old, config).await?;
            self.progress.line(&format!(
                "  {group}: updating machine {} in {}",
                m.id, m.region
            ));
        }
        Ok(())
    }

    async fn rolling(
        &mut self,
        group: &str,
        config: &MachineConfig,
        mine: &[Machine],
    ) -> anyhow::Result<()> {
        if let [only] = mine {
            return self.surge(group, config, only).await;
        }
        let batch = batch_size(self.plan.max_unavailable, mine.len());
        for chunk in mine.chunks(batch) {
            self.replace_in_place(config, chunk).await?;
        }
        Ok(())
    }

    async fn canary(
        &mut self,
        group: &str,
        config: &MachineConfig,
        mine: &[Machine],
    ) -> anyhow::Result<()> {
        let Some((last, rest)) = mine.split_last() else {
            return Ok(());
        };
        let canary = self.launch(group, config, &last.region).await?;
        self.progress
            .line(&format!("  {group}: canary {} starts", canary.id));
        wait_healthy(
            self.api,
            &self.plan.app,
            &canary,
            self.plan.wait_timeout,
            &self.progress,
        )
        .await?;
        self.admit(std::slice::from_ref(&canary.id)).await?;
        self.progress.line(&format!(
            "  {group}: canary {} is healthy and takes traffic",
            canary.id
        ));
        if !rest.is_empty() {
            let batch = batch_size(self.plan.max_unavailable, mine.len());
            for chunk in rest.chunks(batch) {
                self.replace_in_place(config, chunk).await?;
            }
        }
        self.retire(group, std::slice::from_ref(last)).await
    }

    async fn bluegreen(
        &mut self,
        group: &str,
        config: &MachineConfig,
        blue: &[Machine],
    ) -> anyhow::Result<()> {
        let mut green = Vec::with_capacity(blue.len());
        for old in blue {
            green.push(self.launch(group, config, &old.region).await?);
        }
        self.progress.line(&format!(
            "  {group}: {} green machine(s) started alongside the blue set",
            green.len()
        ));
        wait_all_healthy(
            self.api,
            &self.plan.app,
            &green,
            self.plan.wait_timeout,
            &self.progress,
        )
        .await?;
        let ids: Vec<String> = green.iter().map(|m| m.id.clone()).collect();
        self.admit(&ids).await?;
        self.progress.line(&format!(
            "  {group}: green set healthy; cutting traffic over"
        ));
        self.retire(group, blue).await
    }

    /// A group of one: start the replacement, wait for it, then retire the old machine.
    async fn surge(
        &mut self,
        group: &str,
        config: &MachineConfig,
        old: &Machine,
    ) -> anyhow::Result<()> {
        let new = self.launch(group, config, &old.region).await?;
        wait_healthy(
            self.api,
            &self.plan.app,
            &new,
            self.plan.wait_timeout,
            &self.progress,
        )
        .await?;
        self.admit(std::slice::from_ref(&new.id)).await?;
        self.retire(group, std::slice::from_ref(old)).await
    }

    /// Cordon, drain, update, wait until healthy, uncordon.
    async fn replace_in_place(
        &mut self,
        config: &MachineConfig,
        chunk: &[Machine],
    ) -> anyhow::Result<()> {
        let ids: Vec<String> = chunk.iter().map(|m| m.id.clone()).collect();
        self.divert(&ids).await?;
        let mut updated = Vec::with_capacity(chunk.len());
        for old in chunk {
            let m = self.update(old, config).await?;
            self.progress.machine(&m.id, &m.region, Step::Replacing);
            updated.push(m);
        }
        wait_all_healthy(
            self.api,
            &self.plan.app,
            &updated,
            self.plan.wait_timeout,
            &self.progress,
        )
        .await?;
        self.admit(&ids).await
    }

    async fn update(&mut self, old: &Machine, config: &MachineConfig) -> anyhow::Result<Machine> {
        let m = self
            .api
            .update_machine(
                &self.plan.app,
                &old.id,
                &CreateMachineRequest {
                    config: config.clone(),
                    ..CreateMachineRequest::default()
                },
            )
            .await
            .with_context(|| format!("Cannot update machine {}", old.id))?;
        self.undo.push(Undo::Updated {
            id: old.id.clone(),
            old: Box::new(old.config.clone()),
        });
        Ok(m)
    }

    /// Creates a machine cordoned, then starts it: it gets traffic only once admitted.
    async fn launch(
        &mut self,
        group: &str,
        config: &MachineConfig,
        region: &str,
    ) -> anyhow::Result<Machine> {
        let m = self.start_cordoned(config, region).await?;
        self.undo.push(Undo::Created { id: m.id.clone() });
        self.progress.line(&format!(
            "  {group}: created machine {} in {region} (no traffic until healthy)",
            m.id
        ));
        Ok(m)
    }

    async fn start_cordoned(
        &mut self,
        config: &MachineConfig,
        region: &str,
    ) -> anyhow::Result<Machine> {
        let app = &self.plan.app;
        let mut m = self
            .api
            .create_machine(
                app,
                &CreateMachineRequest {
                    config: config.clone(),
                    region: Some(region.to_owned()),
                    skip_launch: true,
                    ..CreateMachineRequest::default()
                },
            )
            .await?;
        self.held.insert(m.id.clone());
        self.traffic.hold(self.api, &m.id).await?;
        // The host first reports the new machine `stopped` (with an `exit` event); starting it
        // after that keeps that report from being taken for the new instance exiting.
        let deadline = Instant::now() + ACK_DEADLINE;
        while m.state == MachineState::Created && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            m = self.api.get_machine(app, &m.id).await?;
        }
        self.api
            .start_machine(app, &m.id)
            .await
            .with_context(|| format!("Cannot start machine {}", m.id))?;
        // Everything recorded up to the start is history for `wait_healthy`.
        Ok(self.api.get_machine(app, &m.id).await?)
    }

    /// Takes traffic away from old machines, then destroys them.
    async fn retire(&mut self, group: &str, old: &[Machine]) -> anyhow::Result<()> {
        let ids: Vec<String> = old.iter().map(|m| m.id.clone()).collect();
        self.divert(&ids).await?;
        for m in old {
            self.api
                .delete_machine(&self.plan.app, &m.id, true)
                .await
                .with_context(|| format!("Cannot destroy machine {}", m.id))?;
            self.held.remove(&m.id);
            self.undo.push(Undo::Destroyed {
                group: group.to_owned(),
                region: m.region.clone(),
                config: Box::new(m.config.clone()),
            });
        }
        for m in old {
            wait_destroyed(self.api, &self.plan.app, &m.id, self.plan.wait_timeout).await?;
            self.progress
                .line(&format!("  {group}: destroyed old machine {}", m.id));
        }
        Ok(())
    }

    async fn divert(&mut self, ids: &[String]) -> anyhow::Result<()> {
        self.held.extend(ids.iter().cloned());
        self.traffic.divert(self.api, ids).await
    }

    async fn admit(&mut self, ids: &[String]) -> anyhow::Result<()> {
        self.traffic.admit(self.api, ids).await?;
        for id in ids {
            self.held.remove(id);
        }
        Ok(())
    }

    /// How long a rollback waits for each machine: the previous release served before this
    /// deploy, so it gets at least [`ROLLBACK_MIN_WAIT`] to pass its checks again even when
    /// the deploy's own timeout is short (a busy host restarts slower than `--wait-timeout`).
    fn rollback_wait(&self) -> Duration {
        self.plan.wait_timeout.max(ROLLBACK_MIN_WAIT)
    }

    /// Undoes every step, newest first, one machine at a time so the others keep serving.
    /// Returns how many steps there were and the first error (later steps are still tried).
    pub async fn roll_back(&mut self) -> (usize, anyhow::Result<()>) {
        let steps = std::mem::take(&mut self.undo);
        let count = steps.len();
        let mut first: Option<anyhow::Error> = None;
        for step in steps.into_iter().rev() {
            if let Err(e) = self.undo_step(step).await {
                self.progress.line(&format!("  {e:#}"));
                first.get_or_insert(e);
            }
        }
        // Machines left cordoned (an update that failed mid-batch) serve again.
        let left: Vec<String> = self.held.iter().cloned().collect();
        for id in left {
            if let Err(e) = self.admit(std::slice::from_ref(&id)).await {
                first.get_or_insert(e);
            }
        }
        (count, first.map_or(Ok(()), Err))
    }

    async fn undo_step(&mut self, step: Undo) -> anyhow::Result<()> {
        let app = &self.plan.app;
        let api = self.api;
        match step {
            Undo::Updated { id, old } => {
                if !self.held.contains(&id) {
                    self.divert(std::slice::from_ref(&id)).await?;
                }
                let m = api
                    .update_machine(
                        app,
                        &id,
                        &CreateMachineRequest {
                            config: *old,
                            ..CreateMachineRequest::default()
                        },
                    )
                    .await
                    .with_context(|| format!("Cannot roll back machine {id}"))?;
                let healthy =
                    wait_healthy(api, app, &m, self.rollback_wait(), &self.progress).await;
                // Even a previous release that is not healthy again gets its traffic back:
                // it is what served before this deploy.
                self.admit(std::slice::from_ref(&id)).await?;
                healthy.with_context(|| format!("Machine {id} rolled back but is not healthy"))?;
                self.progress
                    .line(&format!("  rolled back machine {id} to {}", m.config.image));
            }
            Undo::Created { id } => {
                if !self.held.contains(&id) {
                    self.divert(std::slice::from_ref(&id)).await?;
                }
                // A new machine that cannot be destroyed stays cordoned: no traffic for it.
                self.held.remove(&id);
                api.delete_machine(app, &id, true)
                    .await
                    .with_context(|| format!("Cannot destroy new machine {id}"))?;
                wait_destroyed(api, app, &id, self.rollback_wait()).await?;
                self.progress.line(&format!("  destroyed new machine {id}"));
            }
            Undo::Destroyed {
                group,
                region,
                config,
            } => {
                let m = self.start_cordoned(&config, &region).await?;
                wait_healthy(api, app, &m, self.rollback_wait(), &self.progress).await?;
                self.admit(std::slice::from_ref(&m.id)).await?;
                self.progress.line(&format!(
                    "  {group}: recreated machine {} in {region} for a destroyed one",
                    m.id
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_take_max_unavailable_but_never_the_whole_group() {
        let third = MaxUnavailable::Fraction(0.33);
        assert_eq!(batch_size(third, 1), 1);
        assert_eq!(batch_size(third, 2), 1);
        assert_eq!(batch_size(third, 3), 1, "0.99 rounds down, at least one");
        assert_eq!(batch_size(third, 10), 3);
        assert_eq!(batch_size(third, 50), 16);
        assert_eq!(batch_size(MaxUnavailable::Count(5), 3), 2);
        assert_eq!(batch_size(MaxUnavailable::Count(2), 10), 2);
        assert_eq!(batch_size(MaxUnavailable::Fraction(0.99), 4), 3);
    }
}
