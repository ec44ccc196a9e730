//! WebAssembly OCI artifacts: pulled (live unpack) and imported (unpack from the store) into
//! one-file snapshots, with a synthesized image config in the record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt as _;

use common::*;
use unicri_image::{ImageError, ImageRecord, ImageService, ImageServiceConfig};
use unicri_sandbox::{Classify, ErrorKind};

const MODULE: &[u8] = b"\0asm\x01\0\0\0 a tiny module";
const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0 a tiny component";
const COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";

fn hello() -> TestImage {
    let layers = [WasmLayer {
        module: MODULE,
        media_type: WASM_LAYER,
        title: Some("hello.wasm"),
    }];
    wasm_artifact(wasm_config("wasip1", &[digest(MODULE)]), &layers)
}

fn config_of(rec: &ImageRecord) -> serde_json::Value {
    serde_json::from_str(&rec.config_json).unwrap()
}

/// The snapshot `fs` dir of layer `i` holds exactly `name` → `data`, mode 0644.
fn assert_module(svc: &ImageService, rec: &ImageRecord, i: usize, name: &str, data: &[u8]) {
    let dir = &svc.layer_dirs(rec)[i];
    assert_eq!(entries(dir), [name], "{}", dir.display());
    let f = dir.join(name);
    assert_eq!(std::fs::read(&f).unwrap(), data);
    let m = std::fs::symlink_metadata(&f).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(m.mode() & 0o7777, 0o644);
}

#[tokio::test]
async fn pull_wasm_artifact_with_wasm_config() {
    let reg = FakeRegistry::start().await;
    let img = hello();
    reg.serve_image("wasm/hello", "v1", &img);
    let env = env_for(&reg.host()).await;
    let name = format!("{}/wasm/hello:v1", reg.host());
    let rec = env.svc.pull(&name, None, None).await.unwrap();

    // the id is the real config's digest; the real config stays in the store
    assert_eq!(rec.id, img.config_digest);
    assert_eq!(rec.config_digest, img.config_digest);
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert_eq!(rec.repo_tag.as_deref(), Some(name.as_str()));
    assert_eq!(rec.user, "");
    assert_eq!(rec.size, (MODULE.len() + img.config.len()) as u64);
    for d in img.blobs.keys().chain([&img.manifest_digest]) {
        assert!(
            env.root().join("blobs/sha256").join(hex_of(d)).is_file(),
            "{d}"
        );
    }
    // diff id = blob digest, chain id over it
    assert_eq!(rec.layers.len(), 1);
    let l = &rec.layers[0];
    assert_eq!(l.digest, digest(MODULE));
    assert_eq!(l.diff_id, l.digest);
    assert_eq!(l.chain_id, l.digest);
    assert_eq!(l.media_type, WASM_LAYER);
    assert_module(&env.svc, &rec, 0, "hello.wasm", MODULE);
    // the synthesized config
    assert_eq!(
        config_of(&rec),
        serde_json::json!({
            "architecture": "wasm", "os": "wasip1",
            "created": "2024-05-06T07:08:09Z", "author": "unicri-tests",
            "config": {"Entrypoint": ["/hello.wasm"],
                       "Labels": {"org.unicri.wasm.artifact": WASM_LAYER}},
            "rootfs": {"type": "layers", "diff_ids": [digest(MODULE)]},
        })
    );
    assert_eq!(entries(&env.root().join("ingest")), Vec::<String>::new());

    // a second pull downloads nothing and gives the same record
    let before = reg.count("/v2/wasm/hello/blobs/");
    assert_eq!(env.svc.pull(&name, None, None).await.unwrap(), rec);
    assert_eq!(reg.count("/v2/wasm/hello/blobs/"), before);

    // GC keeps what the record names, and removes it once unreferenced
    env.svc
        .remove_unreferenced(std::slice::from_ref(&rec))
        .await
        .unwrap();
    assert_module(&env.svc, &rec, 0, "hello.wasm", MODULE);
    assert!(
        env.root()
            .join("blobs/sha256")
            .join(hex_of(&img.config_digest))
            .is_file()
    );
    env.svc.remove_unreferenced(&[]).await.unwrap();
    assert_eq!(entries(&env.root().join("snapshots")), Vec::<String>::new());
    assert_eq!(
        entries(&env.root().join("blobs/sha256")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn empty_config_unsafe_titles_and_several_layers() {
    let canary = Canary::new();
    let escape = format!("{}/pwned.wasm", canary.path().display());
    let layers = [
        WasmLayer {
            module: COMPONENT,
            media_type: COMPONENT_LAYER,
            title: Some("../../../../../../../../../../tmp/evil.wasm"),
        },
        WasmLayer {
            module: MODULE,
            media_type: "application/vnd.w3c.wasm.module.v1+wasm",
            title: Some(&escape),
        },
    ];
    let img = wasm_artifact((OCI_EMPTY, b"{}".to_vec()), &layers);
    let reg = FakeRegistry::start().await;
    reg.serve_image("wasm/two", "latest", &img);
    let env = env_for(&reg.host()).await;
    let rec = env
        .svc
        .pull(&format!("{}/wasm/two", reg.host()), None, None)
        .await
        .unwrap();
    assert_eq!(rec.id, digest(b"{}"));
    // unsafe titles fall back to module.wasm
    assert_module(&env.svc, &rec, 0, "module.wasm", COMPONENT);
    assert_module(&env.svc, &rec, 1, "module.wasm", MODULE);
    assert_eq!(
        rec.layers[1].chain_id,
        digest(format!("{} {}", digest(COMPONENT), digest(MODULE)).as_bytes())
    );
    // the entrypoint is the first layer's module; os defaults to wasip1
    let cfg = config_of(&rec);
    assert_eq!(
        cfg,
        serde_json::json!({
            "architecture": "wasm", "os": "wasip1",
            "config": {"Entrypoint": ["/module.wasm"],
                       "Labels": {"org.unicri.wasm.artifact": COMPONENT_LAYER}},
            "rootfs": {"type": "layers", "diff_ids": [digest(COMPONENT), digest(MODULE)]},
        })
    );
    canary.assert_untouched();
}

#[tokio::test]
async fn image_config_with_wasm_layers_keeps_its_runtime_config() {
    // runwasi's builder: an OCI image config (empty diff ids) over component layers
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm", "os": "wasip2",
        "config": {"Entrypoint": ["_start"], "Env": ["GREETING=hi"], "Cmd": ["--loud"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let layers = [WasmLayer {
        module: COMPONENT,
        media_type: COMPONENT_LAYER,
        title: Some("app.wasm"),
    }];
    let img = wasm_artifact((OCI_CONFIG, config), &layers);
    let reg = FakeRegistry::start().await;
    reg.serve_image("wasm/runwasi", "latest", &img);
    let env = env_for(&reg.host()).await;
    let rec = env
        .svc
        .pull(&format!("{}/wasm/runwasi", reg.host()), None, None)
        .await
        .unwrap();
    let cfg = config_of(&rec);
    assert_eq!(cfg["os"], "wasip2");
    assert_eq!(
        cfg["config"],
        serde_json::json!({"Entrypoint": ["/app.wasm"], "Env": ["GREETING=hi"],
            "Cmd": ["--loud"], "Labels": {"org.unicri.wasm.artifact": COMPONENT_LAYER}})
    );
    assert_module(&env.svc, &rec, 0, "app.wasm", COMPONENT);
}

#[tokio::test]
async fn index_without_amd64_falls_back_to_wasm() {
    let reg = FakeRegistry::start().await;
    let img = hello();
    reg.serve_image("wasm/multi", "unused", &img);
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "1".repeat(64)), "size": 10,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": img.manifest.len(),
             "platform": {"architecture": "wasm", "os": "wasip1"}},
        ]
    }))
    .unwrap();
    let idx_digest = digest(&idx);
    reg.route("/v2/wasm/multi/manifests/latest", Resp::ok(idx, OCI_INDEX));
    let env = env_for(&reg.host()).await;
    let rec = env
        .svc
        .pull(&format!("{}/wasm/multi", reg.host()), None, None)
        .await
        .unwrap();
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert_eq!(
        rec.repo_digest,
        format!("{}/wasm/multi@{idx_digest}", reg.host())
    );
    assert_module(&env.svc, &rec, 0, "hello.wasm", MODULE);
}

#[tokio::test]
async fn tampered_wasm_layer_is_rejected_and_leaves_nothing() {
    let reg = FakeRegistry::start().await;
    let img = hello();
    reg.serve_image("wasm/evil", "latest", &img);
    let mut evil = MODULE.to_vec();
    evil[8] ^= 1;
    reg.route(
        &format!("/v2/wasm/evil/blobs/{}", digest(MODULE)),
        Resp::ok(evil, "application/octet-stream"),
    );
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/wasm/evil", reg.host()), None, None)
        .await
        .expect_err("tampered");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::DataLoss);
    assert_clean_after_failure(&env, Some(&digest(MODULE)));

    // a short body is a size mismatch
    reg.route(
        &format!("/v2/wasm/evil/blobs/{}", digest(MODULE)),
        Resp::ok(MODULE[..4].to_vec(), "application/octet-stream"),
    );
    let err = env
        .svc
        .pull(&format!("{}/wasm/evil", reg.host()), None, None)
        .await
        .expect_err("short");
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
    assert_clean_after_failure(&env, Some(&digest(MODULE)));
}

#[tokio::test]
async fn mixed_tar_and_wasm_layers_are_refused_before_download() {
    let reg = FakeRegistry::start().await;
    let tar = tar_of(&[E::File("a", b"x")]);
    let mut img = image(vec![Layer::gz(&tar)], "");
    // re-point the manifest at one tar and one wasm layer
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    m["layers"].as_array_mut().unwrap().push(serde_json::json!(
        {"mediaType": WASM_LAYER, "digest": digest(MODULE), "size": MODULE.len()}
    ));
    img.manifest = serde_json::to_vec(&m).unwrap();
    img.manifest_digest = digest(&img.manifest);
    img.blobs.insert(digest(MODULE), MODULE.to_vec());
    reg.serve_image("wasm/mixed", "latest", &img);
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/wasm/mixed", reg.host()), None, None)
        .await
        .expect_err("mixed");
    assert!(
        matches!(err, ImageError::UnsupportedMediaType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("cannot be mixed"), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(reg.count("/v2/wasm/mixed/blobs/"), 0);
    assert_clean_after_failure(&env, None);
}

#[tokio::test]
async fn a_shared_snapshot_keeps_its_first_name() {
    // the same module under another title: the snapshot (keyed by chain id) is shared, and the
    // second image's entrypoint names the file the snapshot really holds
    let reg = FakeRegistry::start().await;
    let first = hello();
    let layers = [WasmLayer {
        module: MODULE,
        media_type: WASM_LAYER,
        title: Some("renamed.wasm"),
    }];
    let second = wasm_artifact(wasm_config("wasip2", &[digest(MODULE)]), &layers);
    reg.serve_image("wasm/a", "latest", &first);
    reg.serve_image("wasm/b", "latest", &second);
    let env = env_for(&reg.host()).await;
    let a = env
        .svc
        .pull(&format!("{}/wasm/a", reg.host()), None, None)
        .await
        .unwrap();
    let b = env
        .svc
        .pull(&format!("{}/wasm/b", reg.host()), None, None)
        .await
        .unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.layers[0].chain_id, b.layers[0].chain_id);
    assert_module(&env.svc, &b, 0, "hello.wasm", MODULE);
    assert_eq!(
        config_of(&b)["config"]["Entrypoint"],
        serde_json::json!(["/hello.wasm"])
    );
    assert_eq!(config_of(&b)["os"], "wasip2");
}

#[tokio::test]
async fn import_oci_layout_with_wasm_artifact() {
    let img = hello();
    let layout = tempfile::tempdir().unwrap();
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        layout.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    for (d, b) in img
        .blobs
        .iter()
        .chain([(&img.manifest_digest, &img.manifest)])
    {
        std::fs::write(blobs.join(hex_of(d)), b).unwrap();
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": img.manifest.len(),
         "annotations": {"io.containerd.image.name": "example.com/wasm/hello:v2"}}]});
    std::fs::write(
        layout.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let svc = ImageService::new(ImageServiceConfig::new(dir.path().join("images")))
        .await
        .unwrap();
    let recs = svc.import(layout.path()).await.unwrap();
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.id, img.config_digest);
    assert_eq!(rec.repo_tag.as_deref(), Some("example.com/wasm/hello:v2"));
    assert_eq!(
        config_of(rec)["config"]["Entrypoint"],
        serde_json::json!(["/hello.wasm"])
    );
    assert_module(&svc, rec, 0, "hello.wasm", MODULE);
    assert_eq!(entries(&svc.root().join("ingest")), Vec::<String>::new());
}
