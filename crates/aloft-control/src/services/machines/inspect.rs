//! Reading machines without changing them: memory, and an organization's machines across
//! its apps.

use aloft_api::{MachineState, MemoryResponse, OrgMachine, OrgMachineConfig};

use super::{MachineError, Machines};

/// Filters of an organization listing.
#[derive(Debug, Clone, Default)]
pub struct OrgFilter<'a> {
    /// Only this app's machines (a token limited to one app).
    pub app: Option<&'a str>,
    pub region: Option<&'a str>,
    pub states: Option<Vec<MachineState>>,
    pub include_deleted: bool,
    pub summary: bool,
    /// RFC 3339; only machines updated after it.
    pub updated_after: Option<&'a str>,
    pub limit: usize,
}

/// Parses a comma list of state names.
pub fn parse_states(states: &str) -> Result<Vec<MachineState>, MachineError> {
    states
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            MachineState::parse(name).ok_or_else(|| {
                MachineError::Invalid(format!("Unknown machine state {name:?} in state filter"))
            })
        })
        .collect()
}

impl Machines {
    /// The machine's memory limit (its config's) and what its host could still give it.
    pub fn memory(&self, app: &str, id: &str) -> Result<MemoryResponse, MachineError> {
        let inner = self.store.lock();
        inner.db().require_app(app)?;
        let row = inner.db().machine(app, id)?;
        let available_mb = inner
            .host_capacity(&row.host_id)
            .map_or(0, |h| h.free_memory_mb());
        Ok(MemoryResponse {
            limit_mb: row.memory_mb,
            available_mb,
        })
    }

    /// The machines of every app of `org`, oldest update first.
    pub fn org_machines(
        &self,
        org: &str,
        filter: &OrgFilter<'_>,
    ) -> Result<Vec<OrgMachine>, MachineError> {
        let after = filter
            .updated_after
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t).map_err(|_| {
                    MachineError::Invalid(format!("updated_after {t:?} is not an RFC 3339 time"))
                })
            })
            .transpose()?;
        let inner = self.store.lock();
        let db = inner.db();
        if !db.org_exists(org)? {
            return Err(MachineError::NotFound(format!(
                "Organization {org:?} not found"
            )));
        }
        let mut out = Vec::new();
        for (app, app_org) in db.app_orgs()? {
            if app_org != org || filter.app.is_some_and(|only| only != app) {
                continue;
            }
            for row in db.machines(&app, filter.include_deleted)? {
                let updated = chrono::DateTime::parse_from_rfc3339(&row.updated_at).ok();
                if filter.region.is_some_and(|r| r != row.region)
                    || filter
                        .states
                        .as_ref()
                        .is_some_and(|s| !s.contains(&row.state))
                    || after.is_some_and(|a| updated.is_none_or(|u| u <= a))
                {
                    continue;
                }
                out.push(OrgMachine {
                    config: (!filter.summary).then(|| OrgMachineConfig {
                        image: row.config.image.clone(),
                        guest: row.config.guest.clone(),
                        metadata: row.config.metadata.clone(),
                    }),
                    id: row.id,
                    name: row.name,
                    app_name: app.clone(),
                    state: row.state.to_string(),
                    region: row.region,
                    private_ip: row.private_ip,
                    version: row.version,
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                });
            }
        }
        out.sort_by(|a, b| a.updated_at.cmp(&b.updated_at).then(a.id.cmp(&b.id)));
        out.truncate(filter.limit);
        Ok(out)
    }
}
