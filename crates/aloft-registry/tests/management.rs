//! Content management (deletes, garbage collection), bad input, concurrency and restart.

mod common;

use std::time::Duration;

use aloft_registry::RegistryOptions;
use common::*;
use serde_json::{json, Value};

fn no_grace() -> RegistryOptions {
    RegistryOptions {
        gc_grace: Duration::ZERO,
        ..RegistryOptions::default()
    }
}

#[tokio::test]
async fn deletes_and_gc_free_unreferenced_content_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), no_grace()).await;
    let c = client();
    let (digest, manifest, blobs) =
        push_image(&s, "web/app", "v1", &[b"layer one", b"layer two"]).await;
    let r = put_manifest(&s, "web/app", "v2", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), 201);
    let orphan = push_blob(&s, "web/app", b"pushed but never referenced").await;

    // An upload in flight is untouched by gc and still completes afterwards.
    let r = c
        .post(s.url("/v2/web/app/blobs/uploads/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let upload = s.url(r.headers()["location"].to_str().unwrap());
    let r = c
        .patch(&upload)
        .bearer_auth(ADMIN)
        .body(b"in flight".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let report = s.registry.gc().unwrap();
    assert_eq!(report.blobs_removed, 1);
    assert_eq!(
        report.bytes_freed,
        b"pushed but never referenced".len() as u64
    );
    let on_disk = stored_blobs(dir.path());
    assert!(!on_disk.contains(&orphan));
    for d in blobs.iter().chain([&digest]) {
        assert!(on_disk.contains(d), "{d} collected while referenced");
    }
    let r = c
        .get(s.url(&format!("/v2/web/app/blobs/{orphan}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let done = sha256(b"in flight");
    let r = c
        .put(format!("{upload}?digest={done}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Delete a tag: the other tag and the digest still resolve.
    let r = c
        .delete(s.url("/v2/web/app/manifests/v1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(s.url("/v2/web/app/manifests/v1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = c
        .get(s.url("/v2/web/app/manifests/v2"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Delete a blob: gone from the repository, bytes kept while a manifest needs them.
    let r = c
        .delete(s.url(&format!("/v2/web/app/blobs/{done}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .head(s.url(&format!("/v2/web/app/blobs/{done}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Delete the manifest: its tags go with it, and gc frees its blobs.
    let r = c
        .delete(s.url(&format!("/v2/web/app/manifests/{digest}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(s.url("/v2/web/app/tags/list"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let tags: Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], json!([]));
    let r = c
        .delete(s.url(&format!("/v2/web/app/manifests/{digest}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let report = s.registry.gc().unwrap();
    assert_eq!(
        report.blobs_removed,
        blobs.len() + 2,
        "config, layers, manifest and the unlinked blob"
    );
    assert_eq!(stored_blobs(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn gc_keeps_index_children_subjects_and_recent_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), no_grace()).await;
    let c = client();
    let (child, child_bytes, child_blobs) =
        push_image(&s, "web/app", "child", &[b"child layer"]).await;
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": child, "size": child_bytes.len()}]});
    let index_bytes = serde_json::to_vec(&index).unwrap();
    assert_eq!(
        put_manifest(&s, "web/app", "multi", OCI_INDEX, &index_bytes)
            .await
            .status(),
        201
    );
    // Untag and delete the child itself: the index still needs it.
    let r = c
        .delete(s.url(&format!("/v2/web/app/manifests/{child}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let report = s.registry.gc().unwrap();
    assert_eq!(report.blobs_removed, 0);
    let on_disk = stored_blobs(dir.path());
    assert!(on_disk.contains(&child));
    for b in &child_blobs {
        assert!(on_disk.contains(b), "{b} of an index child was collected");
    }

    // A referrer keeps its subject (and the subject's blobs) after the subject is deleted.
    let (subject, subject_bytes, subject_blobs) =
        push_image(&s, "web/app", "signed", &[b"subject layer"]).await;
    let config = push_blob(&s, "web/app", b"{}").await;
    let referrer = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_bytes.len()}});
    assert_eq!(
        put_manifest(
            &s,
            "web/app",
            "sig",
            OCI_MANIFEST,
            referrer.to_string().as_bytes()
        )
        .await
        .status(),
        201
    );
    let r = c
        .delete(s.url(&format!("/v2/web/app/manifests/{subject}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let report = s.registry.gc().unwrap();
    assert_eq!(report.blobs_removed, 0);
    let on_disk = stored_blobs(dir.path());
    for b in subject_blobs.iter().chain([&subject]) {
        assert!(on_disk.contains(b), "{b} of a subject was collected");
    }

    // Once the index goes, its child and the child's blobs go too.
    let r = c
        .delete(s.url("/v2/web/app/manifests/multi"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let index_digest = sha256(&index_bytes);
    let r = c
        .delete(s.url(&format!("/v2/web/app/manifests/{index_digest}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let report = s.registry.gc().unwrap();
    assert_eq!(
        report.blobs_removed, 4,
        "index, child manifest, child config and child layer"
    );
    assert!(!stored_blobs(dir.path()).contains(&child));

    // With the default grace period a fresh unreferenced blob survives gc.
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = Server::start(dir2.path()).await;
    let fresh = push_blob(&s2, "web/app", b"layer pushed just before its manifest").await;
    let report = s2.registry.gc().unwrap();
    assert_eq!(report.blobs_removed, 0);
    assert_eq!(report.blobs_recent, 1);
    assert!(stored_blobs(dir2.path()).contains(&fresh));
}

#[tokio::test]
async fn bad_input_gets_spec_errors_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();

    // Digest mismatch, monolithic and chunked.
    let wrong = sha256(b"something else");
    let r = c
        .post(s.url(&format!("/v2/web/app/blobs/uploads/?digest={wrong}")))
        .bearer_auth(ADMIN)
        .body(b"actual".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = c
        .post(s.url("/v2/web/app/blobs/uploads/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let upload = s.url(r.headers()["location"].to_str().unwrap());
    let r = c
        .put(format!("{upload}?digest={wrong}"))
        .bearer_auth(ADMIN)
        .body(b"actual".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let sha512_wrong = format!("sha512:{}", "0".repeat(128));
    let r = c
        .post(s.url(&format!("/v2/web/app/blobs/uploads/?digest={sha512_wrong}")))
        .bearer_auth(ADMIN)
        .body(b"actual".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        stored_blobs(dir.path()),
        Vec::<String>::new(),
        "a corrupt blob was stored"
    );

    // sha512 digests are verified and accepted.
    use sha2::Digest as _;
    let d512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(b"actual")));
    let r = c
        .post(s.url(&format!("/v2/web/app/blobs/uploads/?digest={d512}")))
        .bearer_auth(ADMIN)
        .body(b"actual".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(s.url(&format!("/v2/web/app/blobs/{d512}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"actual");

    // Truncated body: Content-Length promises more than arrives.
    let good = sha256(&[7u8; 100]);
    let request = format!(
        "POST /v2/web/app/blobs/uploads/?digest={good} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 100\r\n\r\n{}",
        s.addr,
        "\x07".repeat(60)
    );
    let (status, text) = raw_request(s.addr, request.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("SIZE_INVALID"), "{text}");
    assert!(!stored_blobs(dir.path()).contains(&good));

    // Manifests: missing blobs, invalid JSON, wrong digest reference, oversized.
    let config = push_blob(&s, "web/app", b"{}").await;
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b"missing"), "size": 7}]});
    let r = put_manifest(&s, "web/app", "v1", OCI_MANIFEST, m.to_string().as_bytes()).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(
        body["errors"][0]["detail"]["digest"],
        sha256(b"missing").as_str()
    );
    let r = put_manifest(
        &s,
        "web/app",
        "v1",
        OCI_MANIFEST,
        b"{\"schemaVersion\": 2, ",
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let ok = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2}, "layers": []});
    let r = put_manifest(
        &s,
        "web/app",
        &sha256(b"not this"),
        OCI_MANIFEST,
        ok.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let big = format!(
        "{{\"schemaVersion\":2,\"pad\":\"{}\"}}",
        "x".repeat(4 * 1024 * 1024)
    );
    let r = put_manifest(&s, "web/app", "big", OCI_MANIFEST, big.as_bytes()).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    let r = c
        .get(s.url("/v2/web/app/tags/list"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tags: Value = r.json().await.unwrap();
    assert_eq!(
        tags["tags"],
        json!([]),
        "a refused manifest left a tag behind"
    );

    // Names: invalid, and path traversal sent raw (clients would normalise it).
    let r = c
        .get(s.url("/v2/Web/App/tags/list"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_INVALID");
    for path in [
        format!("/v2/web/../../../etc/blobs/{config}"),
        format!("/v2/web/%2e%2e/%2e%2e/etc/blobs/{config}"),
        "/v2/web%2f..%2f..%2fetc/manifests/latest".to_owned(),
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN}\r\n\r\n",
            s.addr
        );
        let (status, text) = raw_request(s.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("NAME_INVALID"), "{path}: {text}");
    }

    // Completing an upload needs a digest; over-long names are refused.
    let r = c
        .post(s.url("/v2/web/app/blobs/uploads/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let upload = s.url(r.headers()["location"].to_str().unwrap());
    let r = c
        .put(&upload)
        .bearer_auth(ADMIN)
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(r).await.as_str()),
        (400, "DIGEST_INVALID")
    );
    let long = format!("web/{}", "a".repeat(260));
    let r = c
        .get(s.url(&format!("/v2/{long}/tags/list")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(r).await.as_str()),
        (400, "NAME_INVALID")
    );

    // Unknown things.
    let r = c
        .get(s.url("/v2/web/app/manifests/nope"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(r).await.as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let r = c
        .get(s.url(&format!("/v2/web/app/blobs/{}", sha256(b"nope"))))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(r).await.as_str()),
        (404, "BLOB_UNKNOWN")
    );
    let r = c
        .get(s.url("/v2/web/app/blobs/sha256:1234"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(r).await.as_str()),
        (400, "DIGEST_INVALID")
    );
    let r = c
        .get(s.url("/v2/web/app/blobs/uploads/0123456789abcdef0123456789abcdef"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(r).await.as_str()),
        (404, "BLOB_UPLOAD_UNKNOWN")
    );
    let r = c
        .get(s.url("/v2/web/app/blobs/uploads/..%2f..%2frepos"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(r).await.as_str()),
        (400, "NAME_INVALID")
    );
    let r = c
        .get(s.url("/v2/nobody/here/manifests/latest"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_of_one_blob_all_succeed_and_store_one_good_copy() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let digest = sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (url, data, digest) = (s.base.clone(), data.clone(), digest.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            if i % 2 == 0 {
                c.post(format!("{url}/v2/web/app/blobs/uploads/?digest={digest}"))
                    .bearer_auth(ADMIN)
                    .body(data)
                    .send()
                    .await
                    .unwrap()
                    .status()
            } else {
                let r = c
                    .post(format!("{url}/v2/web/app/blobs/uploads/"))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .unwrap();
                let upload = format!("{url}{}", r.headers()["location"].to_str().unwrap());
                let half = data.len() / 2;
                let r = c
                    .patch(&upload)
                    .bearer_auth(ADMIN)
                    .header("content-range", format!("0-{}", half - 1))
                    .body(data[..half].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                c.put(format!("{upload}?digest={digest}"))
                    .bearer_auth(ADMIN)
                    .body(data[half..].to_vec())
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    assert_eq!(stored_blobs(dir.path()), vec![digest.clone()]);
    let r = client()
        .get(s.url(&format!("/v2/web/app/blobs/{digest}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "temp files left behind"
    );
}

#[tokio::test]
async fn restart_keeps_content_metadata_and_uploads_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    let (digest, manifest, blobs) =
        push_image(&s, "web/app/sub", "v1", &[b"persisted layer"]).await;
    let r = c
        .post(s.url("/v2/web/app/sub/blobs/uploads/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(s.url(&location))
        .bearer_auth(ADMIN)
        .header("content-range", "0-5")
        .body(b"first ".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    s.stop().await;
    // A write interrupted by a crash leaves a temp file; reopening clears it.
    std::fs::write(dir.path().join("tmp/interrupted"), b"half a blob").unwrap();

    let s = Server::start(dir.path()).await;
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    let r = c
        .get(s.url("/v2/web/app/sub/manifests/v1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
    let r = c
        .get(s.url(&format!("/v2/web/app/sub/blobs/{}", blobs[1])))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"persisted layer");
    assert_eq!(
        s.registry.repositories().unwrap(),
        vec!["web/app/sub".to_owned()]
    );

    // The upload resumes where it stopped; its digest is checked over both halves.
    let r = c
        .get(s.url(&location))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-5");
    let r = c
        .patch(s.url(&location))
        .bearer_auth(ADMIN)
        .header("content-range", "6-11")
        .body(b"second".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let whole = sha256(b"first second");
    let r = c
        .put(s.url(&format!("{location}?digest={whole}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(s.url(&format!("/v2/web/app/sub/blobs/{whole}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"first second");
}

#[tokio::test]
async fn router_answers_without_a_socket() {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let dir = tempfile::tempdir().unwrap();
    let registry = aloft_registry::Registry::open(dir.path()).unwrap();
    let app = aloft_registry::router(registry, std::sync::Arc::new(Tokens));
    let request = axum::http::Request::get("/v2/")
        .header("host", "registry.example:8080")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"http://registry.example:8080/v2/token\",service=\"aloft\""
    );
    let request = axum::http::Request::get("/v2/")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), b"{}");
}

/// Makes a stored blob look older than any grace period.
fn age_blob(root: &std::path::Path, digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = root.join("blobs/sha256").join(&hex[..2]).join(hex);
    let old = std::time::SystemTime::now() - Duration::from_secs(24 * 60 * 60);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_racing_gc_is_either_refused_or_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..20 {
        // Blobs pushed long ago and never referenced: gc may take them at any moment.
        let config = format!("{{\"n\":{i}}}");
        let layer = format!("layer {i}").repeat(1000);
        let digests = [
            push_blob(&s, "web/app", config.as_bytes()).await,
            push_blob(&s, "web/app", layer.as_bytes()).await,
        ];
        for d in &digests {
            age_blob(dir.path(), d);
        }
        let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0], "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1], "size": layer.len()}]});
        let tag = format!("t{i}");
        let body = bytes::Bytes::from(m.to_string());
        // Both through the library on blocking threads, so neither has a head start.
        let (registry, t) = (s.registry.clone(), tag.clone());
        let put = tokio::task::spawn_blocking(move || {
            registry.put_manifest("web/app", &t, Some(OCI_MANIFEST), body)
        });
        let registry = s.registry.clone();
        let gc = tokio::task::spawn_blocking(move || registry.gc());
        let (gc, put) = (gc.await, put.await.unwrap());
        gc.unwrap().unwrap();
        let tag_status = c
            .get(s.url(&format!("/v2/web/app/manifests/{tag}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .status();
        if let Err(err) = put {
            refused += 1;
            assert!(
                matches!(
                    err,
                    aloft_registry::RegistryError::ManifestBlobUnknown { .. }
                ),
                "{err}"
            );
            assert_eq!(tag_status, 404, "a refused manifest left its tag");
        } else {
            accepted += 1;
            assert_eq!(tag_status, 200);
            // Whatever gc does next, the accepted manifest's blobs stay.
            s.registry.gc().unwrap();
            for d in &digests {
                let r = c
                    .get(s.url(&format!("/v2/web/app/blobs/{d}")))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    200,
                    "{tag}: {d} collected under an accepted manifest"
                );
                assert_eq!(&sha256(&r.bytes().await.unwrap()), d);
            }
        }
    }
    eprintln!("{accepted} manifests won the race against gc, {refused} lost it");
}

#[tokio::test]
async fn gc_removes_abandoned_uploads_after_their_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let options = RegistryOptions {
        upload_expiry: Duration::ZERO,
        ..RegistryOptions::default()
    };
    let s = Server::start_with(dir.path(), options).await;
    let c = client();
    let r = c
        .post(s.url("/v2/web/app/blobs/uploads/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let upload = s.url(r.headers()["location"].to_str().unwrap());
    let r = c
        .patch(&upload)
        .bearer_auth(ADMIN)
        .body(b"abandoned".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let report = s.registry.gc().unwrap();
    assert_eq!(report.uploads_removed, 1);
    let r = c.get(&upload).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // The default expiry keeps an idle upload.
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = Server::start(dir2.path()).await;
    let r = c
        .post(s2.url("/v2/web/app/blobs/uploads/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let upload = s2.url(r.headers()["location"].to_str().unwrap());
    assert_eq!(s2.registry.gc().unwrap().uploads_removed, 0);
    let r = c.get(&upload).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 204);
}
