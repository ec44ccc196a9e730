//! Offline OCI / docker image builder, registry pusher and archive writers.
//!
//! ```no_run
//! # async fn f(reg: &unicri_e2e::registry::Registry) -> anyhow::Result<()> {
//! use unicri_e2e::oci::{Compression, ImageBuilder, LayerBuilder};
//! let layer = LayerBuilder::new().file("/hello", b"hi\n").build(Compression::Gzip)?;
//! let image = ImageBuilder::new().layer(layer).cmd(&["/hello"]).build()?;
//! reg.pusher().push_image("test/hello", "v1", &image).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};

use crate::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// One entry of a layer tar. Paths may be given with or without a leading `/`.
#[derive(Clone, Debug)]
pub enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Dir {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// `target` is a path inside the image (an earlier entry of the same layer).
    HardLink {
        path: String,
        target: String,
    },
    /// Deletes `path` from lower layers (written as `<dir>/.wh.<name>`).
    Whiteout {
        path: String,
    },
    /// Hides everything lower layers have under `dir` (written as `<dir>/.wh..wh..opq`).
    Opaque {
        dir: String,
    },
}

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Builds a layer from in-memory entries, in order. Parent directories are not added
/// implicitly: add them with [`LayerBuilder::dir`] when the layer must create them.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
    pub fn entry(mut self, e: Entry) -> Self {
        self.entries.push(e);
        self
    }
    /// A regular file, mode 0644, owned by root.
    pub fn file(self, path: &str, data: impl AsRef<[u8]>) -> Self {
        self.file_with(path, data, 0o644, 0, 0)
    }
    pub fn file_with(
        self,
        path: &str,
        data: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        self.entry(Entry::File {
            path: rel(path),
            data: data.as_ref().to_vec(),
            mode,
            uid,
            gid,
        })
    }
    /// A directory, mode 0755, owned by root.
    pub fn dir(self, path: &str) -> Self {
        self.dir_with(path, 0o755, 0, 0)
    }
    pub fn dir_with(self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        self.entry(Entry::Dir {
            path: rel(path),
            mode,
            uid,
            gid,
        })
    }
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(Entry::Symlink {
            path: rel(path),
            target: target.to_string(),
        })
    }
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(Entry::HardLink {
            path: rel(path),
            target: rel(target),
        })
    }
    pub fn whiteout(self, path: &str) -> Self {
        self.entry(Entry::Whiteout { path: rel(path) })
    }
    pub fn opaque(self, dir: &str) -> Self {
        self.entry(Entry::Opaque { dir: rel(dir) })
    }
    /// Appends all entries of `other`.
    pub fn extend(mut self, other: LayerBuilder) -> Self {
        self.entries.extend(other.entries);
        self
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            match e {
                Entry::File {
                    path,
                    data,
                    mode,
                    uid,
                    gid,
                } => {
                    let mut h = header(tar::EntryType::Regular, *mode, *uid, *gid);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())
                        .with_context(|| format!("tar file {path}"))?;
                }
                Entry::Dir {
                    path,
                    mode,
                    uid,
                    gid,
                } => {
                    let mut h = header(tar::EntryType::Directory, *mode, *uid, *gid);
                    h.set_size(0);
                    let p = format!("{}/", path.trim_end_matches('/'));
                    b.append_data(&mut h, p, std::io::empty())
                        .with_context(|| format!("tar dir {path}"))?;
                }
                Entry::Symlink { path, target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)
                        .with_context(|| format!("tar symlink {path}"))?;
                }
                Entry::HardLink { path, target } => {
                    // a hard link shares its target's inode: give it the target's mode and
                    // owner (containerd applies a link header's mode to the shared file)
                    let (mode, uid, gid) = self
                        .entries
                        .iter()
                        .find_map(|t| match t {
                            Entry::File {
                                path: p,
                                mode,
                                uid,
                                gid,
                                ..
                            } if rel(p) == rel(target) => Some((*mode, *uid, *gid)),
                            _ => None,
                        })
                        .unwrap_or((0o644, 0, 0));
                    let mut h = header(tar::EntryType::Link, mode, uid, gid);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)
                        .with_context(|| format!("tar hardlink {path}"))?;
                }
                Entry::Whiteout { path } => {
                    let p = Path::new(path);
                    let name = p
                        .file_name()
                        .with_context(|| format!("whiteout of {path}"))?
                        .to_string_lossy();
                    let wh = match p.parent() {
                        Some(d) if !d.as_os_str().is_empty() => {
                            format!("{}/.wh.{name}", d.display())
                        }
                        _ => format!(".wh.{name}"),
                    };
                    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
                    h.set_size(0);
                    b.append_data(&mut h, wh, std::io::empty())?;
                }
                Entry::Opaque { dir } => {
                    let d = dir.trim_end_matches('/');
                    let p = if d.is_empty() {
                        ".wh..wh..opq".to_string()
                    } else {
                        format!("{d}/.wh..wh..opq")
                    };
                    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
                    h.set_size(0);
                    b.append_data(&mut h, p, std::io::empty())?;
                }
            }
        }
        Ok(b.into_inner()?)
    }

    pub fn build(&self, compression: Compression) -> Result<Layer> {
        Layer::from_tar(self.tar()?, compression)
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(1_600_000_000);
    h
}

/// A built layer: the uncompressed tar (for the diff_id and docker-save) and the blob.
#[derive(Clone, Debug)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub blob: Vec<u8>,
    pub compression: Compression,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:` of the blob.
    pub digest: String,
}

impl Layer {
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Result<Layer> {
        let blob = match compression {
            Compression::None => tar.clone(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar)?;
                e.finish()?
            }
            Compression::Zstd => zstd::encode_all(tar.as_slice(), 3)?,
        };
        Ok(Layer {
            diff_id: sha256_digest(&tar),
            digest: sha256_digest(&blob),
            tar,
            blob,
            compression,
        })
    }

    pub fn media_type(&self, format: ManifestFormat) -> &'static str {
        match (format, self.compression) {
            (ManifestFormat::Oci, Compression::None) => OCI_LAYER,
            (ManifestFormat::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            (_, Compression::Zstd) => OCI_LAYER_ZSTD,
            (ManifestFormat::Docker, Compression::None) => DOCKER_LAYER,
            (ManifestFormat::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// Which media types the manifest (and index) use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    Oci,
    Docker,
}

/// A blob with its digest and media type.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Self {
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            data,
        }
    }
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.data.len()})
    }
}

/// Builds a single-platform image.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    format: ManifestFormat,
    architecture: String,
    variant: Option<String>,
    os: String,
    user: Option<String>,
    env: Vec<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: BTreeMap<String, String>,
    exposed_ports: Vec<String>,
    volumes: Vec<String>,
    stop_signal: Option<String>,
    annotations: BTreeMap<String, String>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl ImageBuilder {
    /// linux/amd64, OCI media types, `PATH` set like docker's default.
    pub fn new() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            format: ManifestFormat::Oci,
            architecture: "amd64".into(),
            variant: None,
            os: "linux".into(),
            user: None,
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ],
            cmd: None,
            entrypoint: None,
            working_dir: None,
            labels: BTreeMap::new(),
            exposed_ports: Vec::new(),
            volumes: Vec::new(),
            stop_signal: None,
            annotations: BTreeMap::new(),
        }
    }
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }
    pub fn format(mut self, f: ManifestFormat) -> Self {
        self.format = f;
        self
    }
    pub fn docker(self) -> Self {
        self.format(ManifestFormat::Docker)
    }
    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> Self {
        self.os = os.into();
        self.architecture = arch.into();
        self.variant = variant.map(Into::into);
        self
    }
    pub fn user(mut self, u: &str) -> Self {
        self.user = Some(u.into());
        self
    }
    /// Replaces the environment (default: a `PATH=` line).
    pub fn env(mut self, env: &[&str]) -> Self {
        self.env = strings(env);
        self
    }
    pub fn add_env(mut self, kv: &str) -> Self {
        self.env.push(kv.into());
        self
    }
    pub fn cmd(mut self, c: &[&str]) -> Self {
        self.cmd = Some(strings(c));
        self
    }
    pub fn entrypoint(mut self, e: &[&str]) -> Self {
        self.entrypoint = Some(strings(e));
        self
    }
    pub fn working_dir(mut self, d: &str) -> Self {
        self.working_dir = Some(d.into());
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    /// e.g. `"80/tcp"`.
    pub fn expose(mut self, port: &str) -> Self {
        self.exposed_ports.push(port.into());
        self
    }
    pub fn volume(mut self, path: &str) -> Self {
        self.volumes.push(path.into());
        self
    }
    pub fn stop_signal(mut self, s: &str) -> Self {
        self.stop_signal = Some(s.into());
        self
    }
    /// Manifest annotation.
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }

    pub fn build(self) -> Result<Image> {
        let mut cfg = serde_json::Map::new();
        if let Some(u) = &self.user {
            cfg.insert("User".into(), json!(u));
        }
        cfg.insert("Env".into(), json!(self.env));
        if let Some(c) = &self.cmd {
            cfg.insert("Cmd".into(), json!(c));
        }
        if let Some(e) = &self.entrypoint {
            cfg.insert("Entrypoint".into(), json!(e));
        }
        if let Some(w) = &self.working_dir {
            cfg.insert("WorkingDir".into(), json!(w));
        }
        if !self.labels.is_empty() {
            cfg.insert("Labels".into(), json!(self.labels));
        }
        if !self.exposed_ports.is_empty() {
            let m: serde_json::Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            cfg.insert("ExposedPorts".into(), Value::Object(m));
        }
        if !self.volumes.is_empty() {
            let m: serde_json::Map<String, Value> = self
                .volumes
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            cfg.insert("Volumes".into(), Value::Object(m));
        }
        if let Some(s) = &self.stop_signal {
            cfg.insert("StopSignal".into(), json!(s));
        }
        let mut config = json!({
            "created": "2020-09-13T12:26:40Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": Value::Object(cfg),
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|_| json!({"created": "2020-09-13T12:26:40Z", "created_by": "unicri-e2e"})).collect::<Vec<_>>(),
        });
        if let Some(v) = &self.variant {
            config["variant"] = json!(v);
        }
        let (config_mt, manifest_mt) = match self.format {
            ManifestFormat::Oci => (OCI_CONFIG, OCI_MANIFEST),
            ManifestFormat::Docker => (DOCKER_CONFIG, DOCKER_MANIFEST),
        };
        let config = Blob::new(config_mt, serde_json::to_vec(&config)?);
        let layer_descs: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({"mediaType": l.media_type(self.format), "digest": l.digest, "size": l.blob.len()})
            })
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_mt,
            "config": config.descriptor(),
            "layers": layer_descs,
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        let manifest = Blob::new(manifest_mt, serde_json::to_vec(&manifest)?);
        Ok(Image {
            config,
            manifest,
            layers: self.layers,
            format: self.format,
            os: self.os,
            architecture: self.architecture,
            variant: self.variant,
        })
    }
}

/// A built single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    pub config: Blob,
    pub manifest: Blob,
    pub layers: Vec<Layer>,
    pub format: ManifestFormat,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Image {
    /// The image id as CRI reports it: the config digest.
    pub fn id(&self) -> &str {
        &self.config.digest
    }
    pub fn manifest_digest(&self) -> &str {
        &self.manifest.digest
    }
    /// Sum of the compressed layer sizes plus config.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.blob.len() as u64).sum::<u64>() + self.config.data.len() as u64
    }
    /// The chain ids (`sha256:<hex>`) of the layers, bottom first.
    pub fn chain_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in &self.layers {
            let next = match out.last() {
                None => l.diff_id.clone(),
                Some(prev) => sha256_digest(format!("{prev} {}", l.diff_id).as_bytes()),
            };
            out.push(next);
        }
        out
    }
    fn platform_json(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
    /// All blobs (layers, config) then the manifest last.
    pub fn blobs(&self) -> Vec<Blob> {
        let mut v: Vec<Blob> = self
            .layers
            .iter()
            .map(|l| Blob {
                media_type: l.media_type(self.format).into(),
                digest: l.digest.clone(),
                data: l.blob.clone(),
            })
            .collect();
        v.push(self.config.clone());
        v
    }

    /// Writes an OCI image layout directory. `name` is a full reference such as
    /// `docker.io/library/foo:v1`; it goes to the `io.containerd.image.name` annotation and its
    /// tag to `org.opencontainers.image.ref.name`.
    pub fn write_oci_layout(&self, dir: &Path, name: &str) -> Result<()> {
        Artifact::Image(self.clone()).write_oci_layout(dir, name)
    }
    pub fn write_oci_archive(&self, path: &Path, name: &str) -> Result<()> {
        Artifact::Image(self.clone()).write_oci_archive(path, name)
    }

    /// Writes a classic `docker save` tar: `manifest.json`, `<config-hex>.json`,
    /// `<diffid-hex>/layer.tar` (uncompressed) and `repositories`.
    pub fn write_docker_save(&self, path: &Path, repo_tags: &[&str]) -> Result<()> {
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut b = tar::Builder::new(f);
        let cfg_name = format!("{}.json", self.config.hex());
        append_bytes(&mut b, &cfg_name, &self.config.data)?;
        let mut layer_names = Vec::new();
        for l in &self.layers {
            let hexid = l.diff_id.trim_start_matches("sha256:");
            let mut h = header(tar::EntryType::Directory, 0o755, 0, 0);
            h.set_size(0);
            b.append_data(&mut h, format!("{hexid}/"), std::io::empty())?;
            let name = format!("{hexid}/layer.tar");
            append_bytes(&mut b, &name, &l.tar)?;
            append_bytes(&mut b, &format!("{hexid}/VERSION"), b"1.0")?;
            layer_names.push(name);
        }
        let manifest = json!([{
            "Config": cfg_name,
            "RepoTags": repo_tags,
            "Layers": layer_names,
        }]);
        append_bytes(&mut b, "manifest.json", &serde_json::to_vec(&manifest)?)?;
        let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        if let Some(top) = self.layers.last() {
            for rt in repo_tags {
                let (repo, tag) = split_tag(rt);
                repos.entry(repo.to_string()).or_default().insert(
                    tag.to_string(),
                    top.diff_id.trim_start_matches("sha256:").to_string(),
                );
            }
        }
        append_bytes(&mut b, "repositories", &serde_json::to_vec(&repos)?)?;
        b.into_inner()?.sync_all()?;
        Ok(())
    }
}

/// `repo:tag` → (`repo`, `tag`), defaulting the tag to `latest` (port colons are not tags).
pub fn split_tag(reference: &str) -> (&str, &str) {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    }
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data)?;
    Ok(())
}

/// A multi-platform index (OCI image index or docker manifest list).
#[derive(Clone, Debug)]
pub struct Index {
    pub manifest: Blob,
    pub images: Vec<Image>,
    pub format: ManifestFormat,
}

impl Index {
    /// Builds an index over `images` (each image's own os/architecture/variant is its platform).
    pub fn new(images: Vec<Image>, format: ManifestFormat) -> Result<Index> {
        if images.is_empty() {
            bail!("an index needs at least one image");
        }
        let mt = match format {
            ManifestFormat::Oci => OCI_INDEX,
            ManifestFormat::Docker => DOCKER_MANIFEST_LIST,
        };
        let manifests: Vec<Value> = images
            .iter()
            .map(|i| {
                let mut d = i.manifest.descriptor();
                d["platform"] = i.platform_json();
                d
            })
            .collect();
        let idx = json!({"schemaVersion": 2, "mediaType": mt, "manifests": manifests});
        Ok(Index {
            manifest: Blob::new(mt, serde_json::to_vec(&idx)?),
            images,
            format,
        })
    }
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }
    /// The image for `os`/`arch`.
    pub fn image_for(&self, os: &str, arch: &str) -> Option<&Image> {
        self.images
            .iter()
            .find(|i| i.os == os && i.architecture == arch)
    }
}

/// Either a single image or an index — what a tag points at.
#[derive(Clone, Debug)]
pub enum Artifact {
    Image(Image),
    Index(Index),
}

impl Artifact {
    /// The top-level manifest (or index) blob.
    pub fn top(&self) -> &Blob {
        match self {
            Artifact::Image(i) => &i.manifest,
            Artifact::Index(x) => &x.manifest,
        }
    }
    fn all_blobs(&self) -> Vec<Blob> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let imgs: Vec<&Image> = match self {
            Artifact::Image(i) => vec![i],
            Artifact::Index(x) => x.images.iter().collect(),
        };
        for i in imgs {
            for b in i
                .blobs()
                .into_iter()
                .chain(std::iter::once(i.manifest.clone()))
            {
                if seen.insert(b.digest.clone()) {
                    out.push(b);
                }
            }
        }
        if let Artifact::Index(x) = self {
            out.push(x.manifest.clone());
        }
        out
    }

    pub fn write_oci_layout(&self, dir: &Path, name: &str) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        for b in self.all_blobs() {
            std::fs::write(blobs.join(b.hex()), &b.data)?;
        }
        let mut desc = self.top().descriptor();
        let (_, tag) = split_tag(name);
        desc["annotations"] = json!({
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": tag,
        });
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }

    pub fn write_oci_archive(&self, path: &Path, name: &str) -> Result<()> {
        let tmp = tempfile::tempdir()?;
        self.write_oci_layout(tmp.path(), name)?;
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut b = tar::Builder::new(f);
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all(".", tmp.path())?;
        b.into_inner()?.sync_all()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// WebAssembly OCI artifacts
// ---------------------------------------------------------------------------------------------

/// Config media type of the CNCF wasm OCI artifact.
pub const WASM_ARTIFACT_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer media types of a bare wasm binary that unicri accepts.
pub const WASM_ARTIFACT_LAYERS: [&str; 4] = [
    "application/wasm",
    "application/vnd.w3c.wasm.module.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// A wasm OCI artifact as an [`Image`], ready for [`Pusher::push_image`], [`Index::new`] or
/// [`Image::write_oci_layout`]: config `application/vnd.wasm.config.v0+json`
/// (`{"created", "architecture": "wasm", "os": "wasip1", "layerDigests"}`), one layer of
/// `layer_media_type` holding `module` as is (annotated `org.opencontainers.image.title` when
/// `title` is given), an OCI manifest with `artifactType` set to the config media type. The
/// image's platform is wasm/wasip1.
///
/// The one [`Layer`] has `tar == blob == module` and `diff_id == digest` (what unicri records
/// for a wasm layer); its [`Layer::media_type`] and the media types of [`Image::blobs`] are the
/// tar ones, which only name blobs on push — the manifest carries `layer_media_type`. Not for
/// [`Image::write_docker_save`].
pub fn wasm_artifact(module: &[u8], layer_media_type: &str, title: Option<&str>) -> Result<Image> {
    let layer = Layer {
        tar: module.to_vec(),
        blob: module.to_vec(),
        compression: Compression::None,
        diff_id: sha256_digest(module),
        digest: sha256_digest(module),
    };
    let (os, architecture) = ("wasip1", "wasm");
    let config = json!({
        "created": "2020-09-13T12:26:40Z",
        "architecture": architecture,
        "os": os,
        "layerDigests": [layer.digest],
    });
    let config = Blob::new(WASM_ARTIFACT_CONFIG, serde_json::to_vec(&config)?);
    let mut layer_desc =
        json!({"mediaType": layer_media_type, "digest": layer.digest, "size": module.len()});
    if let Some(t) = title {
        layer_desc["annotations"] = json!({"org.opencontainers.image.title": t});
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": WASM_ARTIFACT_CONFIG,
        "config": config.descriptor(),
        "layers": [layer_desc],
    });
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest)?);
    Ok(Image {
        config,
        manifest,
        layers: vec![layer],
        format: ManifestFormat::Oci,
        os: os.into(),
        architecture: architecture.into(),
        variant: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Pushing to a registry (plain HTTP or HTTPS, monolithic uploads)
// ---------------------------------------------------------------------------------------------

/// Pushes blobs and manifests to a distribution registry over plain HTTP (or HTTPS, see
/// [`Pusher::with_root_ca`]). Handles basic auth and bearer-token challenges.
#[derive(Clone, Debug)]
pub struct Pusher {
    base: String,
    auth: Option<(String, String)>,
    client: reqwest::Client,
}

impl Pusher {
    /// `base` is like `http://127.0.0.1:5000`.
    pub fn new(base: &str, auth: Option<(String, String)>) -> Self {
        Pusher {
            base: base.trim_end_matches('/').to_string(),
            auth,
            client: Self::client_builder().build().unwrap_or_default(),
        }
    }

    fn client_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
    }

    /// Trusts the CA certificate `pem` (for an `https://` base signed by a test CA).
    pub fn with_root_ca(mut self, pem: &[u8]) -> Result<Self> {
        let cert = reqwest::Certificate::from_pem(pem).context("parse CA certificate")?;
        self.client = Self::client_builder()
            .add_root_certificate(cert)
            .build()
            .context("build https client")?;
        Ok(self)
    }

    async fn token_for(&self, challenge: &str) -> Result<String> {
        let params = parse_challenge(challenge);
        let realm = params
            .get("realm")
            .context("bearer challenge without realm")?;
        let mut req = self.client.get(realm);
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = params.get("service") {
            q.push(("service", s));
        }
        if let Some(s) = params.get("scope") {
            q.push(("scope", s));
        }
        req = req.query(&q);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            bail!("token server answered {}", resp.status());
        }
        let v: Value = resp.json().await?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .context("token response without token")
    }

    /// Sends a request built by `mk`, answering one auth challenge if needed.
    async fn send(
        &self,
        mk: impl Fn() -> reqwest::RequestBuilder,
        token: &mut Option<String>,
    ) -> Result<reqwest::Response> {
        let with_auth = |rb: reqwest::RequestBuilder, token: &Option<String>| match token {
            Some(t) => rb.bearer_auth(t),
            None => match &self.auth {
                Some((u, p)) => rb.basic_auth(u, Some(p)),
                None => rb,
            },
        };
        let resp = with_auth(mk(), token).send().await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !challenge.to_ascii_lowercase().starts_with("bearer") {
            return Ok(resp);
        }
        *token = Some(self.token_for(&challenge).await?);
        Ok(with_auth(mk(), token).send().await?)
    }

    /// Uploads one blob (skipped when the registry already has it).
    pub async fn push_blob(
        &self,
        repo: &str,
        blob: &Blob,
        token: &mut Option<String>,
    ) -> Result<()> {
        let head_url = format!("{}/v2/{repo}/blobs/{}", self.base, blob.digest);
        let r = self.send(|| self.client.head(&head_url), token).await?;
        if r.status().is_success() {
            return Ok(());
        }
        let post_url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let r = self.send(|| self.client.post(&post_url), token).await?;
        if r.status() != reqwest::StatusCode::ACCEPTED {
            bail!(
                "POST {post_url}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let loc = r
            .headers()
            .get("location")
            .and_then(|h| h.to_str().ok())
            .context("upload without Location")?
            .to_string();
        let loc = if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put_url = format!("{loc}{sep}digest={}", blob.digest);
        let r = self
            .send(
                || {
                    self.client
                        .put(&put_url)
                        .header("content-type", "application/octet-stream")
                        .body(blob.data.clone())
                },
                token,
            )
            .await?;
        if r.status() != reqwest::StatusCode::CREATED {
            bail!(
                "PUT blob {}: {} {}",
                blob.digest,
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// PUTs a manifest (or index) under `reference` (a tag or its digest).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Blob,
        token: &mut Option<String>,
    ) -> Result<()> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let r = self
            .send(
                || {
                    self.client
                        .put(&url)
                        .header("content-type", &manifest.media_type)
                        .body(manifest.data.clone())
                },
                token,
            )
            .await?;
        if r.status() != reqwest::StatusCode::CREATED {
            bail!(
                "PUT manifest {url}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Pushes an image's blobs and its manifest under `tag`. Returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        self.push(repo, tag, &Artifact::Image(image.clone())).await
    }

    /// Pushes every image of the index (by digest) then the index under `tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Index) -> Result<String> {
        self.push(repo, tag, &Artifact::Index(index.clone())).await
    }

    pub async fn push(&self, repo: &str, tag: &str, artifact: &Artifact) -> Result<String> {
        let mut token = None;
        let images: Vec<&Image> = match artifact {
            Artifact::Image(i) => vec![i],
            Artifact::Index(x) => x.images.iter().collect(),
        };
        for img in &images {
            for b in img.blobs() {
                self.push_blob(repo, &b, &mut token).await?;
            }
        }
        if let Artifact::Index(_) = artifact {
            for img in &images {
                self.push_manifest(repo, &img.manifest.digest, &img.manifest, &mut token)
                    .await?;
            }
        }
        let top = artifact.top();
        self.push_manifest(repo, tag, top, &mut token).await?;
        Ok(top.digest.clone())
    }
}

/// Parses `Bearer realm="..",service="..",scope=".."`.
pub fn parse_challenge(h: &str) -> BTreeMap<String, String> {
    let rest = h.split_once(' ').map(|(_, r)| r).unwrap_or("");
    let mut out = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ') | Some(',')) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                val.push(c);
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        out.insert(key.trim().to_string(), val);
    }
    out
}

/// `Authorization: Basic` value for `user:pass`.
pub fn basic_auth_value(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

// ---------------------------------------------------------------------------------------------
// busybox rootfs
// ---------------------------------------------------------------------------------------------

/// Path of Debian's dynamic busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// docker-busybox-like `/etc/passwd`.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
";

/// docker-busybox-like `/etc/group`.
pub const GROUP: &str = "root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
";

/// Shared libraries `binary` needs, as reported by `ldd` (the path the loader will look up).
pub fn ldd(binary: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("ldd {binary}"))?;
    if !out.status.success() {
        bail!("ldd {binary}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        let path = if let Some((_, r)) = line.split_once("=>") {
            r.split_whitespace().next().unwrap_or("")
        } else {
            line.split_whitespace().next().unwrap_or("")
        };
        if path.starts_with('/') {
            libs.push(path.to_string());
        }
    }
    Ok(libs)
}

/// Tracks which directories a layer already has, so files can be added with their parents.
#[derive(Debug, Default)]
pub struct RootfsBuilder {
    layer: LayerBuilder,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl RootfsBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn mkdir_p(&mut self, path: &str, mode: u32) {
        let p = rel(path);
        let mut cur = String::new();
        for comp in p.split('/').filter(|c| !c.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(comp);
            if self.dirs.insert(cur.clone()) {
                let m = if cur == p { mode } else { 0o755 };
                self.layer = std::mem::take(&mut self.layer).dir_with(&cur, m, 0, 0);
            }
        }
    }
    fn parent(&mut self, path: &str) {
        if let Some(parent) = Path::new(&rel(path)).parent() {
            let p = parent.to_string_lossy().to_string();
            if !p.is_empty() {
                self.mkdir_p(&p, 0o755);
            }
        }
    }
    pub fn has(&self, path: &str) -> bool {
        self.files.contains(&rel(path))
    }
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) {
        if !self.files.insert(rel(path)) {
            return;
        }
        self.parent(path);
        self.layer = std::mem::take(&mut self.layer).file_with(path, data, mode, uid, gid);
    }
    pub fn symlink(&mut self, path: &str, target: &str) {
        if !self.files.insert(rel(path)) {
            return;
        }
        self.parent(path);
        self.layer = std::mem::take(&mut self.layer).symlink(path, target);
    }
    pub fn hardlink(&mut self, path: &str, target: &str) {
        if !self.files.insert(rel(path)) {
            return;
        }
        self.parent(path);
        self.layer = std::mem::take(&mut self.layer).hardlink(path, target);
    }
    /// Copies a host binary (following symlinks) to the same path, with the libraries `ldd`
    /// lists for it.
    pub fn host_binary(&mut self, host_path: &str, image_path: &str) -> Result<()> {
        self.host_binary_with_mode(host_path, image_path, 0o755)
    }
    /// [`RootfsBuilder::host_binary`] with the binary's mode (e.g. `0o4755` for setuid root).
    pub fn host_binary_with_mode(
        &mut self,
        host_path: &str,
        image_path: &str,
        mode: u32,
    ) -> Result<()> {
        let data = std::fs::read(host_path).with_context(|| format!("read {host_path}"))?;
        self.file(image_path, &data, mode, 0, 0);
        for lib in ldd(host_path)? {
            if self.has(&lib) {
                continue;
            }
            let data = std::fs::read(&lib).with_context(|| format!("read {lib}"))?;
            self.file(&lib, &data, 0o755, 0, 0);
        }
        Ok(())
    }
    pub fn into_layer(self) -> LayerBuilder {
        self.layer
    }
}

/// A busybox rootfs from Debian's dynamic `busybox` package: `/bin/busybox`, its libraries,
/// a hard link per applet (`busybox --list-full`), `/etc/passwd`, `/etc/group`, `/tmp`, `/root`,
/// `/home`, `/var`, `/proc`, `/sys`, `/dev`, `/etc/hosts`-less `/etc`. `extra_host_binaries`
/// (e.g. `/usr/bin/pgrep`) are copied with their libraries.
pub fn busybox_rootfs(extra_host_binaries: &[&str]) -> Result<RootfsBuilder> {
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} missing: apt-get install -y busybox");
    }
    let mut r = RootfsBuilder::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home", "var", "proc", "sys",
    ] {
        r.mkdir_p(d, if d == "root" { 0o700 } else { 0o755 });
    }
    r.mkdir_p("dev", 0o755);
    r.mkdir_p("tmp", 0o1777);
    r.mkdir_p("var/www", 0o755);
    r.host_binary(BUSYBOX, "bin/busybox")?;
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list-full")
        .output()?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" || r.has(applet) {
            continue;
        }
        r.hardlink(applet, "bin/busybox");
    }
    for b in extra_host_binaries {
        let name = Path::new(b)
            .file_name()
            .map(|n| n.to_string_lossy().to_string());
        let name = name.with_context(|| format!("bad binary path {b}"))?;
        let dest = format!("usr/bin/{name}");
        // a real binary replaces a busybox applet of the same name (rebuilt below)
        if r.has(&dest) || r.has(&format!("bin/{name}")) {
            let mut nr = RootfsBuilder::new();
            for e in r.layer.entries.iter() {
                let skip = match e {
                    Entry::HardLink { path, .. } => path == &dest || path == &format!("bin/{name}"),
                    _ => false,
                };
                if !skip {
                    nr.layer = std::mem::take(&mut nr.layer).entry(e.clone());
                }
            }
            nr.dirs = r.dirs.clone();
            nr.files = r.files.clone();
            nr.files.remove(&dest);
            nr.files.remove(&format!("bin/{name}"));
            r = nr;
        }
        r.host_binary(b, &dest)?;
    }
    r.file("etc/passwd", PASSWD.as_bytes(), 0o644, 0, 0);
    r.file("etc/group", GROUP.as_bytes(), 0o644, 0, 0);
    r.file("etc/shadow", b"root:*:10933:0:99999:7:::\n", 0o600, 0, 0);
    Ok(r)
}

/// A layer with a busybox rootfs (see [`busybox_rootfs`]).
pub fn busybox_layer() -> Result<LayerBuilder> {
    Ok(busybox_rootfs(&[])?.into_layer())
}

#[cfg(test)]
mod wasm_artifact_tests {
    use super::*;

    #[test]
    fn wasm_artifact_shape() -> Result<()> {
        let module = b"\0asm\x01\0\0\0";
        let img = wasm_artifact(module, WASM_ARTIFACT_LAYERS[0], Some("app.wasm"))?;
        let m: Value = serde_json::from_slice(&img.manifest.data)?;
        assert_eq!(m["artifactType"], WASM_ARTIFACT_CONFIG);
        assert_eq!(m["config"]["mediaType"], WASM_ARTIFACT_CONFIG);
        assert_eq!(m["config"]["digest"], img.id());
        let l = &m["layers"][0];
        assert_eq!(l["mediaType"], "application/wasm");
        assert_eq!(l["digest"], sha256_digest(module));
        assert_eq!(l["size"], module.len());
        assert_eq!(
            l["annotations"]["org.opencontainers.image.title"],
            "app.wasm"
        );
        let c: Value = serde_json::from_slice(&img.config.data)?;
        assert_eq!(c["os"], "wasip1");
        assert_eq!(c["architecture"], "wasm");
        assert_eq!(c["layerDigests"], json!([sha256_digest(module)]));
        assert_eq!(img.chain_ids(), [sha256_digest(module)]);
        assert_eq!(img.size(), (module.len() + img.config.data.len()) as u64);
        let digests: Vec<String> = img.blobs().into_iter().map(|b| b.digest).collect();
        assert_eq!(digests, [sha256_digest(module), img.config.digest.clone()]);
        let untitled = wasm_artifact(module, WASM_ARTIFACT_LAYERS[2], None)?;
        let m: Value = serde_json::from_slice(&untitled.manifest.data)?;
        assert!(m["layers"][0].get("annotations").is_none());
        Ok(())
    }
}
