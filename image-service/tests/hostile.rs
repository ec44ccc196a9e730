//! Hostile registries and layers: every case must fail the pull, write nothing outside the
//! store, leave no snapshot, no blob for the bad digest and an empty ingest dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use unicri_image::{ImageError, Limits};
use unicri_sandbox::{Classify, ErrorKind};

async fn pull_evil(layers: Vec<Layer>) -> (Env, FakeRegistry, TestImage, ImageError) {
    let reg = FakeRegistry::start().await;
    let img = image(layers, "");
    reg.serve_image("evil", "latest", &img);
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/evil:latest", reg.host()), None, None)
        .await
        .expect_err("pull must fail");
    (env, reg, img, err)
}

fn assert_hostile(err: &ImageError) {
    assert!(
        matches!(err, ImageError::HostileLayer { .. }),
        "unexpected error: {err}"
    );
    assert_eq!(err.kind(), ErrorKind::DataLoss);
}

/// `../` repeated enough to reach `/` from anywhere under the temp dir.
fn climb() -> String {
    "../".repeat(24)
}

#[tokio::test]
async fn dotdot_escape_is_rejected() {
    let canary = Canary::new();
    let target = format!(
        "{}{}/pwned",
        climb(),
        canary.path().display().to_string().trim_start_matches('/')
    );
    assert!(target.len() < 100);
    let tar = tar_of(&[E::File("ok", b"fine"), E::File(&target, b"evil")]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert!(err.to_string().contains("escapes"), "{err}");
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn absolute_path_is_rejected() {
    let canary = Canary::new();
    let target = format!("{}/pwned", canary.path().display());
    let tar = tar_of(&[E::File("./fine", b"ok"), E::File(&target, b"evil")]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert!(err.to_string().contains("absolute"), "{err}");
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn write_through_symlink_is_rejected() {
    let canary = Canary::new();
    let link = canary.path().display().to_string();
    let tar = tar_of(&[E::Symlink("evil", &link), E::File("evil/pwned", b"evil")]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn write_through_relative_symlink_is_rejected() {
    let canary = Canary::new();
    let link = format!(
        "{}{}",
        climb(),
        canary.path().display().to_string().trim_start_matches('/')
    );
    let tar = tar_of(&[
        E::Dir("a"),
        E::Symlink("a/b", &link),
        E::File("a/b/pwned", b"evil"),
    ]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn dir_replaced_by_symlink_then_written_is_rejected() {
    let canary = Canary::new();
    let link = canary.path().display().to_string();
    let tar = tar_of(&[
        E::Dir("d"),
        E::File("d/x", b"1"),
        E::Symlink("d", &link),
        E::File("d/pwned", b"evil"),
    ]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn whiteout_through_symlink_is_rejected() {
    let canary = Canary::new();
    let link = canary.path().display().to_string();
    let tar = tar_of(&[E::Symlink("evil", &link), E::File("evil/.wh.keep", b"")]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn hardlink_to_absolute_target_is_rejected() {
    let canary = Canary::new();
    let target = format!("{}/keep", canary.path().display());
    let tar = tar_of(&[E::Hardlink("leak", &target)]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert!(err.to_string().contains("absolute"), "{err}");
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
    // the canary file gained no extra link
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(canary.path().join("keep"))
            .unwrap()
            .nlink(),
        1
    );
}

#[tokio::test]
async fn hardlink_with_dotdot_target_is_rejected() {
    let canary = Canary::new();
    let target = format!(
        "{}{}/keep",
        climb(),
        canary.path().display().to_string().trim_start_matches('/')
    );
    let tar = tar_of(&[E::Hardlink("leak", &target)]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn hardlink_to_unextracted_path_is_rejected() {
    // /etc/hostname exists on the host; a link to "etc/hostname" must only ever mean this layer's.
    let tar = tar_of(&[E::Dir("etc"), E::Hardlink("etc/h", "etc/hostname")]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert!(err.to_string().contains("not extracted earlier"), "{err}");
    assert_clean_after_failure(&env, None);
}

#[tokio::test]
async fn hardlink_through_swapped_parent_is_rejected() {
    let canary = Canary::new();
    let link = canary.path().display().to_string();
    // "d/keep" is extracted, then "d" becomes a symlink to the canary: linking "d/keep" would
    // then link the canary's file into the layer.
    let tar = tar_of(&[
        E::Dir("d"),
        E::File("d/keep", b"x"),
        E::Symlink("d", &link),
        E::Hardlink("leak", "d/keep"),
    ]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn char_device_is_rejected() {
    let tar = tar_of(&[E::Dir("dev"), E::Char("dev/mem", 1, 1)]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::gz(&tar)]).await;
    assert_hostile(&err);
    assert!(err.to_string().contains("device"), "{err}");
    assert_clean_after_failure(&env, None);
}

#[tokio::test]
async fn block_device_is_rejected() {
    let tar = tar_of(&[E::Block("sda")]);
    let (env, _r, _i, err) = pull_evil(vec![Layer::plain(&tar)]).await;
    assert_hostile(&err);
    assert_clean_after_failure(&env, None);
}

#[tokio::test]
async fn blob_digest_mismatch_is_rejected() {
    let reg = FakeRegistry::start().await;
    let good = tar_of(&[E::File("a", b"good")]);
    let img = image(vec![Layer::gz(&good)], "");
    reg.serve_image("evil", "latest", &img);
    // same length, different bytes
    let layer = &img.layer_digests[0];
    let mut evil = img.blobs[layer].clone();
    let n = evil.len();
    evil[n - 1] ^= 0xff;
    reg.route(
        &format!("/v2/evil/blobs/{layer}"),
        Resp::ok(evil, "application/octet-stream"),
    );
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/evil:latest", reg.host()), None, None)
        .await
        .expect_err("fail");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::DataLoss);
    assert_clean_after_failure(&env, Some(layer));
}

#[tokio::test]
async fn manifest_digest_mismatch_by_digest_is_rejected() {
    let reg = FakeRegistry::start().await;
    let img = image(vec![Layer::gz(&tar_of(&[E::File("a", b"x")]))], "");
    let other = format!("sha256:{}", "ab".repeat(32));
    reg.route(
        &format!("/v2/evil/manifests/{other}"),
        Resp::ok(img.manifest.clone(), OCI_MANIFEST),
    );
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/evil@{other}", reg.host()), None, None)
        .await
        .expect_err("fail");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_clean_after_failure(&env, Some(&other));
    assert!(
        !env.root()
            .join("blobs/sha256")
            .join(hex_of(&img.manifest_digest))
            .exists()
    );
}

#[tokio::test]
async fn docker_content_digest_header_mismatch_is_rejected() {
    let reg = FakeRegistry::start().await;
    let img = image(vec![Layer::gz(&tar_of(&[E::File("a", b"x")]))], "");
    reg.serve_image("evil", "latest", &img);
    let mut r = Resp::ok(img.manifest.clone(), OCI_MANIFEST);
    r.headers.push((
        "Docker-Content-Digest".into(),
        format!("sha256:{}", "cd".repeat(32)),
    ));
    reg.route("/v2/evil/manifests/latest", r);
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/evil:latest", reg.host()), None, None)
        .await
        .expect_err("fail");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_clean_after_failure(&env, Some(&img.manifest_digest));
}

#[tokio::test]
async fn truncated_blob_is_rejected() {
    for no_length in [false, true] {
        let reg = FakeRegistry::start().await;
        let img = image(vec![Layer::gz(&tar_of(&[E::File("a", &[7u8; 5000])]))], "");
        reg.serve_image("evil", "latest", &img);
        let layer = &img.layer_digests[0];
        let full = &img.blobs[layer];
        let mut r = Resp::ok(full[..full.len() / 2].to_vec(), "application/octet-stream");
        r.no_length = no_length;
        reg.route(&format!("/v2/evil/blobs/{layer}"), r);
        let env = env_for(&reg.host()).await;
        let err = env
            .svc
            .pull(&format!("{}/evil:latest", reg.host()), None, None)
            .await
            .expect_err("fail");
        assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::DataLoss);
        assert_clean_after_failure(&env, Some(layer));
    }
}

#[tokio::test]
async fn oversized_blob_is_rejected() {
    let reg = FakeRegistry::start().await;
    let img = image(vec![Layer::gz(&tar_of(&[E::File("a", b"x")]))], "");
    reg.serve_image("evil", "latest", &img);
    let layer = &img.layer_digests[0];
    let mut big = img.blobs[layer].clone();
    big.extend_from_slice(&[0u8; 4096]);
    let mut r = Resp::ok(big, "application/octet-stream");
    r.no_length = true;
    reg.route(&format!("/v2/evil/blobs/{layer}"), r);
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/evil:latest", reg.host()), None, None)
        .await
        .expect_err("fail");
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
    assert_clean_after_failure(&env, Some(layer));
}

#[tokio::test]
async fn manifest_over_limit_is_rejected() {
    for no_length in [false, true] {
        let reg = FakeRegistry::start().await;
        let img = image(vec![Layer::gz(&tar_of(&[E::File("a", b"x")]))], "");
        reg.serve_image("evil", "latest", &img);
        let mut r = Resp::ok(img.manifest.clone(), OCI_MANIFEST);
        r.no_length = no_length;
        reg.route("/v2/evil/manifests/latest", r);
        let env = env_with(&reg.host(), |c| {
            c.limits = Limits {
                max_manifest_bytes: 128,
                max_index_bytes: 128,
                ..Limits::default()
            }
        })
        .await;
        let err = env
            .svc
            .pull(&format!("{}/evil:latest", reg.host()), None, None)
            .await
            .expect_err("fail");
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::DataLoss);
        assert_clean_after_failure(&env, Some(&img.manifest_digest));
        assert_eq!(
            entries(&env.root().join("blobs/sha256")),
            Vec::<String>::new()
        );
    }
}

#[tokio::test]
async fn config_over_limit_is_rejected() {
    let reg = FakeRegistry::start().await;
    let img = image_with_config(
        vec![Layer::gz(&tar_of(&[E::File("a", b"x")]))],
        "",
        &"p".repeat(4096),
    );
    reg.serve_image("evil", "latest", &img);
    let env = env_with(&reg.host(), |c| {
        c.limits = Limits {
            max_config_bytes: 1024,
            ..Limits::default()
        }
    })
    .await;
    let err = env
        .svc
        .pull(&format!("{}/evil:latest", reg.host()), None, None)
        .await
        .expect_err("fail");
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    assert_clean_after_failure(&env, Some(&img.config_digest));
    // the config was never even requested: the descriptor size is over the limit
    assert_eq!(
        reg.count(&format!("/v2/evil/blobs/{}", img.config_digest)),
        0
    );
}

#[tokio::test]
async fn config_lying_about_size_is_rejected() {
    // descriptor claims a small config; the registry streams a huge one
    let reg = FakeRegistry::start().await;
    let img = image(vec![Layer::gz(&tar_of(&[E::File("a", b"x")]))], "");
    reg.serve_image("evil", "latest", &img);
    let mut r = Resp::ok(vec![b' '; 8192], "application/octet-stream");
    r.no_length = true;
    reg.route(&format!("/v2/evil/blobs/{}", img.config_digest), r);
    let env = env_with(&reg.host(), |c| {
        c.limits = Limits {
            max_config_bytes: 1024,
            ..Limits::default()
        }
    })
    .await;
    let err = env
        .svc
        .pull(&format!("{}/evil:latest", reg.host()), None, None)
        .await
        .expect_err("fail");
    assert!(
        matches!(
            err,
            ImageError::TooLarge { .. } | ImageError::SizeMismatch { .. }
        ),
        "{err}"
    );
    assert_clean_after_failure(&env, Some(&img.config_digest));
}

#[tokio::test]
async fn unknown_layer_media_type_is_rejected() {
    let tar = tar_of(&[E::File("a", b"x")]);
    let mut l = Layer::gz(&tar);
    l.media_type = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into();
    let (env, reg, img, err) = pull_evil(vec![l]).await;
    assert!(
        matches!(err, ImageError::UnsupportedMediaType { .. }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_clean_after_failure(&env, Some(&img.layer_digests[0]));
    assert_eq!(
        reg.count("/v2/evil/blobs/"),
        0,
        "nothing should be downloaded"
    );
}

#[tokio::test]
async fn schema1_manifest_is_rejected() {
    let reg = FakeRegistry::start().await;
    let body =
        br#"{"schemaVersion":1,"name":"evil","tag":"latest","fsLayers":[],"history":[]}"#.to_vec();
    reg.route(
        "/v2/evil/manifests/latest",
        Resp::ok(
            body,
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
    );
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/evil:latest", reg.host()), None, None)
        .await
        .expect_err("fail");
    assert!(
        matches!(err, ImageError::UnsupportedMediaType { .. }),
        "{err}"
    );
    assert_clean_after_failure(&env, None);
}

#[tokio::test]
async fn diff_id_mismatch_is_rejected() {
    let canary = Canary::new();
    let tar = tar_of(&[E::File("a", b"x")]);
    let mut l = Layer::gz(&tar);
    l.diff_id = digest(b"something else");
    let (env, _r, _i, err) = pull_evil(vec![l]).await;
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::DataLoss);
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn index_without_amd64_is_not_found() {
    let reg = FakeRegistry::start().await;
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "1".repeat(64)), "size": 10,
                       "platform": {"architecture": "arm64", "os": "linux"}}]
    }))
    .unwrap();
    reg.route("/v2/evil/manifests/latest", Resp::ok(idx, OCI_INDEX));
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/evil:latest", reg.host()), None, None)
        .await
        .expect_err("fail");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("no linux/amd64 manifest"), "{err}");
}

#[tokio::test]
async fn pax_header_bomb_is_rejected() {
    // 64 MiB of PAX header: the tar crate would read it all into memory
    let canary = Canary::new();
    let bomb = extension_header_bomb(tar::EntryType::XHeader, 64 << 20);
    assert!(bomb.blob.len() < 1 << 20);
    let (env, _r, _i, err) = pull_evil(vec![bomb]).await;
    assert_hostile(&err);
    assert!(err.to_string().contains("extension header"), "{err}");
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}

#[tokio::test]
async fn gnu_long_name_bomb_is_rejected() {
    let canary = Canary::new();
    let bomb = extension_header_bomb(tar::EntryType::GNULongName, 64 << 20);
    assert!(bomb.blob.len() < 1 << 20);
    let (env, _r, _i, err) = pull_evil(vec![bomb]).await;
    assert_hostile(&err);
    assert!(err.to_string().contains("extension header"), "{err}");
    assert_clean_after_failure(&env, None);
    canary.assert_untouched();
}
