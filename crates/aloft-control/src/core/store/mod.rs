//! The store: SQLite in the data directory, with the in-memory views kept in step with it.
//!
//! Everything lives behind one mutex ([`Inner`]): every mutation is one transaction that
//! also bumps the global revision ([`Inner::write`]), and host capacity is mirrored in memory
//! for placement. Services reach SQL only through [`Db`], whose methods are split by subject
//! (`apps.rs`, `hosts.rs`, `machines.rs`, …): another backend implements the same methods.

mod apps;
mod autoscale;
mod certs;
mod deploys;
mod host_credentials;
mod hosts;
mod ips;
mod machines;
mod releases;
mod schema;
mod secrets;
mod tokens;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, Transaction};

use super::error::StoreError;
use super::revision::Revisions;

pub use certs::{AcmeRow, HostnameClaim, IssuedRow, NewUserCert, UserCertRow};
pub use deploys::DeployRow;
pub use host_credentials::{HostRecord, JoinTokenRow};
pub use hosts::{AgentApi, HostCapacity};
pub use machines::{MachineRow, NewMachine, PendingEvent};
pub use releases::NewRelease;
pub use secrets::SealedSecret;
pub use tokens::TokenRow;

/// The largest host index (the 6PN host field is 16 bits wide in practice).
pub const MAX_HOST_INDEX: u32 = 65_535;

/// The organisation created on first start.
pub const DEFAULT_ORG: &str = "personal";

/// Current time as RFC 3339 (seconds precision, `Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Current time in Unix seconds.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The opened store: its data, the revision watchers and the data directory.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    revisions: Revisions,
    data_dir: PathBuf,
}

impl Store {
    /// Opens (creating and migrating) `dir/aloft.db` and loads the in-memory views.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let conn = open(dir)?;
        let inner = Inner::load(conn)?;
        let revisions = Revisions::new(inner.revision);
        Ok(Store {
            inner: Mutex::new(inner),
            revisions,
            data_dir: dir.to_path_buf(),
        })
    }

    /// Locks the store. A panic while holding it cannot leave SQLite half-written (the
    /// transaction rolls back on drop), so a poisoned lock is still usable.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Tells waiters and watchers that the store reached `revision` (call after unlocking).
    pub fn notify(&self, revision: u64) {
        self.revisions.notify(revision);
    }

    pub fn revisions(&self) -> &Revisions {
        &self.revisions
    }

    /// Where the store keeps its files (the database, keys, the cluster CA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// The store's data behind the lock: the database and the views kept in step with it.
#[derive(Debug)]
pub struct Inner {
    conn: Connection,
    hosts: Vec<HostCapacity>,
    host_index: HashMap<String, usize>,
    revision: u64,
    /// Per app, how many non-destroyed machines each host runs (for spreading).
    app_hosts: HashMap<String, HashMap<String, u32>>,
    /// Per host, the apps counted in `app_hosts` (so a refresh can undo them).
    host_apps: HashMap<String, Vec<String>>,
    /// Per host, the revision of its latest machine change (watchers skip quiet hosts).
    host_revision: HashMap<String, u64>,
    /// Per host, the public addresses of its edge (for GeoDNS).
    edge_addresses: HashMap<String, Vec<std::net::IpAddr>>,
}

/// The store's queries, over the connection or inside a transaction.
#[derive(Clone, Copy)]
pub struct Db<'a> {
    conn: &'a Connection,
}

impl std::fmt::Debug for Db<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

/// Opens (creating if needed) `dir/aloft.db`, applies pending migrations in one transaction.
fn open(dir: &Path) -> Result<Connection, StoreError> {
    let path = dir.join("aloft.db");
    let open_err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    // The database holds tokens' hashes, sealed secrets and keys: owner-only, created so (SQLite
    // gives its -wal and -shm files the database's mode), and tightened if an older version
    // left it readable.
    make_private(dir, &path).map_err(|source| StoreError::Permissions {
        path: path.display().to_string(),
        source,
    })?;
    let mut conn = Connection::open(&path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    // Deleted and replaced rows (a key before it was sealed, a removed secret) are zeroed.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    let current: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(open_err)?
        .try_into()
        .unwrap_or(0);
    let migrations = schema::MIGRATIONS;
    if current < migrations.len() {
        let tx = conn.transaction().map_err(open_err)?;
        for (i, sql) in migrations.iter().enumerate().skip(current) {
            let version = i + 1;
            tx.execute_batch(sql)
                .and_then(|()| tx.pragma_update(None, "user_version", version as i64))
                .map_err(|source| StoreError::Migrate { version, source })?;
        }
        tx.commit().map_err(|source| StoreError::Migrate {
            version: migrations.len(),
            source,
        })?;
    }
    Ok(conn)
}

/// Creates `db` with mode 0600 if missing; sets 0600 on it and its -wal/-shm files and on the
/// data directory's key files, and 0700 on the directory.
fn make_private(dir: &Path, db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let set = |path: &Path, mode: u32| match std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(mode),
    ) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    set(dir, 0o700)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)?;
    let name = db.file_name().unwrap_or_default().to_string_lossy();
    for file in [
        name.to_string(),
        format!("{name}-wal"),
        format!("{name}-shm"),
        "secrets.key".to_owned(),
        "admin-token".to_owned(),
        "join-token".to_owned(),
        "ca/ca-key.pem".to_owned(),
    ] {
        set(&dir.join(file), 0o600)?;
    }
    set(&dir.join("ca"), 0o700)
}

/// Bumps the global revision inside a transaction and returns the new value.
fn bump_revision(tx: &Transaction<'_>) -> Result<u64, rusqlite::Error> {
    tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
}

impl Inner {
    /// Loads revision and hosts (with their usage); hosts count as seen now.
    fn load(conn: Connection) -> Result<Inner, StoreError> {
        let revision: i64 =
            conn.query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get(0)
            })?;
        let mut inner = Inner {
            conn,
            hosts: Vec::new(),
            host_index: HashMap::new(),
            revision: revision as u64,
            app_hosts: HashMap::new(),
            host_apps: HashMap::new(),
            host_revision: HashMap::new(),
            edge_addresses: HashMap::new(),
        };
        inner.load_hosts()?;
        Ok(inner)
    }

    /// Reads without a transaction.
    pub fn db(&self) -> Db<'_> {
        Db { conn: &self.conn }
    }

    /// The revision of the last committed change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Runs `change` in one transaction that also bumps the global revision (handed to it),
    /// and commits; an error rolls everything back. Returns `change`'s value and the revision
    /// (the caller notifies watchers once it has unlocked).
    pub fn write<T, E: From<StoreError>>(
        &mut self,
        change: impl FnOnce(Db<'_>, u64) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        let tx = self.conn.transaction().map_err(StoreError::from)?;
        let revision = bump_revision(&tx).map_err(StoreError::from)?;
        let out = change(Db { conn: &tx }, revision)?;
        tx.commit().map_err(StoreError::from)?;
        self.revision = revision;
        Ok((out, revision))
    }

    /// Runs `change` in one transaction that leaves the revision alone (for what no watcher
    /// follows).
    pub fn transaction<T, E: From<StoreError>>(
        &mut self,
        change: impl FnOnce(Db<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self.conn.transaction().map_err(StoreError::from)?;
        let out = change(Db { conn: &tx })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Bumps the revision with no other change (what watchers derive changed, e.g. which
    /// hosts are live).
    pub fn bump(&mut self) -> Result<u64, StoreError> {
        let ((), revision) = self.write(|_, _| Ok::<_, StoreError>(()))?;
        Ok(revision)
    }
}
