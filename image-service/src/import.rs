//! Offline import: an OCI layout dir, an OCI archive (a tar of a layout, optionally compressed)
//! or a docker-save archive. Blobs are copied into the content store with the same digest/size
//! verification as a pull, then the shared [`crate::pull::complete`] path unpacks them.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::{finish, hex_of, sha256_digest};
use crate::error::ImageError;
use crate::manifest::{self, Descriptor, Manifest, Parsed};
use crate::pull::{Source, complete};
use crate::reference::Reference;
use crate::store::{BlobSpec, ContentStore};
use crate::unpack::{Compression, TarGuard, clean_path, detect, open_decompressed};
use crate::{ImageRecord, Inner, Limits};

/// An image found in the input, its blobs already in the store.
struct Found {
    /// Normalised names (`registry/repo:tag`); empty for an unnamed image.
    names: Vec<String>,
    /// Digest the name points at (index or manifest).
    root_digest: String,
    manifest: Manifest,
    manifest_digest: String,
}

fn err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Import {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) async fn import(
    inner: Arc<Inner>,
    path: PathBuf,
) -> Result<Vec<ImageRecord>, ImageError> {
    let _gc = inner.gc_lock.read().await;
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| err(&path, format!("stat: {e}")))?;
    let store = inner.store.clone();
    let limits = inner.limits.clone();
    let p = path.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<Found>, ImageError> {
        if meta.is_dir() {
            return scan(&p, &p, &store, &limits);
        }
        let td = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(store.ingest_dir())
            .map_err(|e| ImageError::io("create import dir", store.ingest_dir(), e))?;
        extract_archive(&p, td.path())?;
        scan(&p, td.path(), &store, &limits)
        // td dropped here: the extracted copy is removed
    })
    .await
    .map_err(|e| ImageError::Task {
        what: format!("import {}", path.display()),
        reason: e.to_string(),
    })??;

    let mut out = Vec::new();
    for f in found {
        let rec = complete(&inner, &Source::Local, &f.manifest, &f.manifest_digest).await?;
        if f.names.is_empty() {
            out.push(rec);
            continue;
        }
        for n in &f.names {
            let mut r = rec.clone();
            if let Ok(parsed) = Reference::parse(n) {
                r.repo_tag = parsed.tagged();
                r.repo_digest = format!("{}@{}", parsed.name(), f.root_digest);
            }
            out.push(r);
        }
    }
    tracing::info!(path = %path.display(), images = out.len(), "imported images");
    Ok(out)
}

fn scan(
    input: &Path,
    dir: &Path,
    store: &ContentStore,
    limits: &Limits,
) -> Result<Vec<Found>, ImageError> {
    if dir.join("index.json").is_file() {
        scan_oci(input, dir, store, limits)
    } else if dir.join("manifest.json").is_file() {
        scan_docker(input, dir, store, limits)
    } else {
        Err(err(
            input,
            "neither an OCI layout (index.json) nor a docker-save archive (manifest.json)",
        ))
    }
}

/// Reads at most `limit` bytes of `path`.
fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    let f = fs::File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| ImageError::io("read", path, e))?;
    if buf.len() as u64 > limit {
        return Err(ImageError::TooLarge {
            what: format!("{what} {}", path.display()),
            limit,
        });
    }
    Ok(buf)
}

fn copy_blob(
    dir: &Path,
    store: &ContentStore,
    d: &Descriptor,
    limit: u64,
    what: &str,
) -> Result<(), ImageError> {
    let hex = hex_of(&d.digest, what)?;
    if d.size > limit {
        return Err(ImageError::TooLarge {
            what: format!("{what} {}", d.digest),
            limit,
        });
    }
    let src = dir.join("blobs").join("sha256").join(hex);
    let f = fs::File::open(&src).map_err(|e| ImageError::io("open blob", &src, e))?;
    let spec = BlobSpec {
        digest: &d.digest,
        size: Some(d.size),
        limit,
        what,
    };
    store.write_from_reader(&spec, f)
}

fn image_name(input: &Path, d: &Descriptor) -> Result<Vec<String>, ImageError> {
    let Some(a) = &d.annotations else {
        return Ok(Vec::new());
    };
    let name = a.get("io.containerd.image.name").or_else(|| {
        // ref.name may be just a tag ("latest"): only a full reference names an image.
        a.get("org.opencontainers.image.ref.name")
            .filter(|n| n.contains('/') || n.contains(':') || n.contains('@'))
    });
    match name {
        None => Ok(Vec::new()),
        Some(n) => {
            let r = Reference::parse(n).map_err(|e| err(input, format!("image name: {e}")))?;
            Ok(vec![r.to_string()])
        }
    }
}

fn scan_oci(
    input: &Path,
    dir: &Path,
    store: &ContentStore,
    limits: &Limits,
) -> Result<Vec<Found>, ImageError> {
    let idx_bytes = read_limited(
        &dir.join("index.json"),
        limits.max_index_bytes,
        "index.json",
    )?;
    let (parsed, _) = manifest::parse(&idx_bytes, Some(manifest::OCI_INDEX), "index.json")?;
    let Parsed::Index(idx) = parsed else {
        return Err(err(input, "index.json is not an image index"));
    };
    let mut out = Vec::new();
    for d in &idx.manifests {
        let names = image_name(input, d)?;
        let (man_desc, man_bytes) = match d.media_type.as_str() {
            manifest::OCI_INDEX | manifest::DOCKER_LIST => {
                copy_blob(dir, store, d, limits.max_index_bytes, "index")?;
                let b = store_read(store, &d.digest, limits.max_index_bytes)?;
                let (p, _) = manifest::parse(&b, Some(&d.media_type), &d.digest)?;
                let Parsed::Index(inner_idx) = p else {
                    return Err(err(input, format!("{} is not an index", d.digest)));
                };
                let md = manifest::select_platform(&inner_idx, &d.digest)?;
                copy_blob(dir, store, &md, limits.max_manifest_bytes, "manifest")?;
                let mb = store_read(store, &md.digest, limits.max_manifest_bytes)?;
                (md, mb)
            }
            _ => {
                copy_blob(dir, store, d, limits.max_manifest_bytes, "manifest")?;
                let mb = store_read(store, &d.digest, limits.max_manifest_bytes)?;
                (d.clone(), mb)
            }
        };
        let ct = if man_desc.media_type.is_empty() {
            None
        } else {
            Some(man_desc.media_type.as_str())
        };
        let (p, _) = manifest::parse(&man_bytes, ct, &man_desc.digest)?;
        let Parsed::Manifest(m) = p else {
            return Err(err(
                input,
                format!("{} is not an image manifest", man_desc.digest),
            ));
        };
        copy_blob(dir, store, &m.config, limits.max_config_bytes, "config")?;
        for l in &m.layers {
            copy_blob(dir, store, l, u64::MAX, "layer")?;
        }
        out.push(Found {
            names,
            root_digest: d.digest.clone(),
            manifest: m,
            manifest_digest: man_desc.digest.clone(),
        });
    }
    Ok(out)
}

fn store_read(store: &ContentStore, digest: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
    read_limited(&store.path(digest)?, limit, "blob")
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Serialize)]
struct SynthManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Path of a file named inside the archive, refusing escapes.
fn inner_path(input: &Path, dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let c = clean_path(Path::new(rel)).map_err(|r| err(input, format!("{rel:?}: {r}")))?;
    Ok(dir.join(c))
}

fn hash_file(p: &Path) -> Result<(String, u64), ImageError> {
    let mut f = fs::File::open(p).map_err(|e| ImageError::io("open", p, e))?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h).map_err(|e| ImageError::io("read", p, e))?;
    Ok((finish(h), n))
}

fn scan_docker(
    input: &Path,
    dir: &Path,
    store: &ContentStore,
    limits: &Limits,
) -> Result<Vec<Found>, ImageError> {
    let mj = read_limited(
        &dir.join("manifest.json"),
        limits.max_manifest_bytes,
        "manifest.json",
    )?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&mj).map_err(|e| err(input, format!("parse manifest.json: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        let cfg_path = inner_path(input, dir, &e.config)?;
        let cfg = read_limited(&cfg_path, limits.max_config_bytes, "config")?;
        let cfg_digest = sha256_digest(&cfg);
        let spec = BlobSpec {
            digest: &cfg_digest,
            size: Some(cfg.len() as u64),
            limit: limits.max_config_bytes,
            what: "config",
        };
        store.write_from_reader(&spec, &cfg[..])?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let lp = inner_path(input, dir, l)?;
            let mut magic = [0u8; 4];
            let n = fs::File::open(&lp)
                .and_then(|mut f| f.read(&mut magic))
                .map_err(|e| ImageError::io("read layer", &lp, e))?;
            let media_type = match detect(&magic[..n]) {
                Compression::Gzip => manifest::DOCKER_LAYER_GZIP,
                Compression::Zstd => manifest::OCI_LAYER_ZSTD,
                Compression::None => manifest::DOCKER_LAYER_TAR,
            };
            let (digest, size) = hash_file(&lp)?;
            let f = fs::File::open(&lp).map_err(|e| ImageError::io("open layer", &lp, e))?;
            store.write_from_reader(
                &BlobSpec {
                    digest: &digest,
                    size: Some(size),
                    limit: u64::MAX,
                    what: "layer",
                },
                f,
            )?;
            layers.push(Descriptor {
                media_type: media_type.into(),
                digest,
                size,
                platform: None,
                annotations: None,
            });
        }
        let config = Descriptor {
            media_type: manifest::DOCKER_CONFIG.into(),
            digest: cfg_digest,
            size: cfg.len() as u64,
            platform: None,
            annotations: None,
        };
        let synth = SynthManifest {
            schema_version: 2,
            media_type: manifest::DOCKER_MANIFEST,
            config,
            layers,
        };
        let mbytes = serde_json::to_vec(&synth)
            .map_err(|e| err(input, format!("serialize manifest: {e}")))?;
        let mdigest = sha256_digest(&mbytes);
        store.write_from_reader(
            &BlobSpec {
                digest: &mdigest,
                size: Some(mbytes.len() as u64),
                limit: limits.max_manifest_bytes,
                what: "manifest",
            },
            &mbytes[..],
        )?;
        let (p, _) = manifest::parse(&mbytes, Some(manifest::DOCKER_MANIFEST), &mdigest)?;
        let Parsed::Manifest(m) = p else {
            return Err(err(input, "synthesized manifest did not parse"));
        };
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&t).map_err(|e| err(input, format!("RepoTags: {e}")))?;
            names.push(r.to_string());
        }
        out.push(Found {
            names,
            root_digest: mdigest.clone(),
            manifest: m,
            manifest_digest: mdigest,
        });
    }
    Ok(out)
}

/// Extracts an archive (regular files and dirs only; in-archive symlinks to files become hard
/// links) into `dest`, refusing paths that escape.
fn extract_archive(input: &Path, dest: &Path) -> Result<(), ImageError> {
    let r = open_decompressed(input).map_err(|e| err(input, format!("open: {e}")))?;
    // the guard refuses oversized extension headers before tar reads them into memory
    let mut a = tar::Archive::new(TarGuard::new(r));
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut files: HashMap<PathBuf, ()> = HashMap::new();
    for ent in a
        .entries()
        .map_err(|e| err(input, format!("read tar: {e}")))?
    {
        let mut ent = ent.map_err(|e| err(input, format!("read tar entry: {e}")))?;
        let raw = ent
            .path()
            .map_err(|e| err(input, format!("entry path: {e}")))?
            .into_owned();
        let rel =
            clean_path(&raw).map_err(|r| err(input, format!("entry {}: {r}", raw.display())))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        match ent.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target)
                    .map_err(|e| ImageError::io("create dir", &target, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(p) = target.parent() {
                    fs::create_dir_all(p).map_err(|e| ImageError::io("create dir", p, e))?;
                }
                let _ = fs::remove_file(&target);
                let mut f = fs::File::create_new(&target)
                    .map_err(|e| ImageError::io("create", &target, e))?;
                io::copy(&mut ent, &mut f).map_err(|e| ImageError::io("write", &target, e))?;
                files.insert(rel, ());
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let Some(l) = ent.link_name_bytes() else {
                    continue;
                };
                let lp = PathBuf::from(std::ffi::OsStr::from_bytes(&l));
                let base = if ent.header().entry_type() == tar::EntryType::Symlink {
                    rel.parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default()
                        .join(lp)
                } else {
                    lp
                };
                if let Ok(t) = clean_path(&base) {
                    links.push((rel, t));
                }
            }
            _ => {}
        }
    }
    for (link, to) in links {
        if files.contains_key(&to) {
            let target = dest.join(&link);
            if let Some(p) = target.parent() {
                fs::create_dir_all(p).map_err(|e| ImageError::io("create dir", p, e))?;
            }
            let _ = fs::remove_file(&target);
            fs::hard_link(dest.join(&to), &target)
                .map_err(|e| ImageError::io("link", &target, e))?;
        }
    }
    Ok(())
}
