//! Image collection: the agent removes the images and unpacked layers that no machine on the
//! host uses, every [`GC_EVERY`] and soon after a machine is destroyed.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::host::HostRuntime;
use crate::store::AgentStore;

/// How often the agent collects without being asked.
pub const GC_EVERY: Duration = Duration::from_secs(600);

/// Collects forever: once at start (images left by machines destroyed while the agent was
/// down), then every [`GC_EVERY`] or when [`HostRuntime::request_gc`] asks.
pub async fn run(runtime: Arc<HostRuntime>, store: AgentStore) {
    loop {
        match runtime.collect_images(&store).await {
            Ok(report)
                if !report.images_removed.is_empty() || !report.layers_removed.is_empty() =>
            {
                info!(
                    images = report.images_removed.len(),
                    layers = report.layers_removed.len(),
                    blobs = report.blobs_removed,
                    "removed images no machine uses"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %crate::supervisor::error_chain(&e), "image collection failed"),
        }
        tokio::select! {
            _ = runtime.gc_requested() => {}
            _ = tokio::time::sleep(GC_EVERY) => {}
        }
    }
}
