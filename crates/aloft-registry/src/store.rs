//! The content-addressed blob store and per-repository metadata on disk.
//!
//! Layout under the data directory:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: blob and manifest bytes;
//! - `uploads/<uuid>/{repo,data}`: uploads in progress (they survive a restart);
//! - `repos/<name with / as +>.json`: tags, manifests, linked blobs and subjects of one repository;
//! - `tmp/`: files being written, renamed into place once complete and synced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::digest::{Algorithm, Digest};
use crate::error::RegistryError;
use crate::manifest;
use crate::names::{validate_name, Reference};
use crate::uploads::UploadProgress;

/// Tunables of a [`Registry`].
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Blobs written more recently than this are never collected, so a client that has
    /// pushed layers but not yet the manifest does not lose them.
    pub gc_grace: Duration,
    /// Uploads untouched for this long are removed by garbage collection.
    pub upload_expiry: Duration,
    /// Most bytes of blobs the repositories of one app (`<app>` and `<app>/…`) may hold
    /// together (each blob counted once); `None` for no limit.
    pub app_quota: Option<u64>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            gc_grace: Duration::from_secs(10 * 60),
            upload_expiry: Duration::from_secs(24 * 60 * 60),
            app_quota: None,
        }
    }
}

/// A handle on the registry's storage. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.inner.root)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) options: RegistryOptions,
    /// Serialises read-modify-write of repository metadata files.
    meta_lock: Mutex<()>,
    /// Serialises quota checks with the links they allow.
    quota_lock: Mutex<()>,
    /// Held for writing by garbage collection; for reading by anything that makes a blob
    /// reachable (blob commit, mount, manifest put).
    pub(crate) gc_lock: RwLock<()>,
    pub(crate) uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadProgress>>>>,
}

/// Metadata of one repository, stored as one JSON file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RepoMeta {
    #[serde(default)]
    pub(crate) tags: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) manifests: BTreeMap<String, ManifestEntry>,
    #[serde(default)]
    pub(crate) blobs: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ManifestEntry {
    pub(crate) media_type: String,
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) refs: Vec<String>,
    #[serde(default)]
    pub(crate) children: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) annotations: Option<Map<String, Value>>,
}

/// A manifest as stored: its exact bytes and media type.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// The outcome of a manifest push.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// Makes a rename into `path`'s directory durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

pub(crate) fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Registry {
    /// Opens (creating if needed) a registry rooted at `data_dir` with default options.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Registry, RegistryError> {
        Registry::open_with(data_dir, RegistryOptions::default())
    }

    /// Opens (creating if needed) a registry rooted at `data_dir`.
    pub fn open_with(
        data_dir: impl AsRef<Path>,
        options: RegistryOptions,
    ) -> Result<Registry, RegistryError> {
        let root = data_dir.as_ref().to_path_buf();
        for sub in ["blobs/sha256", "blobs/sha512", "uploads", "repos", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir)
                .map_err(|e| RegistryError::io(format!("create directory {}", dir.display()), e))?;
        }
        // Leftovers of writes interrupted by a crash: never renamed, so never visible.
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| RegistryError::io("list tmp directory", e))? {
            let path = entry
                .map_err(|e| RegistryError::io("list tmp directory", e))?
                .path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
        tracing::info!(root = %root.display(), "Registry storage opened");
        Ok(Registry {
            inner: Arc::new(Inner {
                root,
                options,
                meta_lock: Mutex::new(()),
                quota_lock: Mutex::new(()),
                gc_lock: RwLock::new(()),
                uploads: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.inner
            .root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    pub(crate) fn tmp_path(&self) -> PathBuf {
        self.inner.root.join("tmp").join(random_id())
    }

    fn repo_path(&self, name: &str) -> PathBuf {
        self.inner
            .root
            .join("repos")
            .join(format!("{}.json", name.replace('/', "+")))
    }

    /// Names of all repositories with metadata on disk, sorted.
    pub fn repositories(&self) -> Result<Vec<String>, RegistryError> {
        let dir = self.inner.root.join("repos");
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| RegistryError::io("list repositories", e))? {
            let entry = entry.map_err(|e| RegistryError::io("list repositories", e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = file.strip_suffix(".json") {
                names.push(stem.replace('+', "/"));
            }
        }
        names.sort();
        Ok(names)
    }

    pub(crate) fn read_meta(&self, name: &str) -> Result<Option<RepoMeta>, RegistryError> {
        let path = self.repo_path(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                RegistryError::MetadataCorrupt {
                    path: path.display().to_string(),
                    source,
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::io(format!("read {}", path.display()), e)),
        }
    }

    /// Writes `bytes` to `target` through a synced temp file and a rename.
    pub(crate) fn write_atomic(&self, target: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
        let tmp = self.tmp_path();
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&tmp, target)?;
            sync_parent(target)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            RegistryError::io(format!("write {}", target.display()), e)
        })
    }

    /// Runs `f` on the repository's metadata (empty if the repository is new) and writes
    /// the result back if `f` succeeds.
    pub(crate) fn update_meta<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut RepoMeta) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let _guard = self
            .inner
            .meta_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut meta = self.read_meta(name)?.unwrap_or_default();
        let out = f(&mut meta)?;
        let bytes = serde_json::to_vec(&meta).map_err(|source| RegistryError::MetadataCorrupt {
            path: self.repo_path(name).display().to_string(),
            source,
        })?;
        self.write_atomic(&self.repo_path(name), &bytes)?;
        Ok(out)
    }

    fn meta_or_unknown(&self, name: &str) -> Result<RepoMeta, RegistryError> {
        self.read_meta(name)?
            .ok_or_else(|| RegistryError::NameUnknown(name.to_owned()))
    }

    /// The app a repository belongs to: its first path component.
    pub(crate) fn app_of(name: &str) -> &str {
        name.split('/').next().unwrap_or(name)
    }

    /// Bytes the repositories of `app` hold: each blob linked to any of them counted once.
    pub fn app_usage(&self, app: &str) -> Result<u64, RegistryError> {
        Ok(self.app_blobs(app)?.values().sum())
    }

    fn app_blobs(&self, app: &str) -> Result<HashMap<String, u64>, RegistryError> {
        let mut sizes = HashMap::new();
        for repo in self.repositories()? {
            if Registry::app_of(&repo) != app {
                continue;
            }
            let Some(meta) = self.read_meta(&repo)? else {
                continue;
            };
            for key in meta.blobs {
                if sizes.contains_key(&key) {
                    continue;
                }
                let size = key
                    .parse::<Digest>()
                    .ok()
                    .and_then(|d| fs::metadata(self.blob_path(&d)).ok())
                    .map_or(0, |m| m.len());
                sizes.insert(key, size);
            }
        }
        Ok(sizes)
    }

    /// Refuses to link a blob of `size` bytes to `name` when its app would go over quota (a
    /// blob the app already holds costs nothing).
    fn check_quota(&self, name: &str, digest: &Digest, size: u64) -> Result<(), RegistryError> {
        let Some(quota) = self.inner.options.app_quota else {
            return Ok(());
        };
        let app = Registry::app_of(name);
        let blobs = self.app_blobs(app)?;
        if blobs.contains_key(&digest.to_string()) {
            return Ok(());
        }
        let wanted = blobs.values().sum::<u64>().saturating_add(size);
        if wanted > quota {
            return Err(RegistryError::QuotaExceeded {
                app: app.to_owned(),
                wanted,
                quota,
            });
        }
        Ok(())
    }

    /// Moves a complete, verified file into the blob store and links it to `name`; refused
    /// (nothing moved) when the app's quota does not allow it.
    pub(crate) fn commit_blob(
        &self,
        name: &str,
        digest: &Digest,
        file: &Path,
    ) -> Result<(), RegistryError> {
        let _gc = self.inner.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let _quota = self.inner.options.app_quota.map(|_| {
            self.inner
                .quota_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        });
        if _quota.is_some() {
            let size = fs::metadata(file)
                .map_err(|e| RegistryError::io("stat upload data", e))?
                .len();
            self.check_quota(name, digest, size)?;
        }
        self.place_blob(name, digest, file)
    }

    fn place_blob(&self, name: &str, digest: &Digest, file: &Path) -> Result<(), RegistryError> {
        let target = self.blob_path(digest);
        let place = || -> std::io::Result<()> {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(file, &target)?;
            // The grace period counts from the commit, not from the upload's first byte.
            fs::File::options()
                .write(true)
                .open(&target)?
                .set_modified(SystemTime::now())?;
            sync_parent(&target)
        };
        place().map_err(|e| RegistryError::io(format!("store blob {digest}"), e))?;
        self.update_meta(name, |meta| {
            meta.blobs.insert(digest.to_string());
            Ok(())
        })
    }

    /// The path and size of a blob visible in repository `name`.
    pub fn blob_file(&self, name: &str, digest: &Digest) -> Result<(PathBuf, u64), RegistryError> {
        let unknown = || RegistryError::BlobUnknown {
            name: name.to_owned(),
            digest: digest.to_string(),
        };
        let meta = self.read_meta(name)?.ok_or_else(unknown)?;
        let key = digest.to_string();
        if !meta.blobs.contains(&key) && !meta.manifests.contains_key(&key) {
            return Err(unknown());
        }
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok((path, m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(unknown()),
            Err(e) => Err(RegistryError::io(format!("stat blob {digest}"), e)),
        }
    }

    /// Links an existing blob of `from` into `name`. Returns false when `from` does not
    /// have it (the caller then starts an ordinary upload).
    pub fn mount_blob(
        &self,
        name: &str,
        from: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let _gc = self.inner.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let Ok((_, size)) = self.blob_file(from, digest) else {
            return Ok(false);
        };
        let _quota = self
            .inner
            .quota_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.check_quota(name, digest, size)?;
        self.update_meta(name, |meta| {
            meta.blobs.insert(digest.to_string());
            Ok(())
        })?;
        Ok(true)
    }

    /// Unlinks a blob from repository `name`; its bytes go at the next garbage collection
    /// if nothing else references them.
    pub fn delete_blob(&self, name: &str, digest: &Digest) -> Result<(), RegistryError> {
        self.blob_file(name, digest)?;
        self.update_meta(name, |meta| {
            meta.blobs.remove(&digest.to_string());
            Ok(())
        })
    }

    fn resolve(
        &self,
        name: &str,
        meta: &RepoMeta,
        reference: &str,
    ) -> Result<Digest, RegistryError> {
        let unknown = || RegistryError::ManifestUnknown {
            name: name.to_owned(),
            reference: reference.to_owned(),
        };
        let digest = match Reference::parse(reference)? {
            Reference::Digest(d) => d,
            Reference::Tag(t) => meta.tags.get(&t).ok_or_else(unknown)?.parse()?,
        };
        if meta.manifests.contains_key(&digest.to_string()) {
            Ok(digest)
        } else {
            Err(unknown())
        }
    }

    /// Fetches a manifest by tag or digest.
    pub fn get_manifest(
        &self,
        name: &str,
        reference: &str,
    ) -> Result<StoredManifest, RegistryError> {
        let meta = self
            .read_meta(name)?
            .ok_or_else(|| RegistryError::ManifestUnknown {
                name: name.to_owned(),
                reference: reference.to_owned(),
            })?;
        let digest = self.resolve(name, &meta, reference)?;
        let entry = &meta.manifests[&digest.to_string()];
        let path = self.blob_path(&digest);
        let body =
            fs::read(&path).map_err(|e| RegistryError::io(format!("read manifest {digest}"), e))?;
        Ok(StoredManifest {
            digest,
            media_type: entry.media_type.clone(),
            body: Bytes::from(body),
        })
    }

    /// Stores a manifest under a tag or its digest after checking that everything it
    /// references is in the repository.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PutManifest, RegistryError> {
        validate_name(name)?;
        if body.len() > manifest::MAX_MANIFEST_BYTES {
            return Err(RegistryError::ManifestTooLarge(body.len() as u64));
        }
        let reference = Reference::parse(reference)?;
        let parsed = manifest::parse(content_type, &body)?;
        let digest = match &reference {
            Reference::Digest(expected) => {
                let actual = Digest::of(expected.algorithm(), &body);
                if &actual != expected {
                    return Err(RegistryError::DigestInvalid(format!(
                        "Manifest digest is {actual}, not {expected} as given in the path"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &body),
        };
        let _gc = self.inner.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let path = self.blob_path(&digest);
        if !path.exists() {
            self.write_atomic(&path, &body)?;
        }
        let key = digest.to_string();
        self.update_meta(name, |meta| {
            for blob in &parsed.blobs {
                let linked =
                    meta.blobs.contains(&blob.to_string()) && self.blob_path(blob).exists();
                if !linked {
                    return Err(RegistryError::ManifestBlobUnknown {
                        kind: "blob",
                        digest: blob.to_string(),
                    });
                }
            }
            for child in &parsed.children {
                if !meta.manifests.contains_key(&child.to_string()) {
                    return Err(RegistryError::ManifestBlobUnknown {
                        kind: "manifest",
                        digest: child.to_string(),
                    });
                }
            }
            meta.manifests.insert(
                key.clone(),
                ManifestEntry {
                    media_type: parsed.media_type.clone(),
                    size: body.len() as u64,
                    refs: parsed.blobs.iter().map(Digest::to_string).collect(),
                    children: parsed.children.iter().map(Digest::to_string).collect(),
                    subject: parsed.subject.as_ref().map(Digest::to_string),
                    artifact_type: parsed.artifact_type.clone(),
                    annotations: parsed.annotations.clone(),
                },
            );
            if let Reference::Tag(tag) = &reference {
                meta.tags.insert(tag.clone(), key.clone());
            }
            Ok(())
        })?;
        Ok(PutManifest {
            digest,
            subject: parsed.subject,
        })
    }

    /// Deletes a tag (reference is a tag) or a manifest and every tag pointing at it
    /// (reference is a digest).
    pub fn delete_manifest(&self, name: &str, reference: &str) -> Result<(), RegistryError> {
        let reference_parsed = Reference::parse(reference)?;
        let unknown = || RegistryError::ManifestUnknown {
            name: name.to_owned(),
            reference: reference.to_owned(),
        };
        if self.read_meta(name)?.is_none() {
            return Err(unknown());
        }
        self.update_meta(name, |meta| match reference_parsed {
            Reference::Tag(tag) => meta.tags.remove(&tag).map(drop).ok_or_else(unknown),
            Reference::Digest(d) => {
                let key = d.to_string();
                meta.manifests.remove(&key).ok_or_else(unknown)?;
                meta.tags.retain(|_, v| *v != key);
                Ok(())
            }
        })
    }

    /// All tags of a repository, sorted.
    pub fn tags(&self, name: &str) -> Result<Vec<String>, RegistryError> {
        Ok(self.meta_or_unknown(name)?.tags.into_keys().collect())
    }

    /// Descriptors of the manifests in `name` whose subject is `digest`, optionally only
    /// those of one artifact type.
    pub fn referrers(
        &self,
        name: &str,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Value>, RegistryError> {
        let Some(meta) = self.read_meta(name)? else {
            return Ok(Vec::new());
        };
        let subject = digest.to_string();
        let mut out = Vec::new();
        for (d, entry) in &meta.manifests {
            if entry.subject.as_deref() != Some(subject.as_str()) {
                continue;
            }
            if artifact_type.is_some() && entry.artifact_type.as_deref() != artifact_type {
                continue;
            }
            let mut desc =
                json!({ "mediaType": entry.media_type, "digest": d, "size": entry.size });
            if let Some(t) = &entry.artifact_type {
                desc["artifactType"] = json!(t);
            }
            if let Some(a) = &entry.annotations {
                desc["annotations"] = Value::Object(a.clone());
            }
            out.push(desc);
        }
        Ok(out)
    }
}
