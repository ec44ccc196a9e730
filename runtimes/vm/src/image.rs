//! Container images as read-only EROFS block images for the guest.
//!
//! An image is an ordered list of unpacked layer snapshot directories (lowest first, as the
//! image service unpacks them: overlay whiteouts as 0/0 character devices, opaque directories
//! as `trusted.overlay.opaque` xattrs). [`build`] turns it into ONE EROFS file with Debian's
//! `mkfs.erofs` (erofs-utils): one layer directly; several through a read-only overlay mount
//! of them (`lowerdir=top:…:bottom`) on a temporary directory, so whiteouts and opaque
//! directories are already applied in the image. The file is `<dir>/<key>.erofs` (the key is
//! the caller's, e.g. the image id), built once under a per-key lock (`<key>.lock`), written
//! as a temporary file and renamed; every pod using the image shares it (the engines attach it
//! read-only and unlocked). [`remove`] deletes it (GC); VMs that still have it attached keep
//! reading the unlinked file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{VmError, io_err, run};

/// The image file of `key` under `dir` (whether built or not).
pub fn path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.erofs"))
}

fn check_key(key: &str) -> Result<(), VmError> {
    if key.is_empty()
        || key.len() > 200
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        || key.starts_with('.')
    {
        return Err(VmError::InvalidArgument {
            what: "image key",
            value: key.to_string(),
            reason: "want 1-200 characters of [A-Za-z0-9._:-], not starting with '.'".into(),
        });
    }
    Ok(())
}

/// Takes the per-key lock file `<dir>/<key>.lock` exclusively (blocking).
fn lock(dir: &Path, key: &str) -> Result<Flock<File>, VmError> {
    let lock_path = dir.join(format!("{key}.lock"));
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("open image lock", &lock_path))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| VmError::Io {
        op: "lock image",
        path: lock_path,
        source: e.into(),
    })
}

/// Returns `<dir>/<key>.erofs`, building it from `layers` (lowest first) if it does not exist.
/// Blocking (mkfs of a large image takes seconds): call it from a blocking thread.
pub fn build(dir: &Path, key: &str, layers: &[PathBuf]) -> Result<PathBuf, VmError> {
    check_key(key)?;
    if layers.is_empty() {
        return Err(VmError::InvalidArgument {
            what: "image layers",
            value: String::new(),
            reason: "an image needs at least one layer".into(),
        });
    }
    let out = path(dir, key);
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(dir).map_err(io_err("create image directory", dir))?;
    let _lock = lock(dir, key)?;
    if out.exists() {
        // built by whoever held the lock before us
        return Ok(out);
    }
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let made = if let [single] = layers {
        mkfs(&tmp, single)
    } else {
        with_overlay(dir, key, layers, |merged| mkfs(&tmp, merged))
    };
    let published = made.and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync image", &tmp))?;
        std::fs::rename(&tmp, &out).map_err(io_err("publish image", &out))
    });
    if let Err(e) = published {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    tracing::debug!(key, layers = layers.len(), path = %out.display(), "erofs image built");
    Ok(out)
}

/// Deletes the image of `key` (and its lock file); absent is fine.
pub fn remove(dir: &Path, key: &str) -> Result<(), VmError> {
    check_key(key)?;
    if !dir.exists() {
        return Ok(());
    }
    let guard = lock(dir, key)?;
    let out = path(dir, key);
    match std::fs::remove_file(&out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove image", &out)(e)),
    }
    let lock_path = dir.join(format!("{key}.lock"));
    let _ = std::fs::remove_file(&lock_path);
    drop(guard);
    Ok(())
}

fn mkfs(out: &Path, src: &Path) -> Result<(), VmError> {
    run(Command::new("mkfs.erofs")
        // owners, modes and xattrs (a single layer's opaque markers included) as on disk;
        // uncompressed: the guest reads it without decompression work
        .arg("--quiet")
        .arg(out)
        .arg(src))
    .map(|_| ())
}

/// Mounts a read-only overlay of `layers` (lowest first) on a temporary directory under
/// `dir`, runs `f` on it, unmounts it and removes the directory.
fn with_overlay<T>(
    dir: &Path,
    key: &str,
    layers: &[PathBuf],
    f: impl FnOnce(&Path) -> Result<T, VmError>,
) -> Result<T, VmError> {
    for l in layers {
        let s = l.to_string_lossy();
        if !l.is_absolute() || s.contains([':', ',', '\\']) {
            return Err(VmError::InvalidArgument {
                what: "layer directory",
                value: s.into_owned(),
                reason: "must be absolute and free of ':', ',' and '\\' (overlay options)".into(),
            });
        }
    }
    // relative to their common parent, so that many layers fit in one page of mount options
    let base = common_parent(layers);
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| {
            l.strip_prefix(&base)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| l.to_string_lossy().into_owned())
        })
        .map(|r| if r.is_empty() { ".".to_string() } else { r })
        .collect();
    let mnt = dir.join(format!(".{key}.{}.mnt", std::process::id()));
    std::fs::create_dir_all(&mnt).map_err(io_err("create overlay mount point", &mnt))?;
    let mounted = run(Command::new("mount")
        .current_dir(&base)
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lower.join(":")))
        .arg(&mnt));
    if let Err(e) = mounted {
        let _ = std::fs::remove_dir(&mnt);
        return Err(e);
    }
    let result = f(&mnt);
    let unmounted = nix::mount::umount2(&mnt, nix::mount::MntFlags::empty())
        .or_else(|_| nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH))
        .map_err(|e| VmError::Io {
            op: "unmount overlay",
            path: mnt.clone(),
            source: e.into(),
        });
    let _ = std::fs::remove_dir(&mnt);
    let value = result?;
    unmounted?;
    Ok(value)
}

/// The longest common ancestor directory of absolute paths.
fn common_parent(paths: &[PathBuf]) -> PathBuf {
    let mut base: PathBuf = paths
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    while !paths.iter().all(|p| p.starts_with(&base)) {
        if !base.pop() {
            return PathBuf::from("/");
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_parent_of_layers() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(common_parent(&[p("/a/s/1/fs"), p("/a/s/2/fs")]), p("/a/s"));
        assert_eq!(common_parent(&[p("/a/fs"), p("/b/fs")]), p("/"));
        assert!(check_key("sha256:abc").is_ok());
        assert!(check_key("../x").is_err());
        assert!(check_key("").is_err());
    }
}
