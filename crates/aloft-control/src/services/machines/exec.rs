//! Where exec and log requests go: the host agent running a machine, with the secret its API
//! accepts (reported at registration).

use aloft_api::{HostStatus, MachineState};

use super::{MachineError, Machines};
use crate::core::store::MachineRow;
use crate::core::Inner;

/// The agent API serving one machine.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    pub machine: String,
    pub region: String,
    pub host: String,
    /// `ip:port` of the agent's API.
    pub address: String,
    pub secret: String,
}

impl Machines {
    /// The agent to exec in a machine through; fails for an unknown machine, one that is not
    /// started, or one whose host is unreachable or has no agent API.
    pub fn exec_target(&self, app: &str, id: &str) -> Result<AgentTarget, MachineError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        let row = inner.db().machine(app, id)?;
        if row.state != MachineState::Started {
            return Err(MachineError::WrongState(format!(
                "Machine {id} is {}, not started; start it before running commands in it",
                row.state
            )));
        }
        self.target(&inner, &row)
    }

    /// The agents holding the logs of an app's machines (not destroyed), optionally only in
    /// one region or of one machine. Machines whose host cannot be reached are left out.
    pub fn log_targets(
        &self,
        app: &str,
        region: Option<&str>,
        machine: Option<&str>,
    ) -> Result<Vec<AgentTarget>, MachineError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        if let Some(id) = machine {
            inner.db().machine(app, id)?;
        }
        let rows = inner.db().machines(app, false)?;
        Ok(rows
            .iter()
            .filter(|r| region.is_none_or(|want| r.region == want))
            .filter(|r| machine.is_none_or(|want| r.id == want))
            .filter_map(|r| match self.target(&inner, r) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::debug!(machine = %r.id, error = %e, "machine's logs left out");
                    None
                }
            })
            .collect())
    }

    fn target(&self, inner: &Inner, row: &MachineRow) -> Result<AgentTarget, MachineError> {
        let unavailable = |why: &str| {
            MachineError::HostUnavailable(format!(
                "Host {} of machine {} {why}",
                row.host_id, row.id
            ))
        };
        if inner.host_status(&row.host_id, self.hosts.live_since()) != HostStatus::Ok {
            return Err(unavailable("is unreachable"));
        }
        let found = inner.db().agent_api(&row.host_id)?;
        let Some((address, Some(secret))) = found else {
            return Err(unavailable("has no agent API (an agent older than exec?)"));
        };
        Ok(AgentTarget {
            machine: row.id.clone(),
            region: row.region.clone(),
            host: row.host_id.clone(),
            address,
            secret,
        })
    }
}
