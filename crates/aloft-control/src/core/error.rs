//! What the store can fail with. Some failures are about what the caller named (an app that
//! does not exist, a name already taken); the services decide what they mean to a user.

use super::store::MAX_HOST_INDEX;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Cannot open database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("Cannot make the database {path} and its data directory private to the server")]
    Permissions {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Database migration {version} failed")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("Database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("Stored {what} cannot be encoded or decoded: {detail}")]
    Encoding { what: &'static str, detail: String },
    #[error("App {0:?} not found")]
    AppNotFound(String),
    #[error("App {0:?} already exists")]
    AppExists(String),
    #[error("App {app:?} still has {count} machines; destroy them first")]
    AppHasMachines { app: String, count: i64 },
    #[error("Organization {0:?} not found")]
    OrgNotFound(String),
    #[error("Organization {0:?} already exists")]
    OrgExists(String),
    #[error("Organization {org:?} still has {count} apps; delete them first")]
    OrgHasApps { org: String, count: i64 },
    #[error("Token {0:?} not found")]
    TokenNotFound(String),
    #[error("Machine {id:?} not found in app {app:?}")]
    MachineNotFound { app: String, id: String },
    #[error("Host {0:?} is not registered")]
    HostNotFound(String),
    #[error("Host index {0} must be between 1 and {MAX_HOST_INDEX}")]
    HostIndexOutOfRange(u32),
    #[error("Every host index up to {MAX_HOST_INDEX} has been handed out; no new host can join")]
    HostIndexesExhausted,
}

impl StoreError {
    /// An encoding failure of `what`.
    pub fn encoding(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Encoding {
            what,
            detail: detail.to_string(),
        }
    }
}
