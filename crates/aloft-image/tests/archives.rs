//! Imports from docker archives and OCI layouts made by hand and by real tools (umoci,
//! skopeo, docker), garbage collection, and concurrent unpacking of shared layers.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use aloft_image::{ImageError, ImageStore};
use common::{
    image, layer, store_state, write_docker_legacy, write_docker_oci, write_oci_layout,
    Compression, LayerTar,
};
use serde_json::json;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn two_layer_image() -> common::BuiltImage {
    let base = layer(
        LayerTar::new()
            .dir("bin", 0o755)
            .file("bin/app", b"app v1", 0o755)
            .finish(),
        Compression::None,
    );
    let top = layer(
        LayerTar::new()
            .file("bin/.wh.app", b"", 0o644)
            .file("etc/conf", b"c", 0o600)
            .finish(),
        Compression::None,
    );
    image(
        vec![base, top],
        json!({"Entrypoint": ["/bin/app"], "User": "nobody", "Labels": {"team": "edge"}, "StopSignal": "SIGTERM"}),
    )
}

#[tokio::test]
async fn legacy_docker_archive_imports_under_its_repo_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let img = two_layer_image();
    let archive = tmp.path().join("save.tar");
    write_docker_legacy(&archive, &img, "example/app:v1");
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let got = store.import_docker_archive(&archive).await.unwrap();
    assert_eq!(got.reference, "example/app:v1");
    assert_eq!(got.config.entrypoint, ["/bin/app"]);
    assert_eq!(got.config.user.as_deref(), Some("nobody"));
    assert_eq!(got.config.stop_signal.as_deref(), Some("SIGTERM"));
    assert_eq!(
        got.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>(),
        img.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        fs::read(got.layers[0].path.join("bin/app")).unwrap(),
        b"app v1"
    );
    assert_eq!(store.get("example/app:v1").unwrap(), Some(got));
}

#[tokio::test]
async fn docker_archive_with_an_embedded_oci_layout_keeps_the_manifest_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut img = two_layer_image();
    img = image(
        vec![
            layer(
                LayerTar::new().file("a", b"gz", 0o644).finish(),
                Compression::Gzip,
            ),
            img.layers[1].clone(),
        ],
        json!({"Cmd": ["sh"]}),
    );
    let archive = tmp.path().join("save.tar");
    write_docker_oci(&archive, &img, "example/app:v2");
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let got = store.import_docker_archive(&archive).await.unwrap();
    assert_eq!(got.manifest_digest, img.manifest_digest);
    assert_eq!(got.reference, "example/app:v2");
    assert_eq!(fs::read(got.layers[0].path.join("a")).unwrap(), b"gz");
}

#[tokio::test]
async fn an_archive_that_is_not_an_image_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("junk.tar");
    fs::write(
        &archive,
        LayerTar::new().file("hello", b"world", 0o644).finish(),
    )
    .unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let err = store.import_docker_archive(&archive).await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidImage { .. }), "{err:?}");
    let err = store.import_oci_layout(tmp.path(), None).await.unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
}

#[tokio::test]
async fn umoci_layout_and_skopeo_docker_archive_unpack_to_the_same_content() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("run"), b"#!/bin/sh\necho aloft\n").unwrap();
    fs::write(src.join("sub/data"), b"payload").unwrap();
    std::os::unix::fs::symlink("run", src.join("run-link")).unwrap();
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    run(Command::new("umoci")
        .arg("new")
        .arg("--image")
        .arg(format!("{}:latest", layout.display())));
    run(Command::new("umoci")
        .arg("insert")
        .arg("--image")
        .arg(format!("{}:latest", layout.display()))
        .arg(&src)
        .arg("/opt/app"));
    run(Command::new("umoci")
        .args([
            "config",
            "--config.cmd",
            "/opt/app/run",
            "--config.workingdir",
            "/opt/app",
            "--image",
        ])
        .arg(format!("{}:latest", layout.display())));

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let from_layout = store
        .import_oci_layout(&layout, Some("latest"))
        .await
        .unwrap();
    assert_eq!(from_layout.config.cmd, ["/opt/app/run"]);
    assert_eq!(from_layout.config.working_dir.as_deref(), Some("/opt/app"));
    let top = &from_layout.layers.last().unwrap().path;
    assert_eq!(fs::read(top.join("opt/app/sub/data")).unwrap(), b"payload");
    assert_eq!(
        fs::read_link(top.join("opt/app/run-link")).unwrap(),
        Path::new("run")
    );

    let archive = tmp.path().join("docker.tar");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!(
            "docker-archive:{}:example/umoci:latest",
            archive.display()
        )));
    let from_archive = store.import_docker_archive(&archive).await.unwrap();
    assert_eq!(from_archive.reference, "docker.io/example/umoci:latest");
    let diff_ids = |i: &aloft_image::Image| {
        i.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(diff_ids(&from_archive), diff_ids(&from_layout));
    let top2 = &from_archive.layers.last().unwrap().path;
    assert_eq!(
        fs::read(top2.join("opt/app/run")).unwrap(),
        b"#!/bin/sh\necho aloft\n"
    );
}

#[tokio::test]
async fn docker_save_output_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs.tar");
    fs::write(
        &rootfs,
        LayerTar::new()
            .dir("srv", 0o755)
            .file("srv/index.html", b"<h1>hi</h1>", 0o644)
            .finish(),
    )
    .unwrap();
    let tag = format!("aloft-image-test/save-{}:v1", std::process::id());
    run(Command::new("docker")
        .args(["import", "--change", "CMD [\"/srv/run\"]"])
        .arg(&rootfs)
        .arg(&tag));
    let archive = tmp.path().join("save.tar");
    let saved = Command::new("docker")
        .args(["save", "-o"])
        .arg(&archive)
        .arg(&tag)
        .output()
        .unwrap();
    let _ = Command::new("docker").args(["rmi", &tag]).output();
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let got = store.import_docker_archive(&archive).await.unwrap();
    assert_eq!(got.reference, tag);
    assert_eq!(got.config.cmd, ["/srv/run"]);
    assert_eq!(
        fs::read(got.layers[0].path.join("srv/index.html")).unwrap(),
        b"<h1>hi</h1>"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_unused_images_and_layers_no_image_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = layer(
        LayerTar::new().file("shared", b"s", 0o644).finish(),
        Compression::Gzip,
    );
    let only_a = layer(
        LayerTar::new().file("a", b"a", 0o644).finish(),
        Compression::Zstd,
    );
    let only_b = layer(
        LayerTar::new().file("b", b"b", 0o644).finish(),
        Compression::Zstd,
    );
    let a = image(vec![shared.clone(), only_a.clone()], json!({}));
    let b = image(vec![shared.clone(), only_b.clone()], json!({}));
    let layout = tmp.path().join("layout");
    write_oci_layout(&layout, &[(&a, Some("a")), (&b, Some("b"))]);

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let (ia, ib) = tokio::join!(
        store.import_oci_layout(&layout, Some("a")),
        store.import_oci_layout(&layout, Some("b"))
    );
    let (ia, ib) = (ia.unwrap(), ib.unwrap());
    assert_eq!(
        ia.layers[0].path, ib.layers[0].path,
        "the shared layer is one directory"
    );
    assert_eq!(store_state(store.root()).0.len(), 3);

    let report = store
        .gc(&HashSet::from([a.manifest_digest.clone()]))
        .unwrap();
    assert_eq!(
        report.images_removed,
        std::slice::from_ref(&b.manifest_digest)
    );
    assert_eq!(report.layers_removed, std::slice::from_ref(&only_b.digest));
    assert_eq!(report.blobs_removed, 2, "b's manifest and config");
    assert_eq!(store.get("b").unwrap(), None);
    assert_eq!(store.get("a").unwrap(), Some(ia.clone()));
    assert!(ia.layers.iter().all(|l| l.path.is_dir()));
    assert!(!ib.layers[1].path.exists());

    let report = store.gc(&HashSet::new()).unwrap();
    assert_eq!(
        report.images_removed,
        std::slice::from_ref(&a.manifest_digest)
    );
    assert_eq!(report.layers_removed.len(), 2);
    assert_eq!(store_state(store.root()), (vec![], true));
    assert_eq!(store.get(&a.manifest_digest).unwrap(), None);

    // A re-import after collection unpacks again.
    let again = store.import_oci_layout(&layout, Some("b")).await.unwrap();
    assert_eq!(fs::read(again.layers[1].path.join("b")).unwrap(), b"b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_imports_of_one_archive_share_one_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let img = two_layer_image();
    let archive = tmp.path().join("save.tar");
    write_docker_legacy(&archive, &img, "example/app:v1");
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let imports = (0..6).map(|_| {
        let (store, archive) = (store.clone(), archive.clone());
        tokio::spawn(async move { store.import_docker_archive(&archive).await })
    });
    let images: Vec<_> = futures::future::join_all(imports)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(images.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        store_state(store.root()),
        (
            img.layers
                .iter()
                .map(|l| l.digest[7..].to_owned())
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            true
        )
    );
    let wh = fs::symlink_metadata(images[0].layers[1].path.join("bin/app")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
}
