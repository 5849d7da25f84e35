//! Distribution-spec conformance over real HTTP: pull, push, content discovery, content
//! management, auth and bad input.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn unauthenticated_requests_get_a_bearer_challenge_and_tokens_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();

    let r = c.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        format!("Bearer realm=\"{}/v2/token\",service=\"aloft\"", s.base)
    );
    assert_eq!(error_code(r).await, "UNAUTHORIZED");

    let r = c
        .get(s.url("/v2/web/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .ends_with(",scope=\"repository:web/app:pull,push\""));

    // Token endpoint: Basic with any username, password is the Aloft token.
    let r = c
        .get(s.url("/v2/token?service=aloft&scope=repository:web/app:pull,push"))
        .basic_auth("whoever", Some(WEB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], body["token"]);
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    let r = c
        .get(s.url("/v2/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    // Bearer Aloft token on the token endpoint, and a wrong password.
    let r = c
        .get(s.url("/v2/token"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(s.url("/v2/token"))
        .basic_auth("x", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(s.url("/v2/"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Basic directly on registry requests; app tokens stay inside their app.
    push_image(&s, "web/app", "v1", &[b"layer"]).await;
    let r = c
        .get(s.url("/v2/web/app/tags/list"))
        .basic_auth("x", Some(WEB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(s.url("/v2/web/app/tags/list"))
        .bearer_auth(API)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    let r = c
        .post(s.url("/v2/webby/blobs/uploads/"))
        .bearer_auth(WEB)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "an app name is a whole path component, not a prefix"
    );
}

#[tokio::test]
async fn monolithic_push_then_pull_by_tag_and_digest_with_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    let layer: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (digest, manifest, blobs) =
        push_image(&s, "web/app", "v1", &[&layer, b"second layer"]).await;

    // Blob by digest: GET, HEAD, ranges.
    let url = s.url(&format!("/v2/web/app/blobs/{}", blobs[1]));
    let r = c.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], blobs[1].as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), layer.as_slice());
    let r = c.head(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    let r = c
        .get(&url)
        .bearer_auth(ADMIN)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/100000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &layer[1000..2000]);
    let r = c
        .get(&url)
        .bearer_auth(ADMIN)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &layer[99_990..]);
    let r = c
        .get(&url)
        .bearer_auth(ADMIN)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    // Manifest by tag and by digest, GET and HEAD, bytes and media type preserved.
    for reference in ["v1", digest.as_str()] {
        let r = c
            .get(s.url(&format!("/v2/web/app/manifests/{reference}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
        let r = c
            .head(s.url(&format!("/v2/web/app/manifests/{reference}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            manifest.len().to_string()
        );
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    }
    // Blobs are visible only in repositories that hold them.
    let r = c
        .get(s.url(&format!("/v2/web/other/blobs/{}", blobs[1])))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn docker_schema2_manifests_and_lists_keep_their_bytes_and_media_types() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    let config = push_blob(&s, "web/d", b"{}").await;
    let layer = push_blob(&s, "web/d", b"layer bytes").await;
    // Odd spacing and key order: the registry must hand back exactly these bytes.
    let manifest = format!(
        "{{\n   \"schemaVersion\": 2,\n \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n \"config\": {{\"mediaType\": \"application/vnd.docker.container.image.v1+json\", \"size\": 2, \"digest\": \"{config}\"}},\n \"layers\": [ {{\"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\", \"size\": 11, \"digest\": \"{layer}\"}} ]\n}}\n"
    );
    let docker_v2 = "application/vnd.docker.distribution.manifest.v2+json";
    let r = put_manifest(&s, "web/d", "v2", docker_v2, manifest.as_bytes()).await;
    assert_eq!(r.status(), 201);
    let digest = sha256(manifest.as_bytes());
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/v2/web/d/manifests/{digest}")
    );

    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{{"mediaType":"{docker_v2}","size":{},"digest":"{digest}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        manifest.len()
    );
    let list_type = "application/vnd.docker.distribution.manifest.list.v2+json";
    let r = put_manifest(&s, "web/d", "multi", list_type, list.as_bytes()).await;
    assert_eq!(r.status(), 201);

    for (tag, body, media_type) in [("v2", &manifest, docker_v2), ("multi", &list, list_type)] {
        let r = c
            .get(s.url(&format!("/v2/web/d/manifests/{tag}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], media_type);
        assert_eq!(
            r.headers()["docker-content-digest"],
            sha256(body.as_bytes()).as_str()
        );
        assert_eq!(r.text().await.unwrap(), *body);
    }

    // An OCI index whose child is missing is refused.
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(b"absent"), "size": 6}]});
    let r = put_manifest(&s, "web/d", "idx", OCI_INDEX, index.to_string().as_bytes()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test]
async fn chunked_upload_checks_ranges_reports_status_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    let data: Vec<u8> = (0..30u8).collect();
    let digest = sha256(&data);

    let r = c
        .post(s.url("/v2/web/app/blobs/uploads/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let uuid = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(location.ends_with(&uuid));
    let upload = s.url(&location);

    let patch = |range: &str, body: &[u8]| {
        c.patch(&upload)
            .bearer_auth(ADMIN)
            .header("content-range", range)
            .body(body.to_vec())
            .send()
    };
    let r = patch("0-9", &data[..10]).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-9");

    let r = c.get(&upload).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-9");

    // Out of order: starts past the end, or overlaps.
    let r = patch("15-19", &data[15..20]).await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["range"], "0-9", "a 416 tells where to resume");
    assert_eq!(r.headers()["location"].to_str().unwrap(), location);
    let r = patch("ten-twenty", &data[10..20]).await.unwrap();
    assert_eq!(r.status(), 416);
    let r = patch("5-14", &data[5..15]).await.unwrap();
    assert_eq!(r.status(), 416);
    // Announced range longer than the body: refused, and the upload is unchanged.
    let r = patch("10-29", &data[10..20]).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c.get(&upload).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.headers()["range"], "0-9");

    let r = patch("10-19", &data[10..20]).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-19");

    // Final chunk travels with the PUT; its Content-Range is checked too.
    let r = c
        .put(format!("{upload}?digest={digest}"))
        .bearer_auth(ADMIN)
        .header("content-range", "25-29")
        .body(data[25..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = c
        .put(format!("{upload}?digest={digest}"))
        .header("content-range", "20-29")
        .bearer_auth(ADMIN)
        .body(data[20..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let r = c
        .get(s.url(&format!("/v2/web/app/blobs/{digest}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // The finished upload is gone.
    let r = c.get(&upload).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // Cancel.
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
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c.delete(&upload).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(&upload).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // A sha512 digest over chunks.
    use sha2::Digest as _;
    let d512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)));
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
        .header("content-range", "0-14")
        .body(data[..15].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .put(format!("{upload}?digest={d512}"))
        .bearer_auth(ADMIN)
        .body(data[15..].to_vec())
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
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());

    // An upload belongs to the repository it was started in.
    let r = c
        .post(s.url("/v2/web/app/blobs/uploads/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let uuid = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_owned();
    let r = c
        .get(s.url(&format!("/v2/web/other/blobs/uploads/{uuid}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn cross_repository_mount_needs_the_blob_and_pull_access_to_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    let digest = push_blob(&s, "web/a", b"shared layer").await;
    let api_digest = push_blob(&s, "api/secret", b"api only").await;

    let r = c
        .post(s.url(&format!(
            "/v2/web/b/blobs/uploads/?mount={digest}&from=web/a"
        )))
        .bearer_auth(WEB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/v2/web/b/blobs/{digest}")
    );
    let r = c
        .get(s.url(&format!("/v2/web/b/blobs/{digest}")))
        .bearer_auth(WEB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"shared layer");

    // Not present in the source: falls back to an upload session.
    let missing = sha256(b"never pushed");
    let r = c
        .post(s.url(&format!(
            "/v2/web/b/blobs/uploads/?mount={missing}&from=web/a"
        )))
        .bearer_auth(WEB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("docker-upload-uuid"));

    // Present, but the caller may not read the source: upload session, no leak.
    let r = c
        .post(s.url(&format!(
            "/v2/web/b/blobs/uploads/?mount={api_digest}&from=api/secret"
        )))
        .bearer_auth(WEB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(s.url(&format!("/v2/web/b/blobs/{api_digest}")))
        .bearer_auth(WEB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn tags_list_paginates_with_link_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    let (digest, manifest, _) = push_image(&s, "web/app", "v1", &[b"l"]).await;
    let mut expected = vec!["v1".to_owned()];
    for tag in ["alpha", "beta", "v2", "latest", "0.1"] {
        let r = put_manifest(&s, "web/app", tag, OCI_MANIFEST, &manifest).await;
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        expected.push(tag.to_owned());
    }
    expected.sort();

    let r = c
        .get(s.url("/v2/web/app/tags/list"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let all: Value = r.json().await.unwrap();
    assert_eq!(all["name"], "web/app");
    assert_eq!(all["tags"], json!(expected));

    let mut seen = Vec::new();
    let mut next = Some("/v2/web/app/tags/list?n=4".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = c.get(s.url(&path)).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_owned()
        });
        let page: Value = r.json().await.unwrap();
        let tags: Vec<String> = serde_json::from_value(page["tags"].clone()).unwrap();
        assert!(tags.len() <= 4);
        seen.extend(tags);
        pages += 1;
    }
    assert_eq!(pages, 2);
    assert_eq!(seen, expected);

    let r = c
        .get(s.url("/v2/web/app/tags/list?n=2&last=beta"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["tags"], json!(["latest", "v1"]));
    let r = c
        .get(s.url("/v2/web/app/tags/list?n=lots"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = c
        .get(s.url("/v2/web/nothing/tags/list"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
}

async fn push_referrer(
    s: &Server,
    repo: &str,
    subject: &str,
    subject_size: usize,
    artifact: Option<&str>,
    config_type: &str,
) -> (String, reqwest::Response) {
    let config = push_blob(s, repo, b"{}").await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
        "annotations": {"org.example.kind": config_type},
    });
    if let Some(a) = artifact {
        m["artifactType"] = json!(a);
    }
    let bytes = serde_json::to_vec(&m).unwrap();
    let r = put_manifest(s, repo, &sha256(&bytes), OCI_MANIFEST, &bytes).await;
    (sha256(&bytes), r)
}

#[tokio::test]
async fn referrers_are_indexed_on_push_and_filterable_by_artifact_type() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    let (subject, manifest, _) = push_image(&s, "web/app", "v1", &[b"l"]).await;

    let (sig, r) = push_referrer(
        &s,
        "web/app",
        &subject,
        manifest.len(),
        Some("application/vnd.example.signature"),
        "application/vnd.oci.empty.v1+json",
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"], subject.as_str());
    let (sbom, r) = push_referrer(
        &s,
        "web/app",
        &subject,
        manifest.len(),
        None,
        "application/vnd.example.sbom",
    )
    .await;
    assert_eq!(r.status(), 201);

    let r = c
        .get(s.url(&format!("/v2/web/app/referrers/{subject}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let index: Value = r.json().await.unwrap();
    let mut found: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap().to_owned(),
                d["artifactType"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    let mut want = vec![
        (sig.clone(), "application/vnd.example.signature".to_owned()),
        (sbom.clone(), "application/vnd.example.sbom".to_owned()),
    ];
    want.sort();
    assert_eq!(found, want);
    assert_eq!(index["manifests"][0]["mediaType"], OCI_MANIFEST);
    assert!(index["manifests"][0]["annotations"]["org.example.kind"].is_string());

    let r = c
        .get(s.url(&format!(
            "/v2/web/app/referrers/{subject}?artifactType=application/vnd.example.sbom"
        )))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], sbom.as_str());

    // Unknown subject: an empty index, not an error.
    let r = c
        .get(s.url(&format!("/v2/web/app/referrers/{}", sha256(b"x"))))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"], json!([]));

    // Deleting a referrer removes it from the index.
    let r = c
        .delete(s.url(&format!("/v2/web/app/manifests/{sig}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(s.url(&format!("/v2/web/app/referrers/{subject}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn catalog_lists_only_repositories_the_caller_may_pull() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let c = client();
    for repo in ["web/a", "web/b/c", "api/x", "web"] {
        push_blob(&s, repo, repo.as_bytes()).await;
    }
    let r = c
        .get(s.url("/v2/_catalog?n=3"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["link"],
        "</v2/_catalog?n=3&last=web/a>; rel=\"next\""
    );
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["repositories"], json!(["api/x", "web", "web/a"]));
    let r = c
        .get(s.url("/v2/_catalog?n=3&last=web/a"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["repositories"], json!(["web/b/c"]));

    let r = c
        .get(s.url("/v2/_catalog"))
        .bearer_auth(WEB)
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["repositories"], json!(["web", "web/a", "web/b/c"]));
    let r = c.get(s.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
