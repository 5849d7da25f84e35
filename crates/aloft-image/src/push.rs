//! Pushing images to an OCI distribution registry: from an OCI image layout or a
//! `docker save` archive. Only blobs the registry lacks are uploaded.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Media types used when an image is converted on the way.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// What can go wrong pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("Cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable image: {reason}")]
    BadSource { path: PathBuf, reason: String },
    #[error("Destination {0:?} is not HOST[:PORT]/REPOSITORY[:TAG]")]
    BadDestination(String),
    #[error("Request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Registry answered {status} to {method} {url}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
}

/// Where to push and how to authenticate.
#[derive(Debug, Clone)]
pub struct PushTarget {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    pub tag: String,
    /// Sent as HTTP Basic (`aloft:<token>`), which the built-in registry accepts directly.
    pub token: Option<String>,
    pub plain_http: bool,
}

impl PushTarget {
    /// Parses `host[:port]/repo[/more][:tag]` (tag defaults to `latest`).
    pub fn parse(
        dest: &str,
        token: Option<String>,
        plain_http: bool,
    ) -> Result<PushTarget, PushError> {
        let bad = || PushError::BadDestination(dest.to_string());
        let (registry, rest) = dest.split_once('/').ok_or_else(bad)?;
        if registry.is_empty() || rest.is_empty() {
            return Err(bad());
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (rest, "latest"),
        };
        Ok(PushTarget {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
            token,
            plain_http,
        })
    }

    fn base(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.registry, self.repository)
    }
}

/// A blob to push: where its bytes are, its digest, size and media type.
#[derive(Debug, Clone)]
pub struct Blob {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// An image ready to push: its blobs (config first) and manifest bytes.
#[derive(Debug, Clone)]
pub struct PushableImage {
    pub blobs: Vec<Blob>,
    pub manifest: Vec<u8>,
    pub manifest_media_type: String,
}

/// Progress of a push, for a progress bar per blob.
#[derive(Debug, Clone)]
pub enum PushProgress {
    /// The registry already has the blob.
    Skipped {
        digest: String,
        size: u64,
    },
    Uploading {
        digest: String,
        size: u64,
    },
    Uploaded {
        digest: String,
        size: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PushError + '_ {
    move |source| PushError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> PushError {
    PushError::BadSource {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, PushError> {
    let (alg, hex) = digest
        .split_once(':')
        .filter(|(a, h)| {
            matches!(*a, "sha256" | "sha512") && h.chars().all(|c| c.is_ascii_hexdigit())
        })
        .ok_or_else(|| bad(layout, format!("invalid digest {digest:?}")))?;
    Ok(layout.join("blobs").join(alg).join(hex))
}

fn read_json(path: &Path) -> Result<Value, PushError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(path, format!("invalid JSON: {e}")))
}

/// Reads the image tagged `tag` (or the only one) from an OCI image layout.
pub fn from_oci_layout(layout: &Path, tag: Option<&str>) -> Result<PushableImage, PushError> {
    let index = read_json(&layout.join("index.json"))?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let chosen = match tag {
        Some(tag) => manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)),
        None if manifests.len() == 1 => manifests.first(),
        None => None,
    }
    .ok_or_else(|| match tag {
        Some(t) => bad(layout, format!("no image tagged {t:?}")),
        None => bad(layout, "several images: name a tag (DIR:TAG)"),
    })?;
    let digest = chosen["digest"].as_str().unwrap_or_default().to_string();
    let manifest_path = blob_path(layout, &digest)?;
    let manifest = std::fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let parsed: Value = serde_json::from_slice(&manifest)
        .map_err(|e| bad(&manifest_path, format!("invalid manifest: {e}")))?;
    if parsed.get("manifests").is_some() {
        return Err(bad(
            layout,
            "multi-platform indexes are not pushed yet; pick one platform",
        ));
    }
    let media_type = parsed["mediaType"]
        .as_str()
        .or_else(|| chosen["mediaType"].as_str())
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    let mut blobs = Vec::new();
    let descriptors =
        std::iter::once(&parsed["config"]).chain(parsed["layers"].as_array().into_iter().flatten());
    for d in descriptors {
        let digest = d["digest"]
            .as_str()
            .ok_or_else(|| bad(&manifest_path, "a descriptor has no digest"))?;
        blobs.push(Blob {
            path: blob_path(layout, digest)?,
            digest: digest.to_string(),
            size: d["size"].as_u64().unwrap_or(0),
            media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(PushableImage {
        blobs,
        manifest,
        manifest_media_type: media_type,
    })
}

/// Reads a `docker save` archive (its first image), unpacking it into `scratch`, and
/// describes it with an OCI manifest over its uncompressed layers.
pub fn from_docker_archive(archive: &Path, scratch: &Path) -> Result<PushableImage, PushError> {
    std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
    let file = std::fs::File::open(archive).map_err(io_err(archive))?;
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().map_err(io_err(archive))? {
        let mut entry = entry.map_err(io_err(archive))?;
        let name = entry.path().map_err(io_err(archive))?.to_path_buf();
        if name
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(
                archive,
                format!("entry {} leaves the archive", name.display()),
            ));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        entry.unpack_in(scratch).map_err(io_err(archive))?;
    }
    if scratch.join("index.json").exists() && scratch.join("oci-layout").exists() {
        return from_oci_layout(scratch, None);
    }
    let manifest = read_json(&scratch.join("manifest.json"))?;
    let first = manifest
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| bad(archive, "manifest.json lists no image"))?;
    let config_name = first["Config"]
        .as_str()
        .ok_or_else(|| bad(archive, "no Config"))?;
    let mut blobs = vec![file_blob(&scratch.join(config_name), OCI_CONFIG)?];
    for layer in first["Layers"].as_array().into_iter().flatten() {
        let name = layer
            .as_str()
            .ok_or_else(|| bad(archive, "a layer name is not a string"))?;
        blobs.push(file_blob(&scratch.join(name), OCI_LAYER_TAR)?);
    }
    let descriptor =
        |b: &Blob| json!({"mediaType": b.media_type, "digest": b.digest, "size": b.size});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(&blobs[0]),
        "layers": blobs[1..].iter().map(descriptor).collect::<Vec<_>>(),
    });
    Ok(PushableImage {
        blobs,
        manifest: serde_json::to_vec(&manifest).unwrap_or_default(),
        manifest_media_type: OCI_MANIFEST.to_string(),
    })
}

fn file_blob(path: &Path, media_type: &str) -> Result<Blob, PushError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Blob {
        path: path.to_path_buf(),
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
        media_type: media_type.to_string(),
    })
}

/// Pushes `image` to `target`; returns the manifest digest.
pub async fn push(
    image: &PushableImage,
    target: &PushTarget,
    progress: &(dyn Fn(PushProgress) + Send + Sync),
) -> Result<String, PushError> {
    let http = reqwest::Client::new();
    let auth = |rb: reqwest::RequestBuilder| match &target.token {
        Some(t) => rb.basic_auth("aloft", Some(t)),
        None => rb,
    };
    let base = target.base();
    for blob in &image.blobs {
        let url = format!("{base}/blobs/{}", blob.digest);
        let head = send(auth(http.head(&url)), "HEAD", &url).await?;
        if head.status().is_success() {
            progress(PushProgress::Skipped {
                digest: blob.digest.clone(),
                size: blob.size,
            });
            continue;
        }
        progress(PushProgress::Uploading {
            digest: blob.digest.clone(),
            size: blob.size,
        });
        let start_url = format!("{base}/blobs/uploads/");
        let started = expect_ok(
            send(auth(http.post(&start_url)), "POST", &start_url).await?,
            "POST",
            &start_url,
        )
        .await?;
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PushError::Status {
                method: "POST",
                url: start_url.clone(),
                status: started.status().as_u16(),
                body: "no Location header".into(),
            })?
            .to_string();
        let mut put_url = if location.starts_with("http") {
            location
        } else {
            let scheme = if target.plain_http { "http" } else { "https" };
            format!("{scheme}://{}{location}", target.registry)
        };
        put_url.push(if put_url.contains('?') { '&' } else { '?' });
        put_url.push_str("digest=");
        put_url.push_str(&blob.digest);
        let file = tokio::fs::File::open(&blob.path)
            .await
            .map_err(io_err(&blob.path))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let rb = auth(http.put(&put_url))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, blob.size)
            .body(body);
        expect_ok(send(rb, "PUT", &put_url).await?, "PUT", &put_url).await?;
        progress(PushProgress::Uploaded {
            digest: blob.digest.clone(),
            size: blob.size,
        });
    }
    let url = format!("{base}/manifests/{}", target.tag);
    let rb = auth(http.put(&url))
        .header(reqwest::header::CONTENT_TYPE, &image.manifest_media_type)
        .body(image.manifest.clone());
    expect_ok(send(rb, "PUT", &url).await?, "PUT", &url).await?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(&image.manifest))
    ))
}

async fn send(
    rb: reqwest::RequestBuilder,
    _method: &'static str,
    url: &str,
) -> Result<reqwest::Response, PushError> {
    rb.send().await.map_err(|source| PushError::Http {
        url: url.to_string(),
        source,
    })
}

async fn expect_ok(
    r: reqwest::Response,
    method: &'static str,
    url: &str,
) -> Result<reqwest::Response, PushError> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    Err(PushError::Status {
        method,
        url: url.to_string(),
        status,
        body: body.chars().take(500).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        let t = PushTarget::parse("127.0.0.1:4280/app/web:v1", None, true).unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.tag.as_str()),
            ("127.0.0.1:4280", "app/web", "v1")
        );
        let t = PushTarget::parse("reg:5000/app", None, true).unwrap();
        assert_eq!((t.repository.as_str(), t.tag.as_str()), ("app", "latest"));
        assert!(PushTarget::parse("justaname", None, true).is_err());
    }
}
