//! Wire types between the host's runtime driver and `aloft-init`.
//!
//! Paths are inside the machine. The driver bind-mounts:
//! - the init binary read-only at [`INIT_PATH`],
//! - the [`RunConfig`] JSON read-only at [`RUN_CONFIG_PATH`],
//! - a host directory read-write at [`LOG_DIR`] (app log [`LOG_FILE`], one rotation
//!   [`LOG_FILE_ROTATED`], and [`EXIT_FILE`]),
//! - a host directory read-write at [`RUN_DIR`] holding the exec socket [`SOCKET_NAME`].
//!
//! The socket speaks one JSON line in ([`InitRequest`]) and one JSON line out
//! ([`ExecResponse`] or [`SignalResponse`]) per connection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the init binary is mounted inside the machine.
pub const INIT_PATH: &str = "/.aloft/init";
/// Where the run configuration is mounted inside the machine.
pub const RUN_CONFIG_PATH: &str = "/.aloft/run.json";
/// Log directory inside the machine.
pub const LOG_DIR: &str = "/.aloft/log";
/// Runtime directory (exec socket) inside the machine.
pub const RUN_DIR: &str = "/.aloft/run";
/// File name of the exec socket in the run directory.
pub const SOCKET_NAME: &str = "init.sock";
/// File name of the current app log (JSON lines of [`LogRecord`]).
pub const LOG_FILE: &str = "app.log";
/// File name of the previous app log after one rotation.
pub const LOG_FILE_ROTATED: &str = "app.log.1";
/// File name of the exit record ([`ExitRecord`]) written when the main process ends.
pub const EXIT_FILE: &str = "exit.json";

/// Default cap of one log file before it is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Cap on each of stdout and stderr collected for one exec.
pub const EXEC_OUTPUT_MAX_BYTES: usize = 1024 * 1024;

/// What init runs: written by the driver, read by init at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Program and arguments (entrypoint + cmd, already resolved).
    pub args: Vec<String>,
    /// Environment of the main process and of exec'd commands.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Numeric user id to run as.
    #[serde(default)]
    pub uid: u32,
    /// Numeric group id to run as.
    #[serde(default)]
    pub gid: u32,
    /// Log directory (defaults to [`LOG_DIR`]).
    #[serde(default = "default_log_dir")]
    pub log_dir: String,
    /// Runtime directory holding the exec socket (defaults to [`RUN_DIR`]).
    #[serde(default = "default_run_dir")]
    pub run_dir: String,
    /// Size cap of one log file.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// How long init lets leftover processes handle SIGTERM after the main process ends.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

fn default_cwd() -> String {
    "/".to_owned()
}
fn default_log_dir() -> String {
    LOG_DIR.to_owned()
}
fn default_run_dir() -> String {
    RUN_DIR.to_owned()
}
fn default_log_max_bytes() -> u64 {
    DEFAULT_LOG_MAX_BYTES
}
fn default_shutdown_grace_ms() -> u64 {
    2000
}

impl RunConfig {
    /// A configuration running `args` as root in `/` with default paths.
    pub fn new(args: Vec<String>) -> Self {
        Self {
            args,
            env: Vec::new(),
            cwd: default_cwd(),
            uid: 0,
            gid: 0,
            log_dir: default_log_dir(),
            run_dir: default_run_dir(),
            log_max_bytes: default_log_max_bytes(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

/// One request on the exec socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitRequest {
    /// Deliver a signal to the main process group.
    Signal(SignalRequest),
    /// Run a command in the machine.
    Exec(ExecRequest),
}

/// `{"signal": N}`: deliver signal N to the main process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: i32,
}

/// Answer to a [`SignalRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalResponse {
    /// Whether the signal was delivered (false when the main process is gone).
    pub delivered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Run a command inside the machine, as the machine's user, in its working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// Extra environment on top of the machine's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Bytes fed to the command's stdin (base64 on the wire); stdin is empty when absent.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Vec<u8>>,
    /// Kill the command (its whole process group) after this long.
    pub timeout_ms: u64,
}

/// Answer to an [`ExecRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Exit code; 128 + signal when killed by a signal; 127 when it could not be started.
    pub exit_code: i32,
    #[serde(with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(with = "b64")]
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// One line of the app log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// `stdout`, `stderr` or `init` (init's own messages).
    pub stream: String,
    pub line: String,
}

/// How the main process ended, written to [`EXIT_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_and_signal_requests_are_told_apart() {
        let exec: InitRequest = serde_json::from_str(
            r#"{"cmd":["cat"],"env":{"A":"1"},"stdin":"aGk=","timeout_ms":500}"#,
        )
        .unwrap();
        match exec {
            InitRequest::Exec(req) => {
                assert_eq!(req.cmd, vec!["cat"]);
                assert_eq!(req.stdin.as_deref(), Some(&b"hi"[..]));
                assert_eq!(req.env.get("A").map(String::as_str), Some("1"));
            }
            other => panic!("expected exec, got {other:?}"),
        }
        let signal: InitRequest = serde_json::from_str(r#"{"signal":15}"#).unwrap();
        assert_eq!(signal, InitRequest::Signal(SignalRequest { signal: 15 }));
    }

    #[test]
    fn exec_response_round_trips_binary_output() {
        let resp = ExecResponse {
            exit_code: 3,
            stdout: vec![0, 255, 10],
            stderr: b"err".to_vec(),
            timed_out: false,
        };
        let text = serde_json::to_string(&resp).unwrap();
        assert!(text.contains("\"stdout\":\"AP8K\""), "{text}");
        assert_eq!(serde_json::from_str::<ExecResponse>(&text).unwrap(), resp);
    }

    #[test]
    fn run_config_defaults_fill_paths() {
        let cfg: RunConfig = serde_json::from_str(r#"{"args":["/bin/sh"]}"#).unwrap();
        assert_eq!(cfg, RunConfig::new(vec!["/bin/sh".into()]));
        assert!(serde_json::from_str::<RunConfig>(r#"{"args":[],"bogus":1}"#).is_err());
    }
}
