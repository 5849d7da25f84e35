//! What a machine operation can fail with.

use crate::core::state::InvalidTransition;
use crate::core::StoreError;
use crate::services::image::ImageRefError;
use crate::services::limits::LimitError;
use crate::services::placement::PlacementError;
use crate::services::secrets::SecretsError;

/// Why a machine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// What the caller sent is not valid (a config, a signal, a query).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Image(#[from] ImageRefError),
    /// No host can take the machine.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The machine cannot be placed or grown where it is.
    #[error("{0}")]
    Unplaceable(String),
    #[error("Machine {id}: {transition}")]
    Transition {
        id: String,
        transition: InvalidTransition,
    },
    /// The machine's state does not allow the operation.
    #[error("{0}")]
    WrongState(String),
    /// Something the caller named is not there (a lease, a machine on a host).
    #[error("{0}")]
    NotFound(String),
    /// Another holder has the machine's lease.
    #[error("{0}")]
    Leased(String),
    /// An agent reported on an instance the machine no longer runs.
    #[error("{0}")]
    StaleReport(String),
    /// A wait ran out of time.
    #[error("{0}")]
    Timeout(String),
    #[error("Server is shutting down")]
    ShuttingDown,
    /// The host of the machine cannot be reached.
    #[error("{0}")]
    HostUnavailable(String),
    /// The operator's per-app limits do not allow the change.
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
