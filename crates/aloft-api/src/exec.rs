//! Exec and logs: the Machines API's `exec` and the app log stream, and the host agent's API
//! the control plane proxies them to.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Body of `POST /v1/apps/{app}/machines/{id}/exec` (Fly's shape) and of the agent's
/// `POST /machines/{id}/exec`. `command` wins over `cmd`, which is split on whitespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Written to the command's standard input, then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Seconds before the command is killed (default 30, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// The command that lists a machine's processes as JSON `ProcessStat`s: the machine's init
/// (`aloft-init`, mounted read-only at this path in every machine) in its `ps` mode.
pub const MACHINE_PS_COMMAND: &[&str] = &["/.aloft/init", "ps"];

/// Default seconds an exec may run.
pub const EXEC_DEFAULT_TIMEOUT: u64 = 30;
/// Most seconds an exec may run.
pub const EXEC_MAX_TIMEOUT: u64 = 3600;

impl ExecRequest {
    /// The program and arguments, or a message saying what is missing.
    pub fn argv(&self) -> Result<Vec<String>, String> {
        let argv = match (&self.command, &self.cmd) {
            (Some(c), _) if !c.is_empty() => c.clone(),
            (_, Some(cmd)) => cmd.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        if argv.is_empty() || argv[0].is_empty() {
            return Err("Exec needs a non-empty `command` array or `cmd` string".to_owned());
        }
        Ok(argv)
    }

    /// The timeout in seconds, defaulted and capped.
    pub fn timeout_secs(&self) -> u64 {
        self.timeout
            .unwrap_or(EXEC_DEFAULT_TIMEOUT)
            .clamp(1, EXEC_MAX_TIMEOUT)
    }
}

/// Answer of an exec (Fly's shape). Output that is not UTF-8 is converted lossily.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    pub exit_code: i64,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Set when the command was killed for running past its timeout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

/// Query of `GET /v1/apps/{app}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only machines in this region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Keep the stream open and send new lines as they are written.
    #[serde(default)]
    pub follow: bool,
}

/// Query of the agent's `GET /machines/{id}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentLogsQuery {
    #[serde(default)]
    pub follow: bool,
    /// Only lines written at or after this time (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// One log line, as `GET /v1/apps/{app}/logs` streams them (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// RFC 3339 with milliseconds.
    pub timestamp: String,
    pub message: String,
    /// `info` for stdout, `error` for stderr, `debug` for the platform's own lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// The machine id.
    pub instance: String,
    pub region: String,
    /// `stdout`, `stderr` or `init`.
    pub stream: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_wins_over_cmd_and_empty_is_refused() {
        let req = ExecRequest {
            command: Some(vec!["ls".into(), "-la".into()]),
            cmd: Some("echo hi".into()),
            ..ExecRequest::default()
        };
        assert_eq!(req.argv().unwrap(), ["ls", "-la"]);
        let req = ExecRequest {
            cmd: Some("  echo  hi ".into()),
            ..ExecRequest::default()
        };
        assert_eq!(req.argv().unwrap(), ["echo", "hi"]);
        assert!(ExecRequest::default().argv().is_err());
        assert_eq!(ExecRequest::default().timeout_secs(), EXEC_DEFAULT_TIMEOUT);
    }
}
