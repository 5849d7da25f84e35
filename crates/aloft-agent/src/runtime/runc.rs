//! Thin wrapper over the `runc` command line, with its own `--root` state directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::Command;

use super::RuntimeError;

#[derive(Debug, Clone)]
pub(crate) struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
}

/// The fields of `runc state` we use.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RuncState {
    pub status: String,
    #[serde(default)]
    pub pid: i64,
}

impl Runc {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd.stdin(Stdio::null()).kill_on_drop(false);
        cmd
    }

    /// Run a runc subcommand that does not leave processes behind, capturing its output.
    async fn run(&self, id: &str, args: &[OsString]) -> Result<Vec<u8>, RuntimeError> {
        let what = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out =
            self.command()
                .args(args)
                .output()
                .await
                .map_err(|source| RuntimeError::Spawn {
                    program: self.binary.clone(),
                    source,
                })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuntimeError::Runc {
                command: what,
                id: id.to_string(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// `runc run --detach`: creates and starts the container in one runc invocation. The
    /// container's stdio is /dev/null (never a pipe to us, so it outlives the agent); runc's
    /// own errors go to `log`.
    pub async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
    ) -> Result<(), RuntimeError> {
        let _ = std::fs::remove_file(log);
        let status = self
            .command()
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|source| RuntimeError::Spawn {
                program: self.binary.clone(),
                source,
            })?;
        if status.success() {
            return Ok(());
        }
        Err(RuntimeError::Runc {
            command: "run".into(),
            id: id.to_string(),
            message: last_errors(log),
        })
    }

    /// Whether runc may know the container: it keeps a state directory per container under
    /// its root, so without one `runc state` would only say "does not exist" (and spawning
    /// runc to hear that costs milliseconds).
    pub fn may_know(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    /// `runc state`, or `None` when runc does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<RuncState>, RuntimeError> {
        if !self.may_know(id) {
            return Ok(None);
        }
        match self.run(id, &["state".into(), id.into()]).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| RuntimeError::Runc {
                    command: "state".into(),
                    id: id.to_string(),
                    message: format!("unreadable state: {e}"),
                }),
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(test)]
    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(id, &["pause".into(), id.into()]).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(id, &["resume".into(), id.into()]).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.run(id, &["kill".into(), id.into(), signal.to_string().into()])
            .await
            .map(drop)
    }

    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.may_know(id) {
            return Ok(());
        }
        match self
            .run(id, &["delete".into(), "--force".into(), id.into()])
            .await
        {
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }
}

/// The error messages of a runc JSON log, joined.
fn last_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect();
    if errors.is_empty() {
        "runc failed without a logged error".to_string()
    } else {
        errors.join("; ")
    }
}
