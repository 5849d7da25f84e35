//! Changing one machine: update, start, stop, suspend, restart, signal, cordon, destroy.

use aloft_api::{
    CreateMachineRequest, DesiredState, Machine, MachineState, StartResponse, StopRequest,
};

use super::{event, go, validate_config, validate_signal, Caller, MachineError, Machines};
use crate::core::state::is_active;

impl Machines {
    /// A new config: a new version and instance; a running machine is replaced.
    pub fn update(
        &self,
        app: &str,
        id: &str,
        req: CreateMachineRequest,
        nonce: Option<&str>,
    ) -> Result<Machine, MachineError> {
        let mut req = req;
        let (cpus, memory_mb) = validate_config(&req.config)?;
        let (image, image_ref) = self.images.pin(app, &req.config.image)?;
        req.config.image = image;
        let (_, machine) = self.mutate(app, id, Caller::User(nonce), |row, extra, inner| {
            if row.state == MachineState::Destroyed || row.state == MachineState::Destroying {
                return Err(MachineError::WrongState(format!("Machine {id} is {} and cannot be updated", row.state)));
            }
            if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty() && *r != row.region) {
                return Err(MachineError::Invalid(format!(
                    "Machine {id} is in region {:?} and cannot move to {region:?}; create a new machine there",
                    row.region
                )));
            }
            self.check_limits(inner.db(), app, Some(id), (cpus, memory_mb))?;
            if let Some(host) = inner.host_capacity(&row.host_id) {
                if host.free_cpus() + row.cpus < cpus || host.free_memory_mb() + row.memory_mb < memory_mb {
                    return Err(MachineError::Unplaceable(format!(
                        "Host of machine {id} in region {:?} has no room for {cpus} CPUs and {memory_mb} MB",
                        row.region
                    )));
                }
            }
            if let Some(name) = req.name.as_deref().filter(|n| !n.is_empty()) {
                name.clone_into(&mut row.name);
            }
            row.config = req.config;
            row.image_ref = image_ref;
            row.cpus = cpus;
            row.memory_mb = memory_mb;
            row.version = crate::core::ids::ulid();
            row.instance_id = row.version.clone();
            // Check results describe the old instance; the new one reports its own.
            row.checks.clear();
            extra.new_version = true;
            extra.events.push(event("update", "replacing", "user"));
            if matches!(row.state, MachineState::Started | MachineState::Starting) {
                row.desired = DesiredState::Started;
                go(row, extra, MachineState::Replacing, "update", "user")?;
            } else if !req.skip_launch {
                row.desired = DesiredState::Started;
                go(row, extra, MachineState::Starting, "start", "user")?;
            }
            Ok(())
        })?;
        Ok(machine)
    }

    pub fn start(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<StartResponse, MachineError> {
        let (previous_state, _) = self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            let previous = row.state;
            row.desired = DesiredState::Started;
            if !matches!(row.state, MachineState::Started | MachineState::Starting) {
                go(row, extra, MachineState::Starting, "start", "user")?;
                // A failed machine already wants to be started: the new sequence number is
                // what tells its agent to try again.
                row.restart_seq += 1;
            }
            Ok(previous)
        })?;
        Ok(StartResponse {
            previous_state,
            migrated: false,
            new_host: String::new(),
        })
    }

    pub fn stop(
        &self,
        app: &str,
        id: &str,
        req: StopRequest,
        nonce: Option<&str>,
    ) -> Result<(), MachineError> {
        if let Some(signal) = &req.signal {
            validate_signal(signal)?;
        }
        let timeout = req.timeout.as_ref().map(stop_timeout).transpose()?;
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            row.desired = DesiredState::Stopped;
            row.stop_signal = req.signal;
            row.stop_timeout = timeout;
            if !matches!(row.state, MachineState::Stopped | MachineState::Stopping) {
                go(row, extra, MachineState::Stopping, "stop", "user")?;
            }
            Ok(())
        })?;
        Ok(())
    }

    pub fn suspend(&self, app: &str, id: &str, nonce: Option<&str>) -> Result<(), MachineError> {
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            row.desired = DesiredState::Suspended;
            if !matches!(
                row.state,
                MachineState::Suspended | MachineState::Suspending
            ) {
                go(row, extra, MachineState::Suspending, "suspend", "user")?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Restarts a started machine; the old process is stopped with `signal` and given
    /// `timeout` (a duration such as `"10s"`, or seconds) before it is killed.
    pub fn restart(
        &self,
        app: &str,
        id: &str,
        signal: Option<&str>,
        timeout: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<(), MachineError> {
        if let Some(signal) = signal {
            validate_signal(signal)?;
        }
        let timeout = timeout
            .map(|t| match t.parse::<u64>() {
                Ok(seconds) => Ok(seconds),
                Err(_) => stop_timeout(&serde_json::Value::String(t.to_owned())),
            })
            .transpose()?;
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            if row.state != MachineState::Started {
                return Err(MachineError::WrongState(format!(
                    "Machine {id} is {}, not started; start it instead",
                    row.state
                )));
            }
            row.stop_signal = signal.map(str::to_owned);
            row.stop_timeout = timeout;
            row.restart_seq += 1;
            row.desired = DesiredState::Started;
            go(row, extra, MachineState::Starting, "restart", "user")
        })?;
        Ok(())
    }

    pub fn signal(
        &self,
        app: &str,
        id: &str,
        signal: &str,
        nonce: Option<&str>,
    ) -> Result<(), MachineError> {
        validate_signal(signal)?;
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            if row.state != MachineState::Started {
                return Err(MachineError::WrongState(format!(
                    "Machine {id} is {}, not started",
                    row.state
                )));
            }
            let seq = row.signal.as_ref().map_or(0, |s| s.seq) + 1;
            row.signal = Some(aloft_api::SignalOrder {
                seq,
                signal: signal.to_owned(),
            });
            extra.events.push(event("signal", signal, "user"));
            Ok(())
        })?;
        Ok(())
    }

    pub fn set_cordon(
        &self,
        app: &str,
        id: &str,
        cordoned: bool,
        nonce: Option<&str>,
    ) -> Result<(), MachineError> {
        self.mutate(app, id, Caller::User(nonce), |row, extra, _| {
            row.cordoned = cordoned;
            extra.events.push(event(
                if cordoned { "cordon" } else { "uncordon" },
                row.state.as_str(),
                "user",
            ));
            Ok(())
        })?;
        Ok(())
    }

    /// Destroys a machine: the agent confirms, unless its host is unreachable and `force`.
    /// A running machine needs `force`, or `kill` (SIGKILL with no grace period first).
    pub fn delete(
        &self,
        app: &str,
        id: &str,
        force: bool,
        kill: bool,
        nonce: Option<&str>,
    ) -> Result<(), MachineError> {
        let force = force || kill;
        let live_since = self.hosts.live_since();
        self.mutate(app, id, Caller::User(nonce), |row, extra, inner| {
            if row.state == MachineState::Destroyed {
                return Ok(());
            }
            if is_active(row.state) && !force {
                return Err(MachineError::WrongState(format!(
                    "Machine {id} is {}; stop it first or delete with force=true",
                    row.state
                )));
            }
            row.desired = DesiredState::Destroyed;
            row.lease = None;
            if kill {
                row.stop_signal = Some("SIGKILL".to_owned());
                row.stop_timeout = Some(0);
            }
            if row.state != MachineState::Destroying {
                go(row, extra, MachineState::Destroying, "destroy", "user")?;
            }
            if force && inner.host_status(&row.host_id, live_since) != aloft_api::HostStatus::Ok {
                go(row, extra, MachineState::Destroyed, "destroy", "user")?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// A stop timeout (`"10s"`, nanoseconds, or Go's `{"time.Duration": ns}`) in whole seconds.
fn stop_timeout(value: &serde_json::Value) -> Result<u64, MachineError> {
    aloft_api::parse_fly_duration(value)
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            MachineError::Invalid(format!(
                "Stop timeout {value} is not a duration such as \"10s\""
            ))
        })
}
