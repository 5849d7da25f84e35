//! The host's credential: handed out by the control plane when the host enrols with a join
//! token, kept in `DATA_DIR/host-credential` (mode 0600), and presented from then on for
//! everything (watch, reports, heartbeats, the edge's route table, registry pulls). The join
//! token is only needed again if the file is lost and the operator removed the host.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::AgentError;

/// The credential's file in the data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("host-credential")
}

/// The saved credential, if this host enrolled before.
pub fn load(data_dir: &Path) -> Result<Option<String>, AgentError> {
    let path = path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// Saves the credential, readable by the agent's user only (written to a new file that
/// replaces the old one, so a crash never leaves half a credential).
pub fn save(data_dir: &Path, credential: &str) -> Result<(), AgentError> {
    let path = path(data_dir);
    let tmp = data_dir.join("host-credential.new");
    let io = |source| AgentError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(credential.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn saves_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        save(dir.path(), "aloft_host_abc").unwrap();
        save(dir.path(), "aloft_host_def").unwrap();
        assert_eq!(load(dir.path()).unwrap().as_deref(), Some("aloft_host_def"));
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
