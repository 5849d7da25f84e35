//! Real clients against the registry: skopeo (OCI and Docker schema 2) with images built
//! by umoci, and the Docker engine (login, build, push, pull).

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use tokio::process::Command;

async fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} did not start: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds a three-layer OCI image at `<layout>:latest` with umoci from files written here.
async fn build_layout(work: &Path) -> String {
    let layout = work.join("layout");
    let l = layout.to_str().unwrap().to_owned();
    run("umoci", &["init", "--layout", &l]).await;
    run("umoci", &["new", "--image", &format!("{l}:latest")]).await;
    let files: [(&str, Vec<u8>); 3] = [
        ("/hello.txt", b"hello from aloft\n".to_vec()),
        (
            "/data/big.bin",
            (0..2_000_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("/etc/app.conf", b"port = 8080\n".to_vec()),
    ];
    for (i, (target, bytes)) in files.iter().enumerate() {
        let src = work.join(format!("src{i}"));
        std::fs::write(&src, bytes).unwrap();
        run(
            "umoci",
            &[
                "insert",
                "--image",
                &format!("{l}:latest"),
                src.to_str().unwrap(),
                target,
            ],
        )
        .await;
    }
    l
}

fn layout_blob(layout: &str, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(Path::new(layout).join("blobs/sha256").join(hex)).unwrap()
}

/// The manifest digest `index.json` of an OCI layout points at.
fn layout_manifest(layout: &str) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(Path::new(layout).join("index.json")).unwrap())
            .unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

async fn fetch(s: &Server, path: &str) -> (String, String, Vec<u8>) {
    let r = client()
        .get(s.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    let media_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    let digest = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    (media_type, digest, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls_oci_images_byte_for_byte() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path()).await;
    let layout = build_layout(work.path()).await;
    let dest = format!("docker://{}/web/app:v1", s.addr);
    let creds = format!("x:{ADMIN}");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &format!("oci:{layout}:latest"),
            &dest,
        ],
    )
    .await;

    // The registry holds exactly the layout's manifest and blobs.
    let manifest_digest = layout_manifest(&layout);
    let (media_type, digest, manifest) = fetch(&s, "/v2/web/app/manifests/v1").await;
    assert_eq!(media_type, OCI_MANIFEST);
    assert_eq!(digest, manifest_digest);
    assert_eq!(manifest, layout_blob(&layout, &manifest_digest));
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let layers: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(layers.len(), 3);
    let mut blobs = layers.clone();
    blobs.push(m["config"]["digest"].as_str().unwrap().to_owned());
    for b in &blobs {
        let (_, _, bytes) = fetch(&s, &format!("/v2/web/app/blobs/{b}")).await;
        assert_eq!(bytes, layout_blob(&layout, b), "blob {b} differs");
    }

    // skopeo inspect sees the same digest and layers.
    let inspect = run(
        "skopeo",
        &["inspect", "--tls-verify=false", "--creds", &creds, &dest],
    )
    .await;
    let inspect: Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], manifest_digest.as_str());
    assert_eq!(inspect["Layers"], serde_json::json!(layers));

    // Pull back into a fresh layout: same manifest digest, same bytes.
    let pulled = work.path().join("pulled");
    let pulled = pulled.to_str().unwrap();
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &dest,
            &format!("oci:{pulled}:latest"),
        ],
    )
    .await;
    assert_eq!(layout_manifest(pulled), manifest_digest);
    for b in blobs.iter().chain([&manifest_digest]) {
        assert_eq!(
            layout_blob(pulled, b),
            layout_blob(&layout, b),
            "pulled blob {b} differs"
        );
    }

    // A second repository of the same app gets its layers by cross-repository mount.
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--src-creds",
            &creds,
            "--dest-creds",
            &creds,
            &dest,
            &format!("docker://{}/web/copy:v1", s.addr),
        ],
    )
    .await;
    let (_, digest, _) = fetch(&s, "/v2/web/copy/manifests/v1").await;
    assert_eq!(digest, manifest_digest);

    // An app token cannot push into another app's repositories.
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("x:{API}"),
            &format!("oci:{layout}:latest"),
            &format!("docker://{}/web/stolen:v1", s.addr),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "push with another app's token succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_round_trips_docker_schema2_images() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path()).await;
    let layout = build_layout(work.path()).await;
    let dest = format!("docker://{}/web/docker:v1", s.addr);
    let creds = format!("x:{WEB}");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &format!("oci:{layout}:latest"),
            &dest,
        ],
    )
    .await;

    let (media_type, digest, manifest) = fetch(&s, "/v2/web/docker/manifests/v1").await;
    assert_eq!(
        media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(digest, sha256(&manifest));

    let out = work.path().join("out");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &dest,
            &format!("dir:{}", out.display()),
        ],
    )
    .await;
    assert_eq!(
        std::fs::read(out.join("manifest.json")).unwrap(),
        manifest,
        "pulled manifest differs"
    );
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    for layer in m["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        let bytes = std::fs::read(out.join(d.strip_prefix("sha256:").unwrap())).unwrap();
        assert_eq!(sha256(&bytes), d);
        let (_, _, served) = fetch(&s, &format!("/v2/web/docker/blobs/{d}")).await;
        assert_eq!(served, bytes);
    }
}

async fn docker(config: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .env("DOCKER_BUILDKIT", "0")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    child.wait_with_output().await.unwrap()
}

async fn docker_ok(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = docker(config, args, stdin).await;
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_logs_in_pushes_and_pulls() {
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    let info = docker(cfg, &["info", "--format", "{{.ServerVersion}}"], None).await;
    if !info.status.success() {
        eprintln!(
            "skipping: docker info failed: {}",
            String::from_utf8_lossy(&info.stderr)
        );
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path()).await;
    let host = s.addr.to_string();

    let out = docker(
        cfg,
        &["login", "-u", "anyone", "--password-stdin", &host],
        Some("wrong-token"),
    )
    .await;
    assert!(!out.status.success(), "login with a wrong token succeeded");
    docker_ok(
        cfg,
        &["login", "-u", "anyone", "--password-stdin", &host],
        Some(WEB),
    )
    .await;

    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello.txt"), format!("hello via {host}\n")).unwrap();
    std::fs::write(ctx.path().join("more.txt"), "second layer\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY more.txt /data/more.txt\nCMD [\"/hello\"]\n",
    )
    .unwrap();
    let image = format!("{host}/web/hello:v1");
    docker_ok(
        cfg,
        &["build", "-q", "-t", &image, ctx.path().to_str().unwrap()],
        None,
    )
    .await;
    let pushed = docker(cfg, &["push", &image], None).await;
    let _ = docker(cfg, &["rmi", "-f", &image], None).await;
    let push_out = String::from_utf8_lossy(&pushed.stdout).into_owned();
    assert!(
        pushed.status.success(),
        "docker push failed: {push_out}\n{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let (media_type, digest, manifest) = fetch(&s, "/v2/web/hello/manifests/v1").await;
    assert_eq!(
        media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert!(
        push_out.contains(&digest),
        "push output {push_out:?} does not name {digest}"
    );
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 2);

    docker_ok(cfg, &["pull", "-q", &image], None).await;
    let repo_digests = docker_ok(
        cfg,
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image,
        ],
        None,
    )
    .await;
    let container = docker_ok(cfg, &["create", &image], None)
        .await
        .trim()
        .to_owned();
    let extracted = tempfile::tempdir().unwrap();
    let target = extracted.path().join("hello.txt");
    let copied = docker(
        cfg,
        &[
            "cp",
            &format!("{container}:/hello.txt"),
            target.to_str().unwrap(),
        ],
        None,
    )
    .await;
    let _ = docker(cfg, &["rm", &container], None).await;
    let _ = docker(cfg, &["rmi", "-f", &image], None).await;
    assert!(
        copied.status.success(),
        "docker cp failed: {}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert!(
        repo_digests.contains(&digest),
        "{repo_digests} lacks {digest}"
    );
    assert_eq!(
        std::fs::read_to_string(target).unwrap(),
        format!("hello via {host}\n")
    );
}

/// Adds an OCI image index over the layout's `amd64` and `arm64` images, tagged `multi`.
fn add_index(layout: &str) -> (String, Vec<u8>) {
    let root = Path::new(layout);
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
    let mut children = Vec::new();
    for entry in index["manifests"].as_array().unwrap() {
        let arch = entry["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut child = entry.clone();
        child.as_object_mut().unwrap().remove("annotations");
        child["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        children.push(child);
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
    }))
    .unwrap();
    let digest = sha256(&body);
    std::fs::write(
        root.join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
        &body,
    )
    .unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": OCI_INDEX, "digest": digest, "size": body.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (digest, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_a_multi_platform_index_with_all_its_images() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path()).await;
    let l = work.path().join("layout").to_str().unwrap().to_owned();
    run("umoci", &["init", "--layout", &l]).await;
    for arch in ["amd64", "arm64"] {
        let image = format!("{l}:{arch}");
        run("umoci", &["new", "--image", &image]).await;
        run(
            "umoci",
            &["config", "--image", &image, "--architecture", arch],
        )
        .await;
        let src = work.path().join(arch);
        std::fs::write(&src, format!("built for {arch}\n")).unwrap();
        run(
            "umoci",
            &[
                "insert",
                "--image",
                &image,
                src.to_str().unwrap(),
                "/arch.txt",
            ],
        )
        .await;
    }
    run("umoci", &["gc", "--layout", &l]).await;
    let (index_digest, index_body) = add_index(&l);

    let creds = format!("x:{WEB}");
    let dest = format!("docker://{}/web/multi:v1", s.addr);
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &format!("oci:{l}:multi"),
            &dest,
        ],
    )
    .await;
    let (media_type, digest, body) = fetch(&s, "/v2/web/multi/manifests/v1").await;
    assert_eq!(media_type, OCI_INDEX);
    assert_eq!(digest, index_digest);
    assert_eq!(body, index_body);
    let index: Value = serde_json::from_slice(&body).unwrap();
    for child in index["manifests"].as_array().unwrap() {
        let d = child["digest"].as_str().unwrap();
        let (media_type, _, bytes) = fetch(&s, &format!("/v2/web/multi/manifests/{d}")).await;
        assert_eq!(media_type, OCI_MANIFEST);
        assert_eq!(bytes, layout_blob(&l, d));
    }

    let pulled = work.path().join("pulled");
    let pulled = pulled.to_str().unwrap();
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--all",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &dest,
            &format!("oci:{pulled}:multi"),
        ],
    )
    .await;
    assert_eq!(layout_manifest(pulled), index_digest);
    for child in index["manifests"].as_array().unwrap() {
        let d = child["digest"].as_str().unwrap();
        assert_eq!(layout_blob(pulled, d), layout_blob(&l, d));
    }
}
