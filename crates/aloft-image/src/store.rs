//! The on-disk store: unpacked layers, manifest/config blobs, image records and references.
//!
//! ```text
//! <root>/layers/<algo>/<hex>/rootfs       unpacked layer (complete once layer.json exists)
//! <root>/layers/<algo>/<hex>/layer.json   diff id and the layer's implicit directories
//! <root>/blobs/<algo>/<hex>               manifests and configs
//! <root>/images/<algo>/<hex>.json         image records, by manifest digest
//! <root>/refs.json                        reference -> manifest digest
//! <root>/tmp/                             work in progress, emptied on open
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::registry::RegistryClient;
use crate::unpack::{check_implicit_dirs, unpack_layer, Budget, UnpackLimits};
use crate::{oci, GcReport, Image, ImageError, LayerRef};

/// Unpacked layers and image records under one root directory. Cheap to clone; clones
/// share the single-flight state, so one store per host.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

pub(crate) struct Inner {
    root: PathBuf,
    /// One async lock per digest being fetched or unpacked.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests an operation in progress relies on; gc leaves them alone.
    pins: Mutex<HashMap<String, usize>>,
    refs: Mutex<()>,
    tmp_counter: AtomicU64,
    limits: std::sync::RwLock<UnpackLimits>,
    pub(crate) http: reqwest::Client,
}

/// Where a blob's bytes are.
pub(crate) enum BlobSource<'a> {
    /// `len` bytes of a local file from `offset`.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// A registry repository.
    Remote(&'a RegistryClient),
}

/// Everything needed to record an image once its documents are known.
pub(crate) struct Assembly {
    pub references: Vec<String>,
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<LayerDesc>,
}

/// A layer as a manifest lists it.
#[derive(Clone)]
pub(crate) struct LayerDesc {
    pub digest: Digest,
    pub media_type: String,
    /// The declared size; a blob of another size is refused.
    pub size: Option<u64>,
}

fn size_mismatch(digest: &Digest, actual: u64, declared: u64) -> ImageError {
    ImageError::invalid(
        format!("blob {digest}"),
        format!("it has {actual} bytes, the manifest says {declared}"),
    )
}

#[derive(Serialize, Deserialize)]
struct LayerMeta {
    digest: String,
    diff_id: String,
    media_type: String,
    implicit_dirs: Vec<String>,
    /// Bytes of file content (0 in records written before it was counted).
    #[serde(default)]
    bytes: u64,
    /// Entries (0 in records written before it was counted).
    #[serde(default)]
    files: u64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    image: Image,
    config_digest: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a digest out of gc's reach while alive.
pub(crate) struct Pin {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = lock(&self.inner.pins);
        if let Some(n) = pins.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.key);
            }
        }
    }
}

/// Removes a work directory unless disarmed.
struct TmpDir(Option<PathBuf>);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_dir_all(&path);
            let _ = fs::remove_file(&path);
        }
    }
}

fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(ImageError::io(parent))?;
    }
    fs::write(tmp, bytes).map_err(ImageError::io(tmp))?;
    fs::rename(tmp, dest).map_err(ImageError::io(dest))
}

impl ImageStore {
    /// Open (creating if needed) the store at `root` and discard unfinished work.
    pub fn open(root: impl AsRef<Path>) -> Result<ImageStore, ImageError> {
        let root = root.as_ref().to_path_buf();
        for dir in ["layers", "blobs", "images"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(ImageError::io(&path))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(ImageError::io(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(ImageError::io(&tmp))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("aloft-image/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ImageError::Http {
                url: String::new(),
                source,
            })?;
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root,
                flights: Mutex::default(),
                pins: Mutex::default(),
                refs: Mutex::default(),
                tmp_counter: AtomicU64::new(0),
                limits: std::sync::RwLock::new(UnpackLimits::default()),
                http,
            }),
        })
    }

    /// Set how much one image may unpack to (default [`UnpackLimits::default`]). Applies
    /// to images stored from now on; an image over the limit is refused with
    /// [`ImageError::TooLarge`], already unpacked layers included in its count.
    pub fn set_limits(&self, limits: UnpackLimits) {
        *self
            .inner
            .limits
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    fn limits(&self) -> UnpackLimits {
        *self
            .inner
            .limits
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// A cached image by the reference it was pulled/imported as, or by manifest digest.
    pub fn get(&self, reference_or_digest: &str) -> Result<Option<Image>, ImageError> {
        let digest = match reference_or_digest.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => match self.read_refs()?.get(reference_or_digest) {
                Some(d) => d.parse()?,
                None => return Ok(None),
            },
        };
        Ok(self.read_record(&digest)?.map(|r| r.image))
    }

    /// Remove image records whose manifest digest is not in `in_use`, then every layer and
    /// blob no remaining image uses. Work in progress (a pull or import) is never removed.
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport, ImageError> {
        let pins = lock(&self.inner.pins);
        let mut report = GcReport::default();
        let mut keep: HashSet<String> = HashSet::new();
        for path in list_two_levels(&self.inner.root.join("images"))? {
            let Some(key) = key_of(&path, ".json") else {
                continue;
            };
            let record: Record = read_json(&path)?;
            if in_use.contains(&key) || pins.contains_key(&key) {
                keep.insert(key);
                keep.insert(record.config_digest);
                keep.extend(record.image.layers.into_iter().map(|l| l.digest));
            } else {
                fs::remove_file(&path).map_err(ImageError::io(&path))?;
                report.images_removed.push(key);
            }
        }
        {
            let _guard = lock(&self.inner.refs);
            let mut refs = self.read_refs()?;
            let before = refs.len();
            refs.retain(|_, d| keep.contains(d.as_str()));
            if refs.len() != before {
                self.write_refs(&refs)?;
            }
        }
        for path in list_two_levels(&self.inner.root.join("layers"))? {
            let Some(key) = key_of(&path, "") else {
                continue;
            };
            if !keep.contains(&key) && !pins.contains_key(&key) {
                fs::remove_dir_all(&path).map_err(ImageError::io(&path))?;
                report.layers_removed.push(key);
            }
        }
        for path in list_two_levels(&self.inner.root.join("blobs"))? {
            let Some(key) = key_of(&path, "") else {
                continue;
            };
            if !keep.contains(&key) && !pins.contains_key(&key) {
                fs::remove_file(&path).map_err(ImageError::io(&path))?;
                report.blobs_removed += 1;
            }
        }
        tracing::info!(
            images = report.images_removed.len(),
            layers = report.layers_removed.len(),
            "image store collected"
        );
        Ok(report)
    }

    pub(crate) fn pin(&self, digest: &Digest) -> Pin {
        let key = digest.to_string();
        *lock(&self.inner.pins).entry(key.clone()).or_default() += 1;
        Pin {
            inner: self.inner.clone(),
            key,
        }
    }

    fn flight(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.flights)
            .entry(digest.to_string())
            .or_default()
            .clone()
    }

    fn end_flight(&self, digest: &Digest, flight: Arc<tokio::sync::Mutex<()>>) {
        let mut flights = lock(&self.inner.flights);
        drop(flight);
        let key = digest.to_string();
        if flights.get(&key).is_some_and(|f| Arc::strong_count(f) == 1) {
            flights.remove(&key);
        }
    }

    fn tmp_path(&self, digest: &Digest) -> PathBuf {
        let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.inner
            .root
            .join("tmp")
            .join(format!("{}-{}-{n}", digest.hex(), std::process::id()))
    }

    fn under(&self, dir: &str, digest: &Digest) -> PathBuf {
        self.inner
            .root
            .join(dir)
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    fn record_path(&self, digest: &Digest) -> PathBuf {
        let mut p = self.under("images", digest);
        p.set_extension("json");
        p
    }

    fn read_record(&self, digest: &Digest) -> Result<Option<Record>, ImageError> {
        let path = self.record_path(digest);
        if !path.exists() {
            return Ok(None);
        }
        let mut record: Record = read_json(&path)?;
        for layer in &mut record.image.layers {
            layer.path = self.under("layers", &layer.digest.parse()?).join("rootfs");
        }
        Ok(Some(record))
    }

    fn read_refs(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.inner.root.join("refs.json");
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        read_json(&path)
    }

    fn write_refs(&self, refs: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(refs)
            .map_err(|e| ImageError::invalid("references", e.to_string()))?;
        let tmp = self
            .inner
            .root
            .join("tmp")
            .join(format!("refs-{}", std::process::id()));
        write_atomic(&tmp, &self.inner.root.join("refs.json"), &bytes)
    }

    /// A stored manifest or config blob, fetched once from `source` if missing.
    pub(crate) async fn ensure_blob(
        &self,
        digest: &Digest,
        source: BlobSource<'_>,
    ) -> Result<Vec<u8>, ImageError> {
        let path = self.under("blobs", digest);
        let flight = self.flight(digest);
        let result = async {
            let _guard = flight.lock().await;
            if let Ok(bytes) = fs::read(&path) {
                return Ok(bytes);
            }
            let bytes = match source {
                BlobSource::Remote(client) => client.blob_bytes(digest).await?,
                BlobSource::File { path, offset, len } => read_slice(&path, offset, len)?,
            };
            digest.verify(&bytes)?;
            write_atomic(&self.tmp_path(digest), &path, &bytes)?;
            Ok(bytes)
        }
        .await;
        self.end_flight(digest, flight);
        result
    }

    /// The unpacked layer `digest`, unpacking it (once per host) from `source` if needed.
    async fn ensure_layer(
        &self,
        desc: &LayerDesc,
        source: &BlobSource<'_>,
        lowers: &[PathBuf],
        budget: &mut Budget,
    ) -> Result<LayerRef, ImageError> {
        let (digest, media_type) = (&desc.digest, desc.media_type.as_str());
        let flight = self.flight(digest);
        let result = async {
            let _guard = flight.lock().await;
            let dir = self.under("layers", digest);
            let meta_path = dir.join("layer.json");
            if meta_path.exists() {
                let meta: LayerMeta = read_json(&meta_path)?;
                check_implicit_dirs(digest, &meta.implicit_dirs, lowers)?;
                budget.spend(digest, meta.files, meta.bytes)?;
                return Ok(LayerRef {
                    digest: digest.to_string(),
                    diff_id: meta.diff_id,
                    path: dir.join("rootfs"),
                });
            }
            if dir.exists() {
                // Not ours to trust: a directory without its completion record.
                fs::remove_dir_all(&dir).map_err(ImageError::io(&dir))?;
            }
            let mut downloaded = TmpDir(None);
            let (file, offset, len) = match source {
                BlobSource::File { path, offset, len } => match desc.size {
                    Some(size) if size != *len => return Err(size_mismatch(digest, *len, size)),
                    _ => (path.clone(), *offset, *len),
                },
                BlobSource::Remote(client) => {
                    let tmp = self.tmp_path(digest);
                    downloaded.0 = Some(tmp.clone());
                    let len = client.blob_to_file(digest, &tmp, desc.size).await?;
                    (tmp, 0, len)
                }
            };
            let work = TmpDir(Some(self.tmp_path(digest)));
            let work_dir = work.0.clone().unwrap_or_default();
            let rootfs = work_dir.join("rootfs");
            fs::create_dir_all(&rootfs).map_err(ImageError::io(&rootfs))?;
            let (d, mt, lw, rf) = (
                digest.clone(),
                media_type.to_owned(),
                lowers.to_vec(),
                rootfs.clone(),
            );
            let mut b = *budget;
            let (unpacked, b) = tokio::task::spawn_blocking(move || {
                let mut f = fs::File::open(&file).map_err(ImageError::io(&file))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(ImageError::io(&file))?;
                let unpacked = unpack_layer(f.take(len), &d, &mt, &rf, &lw, &mut b)?;
                Ok::<_, ImageError>((unpacked, b))
            })
            .await
            .map_err(ImageError::Task)??;
            *budget = b;
            let meta = LayerMeta {
                digest: digest.to_string(),
                diff_id: unpacked.diff_id.to_string(),
                media_type: media_type.to_owned(),
                implicit_dirs: unpacked.implicit_dirs,
                bytes: unpacked.bytes,
                files: unpacked.files,
            };
            let bytes = serde_json::to_vec_pretty(&meta)
                .map_err(|e| ImageError::invalid("layer record", e.to_string()))?;
            let meta_tmp = work_dir.join("layer.json");
            fs::write(&meta_tmp, bytes).map_err(ImageError::io(&meta_tmp))?;
            let parent = dir.parent().unwrap_or(&dir);
            fs::create_dir_all(parent).map_err(ImageError::io(parent))?;
            let mut work = work;
            match fs::rename(&work_dir, &dir) {
                Ok(()) => work.0 = None,
                // Another process sharing this root finished first; keep its copy.
                Err(_) if meta_path.exists() => {}
                Err(e) => return Err(ImageError::io(&dir)(e)),
            }
            tracing::info!(%digest, diff_id = %meta.diff_id, "layer unpacked");
            Ok(LayerRef {
                digest: digest.to_string(),
                diff_id: meta.diff_id,
                path: dir.join("rootfs"),
            })
        }
        .await;
        self.end_flight(digest, flight);
        result
    }

    /// Unpack the layers, store the documents and record the image under its references.
    pub(crate) async fn assemble<'s>(
        &self,
        a: Assembly,
        source: impl Fn(usize) -> Result<BlobSource<'s>, ImageError>,
    ) -> Result<Image, ImageError> {
        let _pins: Vec<Pin> = [&a.manifest_digest, &a.config_digest]
            .into_iter()
            .chain(a.layers.iter().map(|l| &l.digest))
            .map(|d| self.pin(d))
            .collect();
        let (config, diff_ids) = oci::parse_config(&a.config_bytes)?;
        if diff_ids.len() != a.layers.len() {
            return Err(ImageError::invalid(
                format!("manifest {}", a.manifest_digest),
                format!(
                    "{} layers but the config lists {} diff ids",
                    a.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers: Vec<LayerRef> = Vec::with_capacity(a.layers.len());
        let mut budget = Budget::new(self.limits());
        for (i, (desc, expected)) in a.layers.iter().zip(&diff_ids).enumerate() {
            let digest = &desc.digest;
            let lowers: Vec<PathBuf> = layers.iter().map(|l| l.path.clone()).collect();
            let layer = self
                .ensure_layer(desc, &source(i)?, &lowers, &mut budget)
                .await?;
            if layer.diff_id != expected.to_string() {
                return Err(ImageError::DiffIdMismatch {
                    digest: digest.to_string(),
                    expected: expected.to_string(),
                    actual: layer.diff_id,
                });
            }
            layers.push(layer);
        }
        for (digest, bytes) in [
            (&a.manifest_digest, &a.manifest_bytes),
            (&a.config_digest, &a.config_bytes),
        ] {
            let path = self.under("blobs", digest);
            if !path.exists() {
                digest.verify(bytes)?;
                write_atomic(&self.tmp_path(digest), &path, bytes)?;
            }
        }
        let image = Image {
            reference: a
                .references
                .first()
                .cloned()
                .unwrap_or_else(|| a.manifest_digest.to_string()),
            manifest_digest: a.manifest_digest.to_string(),
            config,
            layers,
        };
        let record = Record {
            image: image.clone(),
            config_digest: a.config_digest.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| ImageError::invalid("image record", e.to_string()))?;
        write_atomic(
            &self.tmp_path(&a.manifest_digest),
            &self.record_path(&a.manifest_digest),
            &bytes,
        )?;
        {
            let _guard = lock(&self.inner.refs);
            let mut refs = self.read_refs()?;
            for r in &a.references {
                refs.insert(r.clone(), image.manifest_digest.clone());
            }
            self.write_refs(&refs)?;
        }
        tracing::info!(reference = %image.reference, digest = %image.manifest_digest, "image stored");
        Ok(image)
    }
}

pub(crate) fn read_slice(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, ImageError> {
    let mut f = fs::File::open(path).map_err(ImageError::io(path))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(ImageError::io(path))?;
    let mut out = Vec::new();
    f.take(len)
        .read_to_end(&mut out)
        .map_err(ImageError::io(path))?;
    Ok(out)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(path).map_err(ImageError::io(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::invalid(path.display().to_string(), e.to_string()))
}

/// `<dir>/<algo>/<entry>` paths.
fn list_two_levels(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut out = Vec::new();
    for algo in fs::read_dir(dir).map_err(ImageError::io(dir))? {
        let algo = algo.map_err(ImageError::io(dir))?.path();
        if !algo.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&algo).map_err(ImageError::io(&algo))? {
            out.push(entry.map_err(ImageError::io(&algo))?.path());
        }
    }
    Ok(out)
}

/// `algo:hex` for `<algo>/<hex><suffix>`.
fn key_of(path: &Path, suffix: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?.strip_suffix(suffix)?;
    let algo = path.parent()?.file_name()?.to_str()?;
    let key = format!("{algo}:{name}");
    key.parse::<Digest>().ok().map(|d| d.to_string())
}
