//! Garbage collection of blobs and snapshots, and filesystem usage of the image root.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::error::ImageError;
use crate::{FsUsage, ImageRecord, Inner};

fn hex(d: &str) -> Option<String> {
    d.strip_prefix("sha256:").map(str::to_string)
}

/// Deletes every blob and snapshot not referenced by `keep` (manifest, index, config, layer
/// blobs; layer chain ids). Runs exclusively with pulls and imports.
pub(crate) async fn remove_unreferenced(
    inner: &Inner,
    keep: &[ImageRecord],
) -> Result<(), ImageError> {
    let _gc = inner.gc_lock.write().await;
    let mut blobs: HashSet<String> = HashSet::new();
    let mut snaps: HashSet<String> = HashSet::new();
    for img in keep {
        blobs.extend(hex(&img.manifest_digest));
        blobs.extend(hex(&img.config_digest));
        if let Some((_, d)) = img.repo_digest.rsplit_once('@') {
            blobs.extend(hex(d));
        }
        for l in &img.layers {
            blobs.extend(hex(&l.digest));
            snaps.extend(hex(&l.chain_id));
        }
    }
    let blob_dir = inner.store.blobs_dir().to_path_buf();
    let snap_dir = inner.snapshots.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
        let removed_blobs = sweep(&blob_dir, &blobs)?;
        let removed_snaps = sweep(&snap_dir, &snaps)?;
        tracing::info!(
            removed_blobs,
            removed_snapshots = removed_snaps,
            "image gc done"
        );
        Ok(())
    })
    .await
    .map_err(|e| ImageError::Task {
        what: "image gc".into(),
        reason: e.to_string(),
    })?
}

fn sweep(dir: &Path, keep: &HashSet<String>) -> Result<usize, ImageError> {
    let mut n = 0;
    let rd = std::fs::read_dir(dir).map_err(|e| ImageError::io("read dir", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| ImageError::io("read dir", dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        let p = ent.path();
        let ft = ent.file_type().map_err(|e| ImageError::io("stat", &p, e))?;
        let res = if ft.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        res.map_err(|e| ImageError::io("remove", &p, e))?;
        tracing::debug!(path = %p.display(), "removed unreferenced");
        n += 1;
    }
    Ok(n)
}

/// Real bytes (`st_blocks * 512`, each inode once) and inode count under `root`.
pub(crate) async fn fs_usage(root: &Path) -> Result<FsUsage, ImageError> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut used = 0u64;
        let mut stack: Vec<PathBuf> = vec![root.clone()];
        while let Some(p) = stack.pop() {
            let m = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                // raced with a removal
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io("stat", &p, e)),
            };
            if seen.insert((m.dev(), m.ino())) {
                used += m.blocks() * 512;
            }
            if m.file_type().is_dir() {
                let rd = match std::fs::read_dir(&p) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ImageError::io("read dir", &p, e)),
                };
                for ent in rd.flatten() {
                    stack.push(ent.path());
                }
            }
        }
        Ok(FsUsage {
            mountpoint: root,
            used_bytes: used,
            inodes_used: seen.len() as u64,
        })
    })
    .await
    .map_err(|e| ImageError::Task {
        what: "fs usage".into(),
        reason: e.to_string(),
    })?
}
