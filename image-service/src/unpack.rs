//! Layer unpack (blocking): decompress, hash the tar stream for the diff id, and extract into an
//! empty directory with overlayfs-native whiteouts.
//!
//! Invariants (each has a test in `tests/hostile.rs`):
//! * nothing is written outside `dest`: entry paths are cleaned lexically and may not be absolute
//!   or climb above the root; every parent component is checked with `symlink_metadata` and must
//!   be a real directory (we never write through a symlink, even one inside the layer);
//! * hard links must point at a non-directory extracted earlier in this layer;
//! * device nodes are refused (overlay whiteouts are produced by us, from `.wh.` entries);
//! * `trusted.overlay.*` xattrs from the tar are dropped (only we set `opaque`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::digest::HashingReader;
use crate::error::ImageError;

/// Whiteout prefix in OCI layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Opaque-directory marker in OCI layers.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// The overlayfs opaque xattr.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Compression detected from the first bytes of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// Detects compression by magic bytes.
pub fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Opens `path` and returns a reader of the decompressed stream.
pub fn open_decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    decompressed(fs::File::open(path)?)
}

/// Wraps a (possibly compressed) layer stream in the decompressor its magic bytes call for.
pub fn decompressed(reader: impl Read + 'static) -> io::Result<Box<dyn Read>> {
    let mut br = BufReader::with_capacity(256 * 1024, reader);
    let magic = br
        .fill_buf()?
        .get(..4)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok(match detect(&magic) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
        Compression::None => Box::new(br),
    })
}

struct Ctx<'a> {
    digest: &'a str,
    root: &'a Path,
    /// Non-directory paths extracted so far (hard-link targets).
    extracted: HashSet<PathBuf>,
    /// Directory mtimes, applied at the end (children change them).
    dir_times: Vec<(PathBuf, i64)>,
}

impl Ctx<'_> {
    fn hostile(&self, entry: &Path, reason: impl Into<String>) -> ImageError {
        ImageError::HostileLayer {
            digest: self.digest.to_string(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    fn io(&self, what: &str, path: &Path, e: io::Error) -> ImageError {
        ImageError::Unpack {
            digest: self.digest.to_string(),
            reason: format!("{what} {}: {e}", path.display()),
        }
    }
}

/// Cleans a tar path lexically: no absolute paths, no escaping `..`. Returns the relative path
/// (empty for the root itself).
pub fn clean_path(p: &Path) -> Result<PathBuf, String> {
    if p.as_os_str().as_bytes().first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err("path escapes the layer root".into());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    Ok(out)
}

/// Walks `rel` below `root` component by component without following symlinks. Missing
/// components are created (0755, root-owned) when `create`; anything that is not a real directory
/// is refused.
fn ensure_dirs(
    ctx: &Ctx<'_>,
    entry: &Path,
    rel: &Path,
    create: bool,
) -> Result<PathBuf, ImageError> {
    let mut cur = ctx.root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ctx.hostile(entry, format!("parent {} is a symlink", cur.display())));
            }
            Ok(_) => {
                return Err(ctx.hostile(
                    entry,
                    format!("parent {} is not a directory", cur.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&cur)
                    .map_err(|e| ctx.io("create dir", &cur, e))?;
                // umask may have dropped bits
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(|e| ctx.io("chmod", &cur, e))?;
            }
            Err(e) => return Err(ctx.io("stat", &cur, e)),
        }
    }
    Ok(cur)
}

/// Removes whatever is at `path` (never following symlinks) unless `keep_dir` and it is a dir.
/// Returns whether a directory was kept.
fn clear(ctx: &Ctx<'_>, path: &Path, keep_dir: bool) -> Result<bool, ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(path).map_err(|e| ctx.io("remove", path, e))?;
        }
        Ok(_) => fs::remove_file(path).map_err(|e| ctx.io("remove", path, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx.io("stat", path, e)),
    }
    Ok(false)
}

fn set_mtime(path: &Path, secs: i64) -> nix::Result<()> {
    let t = TimeSpec::new(secs, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
}

/// Unpacks the layer blob at `blob` into the empty directory `dest`, returning the diff id
/// (`sha256` of the uncompressed tar stream).
pub fn unpack_layer(blob: &Path, digest: &str, dest: &Path) -> Result<String, ImageError> {
    let reader = open_decompressed(blob).map_err(|e| ImageError::Unpack {
        digest: digest.to_string(),
        reason: format!("open {}: {e}", blob.display()),
    })?;
    unpack_stream(reader, digest, dest)
}

/// Unpacks a (decompressed) tar stream into `dest`, returning its sha256.
pub fn unpack_stream(reader: impl Read, digest: &str, dest: &Path) -> Result<String, ImageError> {
    let mut hashing = HashingReader::new(reader);
    let mut ctx = Ctx {
        digest,
        root: dest,
        extracted: HashSet::new(),
        dir_times: Vec::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive.entries().map_err(|e| ctx.io("read tar", dest, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ImageError::Unpack {
                digest: digest.to_string(),
                reason: format!("read tar entry: {e}"),
            })?;
            extract_entry(&mut ctx, &mut entry)?;
        }
    }
    for (p, t) in ctx.dir_times.iter().rev() {
        // A later entry may have removed the dir or replaced it (or a parent) with a file or a
        // symlink: only a path that is still a real directory all the way down is touched.
        if !still_real_dir(ctx.root, p) {
            continue;
        }
        set_mtime(p, *t).map_err(|e| ctx.io("set mtime", p, e.into()))?;
    }
    let (diff_id, _) = hashing.finish().map_err(|e| ImageError::Unpack {
        digest: digest.to_string(),
        reason: format!("read layer stream: {e}"),
    })?;
    Ok(diff_id)
}

/// Whether `p` (below `root`) is still a directory reached through real directories only.
fn still_real_dir(root: &Path, p: &Path) -> bool {
    let Ok(rel) = p.strip_prefix(root) else {
        return false;
    };
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            _ => return false,
        }
    }
    true
}

fn extract_entry<R: Read>(
    ctx: &mut Ctx<'_>,
    entry: &mut tar::Entry<'_, R>,
) -> Result<(), ImageError> {
    let et = entry.header().entry_type();
    if matches!(
        et,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        return Ok(());
    }
    let raw: PathBuf = entry
        .path()
        .map_err(|e| ctx.io("read entry path", ctx.root, e))?
        .into_owned();
    let rel = clean_path(&raw).map_err(|r| ctx.hostile(&raw, r))?;
    let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
        // the root directory itself: nothing to create
        return Ok(());
    };
    let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    let name_b = name.as_bytes();

    // Whiteouts.
    if name_b == WHITEOUT_OPAQUE.as_bytes() {
        let dir = ensure_dirs(ctx, &raw, &parent_rel, true)?;
        xattr::set(&dir, OPAQUE_XATTR, b"y").map_err(|e| ctx.io("set opaque xattr", &dir, e))?;
        return Ok(());
    }
    if let Some(hidden) = name_b.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ctx.hostile(&raw, "invalid whiteout name"));
        }
        let dir = ensure_dirs(ctx, &raw, &parent_rel, true)?;
        let target = dir.join(OsStr::from_bytes(hidden));
        clear(ctx, &target, false)?;
        mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| ctx.io("mknod whiteout", &target, e.into()))?;
        let (uid, gid) = owner(ctx, &raw, entry.header())?;
        std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
            .map_err(|e| ctx.io("lchown", &target, e))?;
        ctx.extracted.insert(rel);
        return Ok(());
    }

    let dir = ensure_dirs(ctx, &raw, &parent_rel, true)?;
    let target = dir.join(&name);
    let header = entry.header().clone();
    let (uid, gid) = owner(ctx, &raw, &header)?;
    let mode = numeric_or_zero(&header.as_old().mode, || header.mode().map(u64::from))
        .map_err(|e| ctx.io("read mode", &target, e))?
        & 0o7777;
    let mode = u32::try_from(mode).unwrap_or(0);
    let mtime = header.mtime().unwrap_or(0);
    let mtime = i64::try_from(mtime).unwrap_or(0);

    match et {
        EntryType::Directory => {
            if !clear(ctx, &target, true)? {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&target)
                    .map_err(|e| ctx.io("create dir", &target, e))?;
            }
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .map_err(|e| ctx.io("lchown", &target, e))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(|e| ctx.io("chmod", &target, e))?;
            apply_xattrs(ctx, entry, &target)?;
            ctx.dir_times.push((target, mtime));
            return Ok(());
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            clear(ctx, &target, false)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(|e| ctx.io("create file", &target, e))?;
            io::copy(entry, &mut f).map_err(|e| ctx.io("write file", &target, e))?;
            drop(f);
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .map_err(|e| ctx.io("lchown", &target, e))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(|e| ctx.io("chmod", &target, e))?;
            apply_xattrs(ctx, entry, &target)?;
        }
        EntryType::Symlink => {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| ctx.hostile(&raw, "symlink without a target"))?
                .into_owned();
            clear(ctx, &target, false)?;
            // Stored verbatim; never followed by us.
            std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                .map_err(|e| ctx.io("create symlink", &target, e))?;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .map_err(|e| ctx.io("lchown", &target, e))?;
        }
        EntryType::Link => {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| ctx.hostile(&raw, "hard link without a target"))?
                .into_owned();
            let link_path = PathBuf::from(OsStr::from_bytes(&link));
            let link_rel = clean_path(&link_path)
                .map_err(|r| ctx.hostile(&raw, format!("hard link target: {r}")))?;
            if !ctx.extracted.contains(&link_rel) {
                return Err(ctx.hostile(
                    &raw,
                    "hard link target was not extracted earlier in this layer",
                ));
            }
            let link_parent = link_rel.parent().map(Path::to_path_buf).unwrap_or_default();
            let link_dir = ensure_dirs(ctx, &raw, &link_parent, false)?;
            let src = link_dir.join(link_rel.file_name().unwrap_or_default());
            match fs::symlink_metadata(&src) {
                Ok(m) if !m.file_type().is_dir() => {}
                _ => return Err(ctx.hostile(&raw, "hard link target is missing or a directory")),
            }
            if src == target {
                return Ok(());
            }
            clear(ctx, &target, false)?;
            fs::hard_link(&src, &target).map_err(|e| ctx.io("create hard link", &target, e))?;
            ctx.extracted.insert(rel);
            return Ok(());
        }
        EntryType::Fifo => {
            clear(ctx, &target, false)?;
            nix::unistd::mkfifo(&target, Mode::from_bits_truncate(0o600))
                .map_err(|e| ctx.io("mkfifo", &target, e.into()))?;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .map_err(|e| ctx.io("lchown", &target, e))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(|e| ctx.io("chmod", &target, e))?;
            apply_xattrs(ctx, entry, &target)?;
        }
        EntryType::Char | EntryType::Block => {
            return Err(ctx.hostile(&raw, "device nodes are not allowed in layers"));
        }
        other => {
            return Err(ctx.hostile(&raw, format!("unsupported tar entry type {other:?}")));
        }
    }
    set_mtime(&target, mtime).map_err(|e| ctx.io("set mtime", &target, e.into()))?;
    ctx.extracted.insert(rel);
    Ok(())
}

/// Reads a numeric header field the way Go's archive/tar (and so docker and containerd) does:
/// a field of only NULs and spaces is 0, not an error. Real layers contain such fields.
fn numeric_or_zero(
    field: &[u8],
    parse: impl FnOnce() -> std::io::Result<u64>,
) -> std::io::Result<u64> {
    if field.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(0);
    }
    parse()
}

fn owner(ctx: &Ctx<'_>, raw: &Path, h: &tar::Header) -> Result<(u32, u32), ImageError> {
    let old = h.as_old();
    let uid = numeric_or_zero(&old.uid, || h.uid()).map_err(|e| ctx.io("read uid", raw, e))?;
    let gid = numeric_or_zero(&old.gid, || h.gid()).map_err(|e| ctx.io("read gid", raw, e))?;
    let uid = u32::try_from(uid).map_err(|_| ctx.hostile(raw, "uid out of range"))?;
    let gid = u32::try_from(gid).map_err(|_| ctx.hostile(raw, "gid out of range"))?;
    Ok((uid, gid))
}

fn apply_xattrs<R: Read>(
    ctx: &Ctx<'_>,
    entry: &mut tar::Entry<'_, R>,
    target: &Path,
) -> Result<(), ImageError> {
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| ctx.io("read pax headers", target, e))?
    else {
        return Ok(());
    };
    for ext in exts {
        let ext = ext.map_err(|e| ctx.io("read pax header", target, e))?;
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if name.starts_with("trusted.overlay.") {
            tracing::warn!(layer = ctx.digest, path = %target.display(), xattr = name, "dropping overlay xattr from layer");
            continue;
        }
        xattr::set(target, name, ext.value_bytes()).map_err(|e| ctx.io("set xattr", target, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    fn hdr(path: &str, et: EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).expect("path");
        h.set_entry_type(et);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        h
    }

    fn build(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().expect("finish tar")
    }

    #[test]
    fn clean_paths() {
        assert_eq!(
            clean_path(Path::new("./a/b")).expect("ok"),
            PathBuf::from("a/b")
        );
        assert_eq!(
            clean_path(Path::new("a/../b")).expect("ok"),
            PathBuf::from("b")
        );
        assert_eq!(clean_path(Path::new("./")).expect("ok"), PathBuf::new());
        assert!(clean_path(Path::new("/etc/passwd")).is_err());
        assert!(clean_path(Path::new("../x")).is_err());
        assert!(clean_path(Path::new("a/../../x")).is_err());
    }

    #[test]
    fn nul_numeric_fields_read_as_zero_like_go_tar() {
        let mut h = hdr("f", EntryType::Regular, 2, 0o644);
        {
            let old = h.as_old_mut();
            old.uid = [0; 8];
            old.gid = [0; 8];
        }
        h.set_cksum();
        let tar = build(|b| b.append(&h, &b"hi"[..]).expect("append"));
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("fs");
        fs::create_dir(&dest).expect("mkdir");
        unpack_stream(&tar[..], "sha256:test", &dest).expect("unpack with NUL uid/gid");
        let m = fs::symlink_metadata(dest.join("f")).expect("f");
        assert_eq!((m.uid(), m.gid()), (0, 0));
        assert_eq!(fs::read(dest.join("f")).expect("read"), b"hi");
    }

    #[test]
    fn detect_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(b"abc"), Compression::None);
        assert_eq!(detect(b""), Compression::None);
    }

    #[test]
    fn every_entry_kind() {
        let tar = build(|b| {
            b.append(&hdr("./etc/", EntryType::Directory, 0, 0o755), io::empty())
                .expect("a");
            b.append(
                &hdr("etc/passwd", EntryType::Regular, 5, 0o644),
                &b"root\n"[..],
            )
            .expect("a");
            b.append(&hdr("bin/su", EntryType::Regular, 2, 0o4755), &b"su"[..])
                .expect("a"); // missing parent
            b.append(&hdr("tmp/", EntryType::Directory, 0, 0o1777), io::empty())
                .expect("a");
            let mut l = hdr("etc/link", EntryType::Symlink, 0, 0o777);
            l.set_link_name("../outside/whatever").expect("link");
            l.set_cksum();
            b.append(&l, io::empty()).expect("a");
            let mut hl = hdr("etc/passwd-hard", EntryType::Link, 0, 0o644);
            hl.set_link_name("./etc/passwd").expect("link");
            hl.set_cksum();
            b.append(&hl, io::empty()).expect("a");
            b.append(&hdr("run/fifo", EntryType::Fifo, 0, 0o640), io::empty())
                .expect("a");
            b.append(
                &hdr("var/.wh.cache", EntryType::Regular, 0, 0o600),
                io::empty(),
            )
            .expect("a");
            b.append(
                &hdr("opt/.wh..wh..opq", EntryType::Regular, 0, 0o600),
                io::empty(),
            )
            .expect("a");
            // xattr via PAX
            b.append_pax_extensions([
                ("SCHILY.xattr.user.test", &b"v1"[..]),
                ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
            ])
            .expect("pax");
            b.append(
                &hdr("etc/withxattr", EntryType::Regular, 1, 0o600),
                &b"x"[..],
            )
            .expect("a");
            // a later duplicate replaces
            b.append(&hdr("etc/passwd2", EntryType::Regular, 1, 0o600), &b"1"[..])
                .expect("a");
            b.append(&hdr("etc/passwd2", EntryType::Regular, 1, 0o600), &b"2"[..])
                .expect("a");
        });
        let d = tempfile::tempdir().expect("tempdir");
        let diff = unpack_stream(&tar[..], "sha256:test", d.path()).expect("unpack");
        assert_eq!(diff, crate::digest::sha256_digest(&tar));
        let r = d.path();
        let m = fs::symlink_metadata(r.join("etc/passwd")).expect("passwd");
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
        assert_eq!(m.mtime(), 1_600_000_000);
        assert_eq!(fs::read(r.join("etc/passwd")).expect("read"), b"root\n");
        assert_eq!(
            fs::symlink_metadata(r.join("bin/su")).expect("su").mode() & 0o7777,
            0o4755
        );
        let bin = fs::symlink_metadata(r.join("bin")).expect("bin");
        assert_eq!((bin.mode() & 0o7777, bin.uid()), (0o755, 0));
        let tmp = fs::symlink_metadata(r.join("tmp")).expect("tmp");
        assert_eq!(tmp.mode() & 0o7777, 0o1777);
        assert_eq!(tmp.mtime(), 1_600_000_000);
        assert_eq!(
            fs::symlink_metadata(r.join("etc")).expect("etc").mtime(),
            1_600_000_000
        );
        assert_eq!(
            fs::read_link(r.join("etc/link")).expect("link"),
            PathBuf::from("../outside/whatever")
        );
        assert_eq!(
            fs::symlink_metadata(r.join("etc/link")).expect("l").uid(),
            1000
        );
        let h = fs::symlink_metadata(r.join("etc/passwd-hard")).expect("hard");
        assert_eq!(h.ino(), m.ino());
        assert!(
            fs::symlink_metadata(r.join("run/fifo"))
                .expect("fifo")
                .file_type()
                .is_fifo()
        );
        let wh = fs::symlink_metadata(r.join("var/cache")).expect("whiteout");
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(fs::symlink_metadata(r.join("var/.wh.cache")).is_err());
        assert_eq!(
            xattr::get(r.join("opt"), OPAQUE_XATTR).expect("xattr"),
            Some(b"y".to_vec())
        );
        assert!(fs::symlink_metadata(r.join("opt/.wh..wh..opq")).is_err());
        assert_eq!(
            xattr::get(r.join("etc/withxattr"), "user.test").expect("x"),
            Some(b"v1".to_vec())
        );
        assert_eq!(
            xattr::get(r.join("etc/withxattr"), "trusted.overlay.redirect").expect("x"),
            None
        );
        assert_eq!(fs::read(r.join("etc/passwd2")).expect("read"), b"2");
    }

    #[test]
    fn compressed_layers() {
        let tar = build(|b| {
            b.append(&hdr("a", EntryType::Regular, 1, 0o644), &b"a"[..])
                .expect("a");
        });
        let expect = crate::digest::sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &tar).expect("gz");
        let gz = gz.finish().expect("gz");
        let zs = zstd::encode_all(&tar[..], 3).expect("zstd");
        for data in [tar.clone(), gz, zs] {
            let d = tempfile::tempdir().expect("tempdir");
            let blob = d.path().join("blob");
            fs::write(&blob, &data).expect("write");
            let out = d.path().join("out");
            fs::create_dir(&out).expect("mkdir");
            assert_eq!(
                unpack_layer(&blob, "sha256:x", &out).expect("unpack"),
                expect
            );
            assert_eq!(fs::read(out.join("a")).expect("read"), b"a");
        }
    }

    #[test]
    fn deferred_dir_mtime_never_follows_a_parent_replaced_by_a_symlink() {
        use std::os::unix::fs::MetadataExt as _;
        let outside = tempfile::tempdir().expect("tempdir");
        fs::create_dir(outside.path().join("b")).expect("mkdir");
        set_mtime(&outside.path().join("b"), 1_000).expect("mtime");
        let link = outside.path().display().to_string();
        let tar = build(|b| {
            b.append(&hdr("a/", EntryType::Directory, 0, 0o755), io::empty())
                .expect("a");
            b.append(&hdr("a/b/", EntryType::Directory, 0, 0o755), io::empty())
                .expect("a");
            // `a` (and with it `a/b`) is replaced by a symlink out of the layer
            let mut l = hdr("a", EntryType::Symlink, 0, 0o777);
            l.set_link_name(&link).expect("link");
            l.set_cksum();
            b.append(&l, io::empty()).expect("a");
        });
        let d = tempfile::tempdir().expect("tempdir");
        let _ = unpack_stream(&tar[..], "sha256:test", d.path());
        assert_eq!(
            fs::symlink_metadata(outside.path().join("b"))
                .expect("b")
                .mtime(),
            1_000,
            "mtime of a directory outside the layer root was changed"
        );
    }

    #[test]
    fn dir_replaced_by_file_later_in_layer_unpacks() {
        let tar = build(|b| {
            b.append(&hdr("a/", EntryType::Directory, 0, 0o755), io::empty())
                .expect("a");
            b.append(&hdr("a/b/", EntryType::Directory, 0, 0o755), io::empty())
                .expect("a");
            b.append(&hdr("a", EntryType::Regular, 1, 0o644), &b"a"[..])
                .expect("a");
        });
        let d = tempfile::tempdir().expect("tempdir");
        unpack_stream(&tar[..], "sha256:test", d.path()).expect("unpack");
        assert_eq!(fs::read(d.path().join("a")).expect("a"), b"a");
    }

    #[test]
    fn whiteout_replaces_existing_and_dir_replaced_by_file() {
        let tar = build(|b| {
            b.append(&hdr("d/x", EntryType::Regular, 1, 0o644), &b"x"[..])
                .expect("a");
            b.append(&hdr("d/.wh.x", EntryType::Regular, 0, 0o644), io::empty())
                .expect("a");
            b.append(&hdr("e/f", EntryType::Regular, 1, 0o644), &b"f"[..])
                .expect("a");
            b.append(&hdr("e", EntryType::Regular, 1, 0o644), &b"e"[..])
                .expect("a");
        });
        let d = tempfile::tempdir().expect("tempdir");
        unpack_stream(&tar[..], "sha256:test", d.path()).expect("unpack");
        assert!(
            fs::symlink_metadata(d.path().join("d/x"))
                .expect("x")
                .file_type()
                .is_char_device()
        );
        assert_eq!(fs::read(d.path().join("e")).expect("e"), b"e");
    }
}
