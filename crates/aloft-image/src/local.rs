//! Imports from local files: an OCI image layout directory, and a `docker save` archive in
//! either the legacy format (`manifest.json`, `<config>.json`, layer tars) or the newer one
//! that embeds an OCI layout (`oci-layout`, `index.json`, `blobs/`).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::digest::{Algorithm, Digest, HashingReader};
use crate::oci::{self, Parsed};
use crate::store::{read_slice, Assembly, BlobSource, LayerDesc};
use crate::{Image, ImageError, ImageStore};

/// Files of a layout or archive: a directory, or regular files inside a tar.
enum Files {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        entries: HashMap<String, (u64, u64)>,
    },
}

fn blob_rel(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().name(), d.hex())
}

/// Normalise `rel` relative to `base` (a directory inside the archive), refusing escapes.
fn join_inside(base: &Path, rel: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let start = if rel.starts_with('/') {
        Path::new("")
    } else {
        base
    };
    for c in start.join(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.join("/"))
}

impl Files {
    fn scan_tar(file: PathBuf) -> Result<Files, ImageError> {
        let f = fs::File::open(&file).map_err(ImageError::io(&file))?;
        let mut archive = tar::Archive::new(f);
        let bad = |e: std::io::Error| {
            ImageError::invalid(format!("archive {}", file.display()), e.to_string())
        };
        let mut entries = HashMap::new();
        let mut links = Vec::new();
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let path = entry.path().map_err(bad)?;
            let Some(name) = join_inside(Path::new(""), &path.to_string_lossy()) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    entries.insert(name, (entry.raw_file_position(), entry.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Ok(Some(target)) = entry.link_name() {
                        links.push((
                            name,
                            target.to_string_lossy().into_owned(),
                            entry.header().entry_type(),
                        ));
                    }
                }
                _ => {}
            }
        }
        for (name, target, kind) in links {
            let base = match kind {
                tar::EntryType::Symlink => Path::new(&name)
                    .parent()
                    .unwrap_or(Path::new(""))
                    .to_path_buf(),
                _ => PathBuf::new(),
            };
            if let Some(at) = join_inside(&base, &target).and_then(|t| entries.get(&t).copied()) {
                entries.insert(name, at);
            }
        }
        Ok(Files::Tar { file, entries })
    }

    fn has(&self, rel: &str) -> bool {
        match self {
            Files::Dir(dir) => dir.join(rel).is_file(),
            Files::Tar { entries, .. } => entries.contains_key(rel),
        }
    }

    fn locate(&self, rel: &str) -> Result<(PathBuf, u64, u64), ImageError> {
        match self {
            Files::Dir(dir) => {
                let path = dir.join(rel);
                let meta = fs::metadata(&path).map_err(ImageError::io(&path))?;
                Ok((path, 0, meta.len()))
            }
            Files::Tar { file, entries } => {
                let (offset, len) = entries.get(rel).ok_or_else(|| {
                    ImageError::invalid(
                        format!("archive {}", file.display()),
                        format!("{rel} is missing"),
                    )
                })?;
                Ok((file.clone(), *offset, *len))
            }
        }
    }

    fn source(&self, rel: &str) -> Result<BlobSource<'static>, ImageError> {
        let (path, offset, len) = self.locate(rel)?;
        Ok(BlobSource::File { path, offset, len })
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, ImageError> {
        let (path, offset, len) = self.locate(rel)?;
        if len > 64 << 20 {
            return Err(ImageError::invalid(rel, "document larger than 64 MiB"));
        }
        read_slice(&path, offset, len)
    }

    fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let bytes = self.read(&blob_rel(d))?;
        d.verify(&bytes)?;
        Ok(bytes)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ImageStore {
    /// Import from an OCI image layout directory. `tag` selects the manifest whose
    /// `org.opencontainers.image.ref.name` annotation equals it; without one the index must
    /// hold a single image (or one linux/amd64 entry).
    #[tracing::instrument(skip(self), err(Display))]
    pub async fn import_oci_layout(
        &self,
        dir: &Path,
        tag: Option<&str>,
    ) -> Result<Image, ImageError> {
        self.import_layout(&Files::Dir(dir.to_path_buf()), tag, Vec::new())
            .await
    }

    /// Import from a `docker save` (or `skopeo copy … docker-archive:`) tar file.
    #[tracing::instrument(skip(self), err(Display))]
    pub async fn import_docker_archive(&self, tar: &Path) -> Result<Image, ImageError> {
        let path = tar.to_path_buf();
        let files = tokio::task::spawn_blocking(move || Files::scan_tar(path))
            .await
            .map_err(ImageError::Task)??;
        let what = format!("archive {}", tar.display());
        let docker: Option<Vec<DockerManifest>> = if files.has("manifest.json") {
            let bytes = files.read("manifest.json")?;
            Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| ImageError::invalid(&what, e.to_string()))?,
            )
        } else {
            None
        };
        let first = docker.as_ref().and_then(|m| m.first());
        let tags: Vec<String> = first.and_then(|m| m.repo_tags.clone()).unwrap_or_default();
        if files.has("oci-layout") && files.has("index.json") {
            return self.import_layout(&files, None, tags).await;
        }
        let m = first.ok_or_else(|| ImageError::invalid(&what, "manifest.json lists no image"))?;
        let config_bytes =
            files.read(&join_inside(Path::new(""), &m.config).unwrap_or_default())?;
        let config_digest = Digest::sha256_of(&config_bytes);
        let mut layers = Vec::new();
        let mut manifest_layers = Vec::new();
        for layer in &m.layers {
            let rel = join_inside(Path::new(""), layer)
                .ok_or_else(|| ImageError::invalid(&what, format!("layer path {layer} escapes")))?;
            let (path, offset, len) = files.locate(&rel)?;
            let digest = match rel.strip_prefix("blobs/").and_then(|r| r.split_once('/')) {
                Some((algo, hex)) => format!("{algo}:{hex}").parse()?,
                None => tokio::task::spawn_blocking(move || {
                    let mut f = fs::File::open(&path).map_err(ImageError::io(&path))?;
                    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))
                        .map_err(ImageError::io(&path))?;
                    let reader = HashingReader::new(f.take(len), Algorithm::Sha256);
                    reader
                        .drain_and_finish()
                        .map(|(d, _)| d)
                        .map_err(ImageError::io(&path))
                })
                .await
                .map_err(ImageError::Task)??,
            };
            manifest_layers.push(serde_json::json!({"mediaType": oci::OCI_LAYER_TAR, "digest": digest.to_string(), "size": len}));
            layers.push((digest, rel));
        }
        // Legacy archives carry no manifest: synthesise the OCI manifest they stand for.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": manifest_layers,
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| ImageError::invalid(&what, e.to_string()))?;
        let assembly = Assembly {
            references: tags,
            manifest_digest: Digest::sha256_of(&manifest_bytes),
            manifest_bytes,
            config_digest,
            config_bytes,
            layers: layers
                .iter()
                .map(|(d, _)| LayerDesc {
                    digest: d.clone(),
                    media_type: oci::OCI_LAYER_TAR.to_owned(),
                    size: None,
                })
                .collect(),
        };
        self.assemble(assembly, |i| files.source(&layers[i].1))
            .await
    }

    async fn import_layout(
        &self,
        files: &Files,
        tag: Option<&str>,
        mut references: Vec<String>,
    ) -> Result<Image, ImageError> {
        let layout: serde_json::Value = serde_json::from_slice(&files.read("oci-layout")?)
            .map_err(|e| ImageError::invalid("oci-layout", e.to_string()))?;
        if layout.get("imageLayoutVersion").is_none() {
            return Err(ImageError::invalid("oci-layout", "no imageLayoutVersion"));
        }
        let Parsed::Index(list) = oci::parse_document(&files.read("index.json")?, "index.json")?
        else {
            return Err(ImageError::invalid("index.json", "not an image index"));
        };
        let ref_name = |d: &oci::Descriptor| d.annotations.get(oci::REF_NAME).cloned();
        let chosen = match tag {
            Some(t) => list
                .iter()
                .find(|d| ref_name(d).as_deref() == Some(t))
                .ok_or_else(|| {
                    ImageError::invalid("index.json", format!("no image is tagged {t:?}"))
                })?,
            None if list.len() == 1 => &list[0],
            None => oci::pick_platform(&list, "index.json")?,
        };
        if references.is_empty() {
            references.extend(ref_name(chosen));
        }
        let mut digest = chosen.digest()?;
        let mut bytes = files.read_blob(&digest)?;
        let (config, layers) = loop {
            match oci::parse_document(&bytes, &format!("manifest {digest}"))? {
                Parsed::Index(list) => {
                    digest = oci::pick_platform(&list, &digest.to_string())?.digest()?;
                    bytes = files.read_blob(&digest)?;
                }
                Parsed::Manifest { config, layers } => break (config, layers),
            }
        };
        let config_digest = config.digest()?;
        let config_bytes = files.read_blob(&config_digest)?;
        let layers = layers
            .iter()
            .map(|l| {
                Ok(LayerDesc {
                    digest: l.digest()?,
                    media_type: l.media_type.clone(),
                    size: l.size,
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        let assembly = Assembly {
            references,
            manifest_digest: digest,
            manifest_bytes: bytes,
            config_digest,
            config_bytes,
            layers: layers.clone(),
        };
        self.assemble(assembly, |i| files.source(&blob_rel(&layers[i].digest)))
            .await
    }
}
