//! Test helpers: image builders (tar layers, configs, manifests, indexes), a tiny in-process
//! registry that can lie (bad digests, short bodies, auth challenges), and store checks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use unicri_image::{ImageService, ImageServiceConfig};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub fn hex_of(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

/// A tar header with `path` written raw (so `..` and absolute paths survive).
pub fn raw_header(path: &str, et: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name = [0; 100];
        g.name[..path.len()].copy_from_slice(path.as_bytes());
    }
    h.set_entry_type(et);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

pub fn set_raw_link(h: &mut tar::Header, target: &str) {
    let g = h.as_gnu_mut().unwrap();
    g.linkname = [0; 100];
    g.linkname[..target.len()].copy_from_slice(target.as_bytes());
    h.set_cksum();
}

/// Builds a tar from (path, type, data, link target).
pub enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Block(&'a str),
}

pub fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(p, d) => b
                .append(
                    &raw_header(p, tar::EntryType::Regular, d.len() as u64, 0o644),
                    *d,
                )
                .unwrap(),
            E::Dir(p) => b
                .append(
                    &raw_header(p, tar::EntryType::Directory, 0, 0o755),
                    std::io::empty(),
                )
                .unwrap(),
            E::Symlink(p, t) => {
                let mut h = raw_header(p, tar::EntryType::Symlink, 0, 0o777);
                set_raw_link(&mut h, t);
                b.append(&h, std::io::empty()).unwrap()
            }
            E::Hardlink(p, t) => {
                let mut h = raw_header(p, tar::EntryType::Link, 0, 0o644);
                set_raw_link(&mut h, t);
                b.append(&h, std::io::empty()).unwrap()
            }
            E::Char(p, maj, min) => {
                let mut h = raw_header(p, tar::EntryType::Char, 0, 0o666);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap()
            }
            E::Block(p) => b
                .append(
                    &raw_header(p, tar::EntryType::Block, 0, 0o660),
                    std::io::empty(),
                )
                .unwrap(),
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: String,
    pub diff_id: String,
}

impl Layer {
    pub fn gz(tar: &[u8]) -> Self {
        Layer {
            blob: gzip(tar),
            media_type: LAYER_GZIP.into(),
            diff_id: digest(tar),
        }
    }
    pub fn plain(tar: &[u8]) -> Self {
        Layer {
            blob: tar.to_vec(),
            media_type: LAYER_TAR.into(),
            diff_id: digest(tar),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TestImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    pub blobs: HashMap<String, Vec<u8>>,
}

pub fn image(layers: Vec<Layer>, user: &str) -> TestImage {
    image_with_config(layers, user, "")
}

pub fn image_with_config(layers: Vec<Layer>, user: &str, padding: &str) -> TestImage {
    let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"User": user, "Env": ["PATH=/bin"], "Labels": {"pad": padding}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = digest(&config);
    let mut blobs = HashMap::new();
    let mut descs = Vec::new();
    let mut layer_digests = Vec::new();
    for l in &layers {
        let d = digest(&l.blob);
        descs.push(
            serde_json::json!({"mediaType": l.media_type, "digest": d, "size": l.blob.len()}),
        );
        blobs.insert(d.clone(), l.blob.clone());
        layer_digests.push(d);
    }
    blobs.insert(config_digest.clone(), config.clone());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    TestImage {
        manifest_digest: digest(&manifest),
        manifest,
        config,
        config_digest,
        layer_digests,
        blobs,
    }
}

pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const WASM_LAYER: &str = "application/wasm";

/// One wasm layer: the module, its media type and its title annotation.
pub struct WasmLayer<'a> {
    pub module: &'a [u8],
    pub media_type: &'a str,
    pub title: Option<&'a str>,
}

/// A wasm artifact: `config` (media type, blob) and bare-module layers.
pub fn wasm_artifact(config: (&str, Vec<u8>), layers: &[WasmLayer<'_>]) -> TestImage {
    let (config_mt, config) = config;
    let config_digest = digest(&config);
    let mut blobs = HashMap::new();
    let mut descs = Vec::new();
    let mut layer_digests = Vec::new();
    for l in layers {
        let d = digest(l.module);
        let mut desc =
            serde_json::json!({"mediaType": l.media_type, "digest": d, "size": l.module.len()});
        if let Some(t) = l.title {
            desc["annotations"] = serde_json::json!({"org.opencontainers.image.title": t});
        }
        descs.push(desc);
        blobs.insert(d.clone(), l.module.to_vec());
        layer_digests.push(d);
    }
    blobs.insert(config_digest.clone(), config.clone());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": WASM_CONFIG,
        "config": {"mediaType": config_mt, "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    TestImage {
        manifest_digest: digest(&manifest),
        manifest,
        config,
        config_digest,
        layer_digests,
        blobs,
    }
}

/// The CNCF wasm config blob for `layers` (module digests).
pub fn wasm_config(os: &str, layer_digests: &[String]) -> (&'static str, Vec<u8>) {
    let cfg = serde_json::json!({
        "created": "2024-05-06T07:08:09Z", "author": "unicri-tests",
        "architecture": "wasm", "os": os, "layerDigests": layer_digests,
    });
    (WASM_CONFIG, serde_json::to_vec(&cfg).unwrap())
}

/// An index with linux/arm64 (bogus digest) and linux/amd64 → `img`.
pub fn index_for(img: &TestImage) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "1".repeat(64)), "size": 10,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": img.manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    }))
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 registry.

#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send no Content-Length (close-delimited body).
    pub no_length: bool,
    pub delay_ms: u64,
}

impl Resp {
    pub fn ok(body: Vec<u8>, ct: &str) -> Self {
        Resp {
            status: 200,
            headers: vec![("Content-Type".into(), ct.into())],
            body,
            no_length: false,
            delay_ms: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Bearer {
        user: String,
        pass: String,
        token: String,
    },
    Basic {
        user: String,
        pass: String,
    },
}

#[derive(Default)]
pub struct State {
    pub routes: HashMap<String, Resp>,
    /// (method, path with query, authorization header)
    pub log: Vec<(String, String, Option<String>)>,
    pub auth: Option<Auth>,
}

#[derive(Clone)]
pub struct FakeRegistry {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl FakeRegistry {
    pub async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    return;
                };
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let _ = serve(sock, st, addr).await;
                });
            }
        });
        FakeRegistry { addr, state }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    pub fn route(&self, path: &str, r: Resp) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), r);
    }

    /// Serves `img` as `<name>:<tag>` (manifest by tag and digest, all blobs).
    pub fn serve_image(&self, name: &str, tag: &str, img: &TestImage) {
        self.route(
            &format!("/v2/{name}/manifests/{tag}"),
            Resp::ok(img.manifest.clone(), OCI_MANIFEST),
        );
        self.route(
            &format!("/v2/{name}/manifests/{}", img.manifest_digest),
            Resp::ok(img.manifest.clone(), OCI_MANIFEST),
        );
        for (d, b) in &img.blobs {
            self.route(
                &format!("/v2/{name}/blobs/{d}"),
                Resp::ok(b.clone(), "application/octet-stream"),
            );
        }
    }

    pub fn count(&self, path_prefix: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(_, p, _)| p.starts_with(path_prefix))
            .count()
    }

    pub fn log(&self) -> Vec<(String, String, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }
}

async fn serve(
    sock: tokio::net::TcpStream,
    st: Arc<Mutex<State>>,
    addr: SocketAddr,
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                content_length = v.trim().parse().unwrap_or(0);
            }
            headers.insert(k, v.trim().to_string());
        }
    }
    let mut body = vec![0u8; content_length];
    r.read_exact(&mut body).await?;
    let path = target.split('?').next().unwrap_or("").to_string();
    let authz = headers.get("authorization").cloned();
    let resp = {
        let mut s = st.lock().unwrap();
        s.log.push((method.clone(), target.clone(), authz.clone()));
        let auth = s.auth.clone().unwrap_or(Auth::None);
        let deny = |hdr: String| Resp {
            status: 401,
            headers: vec![("WWW-Authenticate".into(), hdr)],
            body: b"{}".to_vec(),
            no_length: false,
            delay_ms: 0,
        };
        use base64::Engine as _;
        let b64 =
            |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        match &auth {
            Auth::Bearer { user, pass, token } if path == "/token" => {
                if authz.as_deref() == Some(&format!("Basic {}", b64(user, pass))) {
                    Resp::ok(
                        serde_json::to_vec(&serde_json::json!({"token": token})).unwrap(),
                        "application/json",
                    )
                } else {
                    Resp {
                        status: 401,
                        headers: vec![],
                        body: vec![],
                        no_length: false,
                        delay_ms: 0,
                    }
                }
            }
            Auth::Bearer { token, .. }
                if path.starts_with("/v2/")
                    && authz.as_deref() != Some(&format!("Bearer {token}")) =>
            {
                deny(format!(
                    r#"Bearer realm="http://{addr}/token",service="fake",scope="repository:x:pull""#
                ))
            }
            Auth::Basic { user, pass }
                if path.starts_with("/v2/")
                    && authz.as_deref() != Some(&format!("Basic {}", b64(user, pass))) =>
            {
                deny(r#"Basic realm="fake""#.to_string())
            }
            _ => s.routes.get(&path).cloned().unwrap_or(Resp {
                status: 404,
                headers: vec![],
                body: b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}".to_vec(),
                no_length: false,
                delay_ms: 0,
            }),
        }
    };
    if resp.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(resp.delay_ms)).await;
    }
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !resp.no_length {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        w.write_all(&resp.body).await?;
    }
    w.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Service + store checks.

pub struct Env {
    pub dir: tempfile::TempDir,
    pub svc: ImageService,
}

impl Env {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("images")
    }
}

/// A service whose hosts.toml sends `host` to plain http.
pub async fn env_for(host: &str) -> Env {
    env_with(host, |_| {}).await
}

pub async fn env_with(host: &str, f: impl FnOnce(&mut ImageServiceConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("certs.d");
    std::fs::create_dir_all(hosts.join(host)).unwrap();
    std::fs::write(
        hosts.join(host).join("hosts.toml"),
        format!("server = \"http://{host}\"\n"),
    )
    .unwrap();
    let mut cfg = ImageServiceConfig::new(dir.path().join("images"));
    cfg.hosts_dir = Some(hosts);
    f(&mut cfg);
    let svc = ImageService::new(cfg).await.unwrap();
    Env { dir, svc }
}

pub fn entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A dir outside the store with one file; `untouched` checks it still holds exactly that.
pub struct Canary {
    pub dir: tempfile::TempDir,
}

impl Canary {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), b"canary").unwrap();
        Canary { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn assert_untouched(&self) {
        assert_eq!(
            entries(self.dir.path()),
            ["keep"],
            "canary dir was written to"
        );
        assert_eq!(
            std::fs::read(self.dir.path().join("keep")).unwrap(),
            b"canary"
        );
    }
}

/// After a failed pull: no snapshot, no blob for `bad_digest`, empty ingest.
pub fn assert_clean_after_failure(env: &Env, bad_digest: Option<&str>) {
    let root = env.root();
    assert_eq!(
        entries(&root.join("snapshots")),
        Vec::<String>::new(),
        "snapshot left behind"
    );
    assert_eq!(
        entries(&root.join("ingest")),
        Vec::<String>::new(),
        "ingest not empty"
    );
    if let Some(d) = bad_digest {
        assert!(
            !root.join("blobs/sha256").join(hex_of(d)).exists(),
            "blob {d} stored"
        );
    }
}

/// A gzip layer whose tar starts with an extension header (`kind`: PAX `x`/`g`, GNU `L`/`K`)
/// declaring `size` bytes of zeros: streamed through the encoder, never held in memory (the
/// gzip of zeros is tiny).
pub fn extension_header_bomb(kind: tar::EntryType, size: u64) -> Layer {
    let mut h = if kind.is_gnu_longname() || kind.is_gnu_longlink() {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    struct Tee<R>(R, Sha256);
    impl<R: std::io::Read> std::io::Read for Tee<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.update(&buf[..n]);
            Ok(n)
        }
    }
    let zeros = std::io::Read::take(std::io::repeat(0), size.next_multiple_of(512));
    let tar = std::io::Read::chain(
        std::io::Read::chain(std::io::Cursor::new(h.as_bytes().to_vec()), zeros),
        std::io::Cursor::new(vec![0u8; 1024]),
    );
    let mut tee = Tee(tar, Sha256::new());
    let mut blob = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzEncoder::new(&mut tee, flate2::Compression::fast()),
        &mut blob,
    )
    .unwrap();
    Layer {
        blob,
        media_type: LAYER_GZIP.into(),
        diff_id: format!("sha256:{}", hex::encode(tee.1.finalize())),
    }
}
