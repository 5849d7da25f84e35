//! Builders for layers, images, OCI layouts and docker archives, and a small registry
//! fixture that serves real bytes over HTTP.
#![allow(dead_code)]

pub mod registry;

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Builds a layer tar, including entries `tar::Builder` would refuse.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTar {
    pub fn new() -> Self {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        h.set_path(path).unwrap();
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0, 1_600_000_000)
    }

    pub fn file_owned(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_path(path).unwrap();
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    /// Any entry with raw name and link name bytes, bypassing the tar crate's path checks.
    pub fn raw(mut self, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, data.len() as u64);
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(tar::EntryType::Symlink, path, target, &[])
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(tar::EntryType::Link, path, target, &[])
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: String,
    pub digest: String,
    pub diff_id: String,
}

pub fn layer(tar: Vec<u8>, compression: Compression) -> Layer {
    let diff_id = sha256(&tar);
    let (blob, media_type) = match compression {
        Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&tar).unwrap();
            (
                enc.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            zstd::encode_all(&tar[..], 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    };
    Layer {
        digest: sha256(&blob),
        blob,
        media_type: media_type.to_owned(),
        diff_id,
    }
}

#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Layer>,
}

impl BuiltImage {
    /// Every blob (config and layers) with its digest.
    pub fn blobs(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![(self.config_digest.clone(), self.config.clone())];
        out.extend(
            self.layers
                .iter()
                .map(|l| (l.digest.clone(), l.blob.clone())),
        );
        out
    }
}

/// An image whose config has `container_config` as its `config` section.
pub fn image(layers: Vec<Layer>, container_config: Value) -> BuiltImage {
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()})).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    BuiltImage {
        manifest_digest: sha256(&manifest),
        manifest,
        config,
        config_digest,
        layers,
    }
}

/// An index pointing at `entries` (image, architecture).
pub fn index(entries: &[(&BuiltImage, &str)]) -> Vec<u8> {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(img, arch)| {
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": img.manifest_digest,
                   "size": img.manifest.len(), "platform": {"os": "linux", "architecture": arch}})
        })
        .collect();
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})).unwrap()
}

fn write_blob(dir: &Path, digest: &str, bytes: &[u8]) {
    let (algo, hex) = digest.split_once(':').unwrap();
    let d = dir.join("blobs").join(algo);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(hex), bytes).unwrap();
}

/// Write an OCI image layout holding `images`, each tagged with its ref name if given.
pub fn write_oci_layout(dir: &Path, images: &[(&BuiltImage, Option<&str>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (img, tag) in images {
        write_blob(dir, &img.manifest_digest, &img.manifest);
        for (d, b) in img.blobs() {
            write_blob(dir, &d, &b);
        }
        let mut desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": img.manifest_digest, "size": img.manifest.len()});
        if let Some(t) = tag {
            desc["annotations"] = json!({"org.opencontainers.image.ref.name": t});
        }
        manifests.push(desc);
    }
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn append_file(builder: &mut tar::Builder<std::fs::File>, path: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut h, path, bytes).unwrap();
}

/// A legacy `docker save` archive: manifest.json, `<hex>.json` config, `<id>/layer.tar` layers.
pub fn write_docker_legacy(path: &Path, img: &BuiltImage, repo_tag: &str) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let config_name = format!("{}.json", img.config_digest.trim_start_matches("sha256:"));
    append_file(&mut b, &config_name, &img.config);
    let mut layer_paths = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        let p = format!("layer{i}/layer.tar");
        append_file(&mut b, &p, &l.blob);
        layer_paths.push(p);
    }
    let manifest = json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_paths}]);
    append_file(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.finish().unwrap();
}

/// The newer `docker save` format: an OCI layout plus manifest.json pointing into blobs/.
pub fn write_docker_oci(path: &Path, img: &BuiltImage, repo_tag: &str) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    append_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    append_file(&mut b, &blob(&img.manifest_digest), &img.manifest);
    for (d, bytes) in img.blobs() {
        append_file(&mut b, &blob(&d), &bytes);
    }
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": img.manifest_digest, "size": img.manifest.len(),
        "annotations": {"io.containerd.image.name": repo_tag, "org.opencontainers.image.ref.name": "latest"}}]});
    append_file(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
    let manifest = json!([{"Config": blob(&img.config_digest), "RepoTags": [repo_tag],
        "Layers": img.layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>()}]);
    append_file(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.finish().unwrap();
}

/// Layer directories in the store that are complete, and whether `tmp/` is empty.
pub fn store_state(root: &Path) -> (Vec<String>, bool) {
    let mut layers = Vec::new();
    if let Ok(dir) = std::fs::read_dir(root.join("layers/sha256")) {
        for e in dir {
            layers.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    layers.sort();
    let tmp_empty = std::fs::read_dir(root.join("tmp"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true);
    (layers, tmp_empty)
}
