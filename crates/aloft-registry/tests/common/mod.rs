//! Shared test harness: the registry router served on 127.0.0.1:0 with a static token table.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use aloft_registry::{router, Identity, Registry, RegistryAuth, RegistryOptions};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ADMIN: &str = "admin-token";
pub const WEB: &str = "web-token";
pub const API: &str = "api-token";

/// The auth source for tests: a fixed token table (the real one is the control plane's).
pub struct Tokens;

impl RegistryAuth for Tokens {
    fn authenticate(&self, secret: &str) -> Option<Identity> {
        match secret {
            ADMIN => Some(Identity::Admin),
            WEB => Some(Identity::App("web".into())),
            API => Some(Identity::App("api".into())),
            _ => None,
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub base: String,
    pub registry: Registry,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(dir: &Path) -> Server {
        Server::start_with(dir, RegistryOptions::default()).await
    }

    pub async fn start_with(dir: &Path, options: RegistryOptions) -> Server {
        let registry = Registry::open_with(dir, options).expect("open registry");
        let app = router(registry.clone(), Arc::new(Tokens));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Server {
            addr,
            base: format!("http://{addr}"),
            registry,
            task,
        }
    }

    /// Stops serving and waits until the listener is gone.
    pub async fn stop(self) -> Registry {
        self.task.abort();
        let registry = self.registry.clone();
        drop(self);
        registry
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes a blob in one request as admin; returns its digest.
pub async fn push_blob(s: &Server, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = client()
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .bearer_auth(ADMIN)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "push blob: {}", r.text().await.unwrap());
    digest
}

/// Pushes a manifest as admin; returns the response.
pub async fn put_manifest(
    s: &Server,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> reqwest::Response {
    client()
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .bearer_auth(ADMIN)
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Pushes a config and the given layers, then an OCI manifest under `tag`. Returns
/// (manifest digest, manifest bytes, blob digests).
pub async fn push_image(
    s: &Server,
    repo: &str,
    tag: &str,
    layers: &[&[u8]],
) -> (String, Vec<u8>, Vec<String>) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","tag":"{tag}"}}"#);
    let config_digest = push_blob(s, repo, config.as_bytes()).await;
    let mut blobs = vec![config_digest.clone()];
    let mut layer_json = Vec::new();
    for layer in layers {
        let d = push_blob(s, repo, layer).await;
        layer_json.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": layer.len()
        }));
        blobs.push(d);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layer_json,
    }))
    .unwrap();
    let r = put_manifest(s, repo, tag, OCI_MANIFEST, &manifest).await;
    assert_eq!(
        r.status(),
        201,
        "push manifest: {}",
        r.text().await.unwrap()
    );
    (sha256(&manifest), manifest, blobs)
}

/// The `errors[0].code` of an error response.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"]
        .as_str()
        .expect("error code")
        .to_owned()
}

/// Sends raw bytes on a fresh connection, half-closes, and returns (status, whole response text).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Every blob file under the store's `blobs/` directory.
pub fn stored_blobs(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for algo in ["sha256", "sha512"] {
        let Ok(prefixes) = std::fs::read_dir(root.join("blobs").join(algo)) else {
            continue;
        };
        for p in prefixes.flatten() {
            for f in std::fs::read_dir(p.path()).unwrap().flatten() {
                out.push(format!("{algo}:{}", f.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}
