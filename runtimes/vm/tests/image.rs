//! `image::build`: layer snapshot directories → one EROFS file, checked by mounting it on the
//! host (`mount -t erofs -o loop,ro`), or with `fsck.erofs --extract` when the host kernel has
//! no erofs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use unicri_runtime_vm::image;

fn layer(root: &Path, name: &str) -> PathBuf {
    let d = root.join("snapshots").join(name).join("fs");
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn write(p: &Path, data: &str, mode: u32, owner: Option<(u32, u32)>) {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(p, data).expect("write");
    // chown first: it clears set-id bits
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(p, Some(u), Some(g)).expect("chown");
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Mounts the image read-only (or extracts it) and returns the directory and how.
struct Opened {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Opened {
    fn new(img: &Path) -> Opened {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(img)
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            || (common::sh_ok(&["modprobe", "erofs"])
                && Command::new("mount")
                    .args(["-t", "erofs", "-o", "loop,ro"])
                    .arg(img)
                    .arg(dir.path())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false));
        if mounted {
            eprintln!(
                "checking {} by mounting it (mount -t erofs -o loop,ro)",
                img.display()
            );
        } else {
            eprintln!(
                "no erofs in the host kernel: checking {} with fsck.erofs --extract",
                img.display()
            );
            let out = dir.path().join("x");
            common::sh(&[
                "fsck.erofs",
                &format!("--extract={}", out.display()),
                &img.to_string_lossy(),
            ]);
        }
        Opened { dir, mounted }
    }

    fn root(&self) -> PathBuf {
        if self.mounted {
            self.dir.path().to_path_buf()
        } else {
            self.dir.path().join("x")
        }
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

#[test]
fn layers_become_one_erofs_image() {
    if !common::is_root() {
        eprintln!(
            "SKIP layers_become_one_erofs_image: needs root (overlay mount, chown, whiteouts)"
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("erofs");

    // lower layer: files, a symlink, owners, modes, a dir made opaque above, a file deleted above
    let lower = layer(tmp.path(), "1");
    write(
        &lower.join("etc/hello.txt"),
        "hello from lower\n",
        0o644,
        None,
    );
    write(
        &lower.join("bin/tool"),
        "#!/bin/sh\necho tool\n",
        0o4755,
        Some((0, 0)),
    );
    write(
        &lower.join("home/app/data"),
        "owned\n",
        0o600,
        Some((1000, 1001)),
    );
    write(&lower.join("gone.txt"), "deleted above\n", 0o644, None);
    write(
        &lower.join("opaque/old"),
        "hidden by opaque dir\n",
        0o644,
        None,
    );
    symlink("etc/hello.txt", lower.join("link")).expect("symlink");
    // upper layer: a whiteout (char 0/0), an opaque dir, a changed file
    let upper = layer(tmp.path(), "2");
    nix::sys::stat::mknod(
        &upper.join("gone.txt"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o000),
        0,
    )
    .expect("whiteout");
    std::fs::create_dir_all(upper.join("opaque")).expect("mkdir");
    xattr::set(upper.join("opaque"), "trusted.overlay.opaque", b"y").expect("opaque xattr");
    write(&upper.join("opaque/new"), "new\n", 0o644, None);
    write(
        &upper.join("etc/hello.txt"),
        "hello from upper\n",
        0o640,
        Some((0, 42)),
    );

    let t = std::time::Instant::now();
    let img = image::build(&cache, "sha256-test", &[lower.clone(), upper.clone()]).expect("build");
    eprintln!("two-layer image built in {:?}", t.elapsed());
    assert_eq!(img, cache.join("sha256-test.erofs"));
    // cached: a second call does not rebuild
    let mtime = std::fs::metadata(&img).expect("stat").mtime_nsec();
    let again =
        image::build(&cache, "sha256-test", &[lower.clone(), upper.clone()]).expect("again");
    assert_eq!(again, img);
    assert_eq!(std::fs::metadata(&img).expect("stat").mtime_nsec(), mtime);
    // no temp files or mount points left
    let left: Vec<String> = std::fs::read_dir(&cache)
        .expect("readdir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.starts_with('.')), "{left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&*cache.to_string_lossy()),
        "overlay left mounted"
    );

    {
        let o = Opened::new(&img);
        let r = o.root();
        assert_eq!(
            std::fs::read_to_string(r.join("etc/hello.txt")).expect("read"),
            "hello from upper\n"
        );
        let m = std::fs::metadata(r.join("etc/hello.txt")).expect("stat");
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 0, 42));
        let m = std::fs::metadata(r.join("bin/tool")).expect("stat");
        assert_eq!(m.mode() & 0o7777, 0o4755);
        let m = std::fs::metadata(r.join("home/app/data")).expect("stat");
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 1000, 1001));
        assert_eq!(
            std::fs::read_link(r.join("link")).expect("readlink"),
            PathBuf::from("etc/hello.txt")
        );
        assert!(
            std::fs::symlink_metadata(r.join("gone.txt")).is_err(),
            "whiteout not applied"
        );
        assert!(!r.join("opaque/old").exists(), "opaque dir not applied");
        assert_eq!(
            std::fs::read_to_string(r.join("opaque/new")).expect("read"),
            "new\n"
        );
        // the merged view carries no overlay markers
        if o.mounted {
            assert!(
                xattr::get(r.join("opaque"), "trusted.overlay.opaque")
                    .ok()
                    .flatten()
                    .is_none()
            );
        }
    }

    // a single layer is taken as is
    let single = image::build(&cache, "single", std::slice::from_ref(&lower)).expect("single");
    {
        let o = Opened::new(&single);
        assert_eq!(
            std::fs::read_to_string(o.root().join("gone.txt")).expect("read"),
            "deleted above\n"
        );
    }

    image::remove(&cache, "sha256-test").expect("remove");
    image::remove(&cache, "sha256-test").expect("remove again");
    assert!(!img.exists());
    assert!(image::build(&cache, "../evil", &[lower]).is_err());
}
