//! Change notification: the global revision every mutation bumps, and the shutdown signal
//! that ends waits and watch streams.

use tokio::sync::watch;

/// The latest committed revision, and whether the server is shutting down.
#[derive(Debug)]
pub struct Revisions {
    revision: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
}

impl Revisions {
    pub fn new(revision: u64) -> Revisions {
        Revisions {
            revision: watch::Sender::new(revision),
            shutdown: watch::Sender::new(false),
        }
    }

    /// Tells waiters and watchers that the store reached `revision`.
    pub fn notify(&self, revision: u64) {
        self.revision.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    /// A receiver that wakes on every newer revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// How many waits and watch streams are listening for changes.
    pub fn listeners(&self) -> usize {
        self.revision.receiver_count()
    }

    /// Ends watch streams and waits so a graceful shutdown does not hang on them.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Resolves once shutdown has begun (or the sender is gone).
pub async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    // Drop the borrowed guard here so callers' futures stay `Send`.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
