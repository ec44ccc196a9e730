//! Writing [`FileEntry`]s: validated absolute paths, parents made, every file and symlink
//! replaced atomically (a temp name in the same directory, then a rename).

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use unicri_vm_agent::proto::FileEntry;

use super::error::{Error, Result};

/// Default permission bits when an entry's `mode` is 0.
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

/// `path` relative to the guest root, if it is absolute, not `/` itself and has no `..`.
pub fn validate_path(path: &str) -> Result<PathBuf> {
    if path.contains('\0') {
        return Err(Error::invalid(format!("path {path:?} contains a NUL byte")));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Error::invalid(format!("path {path:?} is not absolute")));
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir => {
                return Err(Error::invalid(format!(
                    "path {path:?} has a `..` component"
                )));
            }
            Component::Prefix(_) => {
                return Err(Error::invalid(format!("path {path:?} is not a guest path")));
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(Error::invalid(format!("path {path:?} names the root")));
    }
    Ok(rel)
}

/// Check every entry (paths, kinds, base64) before writing any.
pub fn validate(entries: &[FileEntry]) -> Result<()> {
    for e in entries {
        validate_path(&e.path)?;
        match e.kind.as_str() {
            "file" => {
                decode(e)?;
            }
            "dir" => {}
            "symlink" => {
                if e.data.is_empty() {
                    return Err(Error::invalid(format!(
                        "symlink {:?} has no target",
                        e.path
                    )));
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "file entry {:?}: unknown kind {other:?} (file, dir or symlink)",
                    e.path
                )));
            }
        }
    }
    Ok(())
}

fn decode(e: &FileEntry) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(e.data.as_bytes())
        .map_err(|err| Error::invalid(format!("file {:?}: data is not base64: {err}", e.path)))
}

fn mode_of(e: &FileEntry, default: u32) -> u32 {
    match e.mode & 0o7777 {
        0 => default,
        m => m,
    }
}

/// Write `entries` under `root` (`/` in the guest; a temp dir in tests), in order.
pub fn write_entries(root: &Path, entries: &[FileEntry]) -> Result<()> {
    validate(entries)?;
    for e in entries {
        let target = root.join(validate_path(&e.path)?);
        match e.kind.as_str() {
            "dir" => {
                std::fs::create_dir_all(&target)
                    .map_err(|err| Error::io(format!("create directory {}", e.path), &err))?;
                set_mode(&target, mode_of(e, DEFAULT_DIR_MODE), &e.path)?;
            }
            "file" => write_atomic(&target, &decode(e)?, mode_of(e, DEFAULT_FILE_MODE))
                .map_err(|err| Error::io(format!("write file {}", e.path), &err))?,
            _ => symlink_atomic(&target, Path::new(&e.data))
                .map_err(|err| Error::io(format!("make symlink {}", e.path), &err))?,
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32, name: &str) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| Error::io(format!("chmod {name}"), &err))
}

fn temp_name(target: &Path) -> std::io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".unicri-tmp");
    Ok(target.with_file_name(tmp))
}

fn make_parent(target: &Path) -> std::io::Result<()> {
    match target.parent() {
        Some(p) => std::fs::create_dir_all(p),
        None => Ok(()),
    }
}

/// Replace `target` with a file holding `data` (mode `mode`).
pub fn write_atomic(target: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    make_parent(target)?;
    let tmp = temp_name(target)?;
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        std::fs::write(&tmp, data)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn symlink_atomic(target: &Path, to: &Path) -> std::io::Result<()> {
    make_parent(target)?;
    let tmp = temp_name(target)?;
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(to, &tmp)?;
    std::fs::rename(&tmp, target).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: &str, mode: u32, data: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: kind.into(),
            mode,
            data: data.into(),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(validate_path("/a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(validate_path("/a/./b/").unwrap(), PathBuf::from("a/b"));
        for bad in ["a/b", "/a/../b", "/..", "/", "", "/a\0b"] {
            let e = validate_path(bad).unwrap_err();
            assert_eq!(e.kind.as_str(), "invalid_argument", "{bad:?}: {e}");
        }
    }

    #[test]
    fn writes_files_dirs_and_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("hello\n");
        let entries = vec![
            entry("/etc/app/conf", "file", 0o600, &b64),
            entry("/data/cache", "dir", 0o700, ""),
            entry("/etc/app/link", "symlink", 0, "conf"),
            entry("/etc/app/default-mode", "file", 0, ""),
        ];
        write_entries(root.path(), &entries).unwrap();
        let conf = root.path().join("etc/app/conf");
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "hello\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&conf), 0o600);
        assert_eq!(mode(&root.path().join("data/cache")), 0o700);
        assert_eq!(mode(&root.path().join("etc/app/default-mode")), 0o644);
        assert_eq!(
            std::fs::read_link(root.path().join("etc/app/link")).unwrap(),
            PathBuf::from("conf")
        );
        // rewrite: replaced, no temp file left behind
        let b64 = base64::engine::general_purpose::STANDARD.encode("v2");
        write_entries(root.path(), &[entry("/etc/app/conf", "file", 0o644, &b64)]).unwrap();
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "v2");
        let names: Vec<_> = std::fs::read_dir(root.path().join("etc/app"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("unicri-tmp")), "{names:?}");
    }

    #[test]
    fn refuses_bad_entries_before_writing_any() {
        let root = tempfile::tempdir().unwrap();
        let entries = vec![
            entry("/ok", "file", 0, ""),
            entry("/x", "file", 0, "not base64!"),
        ];
        let e = write_entries(root.path(), &entries).unwrap_err();
        assert_eq!(e.kind.as_str(), "invalid_argument");
        assert!(e.message.contains("base64"), "{e}");
        assert!(!root.path().join("ok").exists());
        let e = write_entries(root.path(), &[entry("/y", "fifo", 0, "")]).unwrap_err();
        assert!(e.message.contains("unknown kind"), "{e}");
        let e = write_entries(root.path(), &[entry("/../etc", "dir", 0, "")]).unwrap_err();
        assert_eq!(e.kind.as_str(), "invalid_argument");
    }
}
