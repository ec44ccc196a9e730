//! Pull behaviour against an in-process registry (and Debian's real `docker-registry` when
//! installed): records, indexes, endpoints, auth, singleflight, cancellation, GC, fs usage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use unicri_image::{Credentials, ImageService, ImageServiceConfig, PullProgress};
use unicri_sandbox::{Classify, ErrorKind};

fn two_layer_image() -> TestImage {
    let l1 = tar_of(&[
        E::Dir("etc"),
        E::File("etc/os-release", b"ID=test\n"),
        E::File("bin/sh", b"#!"),
    ]);
    let l2 = tar_of(&[E::File("etc/.wh.os-release", b""), E::File("app", b"hello")]);
    image(vec![Layer::gz(&l1), Layer::plain(&l2)], "1000:1000")
}

struct Progress(AtomicU64);
impl PullProgress for Progress {
    fn layer(&self, _digest: &str, _total: u64, done: u64) {
        self.0.fetch_max(done, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn pull_by_tag_builds_record_and_snapshots() {
    let reg = FakeRegistry::start().await;
    let img = two_layer_image();
    reg.serve_image("team/app", "v1", &img);
    let env = env_for(&reg.host()).await;
    let progress = Arc::new(Progress(AtomicU64::new(0)));
    let rec = env
        .svc
        .pull(
            &format!("{}/team/app:v1", reg.host()),
            None,
            Some(progress.clone() as Arc<dyn PullProgress>),
        )
        .await
        .unwrap();
    assert!(progress.0.load(Ordering::SeqCst) > 0);
    assert_eq!(rec.id, img.config_digest);
    assert_eq!(rec.config_digest, img.config_digest);
    assert_eq!(
        rec.repo_tag.as_deref(),
        Some(format!("{}/team/app:v1", reg.host()).as_str())
    );
    assert_eq!(
        rec.repo_digest,
        format!("{}/team/app@{}", reg.host(), img.manifest_digest)
    );
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert_eq!(rec.user, "1000:1000");
    assert_eq!(rec.config_json.as_bytes(), &img.config[..]);
    let layer_sum: u64 = img
        .layer_digests
        .iter()
        .map(|d| img.blobs[d].len() as u64)
        .sum();
    assert_eq!(rec.size, layer_sum + img.config.len() as u64);
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(rec.layers[0].chain_id, rec.layers[0].diff_id);
    assert_eq!(
        rec.layers[1].chain_id,
        digest(format!("{} {}", rec.layers[0].diff_id, rec.layers[1].diff_id).as_bytes())
    );
    assert_eq!(rec.layers[1].media_type, LAYER_TAR);
    let dirs = env.svc.layer_dirs(&rec);
    assert_eq!(
        std::fs::read(dirs[0].join("etc/os-release")).unwrap(),
        b"ID=test\n"
    );
    assert!(
        std::fs::symlink_metadata(dirs[1].join("etc/os-release"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(std::fs::read(dirs[1].join("app")).unwrap(), b"hello");
    for d in img.blobs.keys().chain([&img.manifest_digest]) {
        assert!(
            env.root().join("blobs/sha256").join(hex_of(d)).is_file(),
            "{d}"
        );
    }
    assert_eq!(entries(&env.root().join("ingest")), Vec::<String>::new());

    // a second pull downloads nothing
    let before = reg.count("/v2/team/app/blobs/");
    let again = env
        .svc
        .pull(&format!("{}/team/app:v1", reg.host()), None, None)
        .await
        .unwrap();
    assert_eq!(again, rec);
    assert_eq!(reg.count("/v2/team/app/blobs/"), before);
}

#[tokio::test]
async fn pull_via_index_and_by_digest() {
    let reg = FakeRegistry::start().await;
    let img = two_layer_image();
    reg.serve_image("multi", "unused", &img);
    let idx = index_for(&img);
    let idx_digest = digest(&idx);
    reg.route(
        "/v2/multi/manifests/latest",
        Resp::ok(idx.clone(), OCI_INDEX),
    );
    reg.route(
        &format!("/v2/multi/manifests/{idx_digest}"),
        Resp::ok(idx, OCI_INDEX),
    );
    let env = env_for(&reg.host()).await;
    let rec = env
        .svc
        .pull(&format!("{}/multi", reg.host()), None, None)
        .await
        .unwrap();
    assert_eq!(
        rec.repo_tag.as_deref(),
        Some(format!("{}/multi:latest", reg.host()).as_str())
    );
    assert_eq!(
        rec.repo_digest,
        format!("{}/multi@{idx_digest}", reg.host())
    );
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert!(
        env.root()
            .join("blobs/sha256")
            .join(hex_of(&idx_digest))
            .is_file()
    );

    let by_digest = env
        .svc
        .pull(&format!("{}/multi@{idx_digest}", reg.host()), None, None)
        .await
        .unwrap();
    assert_eq!(by_digest.repo_tag, None);
    assert_eq!(by_digest.repo_digest, rec.repo_digest);
    assert_eq!(by_digest.id, rec.id);

    let by_manifest = env
        .svc
        .pull(
            &format!("{}/multi@{}", reg.host(), img.manifest_digest),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        by_manifest.repo_digest,
        format!("{}/multi@{}", reg.host(), img.manifest_digest)
    );
}

#[tokio::test]
async fn concurrent_pulls_download_each_blob_once() {
    let reg = FakeRegistry::start().await;
    let img = two_layer_image();
    reg.serve_image("slow", "latest", &img);
    for (d, b) in &img.blobs {
        let mut r = Resp::ok(b.clone(), "application/octet-stream");
        r.delay_ms = 300;
        reg.route(&format!("/v2/slow/blobs/{d}"), r);
    }
    let env = env_for(&reg.host()).await;
    let svc = Arc::new(env.svc);
    let name = format!("{}/slow:latest", reg.host());
    let mut joins = Vec::new();
    for _ in 0..4 {
        let (svc, name) = (Arc::clone(&svc), name.clone());
        joins.push(tokio::spawn(
            async move { svc.pull(&name, None, None).await },
        ));
    }
    let mut recs = Vec::new();
    for j in joins {
        recs.push(j.await.unwrap().unwrap());
    }
    assert!(recs.windows(2).all(|w| w[0] == w[1]));
    for d in img.blobs.keys() {
        assert_eq!(
            reg.count(&format!("/v2/slow/blobs/{d}")),
            1,
            "blob {d} downloaded more than once"
        );
    }
}

#[tokio::test]
async fn shared_download_failing_in_another_repo_does_not_fail_this_pull() {
    // Two repositories share a layer; the first pull's download of it fails (its registry
    // answers 500). A concurrent pull from a repository that serves the layer must not inherit
    // that failure just because it joined the same in-flight download.
    let reg = FakeRegistry::start().await;
    let layer = tar_of(&[E::File("shared", b"base layer")]);
    let broken = image_with_config(vec![Layer::gz(&layer)], "", "broken");
    let good = image_with_config(vec![Layer::gz(&layer)], "", "good");
    assert_eq!(broken.layer_digests, good.layer_digests);
    reg.serve_image("broken", "latest", &broken);
    reg.serve_image("good", "latest", &good);
    let shared = &broken.layer_digests[0];
    reg.route(
        &format!("/v2/broken/blobs/{shared}"),
        Resp {
            status: 500,
            headers: vec![],
            body: b"{}".to_vec(),
            no_length: false,
            delay_ms: 400,
        },
    );
    let env = env_for(&reg.host()).await;
    let svc = Arc::new(env.svc);
    let (s1, n1) = (Arc::clone(&svc), format!("{}/broken:latest", reg.host()));
    let first = tokio::spawn(async move { s1.pull(&n1, None, None).await });
    // let the first pull start its (slow, failing) layer download
    for _ in 0..100 {
        if reg.count(&format!("/v2/broken/blobs/{shared}")) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rec = svc
        .pull(&format!("{}/good:latest", reg.host()), None, None)
        .await
        .expect("the good repository serves every blob");
    assert_eq!(rec.id, good.config_digest);
    let e = first.await.unwrap().expect_err("broken layer");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn layer_stored_by_an_import_during_the_download_does_not_fail_the_pull() {
    // While a pull waits for a layer, an import stores the same blob (and fails before
    // unpacking it). The pull's download then finds the blob already stored; that must not
    // turn into a diff id mismatch of its live unpack.
    let reg = FakeRegistry::start().await;
    let layer = tar_of(&[E::File("shared", b"base layer")]);
    let img = image(vec![Layer::gz(&layer)], "");
    reg.serve_image("slow", "latest", &img);
    let shared = img.layer_digests[0].clone();
    let mut r = Resp::ok(img.blobs[&shared].clone(), "application/octet-stream");
    r.delay_ms = 500;
    reg.route(&format!("/v2/slow/blobs/{shared}"), r);

    // A layout whose image has the shared layer plus one whose blob is missing.
    let missing = tar_of(&[E::File("other", b"x")]);
    let other = image(vec![Layer::gz(&layer), Layer::gz(&missing)], "");
    let layout = tempfile::tempdir().unwrap();
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for (d, b) in &other.blobs {
        if d != &other.layer_digests[1] {
            std::fs::write(blobs.join(hex_of(d)), b).unwrap();
        }
    }
    std::fs::write(blobs.join(hex_of(&other.manifest_digest)), &other.manifest).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": other.manifest_digest, "size": other.manifest.len()}]});
    std::fs::write(
        layout.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let env = env_for(&reg.host()).await;
    let svc = Arc::new(env.svc);
    let (s1, name) = (Arc::clone(&svc), format!("{}/slow:latest", reg.host()));
    let pull = tokio::spawn(async move { s1.pull(&name, None, None).await });
    for _ in 0..200 {
        if reg.count(&format!("/v2/slow/blobs/{shared}")) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    svc.import(layout.path())
        .await
        .expect_err("the layout lacks a layer blob");
    assert!(
        env.dir
            .path()
            .join("images/blobs/sha256")
            .join(hex_of(&shared))
            .is_file(),
        "the import stored the shared layer"
    );
    let rec = pull.await.unwrap().expect("pull");
    let dirs = svc.layer_dirs(&rec);
    assert_eq!(
        std::fs::read(dirs[0].join("shared")).unwrap(),
        b"base layer"
    );
    assert_eq!(
        entries(&env.dir.path().join("images/ingest")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn dropped_pull_completes_in_background_and_leaves_no_partial_state() {
    let reg = FakeRegistry::start().await;
    let img = two_layer_image();
    reg.serve_image("slow", "latest", &img);
    for (d, b) in &img.blobs {
        let mut r = Resp::ok(b.clone(), "application/octet-stream");
        r.delay_ms = 300;
        reg.route(&format!("/v2/slow/blobs/{d}"), r);
    }
    let env = env_for(&reg.host()).await;
    let name = format!("{}/slow:latest", reg.host());
    let res =
        tokio::time::timeout(Duration::from_millis(100), env.svc.pull(&name, None, None)).await;
    assert!(res.is_err(), "pull should still be running");
    // Whatever exists in blobs/ or snapshots/ at any moment is complete.
    for _ in 0..40 {
        for e in entries(&env.root().join("blobs/sha256")) {
            let d = format!("sha256:{e}");
            if let Some(b) = img.blobs.get(&d) {
                assert_eq!(
                    std::fs::read(env.root().join("blobs/sha256").join(&e)).unwrap(),
                    *b
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // the background pull finished: everything is there, ingest is empty
    for d in img.blobs.keys() {
        assert!(env.root().join("blobs/sha256").join(hex_of(d)).is_file());
    }
    assert_eq!(entries(&env.root().join("snapshots")).len(), 2);
    assert_eq!(entries(&env.root().join("ingest")), Vec::<String>::new());
    let n = reg.count("/v2/slow/blobs/");
    env.svc.pull(&name, None, None).await.unwrap();
    assert_eq!(reg.count("/v2/slow/blobs/"), n);
}

#[tokio::test]
async fn bearer_auth_with_request_credentials() {
    let reg = FakeRegistry::start().await;
    let img = two_layer_image();
    reg.serve_image("private", "latest", &img);
    reg.state.lock().unwrap().auth = Some(Auth::Bearer {
        user: "alice".into(),
        pass: "s3cret".into(),
        token: "tok-123".into(),
    });
    let env = env_for(&reg.host()).await;
    let name = format!("{}/private:latest", reg.host());

    let err = env.svc.pull(&name, None, None).await.expect_err("no creds");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    let bad = Credentials {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = env
        .svc
        .pull(&name, Some(bad), None)
        .await
        .expect_err("bad creds");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(!err.to_string().contains("wrong"));

    let good = Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let rec = env.svc.pull(&name, Some(good), None).await.unwrap();
    assert_eq!(rec.id, img.config_digest);
    // the token was cached: blob requests went straight through with it
    let log = reg.log();
    assert!(
        log.iter()
            .any(|(_, p, a)| p.starts_with("/v2/private/blobs/")
                && a.as_deref() == Some("Bearer tok-123"))
    );
    assert!(
        log.iter()
            .filter(|(_, p, _)| p.starts_with("/token"))
            .count()
            <= 3
    );
}

#[tokio::test]
async fn registry_token_and_basic_auth_and_credentials_file() {
    // registry_token is used as a bearer directly
    let reg = FakeRegistry::start().await;
    let img = two_layer_image();
    reg.serve_image("p", "latest", &img);
    reg.state.lock().unwrap().auth = Some(Auth::Bearer {
        user: "u".into(),
        pass: "p".into(),
        token: "direct".into(),
    });
    let env = env_for(&reg.host()).await;
    let creds = Credentials {
        registry_token: "direct".into(),
        ..Default::default()
    };
    env.svc
        .pull(&format!("{}/p:latest", reg.host()), Some(creds), None)
        .await
        .unwrap();
    assert_eq!(reg.count("/token"), 0);

    // Basic challenge, credentials from the docker config file (auth field)
    let reg = FakeRegistry::start().await;
    reg.serve_image("p", "latest", &img);
    reg.state.lock().unwrap().auth = Some(Auth::Basic {
        user: "bob".into(),
        pass: "pw".into(),
    });
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
    let credfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        credfile.path(),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let path = credfile.path().to_path_buf();
    let env = env_with(&reg.host(), move |c| c.credentials_file = Some(path)).await;
    env.svc
        .pull(&format!("{}/p:latest", reg.host()), None, None)
        .await
        .unwrap();
    assert_eq!(env.svc.hosts_summary()["credential_hosts"][0], reg.host());
    assert!(!env.svc.hosts_summary().to_string().contains(&auth));
}

#[tokio::test]
async fn mirrors_fall_through_and_carry_ns() {
    let empty_mirror = FakeRegistry::start().await; // 404 for everything
    let mirror = FakeRegistry::start().await;
    let img = two_layer_image();
    mirror.serve_image("library/busybox", "latest", &img);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("certs.d");
    std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
    std::fs::write(
        hosts.join("docker.io/hosts.toml"),
        format!(
            "server = \"https://127.0.0.1:1\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n[host.\"http://127.0.0.1:1\"]\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            empty_mirror.host(),
            mirror.host()
        ),
    )
    .unwrap();
    let mut cfg = ImageServiceConfig::new(dir.path().join("images"));
    cfg.hosts_dir = Some(hosts);
    let svc = ImageService::new(cfg).await.unwrap();
    let rec = svc.pull("busybox", None, None).await.unwrap();
    assert_eq!(
        rec.repo_tag.as_deref(),
        Some("docker.io/library/busybox:latest")
    );
    assert_eq!(
        rec.repo_digest,
        format!("docker.io/library/busybox@{}", img.manifest_digest)
    );
    assert!(empty_mirror.count("/v2/library/busybox/manifests/latest?ns=docker.io") == 1);
    let log = mirror.log();
    assert!(!log.is_empty());
    assert!(
        log.iter().all(|(_, p, _)| p.ends_with("?ns=docker.io")),
        "{log:?}"
    );
    assert!(
        svc.hosts_summary()["hosts"]["docker.io"]["hosts"]
            .as_array()
            .unwrap()
            .len()
            == 3
    );
}

#[tokio::test]
async fn localhost_without_config_falls_back_to_http() {
    let reg = FakeRegistry::start().await;
    let img = two_layer_image();
    reg.serve_image("x", "latest", &img);
    let dir = tempfile::tempdir().unwrap();
    let svc = ImageService::new(ImageServiceConfig::new(dir.path().join("images")))
        .await
        .unwrap();
    let rec = svc
        .pull(&format!("{}/x", reg.host()), None, None)
        .await
        .unwrap();
    assert_eq!(rec.id, img.config_digest);
    // a non-local registry never falls back: unreachable → Unavailable
    let err = svc
        .pull("unreachable.invalid/x", None, None)
        .await
        .expect_err("unreachable");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn missing_image_is_not_found_and_bad_reference_is_invalid() {
    let reg = FakeRegistry::start().await;
    let env = env_for(&reg.host()).await;
    let err = env
        .svc
        .pull(&format!("{}/nope:latest", reg.host()), None, None)
        .await
        .expect_err("missing");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = env
        .svc
        .pull("Bad/Reference", None, None)
        .await
        .expect_err("bad");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn bad_config_files_fail_new() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("hosts/x.io")).unwrap();
    std::fs::write(dir.path().join("hosts/x.io/hosts.toml"), "server = [").unwrap();
    let mut cfg = ImageServiceConfig::new(dir.path().join("images"));
    cfg.hosts_dir = Some(dir.path().join("hosts"));
    let err = ImageService::new(cfg).await.expect_err("bad hosts.toml");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("x.io/hosts.toml"), "{err}");

    std::fs::write(dir.path().join("creds.json"), "{").unwrap();
    let mut cfg = ImageServiceConfig::new(dir.path().join("images"));
    cfg.credentials_file = Some(dir.path().join("creds.json"));
    let err = ImageService::new(cfg).await.expect_err("bad creds");
    assert!(err.to_string().contains("creds.json"), "{err}");
}

#[tokio::test]
async fn new_clears_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    std::fs::create_dir_all(root.join("ingest/unpack-old/fs")).unwrap();
    std::fs::write(root.join("ingest/blob-old"), b"x").unwrap();
    let _svc = ImageService::new(ImageServiceConfig::new(&root))
        .await
        .unwrap();
    assert_eq!(entries(&root.join("ingest")), Vec::<String>::new());
    assert!(root.join("blobs/sha256").is_dir() && root.join("snapshots").is_dir());
}

#[tokio::test]
async fn gc_and_fs_usage() {
    let reg = FakeRegistry::start().await;
    let a = two_layer_image();
    let b = image(vec![Layer::gz(&tar_of(&[E::File("b", &[1u8; 10000])]))], "");
    reg.serve_image("a", "latest", &a);
    reg.serve_image("b", "latest", &b);
    let env = env_for(&reg.host()).await;
    let ra = env
        .svc
        .pull(&format!("{}/a", reg.host()), None, None)
        .await
        .unwrap();
    let rb = env
        .svc
        .pull(&format!("{}/b", reg.host()), None, None)
        .await
        .unwrap();
    let u1 = env.svc.fs_usage().await.unwrap();
    assert_eq!(u1.mountpoint, env.root());
    assert!(u1.used_bytes > 10000 && u1.inodes_used > 10, "{u1:?}");

    env.svc
        .remove_unreferenced(&[ra.clone(), rb.clone()])
        .await
        .unwrap();
    assert_eq!(entries(&env.root().join("snapshots")).len(), 3);

    env.svc
        .remove_unreferenced(std::slice::from_ref(&ra))
        .await
        .unwrap();
    let blobs = entries(&env.root().join("blobs/sha256"));
    let mut want: Vec<String> = a
        .blobs
        .keys()
        .chain([&a.manifest_digest])
        .map(|d| hex_of(d).to_string())
        .collect();
    want.sort();
    assert_eq!(blobs, want);
    assert_eq!(entries(&env.root().join("snapshots")).len(), 2);
    for d in env.svc.layer_dirs(&ra) {
        assert!(d.is_dir());
    }
    let u2 = env.svc.fs_usage().await.unwrap();
    assert!(u2.used_bytes < u1.used_bytes && u2.inodes_used < u1.inodes_used);

    env.svc.remove_unreferenced(&[]).await.unwrap();
    assert_eq!(
        entries(&env.root().join("blobs/sha256")),
        Vec::<String>::new()
    );
    assert_eq!(entries(&env.root().join("snapshots")), Vec::<String>::new());

    // hard links count once
    let f = env.root().join("f");
    std::fs::write(&f, vec![0u8; 65536]).unwrap();
    let base = env.svc.fs_usage().await.unwrap();
    std::fs::hard_link(&f, env.root().join("g")).unwrap();
    let linked = env.svc.fs_usage().await.unwrap();
    assert_eq!(linked.used_bytes, base.used_bytes);
    assert_eq!(linked.inodes_used, base.inodes_used);
    assert_eq!(std::fs::metadata(&f).unwrap().nlink(), 2);
}

// ---------------------------------------------------------------------------------------------
// Debian's real registry.

struct RealRegistry {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    host: String,
}

impl Drop for RealRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn real_registry() -> Option<RealRegistry> {
    let bin = std::path::Path::new("/usr/bin/docker-registry");
    if !bin.exists() {
        eprintln!(
            "!!!! SKIPPING real-registry test: /usr/bin/docker-registry is not installed (apt-get install docker-registry)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let host = format!("127.0.0.1:{port}");
    let reg = RealRegistry {
        child,
        _dir: dir,
        host,
    };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("http://{}/v2/", reg.host)).send().await
            && r.status().is_success()
        {
            return Some(reg);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("docker-registry did not start");
}

async fn push(host: &str, name: &str, tag: &str, img: &TestImage) {
    let c = reqwest::Client::new();
    for (d, b) in &img.blobs {
        let r = c
            .post(format!("http://{host}/v2/{name}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload");
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{host}{loc}")
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{loc}{sep}digest={d}"))
            .header("content-type", "application/octet-stream")
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "finish upload {d}");
    }
    let r = c
        .put(format!("http://{host}/v2/{name}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        201,
        "put manifest: {:?}",
        r.text().await
    );
}

#[tokio::test]
async fn real_registry_pull() {
    let Some(reg) = real_registry().await else {
        return;
    };
    let img = two_layer_image();
    push(&reg.host, "e2e/app", "v1", &img).await;
    // no hosts config: localhost rule (https fails, http works)
    let dir = tempfile::tempdir().unwrap();
    let svc = ImageService::new(ImageServiceConfig::new(dir.path().join("images")))
        .await
        .unwrap();
    let rec = svc
        .pull(&format!("{}/e2e/app:v1", reg.host), None, None)
        .await
        .unwrap();
    assert_eq!(rec.id, img.config_digest);
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert_eq!(
        rec.repo_digest,
        format!("{}/e2e/app@{}", reg.host, img.manifest_digest)
    );
    let dirs = svc.layer_dirs(&rec);
    assert_eq!(std::fs::read(dirs[1].join("app")).unwrap(), b"hello");
    let err = svc
        .pull(&format!("{}/e2e/app:missing", reg.host), None, None)
        .await
        .expect_err("missing tag");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn real_registry_pull_wasm_artifact() {
    let Some(reg) = real_registry().await else {
        return;
    };
    let module = b"\0asm\x01\0\0\0 real registry module";
    let layers = [WasmLayer {
        module,
        media_type: WASM_LAYER,
        title: Some("real.wasm"),
    }];
    let img = wasm_artifact(wasm_config("wasip2", &[digest(module)]), &layers);
    push(&reg.host, "e2e/wasm", "v1", &img).await;
    let dir = tempfile::tempdir().unwrap();
    let svc = ImageService::new(ImageServiceConfig::new(dir.path().join("images")))
        .await
        .unwrap();
    let rec = svc
        .pull(&format!("{}/e2e/wasm:v1", reg.host), None, None)
        .await
        .unwrap();
    assert_eq!(rec.id, img.config_digest);
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert_eq!(rec.layers[0].diff_id, digest(module));
    let dirs = svc.layer_dirs(&rec);
    assert_eq!(entries(&dirs[0]), ["real.wasm"]);
    assert_eq!(std::fs::read(dirs[0].join("real.wasm")).unwrap(), module);
    let cfg: serde_json::Value = serde_json::from_str(&rec.config_json).unwrap();
    assert_eq!(
        cfg["config"]["Entrypoint"],
        serde_json::json!(["/real.wasm"])
    );
    assert_eq!(cfg["os"], "wasip2");
}
