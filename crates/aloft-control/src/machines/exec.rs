//! Where exec and log requests go: the host agent running a machine, with the secret its API
//! accepts (reported at registration, kept in the `host_secrets` table).

use aloft_api::{HostStatus, MachineState};
use rusqlite::{params, OptionalExtension};

use crate::api::ApiError;
use crate::control::Control;
use crate::store::{Inner, MachineRow};

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

impl Control {
    /// Keeps the secret a host's agent API accepts (hosts that report none keep their old one).
    pub fn record_host_secret(&self, host: &str, secret: Option<&str>) -> Result<(), ApiError> {
        let Some(secret) = secret else {
            return Ok(());
        };
        let inner = self.lock();
        inner.conn.execute(
            "INSERT INTO host_secrets (host_id, secret) VALUES (?1, ?2)
             ON CONFLICT (host_id) DO UPDATE SET secret = ?2",
            params![host, secret],
        )?;
        Ok(())
    }

    /// The agent to exec in a machine through: 404 for an unknown machine, 412 unless it is
    /// started, 503 when its host is unreachable or has no API.
    pub fn exec_target(&self, app: &str, id: &str) -> Result<AgentTarget, ApiError> {
        let inner = self.lock();
        inner.get_app(app)?;
        let row = MachineRow::load(&inner.conn, app, id)?;
        if row.state != MachineState::Started {
            return Err(ApiError::Precondition(format!(
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
    ) -> Result<Vec<AgentTarget>, ApiError> {
        let inner = self.lock();
        inner.get_app(app)?;
        if let Some(id) = machine {
            MachineRow::load(&inner.conn, app, id)?;
        }
        let rows = MachineRow::list(&inner.conn, app, false)?;
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

    fn target(&self, inner: &Inner, row: &MachineRow) -> Result<AgentTarget, ApiError> {
        let unavailable = |why: &str| {
            ApiError::Unavailable(format!("Host {} of machine {} {why}", row.host_id, row.id))
        };
        if inner.host_status(&row.host_id, self.live_since()) != HostStatus::Ok {
            return Err(unavailable("is unreachable"));
        }
        let found: Option<(String, Option<String>)> = inner
            .conn
            .query_row(
                "SELECT h.address, s.secret FROM hosts h LEFT JOIN host_secrets s ON s.host_id = h.id
                 WHERE h.id = ?1",
                [&row.host_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
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
