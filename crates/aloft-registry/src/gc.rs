//! Garbage collection: removes blobs no manifest of any repository references.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::SystemTime;

use crate::digest::{Algorithm, Digest};
use crate::error::RegistryError;
use crate::manifest;
use crate::store::Registry;

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs whose bytes were removed.
    pub blobs_removed: usize,
    /// Bytes those blobs took.
    pub bytes_freed: u64,
    /// Blobs kept because a manifest references them.
    pub blobs_referenced: usize,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub blobs_recent: usize,
    /// Abandoned uploads removed.
    pub uploads_removed: usize,
}

fn age(modified: std::io::Result<SystemTime>, now: SystemTime) -> std::time::Duration {
    modified
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .unwrap_or_default()
}

impl Registry {
    /// Every digest reachable from a manifest of any repository: the manifests, their
    /// config and layers, and (recursively) index children and subjects, even when those
    /// are no longer listed in a repository themselves.
    fn mark(&self) -> Result<HashSet<String>, RegistryError> {
        let mut entries: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        for name in self.repositories()? {
            let Some(meta) = self.read_meta(&name)? else {
                continue;
            };
            for (digest, entry) in meta.manifests {
                let mut next = entry.children;
                next.extend(entry.subject);
                entries.insert(digest, (entry.refs, next));
            }
        }
        let mut live: HashSet<String> = entries.keys().cloned().collect();
        let mut queue: Vec<String> = live.iter().cloned().collect();
        while let Some(digest) = queue.pop() {
            let (refs, next) = match entries.remove(&digest) {
                Some(found) => found,
                None => self.references_on_disk(&digest),
            };
            live.extend(refs);
            for d in next {
                if live.insert(d.clone()) {
                    queue.push(d);
                }
            }
        }
        Ok(live)
    }

    /// The blobs and manifests a stored manifest refers to, read from its bytes (for
    /// manifests reachable only through an index or a subject). Nothing if it is absent
    /// or not a manifest.
    fn references_on_disk(&self, digest: &str) -> (Vec<String>, Vec<String>) {
        let parsed = digest
            .parse::<Digest>()
            .ok()
            .and_then(|d| fs::read(self.blob_path(&d)).ok())
            .and_then(|bytes| manifest::parse(None, &bytes).ok());
        match parsed {
            Some(p) => {
                let mut next: Vec<String> = p.children.iter().map(Digest::to_string).collect();
                next.extend(p.subject.as_ref().map(Digest::to_string));
                (p.blobs.iter().map(Digest::to_string).collect(), next)
            }
            None => (Vec::new(), Vec::new()),
        }
    }

    /// Removes every blob not referenced by a manifest of any repository (manifests,
    /// their config and layers, index children and subjects are referenced), except blobs
    /// written within the grace period, and uploads untouched for longer than the upload
    /// expiry. Blocks manifest pushes and blob commits while it runs.
    pub fn gc(&self) -> Result<GcReport, RegistryError> {
        let _exclusive = self
            .inner
            .gc_lock
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let mut report = GcReport::default();

        let live = self.mark()?;
        let repos = self.repositories()?;

        let mut removed = HashSet::new();
        for algorithm in Algorithm::ALL {
            let dir = self.inner.root.join("blobs").join(algorithm.name());
            for prefix in fs::read_dir(&dir).map_err(|e| RegistryError::io("list blobs", e))? {
                let prefix = prefix
                    .map_err(|e| RegistryError::io("list blobs", e))?
                    .path();
                for entry in
                    fs::read_dir(&prefix).map_err(|e| RegistryError::io("list blobs", e))?
                {
                    let entry = entry.map_err(|e| RegistryError::io("list blobs", e))?;
                    let hex = entry.file_name().to_string_lossy().into_owned();
                    let Some(digest) = Digest::from_parts(algorithm, &hex) else {
                        continue;
                    };
                    let key = digest.to_string();
                    if live.contains(&key) {
                        report.blobs_referenced += 1;
                        continue;
                    }
                    let meta = entry
                        .metadata()
                        .map_err(|e| RegistryError::io("stat blob", e))?;
                    if age(meta.modified(), now) < self.inner.options.gc_grace {
                        report.blobs_recent += 1;
                        continue;
                    }
                    fs::remove_file(entry.path())
                        .map_err(|e| RegistryError::io(format!("remove blob {key}"), e))?;
                    tracing::debug!(digest = %key, size = meta.len(), "Garbage-collected blob");
                    report.blobs_removed += 1;
                    report.bytes_freed += meta.len();
                    removed.insert(key);
                }
            }
        }

        if !removed.is_empty() {
            for name in &repos {
                let linked = self
                    .read_meta(name)?
                    .is_some_and(|m| m.blobs.iter().any(|b| removed.contains(b)));
                if linked {
                    self.update_meta(name, |meta| {
                        meta.blobs.retain(|b| !removed.contains(b));
                        Ok(())
                    })?;
                }
            }
        }

        let uploads = self.inner.root.join("uploads");
        for entry in fs::read_dir(&uploads).map_err(|e| RegistryError::io("list uploads", e))? {
            let entry = entry.map_err(|e| RegistryError::io("list uploads", e))?;
            let touched = fs::metadata(entry.path().join("data")).and_then(|m| m.modified());
            if age(touched, now) > self.inner.options.upload_expiry {
                let uuid = entry.file_name().to_string_lossy().into_owned();
                // Held while removing, so no chunk can be appended meanwhile.
                let mut map = self.inner.uploads.lock().unwrap_or_else(|p| p.into_inner());
                let progress = map.get(&uuid).cloned();
                let guard = match &progress {
                    Some(p) => match p.try_lock() {
                        Ok(guard) => Some(guard),
                        Err(_) => continue,
                    },
                    None => None,
                };
                if fs::remove_dir_all(entry.path()).is_ok() {
                    report.uploads_removed += 1;
                    map.remove(&uuid);
                }
                drop(guard);
            }
        }
        tracing::info!(?report, "Registry garbage collection finished");
        Ok(report)
    }
}
