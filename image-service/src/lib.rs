//! unicri's image service: everything between a registry (or an archive on disk) and an
//! overlay-ready set of layer directories. It knows nothing of CRI or SQLite: it returns
//! [`ImageRecord`]s and the caller (`cri-server`) persists them.
//!
//! On-disk layout under the image root ([`ImageServiceConfig::root`]):
//! * `blobs/sha256/<hex>`: the content store, deduplicated by digest, every blob verified.
//! * `snapshots/<chainid-hex>/fs`: one directory per unpacked layer, keyed by chain id, holding the
//!   layer's diff with overlayfs-native whiteouts; a rootfs is the overlay of an image's
//!   [`ImageRecord::layers`] snapshot dirs.
//! * `ingest/`: temporary downloads and unpacks; anything here is garbage at start-up.
//!
//! WebAssembly OCI artifacts (every layer one of [`WASM_LAYER_MEDIA_TYPES`]; config a wasm
//! config `application/vnd.wasm.config.v0+json`, an empty config or an image config) are pulled
//! and imported like images: each wasm layer is digest-checked like any layer, and its snapshot
//! `fs` dir holds just the module file (named by the layer's `org.opencontainers.image.title`
//! when safe, else `module.wasm`; diff id = blob digest). The record's
//! [`ImageRecord::config_json`] is then a synthesized OCI image config whose `Entrypoint` is
//! `/<module of the first layer>` (see [`manifest::synthesize_wasm_config`]); the id and
//! [`ImageRecord::config_digest`] stay the real config blob's digest, which stays in the store.
//! Manifests mixing wasm and tar layers are refused ([`ImageError::UnsupportedMediaType`]).
//!
//! Invariants: a file only gets its final name in `blobs/` after its size and digest verified;
//! a snapshot dir only appears (by rename) after the whole layer unpacked and its diff id
//! verified; one download per blob digest and one unpack per chain id at a time (singleflight,
//! in spawned tasks so a dropped caller cannot leave half-written state in a final location).
//!
//! THE PUBLIC API BELOW IS THE CONTRACT WITH `cri-server`.

pub mod auth;
pub mod digest;
pub mod error;
mod flight;
mod gc;
pub mod hosts;
mod import;
pub mod manifest;
mod pull;
pub mod reference;
mod registry;
pub mod store;
pub mod unpack;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use auth::Credentials;
pub use error::ImageError;
pub use manifest::{WASM_LAYER_MEDIA_TYPES, is_wasm_layer};
pub use reference::Reference;

use crate::auth::CredentialStore;
use crate::flight::Flights;
use crate::hosts::RegistryHosts;
use crate::registry::RegistryClient;
use crate::store::ContentStore;

/// Size limits for documents read into memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest image manifest accepted (default 4 MiB).
    pub max_manifest_bytes: u64,
    /// Largest image config accepted (default 8 MiB).
    pub max_config_bytes: u64,
    /// Largest index / manifest list accepted (default 4 MiB).
    pub max_index_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
            max_index_bytes: 4 << 20,
        }
    }
}

/// Configuration of the image service.
#[derive(Clone, Debug)]
pub struct ImageServiceConfig {
    /// Image root, e.g. `/var/lib/unicri/images`; created if missing.
    pub root: PathBuf,
    /// containerd-style registry config dir: `<host>/hosts.toml` (+ `_default/hosts.toml`).
    pub hosts_dir: Option<PathBuf>,
    /// docker `config.json`-format credentials.
    pub credentials_file: Option<PathBuf>,
    /// Parallel layer downloads (default 3).
    pub max_concurrent_downloads: usize,
    /// Document size limits.
    pub limits: Limits,
}

impl ImageServiceConfig {
    /// Defaults for everything but the root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageServiceConfig {
            root: root.into(),
            hosts_dir: None,
            credentials_file: None,
            max_concurrent_downloads: 3,
            limits: Limits::default(),
        }
    }
}

/// Receives download progress.
pub trait PullProgress: Send + Sync {
    /// Called as bytes of layer `digest` arrive (`total` is the descriptor size).
    fn layer(&self, digest: &str, total: u64, done: u64);
}

/// A pulled or imported image, as the caller persists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// `sha256:<config digest hex>` (the image id, like containerd).
    pub id: String,
    /// Normalised `registry/repo:tag` when pulled by tag; `None` when by digest or unnamed.
    pub repo_tag: Option<String>,
    /// `registry/repo@<digest resolved from the reference>` (the index digest if the reference
    /// pointed at an index); `""` for an unnamed import.
    pub repo_digest: String,
    /// Digest of the image manifest picked (linux/amd64, or wasm).
    pub manifest_digest: String,
    /// Config digest.
    pub config_digest: String,
    /// Compressed layer sizes plus config size.
    pub size: u64,
    /// Layers, bottom to top.
    pub layers: Vec<LayerRecord>,
    /// The config's `User` ("" if none).
    pub user: String,
    /// Raw image config JSON, verbatim; for a wasm artifact the synthesized OCI image config of
    /// [`manifest::synthesize_wasm_config`] (`Entrypoint` `["/<module>"]`, label
    /// `org.unicri.wasm.artifact` = the layer media type), never the artifact's config blob.
    pub config_json: String,
}

/// One layer of an [`ImageRecord`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    /// Blob digest (compressed).
    pub digest: String,
    /// Layer media type.
    pub media_type: String,
    /// Blob size.
    pub size: u64,
    /// Digest of the uncompressed tar; for a wasm layer the blob digest.
    pub diff_id: String,
    /// OCI chain id (names the snapshot dir).
    pub chain_id: String,
}

/// Filesystem usage of the image root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsUsage {
    /// The image root.
    pub mountpoint: PathBuf,
    /// Bytes used (`st_blocks * 512`, hard links once).
    pub used_bytes: u64,
    /// Inodes used.
    pub inodes_used: u64,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) store: ContentStore,
    pub(crate) snapshots: PathBuf,
    pub(crate) registry: RegistryClient,
    pub(crate) limits: Limits,
    pub(crate) downloads: Arc<tokio::sync::Semaphore>,
    pub(crate) unpacks: Arc<tokio::sync::Semaphore>,
    pub(crate) blob_flights: Flights<()>,
    pub(crate) snapshot_flights: Flights<()>,
    /// Pulls and imports hold it shared; GC holds it exclusively.
    pub(crate) gc_lock: tokio::sync::RwLock<()>,
}

/// The image service. Cheap to share in an `Arc`.
pub struct ImageService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageService")
            .field("root", &self.inner.root)
            .finish()
    }
}

async fn mkdir(p: &Path) -> Result<(), ImageError> {
    tokio::fs::create_dir_all(p)
        .await
        .map_err(|e| ImageError::io("create dir", p, e))
}

impl ImageService {
    /// Creates the directories, clears `ingest/`, loads hosts.toml files and credentials.
    pub async fn new(cfg: ImageServiceConfig) -> Result<Self, ImageError> {
        let root = cfg.root.clone();
        mkdir(&root).await?;
        let snapshots = root.join("snapshots");
        let ingest = root.join("ingest");
        mkdir(&root.join("blobs").join("sha256")).await?;
        mkdir(&snapshots).await?;
        if tokio::fs::symlink_metadata(&ingest).await.is_ok() {
            tokio::fs::remove_dir_all(&ingest)
                .await
                .map_err(|e| ImageError::io("clear ingest dir", &ingest, e))?;
        }
        mkdir(&ingest).await?;
        let hosts_dir = cfg.hosts_dir.clone();
        let creds_file = cfg.credentials_file.clone();
        let (hosts, creds) = tokio::task::spawn_blocking(move || -> Result<_, ImageError> {
            let hosts = match &hosts_dir {
                Some(d) => RegistryHosts::load(d)?,
                None => RegistryHosts::default(),
            };
            let creds = match &creds_file {
                Some(f) => CredentialStore::load(f)?,
                None => CredentialStore::default(),
            };
            Ok((hosts, creds))
        })
        .await
        .map_err(|e| ImageError::Task {
            what: "load registry config".into(),
            reason: e.to_string(),
        })??;
        let unpack_parallel =
            std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        let inner = Inner {
            store: ContentStore::new(&root),
            snapshots,
            root,
            registry: RegistryClient::new(hosts, creds),
            limits: cfg.limits,
            downloads: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_concurrent_downloads.max(1),
            )),
            unpacks: Arc::new(tokio::sync::Semaphore::new(unpack_parallel)),
            blob_flights: Flights::default(),
            snapshot_flights: Flights::default(),
            gc_lock: tokio::sync::RwLock::new(()),
        };
        tracing::info!(root = %inner.root.display(), "image service ready");
        Ok(ImageService {
            inner: Arc::new(inner),
        })
    }

    /// Pulls `reference` (linux/amd64, or from an index without it a wasm/wasi entry) and
    /// returns its record. The work runs in a spawned task:
    /// dropping the returned future does not interrupt it (concurrent pulls share it).
    pub async fn pull(
        &self,
        reference: &str,
        creds: Option<Credentials>,
        progress: Option<Arc<dyn PullProgress>>,
    ) -> Result<ImageRecord, ImageError> {
        let r = Reference::parse(reference)?;
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { pull::pull(inner, r, creds, progress).await })
            .await
            .map_err(|e| ImageError::Task {
                what: format!("pull {reference}"),
                reason: e.to_string(),
            })?
    }

    /// Imports an OCI layout dir, an OCI archive or a docker-save archive.
    pub async fn import(&self, path: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let inner = Arc::clone(&self.inner);
        let p = path.to_path_buf();
        tokio::spawn(async move { import::import(inner, p).await })
            .await
            .map_err(|e| ImageError::Task {
                what: format!("import {}", path.display()),
                reason: e.to_string(),
            })?
    }

    /// Deletes blobs and snapshots not used by any image in `keep`.
    pub async fn remove_unreferenced(&self, keep: &[ImageRecord]) -> Result<(), ImageError> {
        gc::remove_unreferenced(&self.inner, keep).await
    }

    /// Bytes and inodes used under the image root.
    pub async fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        gc::fs_usage(&self.inner.root).await
    }

    /// Snapshot fs dirs bottom..top (overlay lowerdir order is the reverse).
    pub fn layer_dirs(&self, image: &ImageRecord) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .map(|l| {
                self.inner
                    .snapshots
                    .join(l.chain_id.strip_prefix("sha256:").unwrap_or(&l.chain_id))
                    .join("fs")
            })
            .collect()
    }

    /// Loaded registry configuration (no secrets).
    pub fn hosts_summary(&self) -> serde_json::Value {
        let mut v = self.inner.registry.hosts().summary();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "credential_hosts".into(),
                serde_json::json!(self.inner.registry.credential_store().hosts()),
            );
        }
        v
    }

    /// The image root.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}
