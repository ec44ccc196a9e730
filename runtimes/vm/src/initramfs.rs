//! The guest's initramfs: an uncompressed `newc` cpio archive whose `/init` is the guest agent,
//! with every shared library `ldd` lists for it (the dynamic loader included) at the same
//! paths, `/dev/console`, and the empty directories `dev proc sys run tmp etc`.
//!
//! Built once per set of inputs and cached as `<cache_dir>/initramfs-<sha256>.cpio`, where the
//! hash covers the agent binary and every library (path and content) and this format's
//! version: a rebuilt agent or an upgraded libc gives a new file. Written to a temporary file
//! and renamed, so concurrent callers at worst build it twice and never see half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{VmError, io_err, run};

/// Bumped when the archive's layout changes (part of the cache key).
const FORMAT: &str = "unicri-initramfs-v2";

/// Empty directories every guest gets.
const DIRS: &[&str] = &["dev", "proc", "sys", "run", "tmp", "etc"];

/// Returns the cached initramfs for `agent`, building it first if needed.
pub fn build(agent: &Path, cache_dir: &Path) -> Result<PathBuf, VmError> {
    let agent_bytes = std::fs::read(agent).map_err(io_err("read agent binary", agent))?;
    let libs = shared_libraries(agent)?;
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    for lib in &libs {
        // read() follows symlinks: the library's content lands at the path the loader asks for
        let bytes = std::fs::read(lib).map_err(io_err("read shared library", lib))?;
        let mode = std::fs::metadata(lib)
            .map_err(io_err("stat shared library", lib))?
            .permissions()
            .mode()
            & 0o7777;
        let name = lib.to_string_lossy().trim_start_matches('/').to_string();
        files.insert(name, (bytes, mode));
    }
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update((agent_bytes.len() as u64).to_le_bytes());
    h.update(&agent_bytes);
    for (name, (bytes, mode)) in &files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(mode.to_le_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    let key = hex::encode(h.finalize());
    let path = cache_dir.join(format!("initramfs-{key}.cpio"));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).map_err(io_err("create cache directory", cache_dir))?;
    let mut w = CpioWriter::default();
    let mut dirs: Vec<String> = DIRS.iter().map(|d| d.to_string()).collect();
    for name in files.keys() {
        let mut p = Path::new(name).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.push(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        w.entry(d, 0o040_755, 0, &[]);
    }
    w.entry("dev/console", 0o020_600, libc::makedev(5, 1), &[]);
    // debug info is most of a debug build (~57 MB of 59), the symbol table most of the rest
    // (~4 MB of 16): the guest gets a copy without either (less to unpack at every boot)
    let stripped = cache_dir.join(format!(".agent-{key}.{}.tmp", std::process::id()));
    let init_bytes = match run(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(agent))
    {
        Ok(_) => {
            let b = std::fs::read(&stripped).map_err(io_err("read stripped agent", &stripped));
            let _ = std::fs::remove_file(&stripped);
            b?
        }
        Err(e) => {
            let _ = std::fs::remove_file(&stripped);
            tracing::warn!(error = %e, "strip the agent failed; using it as it is");
            agent_bytes
        }
    };
    w.entry("init", 0o100_755, 0, &init_bytes);
    for (name, (bytes, mode)) in &files {
        w.entry(name, 0o100_000 | mode, 0, bytes);
    }
    let archive = w.finish();
    let tmp = cache_dir.join(format!(".initramfs-{key}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&archive)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(VmError::Io {
            op: "write initramfs",
            path,
            source: e,
        });
    }
    // older archives (of an older agent): engines read the initramfs once, at boot
    if let Ok(rd) = std::fs::read_dir(cache_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("initramfs-") && name.ends_with(".cpio") && e.path() != path {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(path)
}

/// The absolute paths `ldd` lists for `binary` (libraries and the dynamic loader; the vDSO
/// has no file and is left out). A static binary has none.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, VmError> {
    let out = match run(Command::new("ldd").arg(binary)) {
        Ok(out) => out,
        // ldd exits 1 for static binaries ("not a dynamic executable")
        Err(VmError::Command { stderr, .. }) if stderr.contains("not a dynamic executable") => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    Ok(parse_ldd(&String::from_utf8_lossy(&out)))
}

/// The file paths in `ldd` output.
fn parse_ldd(out: &str) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') && !libs.iter().any(|l: &PathBuf| l == Path::new(path)) {
            libs.push(PathBuf::from(path));
        }
    }
    libs
}

/// Writes a `newc` (SVR4, no CRC) cpio archive in memory.
#[derive(Default)]
struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, rdev: u64, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            data.len(),
            0, // devmajor
            0, // devminor
            libc::major(rdev),
            libc::minor(rdev),
            name.len() + 1,
            0, // check
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parses() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n";
        assert_eq!(
            parse_ldd(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
            ]
        );
    }

    #[test]
    fn archive_of_a_dynamic_binary_lists_its_libraries_and_is_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        // /bin/sh stands in for the agent: a dynamic binary
        let agent = Path::new("/bin/sh");
        let a = build(agent, dir.path()).expect("build");
        let b = build(agent, dir.path()).expect("build again");
        assert_eq!(a, b, "same inputs, same file");
        assert!(
            a.file_name()
                .map(|n| n.to_string_lossy().starts_with("initramfs-"))
                .unwrap_or(false)
        );
        let listing = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(std::fs::File::open(&a).expect("open"))
            .output();
        let Ok(listing) = listing else {
            eprintln!("SKIP listing check: no cpio binary");
            return;
        };
        let text = String::from_utf8_lossy(&listing.stdout);
        for want in ["init", "dev/console", "proc", "sys", "run", "tmp", "etc"] {
            assert!(
                text.lines().any(|l| l.ends_with(&format!(" {want}"))),
                "{want} missing in\n{text}"
            );
        }
        for lib in shared_libraries(agent).expect("ldd") {
            let name = lib.to_string_lossy().trim_start_matches('/').to_string();
            assert!(text.contains(&name), "{name} missing in\n{text}");
        }
        assert!(text.contains("ld-linux"), "loader missing in\n{text}");
    }
}
