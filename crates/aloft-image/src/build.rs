//! Writing small images: one gzip layer of host files, as an OCI image layout. Used to
//! package single-binary apps (the demo app) without a container engine.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

/// What can go wrong writing an image layout.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Cannot write the image layout at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Image path {0:?} must be absolute and free of `..`")]
    BadPath(String),
}

/// A host file and where it goes in the image.
#[derive(Debug, Clone)]
pub struct FileEntry {
    pub source: PathBuf,
    /// Absolute path inside the image.
    pub dest: String,
    pub mode: u32,
}

/// The runtime settings of the image.
#[derive(Debug, Clone, Default)]
pub struct BuildConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub exposed_ports: Vec<String>,
    pub working_dir: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<(String, u64), BuildError> {
    let hex = hex::encode(Sha256::digest(bytes));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(&hex);
    std::fs::write(&path, bytes).map_err(io(&path))?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// Writes (or replaces) an OCI image layout at `layout` holding one image tagged `tag`.
/// Returns the manifest digest.
pub fn write_layout(
    layout: &Path,
    tag: &str,
    files: &[FileEntry],
    config: &BuildConfig,
) -> Result<String, BuildError> {
    std::fs::create_dir_all(layout).map_err(io(layout))?;
    // The layer: parent directories first, then files, with fixed owners and times so the
    // same inputs give the same digest.
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        let mut dirs = std::collections::BTreeSet::new();
        for f in files {
            let rel = f
                .dest
                .strip_prefix('/')
                .filter(|r| !r.is_empty() && !r.split('/').any(|c| c == ".." || c.is_empty()))
                .ok_or_else(|| BuildError::BadPath(f.dest.clone()))?;
            let mut acc = String::new();
            for comp in rel
                .split('/')
                .collect::<Vec<_>>()
                .split_last()
                .map(|(_, d)| d)
                .unwrap_or(&[])
            {
                acc.push_str(comp);
                acc.push('/');
                dirs.insert(acc.clone());
            }
        }
        for d in &dirs {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(0);
            builder
                .append_data(&mut h, d, std::io::empty())
                .map_err(io(layout))?;
        }
        for f in files {
            let data = std::fs::read(&f.source).map_err(io(&f.source))?;
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(f.mode);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            builder
                .append_data(&mut h, f.dest.trim_start_matches('/'), data.as_slice())
                .map_err(io(&f.source))?;
        }
        builder.finish().map_err(io(layout))?;
    }
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes).map_err(io(layout))?;
    let gz = gz.finish().map_err(io(layout))?;
    let (layer_digest, layer_size) = write_blob(layout, &gz)?;

    let exposed: serde_json::Map<String, serde_json::Value> = config
        .exposed_ports
        .iter()
        .map(|p| (p.clone(), json!({})))
        .collect();
    let image_config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "Env": config.env,
            "ExposedPorts": exposed,
            "WorkingDir": config.working_dir.clone().unwrap_or_else(|| "/".into()),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = write_blob(
        layout,
        &serde_json::to_vec(&image_config).unwrap_or_default(),
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) =
        write_blob(layout, &serde_json::to_vec(&manifest).unwrap_or_default())?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    let index_path = layout.join("index.json");
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap_or_default())
        .map_err(io(&index_path))?;
    let marker = layout.join("oci-layout");
    std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&marker))?;
    Ok(manifest_digest)
}

/// The files a dynamically linked host binary needs: itself and the shared libraries `ldd`
/// lists, placed at the same paths in the image.
pub fn binary_with_libraries(binary: &Path, dest: &str) -> Result<Vec<FileEntry>, BuildError> {
    let mut files = vec![FileEntry {
        source: binary.to_path_buf(),
        dest: dest.to_string(),
        mode: 0o755,
    }];
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io(binary))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let real = std::fs::canonicalize(p).map_err(io(Path::new(p)))?;
            files.push(FileEntry {
                source: real,
                dest: p.to_string(),
                mode: 0o755,
            });
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_give_the_same_digest_and_bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, b"hi").unwrap();
        let files = vec![FileEntry {
            source: src.clone(),
            dest: "/app/f".into(),
            mode: 0o644,
        }];
        let cfg = BuildConfig {
            cmd: vec!["/app/f".into()],
            ..Default::default()
        };
        let a = write_layout(&dir.path().join("a"), "t", &files, &cfg).unwrap();
        let b = write_layout(&dir.path().join("b"), "t", &files, &cfg).unwrap();
        assert_eq!(a, b);
        let bad = vec![FileEntry {
            source: src,
            dest: "/app/../etc".into(),
            mode: 0o644,
        }];
        assert!(matches!(
            write_layout(&dir.path().join("c"), "t", &bad, &cfg),
            Err(BuildError::BadPath(_))
        ));
    }
}
