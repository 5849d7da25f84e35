//! Leases, metadata, events and versions of a machine.

use std::collections::BTreeMap;

use aloft_api::{Lease, MachineEvent, MachineVersion};

use super::{checked_ttl, new_lease, unix_now, Caller, MachineError, Machines, DEFAULT_LEASE_TTL};

impl Machines {
    pub fn get_lease(&self, app: &str, id: &str) -> Result<Lease, MachineError> {
        let inner = self.store.lock();
        let row = inner.db().machine(app, id)?;
        row.active_lease(unix_now())
            .cloned()
            .ok_or_else(|| MachineError::NotFound(format!("Machine {id} has no active lease")))
    }

    /// Takes a lease, or extends it when `nonce` is the current one.
    pub fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Option<u64>,
        description: Option<String>,
        owner: &str,
        nonce: Option<&str>,
    ) -> Result<Lease, MachineError> {
        let ttl = checked_ttl(ttl.unwrap_or(DEFAULT_LEASE_TTL))?;
        let (lease, _) = self.mutate(app, id, Caller::User(nonce), |row, _, _| {
            let lease = match row.active_lease(unix_now()) {
                Some(current) => Lease {
                    expires_at: unix_now() + ttl as i64,
                    description: description.unwrap_or_else(|| current.description.clone()),
                    ..current.clone()
                },
                None => new_lease(row, ttl, owner, description.as_deref().unwrap_or("")),
            };
            row.lease = Some(lease.clone());
            Ok(lease)
        })?;
        Ok(lease)
    }

    pub fn release_lease(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<(), MachineError> {
        self.mutate(app, id, Caller::User(nonce), |row, _, _| {
            if row.active_lease(unix_now()).is_none() {
                return Err(MachineError::NotFound(format!(
                    "Machine {id} has no active lease"
                )));
            }
            row.lease = None;
            Ok(())
        })?;
        Ok(())
    }

    pub fn metadata(&self, app: &str, id: &str) -> Result<BTreeMap<String, String>, MachineError> {
        let inner = self.store.lock();
        let row = inner.db().machine(app, id)?;
        Ok(row.config.metadata.unwrap_or_default())
    }

    /// Sets (`Some`) or removes (`None`) a metadata key without a new version.
    pub fn set_metadata(
        &self,
        app: &str,
        id: &str,
        key: &str,
        value: Option<String>,
        nonce: Option<&str>,
    ) -> Result<(), MachineError> {
        if key.is_empty() || key.len() > 256 {
            return Err(MachineError::Invalid(format!(
                "Metadata key {key:?} must be 1-256 characters"
            )));
        }
        self.mutate(app, id, Caller::User(nonce), |row, _, _| {
            let metadata = row.config.metadata.get_or_insert_with(BTreeMap::new);
            match value {
                Some(value) => {
                    metadata.insert(key.to_owned(), value);
                }
                None => {
                    metadata.remove(key);
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    pub fn events(&self, app: &str, id: &str) -> Result<Vec<MachineEvent>, MachineError> {
        let inner = self.store.lock();
        inner.db().machine(app, id)?;
        Ok(inner.db().machine_events(id, 1000)?)
    }

    pub fn versions(&self, app: &str, id: &str) -> Result<Vec<MachineVersion>, MachineError> {
        let inner = self.store.lock();
        inner.db().machine(app, id)?;
        Ok(inner.db().machine_versions(id)?)
    }
}
