//! Turning a plan and the app's machines into the list of steps a deploy takes.
//!
//! - `rolling`: batches of `max_unavailable` machines (at least one, never the whole group)
//!   are cordoned, drained, updated in place, waited on until healthy and admitted. A group of
//!   one surges instead: the replacement starts cordoned, becomes healthy and takes traffic
//!   before the old machine is cordoned, drained and destroyed.
//! - `canary`: one new machine first; once healthy it takes traffic, then the group's other
//!   machines roll as above and the last old one is retired.
//! - `bluegreen`: a full new set (one per old machine, same regions) starts cordoned; once all
//!   are healthy they take traffic and the old set is cordoned, drained and destroyed.
//! - `immediate`: every machine is updated at once, nothing waits.

use aloft_api::deploy::{DeployPlan, DeployStrategy, MaxUnavailableSpec};
use aloft_api::{Machine, MachineConfig};
use serde::{Deserialize, Serialize};

/// A machine a step acts on: one that existed when the deploy was planned, or one an earlier
/// step of the deploy creates (its id is known once that step is taken).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Machine(String),
    Slot(u32),
}

/// Why a step creates a machine (what the events say about it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A group's first machine in a region; it takes traffic as soon as it starts.
    First,
    /// A replacement, cordoned until it is healthy.
    Replacement,
    /// A canary, cordoned until it is healthy.
    Canary,
    /// One of a bluegreen deploy's green set.
    Green,
}

/// One step of a deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// `[deploy] release_command`, before any machine is touched.
    ReleaseCommand,
    /// A new machine of `group` in `region` (cordoned unless its role is `First`).
    Create {
        group: String,
        region: String,
        slot: u32,
        role: Role,
    },
    /// Cordon serving machines, wait until the route table shows it, drain.
    Divert { targets: Vec<Target> },
    /// Give a machine the group's new config in place.
    Update {
        group: String,
        machine: String,
        region: String,
        old: Box<MachineConfig>,
    },
    /// Wait until every target is healthy.
    Wait { targets: Vec<Target> },
    /// Uncordon healthy machines.
    Admit { targets: Vec<Target> },
    /// Destroy an old machine (already diverted) and wait until it is gone.
    Destroy {
        group: String,
        machine: String,
        region: String,
        old: Box<MachineConfig>,
    },
    /// A line for the events; `{machine}` stands for `target`'s id.
    Note {
        group: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<Target>,
    },
}

/// How many machines of a group of `n` a rolling batch takes: `max_unavailable` of them,
/// at least one, and never all of them (a group of one surges instead).
pub fn batch_size(max: MaxUnavailableSpec, n: usize) -> usize {
    let k = match max {
        MaxUnavailableSpec::Fraction(f) => (f * n as f64).floor() as usize,
        MaxUnavailableSpec::Count(c) => c as usize,
    };
    k.clamp(1, n.saturating_sub(1).max(1))
}

/// The process group a machine belongs to (`app` when its metadata does not say).
pub fn group_of(m: &Machine) -> &str {
    m.config
        .metadata
        .as_ref()
        .and_then(|md| md.get("fly_process_group"))
        .map_or("app", String::as_str)
}

/// The steps that roll `plan` out over the app's live `machines`.
pub fn plan_steps(plan: &DeployPlan, machines: &[Machine]) -> Vec<Step> {
    let mut p = Planner {
        steps: Vec::new(),
        next_slot: 0,
        plan,
    };
    if plan.release_command.is_some() {
        p.steps.push(Step::ReleaseCommand);
    }
    let wait = plan.strategy != DeployStrategy::Immediate;
    for group in plan.configs.keys() {
        let all: Vec<&Machine> = machines.iter().filter(|m| group_of(m) == group).collect();
        let mine: Vec<&Machine> = all
            .iter()
            .filter(|m| plan.regions.as_ref().is_none_or(|r| r.contains(&m.region)))
            .copied()
            .collect();
        let empty = empty_regions(plan, &all);
        if !empty.is_empty() {
            p.first_machines(group, &empty, wait);
        }
        if mine.is_empty() {
            continue;
        }
        if !wait {
            for m in &mine {
                p.update(group, m);
            }
            continue;
        }
        match plan.strategy {
            DeployStrategy::Rolling | DeployStrategy::Immediate => p.rolling(group, &mine),
            DeployStrategy::Canary => p.canary(group, &mine),
            DeployStrategy::Bluegreen => p.bluegreen(group, &mine),
        }
    }
    p.steps
}

/// The regions where a group whose live machines are `group` gets new ones: the primary region
/// (or each of `regions`) when it has none at all; with `regions`, also each listed region
/// where it has none.
fn empty_regions(plan: &DeployPlan, group: &[&Machine]) -> Vec<String> {
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

struct Planner<'a> {
    steps: Vec<Step>,
    next_slot: u32,
    plan: &'a DeployPlan,
}

fn ids(machines: &[&Machine]) -> Vec<Target> {
    machines
        .iter()
        .map(|m| Target::Machine(m.id.clone()))
        .collect()
}

impl Planner<'_> {
    fn create(&mut self, group: &str, region: &str, role: Role) -> Target {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.steps.push(Step::Create {
            group: group.to_owned(),
            region: region.to_owned(),
            slot,
            role,
        });
        Target::Slot(slot)
    }

    fn update(&mut self, group: &str, m: &Machine) {
        self.steps.push(Step::Update {
            group: group.to_owned(),
            machine: m.id.clone(),
            region: m.region.clone(),
            old: Box::new(m.config.clone()),
        });
    }

    fn first_machines(&mut self, group: &str, regions: &[String], wait: bool) {
        let mut created = Vec::new();
        for region in regions {
            for _ in 0..self.plan.per_region.max(1) {
                created.push(self.create(group, region, Role::First));
            }
        }
        if wait {
            self.steps.push(Step::Wait { targets: created });
        }
    }

    /// Cordon, drain, update, wait until healthy, admit.
    fn replace_in_place(&mut self, group: &str, chunk: &[&Machine]) {
        self.steps.push(Step::Divert {
            targets: ids(chunk),
        });
        for m in chunk {
            self.update(group, m);
        }
        self.steps.push(Step::Wait {
            targets: ids(chunk),
        });
        self.steps.push(Step::Admit {
            targets: ids(chunk),
        });
    }

    /// Takes traffic away from old machines, then destroys them.
    fn retire(&mut self, group: &str, old: &[&Machine]) {
        self.steps.push(Step::Divert { targets: ids(old) });
        for m in old {
            self.steps.push(Step::Destroy {
                group: group.to_owned(),
                machine: m.id.clone(),
                region: m.region.clone(),
                old: Box::new(m.config.clone()),
            });
        }
    }

    fn rolling(&mut self, group: &str, mine: &[&Machine]) {
        if let [only] = mine {
            let new = self.create(group, &only.region, Role::Replacement);
            self.steps.push(Step::Wait {
                targets: vec![new.clone()],
            });
            self.steps.push(Step::Admit { targets: vec![new] });
            self.retire(group, &[only]);
            return;
        }
        let batch = batch_size(self.plan.max_unavailable, mine.len());
        for chunk in mine.chunks(batch) {
            self.replace_in_place(group, chunk);
        }
    }

    fn canary(&mut self, group: &str, mine: &[&Machine]) {
        let Some((last, rest)) = mine.split_last() else {
            return;
        };
        let canary = self.create(group, &last.region, Role::Canary);
        self.steps.push(Step::Wait {
            targets: vec![canary.clone()],
        });
        self.steps.push(Step::Admit {
            targets: vec![canary.clone()],
        });
        self.steps.push(Step::Note {
            group: group.to_owned(),
            text: "canary {machine} is healthy and takes traffic".to_owned(),
            target: Some(canary),
        });
        if !rest.is_empty() {
            let batch = batch_size(self.plan.max_unavailable, mine.len());
            for chunk in rest.chunks(batch) {
                self.replace_in_place(group, chunk);
            }
        }
        self.retire(group, &[last]);
    }

    fn bluegreen(&mut self, group: &str, blue: &[&Machine]) {
        let green: Vec<Target> = blue
            .iter()
            .map(|m| self.create(group, &m.region, Role::Green))
            .collect();
        self.steps.push(Step::Note {
            group: group.to_owned(),
            text: format!(
                "{} green machine(s) started alongside the blue set",
                green.len()
            ),
            target: None,
        });
        self.steps.push(Step::Wait {
            targets: green.clone(),
        });
        self.steps.push(Step::Admit { targets: green });
        self.steps.push(Step::Note {
            group: group.to_owned(),
            text: "green set healthy; cutting traffic over".to_owned(),
            target: None,
        });
        self.retire(group, blue);
    }
}
