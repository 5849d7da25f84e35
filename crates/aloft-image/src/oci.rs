//! The JSON documents of an image: index, manifest, config (OCI and Docker schema2).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::digest::Digest;
use crate::{ImageConfig, ImageError};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

impl Descriptor {
    pub(crate) fn digest(&self) -> Result<Digest, ImageError> {
        Ok(self.digest.parse()?)
    }

    fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// An index/manifest list or an image manifest; which one is told by the fields present.
#[derive(Debug, Deserialize)]
pub(crate) struct Document {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

/// What a manifest or index resolved to.
pub(crate) enum Parsed {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

pub(crate) fn parse_document(bytes: &[u8], what: &str) -> Result<Parsed, ImageError> {
    let doc: Document =
        serde_json::from_slice(bytes).map_err(|e| ImageError::invalid(what, e.to_string()))?;
    if let Some(manifests) = doc.manifests {
        return Ok(Parsed::Index(manifests));
    }
    match (doc.config, doc.layers) {
        (Some(config), Some(layers)) => Ok(Parsed::Manifest { config, layers }),
        _ => Err(ImageError::invalid(
            what,
            format!(
                "neither an index nor an image manifest (media type {})",
                doc.media_type.as_deref().unwrap_or("unset")
            ),
        )),
    }
}

/// The linux/amd64 entry of an index (an entry without a platform counts when it is the only one).
pub(crate) fn pick_platform<'a>(
    manifests: &'a [Descriptor],
    index: &str,
) -> Result<&'a Descriptor, ImageError> {
    let is_attestation = |d: &Descriptor| {
        d.annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
    };
    manifests
        .iter()
        .filter(|d| !is_attestation(d))
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| match manifests {
            [only] if only.platform.is_none() || only.is_index() => Some(only),
            _ => None,
        })
        .ok_or_else(|| ImageError::NoMatchingPlatform(index.to_owned()))
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    user: Option<String>,
    working_dir: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
}

/// Parse an image config into the runtime settings and the layers' diff ids.
pub(crate) fn parse_config(bytes: &[u8]) -> Result<(ImageConfig, Vec<Digest>), ImageError> {
    let file: ConfigFile =
        serde_json::from_slice(bytes).map_err(|e| ImageError::invalid("config", e.to_string()))?;
    let diff_ids = file
        .rootfs
        .diff_ids
        .iter()
        .map(|d| d.parse())
        .collect::<Result<Vec<Digest>, _>>()?;
    let c = file.config.unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let config = ImageConfig {
        env: c.env.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        user: non_empty(c.user),
        working_dir: non_empty(c.working_dir),
        exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
        labels: c.labels.unwrap_or_default(),
        stop_signal: non_empty(c.stop_signal),
    };
    Ok((config, diff_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_are_read() {
        let json = br#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["A=1"],"Entrypoint":["/bin/app"],"Cmd":["serve"],"User":"1000:1000",
            "WorkingDir":"/srv","ExposedPorts":{"8080/tcp":{},"53/udp":{}},"Labels":{"k":"v"},
            "StopSignal":"SIGINT"},
            "rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;
        let (config, diff_ids) = parse_config(json).unwrap();
        assert_eq!(config.env, ["A=1"]);
        assert_eq!(config.entrypoint, ["/bin/app"]);
        assert_eq!(config.cmd, ["serve"]);
        assert_eq!(config.user.as_deref(), Some("1000:1000"));
        assert_eq!(config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(config.exposed_ports, ["53/udp", "8080/tcp"]);
        assert_eq!(config.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(config.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(diff_ids.len(), 1);
    }

    #[test]
    fn index_picks_linux_amd64_and_skips_others() {
        let json = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"arm64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Parsed::Index(list) = parse_document(json, "index").unwrap() else {
            panic!("not an index")
        };
        assert_eq!(pick_platform(&list, "x").unwrap().digest, "sha256:bb");
        assert!(matches!(
            pick_platform(&list[..1], "x"),
            Err(ImageError::NoMatchingPlatform(_))
        ));
    }
}
