//! Offline import of OCI layout dirs, OCI archives and docker-save archives (built here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use unicri_image::{ImageService, ImageServiceConfig};
use unicri_sandbox::{Classify, ErrorKind};

async fn service() -> (tempfile::TempDir, ImageService) {
    let dir = tempfile::tempdir().unwrap();
    let svc = ImageService::new(ImageServiceConfig::new(dir.path().join("images")))
        .await
        .unwrap();
    (dir, svc)
}

fn sample() -> TestImage {
    let l1 = tar_of(&[E::Dir("etc"), E::File("etc/hostname", b"imported\n")]);
    let l2 = tar_of(&[E::File("etc/.wh.hostname", b""), E::File("bin/tool", b"x")]);
    image(vec![Layer::gz(&l1), Layer::plain(&l2)], "nobody")
}

/// Writes an OCI layout for `img` with index.json entries (annotations).
fn write_layout(dir: &Path, img: &TestImage, with_index: bool) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for (d, b) in &img.blobs {
        std::fs::write(dir.join("blobs/sha256").join(hex_of(d)), b).unwrap();
    }
    std::fs::write(
        dir.join("blobs/sha256").join(hex_of(&img.manifest_digest)),
        &img.manifest,
    )
    .unwrap();
    let (root_desc, root_digest) = if with_index {
        let idx = index_for(img);
        let d = digest(&idx);
        std::fs::write(dir.join("blobs/sha256").join(hex_of(&d)), &idx).unwrap();
        (
            serde_json::json!({"mediaType": OCI_INDEX, "digest": d, "size": idx.len(),
            "annotations": {"io.containerd.image.name": "example.com/team/multi:2.0",
                            "org.opencontainers.image.ref.name": "2.0"}}),
            d,
        )
    } else {
        (
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": img.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "busybox:1.0"}}),
            img.manifest_digest.clone(),
        )
    };
    let unnamed = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": img.manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}});
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [root_desc, unnamed]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    root_digest
}

fn tar_dir(src: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", src).unwrap();
    b.finish().unwrap();
}

fn check_unpacked(svc: &ImageService, rec: &unicri_image::ImageRecord) {
    let dirs = svc.layer_dirs(rec);
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        std::fs::read(dirs[0].join("etc/hostname")).unwrap(),
        b"imported\n"
    );
    assert_eq!(std::fs::read(dirs[1].join("bin/tool")).unwrap(), b"x");
}

#[tokio::test]
async fn oci_layout_dir() {
    let (_d, svc) = service().await;
    let img = sample();
    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), &img, false);
    let recs = svc.import(layout.path()).await.unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        recs[0].repo_tag.as_deref(),
        Some("docker.io/library/busybox:1.0")
    );
    assert_eq!(
        recs[0].repo_digest,
        format!("docker.io/library/busybox@{}", img.manifest_digest)
    );
    assert_eq!(recs[0].id, img.config_digest);
    assert_eq!(recs[0].user, "nobody");
    // "latest" alone does not name an image
    assert_eq!(recs[1].repo_tag, None);
    assert_eq!(recs[1].repo_digest, "");
    check_unpacked(&svc, &recs[0]);
    assert_eq!(entries(&svc.root().join("ingest")), Vec::<String>::new());
}

#[tokio::test]
async fn oci_archive_with_index() {
    let (_d, svc) = service().await;
    let img = sample();
    let layout = tempfile::tempdir().unwrap();
    let idx_digest = write_layout(layout.path(), &img, true);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("image.tar");
    tar_dir(layout.path(), &archive);
    let recs = svc.import(&archive).await.unwrap();
    assert_eq!(
        recs[0].repo_tag.as_deref(),
        Some("example.com/team/multi:2.0")
    );
    assert_eq!(
        recs[0].repo_digest,
        format!("example.com/team/multi@{idx_digest}")
    );
    assert_eq!(recs[0].manifest_digest, img.manifest_digest);
    check_unpacked(&svc, &recs[0]);
    assert_eq!(entries(&svc.root().join("ingest")), Vec::<String>::new());
    // GC keeps the index blob of a kept image
    svc.remove_unreferenced(&recs[..1]).await.unwrap();
    assert!(
        svc.root()
            .join("blobs/sha256")
            .join(hex_of(&idx_digest))
            .is_file()
    );
}

#[tokio::test]
async fn docker_save_archive() {
    let (_d, svc) = service().await;
    let l1 = tar_of(&[E::Dir("etc"), E::File("etc/hostname", b"imported\n")]);
    let l2 = tar_of(&[E::File("etc/.wh.hostname", b""), E::File("bin/tool", b"x")]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"User": "daemon"},
        "rootfs": {"type": "layers", "diff_ids": [digest(&l1), digest(&l2)]}
    }))
    .unwrap();
    let save = tempfile::tempdir().unwrap();
    let cfg_name = format!("{}.json", hex_of(&digest(&config)));
    std::fs::write(save.path().join(&cfg_name), &config).unwrap();
    std::fs::create_dir_all(save.path().join("aaa")).unwrap();
    std::fs::create_dir_all(save.path().join("bbb")).unwrap();
    std::fs::write(save.path().join("aaa/layer.tar"), &l1).unwrap(); // uncompressed
    std::fs::write(save.path().join("bbb/layer.tar"), gzip(&l2)).unwrap(); // gzip
    let manifest = serde_json::json!([{
        "Config": cfg_name, "RepoTags": ["myapp:1", "registry.local:5000/x/y:2"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"]
    }]);
    std::fs::write(
        save.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::write(save.path().join("repositories"), b"{}").unwrap();
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("save.tar");
    tar_dir(save.path(), &archive);

    let recs = svc.import(&archive).await.unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        recs[0].repo_tag.as_deref(),
        Some("docker.io/library/myapp:1")
    );
    assert_eq!(
        recs[1].repo_tag.as_deref(),
        Some("registry.local:5000/x/y:2")
    );
    assert_eq!(recs[0].id, digest(&config));
    assert_eq!(recs[0].user, "daemon");
    assert_eq!(
        recs[0].layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar"
    );
    assert_eq!(
        recs[0].layers[1].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(
        recs[0].repo_digest,
        format!("docker.io/library/myapp@{}", recs[0].manifest_digest)
    );
    assert!(
        svc.root()
            .join("blobs/sha256")
            .join(hex_of(&recs[0].manifest_digest))
            .is_file()
    );
    check_unpacked(&svc, &recs[0]);
    // the same import again is idempotent
    assert_eq!(svc.import(&archive).await.unwrap(), recs);
}

#[tokio::test]
async fn hostile_and_broken_imports_fail() {
    let (_d, svc) = service().await;
    // archive entry escaping
    let canary = Canary::new();
    let out = tempfile::tempdir().unwrap();
    let evil = out.path().join("evil.tar");
    let target = format!(
        "{}{}/pwned",
        "../".repeat(24),
        canary.path().display().to_string().trim_start_matches('/')
    );
    std::fs::write(&evil, tar_of(&[E::File(&target, b"x")])).unwrap();
    let err = svc.import(&evil).await.expect_err("escape");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    canary.assert_untouched();

    // a layout whose blob does not match its digest
    let img = sample();
    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), &img, false);
    let l = &img.layer_digests[0];
    std::fs::write(
        layout.path().join("blobs/sha256").join(hex_of(l)),
        b"tampered",
    )
    .unwrap();
    let err = svc.import(layout.path()).await.expect_err("tampered");
    assert_eq!(err.kind(), ErrorKind::DataLoss, "{err}");
    assert!(!svc.root().join("blobs/sha256").join(hex_of(l)).exists());
    assert_eq!(entries(&svc.root().join("snapshots")), Vec::<String>::new());
    assert_eq!(entries(&svc.root().join("ingest")), Vec::<String>::new());

    // neither layout nor docker-save; missing path
    let junk = tempfile::tempdir().unwrap();
    assert_eq!(
        svc.import(junk.path()).await.expect_err("junk").kind(),
        ErrorKind::InvalidArgument
    );
    assert!(svc.import(&junk.path().join("missing.tar")).await.is_err());
}

#[tokio::test]
async fn extension_header_bombs_fail_imports() {
    let (_d, svc) = service().await;
    // an image archive that is itself a (gzipped) 64 MiB PAX header
    let out = tempfile::tempdir().unwrap();
    let evil = out.path().join("evil.tar.gz");
    let bomb = extension_header_bomb(tar::EntryType::XHeader, 64 << 20);
    std::fs::write(&evil, &bomb.blob).unwrap();
    let err = svc.import(&evil).await.expect_err("archive bomb");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("extension header"), "{err}");

    // a layout whose layer is a 64 MiB GNU long name
    let img = image(
        vec![extension_header_bomb(tar::EntryType::GNULongName, 64 << 20)],
        "",
    );
    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), &img, false);
    let err = svc.import(layout.path()).await.expect_err("layer bomb");
    assert!(
        matches!(err, unicri_image::ImageError::HostileLayer { .. }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::DataLoss, "{err}");
    assert_eq!(entries(&svc.root().join("snapshots")), Vec::<String>::new());
    assert_eq!(entries(&svc.root().join("ingest")), Vec::<String>::new());
}
