//! Pulls over HTTP from the built-in registry (`aloft-registry`'s router on 127.0.0.1:0),
//! plus a tampering server for the digest check.

mod common;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aloft_image::{Credentials, ImageError, ImageStore, PullOptions, RegistryAccess};
use aloft_registry::{router, Identity, Registry, RegistryAuth};
use axum::extract::Request;
use axum::middleware::{self, Next};
use common::registry::{Content, Fixture};
use common::{image, index, layer, store_state, BuiltImage, Compression, LayerTar};
use serde_json::json;

const TOKEN: &str = "deploy-token";

struct Tokens;

impl RegistryAuth for Tokens {
    fn authenticate(&self, secret: &str) -> Option<Identity> {
        (secret == TOKEN).then_some(Identity::Admin)
    }
}

type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// The built-in registry on a loopback port; successful blob GETs are counted by digest.
async fn start_registry(dir: &std::path::Path) -> (SocketAddr, Counts) {
    let registry = Registry::open(dir).unwrap();
    let counts: Counts = Arc::default();
    let seen = counts.clone();
    let app = router(registry, Arc::new(Tokens)).layer(middleware::from_fn(
        move |req: Request, next: Next| {
            let seen = seen.clone();
            async move {
                let path = req.uri().path().to_owned();
                let is_get = req.method() == axum::http::Method::GET;
                let resp = next.run(req).await;
                if let (true, true, Some((_, digest))) = (
                    is_get,
                    resp.status().is_success(),
                    path.split_once("/blobs/"),
                ) {
                    *seen.lock().unwrap().entry(digest.to_owned()).or_default() += 1;
                }
                resp
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, counts)
}

/// Push with the plain distribution API, as a client would.
async fn push(addr: SocketAddr, repo: &str, tag: &str, img: &BuiltImage) {
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    for (digest, bytes) in img.blobs() {
        let resp = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .basic_auth("ci", Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "start upload");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("{base}{location}")
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let resp = http
            .put(format!("{url}{sep}digest={digest}"))
            .basic_auth("ci", Some(TOKEN))
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "finish upload of {digest}");
    }
    put_manifest(
        addr,
        repo,
        &img.manifest_digest,
        img.manifest.clone(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
    put_manifest(
        addr,
        repo,
        tag,
        img.manifest.clone(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
}

async fn put_manifest(
    addr: SocketAddr,
    repo: &str,
    reference: &str,
    body: Vec<u8>,
    media_type: &str,
) {
    let resp = reqwest::Client::new()
        .put(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .basic_auth("ci", Some(TOKEN))
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "put manifest {reference}");
}

fn opts(addr: impl std::fmt::Display) -> PullOptions {
    PullOptions::for_registry(
        addr.to_string(),
        RegistryAccess {
            credentials: Some(Credentials {
                username: "agent".into(),
                password: TOKEN.into(),
            }),
            plain_http: true,
        },
    )
}

/// Plain HTTP to `addr`, no credentials.
fn anonymous(addr: impl std::fmt::Display) -> PullOptions {
    PullOptions::for_registry(
        addr.to_string(),
        RegistryAccess {
            credentials: None,
            plain_http: true,
        },
    )
}

fn app_image(base: &common::Layer, marker: &str) -> BuiltImage {
    let top = layer(
        LayerTar::new()
            .file("app/marker", marker.as_bytes(), 0o644)
            .finish(),
        Compression::Zstd,
    );
    image(
        vec![base.clone(), top],
        json!({"Cmd": ["/app/run"], "Env": [format!("MARKER={marker}")]}),
    )
}

fn base_layer() -> common::Layer {
    layer(
        LayerTar::new()
            .dir("etc", 0o755)
            .file("etc/os-release", b"ID=aloft\n", 0o644)
            .finish(),
        Compression::Gzip,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_follows_the_token_flow_and_picks_linux_amd64_from_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _) = start_registry(&tmp.path().join("registry")).await;
    let base = base_layer();
    let amd64 = app_image(&base, "amd64");
    let arm64 = app_image(&base, "arm64");
    push(addr, "web/app", "amd64-only", &amd64).await;
    push(addr, "web/app", "arm64-only", &arm64).await;
    let idx = index(&[(&arm64, "arm64"), (&amd64, "amd64")]);
    put_manifest(
        addr,
        "web/app",
        "v1",
        idx,
        "application/vnd.oci.image.index.v1+json",
    )
    .await;

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let reference = format!("{addr}/web/app:v1");
    let img = store.pull(&reference, &opts(addr)).await.unwrap();
    assert_eq!(img.manifest_digest, amd64.manifest_digest);
    assert_eq!(img.reference, reference);
    assert_eq!(img.config.env, ["MARKER=amd64"]);
    assert_eq!(
        fs::read(img.layers[1].path.join("app/marker")).unwrap(),
        b"amd64"
    );
    assert_eq!(
        fs::read(img.layers[0].path.join("etc/os-release")).unwrap(),
        b"ID=aloft\n"
    );
    assert_eq!(store.get(&reference).unwrap(), Some(img.clone()));

    // By digest, with the registry taken from the options.
    let by_digest = PullOptions {
        default_registry: Some(addr.to_string()),
        ..opts(addr)
    };
    let again = store
        .pull(&format!("web/app@{}", arm64.manifest_digest), &by_digest)
        .await
        .unwrap();
    assert_eq!(again.config.env, ["MARKER=arm64"]);
    assert_eq!(
        again.layers[0].path, img.layers[0].path,
        "the shared base layer is unpacked once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_without_valid_credentials_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _) = start_registry(&tmp.path().join("registry")).await;
    push(addr, "web/app", "v1", &app_image(&base_layer(), "x")).await;
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let reference = format!("{addr}/web/app:v1");
    let wrong = PullOptions::for_registry(
        addr.to_string(),
        RegistryAccess {
            credentials: Some(Credentials {
                username: "agent".into(),
                password: "not-the-token".into(),
            }),
            plain_http: true,
        },
    );
    // Credentials for another registry are not sent to this one.
    let mut elsewhere = opts("registry.example:5000");
    elsewhere.registries.extend(anonymous(addr).registries);
    for o in [wrong, anonymous(addr), elsewhere] {
        let err = store.pull(&reference, &o).await.unwrap_err();
        assert!(matches!(err, ImageError::Auth { .. }), "{err:?}");
    }
    assert_eq!(store_state(store.root()), (vec![], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_fetch_and_unpack_each_blob_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, counts) = start_registry(&tmp.path().join("registry")).await;
    let base = base_layer();
    let a = app_image(&base, "a");
    let b = app_image(&base, "b");
    push(addr, "web/a", "v1", &a).await;
    push(addr, "web/b", "v1", &b).await;
    counts.lock().unwrap().clear();

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let pulls = (0..10).map(|i| {
        let store = store.clone();
        let reference = format!("{addr}/web/{}:v1", if i % 2 == 0 { "a" } else { "b" });
        tokio::spawn(async move { store.pull(&reference, &opts(addr)).await })
    });
    let images: Vec<_> = futures::future::join_all(pulls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(images
        .iter()
        .all(|i| i.layers[0].path == images[0].layers[0].path));
    assert_eq!(
        images
            .iter()
            .filter(|i| i.manifest_digest == a.manifest_digest)
            .count(),
        5
    );

    let counts = counts.lock().unwrap().clone();
    let mut want: HashMap<String, usize> = HashMap::new();
    for img in [&a, &b] {
        for (d, _) in img.blobs() {
            want.insert(d, 1);
        }
    }
    assert_eq!(
        counts, want,
        "every blob (the shared base layer included) fetched exactly once"
    );
    let (layers, tmp_empty) = store_state(store.root());
    assert_eq!(layers.len(), 3);
    assert!(tmp_empty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_serving_wrong_bytes_is_caught_and_nothing_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let img = app_image(&base_layer(), "real");
    let mut content = Content::default();
    content.add_image("web/app", "v1", &img);
    // Same length, one byte different: only the digest can tell.
    let mut forged = img.layers[1].blob.clone();
    let middle = forged.len() / 2;
    forged[middle] ^= 0x01;
    content.blobs.insert(img.layers[1].digest.clone(), forged);
    let fixture = Fixture::start(content).await;

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let o = anonymous(fixture.addr);
    let err = store
        .pull(&format!("{}/web/app:v1", fixture.addr), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == img.layers[1].digest),
        "{err:?}"
    );
    let (layers, tmp_empty) = store_state(store.root());
    assert_eq!(
        layers,
        [img.layers[0].digest.trim_start_matches("sha256:")],
        "only the good base layer is kept"
    );
    assert!(tmp_empty);
    assert_eq!(store.get(&img.manifest_digest).unwrap(), None);
    assert_eq!(fixture.blob_gets().get(&img.layers[1].digest), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_challenge_from_another_token_service_is_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let img = app_image(&base_layer(), "token");
    let mut content = Content::default();
    content.add_image("team/app", "v2", &img);
    content.auth = Some(("robot".into(), "s3cret".into()));
    let fixture = Fixture::start(content).await;
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let o = PullOptions::for_registry(
        fixture.addr.to_string(),
        RegistryAccess {
            credentials: Some(Credentials {
                username: "robot".into(),
                password: "s3cret".into(),
            }),
            plain_http: true,
        },
    );
    let got = store
        .pull(&format!("{}/team/app:v2", fixture.addr), &o)
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, img.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_longer_than_its_descriptor_says_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut img = app_image(&base_layer(), "size");
    let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    manifest["layers"][1]["size"] = json!(img.layers[1].blob.len() - 1);
    img.manifest = serde_json::to_vec(&manifest).unwrap();
    img.manifest_digest = common::sha256(&img.manifest);
    let mut content = Content::default();
    content.add_image("web/app", "v1", &img);
    let fixture = Fixture::start(content).await;

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let o = anonymous(fixture.addr);
    let err = store
        .pull(&format!("{}/web/app:v1", fixture.addr), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage { ref reason, .. } if reason.contains("bytes")),
        "{err:?}"
    );
    let (layers, tmp_empty) = store_state(store.root());
    assert_eq!(layers.len(), 1, "only the base layer");
    assert!(tmp_empty);
}
