//! The rollout engine: one deploy of one release as an explicit, persistable state machine.
//!
//! Owns the strategies (rolling, immediate, canary, bluegreen, with `max_unavailable` batches),
//! the per-machine steps (cordon, drain, update or replace, wait for checks, admit, destroy),
//! the undo log and the rollback it drives when a step fails or the deploy is cancelled, and
//! the events a person follows. A deploy is planned once into a list of [`Step`]s from the
//! app's machines; [`Deploy::advance`] takes one step (or one rollback step) at a time, and
//! the whole [`Deploy`] is serde-serialisable so its owner can store it after each step and
//! resume it after a restart: every step can be taken again after a crash in its middle.
//!
//! It acts only through the [`Ops`] trait (machines get/list/create/update/start/destroy,
//! cordon/admit, release command, clock and sleep): the control plane implements it over its
//! services, unit tests with a fake. It must never import HTTP (axum, reqwest, hyper), a
//! store, or `aloft-control`: the engine does not know where machines live or how it is
//! persisted. Wire types come from `aloft-api` only.

#![forbid(unsafe_code)]

mod engine;
mod health;
mod ops;
mod plan;
mod release;
mod state;
mod uncancelled;
mod waits;

pub use aloft_api::deploy::{DeployEvent, DeployPlan, DeployStatus, DeployStrategy};
pub use ops::{Ops, OpsError};
pub use plan::{batch_size, group_of, plan_steps, Role, Step, Target};
pub use release::{
    exit_code, release_argv, release_machine_config, ReleaseConfigError, RELEASE_GROUP,
};
pub use state::{Deploy, DeployError, Undo, DEPLOY_TAG};

#[cfg(test)]
mod tests;
