//! `[deploy] release_command`: run once per deploy, before the rollout, in a one-off machine of
//! the new release's image, like Fly's release machines.
//!
//! The machine gets the release's config of the `app` group (its image, env and guest; the
//! app's secrets come with every machine of the app) with no services, checks or mounts,
//! `restart: no`, `RELEASE_COMMAND=1` in its env, and the command split into words with shell
//! rules as its `cmd` (the image's entrypoint stays). It is created in the primary region, its
//! log lines are printed as they come, and its exit code is read from the `exit` event the
//! host reports. The CLI destroys it once it has stopped (or timed out), after reading its
//! last log lines: the host would remove the log with the machine, so the machine is not
//! created `auto_destroy`. A machine left behind by an interrupted deploy is destroyed by the
//! next one.

use std::time::{Duration, Instant};

use aloft_api::{Client, CreateMachineRequest, LogsQuery, Machine, MachineConfig, MachineState};
use futures::StreamExt as _;

use super::health::wait_destroyed;
use super::{group_of, live_machines, Plan};
use crate::context::UsageError;

/// `fly_process_group` of release command machines (Fly's name).
pub const GROUP: &str = "fly_app_release_command";
/// How often the machine and its log are read while the command runs.
const POLL: Duration = Duration::from_millis(500);
/// How many of the command's last log lines a failure repeats.
const TAIL_LINES: usize = 8;

/// The command and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseCommand {
    pub command: String,
    pub timeout: Duration,
}

/// How a release command ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseCommandError {
    #[error("release command failed with exit code {code}; deploy aborted{tail}")]
    Failed { code: i64, tail: String },
    #[error("release command timed out after {secs}s; deploy aborted{tail}")]
    TimedOut { secs: u64, tail: String },
    #[error("release command machine {id} is {state} without an exit code ({why}); deploy aborted{tail}")]
    NoExitCode {
        id: String,
        state: MachineState,
        why: String,
        tail: String,
    },
}

/// The command split into words with shell rules.
pub fn argv(command: &str) -> Result<Vec<String>, UsageError> {
    shlex::split(command)
        .filter(|words| !words.is_empty())
        .ok_or_else(|| {
            UsageError(format!(
                "[deploy] release_command {command:?} is not a command line (unbalanced quotes?)"
            ))
        })
}

/// The one-off machine's config: the `app` group's config (or the first group's) running
/// `command` once.
pub fn machine_config(
    configs: &std::collections::BTreeMap<String, MachineConfig>,
    command: &str,
    version: u64,
) -> Result<MachineConfig, UsageError> {
    let argv = argv(command)?;
    let mut config = configs
        .get(aloft_config::DEFAULT_PROCESS_GROUP)
        .or_else(|| configs.values().next())
        .cloned()
        .ok_or_else(|| {
            UsageError("The config has no process group to run the release command with".into())
        })?;
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
    metadata.insert("fly_process_group".to_owned(), GROUP.to_owned());
    metadata.insert("fly_release_version".to_owned(), version.to_string());
    Ok(config)
}

/// Runs the release command of release `version` to its end; `Ok` only for exit code 0.
pub async fn run(
    api: &Client,
    plan: &Plan,
    version: u64,
    rc: &ReleaseCommand,
) -> anyhow::Result<()> {
    let config = machine_config(&plan.configs, &rc.command, version)?;
    remove_leftovers(api, &plan.app).await?;
    let program = config
        .init
        .as_ref()
        .and_then(|i| i.cmd.as_ref())
        .and_then(|c| c.first())
        .cloned()
        .unwrap_or_default();
    println!("Running release command: {program}");
    let m = api
        .create_machine(
            &plan.app,
            &CreateMachineRequest {
                config,
                region: Some(plan.region.clone()),
                name: Some(format!("release-command-v{version}")),
                ..CreateMachineRequest::default()
            },
        )
        .await?;
    println!("  machine {} in {}", m.id, plan.region);
    let mut logs = Logs::default();
    let outcome = watch(api, &plan.app, &m, rc.timeout, &mut logs).await;
    // Whatever happened, the one-off machine goes.
    match api.delete_machine(&plan.app, &m.id, true).await {
        Ok(_) => {
            if let Err(e) = wait_destroyed(api, &plan.app, &m.id, Duration::from_secs(30)).await {
                eprintln!(
                    "warning: release command machine {} not destroyed yet: {e:#}",
                    m.id
                );
            }
        }
        Err(e) if e.status() == Some(404) => {}
        Err(e) => eprintln!(
            "warning: cannot destroy release command machine {}: {e}",
            m.id
        ),
    }
    outcome
}

/// Destroys release command machines an interrupted deploy left.
async fn remove_leftovers(api: &Client, app: &str) -> anyhow::Result<()> {
    for old in live_machines(api, app).await? {
        if group_of(&old) == GROUP {
            println!(
                "  removing release command machine {} of an earlier deploy",
                old.id
            );
            match api.delete_machine(app, &old.id, true).await {
                Ok(_) => {}
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Waits for the machine's process to end, printing its log lines; the exit code decides.
async fn watch(
    api: &Client,
    app: &str,
    created: &Machine,
    timeout: Duration,
    logs: &mut Logs,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = api.get_machine(app, &created.id).await?;
        logs.poll(api, app, &m.id).await;
        if let Some(code) = exit_code(&m.events) {
            // The host has written everything by the time it reports the exit.
            logs.poll(api, app, &m.id).await;
            if code == 0 {
                println!("  release command finished (exit code 0)");
                return Ok(());
            }
            return Err(ReleaseCommandError::Failed {
                code,
                tail: logs.tail(),
            }
            .into());
        }
        if matches!(
            m.state,
            MachineState::Stopped | MachineState::Failed | MachineState::Destroyed
        ) {
            logs.poll(api, app, &m.id).await;
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
            return Err(ReleaseCommandError::NoExitCode {
                id: m.id.clone(),
                state: m.state,
                why,
                tail: logs.tail(),
            }
            .into());
        }
        if Instant::now() >= deadline {
            return Err(ReleaseCommandError::TimedOut {
                secs: timeout.as_secs(),
                tail: logs.tail(),
            }
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The exit code of the machine's process, from the `exit` event the host reported.
fn exit_code(events: &[aloft_api::MachineEvent]) -> Option<i64> {
    events.iter().filter(|e| e.kind == "exit").find_map(|e| {
        e.request
            .as_ref()?
            .get("exit_event")?
            .get("exit_code")?
            .as_i64()
    })
}

/// The command's output lines printed so far.
#[derive(Default)]
struct Logs {
    lines: Vec<String>,
}

impl Logs {
    /// Reads the machine's log and prints the lines not printed yet (stdout and stderr; the
    /// platform's own lines are left out). A log that cannot be read now is read next time.
    async fn poll(&mut self, api: &Client, app: &str, id: &str) {
        let query = LogsQuery {
            machine: Some(id.to_owned()),
            ..LogsQuery::default()
        };
        let Ok(stream) = api.app_logs(app, &query).await else {
            return;
        };
        let entries: Vec<_> = stream.collect().await;
        let lines: Vec<String> = entries
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.stream != "init")
            .map(|e| e.message)
            .collect();
        if lines.len() <= self.lines.len() {
            return;
        }
        for line in &lines[self.lines.len()..] {
            println!("  | {line}");
        }
        self.lines = lines;
    }

    /// The last lines, as a suffix of an error message (empty without output).
    fn tail(&self) -> String {
        if self.lines.is_empty() {
            return String::new();
        }
        let start = self.lines.len().saturating_sub(TAIL_LINES);
        let mut out = String::from("; its last output:");
        for line in &self.lines[start..] {
            out.push_str("\n  | ");
            out.push_str(line);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> std::collections::BTreeMap<String, MachineConfig> {
        let text = "app = \"web\"\nprimary_region = \"ams\"\n[env]\nMODE = \"prod\"\n\
                    [http_service]\ninternal_port = 8080\n[[mounts]]\nsource = \"data\"\n\
                    destination = \"/data\"\n[checks.web]\ntype = \"tcp\"\nport = 8080\n";
        let loaded = aloft_config::parse("aloft.toml", text).unwrap();
        loaded.config.machine_configs("reg/web:1")
    }

    #[test]
    fn the_one_off_machine_runs_the_command_without_traffic_or_volumes() {
        let c = machine_config(&configs(), "bin/migrate --to 'v 2'", 7).unwrap();
        assert_eq!(c.image, "reg/web:1");
        let cmd = c.init.as_ref().and_then(|i| i.cmd.clone()).unwrap();
        assert_eq!(cmd, ["bin/migrate", "--to", "v 2"]);
        assert!(c.services.is_none() && c.checks.is_none() && c.mounts.is_none());
        assert_eq!(c.restart.unwrap().policy.as_deref(), Some("no"));
        let env = c.env.unwrap();
        assert_eq!(env["MODE"], "prod");
        assert_eq!(env["RELEASE_COMMAND"], "1");
        let md = c.metadata.unwrap();
        assert_eq!(md["fly_process_group"], GROUP);
        assert_eq!(md["fly_release_version"], "7");
    }

    #[test]
    fn an_unbalanced_quote_is_refused() {
        assert!(machine_config(&configs(), "sh -c 'exit 3", 1).is_err());
        assert!(machine_config(&configs(), "   ", 1).is_err());
    }

    #[test]
    fn the_exit_code_comes_from_the_exit_event() {
        let event = |kind: &str, request: Option<serde_json::Value>| aloft_api::MachineEvent {
            id: kind.to_owned(),
            kind: kind.to_owned(),
            status: "x".to_owned(),
            source: "flyd".to_owned(),
            timestamp: 1,
            request,
        };
        assert_eq!(exit_code(&[event("launch", None)]), None);
        let events = [
            event("launch", None),
            event(
                "exit",
                Some(serde_json::json!({"exit_event": {"exit_code": 3}})),
            ),
        ];
        assert_eq!(exit_code(&events), Some(3));
    }
}
