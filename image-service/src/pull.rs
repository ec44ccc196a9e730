//! The pull pipeline: resolve → manifest (via index) → config → layers (parallel, singleflight
//! per digest) → snapshots (parallel, singleflight per chain id) → [`ImageRecord`].
//! Import reuses [`complete`] with every blob already in the store.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use crate::digest::{chain_ids, hex_of, sha256_digest};
use crate::error::ImageError;
use crate::manifest::{self, Manifest, Parsed};
use crate::reference::Reference;
use crate::store::BlobSpec;
use crate::{Credentials, ImageRecord, Inner, LayerRecord, PullProgress};

/// Where missing blobs come from.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per pull
pub(crate) enum Source {
    /// A registry.
    Registry {
        r: Reference,
        creds: Option<Credentials>,
        progress: Option<Arc<dyn PullProgress>>,
    },
    /// Everything is already in the store (import).
    Local,
}

pub(crate) async fn pull(
    inner: Arc<Inner>,
    r: Reference,
    creds: Option<Credentials>,
    progress: Option<Arc<dyn PullProgress>>,
) -> Result<ImageRecord, ImageError> {
    let _gc = inner.gc_lock.read().await;
    tracing::info!(reference = %r, "pulling image");
    let limits = inner.limits.clone();
    let first_limit = limits.max_manifest_bytes.max(limits.max_index_bytes);
    let fm = inner
        .registry
        .fetch_manifest(&r, r.object(), creds.as_ref(), first_limit)
        .await?;
    let actual = sha256_digest(&fm.data);
    if let Some(want) = &r.digest {
        if &actual != want {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest {r}"),
                expected: want.clone(),
                actual,
            });
        }
    } else if let Some(hdr) = &fm.content_digest
        && hdr.starts_with("sha256:")
        && hdr != &actual
    {
        return Err(ImageError::DigestMismatch {
            what: format!("manifest {r} (Docker-Content-Digest)"),
            expected: hdr.clone(),
            actual,
        });
    }
    let resolved = actual;
    let (parsed, _mt) = manifest::parse(&fm.data, fm.content_type.as_deref(), &resolved)?;
    let (manifest, manifest_digest) = match parsed {
        Parsed::Index(idx) => {
            check_limit(
                fm.data.len(),
                limits.max_index_bytes,
                &format!("index {resolved}"),
            )?;
            store_doc(
                &inner,
                &resolved,
                fm.data.clone(),
                limits.max_index_bytes,
                "index",
            )
            .await?;
            let desc = manifest::select_platform(&idx, &resolved)?;
            if desc.size > limits.max_manifest_bytes {
                return Err(ImageError::TooLarge {
                    what: format!("manifest {}", desc.digest),
                    limit: limits.max_manifest_bytes,
                });
            }
            let m = inner
                .registry
                .fetch_manifest(&r, &desc.digest, creds.as_ref(), limits.max_manifest_bytes)
                .await?;
            let got = sha256_digest(&m.data);
            if got != desc.digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest {}", desc.digest),
                    expected: desc.digest.clone(),
                    actual: got,
                });
            }
            if m.data.len() as u64 != desc.size {
                return Err(ImageError::SizeMismatch {
                    what: format!("manifest {}", desc.digest),
                    expected: desc.size,
                    actual: m.data.len() as u64,
                });
            }
            let ct = if desc.media_type.is_empty() {
                m.content_type.clone()
            } else {
                Some(desc.media_type.clone())
            };
            let (p, _) = manifest::parse(&m.data, ct.as_deref(), &desc.digest)?;
            let Parsed::Manifest(man) = p else {
                return Err(ImageError::Parse {
                    what: format!("manifest {}", desc.digest),
                    reason: "nested index is not supported".into(),
                });
            };
            store_doc(
                &inner,
                &desc.digest,
                m.data,
                limits.max_manifest_bytes,
                "manifest",
            )
            .await?;
            (man, desc.digest)
        }
        Parsed::Manifest(man) => {
            check_limit(
                fm.data.len(),
                limits.max_manifest_bytes,
                &format!("manifest {resolved}"),
            )?;
            store_doc(
                &inner,
                &resolved,
                fm.data.clone(),
                limits.max_manifest_bytes,
                "manifest",
            )
            .await?;
            (man, resolved.clone())
        }
    };
    let source = Source::Registry {
        r: r.clone(),
        creds,
        progress,
    };
    let mut rec = complete(&inner, &source, &manifest, &manifest_digest).await?;
    rec.repo_tag = if r.digest.is_none() { r.tagged() } else { None };
    rec.repo_digest = format!("{}@{resolved}", r.name());
    tracing::info!(reference = %r, id = %rec.id, size = rec.size, "pulled image");
    Ok(rec)
}

fn check_limit(n: usize, limit: u64, what: &str) -> Result<(), ImageError> {
    if n as u64 > limit {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    Ok(())
}

async fn store_doc(
    inner: &Inner,
    digest: &str,
    data: Bytes,
    limit: u64,
    what: &str,
) -> Result<(), ImageError> {
    let spec = BlobSpec {
        digest,
        size: Some(data.len() as u64),
        limit,
        what,
    };
    inner.store.write_bytes(&spec, data).await
}

/// Fetches config and layers, unpacks, and builds the record (names left empty).
pub(crate) async fn complete(
    inner: &Arc<Inner>,
    source: &Source,
    man: &Manifest,
    manifest_digest: &str,
) -> Result<ImageRecord, ImageError> {
    let limits = &inner.limits;
    let cfg_desc = &man.config;
    if cfg_desc.size > limits.max_config_bytes {
        return Err(ImageError::TooLarge {
            what: format!("config {}", cfg_desc.digest),
            limit: limits.max_config_bytes,
        });
    }
    ensure_blob(
        inner,
        source,
        &cfg_desc.digest,
        cfg_desc.size,
        limits.max_config_bytes,
        "config",
    )
    .await?;
    let cfg_bytes = inner
        .store
        .read(&cfg_desc.digest, limits.max_config_bytes, "config")
        .await?;
    let artifact = man.is_wasm_artifact();
    // A wasm artifact's layers are bare modules: each diff id is the blob digest, and its config
    // (wasm, empty or image config) is not checked against them; its record carries a
    // synthesized image config, built once the snapshots are there.
    let (diff_ids, image) = if artifact {
        let diff_ids: Vec<String> = man.layers.iter().map(|l| l.digest.clone()).collect();
        (diff_ids, None)
    } else {
        let cfg = manifest::parse_config(&cfg_bytes, &cfg_desc.digest)?;
        if cfg.diff_ids.len() != man.layers.len() {
            return Err(ImageError::Parse {
                what: format!("config {}", cfg_desc.digest),
                reason: format!(
                    "{} diff ids for {} layers",
                    cfg.diff_ids.len(),
                    man.layers.len()
                ),
            });
        }
        let config_json = String::from_utf8(cfg_bytes.clone()).map_err(|_| ImageError::Parse {
            what: format!("config {}", cfg_desc.digest),
            reason: "not utf-8".into(),
        })?;
        (cfg.diff_ids, Some((cfg.user, config_json)))
    };
    let forms: Vec<LayerForm> = man.layers.iter().map(LayerForm::of).collect();
    let chains = chain_ids(&diff_ids);

    // All layer blobs first (in parallel, bounded by the download semaphore) so a bad blob
    // fails the pull before anything is unpacked.
    // Each layer is unpacked while it downloads (into a temp dir, published only once both its
    // digest and diff id verify), so download and decompression overlap.
    let downloads = man
        .layers
        .iter()
        .zip(forms.iter())
        .zip(diff_ids.iter().zip(chains.iter()))
        .map(|((l, form), (diff, chain))| {
            let live = LiveTarget {
                diff_id: diff.clone(),
                chain: chain.clone(),
                form: form.clone(),
            };
            ensure_layer_blob(inner, source, &l.digest, l.size, live)
        });
    settle_all(downloads).await?;

    let unpacks = man
        .layers
        .iter()
        .zip(forms.iter())
        .zip(diff_ids.iter().zip(chains.iter()))
        .map(|((l, form), (diff, chain))| ensure_snapshot(inner, &l.digest, diff, chain, form));
    settle_all(unpacks).await?;

    let (user, config_json) = match image {
        Some(image) => image,
        None => wasm_config(inner, man, &cfg_bytes, &diff_ids, &chains).await?,
    };

    let layers: Vec<LayerRecord> = man
        .layers
        .iter()
        .zip(diff_ids.iter().zip(chains.iter()))
        .map(|(l, (diff, chain))| LayerRecord {
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
            size: l.size,
            diff_id: diff.clone(),
            chain_id: chain.clone(),
        })
        .collect();
    Ok(ImageRecord {
        id: cfg_desc.digest.clone(),
        repo_tag: None,
        repo_digest: String::new(),
        manifest_digest: manifest_digest.to_string(),
        config_digest: cfg_desc.digest.clone(),
        size: cfg_desc.size + man.layers.iter().map(|l| l.size).sum::<u64>(),
        layers,
        user,
        config_json,
    })
}

/// The (user, config JSON) of a wasm artifact's record: the synthesized image config of
/// [`manifest::synthesize_wasm_config`], its entrypoint the module of the first layer. The
/// module names are read from the published snapshots (each must hold exactly one file): a
/// snapshot is shared by chain id, so an image whose layer title differs from the one the
/// snapshot was first unpacked with gets the snapshot's name, which is what its rootfs holds.
async fn wasm_config(
    inner: &Arc<Inner>,
    man: &Manifest,
    cfg_bytes: &[u8],
    diff_ids: &[String],
    chains: &[String],
) -> Result<(String, String), ImageError> {
    let cfg_desc = &man.config;
    let mut first = None;
    for (l, chain) in man.layers.iter().zip(chains) {
        let fs_dir = inner.snapshots.join(hex_of(chain, "chain id")?).join("fs");
        let d = l.digest.clone();
        let name =
            tokio::task::spawn_blocking(move || crate::unpack::wasm_snapshot_module(&fs_dir, &d))
                .await
                .map_err(|e| ImageError::Task {
                    what: format!("read wasm snapshot of layer {}", l.digest),
                    reason: e.to_string(),
                })??;
        first.get_or_insert((name, l.media_type.clone()));
    }
    let Some((module, media_type)) = first else {
        return Err(ImageError::Parse {
            what: format!("config {}", cfg_desc.digest),
            reason: "wasm artifact without layers".into(),
        });
    };
    let json = manifest::synthesize_wasm_config(
        cfg_bytes,
        &cfg_desc.media_type,
        &cfg_desc.digest,
        &module,
        &media_type,
        diff_ids,
    )?;
    // the same parser as any image config reads it back (and checks the diff ids)
    let parsed = manifest::parse_config(json.as_bytes(), &cfg_desc.digest)?;
    Ok((parsed.user, json))
}

/// How a layer blob becomes a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LayerForm {
    /// A (possibly compressed) tar, extracted.
    Tar,
    /// A bare wasm binary, written as the one file `file_name`.
    Wasm { file_name: String },
}

impl LayerForm {
    fn of(l: &manifest::Descriptor) -> Self {
        if manifest::is_wasm_layer(&l.media_type) {
            LayerForm::Wasm {
                file_name: manifest::wasm_module_name(l),
            }
        } else {
            LayerForm::Tar
        }
    }

    /// Blocking: unpacks the layer stream `reader` (as stored: compressed for a tar) into the
    /// empty dir `dest`, returning the diff id of what it read.
    fn unpack(
        &self,
        reader: impl std::io::Read + 'static,
        digest: &str,
        dest: &std::path::Path,
    ) -> Result<String, ImageError> {
        match self {
            LayerForm::Tar => {
                let r = crate::unpack::decompressed(reader).map_err(|e| ImageError::Unpack {
                    digest: digest.to_string(),
                    reason: format!("open layer stream: {e}"),
                })?;
                crate::unpack::unpack_stream(r, digest, dest)
            }
            LayerForm::Wasm { file_name } => {
                crate::unpack::unpack_wasm_stream(reader, digest, dest, file_name)
            }
        }
    }
}

/// Runs every future to completion and then returns the first error, if any. Unlike
/// `try_join_all` it never returns while sibling layer work is still writing: when a pull reports
/// a failure, nothing of it lands in the store afterwards, so the caller's clean-up sees it all.
async fn settle_all<F>(futs: impl IntoIterator<Item = F>) -> Result<(), ImageError>
where
    F: std::future::Future<Output = Result<(), ImageError>>,
{
    futures::future::join_all(futs).await.into_iter().collect()
}

/// The snapshot a layer download also unpacks into.
#[derive(Clone)]
struct LiveTarget {
    diff_id: String,
    chain: String,
    form: LayerForm,
}

async fn ensure_layer_blob(
    inner: &Arc<Inner>,
    source: &Source,
    digest: &str,
    size: u64,
    live: LiveTarget,
) -> Result<(), ImageError> {
    ensure_blob_inner(inner, source, digest, size, u64::MAX, "layer", Some(live)).await
}

/// Makes sure a non-layer blob `digest` is in the store, downloading it at most once at a time.
async fn ensure_blob(
    inner: &Arc<Inner>,
    source: &Source,
    digest: &str,
    size: u64,
    limit: u64,
    what: &'static str,
) -> Result<(), ImageError> {
    ensure_blob_inner(inner, source, digest, size, limit, what, None).await
}

/// A `Read` over chunks arriving on a channel; EOF when the sender is gone.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

/// A running live unpack: the temp dir it filled and the diff id of what it read.
type LiveUnpack = tokio::task::JoinHandle<Result<(tempfile::TempDir, String), ImageError>>;

/// Starts unpacking layer `digest` from the chunks sent on the returned channel into a temp dir.
/// The task returns the temp dir and the diff id of what it read; it publishes nothing.
fn start_live_unpack(
    inner: &Arc<Inner>,
    digest: &str,
    form: LayerForm,
) -> (tokio::sync::mpsc::Sender<Bytes>, LiveUnpack) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let ingest = inner.store.ingest_dir().to_path_buf();
    let d = digest.to_string();
    let handle = tokio::task::spawn_blocking(move || {
        let td = new_unpack_dir(&ingest)?;
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        let diff_id = form.unpack(reader, &d, &td.path().join("fs"))?;
        Ok((td, diff_id))
    });
    (tx, handle)
}

/// Makes sure blob `digest` is in the store, downloading it at most once at a time; a layer
/// (`live` given) is unpacked into its snapshot while it streams in.
async fn ensure_blob_inner(
    inner: &Arc<Inner>,
    source: &Source,
    digest: &str,
    size: u64,
    limit: u64,
    what: &'static str,
    live: Option<LiveTarget>,
) -> Result<(), ImageError> {
    let is_layer = live.is_some();
    hex_of(digest, what)?;
    if inner.store.has(digest) {
        return Ok(());
    }
    let Source::Registry { r, creds, progress } = source else {
        return Err(ImageError::Import {
            path: inner.store.path(digest)?,
            reason: format!("{what} blob {digest} is missing"),
        });
    };
    // One download per digest at a time. A caller that joined someone else's download (another
    // repository, registry or credentials) and saw it fail tries once more with its own source,
    // like containerd's ingest lock: the other pull's failure is not this pull's.
    let attempt = |mine: Arc<AtomicBool>| {
        let (inner2, r, creds, progress, d, live) = (
            Arc::clone(inner),
            r.clone(),
            creds.clone(),
            progress.clone(),
            digest.to_string(),
            live.clone(),
        );
        async move {
            mine.store(true, Ordering::SeqCst);
            if inner2.store.has(&d) {
                return Ok(());
            }
            let _permit = if is_layer {
                Some(
                    Arc::clone(&inner2.downloads)
                        .acquire_owned()
                        .await
                        .map_err(|e| ImageError::Task {
                            what: "download semaphore".into(),
                            reason: e.to_string(),
                        })?,
                )
            } else {
                None
            };
            tracing::debug!(digest = %d, size, what, "downloading blob");
            let (len, stream) = inner2.registry.fetch_blob(&r, &d, creds.as_ref()).await?;
            if let Some(len) = len {
                if len > limit {
                    return Err(ImageError::TooLarge {
                        what: format!("{what} {d}"),
                        limit,
                    });
                }
                if len != size {
                    return Err(ImageError::SizeMismatch {
                        what: format!("{what} {d}"),
                        expected: size,
                        actual: len,
                    });
                }
            }
            let spec = BlobSpec {
                digest: &d,
                size: Some(size),
                limit,
                what,
            };
            let progress = if is_layer { progress.as_ref() } else { None };
            let live = match live {
                Some(t) => {
                    let final_dir = inner2.snapshots.join(hex_of(&t.chain, "chain id")?);
                    (!final_dir.exists()).then_some((t, final_dir))
                }
                None => None,
            };
            let Some((target, final_dir)) = live else {
                return inner2.store.write_stream(&spec, stream, progress).await;
            };
            let (tx, unpack) = start_live_unpack(&inner2, &d, target.form.clone());
            let teed = Arc::new(AtomicU64::new(0));
            let teed2 = Arc::clone(&teed);
            let tee = futures::StreamExt::then(stream, move |item| {
                let tx = tx.clone();
                let teed = Arc::clone(&teed2);
                async move {
                    if let Ok(chunk) = &item {
                        teed.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        // A receiver gone means the unpack already failed; its error wins below.
                        let _ = tx.send(chunk.clone()).await;
                    }
                    item
                }
            });
            let written = inner2.store.write_stream(&spec, tee, progress).await;
            // The tee (and with it the sender) is gone: the unpack sees EOF and finishes.
            let unpacked = unpack.await.map_err(|e| ImageError::Task {
                what: format!("unpack layer {d}"),
                reason: e.to_string(),
            })?;
            written?;
            if teed.load(Ordering::SeqCst) != size {
                // The store already had the blob (another writer, e.g. an import, stored it
                // after the check above) and read none of the stream: the live unpack saw an
                // empty layer. Its snapshot is unpacked from the stored blob instead.
                return Ok(());
            }
            let (td, actual) = unpacked?;
            if actual != target.diff_id {
                return Err(ImageError::DiffIdMismatch {
                    digest: d.clone(),
                    expected: target.diff_id,
                    actual,
                });
            }
            publish_snapshot(td, &final_dir)
        }
    };
    let mine = Arc::new(AtomicBool::new(false));
    match inner
        .blob_flights
        .run(digest, attempt(Arc::clone(&mine)))
        .await
    {
        Err(e) if !mine.load(Ordering::SeqCst) && !inner.store.has(digest) => {
            tracing::debug!(digest, error = %e, "shared download failed, trying with this pull's source");
            let again = Arc::new(AtomicBool::new(false));
            inner.blob_flights.run(digest, attempt(again)).await
        }
        res => res,
    }
}

/// Makes sure the snapshot for `chain` exists, unpacking layer `digest` at most once at a time.
async fn ensure_snapshot(
    inner: &Arc<Inner>,
    digest: &str,
    diff_id: &str,
    chain: &str,
    form: &LayerForm,
) -> Result<(), ImageError> {
    let hex = hex_of(chain, "chain id")?.to_string();
    let final_dir = inner.snapshots.join(&hex);
    if tokio::fs::symlink_metadata(&final_dir).await.is_ok() {
        return Ok(());
    }
    let (inner2, d, diff, form) = (
        Arc::clone(inner),
        digest.to_string(),
        diff_id.to_string(),
        form.clone(),
    );
    inner
        .snapshot_flights
        .run(chain, async move {
            let _permit = Arc::clone(&inner2.unpacks)
                .acquire_owned()
                .await
                .map_err(|e| ImageError::Task {
                    what: "unpack semaphore".into(),
                    reason: e.to_string(),
                })?;
            let blob = inner2.store.path(&d)?;
            let ingest = inner2.store.ingest_dir().to_path_buf();
            let d2 = d.clone();
            tokio::task::spawn_blocking(move || {
                unpack_to_snapshot(&blob, &d2, &diff, &form, &ingest, &final_dir)
            })
            .await
            .map_err(|e| ImageError::Task {
                what: format!("unpack layer {d}"),
                reason: e.to_string(),
            })?
        })
        .await
}

fn unpack_to_snapshot(
    blob: &std::path::Path,
    digest: &str,
    diff_id: &str,
    form: &LayerForm,
    ingest: &std::path::Path,
    final_dir: &std::path::Path,
) -> Result<(), ImageError> {
    if final_dir.exists() {
        return Ok(());
    }
    let td = new_unpack_dir(ingest)?;
    let fs_dir: PathBuf = td.path().join("fs");
    let started = std::time::Instant::now();
    let actual = match form {
        LayerForm::Tar => crate::unpack::unpack_layer(blob, digest, &fs_dir)?,
        LayerForm::Wasm { file_name } => {
            crate::unpack::unpack_wasm_layer(blob, digest, &fs_dir, file_name)?
        }
    };
    if actual != diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest: digest.to_string(),
            expected: diff_id.to_string(),
            actual,
        });
    }
    publish_snapshot(td, final_dir)?;
    tracing::debug!(digest, dir = %final_dir.display(), elapsed_ms = started.elapsed().as_millis() as u64, "unpacked layer");
    Ok(())
}

/// A temp dir under `ingest` with an empty `fs/` (mode 0755) to unpack a layer into.
fn new_unpack_dir(ingest: &std::path::Path) -> Result<tempfile::TempDir, ImageError> {
    use std::os::unix::fs::PermissionsExt as _;
    let td = tempfile::Builder::new()
        .prefix("unpack-")
        .tempdir_in(ingest)
        .map_err(|e| ImageError::io("create unpack dir", ingest, e))?;
    let fs_dir: PathBuf = td.path().join("fs");
    std::fs::create_dir(&fs_dir).map_err(|e| ImageError::io("create unpack dir", &fs_dir, e))?;
    std::fs::set_permissions(&fs_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io("chmod", &fs_dir, e))?;
    Ok(td)
}

/// Renames a verified unpack dir to its snapshot's final place (atomic). Another unpack that got
/// there first wins; this one is discarded.
fn publish_snapshot(td: tempfile::TempDir, final_dir: &std::path::Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(td.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io("chmod", td.path(), e))?;
    let tmp = td.keep();
    if let Err(e) = std::fs::rename(&tmp, final_dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if final_dir.exists() {
            return Ok(());
        }
        return Err(ImageError::io("rename snapshot", final_dir, e));
    }
    Ok(())
}
