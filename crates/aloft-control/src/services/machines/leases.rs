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

    /// One metadata value; a key the machine does not have is `NotFound`.
    pub fn metadata_value(&self, app: &str, id: &str, key: &str) -> Result<String, MachineError> {
        self.metadata(app, id)?.remove(key).ok_or_else(|| {
            MachineError::NotFound(format!("Machine {id} has no metadata key {key:?}"))
        })
    }

    /// Sets several keys at once (a `None` or empty value removes the key), without a new
    /// version; with `machine_version`, only while the machine is at that version.
    pub fn update_metadata(
        &self,
        app: &str,
        id: &str,
        changes: BTreeMap<String, Option<String>>,
        machine_version: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<(), MachineError> {
        if let Some(key) = changes.keys().find(|k| !metadata_key_ok(k)) {
            return Err(invalid_key(key));
        }
        self.mutate(app, id, Caller::User(nonce), |row, _, _| {
            if let Some(want) = machine_version.filter(|v| !v.is_empty()) {
                if want != row.version {
                    return Err(MachineError::WrongState(format!(
                        "Machine {id} is at version {}, not {want}",
                        row.version
                    )));
                }
            }
            let metadata = row.config.metadata.get_or_insert_with(BTreeMap::new);
            for (key, value) in changes {
                match value.filter(|v| !v.is_empty()) {
                    Some(value) => {
                        metadata.insert(key, value);
                    }
                    None => {
                        metadata.remove(&key);
                    }
                }
            }
            Ok(())
        })?;
        Ok(())
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
        if !metadata_key_ok(key) {
            return Err(invalid_key(key));
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

fn metadata_key_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= 256
}

fn invalid_key(key: &str) -> MachineError {
    MachineError::Invalid(format!("Metadata key {key:?} must be 1-256 characters"))
}
