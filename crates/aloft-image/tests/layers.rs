//! Layer unpacking through the public import API: compression, metadata, links,
//! whiteouts, digest checks and hostile archives.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use aloft_image::{ImageError, ImageStore};
use common::{image, layer, store_state, write_oci_layout, Compression, LayerTar};
use serde_json::json;

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(dir.join("store")).unwrap()
}

#[tokio::test]
async fn gzip_and_zstd_layers_keep_files_links_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let base = LayerTar::new()
        .dir("bin", 0o755)
        .file_owned(
            "bin/tool",
            b"#!/bin/sh\necho hi\n",
            0o4755,
            1000,
            1001,
            1_500_000_000,
        )
        .hardlink("bin/tool-alias", "bin/tool")
        .symlink("bin/abs", "/etc/target")
        .symlink("bin/rel", "../etc/target")
        .raw(tar::EntryType::Fifo, "bin/pipe", "", &[])
        .file("etc/implicit-parent", b"x", 0o600)
        .raw(tar::EntryType::Regular, "/abs/path", "", b"normalised")
        .finish();
    let top = LayerTar::new()
        .dir("srv", 0o700)
        .file("srv/data", b"zstd!", 0o640)
        .finish();
    let img = image(
        vec![
            layer(base, Compression::Gzip),
            layer(top, Compression::Zstd),
        ],
        json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/tool"], "WorkingDir": "/srv", "ExposedPorts": {"8080/tcp": {}}}),
    );
    write_oci_layout(&tmp.path().join("layout"), &[(&img, Some("v1"))]);

    let store = store(tmp.path());
    let got = store
        .import_oci_layout(&tmp.path().join("layout"), Some("v1"))
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, img.manifest_digest);
    assert_eq!(got.reference, "v1");
    assert_eq!(got.config.cmd, ["/bin/tool"]);
    assert_eq!(got.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(got.config.exposed_ports, ["8080/tcp"]);
    let ids: Vec<_> = got
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.diff_id.clone()))
        .collect();
    let want: Vec<_> = img
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.diff_id.clone()))
        .collect();
    assert_eq!(ids, want);

    let lower = &got.layers[0].path;
    assert!(lower.ends_with(format!(
        "layers/sha256/{}/rootfs",
        img.layers[0].digest.trim_start_matches("sha256:")
    )));
    let tool = fs::metadata(lower.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid bit and mode kept");
    assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
    assert_eq!(tool.mtime(), 1_500_000_000);
    assert_eq!(
        fs::read(lower.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    let alias = fs::metadata(lower.join("bin/tool-alias")).unwrap();
    assert_eq!(alias.ino(), tool.ino(), "hard link shares the inode");
    assert_eq!(
        fs::read_link(lower.join("bin/abs")).unwrap(),
        Path::new("/etc/target")
    );
    assert_eq!(
        fs::read_link(lower.join("bin/rel")).unwrap(),
        Path::new("../etc/target")
    );
    assert!(fs::symlink_metadata(lower.join("bin/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(fs::read(lower.join("abs/path")).unwrap(), b"normalised");
    assert_eq!(
        fs::metadata(lower.join("bin")).unwrap().mtime(),
        1_600_000_000,
        "dir mtime set after its children"
    );

    let upper = &got.layers[1].path;
    assert_eq!(fs::read(upper.join("srv/data")).unwrap(), b"zstd!");
    assert_eq!(
        fs::metadata(upper.join("srv")).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(store.get("v1").unwrap().as_ref(), Some(&got));
    assert_eq!(
        store.get(&img.manifest_digest).unwrap().as_ref(),
        Some(&got)
    );
    assert_eq!(store.get("missing:tag").unwrap(), None);
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_hide_lower_entries_in_a_real_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = LayerTar::new()
        .dir("a", 0o755)
        .file("a/gone", b"1", 0o644)
        .file("a/kept", b"2", 0o644)
        .dir("b", 0o755)
        .file("b/old", b"3", 0o644)
        .finish();
    let upper = LayerTar::new()
        .dir("a", 0o755)
        .file("a/.wh.gone", b"", 0o644)
        .dir("b", 0o755)
        .file("b/.wh..wh..opq", b"", 0o644)
        .file("b/new", b"4", 0o644)
        .finish();
    let img = image(
        vec![
            layer(lower, Compression::Gzip),
            layer(upper, Compression::None),
        ],
        json!({}),
    );
    write_oci_layout(&tmp.path().join("layout"), &[(&img, None)]);
    let got = store(tmp.path())
        .import_oci_layout(&tmp.path().join("layout"), None)
        .await
        .unwrap();
    let top = &got.layers[1].path;
    let wh = fs::symlink_metadata(top.join("a/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert!(!top.join("a/.wh.gone").exists());
    assert_eq!(
        xattr::get(top.join("b"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );

    let merged = tmp.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let opts = format!(
        "lowerdir={}:{}",
        top.display(),
        got.layers[0].path.display()
    );
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success(), "mount overlay");
    let seen = (
        merged.join("a/gone").exists(),
        merged.join("a/kept").exists(),
        merged.join("b/old").exists(),
        fs::read(merged.join("b/new")).ok(),
    );
    assert!(Command::new("umount")
        .arg(&merged)
        .status()
        .unwrap()
        .success());
    assert_eq!(seen, (false, true, false, Some(b"4".to_vec())));
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused_and_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let good = layer(
        LayerTar::new().file("f", b"good", 0o644).finish(),
        Compression::None,
    );
    let img = image(vec![good.clone()], json!({}));
    let dir = tmp.path().join("layout");
    write_oci_layout(&dir, &[(&img, None)]);
    // Same digest name, different bytes (a valid layer, so only the digest can catch it).
    let evil = layer(
        LayerTar::new().file("f", b"evil", 0o644).finish(),
        Compression::None,
    );
    fs::write(
        dir.join("blobs/sha256")
            .join(good.digest.trim_start_matches("sha256:")),
        &evil.blob,
    )
    .unwrap();

    let store = store(tmp.path());
    let err = store.import_oci_layout(&dir, None).await.unwrap_err();
    assert!(
        matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == good.digest),
        "{err:?}"
    );
    assert_eq!(store_state(store.root()), (vec![], true));
    assert_eq!(store.get(&img.manifest_digest).unwrap(), None);
}

#[tokio::test]
async fn a_config_diff_id_that_does_not_match_the_layer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = layer(
        LayerTar::new().file("f", b"x", 0o644).finish(),
        Compression::Zstd,
    );
    l.diff_id = common::sha256(b"something else");
    let img = image(vec![l], json!({}));
    write_oci_layout(&tmp.path().join("layout"), &[(&img, None)]);
    let err = store(tmp.path())
        .import_oci_layout(&tmp.path().join("layout"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err:?}");
}

async fn assert_hostile(layers: Vec<Vec<u8>>, reason_part: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let layers: Vec<_> = layers
        .into_iter()
        .map(|t| layer(t, Compression::Gzip))
        .collect();
    let last = layers.last().unwrap().digest.clone();
    let img = image(layers, json!({}));
    write_oci_layout(&tmp.path().join("layout"), &[(&img, None)]);
    let store = store(tmp.path());
    let err = store
        .import_oci_layout(&tmp.path().join("layout"), None)
        .await
        .unwrap_err();
    match &err {
        ImageError::HostileLayer { digest, reason, .. } => {
            assert_eq!(*digest, last);
            assert!(
                reason.contains(reason_part),
                "{reason:?} lacks {reason_part:?}"
            );
        }
        other => panic!("expected a hostile layer error, got {other:?}"),
    }
    let (complete, tmp_empty) = store_state(store.root());
    assert!(
        !complete.contains(&last.trim_start_matches("sha256:").to_owned()),
        "half-unpacked layer kept"
    );
    assert!(tmp_empty, "work directory left behind");
    for escaped in ["evil", "store/evil", "store/layers/evil"] {
        assert!(
            !tmp.path().join(escaped).exists(),
            "{escaped} written outside the layer"
        );
    }
}

#[tokio::test]
async fn entries_escaping_the_root_are_refused() {
    assert_hostile(
        vec![LayerTar::new()
            .raw(tar::EntryType::Regular, "../../../evil", "", b"x")
            .finish()],
        "escapes",
    )
    .await;
    assert_hostile(
        vec![LayerTar::new()
            .raw(tar::EntryType::Regular, "a/../../evil", "", b"x")
            .finish()],
        "escapes",
    )
    .await;
    assert_hostile(
        vec![LayerTar::new()
            .raw(tar::EntryType::Directory, "/../evil", "", b"")
            .finish()],
        "escapes",
    )
    .await;
}

#[tokio::test]
async fn extraction_through_a_symlink_is_refused() {
    let same_layer = LayerTar::new()
        .symlink("out", "../../..")
        .raw(tar::EntryType::Regular, "out/evil", "", b"x")
        .finish();
    assert_hostile(vec![same_layer], "symlink").await;

    let base = LayerTar::new().symlink("etc", "/").finish();
    let top = LayerTar::new().file("etc/evil", b"x", 0o644).finish();
    assert_hostile(vec![base, top], "lower layer").await;
}

#[tokio::test]
async fn hard_links_outside_the_layer_or_through_symlinks_are_refused() {
    let outside = LayerTar::new()
        .hardlink("passwd", "../../../etc/passwd")
        .finish();
    assert_hostile(vec![outside], "escapes").await;
    let through = LayerTar::new()
        .symlink("host", "/etc")
        .hardlink("passwd", "host/passwd")
        .finish();
    assert_hostile(vec![through], "symlink").await;
    let lower_only = LayerTar::new().hardlink("copy", "bin/sh").finish();
    assert_hostile(
        vec![
            LayerTar::new().file("bin/sh", b"sh", 0o755).finish(),
            lower_only,
        ],
        "not in this layer",
    )
    .await;
}

#[tokio::test]
async fn device_nodes_shipped_in_a_layer_are_left_out() {
    // Rootfs tarballs (debootstrap, `docker import`) carry /dev nodes; the sandbox brings its
    // own /dev, so they are dropped rather than created, and the rest of the layer is kept.
    let tmp = tempfile::tempdir().unwrap();
    let tar = LayerTar::new()
        .raw(tar::EntryType::Char, "dev/null", "", &[])
        .raw(tar::EntryType::Block, "dev/sda", "", &[])
        .raw(tar::EntryType::Char, "etc/whiteout-lookalike", "", &[])
        .file("etc/hostname", b"box", 0o644)
        .finish();
    let img = image(vec![layer(tar, Compression::Gzip)], json!({}));
    write_oci_layout(&tmp.path().join("layout"), &[(&img, None)]);
    let store = store(tmp.path());
    let got = store
        .import_oci_layout(&tmp.path().join("layout"), None)
        .await
        .unwrap();
    let root = &got.layers[0].path;
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"box");
    for gone in ["dev/null", "dev/sda", "etc/whiteout-lookalike"] {
        assert!(
            fs::symlink_metadata(root.join(gone)).is_err(),
            "{gone} was created"
        );
    }
}

#[tokio::test]
async fn a_directory_entry_may_replace_a_lower_symlink() {
    // `var/run -> ../run` below, a real `var/run/` directory above: what docker does too.
    let tmp = tempfile::tempdir().unwrap();
    let base = LayerTar::new()
        .dir("var", 0o755)
        .symlink("var/run", "../run")
        .finish();
    let top = LayerTar::new()
        .dir("var/run", 0o755)
        .file("var/run/pid", b"1", 0o644)
        .finish();
    let img = image(
        vec![
            layer(base, Compression::None),
            layer(top, Compression::None),
        ],
        json!({}),
    );
    write_oci_layout(&tmp.path().join("layout"), &[(&img, None)]);
    let got = store(tmp.path())
        .import_oci_layout(&tmp.path().join("layout"), None)
        .await
        .unwrap();
    assert_eq!(
        fs::read(got.layers[1].path.join("var/run/pid")).unwrap(),
        b"1"
    );
}

#[tokio::test]
async fn a_cached_layer_is_checked_again_when_stacked_on_a_symlink() {
    // `top` creates `etc/` implicitly. Over a real `etc/` it is fine; the same cached
    // layer over `etc -> /` must be refused.
    let tmp = tempfile::tempdir().unwrap();
    let top = layer(
        LayerTar::new().file("etc/evil", b"x", 0o644).finish(),
        Compression::Gzip,
    );
    let good = image(
        vec![
            layer(
                LayerTar::new().dir("etc", 0o755).finish(),
                Compression::Gzip,
            ),
            top.clone(),
        ],
        json!({}),
    );
    let bad = image(
        vec![
            layer(
                LayerTar::new().symlink("etc", "/").finish(),
                Compression::Gzip,
            ),
            top.clone(),
        ],
        json!({}),
    );
    write_oci_layout(
        &tmp.path().join("layout"),
        &[(&good, Some("good")), (&bad, Some("bad"))],
    );
    let store = store(tmp.path());
    store
        .import_oci_layout(&tmp.path().join("layout"), Some("good"))
        .await
        .unwrap();
    let err = store
        .import_oci_layout(&tmp.path().join("layout"), Some("bad"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::HostileLayer { ref digest, .. } if *digest == top.digest),
        "{err:?}"
    );
    assert_eq!(store.get("bad").unwrap(), None);
}

#[tokio::test]
async fn sha512_blobs_are_verified_too() {
    use sha2::{Digest as _, Sha512};
    let tmp = tempfile::tempdir().unwrap();
    let mut l = layer(
        LayerTar::new().file("big", b"sha512 layer", 0o644).finish(),
        Compression::Gzip,
    );
    l.digest = format!("sha512:{}", hex::encode(Sha512::digest(&l.blob)));
    let img = image(vec![l.clone()], json!({}));
    let dir = tmp.path().join("layout");
    write_oci_layout(&dir, &[(&img, None)]);
    let store = store(tmp.path());
    let got = store.import_oci_layout(&dir, None).await.unwrap();
    assert_eq!(got.layers[0].digest, l.digest);
    assert!(got.layers[0]
        .path
        .ends_with(format!("layers/sha512/{}/rootfs", &l.digest[7..])));
    assert_eq!(
        fs::read(got.layers[0].path.join("big")).unwrap(),
        b"sha512 layer"
    );

    // Flip one byte of a fresh copy: refused, nothing kept.
    let tmp2 = tempfile::tempdir().unwrap();
    let dir2 = tmp2.path().join("layout");
    write_oci_layout(&dir2, &[(&img, None)]);
    let blob = dir2.join("blobs/sha512").join(&l.digest[7..]);
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let store2 = ImageStore::open(tmp2.path().join("store")).unwrap();
    let err = store2.import_oci_layout(&dir2, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::DigestMismatch { .. } | ImageError::MalformedLayer { .. }
        ),
        "{err:?}"
    );
    assert!(fs::read_dir(tmp2.path().join("store/layers"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn whiteout_tricks_are_refused() {
    let dotdot = LayerTar::new()
        .dir("a", 0o755)
        .file("a/.wh...", b"", 0o644)
        .finish();
    assert_hostile(vec![dotdot], "whiteout").await;
    let linked = LayerTar::new()
        .file("a/.wh.gone", b"", 0o644)
        .hardlink("a/also", "a/gone")
        .finish();
    assert_hostile(vec![linked], "whiteout").await;
}

#[tokio::test]
async fn leftovers_of_an_interrupted_unpack_are_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer(
        LayerTar::new().file("real", b"r", 0o644).finish(),
        Compression::Gzip,
    );
    let img = image(vec![l.clone()], json!({}));
    write_oci_layout(&tmp.path().join("layout"), &[(&img, None)]);
    // What a crash could leave: a work dir, and a layer dir without its completion record.
    let root = tmp.path().join("store");
    fs::create_dir_all(root.join("tmp/partial/rootfs")).unwrap();
    let half = root
        .join("layers/sha256")
        .join(&l.digest[7..])
        .join("rootfs");
    fs::create_dir_all(&half).unwrap();
    fs::write(half.join("junk"), b"half").unwrap();

    let store = ImageStore::open(&root).unwrap();
    assert!(store_state(&root).1, "open empties tmp/");
    let got = store
        .import_oci_layout(&tmp.path().join("layout"), None)
        .await
        .unwrap();
    assert!(!got.layers[0].path.join("junk").exists());
    assert_eq!(fs::read(got.layers[0].path.join("real")).unwrap(), b"r");
}

#[tokio::test]
async fn pax_xattrs_are_kept_except_trusted_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.origin", &b"aloft"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    b.append_data(&mut h, "tagged", &b"t"[..]).unwrap();
    let img = image(
        vec![layer(b.into_inner().unwrap(), Compression::None)],
        json!({}),
    );
    write_oci_layout(&tmp.path().join("layout"), &[(&img, None)]);
    let got = store(tmp.path())
        .import_oci_layout(&tmp.path().join("layout"), None)
        .await
        .unwrap();
    let file = got.layers[0].path.join("tagged");
    assert_eq!(
        xattr::get(&file, "user.origin").unwrap().as_deref(),
        Some(&b"aloft"[..])
    );
    assert_eq!(xattr::get(&file, "trusted.overlay.opaque").unwrap(), None);
}

/// A layer whose headers promise more than the host allows is refused from its headers,
/// before its data is written: a bomb cannot fill the disk.
#[tokio::test]
async fn layer_bombs_are_refused_by_size_and_entry_count() {
    let tmp = tempfile::tempdir().unwrap();
    // 1 TiB of content announced, only 64 KiB present: the archive is refused at the header.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path("bomb").unwrap();
    h.set_mode(0o644);
    h.set_size(1 << 40);
    h.set_cksum();
    let mut bomb = h.as_bytes().to_vec();
    bomb.extend_from_slice(&[0u8; 64 * 1024]);
    let huge = image(vec![layer(bomb, Compression::Gzip)], json!({}));
    write_oci_layout(&tmp.path().join("huge"), &[(&huge, Some("v1"))]);
    let store = store(tmp.path());
    let err = store
        .import_oci_layout(&tmp.path().join("huge"), Some("v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("more than 10737418240 bytes"),
        "{err}"
    );
    let (layers, tmp_empty) = store_state(&tmp.path().join("store"));
    assert!(layers.is_empty() && tmp_empty, "{layers:?}");

    // Limits count over all layers of one image, cached layers included.
    store.set_limits(aloft_image::UnpackLimits {
        max_bytes: 3 << 20,
        max_files: 50,
    });
    let two_mib = LayerTar::new()
        .file("a", &vec![7u8; 2 << 20], 0o644)
        .finish();
    let other = LayerTar::new()
        .file("b", &vec![8u8; 2 << 20], 0o644)
        .finish();
    let first = image(vec![layer(two_mib.clone(), Compression::Gzip)], json!({}));
    let both = image(
        vec![
            layer(two_mib, Compression::Gzip),
            layer(other, Compression::Gzip),
        ],
        json!({}),
    );
    write_oci_layout(
        &tmp.path().join("sizes"),
        &[(&first, Some("one")), (&both, Some("two"))],
    );
    store
        .import_oci_layout(&tmp.path().join("sizes"), Some("one"))
        .await
        .unwrap();
    let err = store
        .import_oci_layout(&tmp.path().join("sizes"), Some("two"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { ref what, .. } if what == "bytes"),
        "{err}"
    );

    let mut many = LayerTar::new();
    for i in 0..60 {
        many = many.file(&format!("f{i}"), b"x", 0o644);
    }
    let many = image(vec![layer(many.finish(), Compression::Gzip)], json!({}));
    write_oci_layout(&tmp.path().join("many"), &[(&many, Some("v1"))]);
    let err = store
        .import_oci_layout(&tmp.path().join("many"), Some("v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { ref what, .. } if what == "entries"),
        "{err}"
    );
    assert!(err.to_string().contains("more than 50 entries"), "{err}");
}
