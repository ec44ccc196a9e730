//! Layer unpack (blocking): decompress, hash the tar stream for the diff id, and extract into an
//! empty directory with overlayfs-native whiteouts. A wasm layer (not a tar) "unpacks" to a
//! directory holding just the module file ([`unpack_wasm_stream`]).
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

/// Largest body accepted for a tar extension header (PAX `x`/`g`, GNU long name `L` / long link
/// `K`). The `tar` crate reads these bodies fully into memory whatever size their header
/// declares; Go's `archive/tar` (and so docker and containerd) refuses the same ones above 1 MiB.
pub(crate) const MAX_EXTENSION_HEADER: u64 = 1 << 20;

const BLOCK: usize = 512;

/// Why a [`TarGuard`] refused a stream: the payload of the `io::Error` (kind `InvalidData`) it
/// returns, so callers can report it as a hostile layer.
#[derive(Debug)]
pub(crate) struct OversizedHeader {
    /// The extension header's name field (lossy).
    pub(crate) name: String,
    /// Its typeflag.
    pub(crate) kind: char,
    /// The body size it declares.
    pub(crate) size: u64,
}

impl OversizedHeader {
    /// The guard's refusal carried by `e`, if that is what `e` is.
    pub(crate) fn of(e: &io::Error) -> Option<&OversizedHeader> {
        e.get_ref()?.downcast_ref()
    }
}

impl std::fmt::Display for OversizedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tar extension header '{}' declares {} bytes (limit {MAX_EXTENSION_HEADER})",
            self.kind, self.size
        )
    }
}

impl std::error::Error for OversizedHeader {}

/// Where a [`TarGuard`] is in the tar block structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The next block is a header (or the end-of-archive marker).
    Header,
    /// The next block is a GNU sparse extension block; the entry's data follows the last one.
    SparseExt { body: u64, pad: u64 },
    /// `body` bytes of entry data, then `pad` bytes of padding to the next block.
    Data { body: u64, pad: u64 },
    /// Past the end-of-archive marker or a short block: everything passes through untouched.
    Tail,
    /// After a header the `tar` crate refuses too (size field not a number, size overflow): the
    /// structure cannot be followed, so any further read fails.
    Broken,
}

/// A reader between a layer stream and `tar::Archive` that follows the tar block structure
/// exactly as the `tar` crate (0.4) does and fails, before `tar` reads any of it, on an extension
/// header (`x`, `g`, `L`, `K`) declaring more than [`MAX_EXTENSION_HEADER`] bytes. Every byte is
/// passed through unchanged; at most one block is buffered. To stay in step with `tar` it applies
/// a PAX `size` record to the next entry and skips GNU sparse extension blocks, as `tar` does.
pub(crate) struct TarGuard<R> {
    inner: R,
    step: Step,
    /// The block being assembled (`Header`/`SparseExt`) or handed out (`serving`).
    blk: [u8; BLOCK],
    /// Bytes of `blk` read from `inner`.
    filled: usize,
    /// While handing out a completed block: bytes handed out and the step that follows it.
    serving: Option<(usize, Step)>,
    /// The `size` record of the PAX header that applies to the next entry.
    pending_size: Option<u64>,
    /// Scans the body of the PAX header being read.
    pax: Option<PaxSizeScan>,
}

impl<R: Read> TarGuard<R> {
    /// Wraps `inner`, which must be at the start of a tar stream.
    pub(crate) fn new(inner: R) -> Self {
        TarGuard {
            inner,
            step: Step::Header,
            blk: [0; BLOCK],
            filled: 0,
            serving: None,
            pending_size: None,
            pax: None,
        }
    }

    /// Decides what follows the (full) header block in `blk`, mirroring
    /// `tar::archive::EntriesFields::{next_entry, next_entry_raw, parse_sparse_header}`.
    fn after_header(&mut self) -> Result<Step, OversizedHeader> {
        let b = &self.blk;
        if b.iter().all(|&x| x == 0) {
            return Ok(Step::Tail);
        }
        let kind = b[156];
        let Some(size) = header_size(&b[124..136]) else {
            return Ok(Step::Broken);
        };
        let extension = matches!(kind, b'x' | b'g' | b'L' | b'K');
        if extension && size > MAX_EXTENSION_HEADER {
            let name = &b[..100];
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            return Err(OversizedHeader {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                kind: char::from(kind),
                size,
            });
        }
        let ustar = &b[257..263] == b"ustar\0" && &b[263..265] == b"00";
        let gnu = &b[257..263] == b"ustar " && &b[263..265] == b" \0";
        // A PAX `size` record overrides the size field of the next non-extension header.
        let body = if extension {
            size
        } else {
            self.pending_size.unwrap_or(size)
        };
        // `tar` consumes `x`, `L` and `K` with a ustar/GNU magic while assembling one entry; any
        // other header is that entry, and the PAX header's effect ends with it.
        if !((ustar || gnu) && matches!(kind, b'x' | b'L' | b'K')) {
            self.pending_size = None;
        }
        if (ustar || gnu) && kind == b'x' {
            self.pax = Some(PaxSizeScan::default());
        }
        let Some(padded) = body.checked_add(BLOCK as u64 - 1) else {
            return Ok(Step::Broken);
        };
        let pad = (padded & !(BLOCK as u64 - 1)) - body;
        Ok(if kind == b'S' && gnu && b[482] == 1 {
            Step::SparseExt { body, pad }
        } else {
            Step::Data { body, pad }
        })
    }
}

/// The size field as the `tar` crate reads it: base-256 (of the last 8 bytes) when the high bit
/// of the first byte is set, else octal text up to the first NUL with whitespace trimmed.
fn header_size(field: &[u8]) -> Option<u64> {
    if field.first()? & 0x80 != 0 {
        let tail = field.get(field.len().checked_sub(8)?..)?;
        return Some(tail.iter().fold(0, |v, &b| (v << 8) | u64::from(b)));
    }
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?;
    u64::from_str_radix(text.trim(), 8).ok()
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((done, after)) = self.serving {
                let n = buf.len().min(self.filled - done);
                buf[..n].copy_from_slice(&self.blk[done..done + n]);
                if done + n == self.filled {
                    self.serving = None;
                    self.filled = 0;
                    self.step = after;
                } else {
                    self.serving = Some((done + n, after));
                }
                return Ok(n);
            }
            match self.step {
                Step::Header | Step::SparseExt { .. } => {
                    while self.filled < BLOCK {
                        let n = self.inner.read(&mut self.blk[self.filled..])?;
                        if n == 0 {
                            break;
                        }
                        self.filled += n;
                    }
                    if self.filled == 0 {
                        return Ok(0);
                    }
                    let after = if self.filled < BLOCK {
                        // short block: `tar` fails on it; nothing more to follow
                        Step::Tail
                    } else if let Step::SparseExt { body, pad } = self.step {
                        if self.blk[504] == 1 {
                            self.step
                        } else {
                            Step::Data { body, pad }
                        }
                    } else {
                        match self.after_header() {
                            Ok(s) => s,
                            Err(e) => {
                                self.step = Step::Broken;
                                self.filled = 0;
                                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                            }
                        }
                    };
                    self.serving = Some((0, after));
                }
                Step::Data { body: 0, pad: 0 } => {
                    if let Some(scan) = self.pax.take() {
                        self.pending_size = scan.finish();
                    }
                    self.step = Step::Header;
                }
                Step::Data { body, pad } => {
                    let want = if body > 0 { body } else { pad };
                    let len = usize::try_from(want).map_or(buf.len(), |w| w.min(buf.len()));
                    let n = self.inner.read(&mut buf[..len])?;
                    let got = n as u64;
                    if body > 0 {
                        if let Some(scan) = &mut self.pax {
                            scan.feed(&buf[..n]);
                        }
                        self.step = Step::Data {
                            body: body - got,
                            pad,
                        };
                    } else {
                        self.step = Step::Data {
                            body,
                            pad: pad - got,
                        };
                    }
                    return Ok(n);
                }
                Step::Tail => return self.inner.read(buf),
                Step::Broken => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "tar stream cannot be followed past a corrupt header",
                    ));
                }
            }
        }
    }
}

/// Incremental `str::parse::<u64>()`: an optional leading `+`, then one or more ASCII digits.
#[derive(Default)]
struct Decimal {
    seen: usize,
    digits: usize,
    value: u64,
    bad: bool,
}

impl Decimal {
    fn push(&mut self, b: u8) {
        if self.seen == 0 && b == b'+' {
        } else if b.is_ascii_digit() {
            self.digits += 1;
            match self
                .value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
            {
                Some(v) => self.value = v,
                None => self.bad = true,
            }
        } else {
            self.bad = true;
        }
        self.seen += 1;
    }

    fn get(&self) -> Option<u64> {
        (!self.bad && self.digits > 0).then_some(self.value)
    }
}

#[derive(Default, PartialEq, Eq)]
enum PaxPhase {
    /// The record length, up to the first space.
    #[default]
    Len,
    /// The keyword, up to the first `=`.
    Key,
    /// The value, up to the newline.
    Value,
}

/// Finds the `size` record of a PAX header body fed in pieces, with the result
/// `tar::pax::pax_extensions_value(body, "size")` would give: records are split on `\n`; an
/// empty line ends them; the first malformed record (no space, a length that is not the line's,
/// no `=`) or the first `size` record ends the search.
#[derive(Default)]
struct PaxSizeScan {
    /// Set once decided.
    result: Option<Option<u64>>,
    phase: PaxPhase,
    /// Bytes of the current line so far (without the newline).
    line: u64,
    len: Decimal,
    /// Bytes of keyword so far, and whether they are a prefix of `size`.
    key: usize,
    key_prefix: bool,
    is_size: bool,
    value: Decimal,
}

impl PaxSizeScan {
    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.result.is_some() {
                return;
            }
            if b == b'\n' {
                self.end_line();
                continue;
            }
            self.line += 1;
            match self.phase {
                PaxPhase::Len if b == b' ' => {
                    self.phase = PaxPhase::Key;
                    self.key = 0;
                    self.key_prefix = true;
                }
                PaxPhase::Len => self.len.push(b),
                PaxPhase::Key if b == b'=' => {
                    self.is_size = self.key_prefix && self.key == 4;
                    self.phase = PaxPhase::Value;
                }
                PaxPhase::Key => {
                    self.key_prefix &= b"size".get(self.key) == Some(&b);
                    self.key += 1;
                }
                PaxPhase::Value => {
                    if self.is_size {
                        self.value.push(b);
                    }
                }
            }
        }
    }

    fn end_line(&mut self) {
        // malformed: empty line (the end), no space, a length that is not the line's, no `=`
        let malformed = self.line == 0
            || self.phase != PaxPhase::Value
            || self.len.get() != Some(self.line + 1);
        if malformed {
            self.result = Some(None);
        } else if self.is_size {
            self.result = Some(self.value.get());
        } else {
            *self = PaxSizeScan::default();
        }
    }

    /// The `size` value, once the whole body has been fed.
    fn finish(mut self) -> Option<u64> {
        if self.result.is_none() {
            self.end_line();
        }
        self.result.flatten()
    }
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
        // hashing sees every byte (`finish` drains what tar leaves); the guard sits between it
        // and tar so an oversized extension header fails before tar buffers it
        let mut archive = tar::Archive::new(TarGuard::new(&mut hashing));
        let entries = archive.entries().map_err(|e| ctx.io("read tar", dest, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| match OversizedHeader::of(&e) {
                Some(o) => ctx.hostile(Path::new(&o.name), o.to_string()),
                None => ImageError::Unpack {
                    digest: digest.to_string(),
                    reason: format!("read tar entry: {e}"),
                },
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

/// Unpacks the wasm layer blob at `blob` (a bare module, not a tar) into the empty directory
/// `dest` as the single file `file_name`; see [`unpack_wasm_stream`].
pub fn unpack_wasm_layer(
    blob: &Path,
    digest: &str,
    dest: &Path,
    file_name: &str,
) -> Result<String, ImageError> {
    let f = fs::File::open(blob).map_err(|e| ImageError::Unpack {
        digest: digest.to_string(),
        reason: format!("open {}: {e}", blob.display()),
    })?;
    unpack_wasm_stream(f, digest, dest, file_name)
}

/// Writes a wasm layer stream (the module itself, uncompressed) into the empty directory `dest`
/// as the single file `file_name` (mode 0644), returning the sha256 of the stream: a wasm
/// layer's diff id is its blob digest. `file_name` must be a safe single file name
/// ([`crate::manifest::is_safe_module_name`]); the file is created new, never through a link.
pub fn unpack_wasm_stream(
    reader: impl Read,
    digest: &str,
    dest: &Path,
    file_name: &str,
) -> Result<String, ImageError> {
    if !crate::manifest::is_safe_module_name(file_name) {
        return Err(ImageError::Unpack {
            digest: digest.to_string(),
            reason: format!("module file name {file_name:?} is not a safe file name"),
        });
    }
    let path = dest.join(file_name);
    let io_err = |op: &'static str, e| ImageError::io(op, &path, e);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| io_err("create", e))?;
    let mut hashing = HashingReader::new(reader);
    io::copy(&mut hashing, &mut f).map_err(|e| ImageError::Unpack {
        digest: digest.to_string(),
        reason: format!("write module {}: {e}", path.display()),
    })?;
    // the umask may have narrowed the mode at create
    f.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(|e| io_err("chmod", e))?;
    let (diff_id, _) = hashing.finish().map_err(|e| ImageError::Unpack {
        digest: digest.to_string(),
        reason: format!("read layer stream: {e}"),
    })?;
    Ok(diff_id)
}

/// The module file name in the published snapshot `fs_dir` of a wasm layer: the snapshot must
/// hold exactly one entry, a regular file with a UTF-8 name. A snapshot is shared by chain id,
/// so this is the name the first unpack of that layer gave it (its title then).
pub fn wasm_snapshot_module(fs_dir: &Path, digest: &str) -> Result<String, ImageError> {
    let not_wasm = |why: &str| ImageError::Unpack {
        digest: digest.to_string(),
        reason: format!(
            "snapshot {} is not a wasm module snapshot: {why}",
            fs_dir.display()
        ),
    };
    let mut names = Vec::new();
    for ent in fs::read_dir(fs_dir).map_err(|e| ImageError::io("read dir", fs_dir, e))? {
        let ent = ent.map_err(|e| ImageError::io("read dir", fs_dir, e))?;
        names.push(ent.file_name());
    }
    let [name] = names.as_slice() else {
        return Err(not_wasm(&format!("{} entries, expected 1", names.len())));
    };
    let path = fs_dir.join(name);
    let meta = fs::symlink_metadata(&path).map_err(|e| ImageError::io("stat", &path, e))?;
    if !meta.file_type().is_file() {
        return Err(not_wasm("its entry is not a regular file"));
    }
    name.to_str()
        .filter(|n| crate::manifest::is_safe_module_name(n))
        .map(str::to_string)
        .ok_or_else(|| not_wasm("its file name is not a safe utf-8 name"))
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

    /// Hands out at most `max` bytes per read, so blocks straddle reads.
    struct Chunky<R> {
        inner: R,
        max: usize,
    }

    impl<R: Read> Read for Chunky<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.max);
            self.inner.read(&mut buf[..n])
        }
    }

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        n: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.n.set(self.n.get() + n as u64);
            Ok(n)
        }
    }

    /// One PAX record, `"<len> <key>=<value>\n"` with `len` counting itself.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let rest = key.len() + value.len() + 3;
        let mut len = rest;
        loop {
            let total = rest + len.to_string().len();
            if total == len {
                break;
            }
            len = total;
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    /// An extension (or any) header with a ustar or GNU magic.
    fn ext_header(kind: EntryType, size: u64, gnu: bool) -> tar::Header {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_path(if gnu { "././@LongLink" } else { "PaxHeaders/x" })
            .expect("path");
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    /// 300 bytes: too long for a ustar header, set by a PAX `path` record.
    fn pax_path() -> String {
        format!("x/{}/{}", "q".repeat(150), "r".repeat(147))
    }

    fn long_path() -> String {
        format!("{}/file", "d".repeat(140)) + &"p".repeat(150)
    }

    fn long_target() -> String {
        format!("../{}", "t".repeat(200))
    }

    /// A valid layer with a PAX path of 300 chars, a GNU long name, a GNU long link name,
    /// entries of odd sizes, followed by `trailer` after the end-of-archive blocks.
    fn sample_tar(trailer: &[u8]) -> Vec<u8> {
        let mut tar = build(|b| {
            b.append(&hdr("a", EntryType::Regular, 3, 0o644), &b"abc"[..])
                .expect("a");
            let mut pax = pax_record("path", pax_path().as_bytes());
            pax.extend(pax_record("mtime", b"1600000000.5"));
            b.append(
                &ext_header(EntryType::XHeader, pax.len() as u64, false),
                &pax[..],
            )
            .expect("a");
            let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
            b.append(&hdr("short", EntryType::Regular, 1000, 0o644), &body[..])
                .expect("a");
            let mut h = hdr("placeholder", EntryType::Regular, 513, 0o600);
            b.append_data(&mut h, long_path(), &[7u8; 513][..])
                .expect("a");
            let mut h = hdr("placeholder", EntryType::Symlink, 0, 0o777);
            b.append_link(&mut h, "l/link", long_target()).expect("a");
            b.append(&hdr("z/", EntryType::Directory, 0, 0o755), io::empty())
                .expect("a");
        });
        tar.extend_from_slice(trailer);
        tar
    }

    /// (path, type, size, link) of an entry.
    type Listed = (PathBuf, EntryType, u64, Option<PathBuf>);

    /// Every entry `tar` yields from `r`.
    fn listing(r: impl Read) -> io::Result<Vec<Listed>> {
        let mut a = tar::Archive::new(r);
        let mut out = Vec::new();
        for e in a.entries()? {
            let e = e?;
            out.push((
                e.path()?.into_owned(),
                e.header().entry_type(),
                e.size(),
                e.link_name()?.map(|l| l.into_owned()),
            ));
        }
        Ok(out)
    }

    /// Reads `r` to the end with reads of at most `chunk` bytes.
    fn read_chunked(mut r: impl Read, chunk: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            match r.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// A tar stream: `before`, an extension header of `kind` declaring `size` bytes, `size` zero
    /// bytes (generated, never allocated) and the end-of-archive blocks.
    fn bomb(before: &[u8], kind: EntryType, gnu: bool, size: u64) -> impl Read + 'static {
        let h = ext_header(kind, size, gnu);
        io::Cursor::new(before.to_vec())
            .chain(io::Cursor::new(h.as_bytes().to_vec()))
            .chain(io::repeat(0).take(size))
            .chain(io::Cursor::new(vec![0u8; 1024]))
    }

    const CHUNKS: [usize; 3] = [1, 7, 4096];

    #[test]
    fn guard_passes_valid_streams_through_unchanged_in_any_chunking() {
        let trailer = b"bytes after the end-of-archive marker: \x00\x01 not tar at all";
        let tar = sample_tar(trailer);
        let plain = listing(&tar[..]).expect("list");
        assert_eq!(plain.len(), 5, "{plain:?}");
        for inner in CHUNKS {
            for outer in CHUNKS {
                let g = TarGuard::new(Chunky {
                    inner: &tar[..],
                    max: inner,
                });
                let out = read_chunked(g, outer).expect("read");
                assert!(out == tar, "inner {inner} outer {outer}: stream changed");
                let g = TarGuard::new(Chunky {
                    inner: &tar[..],
                    max: inner,
                });
                let l = listing(Chunky {
                    inner: g,
                    max: outer,
                })
                .expect("list");
                assert_eq!(l, plain, "inner {inner} outer {outer}");
            }
        }
        // a stream with no end-of-archive marker, and an empty one
        let cut = &tar[..tar.len() - trailer.len() - 1024];
        let out = read_chunked(TarGuard::new(cut), 7).expect("read");
        assert!(out == cut);
        assert!(
            read_chunked(TarGuard::new(&[][..]), 7)
                .expect("read")
                .is_empty()
        );
    }

    #[test]
    fn guard_refuses_oversized_extension_headers_before_reading_them() {
        let before = build(|b| {
            b.append(&hdr("a", EntryType::Regular, 3, 0o644), &b"abc"[..])
                .expect("a");
        });
        let before = &before[..1024]; // without the end-of-archive blocks
        let cases = [
            (EntryType::XHeader, false),
            (EntryType::XGlobalHeader, false),
            (EntryType::GNULongName, true),
            (EntryType::GNULongLink, true),
            (EntryType::XHeader, true),
        ];
        for (kind, gnu) in cases {
            for chunk in CHUNKS {
                let n = std::rc::Rc::new(std::cell::Cell::new(0));
                let src = Counting {
                    inner: Chunky {
                        inner: bomb(before, kind, gnu, 64 << 20),
                        max: chunk,
                    },
                    n: n.clone(),
                };
                let e = read_chunked(TarGuard::new(src), chunk).expect_err("refused");
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                let o = OversizedHeader::of(&e).expect("guard error");
                assert_eq!((o.kind, o.size), (char::from(kind.as_byte()), 64 << 20));
                assert_eq!(
                    n.get(),
                    1024 + 512,
                    "{kind:?} chunk {chunk}: read past the header"
                );
            }
        }
        // exactly the limit passes the guard, one byte more does not
        let at = read_chunked(
            TarGuard::new(bomb(
                &[],
                EntryType::GNULongName,
                true,
                MAX_EXTENSION_HEADER,
            )),
            4096,
        )
        .expect("at the limit");
        assert_eq!(at.len() as u64, 512 + MAX_EXTENSION_HEADER + 1024);
        let over = bomb(&[], EntryType::GNULongName, true, MAX_EXTENSION_HEADER + 1);
        assert!(read_chunked(TarGuard::new(over), 4096).is_err());
        // a base-256 size field
        let mut h = ext_header(EntryType::XHeader, 0, false);
        let size = &mut h.as_old_mut().size;
        size.fill(0);
        size[0] = 0x80;
        size[4..].copy_from_slice(&(5u64 << 30).to_be_bytes());
        h.set_cksum();
        let e =
            read_chunked(TarGuard::new(h.as_bytes().chain(io::repeat(0))), 7).expect_err("refused");
        assert_eq!(OversizedHeader::of(&e).expect("guard").size, 5 << 30);
    }

    #[test]
    fn guard_follows_pax_size_overrides_like_tar() {
        let fake_bomb = ext_header(EntryType::XHeader, 64 << 20, false);
        // `size` in the PAX header makes the next entry 1024 bytes though its header says 0:
        // a bomb-looking block in its data is data
        let pax = pax_record("size", b"1024");
        let mut data = fake_bomb.as_bytes().to_vec();
        data.resize(1024, b'd');
        let tar = build(|b| {
            b.append(
                &ext_header(EntryType::XHeader, pax.len() as u64, false),
                &pax[..],
            )
            .expect("a");
            let mut h = hdr("f", EntryType::Regular, 0, 0o644);
            h.set_size(0);
            h.set_cksum();
            b.append(&h, &data[..]).expect("a");
        });
        for chunk in CHUNKS {
            let out = read_chunked(
                TarGuard::new(Chunky {
                    inner: &tar[..],
                    max: chunk,
                }),
                chunk,
            )
            .expect("not a bomb");
            assert!(out == tar);
        }
        let d = tempfile::tempdir().expect("tempdir");
        unpack_stream(&tar[..], "sha256:test", d.path()).expect("unpack");
        assert_eq!(fs::read(d.path().join("f")).expect("f"), data);

        // `size=0` makes the next entry empty though its header says 1024: what follows its
        // header is the next header, a real bomb
        let pax = pax_record("size", b"0");
        let mut before = build(|b| {
            b.append(
                &ext_header(EntryType::XHeader, pax.len() as u64, false),
                &pax[..],
            )
            .expect("a");
            b.append(&hdr("f", EntryType::Regular, 1024, 0o644), &[0u8; 1024][..])
                .expect("a");
        });
        before.truncate(1024 + 512); // the pax entry and the header of `f`
        for chunk in CHUNKS {
            let src = Chunky {
                inner: bomb(&before, EntryType::XHeader, false, 64 << 20),
                max: chunk,
            };
            let e = read_chunked(TarGuard::new(src), chunk).expect_err("bomb");
            assert!(OversizedHeader::of(&e).is_some(), "{e}");
        }
        let d = tempfile::tempdir().expect("tempdir");
        let e = unpack_stream(
            bomb(&before, EntryType::XHeader, false, 64 << 20),
            "sha256:t",
            d.path(),
        )
        .expect_err("bomb");
        assert!(matches!(e, ImageError::HostileLayer { .. }), "{e}");
    }

    #[test]
    fn pax_size_scan_matches_tar() {
        fn tar_size(body: &[u8]) -> Option<u64> {
            // tar::pax::pax_extensions_value(body, "size")
            for ext in tar::PaxExtensions::new(body) {
                let ext = ext.ok()?;
                if ext.key() != Ok("size") {
                    continue;
                }
                return ext.value().ok()?.parse().ok();
            }
            None
        }
        let mut bodies: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\n".to_vec(),
            pax_record("size", b"42"),
            pax_record("size", b"+42"),
            pax_record("size", b"-1"),
            pax_record("size", b"4x"),
            pax_record("size", b""),
            pax_record("size", b"18446744073709551615"),
            pax_record("size", b"18446744073709551616"),
            pax_record("sizes", b"1"),
            pax_record("siz", b"1"),
            pax_record("size", b"1=2"),
            [pax_record("path", b"a"), pax_record("size", b"7")].concat(),
            [pax_record("size", b"7"), pax_record("size", b"9")].concat(),
            [
                pax_record("path", b"a"),
                b"\n".to_vec(),
                pax_record("size", b"7"),
            ]
            .concat(),
            [b"9 path=a\n".to_vec(), pax_record("size", b"7")].concat(),
            [b"nospace\n".to_vec(), pax_record("size", b"7")].concat(),
            [b"10 noequal\n".to_vec(), pax_record("size", b"7")].concat(),
            [b"+13 path=abc\n".to_vec(), pax_record("size", b"7")].concat(),
            [b"013 path=abc\n".to_vec(), pax_record("size", b"7")].concat(),
            b"11 size=123".to_vec(),
            b"12 size=123".to_vec(),
            b"11 size=123\n".to_vec(),
            b"12 size=1 3\n".to_vec(),
            b"12 s\xffze=13\n".to_vec(),
        ];
        // pseudo-random mutations of valid bodies
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let base = [
            pax_record("uid", b"0"),
            pax_record("size", b"4096"),
            pax_record("path", b"x"),
        ]
        .concat();
        for _ in 0..2000 {
            let mut b = base.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = b" =\n+019size"[(seed >> 32) as usize % 11];
            }
            bodies.push(b);
        }
        for body in bodies {
            let want = tar_size(&body);
            for chunk in CHUNKS {
                let mut scan = PaxSizeScan::default();
                for piece in body.chunks(chunk) {
                    scan.feed(piece);
                }
                assert_eq!(scan.finish(), want, "{:?}", String::from_utf8_lossy(&body));
            }
        }
    }

    #[test]
    fn guard_follows_gnu_sparse_extension_blocks() {
        // a sparse entry whose extension block is all zeros (not the end of the archive), then
        // a bomb
        let mut h = tar::Header::new_gnu();
        h.set_path("s").expect("path");
        h.set_entry_type(EntryType::GNUSparse);
        h.set_size(512);
        {
            let g = h.as_gnu_mut().expect("gnu");
            g.sparse[0].set_offset(0);
            g.sparse[0].set_length(512);
            g.set_real_size(512);
            g.set_is_extended(true);
        }
        h.set_cksum();
        let mut before = h.as_bytes().to_vec();
        before.extend_from_slice(tar::GnuExtSparseHeader::new().as_bytes());
        before.extend_from_slice(&[1u8; 512]);
        for chunk in CHUNKS {
            let src = Chunky {
                inner: bomb(&before, EntryType::GNULongName, true, 64 << 20),
                max: chunk,
            };
            let e = read_chunked(TarGuard::new(src), chunk).expect_err("bomb");
            assert!(OversizedHeader::of(&e).is_some(), "{e}");
        }
        let src = bomb(&before, EntryType::GNULongName, true, 64 << 20);
        let e = listing(TarGuard::new(src)).expect_err("bomb");
        assert!(OversizedHeader::of(&e).is_some(), "{e}");
    }

    #[test]
    fn gzipped_pax_and_longname_bombs_are_hostile() {
        for (kind, gnu) in [(EntryType::XHeader, false), (EntryType::GNULongName, true)] {
            let mut gz = Vec::new();
            flate2::read::GzEncoder::new(
                bomb(&[], kind, gnu, 64 << 20),
                flate2::Compression::fast(),
            )
            .read_to_end(&mut gz)
            .expect("gzip");
            assert!(gz.len() < 1 << 20, "{}", gz.len());
            let n = std::rc::Rc::new(std::cell::Cell::new(0));
            let reader = Counting {
                inner: decompressed(io::Cursor::new(gz)).expect("gzip"),
                n: n.clone(),
            };
            let d = tempfile::tempdir().expect("tempdir");
            let e = unpack_stream(reader, "sha256:bomb", d.path()).expect_err("bomb");
            assert!(matches!(e, ImageError::HostileLayer { .. }), "{e}");
            assert_eq!(
                unicri_sandbox::Classify::kind(&e),
                unicri_sandbox::ErrorKind::DataLoss
            );
            assert!(e.to_string().contains("extension header"), "{e}");
            assert_eq!(n.get(), 512, "read past the header");
            assert!(fs::read_dir(d.path()).expect("ls").next().is_none());
        }
    }

    #[test]
    fn long_pax_paths_and_gnu_long_names_unpack() {
        let tar = sample_tar(b"");
        let d = tempfile::tempdir().expect("tempdir");
        let diff = unpack_stream(&tar[..], "sha256:test", d.path()).expect("unpack");
        assert_eq!(diff, crate::digest::sha256_digest(&tar));
        let r = d.path();
        assert_eq!(fs::read(r.join("a")).expect("a"), b"abc");
        let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(fs::read(r.join(pax_path())).expect("pax path"), body);
        assert!(!r.join("short").exists());
        assert_eq!(
            fs::read(r.join(long_path())).expect("long name"),
            [7u8; 513]
        );
        assert_eq!(
            fs::read_link(r.join("l/link")).expect("link"),
            Path::new(&long_target())
        );
        assert!(r.join("z").is_dir());
    }

    #[test]
    fn wasm_module_snapshot() {
        let module = b"\0asm\x01\0\0\0 module bytes".to_vec();
        let d = tempfile::tempdir().expect("tempdir");
        let blob = d.path().join("blob");
        fs::write(&blob, &module).expect("blob");
        let fs_dir = d.path().join("fs");
        fs::create_dir(&fs_dir).expect("mkdir");
        let diff = unpack_wasm_layer(&blob, "sha256:w", &fs_dir, "app.wasm").expect("unpack");
        assert_eq!(diff, crate::digest::sha256_digest(&module));
        let f = fs_dir.join("app.wasm");
        assert_eq!(fs::read(&f).expect("module"), module);
        let meta = fs::symlink_metadata(&f).expect("stat");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o7777, 0o644);
        assert_eq!(
            wasm_snapshot_module(&fs_dir, "sha256:w").expect("one module"),
            "app.wasm"
        );

        // an unsafe name is refused before anything is written
        let empty = d.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        for bad in ["", ".", "..", "../x", "a/b", "/abs"] {
            let e = unpack_wasm_stream(&module[..], "sha256:w", &empty, bad).expect_err(bad);
            assert!(matches!(e, ImageError::Unpack { .. }), "{e}");
        }
        assert!(fs::read_dir(&empty).expect("ls").next().is_none());
        // never written through an existing entry or link
        let outside = d.path().join("outside");
        std::os::unix::fs::symlink(&outside, empty.join("m.wasm")).expect("symlink");
        assert!(unpack_wasm_stream(&module[..], "sha256:w", &empty, "m.wasm").is_err());
        assert!(!outside.exists());

        // a snapshot that is not one regular file is not a wasm snapshot
        let e = wasm_snapshot_module(&empty, "sha256:w").expect_err("a symlink");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        fs::remove_file(empty.join("m.wasm")).expect("rm");
        let e = wasm_snapshot_module(&empty, "sha256:w").expect_err("empty");
        assert!(e.to_string().contains("0 entries"), "{e}");
        fs::write(fs_dir.join("second"), b"x").expect("write");
        let e = wasm_snapshot_module(&fs_dir, "sha256:w").expect_err("two files");
        assert!(e.to_string().contains("2 entries"), "{e}");
        let dir_only = d.path().join("dir-only");
        fs::create_dir_all(dir_only.join("sub")).expect("mkdir");
        assert!(wasm_snapshot_module(&dir_only, "sha256:w").is_err());
    }
}
