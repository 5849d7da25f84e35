//! `[deploy] release_command`: the one-off machine that runs it, like Fly's release machines.
//!
//! The machine gets the release's config of the `app` group (or the first group) with no
//! services, checks or mounts, `restart: no`, `RELEASE_COMMAND=1` in its env, and the command
//! split into words with shell rules as its `cmd` (the image's entrypoint stays).

use std::collections::BTreeMap;

use aloft_api::{MachineConfig, MachineEvent};

/// `fly_process_group` of release command machines (Fly's name).
pub const RELEASE_GROUP: &str = "fly_app_release_command";

/// Why a release command machine cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseConfigError {
    #[error("[deploy] release_command {0:?} is not a command line (unbalanced quotes?)")]
    NotACommand(String),
    #[error("The config has no process group to run the release command with")]
    NoGroup,
}

/// The command split into words with shell rules.
pub fn release_argv(command: &str) -> Result<Vec<String>, ReleaseConfigError> {
    shlex::split(command)
        .filter(|words| !words.is_empty())
        .ok_or_else(|| ReleaseConfigError::NotACommand(command.to_owned()))
}

/// The one-off machine's config for release `version`.
pub fn release_machine_config(
    configs: &BTreeMap<String, MachineConfig>,
    command: &str,
    version: u64,
) -> Result<MachineConfig, ReleaseConfigError> {
    let argv = release_argv(command)?;
    let mut config = configs
        .get("app")
        .or_else(|| configs.values().next())
        .cloned()
        .ok_or(ReleaseConfigError::NoGroup)?;
    config.services = None;
    config.checks = None;
    config.mounts = None;
    config.schedule = None;
    config.auto_destroy = None;
    config.restart = Some(aloft_api::MachineRestart {
        policy: Some("no".to_owned()),
        max_retries: None,
        extra: Default::default(),
    });
    let mut init = config.init.take().unwrap_or_default();
    init.exec = None;
    init.cmd = Some(argv);
    config.init = Some(init);
    config
        .env
        .get_or_insert_with(Default::default)
        .insert("RELEASE_COMMAND".to_owned(), "1".to_owned());
    let metadata = config.metadata.get_or_insert_with(Default::default);
    metadata.insert("fly_process_group".to_owned(), RELEASE_GROUP.to_owned());
    metadata.insert("fly_release_version".to_owned(), version.to_string());
    Ok(config)
}

/// The exit code of the machine's process, from the `exit` event the host reported.
pub fn exit_code(events: &[MachineEvent]) -> Option<i64> {
    events.iter().filter(|e| e.kind == "exit").find_map(|e| {
        e.request
            .as_ref()?
            .get("exit_event")?
            .get("exit_code")?
            .as_i64()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_off_machine_runs_the_command_without_traffic_or_volumes() {
        let mut app: MachineConfig = serde_json::from_value(
            serde_json::json!({"image": "reg/web:1", "env": {"MODE": "prod"},
                "mounts": [{"volume": "data", "path": "/data"}]}),
        )
        .unwrap();
        app.checks = Some(Default::default());
        let configs = BTreeMap::from([("app".to_owned(), app)]);
        let c = release_machine_config(&configs, "bin/migrate --to 'v 2'", 7).unwrap();
        assert_eq!(c.image, "reg/web:1");
        let cmd = c.init.as_ref().and_then(|i| i.cmd.clone()).unwrap();
        assert_eq!(cmd, ["bin/migrate", "--to", "v 2"]);
        assert!(c.services.is_none() && c.checks.is_none() && c.mounts.is_none());
        assert_eq!(c.restart.unwrap().policy.as_deref(), Some("no"));
        let env = c.env.unwrap();
        assert_eq!(env["MODE"], "prod");
        assert_eq!(env["RELEASE_COMMAND"], "1");
        let md = c.metadata.unwrap();
        assert_eq!(md["fly_process_group"], RELEASE_GROUP);
        assert_eq!(md["fly_release_version"], "7");
        assert!(release_machine_config(&configs, "sh -c 'exit 3", 1).is_err());
        assert!(release_machine_config(&configs, "   ", 1).is_err());
    }
}
