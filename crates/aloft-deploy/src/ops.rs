//! What the engine needs from the world, as one trait.

use std::time::{Duration, Instant};

use aloft_api::deploy::DeployPlan;
use aloft_api::{Machine, MachineConfig};

/// A failed operation, as the implementation words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpsError {
    /// The machine does not exist (any more).
    #[error("machine {0} not found")]
    NotFound(String),
    /// Anything else: the message says what failed.
    #[error("{0}")]
    Failed(String),
}

/// The operations a deploy takes. Every method acts on one app's machines.
#[async_trait::async_trait]
pub trait Ops: Send + Sync {
    /// The app's machines that are not destroyed or being destroyed.
    async fn list_machines(&self, app: &str) -> Result<Vec<Machine>, OpsError>;
    async fn get_machine(&self, app: &str, id: &str) -> Result<Machine, OpsError>;
    /// Creates a machine in `region`; `skip_launch` leaves it `created` (not started).
    async fn create_machine(
        &self,
        app: &str,
        config: &MachineConfig,
        region: &str,
        skip_launch: bool,
    ) -> Result<Machine, OpsError>;
    async fn start_machine(&self, app: &str, id: &str) -> Result<(), OpsError>;
    /// Gives a machine a new config (a new instance); returns it as updated.
    async fn update_machine(
        &self,
        app: &str,
        id: &str,
        config: &MachineConfig,
    ) -> Result<Machine, OpsError>;
    /// Destroys a machine (forced); it may take a moment to be `destroyed`.
    async fn destroy_machine(&self, app: &str, id: &str) -> Result<(), OpsError>;
    /// Cordons machines; with `confirm`, returns only once the edges' route table shows it.
    async fn cordon(&self, app: &str, ids: &[String], confirm: bool) -> Result<(), OpsError>;
    /// Uncordons machines and returns once the route table shows them routable.
    async fn admit(&self, app: &str, ids: &[String]) -> Result<(), OpsError>;
    /// Runs `plan.release_command` for release `version` in a one-off machine; returns the
    /// lines it printed, or why it failed (its exit code, a timeout, its last lines).
    async fn release_command(
        &self,
        app: &str,
        version: u64,
        plan: &DeployPlan,
    ) -> Result<Vec<String>, OpsError>;
    /// The last `n` lines machine `id` logged since `since_ms` (empty when unknown).
    async fn last_log_lines(&self, app: &str, id: &str, n: usize, since_ms: i64) -> Vec<String> {
        let _ = (app, id, n, since_ms);
        Vec::new()
    }
    /// Milliseconds since the Unix epoch (event timestamps).
    fn wall_ms(&self) -> i64;
    fn now(&self) -> Instant;
    /// Whether the deploy was asked to stop (checked between steps and while waiting).
    fn cancelled(&self) -> bool {
        false
    }
    async fn sleep(&self, d: Duration);
}
