//! The rollout engine's operations over the control plane's own services: machines are
//! created, updated, cordoned and destroyed through [`Machines`] exactly as the Machines API
//! does it, so a deploy on the server leaves the same events and revisions a CLI deploy did.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aloft_api::deploy::DeployPlan;
use aloft_api::{CreateMachineRequest, Machine, MachineConfig, MachineState};
use aloft_deploy::{exit_code, release_machine_config, Ops, OpsError};

use crate::core::StoreError;
use crate::services::exec::Exec;
use crate::services::machines::{MachineError, Machines};

/// How often the release command machine is looked at.
const POLL: Duration = Duration::from_millis(500);

/// The operations of one deploy, made by `owner`.
pub(super) struct ControlOps {
    pub machines: Arc<Machines>,
    pub owner: String,
    pub cancel: Arc<AtomicBool>,
    pub exec: Exec,
}

/// How long reading a machine's log may take before a message goes without it.
const LOGS_DEADLINE: Duration = Duration::from_secs(5);
/// How many of the release command's last output lines a failure repeats.
const TAIL_LINES: usize = 8;

fn ops_error(e: MachineError) -> OpsError {
    match e {
        MachineError::Store(StoreError::MachineNotFound { id, .. }) => OpsError::NotFound(id),
        other => OpsError::Failed(other.to_string()),
    }
}

impl ControlOps {
    fn request(config: &MachineConfig) -> CreateMachineRequest {
        CreateMachineRequest {
            config: config.clone(),
            ..CreateMachineRequest::default()
        }
    }

    async fn run_release_command(
        &self,
        app: &str,
        version: u64,
        plan: &DeployPlan,
    ) -> Result<Vec<String>, OpsError> {
        let Some(rc) = &plan.release_command else {
            return Ok(Vec::new());
        };
        let config = release_machine_config(&plan.configs, &rc.command, version)
            .map_err(|e| OpsError::Failed(e.to_string()))?;
        let m = self
            .machines
            .create(
                app,
                CreateMachineRequest {
                    config,
                    region: Some(plan.region.clone()),
                    name: Some(format!("release-command-v{version}")),
                    ..CreateMachineRequest::default()
                },
                &self.owner,
            )
            .map_err(ops_error)?;
        let outcome = self.watch_release(app, &m.id, rc.timeout_secs).await;
        // Whatever happened, the one-off machine goes.
        if let Err(e) = self.destroy_machine(app, &m.id).await {
            tracing::warn!(%app, machine = %m.id, error = %e, "release command machine not destroyed");
        }
        // Its resources are free for the rollout once the host has destroyed it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.get_machine(app, &m.id).await {
                Ok(m) if m.state != MachineState::Destroyed => tokio::time::sleep(POLL).await,
                _ => break,
            }
        }
        outcome
    }

    /// The machine's log lines (time, stream, message), oldest first; empty when they cannot
    /// be had quickly.
    async fn log_lines(&self, app: &str, id: &str) -> Vec<(i64, String, String)> {
        let Ok(mut lines) = self.exec.logs(app, None, Some(id), false) else {
            return Vec::new();
        };
        let read = async {
            let mut out = Vec::new();
            while let Some(line) = lines.next().await {
                if let Ok(e) = serde_json::from_slice::<aloft_api::LogEntry>(&line) {
                    let ms = chrono::DateTime::parse_from_rfc3339(&e.timestamp)
                        .map_or(0, |t| t.timestamp_millis());
                    out.push((ms, e.stream, e.message));
                }
            }
            out.sort_by_key(|(ms, _, _)| *ms);
            out
        };
        tokio::time::timeout(LOGS_DEADLINE, read)
            .await
            .unwrap_or_default()
    }

    /// What the machine's process printed (not the platform's own lines).
    async fn output(&self, app: &str, id: &str) -> Vec<String> {
        self.log_lines(app, id)
            .await
            .into_iter()
            .filter(|(_, stream, _)| stream != "init")
            .map(|(_, _, m)| m)
            .collect()
    }

    /// The release command's last output lines as a suffix of an error message.
    async fn tail(&self, app: &str, id: &str) -> String {
        let lines = self.output(app, id).await;
        if lines.is_empty() {
            return String::new();
        }
        let start = lines.len().saturating_sub(TAIL_LINES);
        let mut out = String::from("; its last output:");
        for line in &lines[start..] {
            out.push_str("\n  | ");
            out.push_str(line);
        }
        out
    }

    async fn watch_release(
        &self,
        app: &str,
        id: &str,
        timeout_secs: u64,
    ) -> Result<Vec<String>, OpsError> {
        let deadline = Instant::now() + Duration::from_secs(timeout_secs);
        loop {
            let m = self.get_machine(app, id).await?;
            if let Some(code) = exit_code(&m.events) {
                if code == 0 {
                    return Ok(self.output(app, id).await);
                }
                let tail = self.tail(app, id).await;
                return Err(OpsError::Failed(format!(
                    "release command failed with exit code {code}; deploy aborted{tail}"
                )));
            }
            if matches!(
                m.state,
                MachineState::Stopped | MachineState::Failed | MachineState::Destroyed
            ) {
                let why = m
                    .events
                    .iter()
                    .rev()
                    .find_map(|e| {
                        e.request
                            .as_ref()?
                            .get("message")?
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "no exit event".to_owned());
                let tail = self.tail(app, id).await;
                return Err(OpsError::Failed(format!(
                    "release command machine {id} is {} without an exit code ({why}); deploy aborted{tail}",
                    m.state
                )));
            }
            if Instant::now() >= deadline {
                let tail = self.tail(app, id).await;
                return Err(OpsError::Failed(format!(
                    "release command timed out after {timeout_secs}s; deploy aborted{tail}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[async_trait::async_trait]
impl Ops for ControlOps {
    async fn list_machines(&self, app: &str) -> Result<Vec<Machine>, OpsError> {
        let all = self
            .machines
            .list(app, None, None, false, &BTreeMap::new())
            .map_err(ops_error)?;
        Ok(all
            .into_iter()
            .filter(|m| !matches!(m.state, MachineState::Destroyed | MachineState::Destroying))
            .collect())
    }

    async fn get_machine(&self, app: &str, id: &str) -> Result<Machine, OpsError> {
        self.machines.get(app, id).map_err(ops_error)
    }

    async fn create_machine(
        &self,
        app: &str,
        config: &MachineConfig,
        region: &str,
        skip_launch: bool,
    ) -> Result<Machine, OpsError> {
        let mut req = Self::request(config);
        req.region = Some(region.to_owned());
        req.skip_launch = skip_launch;
        self.machines
            .create(app, req, &self.owner)
            .map_err(ops_error)
    }

    async fn start_machine(&self, app: &str, id: &str) -> Result<(), OpsError> {
        self.machines
            .start(app, id, None)
            .map(drop)
            .map_err(ops_error)
    }

    async fn update_machine(
        &self,
        app: &str,
        id: &str,
        config: &MachineConfig,
    ) -> Result<Machine, OpsError> {
        self.machines
            .update(app, id, Self::request(config), None)
            .map_err(ops_error)
    }

    async fn destroy_machine(&self, app: &str, id: &str) -> Result<(), OpsError> {
        self.machines
            .delete(app, id, true, false, None)
            .map_err(ops_error)
    }

    /// The route table edges follow is built from the store, so a cordon written there is
    /// what the next table shows: there is nothing more to confirm here.
    async fn cordon(&self, app: &str, ids: &[String], _confirm: bool) -> Result<(), OpsError> {
        for id in ids {
            self.machines
                .set_cordon(app, id, true, None)
                .map_err(ops_error)?;
        }
        Ok(())
    }

    async fn admit(&self, app: &str, ids: &[String]) -> Result<(), OpsError> {
        for id in ids {
            self.machines
                .set_cordon(app, id, false, None)
                .map_err(ops_error)?;
        }
        Ok(())
    }

    async fn release_command(
        &self,
        app: &str,
        version: u64,
        plan: &DeployPlan,
    ) -> Result<Vec<String>, OpsError> {
        self.run_release_command(app, version, plan).await
    }

    async fn last_log_lines(&self, app: &str, id: &str, n: usize, since_ms: i64) -> Vec<String> {
        let mut entries = self.log_lines(app, id).await;
        // Only the current instance's lines, unless that leaves none (the host's clock may be
        // behind the control plane's).
        if entries.iter().any(|(ms, _, _)| *ms >= since_ms) {
            entries.retain(|(ms, _, _)| *ms >= since_ms);
        }
        let skip = entries.len().saturating_sub(n);
        entries.into_iter().skip(skip).map(|(_, _, m)| m).collect()
    }

    fn wall_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}
