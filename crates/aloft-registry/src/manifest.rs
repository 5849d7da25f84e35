//! Manifest parsing: media types, the blobs and child manifests a manifest references,
//! its subject and artifact type.

use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::error::RegistryError;

/// Manifest media types the registry accepts.
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub(crate) const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
}

use media_types::*;

/// The largest manifest accepted on push.
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone)]
pub(crate) struct ParsedManifest {
    pub(crate) media_type: String,
    /// Config and layers, which must be blobs of the repository.
    pub(crate) blobs: Vec<Digest>,
    /// Child manifests of an index, which must be manifests of the repository.
    pub(crate) children: Vec<Digest>,
    pub(crate) subject: Option<Digest>,
    pub(crate) artifact_type: Option<String>,
    pub(crate) annotations: Option<Map<String, Value>>,
}

fn is_known(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST
    )
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(msg.into())
}

fn descriptor_digest(v: &Value, what: &str) -> Result<Digest, RegistryError> {
    let d = v
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("Manifest {what} has no digest")))?;
    d.parse()
        .map_err(|_| invalid(format!("Manifest {what} digest {d:?} is not valid")))
}

/// Parses a pushed manifest. `content_type` is the request's `Content-Type`, parameters
/// stripped by the caller or not.
pub(crate) fn parse(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ParsedManifest, RegistryError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("Manifest is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("Manifest is not a JSON object"))?;
    if obj.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err(invalid("Manifest schemaVersion must be 2"));
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| is_known(c));
    let field = obj.get("mediaType").and_then(Value::as_str);
    let media_type = match (header, field) {
        (Some(h), Some(f)) if h != f => {
            return Err(invalid(format!(
                "Manifest mediaType {f:?} does not match Content-Type {h:?}"
            )))
        }
        (Some(h), _) => h.to_owned(),
        (None, Some(f)) if is_known(f) => f.to_owned(),
        (None, Some(f)) => {
            return Err(invalid(format!(
                "Manifest media type {f:?} is not supported"
            )))
        }
        (None, None) => match content_type {
            Some(c) => {
                return Err(invalid(format!(
                    "Manifest media type {c:?} is not supported"
                )))
            }
            None => return Err(invalid("Manifest has no media type")),
        },
    };

    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut artifact_type = obj
        .get("artifactType")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        let list = obj
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("Index has no manifests array"))?;
        for m in list {
            children.push(descriptor_digest(m, "index entry")?);
        }
    } else {
        let config = obj
            .get("config")
            .ok_or_else(|| invalid("Manifest has no config"))?;
        blobs.push(descriptor_digest(config, "config")?);
        if artifact_type.is_none() && media_type == OCI_MANIFEST {
            artifact_type = config
                .get("mediaType")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        let layers = obj
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("Manifest has no layers array"))?;
        for layer in layers {
            let foreign = layer.get("mediaType").and_then(Value::as_str)
                == Some(DOCKER_FOREIGN_LAYER)
                || layer.get("urls").is_some();
            let digest = descriptor_digest(layer, "layer")?;
            if !foreign {
                blobs.push(digest);
            }
        }
    }
    let subject = match obj.get("subject") {
        Some(s) => Some(descriptor_digest(s, "subject")?),
        None => None,
    };
    let annotations = obj.get("annotations").and_then(Value::as_object).cloned();
    Ok(ParsedManifest {
        media_type,
        blobs,
        children,
        subject,
        artifact_type,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    fn d(s: &str) -> String {
        Digest::of(Algorithm::Sha256, s.as_bytes()).to_string()
    }

    #[test]
    fn image_manifest_lists_config_layers_and_subject() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.example.sig", "digest": d("c"), "size": 1},
            "layers": [{"mediaType": "x", "digest": d("l"), "size": 1}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": d("s"), "size": 1},
        });
        let p = parse(None, body.to_string().as_bytes()).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.subject.unwrap().to_string(), d("s"));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.example.sig")
        );
    }

    #[test]
    fn rejects_mismatched_media_type_and_bad_json() {
        let body = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        assert!(parse(Some(OCI_MANIFEST), body.to_string().as_bytes()).is_err());
        assert!(parse(Some(OCI_INDEX), body.to_string().as_bytes()).is_ok());
        assert!(parse(Some(OCI_MANIFEST), b"{not json").is_err());
        assert!(parse(Some("application/json"), br#"{"schemaVersion":2}"#).is_err());
    }
}
