//! Blob uploads: monolithic pushes and chunked upload sessions kept on disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::RegistryError;
use crate::store::{random_id, Registry};

/// In-memory progress of an upload: a running sha256 over the bytes written so far, so
/// finishing does not re-read the file. Lost on restart; the file is re-hashed then.
#[derive(Default)]
pub(crate) struct UploadProgress {
    hasher: Option<(Hasher, u64)>,
}

const WRITE_BUFFER: usize = 1 << 20;

/// What an upload may still write under its app's quota.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    app: String,
    quota: u64,
    used: u64,
}

impl Registry {
    /// The budget of an upload to `name` that already holds `pending` bytes (`None`: no quota).
    fn budget(&self, name: &str, pending: u64) -> Result<Option<Budget>, RegistryError> {
        let Some(quota) = self.inner.options.app_quota else {
            return Ok(None);
        };
        let app = Registry::app_of(name).to_owned();
        let used = self.app_usage(&app)?.saturating_add(pending);
        Ok(Some(Budget { app, quota, used }))
    }
}

/// Writes `body` to `out`, feeding `hasher`, stopping with `QuotaExceeded` once more than
/// `budget` allows has come. Returns the number of bytes written.
async fn copy_body<S, E>(
    out: &mut BufWriter<tokio::fs::File>,
    mut hasher: Option<&mut Hasher>,
    body: S,
    budget: Option<&Budget>,
) -> Result<u64, RegistryError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::SizeInvalid(format!(
                "Upload body ended early after {written} bytes: {e}"
            ))
        })?;
        if let Some(b) = budget {
            let wanted = b.used + written + chunk.len() as u64;
            if wanted > b.quota {
                return Err(RegistryError::QuotaExceeded {
                    app: b.app.clone(),
                    wanted,
                    quota: b.quota,
                });
            }
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk);
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| RegistryError::io("write upload data", e))?;
        written += chunk.len() as u64;
    }
    out.flush()
        .await
        .map_err(|e| RegistryError::io("write upload data", e))?;
    Ok(written)
}

async fn hash_file(path: PathBuf, algorithm: Algorithm) -> Result<Digest, RegistryError> {
    tokio::task::spawn_blocking(move || {
        let mut file =
            fs::File::open(&path).map_err(|e| RegistryError::io("open upload data", e))?;
        let mut hasher = Hasher::new(algorithm);
        let mut buf = vec![0u8; WRITE_BUFFER];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)
                .map_err(|e| RegistryError::io("read upload data", e))?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(RegistryError::Task)?
}

/// Appends `body` to an upload's data file while its progress lock is held. A chunk
/// that does not arrive whole leaves the file and the running hash as they were.
async fn append_locked<S, E>(
    name: &str,
    uuid: &str,
    data: &Path,
    progress: &mut UploadProgress,
    range: Option<(u64, u64)>,
    body: S,
    registry: &Registry,
) -> Result<u64, RegistryError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .await
        .map_err(|_| RegistryError::BlobUploadUnknown(uuid.to_owned()))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| RegistryError::io("stat upload data", e))?
        .len();
    if let Some((start, end)) = range {
        if start != size {
            return Err(RegistryError::RangeInvalid {
                location: format!("/v2/{name}/blobs/uploads/{uuid}"),
                expected: size,
                got: start,
            });
        }
        if end < start {
            return Err(RegistryError::BlobUploadInvalid(format!(
                "Content-Range {start}-{end} is empty"
            )));
        }
    }
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    out.seek(std::io::SeekFrom::Start(size))
        .await
        .map_err(|e| RegistryError::io("seek upload data", e))?;
    let before = progress.hasher.clone();
    let hasher = match &mut progress.hasher {
        Some((h, hashed)) if *hashed == size => Some(h),
        _ => None,
    };
    let budget = registry.budget(name, size)?;
    let result = copy_body(&mut out, hasher, body, budget.as_ref()).await;
    let result = match (result, range) {
        (Ok(n), Some((start, end))) if n != end - start + 1 => {
            Err(RegistryError::SizeInvalid(format!(
                "Chunk has {n} bytes but Content-Range {start}-{end} announces {}",
                end - start + 1
            )))
        }
        (r, _) => r,
    };
    match result {
        Ok(n) => {
            if let Some((_, hashed)) = &mut progress.hasher {
                if *hashed == size {
                    *hashed += n;
                }
            }
            Ok(size + n)
        }
        Err(e) => {
            progress.hasher = before;
            let file = out.into_inner();
            file.set_len(size)
                .await
                .map_err(|e| RegistryError::io("truncate upload data", e))?;
            Err(e)
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(RegistryError::Task)?
}

impl Registry {
    fn upload_dir(&self, uuid: &str) -> PathBuf {
        self.inner.root.join("uploads").join(uuid)
    }

    fn progress(&self, uuid: &str) -> Arc<tokio::sync::Mutex<UploadProgress>> {
        let mut map = self.inner.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(uuid.to_owned()).or_default().clone()
    }

    fn forget(&self, uuid: &str) {
        self.inner
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uuid);
    }

    /// Checks that upload `uuid` exists and belongs to repository `name`; returns its data file.
    fn upload_data(&self, name: &str, uuid: &str) -> Result<PathBuf, RegistryError> {
        crate::names::validate_upload_id(uuid)?;
        let dir = self.upload_dir(uuid);
        match fs::read_to_string(dir.join("repo")) {
            Ok(owner) if owner == name => Ok(dir.join("data")),
            _ => Err(RegistryError::BlobUploadUnknown(uuid.to_owned())),
        }
    }

    /// Starts an upload session for repository `name` and returns its id.
    pub fn start_upload(&self, name: &str) -> Result<String, RegistryError> {
        let uuid = random_id();
        let staging = self.tmp_path();
        let create = || -> std::io::Result<()> {
            fs::create_dir_all(&staging)?;
            fs::write(staging.join("repo"), name)?;
            fs::File::create(staging.join("data"))?;
            fs::rename(&staging, self.upload_dir(&uuid))
        };
        create().map_err(|e| RegistryError::io(format!("start upload in {name}"), e))?;
        let progress = self.progress(&uuid);
        if let Ok(mut p) = progress.try_lock() {
            p.hasher = Some((Hasher::new(Algorithm::Sha256), 0));
        }
        Ok(uuid)
    }

    /// Bytes received so far by an upload.
    pub fn upload_size(&self, name: &str, uuid: &str) -> Result<u64, RegistryError> {
        let data = self.upload_data(name, uuid)?;
        fs::metadata(&data)
            .map(|m| m.len())
            .map_err(|_| RegistryError::BlobUploadUnknown(uuid.to_owned()))
    }

    /// Abandons an upload.
    pub async fn cancel_upload(&self, name: &str, uuid: &str) -> Result<(), RegistryError> {
        self.upload_data(name, uuid)?;
        let progress = self.progress(uuid);
        let _held = progress.lock().await;
        let dir = self.upload_dir(uuid);
        fs::remove_dir_all(&dir)
            .map_err(|e| RegistryError::io(format!("remove upload {uuid}"), e))?;
        self.forget(uuid);
        Ok(())
    }

    /// Appends a chunk to an upload. `range` is the chunk's `Content-Range` (first and
    /// last byte) when the client sent one. Returns the upload's new size. A chunk that
    /// does not arrive whole leaves the upload as it was.
    pub async fn append_upload<S, E>(
        &self,
        name: &str,
        uuid: &str,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let data = self.upload_data(name, uuid)?;
        let progress = self.progress(uuid);
        let mut progress = progress.lock().await;
        append_locked(name, uuid, &data, &mut progress, range, body, self).await
    }

    /// Appends the final chunk (possibly empty; `range` as for [`Registry::append_upload`]),
    /// verifies the digest of everything
    /// received and moves the blob into the store. A mismatch discards the upload.
    pub async fn finish_upload<S, E>(
        &self,
        name: &str,
        uuid: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let data = self.upload_data(name, uuid)?;
        let progress = self.progress(uuid);
        let mut progress = progress.lock().await;
        let size = append_locked(name, uuid, &data, &mut progress, range, body, self).await?;
        let actual = match &progress.hasher {
            Some((h, hashed)) if *hashed == size && h.algorithm() == digest.algorithm() => {
                h.clone().finish()
            }
            _ => hash_file(data.clone(), digest.algorithm()).await?,
        };
        let dir = self.upload_dir(uuid);
        if &actual != digest {
            let _ = fs::remove_dir_all(&dir);
            self.forget(uuid);
            return Err(RegistryError::DigestInvalid(format!(
                "Uploaded content has digest {actual}, not {digest}"
            )));
        }
        let (registry, name, digest) = (self.clone(), name.to_owned(), digest.clone());
        let committed = blocking(move || {
            let file =
                fs::File::open(&data).map_err(|e| RegistryError::io("open upload data", e))?;
            file.sync_all()
                .map_err(|e| RegistryError::io("sync upload data", e))?;
            let committed = registry.commit_blob(&name, &digest, &data);
            // Stored or refused (over quota), the upload is over either way.
            if !matches!(committed, Err(RegistryError::Io { .. })) {
                let _ = fs::remove_dir_all(&dir);
            }
            committed
        })
        .await;
        if let Err(e) = committed {
            drop(progress);
            if matches!(e, RegistryError::QuotaExceeded { .. }) {
                self.forget(uuid);
            }
            return Err(e);
        }
        drop(progress);
        self.forget(uuid);
        Ok(())
    }

    /// Stores a whole blob sent in one request, verifying its digest first.
    pub async fn put_blob<S, E>(
        &self,
        name: &str,
        digest: &Digest,
        body: S,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let tmp = self.tmp_path();
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| RegistryError::io("create temp file", e))?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hasher = Hasher::new(digest.algorithm());
        let budget = match self.budget(name, 0) {
            Ok(b) => b,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let written = match copy_body(&mut out, Some(&mut hasher), body, budget.as_ref()).await {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let actual = hasher.finish();
        if &actual != digest {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(RegistryError::DigestInvalid(format!(
                "Uploaded content has digest {actual}, not {digest}"
            )));
        }
        let file = out.into_inner();
        let (registry, name, digest) = (self.clone(), name.to_owned(), digest.clone());
        blocking(move || {
            let result = file
                .try_into_std()
                .map_err(|_| RegistryError::io("sync blob", std::io::Error::other("file busy")))
                .and_then(|f| f.sync_all().map_err(|e| RegistryError::io("sync blob", e)))
                .and_then(|()| registry.commit_blob(&name, &digest, &tmp));
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result
        })
        .await?;
        Ok(written)
    }
}
