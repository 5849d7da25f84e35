//! A rollback's view of [`Ops`]: the same operations with cancellation hidden, so a cancelled
//! deploy's rollback still waits for the machines it gives back.

use std::time::{Duration, Instant};

use aloft_api::{Machine, MachineConfig};

use crate::ops::{Ops, OpsError};

/// `ops` with cancellation hidden.
pub(crate) struct Uncancelled<'a>(pub(crate) &'a dyn Ops);

#[async_trait::async_trait]
impl Ops for Uncancelled<'_> {
    async fn list_machines(&self, app: &str) -> Result<Vec<Machine>, OpsError> {
        self.0.list_machines(app).await
    }
    async fn get_machine(&self, app: &str, id: &str) -> Result<Machine, OpsError> {
        self.0.get_machine(app, id).await
    }
    async fn create_machine(
        &self,
        app: &str,
        config: &MachineConfig,
        region: &str,
        skip_launch: bool,
    ) -> Result<Machine, OpsError> {
        self.0
            .create_machine(app, config, region, skip_launch)
            .await
    }
    async fn start_machine(&self, app: &str, id: &str) -> Result<(), OpsError> {
        self.0.start_machine(app, id).await
    }
    async fn update_machine(
        &self,
        app: &str,
        id: &str,
        config: &MachineConfig,
    ) -> Result<Machine, OpsError> {
        self.0.update_machine(app, id, config).await
    }
    async fn destroy_machine(&self, app: &str, id: &str) -> Result<(), OpsError> {
        self.0.destroy_machine(app, id).await
    }
    async fn cordon(&self, app: &str, ids: &[String], confirm: bool) -> Result<(), OpsError> {
        self.0.cordon(app, ids, confirm).await
    }
    async fn admit(&self, app: &str, ids: &[String]) -> Result<(), OpsError> {
        self.0.admit(app, ids).await
    }
    async fn release_command(
        &self,
        app: &str,
        version: u64,
        plan: &aloft_api::deploy::DeployPlan,
    ) -> Result<Vec<String>, OpsError> {
        self.0.release_command(app, version, plan).await
    }
    async fn last_log_lines(&self, app: &str, id: &str, n: usize, since_ms: i64) -> Vec<String> {
        self.0.last_log_lines(app, id, n, since_ms).await
    }
    fn wall_ms(&self) -> i64 {
        self.0.wall_ms()
    }
    fn now(&self) -> Instant {
        self.0.now()
    }
    async fn sleep(&self, d: Duration) {
        self.0.sleep(d).await
    }
}
