//! The agent's durable store: one SQLite file per host.
//!
//! Every step of a machine's local lifecycle is written here before it is taken, so a
//! restarted agent knows what it was doing and re-adopts or resumes it. The store holds the
//! latest assignment from the control plane and the watch revision it came with, written in
//! one transaction so a crash never resumes past an assignment it did not record.
//!
//! An assignment's secrets are never written in the clear: they are sealed with
//! ChaCha20-Poly1305 under a key kept next to the database (`secrets.key`, mode 0600) and bound
//! to the machine id, and the assignment JSON is stored without them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;

use aloft_api::AssignedMachine;
use rusqlite::{params, Connection, OptionalExtension};

/// What can go wrong with the agent's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Agent store {path} cannot be opened")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("Agent store query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("Stored assignment of machine {id} is not valid JSON")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("The store's secrets key or database {path} cannot be read, created or restricted")]
    Key {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The store's secrets key {0} is not 32 bytes")]
    KeyLength(PathBuf),
    #[error("The sealed secrets of machine {0} cannot be opened with this host's key")]
    Unseal(String),
}

/// Reads the store's key, creating it (32 random bytes, mode 0600) on first use.
fn load_or_create_key(path: &Path) -> Result<[u8; 32], StoreError> {
    let io = |source| StoreError::Key {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            <[u8; 32]>::try_from(bytes).map_err(|_| StoreError::KeyLength(path.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            file.write_all(&key).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// Makes the database and its WAL files readable by the agent's user only (SQLite creates
/// them with the process umask).
fn restrict_files(db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut name = db.as_os_str().to_owned();
    let base = name.clone();
    for suffix in ["", "-wal", "-shm"] {
        name.clone_from(&base);
        name.push(suffix);
        match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Where a machine is in its local lifecycle. Each value is recorded before the step it
/// names is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Assigned, nothing done yet.
    Pending,
    /// Pulling the image, preparing network and rootfs, starting the sandbox.
    Starting,
    /// The sandbox was started.
    Running,
    /// Stop requested from the runtime.
    Stopping,
    /// Not running; rootfs and network kept.
    Stopped,
    /// Tearing down sandbox, rootfs and network.
    Destroying,
    /// Starting failed or the process exited and is not restarted.
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Destroying => "destroying",
            Phase::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Phase {
        match s {
            "starting" => Phase::Starting,
            "running" => Phase::Running,
            "stopping" => Phase::Stopping,
            "stopped" => Phase::Stopped,
            "destroying" => Phase::Destroying,
            "failed" => Phase::Failed,
            _ => Phase::Pending,
        }
    }
}

/// One machine as the agent keeps it.
#[derive(Debug, Clone)]
pub struct LocalMachine {
    pub assignment: AssignedMachine,
    pub phase: Phase,
    /// The instance the sandbox runs (or last ran).
    pub running_instance: Option<String>,
    /// The last restart and signal orders carried out.
    pub restart_seq: u64,
    pub signal_seq: u64,
    /// Restarts done by the restart policy since the last start order.
    pub restarts: u32,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    assignment TEXT NOT NULL,
    phase TEXT NOT NULL,
    running_instance TEXT,
    restart_seq INTEGER NOT NULL DEFAULT 0,
    signal_seq INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    ipv4 TEXT,
    ipv6 TEXT
);
"#,
    r#"
ALTER TABLE machines ADD COLUMN sealed_secrets BLOB;
"#,
];

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct AgentStore {
    conn: Arc<Mutex<Connection>>,
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for AgentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentStore")
    }
}

impl AgentStore {
    /// Opens (and migrates) `path`.
    pub fn open(path: &Path) -> Result<AgentStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // In WAL mode NORMAL commits reach the OS before the call returns (so every step is
        // recorded before it is taken, whatever happens to the agent) without an fsync each;
        // only a power loss can take back the last commits, and it takes the machines too.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let version = usize::try_from(version).unwrap_or(0);
        if version < MIGRATIONS.len() {
            let tx = conn.transaction().map_err(open_err)?;
            for m in &MIGRATIONS[version..] {
                tx.execute_batch(m).map_err(open_err)?;
            }
            tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
                .map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        restrict_files(path).map_err(|source| StoreError::Key {
            path: path.to_owned(),
            source,
        })?;
        let key_path = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("secrets.key");
        let store = AgentStore {
            conn: Arc::new(Mutex::new(conn)),
            key: Arc::new(load_or_create_key(&key_path)?),
        };
        store.seal_plaintext_secrets()?;
        Ok(store)
    }

    /// Seals secrets that an older store kept inside the assignment JSON.
    fn seal_plaintext_secrets(&self) -> Result<(), StoreError> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, assignment FROM machines
                 WHERE sealed_secrets IS NULL AND assignment LIKE '%\"secrets\"%'",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        for (id, json) in rows {
            let m: AssignedMachine =
                serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { id, source })?;
            if !m.secrets.is_empty() {
                self.write_assignment(None, &m)?;
            }
        }
        Ok(())
    }

    /// The assignment JSON without secrets, and the secrets sealed (none: NULL).
    fn seal(&self, m: &AssignedMachine) -> Result<(String, Option<Vec<u8>>), StoreError> {
        let corrupt = |source| StoreError::Corrupt {
            id: m.id.clone(),
            source,
        };
        let sealed = if m.secrets.is_empty() {
            None
        } else {
            let plain = serde_json::to_vec(&m.secrets).map_err(corrupt)?;
            let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
            let mut nonce = [0u8; 12];
            rand::rng().fill_bytes(&mut nonce);
            let sealed = cipher
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &plain,
                        aad: m.id.as_bytes(),
                    },
                )
                .map_err(|_| StoreError::Unseal(m.id.clone()))?;
            Some([nonce.to_vec(), sealed].concat())
        };
        let mut bare = m.clone();
        bare.secrets = BTreeMap::new();
        Ok((serde_json::to_string(&bare).map_err(corrupt)?, sealed))
    }

    fn unseal(&self, id: &str, sealed: &[u8]) -> Result<BTreeMap<String, String>, StoreError> {
        if sealed.len() < 12 {
            return Err(StoreError::Unseal(id.to_owned()));
        }
        let (nonce, data) = sealed.split_at(12);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: data,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Unseal(id.to_owned()))?;
        serde_json::from_slice(&plain).map_err(|source| StoreError::Corrupt {
            id: id.to_owned(),
            source,
        })
    }

    /// Writes an assignment (secrets sealed), with the watch revision it came with if any.
    fn write_assignment(
        &self,
        revision: Option<u64>,
        m: &AssignedMachine,
    ) -> Result<(), StoreError> {
        let (json, sealed) = self.seal(m)?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO machines (id, assignment, phase, sealed_secrets)
                 VALUES (?1, ?2, 'pending', ?3)
                 ON CONFLICT(id) DO UPDATE SET assignment = excluded.assignment,
                        sealed_secrets = excluded.sealed_secrets",
                params![m.id, json, sealed],
            )?;
            if let Some(revision) = revision {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('revision', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [revision.to_string()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
    }

    /// The watch revision the agent has recorded everything up to.
    pub fn revision(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta("revision")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Records an assignment and the revision it came with, atomically.
    pub fn record_assignment(&self, revision: u64, m: &AssignedMachine) -> Result<(), StoreError> {
        self.write_assignment(Some(revision), m)
    }

    /// Records the revision of a keep-alive.
    pub fn record_revision(&self, revision: u64) -> Result<(), StoreError> {
        if revision > self.revision()? {
            self.set_meta("revision", &revision.to_string())?;
        }
        Ok(())
    }

    /// Every machine the agent knows.
    pub fn machines(&self) -> Result<Vec<LocalMachine>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, assignment, phase, running_instance, restart_seq, signal_seq,
                        restarts, ipv4, ipv6, sealed_secrets FROM machines ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<Vec<u8>>>(9)?,
                ))
            })?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })?
        .into_iter()
        .map(|row| {
            let (id, json, phase, inst, rs, ss, restarts, ipv4, ipv6, sealed) = row;
            let mut assignment: AssignedMachine =
                serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                    id: id.clone(),
                    source,
                })?;
            if let Some(sealed) = sealed {
                assignment.secrets = self.unseal(&id, &sealed)?;
            }
            Ok(LocalMachine {
                assignment,
                phase: Phase::parse(&phase),
                running_instance: inst,
                restart_seq: rs as u64,
                signal_seq: ss as u64,
                restarts: restarts as u32,
                ipv4,
                ipv6,
            })
        })
        .collect()
    }

    /// One machine.
    pub fn machine(&self, id: &str) -> Result<Option<LocalMachine>, StoreError> {
        Ok(self.machines()?.into_iter().find(|m| m.assignment.id == id))
    }

    /// Records the machine's local state (before the step it names is taken).
    pub fn save(&self, m: &LocalMachine) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE machines SET phase = ?2, running_instance = ?3, restart_seq = ?4,
                        signal_seq = ?5, restarts = ?6, ipv4 = ?7, ipv6 = ?8 WHERE id = ?1",
                params![
                    m.assignment.id,
                    m.phase.as_str(),
                    m.running_instance,
                    m.restart_seq as i64,
                    m.signal_seq as i64,
                    m.restarts as i64,
                    m.ipv4,
                    m.ipv6
                ],
            )?;
            Ok(())
        })
    }

    /// Forgets a destroyed machine.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM machines WHERE id = ?1", [id])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(id: &str) -> AssignedMachine {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": "n", "app": "a", "org": "personal", "region": "ams",
            "version": "v1", "instance_id": "i1", "private_ip": "",
            "config": {"image": "hello"},
            "image_ref": {"registry": "", "repository": "hello", "tag": "latest", "digest": "", "labels": {}},
            "desired_state": "started", "state": "starting"
        }))
        .unwrap()
    }

    #[test]
    fn assignment_and_revision_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        {
            let s = AgentStore::open(&path).unwrap();
            s.record_assignment(7, &assignment("m1")).unwrap();
            let mut m = s.machine("m1").unwrap().unwrap();
            m.phase = Phase::Running;
            m.running_instance = Some("i1".into());
            s.save(&m).unwrap();
        }
        let s = AgentStore::open(&path).unwrap();
        assert_eq!(s.revision().unwrap(), 7);
        let m = s.machine("m1").unwrap().unwrap();
        assert_eq!(m.phase, Phase::Running);
        assert_eq!(m.running_instance.as_deref(), Some("i1"));
        s.record_revision(5).unwrap();
        assert_eq!(s.revision().unwrap(), 7, "revision never goes back");
    }

    #[test]
    fn store_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let s = AgentStore::open(&path).unwrap();
        s.record_assignment(1, &assignment("m1")).unwrap();
        drop(s);
        let s = AgentStore::open(&path).unwrap();
        s.record_assignment(2, &assignment("m2")).unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{:?}", entry.file_name());
        }
    }

    #[test]
    fn secrets_are_sealed_on_disk_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let mut a = assignment("m1");
        a.secrets
            .insert("DATABASE_URL".into(), "postgres://s3cr3t-value".into());
        {
            let s = AgentStore::open(&path).unwrap();
            s.record_assignment(1, &a).unwrap();
            assert_eq!(
                s.machine("m1").unwrap().unwrap().assignment.secrets,
                a.secrets
            );
        }
        // Nothing in the database files holds the value.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(12).any(|w| w == b"s3cr3t-value"),
                "secret value found in the clear"
            );
        }
        let s = AgentStore::open(&path).unwrap();
        assert_eq!(
            s.machine("m1").unwrap().unwrap().assignment.secrets,
            a.secrets
        );

        // Another host's key cannot open them: a clear error, not garbage.
        std::fs::write(dir.path().join("secrets.key"), [7u8; 32]).unwrap();
        let s = AgentStore::open(&path).unwrap();
        assert!(matches!(s.machines(), Err(StoreError::Unseal(id)) if id == "m1"));
    }

    #[test]
    fn plaintext_secrets_of_an_older_store_are_sealed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let mut a = assignment("m1");
        a.secrets.insert("TOKEN".into(), "plain-old-value".into());
        {
            let s = AgentStore::open(&path).unwrap();
            s.record_assignment(1, &assignment("m1")).unwrap();
            // As an older agent wrote it: secrets inside the JSON.
            s.with(|c| {
                c.execute(
                    "UPDATE machines SET assignment = ?1",
                    [serde_json::to_string(&a).unwrap()],
                )?;
                Ok(())
            })
            .unwrap();
        }
        let s = AgentStore::open(&path).unwrap();
        assert_eq!(
            s.machine("m1").unwrap().unwrap().assignment.secrets,
            a.secrets
        );
        let json: String = s
            .with(|c| Ok(c.query_row("SELECT assignment FROM machines", [], |r| r.get(0))?))
            .unwrap();
        assert!(!json.contains("plain-old-value"));
    }
}
